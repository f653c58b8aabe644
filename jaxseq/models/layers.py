"""Transformer building blocks shared by every model family.

Every parameter carries logical axis names (see jaxseq.parallel.sharding for the mesh rules);
key activations carry logical sharding constraints. Parameters are float32; `dtype` is the
compute dtype (float32 or bfloat16). Softmax and layer-norm statistics run in float32.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxseq.parallel.sharding import BATCH, EMBED, HEADS, KV, LAYERS, LENGTH, MLP, VOCAB

Dtype = Any

default_kernel_init = nn.initializers.xavier_uniform()


def partitioned(init, *axes: str | None):
    """`init` wrapped so the parameter it makes carries the logical `axes`."""
    return nn.with_logical_partitioning(init, axes)


def dense(features: int, axes: tuple[str, str], dtype: Dtype, name: str | None) -> nn.Dense:
    """A float32-parameter nn.Dense whose kernel carries `axes` (in, out) and bias `axes[1]`
    (`name` None inside `setup`, where the attribute names it)."""
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=partitioned(default_kernel_init, *axes),
        bias_init=partitioned(nn.initializers.zeros, axes[1]),
        name=name,
    )


def embedding(num: int, features: int, dtype: Dtype, stddev: float, name: str) -> nn.Embed:
    """A float32-parameter token embedding [num, features] (VOCAB, EMBED), N(0, stddev²)."""
    return nn.Embed(
        num,
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        embedding_init=partitioned(nn.initializers.normal(stddev), VOCAB, EMBED),
        name=name,
    )


def decoding_start(module: nn.Module, length: int, decode: bool) -> jax.Array | int:
    """The position of a decoder call's first step: 0 unless decoding with a cache, where a
    "position" counter in the "cache" collection (created by the first, full-length call)
    advances by `length` per step."""
    if not decode:
        return 0
    is_initialized = module.has_variable("cache", "position")
    position = module.variable("cache", "position", lambda: jnp.array(0, jnp.int32))
    if not is_initialized:
        return 0
    start = position.value
    position.value = start + length
    return start


REMAT_POLICIES = {  # model.remat: what the backward pass keeps from each layer's forward pass
    "none": None,  # everything (no rematerialization)
    "full": jax.checkpoint_policies.nothing_saveable,  # only the layer inputs
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # matmul outputs
}


def remat_layer(layer_cls: type[nn.Module], remat: str, static_argnums: tuple[int, ...]):
    """`layer_cls` recomputed in the backward pass under policy `remat` (a REMAT_POLICIES
    key); "none" returns it unchanged. `static_argnums` count `self` as 0. Parameter names and
    values are the same either way."""
    if remat == "none":
        return layer_cls
    return nn.remat(layer_cls, policy=REMAT_POLICIES[remat], static_argnums=static_argnums)


class _ScanStep(nn.Module):
    """`make_layer(name=...)` in `nn.scan`'s `(carry, *broadcast) -> (carry, None)` form."""

    make_layer: Callable[..., nn.Module]

    @nn.compact
    def __call__(self, x: jax.Array, *args):
        return self.make_layer(name="layer")(x, *args), None


def scanned_layers(
    make_layer: Callable[..., nn.Module], num_layers: int, num_args: int, name: str
) -> nn.Module:
    """`num_layers` layers as one `nn.scan`: parameters (and decoding caches) stacked on a
    leading LAYERS axis under `name/layer`; one layer is traced and compiled.

    `make_layer(name=...)` builds one layer, called as `layer(x, *args)` with `num_args`
    arguments shared by every layer.
    """
    stack = nn.scan(
        _ScanStep,
        variable_axes={"params": 0, "cache": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast,) * num_args,
        length=num_layers,
        metadata_params={nn.PARTITION_NAME: LAYERS},
    )
    return stack(make_layer, name=name)


def constrain(x: jax.Array, *axes: str | None) -> jax.Array:
    """Logical sharding constraint on an activation (a no-op outside a mesh)."""
    return nn.with_logical_constraint(x, axes)


class LayerNorm(nn.Module):
    """LayerNorm over the last (embed) axis, statistics in float32."""

    dtype: Dtype = jnp.float32
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.LayerNorm(
            epsilon=self.epsilon,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            scale_init=partitioned(nn.initializers.ones, EMBED),
            bias_init=partitioned(nn.initializers.zeros, EMBED),
        )(x)


class SplitHeads(nn.Module):
    """Projection [..., embed] → [..., heads, head_dim] with a kernel [embed, heads, head_dim].

    (flax's DenseGeneral initializes its kernel flat and reshapes it, which breaks logical
    constraints on the kernel; this creates it in its real shape.) `use_bias=False` drops the
    bias, as Whisper's key projection does.
    """

    num_heads: int
    head_dim: int
    dtype: Dtype = jnp.float32
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2))
        kernel = self.param(
            "kernel",
            partitioned(init, EMBED, HEADS, KV),
            (x.shape[-1], self.num_heads, self.head_dim),
            jnp.float32,
        )
        y = jnp.einsum("...e,ehd->...hd", x.astype(self.dtype), kernel.astype(self.dtype))
        if not self.use_bias:
            return y
        bias = self.param(
            "bias",
            partitioned(nn.initializers.zeros, HEADS, KV),
            (self.num_heads, self.head_dim),
            jnp.float32,
        )
        return y + bias.astype(self.dtype)


class MergeHeads(nn.Module):
    """Projection [..., heads, head_dim] → [..., embed] with a kernel [heads, head_dim, embed]."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = nn.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2)
        kernel = self.param(
            "kernel",
            partitioned(init, HEADS, KV, EMBED),
            (x.shape[-2], x.shape[-1], self.features),
            jnp.float32,
        )
        bias = self.param(
            "bias", partitioned(nn.initializers.zeros, EMBED), (self.features,), jnp.float32
        )
        y = jnp.einsum("...hd,hde->...e", x.astype(self.dtype), kernel.astype(self.dtype))
        return y + bias.astype(self.dtype)


class MultiHeadAttention(nn.Module):
    """Multi-head dot-product attention, with an optional decoding cache.

    Attributes:
      num_heads: number of heads; the head size is features // num_heads.
      dtype: compute dtype.
      dropout_rate: dropout on the attention weights.
      key_bias: whether the key projection has a bias (Whisper's has none).
      cache: what `decode=True` keeps in the "cache" collection: "self" (causal self-attention:
        keys and values of the steps so far, one new step per call) or "cross" (keys and values
        of the encoder output, computed on the first call and reused after); None = no cache.
      sow_weights: also store the attention weights float32 [batch, heads, q_len, kv_len] (before
        dropout) as "intermediates"/"weights" (kept when that collection is mutable), e.g. for
        TTS's guided-attention loss and alignment plots.

    Decoding (t5x style): a first call with `decode=True` and the full-length input, with the
    "cache" collection mutable and empty, creates the cache (zeros for "self", the encoder keys
    and values for "cross") and otherwise attends as usual; later calls take one step each.
    """

    num_heads: int
    dtype: Dtype = jnp.float32
    dropout_rate: float = 0.0
    key_bias: bool = True
    cache: str | None = None
    sow_weights: bool = False

    @nn.compact
    def __call__(
        self,
        inputs_q: jax.Array,
        inputs_kv: jax.Array,
        mask: jax.Array | None,
        deterministic: bool,
        decode: bool = False,
    ) -> jax.Array:
        """Attends from `inputs_q` [batch, q_len, embed] to `inputs_kv` [batch, kv_len, embed].

        Args:
          mask: bool [batch, 1 or heads, q_len, kv_len], True where attention is allowed. In a
            cached "self" step it is replaced by "positions up to the current step".
          decode: use the cache (see the class docstring); a "self" step needs q_len == 1.
        Returns:
          [batch, q_len, embed]
        """
        if self.cache not in (None, "self", "cross"):
            raise ValueError(f"cache must be None, 'self' or 'cross', got {self.cache!r}")
        features = inputs_q.shape[-1]
        if features % self.num_heads:
            raise ValueError(f"embed size {features} is not divisible by {self.num_heads} heads")
        head_dim = features // self.num_heads
        split = functools.partial(SplitHeads, self.num_heads, head_dim, dtype=self.dtype)
        query = split(name="query")(inputs_q)  # [batch, q_len, heads, head_dim]
        key_proj = split(use_bias=self.key_bias, name="key")
        value_proj = split(name="value")
        use_cache = decode and self.cache is not None
        if use_cache and self.cache == "cross" and self.has_variable("cache", "cross_key"):
            key = self.get_variable("cache", "cross_key")  # [batch, kv_len, heads, head_dim]
            value = self.get_variable("cache", "cross_value")
        else:
            key = key_proj(inputs_kv)  # [batch, kv_len, heads, head_dim]
            value = value_proj(inputs_kv)  # [batch, kv_len, heads, head_dim]
            if use_cache and self.cache == "cross":
                self.put_variable("cache", "cross_key", key)
                self.put_variable("cache", "cross_value", value)
        if use_cache and self.cache == "self":
            is_initialized = self.has_variable("cache", "cached_key")
            cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
            cached_value = self.variable(
                "cache", "cached_value", jnp.zeros, value.shape, value.dtype
            )  # [batch, max_len, heads, head_dim]
            cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
            if is_initialized:
                if key.shape[1] != 1:
                    raise ValueError(f"a cached decoding step takes 1 position, got {key.shape[1]}")
                i = cache_index.value
                key = lax.dynamic_update_slice(cached_key.value, key, (0, i, 0, 0))
                value = lax.dynamic_update_slice(cached_value.value, value, (0, i, 0, 0))
                cached_key.value, cached_value.value = key, value  # [batch, max_len, heads, hd]
                cache_index.value = i + 1
                mask = (jnp.arange(key.shape[1]) <= i)[None, None, None, :]  # [1, 1, 1, max_len]
        # Cached cross-attention keys of `items` utterances may serve `batch` = items * group
        # queries (beam search: an item's beams): the group's queries attend as one sequence.
        batch, q_len = query.shape[:2]
        items = key.shape[0]
        query = query.reshape(items, batch // items * q_len, *query.shape[2:])
        query = constrain(query, BATCH, LENGTH, HEADS, KV)
        key = constrain(key, BATCH, LENGTH, HEADS, KV)
        value = constrain(value, BATCH, LENGTH, HEADS, KV)

        query = query / np.sqrt(head_dim).astype(self.dtype)
        # The logits accumulate and come out in float32 whatever the compute dtype: rounded to
        # bfloat16 (8 significant bits), a logit of 100 would be off by up to 0.25.
        logits = jnp.einsum(
            "bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32
        )  # float32 [items, heads, group * q, kv]
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1)  # float32 [items, heads, group * q, kv]
        if self.sow_weights:
            self.sow("intermediates", "weights", weights)
        weights = weights.astype(self.dtype)
        if self.dropout_rate > 0.0:
            weights = nn.Dropout(self.dropout_rate)(weights, deterministic=deterministic)
        out = jnp.einsum(
            "bhqk,bkhd->bqhd", weights, value, preferred_element_type=jnp.float32
        ).astype(self.dtype)  # summed over kv in float32: [items, group * q, heads, head_dim]
        out = out.reshape(batch, q_len, *out.shape[2:])  # [batch, q_len, heads, head_dim]
        out = MergeHeads(features, dtype=self.dtype, name="out")(out)  # [batch, q_len, embed]
        return constrain(out, BATCH, LENGTH, EMBED)


class MlpBlock(nn.Module):
    """Position-wise feed-forward block: Dense → GELU → dropout → Dense."""

    mlp_dim: int
    dtype: Dtype = jnp.float32
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        features = x.shape[-1]
        h = dense(self.mlp_dim, (EMBED, MLP), self.dtype, "wi")(x)  # [batch, length, mlp]
        h = constrain(nn.gelu(h, approximate=False), BATCH, LENGTH, MLP)
        h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        out = dense(features, (MLP, EMBED), self.dtype, "wo")(h)  # [batch, length, embed]
        return constrain(out, BATCH, LENGTH, EMBED)


class EncoderLayer(nn.Module):
    """Pre-LN Transformer encoder layer: x + SelfAttn(LN(x)), then x + MLP(LN(x))."""

    num_heads: int
    mlp_dim: int
    dtype: Dtype = jnp.float32
    dropout_rate: float = 0.0
    key_bias: bool = True
    epsilon: float = 1e-5  # of both LayerNorms (ViT/AST checkpoints use 1e-12)

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, deterministic: bool) -> jax.Array:
        """x: [batch, length, embed]; mask: bool [batch, 1, length, length]."""
        h = LayerNorm(dtype=self.dtype, epsilon=self.epsilon, name="attn_norm")(x)
        h = MultiHeadAttention(
            self.num_heads,
            dtype=self.dtype,
            dropout_rate=self.dropout_rate,
            key_bias=self.key_bias,
            name="attn",
        )(h, h, mask, deterministic)
        x = x + nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        h = LayerNorm(dtype=self.dtype, epsilon=self.epsilon, name="mlp_norm")(x)
        h = MlpBlock(self.mlp_dim, dtype=self.dtype, dropout_rate=self.dropout_rate, name="mlp")(
            h, deterministic
        )
        x = x + nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        return constrain(x, BATCH, LENGTH, EMBED)


class DecoderLayer(nn.Module):
    """Pre-LN Transformer decoder layer: causal self-attention, cross-attention, MLP.

    x + SelfAttn(LN(x)), then x + CrossAttn(LN(x), encoded), then x + MLP(LN(x)). With
    `decode=True` both attentions use the "cache" collection (see MultiHeadAttention).
    """

    num_heads: int
    mlp_dim: int
    dtype: Dtype = jnp.float32
    dropout_rate: float = 0.0
    key_bias: bool = True
    sow_cross_weights: bool = False  # keep the cross-attention weights (see MultiHeadAttention)

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        encoded: jax.Array,
        self_mask: jax.Array | None,
        cross_mask: jax.Array | None,
        deterministic: bool,
        decode: bool = False,
    ) -> jax.Array:
        """x: [batch, length, embed]; encoded: [batch, enc_frames, embed];
        self_mask: bool [batch, 1, length, length]; cross_mask: bool [batch, 1, 1, enc_frames].
        Returns [batch, length, embed]."""
        attn = functools.partial(
            MultiHeadAttention,
            self.num_heads,
            dtype=self.dtype,
            dropout_rate=self.dropout_rate,
            key_bias=self.key_bias,
        )
        drop = nn.Dropout(self.dropout_rate)
        h = LayerNorm(dtype=self.dtype, name="self_attn_norm")(x)
        h = attn(cache="self", name="self_attn")(h, h, self_mask, deterministic, decode)
        x = x + drop(h, deterministic=deterministic)
        h = LayerNorm(dtype=self.dtype, name="cross_attn_norm")(x)
        cross = attn(cache="cross", sow_weights=self.sow_cross_weights, name="cross_attn")
        h = cross(h, encoded, cross_mask, deterministic, decode)
        x = x + drop(h, deterministic=deterministic)
        h = LayerNorm(dtype=self.dtype, name="mlp_norm")(x)
        h = MlpBlock(self.mlp_dim, dtype=self.dtype, dropout_rate=self.dropout_rate, name="mlp")(
            h, deterministic
        )
        x = x + drop(h, deterministic=deterministic)
        return constrain(x, BATCH, LENGTH, EMBED)


def sinusoidal_positions(length: int, features: int) -> np.ndarray:
    """Whisper's sinusoidal position table, float32 [length, features] (sin half, cos half)."""
    if features % 2:
        raise ValueError(f"sinusoidal positions need an even size, got {features}")
    log_timescale = np.log(10000.0) / (features // 2 - 1)
    inv_timescales = np.exp(-log_timescale * np.arange(features // 2))
    scaled = np.arange(length)[:, None] * inv_timescales[None, :]  # [length, features // 2]
    return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1).astype(np.float32)


def padding_mask(lengths: jax.Array, max_length: int) -> jax.Array:
    """bool [batch, max_length]: True on the first `lengths[b]` positions."""
    return jnp.arange(max_length)[None, :] < lengths[:, None]
