"""Multi-head attention: query/key/value projections with logical axes, decoding caches, and
the attention itself through a fused kernel where one applies (cuDNN on a GPU, via
`jax.nn.dot_product_attention`; Pallas splash attention on a TPU, `jaxseq.models.splash`),
block by block on a CPU for long sequences, else through einsums with float32 logits.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxseq.models import splash
from jaxseq.models.layers import constrain, partitioned
from jaxseq.parallel.sharding import BATCH, EMBED, HEADS, KV, LENGTH

Dtype = Any


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


# Query and key lengths from which the CPU attends block by block (`blocked_attention`).
BLOCKED_MIN_LENGTH = 512
BLOCKED_QUERIES = 256  # at most this many queries per block


def attention_kernel(
    dtype: Dtype,
    head_dim: int,
    q_len: int,
    kv_len: int,
    masked: bool,
    key_mask: bool = False,
    backend: str | None = None,
) -> str | None:
    """The kernel `MultiHeadAttention` attends with, or None for its einsum path (XLA).

    - "cudnn" (cuDNN flash attention through `jax.nn.dot_product_attention`) on a GPU within
      cuDNN's limits: bfloat16 or float16, a head size that is a multiple of 8 and at most 128,
      and even lengths where there is a mask (cuDNN adds it as a bias, and trains with a bias
      only on even lengths). JAX 0.10's own XLA implementation (also what its
      `implementation=None` means) is the einsum path's computation, only slower (CPU: 1.8x).
    - "blocked" (`blocked_attention`) on a CPU for long sequences (both lengths at least
      BLOCKED_MIN_LENGTH) outside a sharded mesh: the same einsums, one head and one block of
      queries at a time, so that each block's logits stay in the cache (whisper-tiny's
      encoder attention, forward and backward: 1.6x faster on 2 cores).
    - "splash" (`splash.splash_attention`, Pallas splash attention) on a TPU for float32 or
      bfloat16, a head size that is a multiple of 64 (whisper's and SpeechT5's 64, 128, ...),
      both lengths at least one kernel block (128; shorter ones, such as a cached decoding
      step's single query, would be mostly padding) and no mask or a key padding mask
      (`key_mask`: [batch or 1, 1, 1, kv_len], the same keys for every query and head).
    `masked`: whether there is a mask. `backend` defaults to `splash.target_platform()`: that
    of the mesh's devices (TPUs for `jaxseq compile --topology`), else `jax.default_backend()`.
    """
    backend = splash.target_platform() if backend is None else backend
    if backend == "cpu":
        long = min(q_len, kv_len) >= BLOCKED_MIN_LENGTH
        return "blocked" if long and jax.sharding.get_abstract_mesh().size <= 1 else None
    if backend == "tpu":
        supported = jnp.dtype(dtype) in (jnp.float32, jnp.bfloat16) and head_dim % 64 == 0
        long = min(q_len, kv_len) >= splash.LANES
        return "splash" if supported and long and (key_mask or not masked) else None
    if backend != "gpu" or jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
        return None
    if head_dim % 8 or head_dim > 128 or (masked and (q_len % 2 or kv_len % 2)):
        return None
    return "cudnn"


def blocked_attention(
    query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array | None, scale: float
) -> jax.Array:
    """The einsum path's attention (`attention_weights`, then the weights · values summed in
    float32), computed for one (item, head) and one block of at most BLOCKED_QUERIES queries at a
    time in `lax.map`s, each block rematerialized in the backward pass: the same numbers with
    [block, kv_len] logits in flight instead of [batch, heads, q_len, kv_len].

    Args:
      query: [batch, q_len, heads, head_dim]; key, value: [batch, kv_len, heads, head_dim].
      mask: bool [batch or 1, 1, q_len or 1, kv_len], True where attention is allowed; or None.
    Returns:
      [batch, q_len, heads, head_dim] in the dtype of `value`.
    """
    batch, q_len, heads, head_dim = query.shape
    blocks = -(-q_len // BLOCKED_QUERIES)
    size = -(-q_len // blocks)  # queries per block
    pad = blocks * size - q_len
    q = jnp.pad(query, ((0, 0), (0, pad), (0, 0), (0, 0)))
    q = q.transpose(0, 2, 1, 3).reshape(batch, heads, blocks, size, head_dim)
    k = key.transpose(0, 2, 1, 3)  # [batch, heads, kv_len, head_dim]
    v = value.transpose(0, 2, 1, 3)
    if mask is None:
        mask = jnp.ones((1, 1, 1, key.shape[1]), bool)
    rows = mask.shape[2]
    if rows > 1:  # padded queries attend everywhere (and are dropped)
        mask = jnp.pad(mask, ((0, 0), (0, 0), (0, pad), (0, 0)), constant_values=True)
    mask = jnp.broadcast_to(mask[:, 0], (batch, blocks * size if rows > 1 else 1, key.shape[1]))
    mask = mask.reshape(batch, blocks if rows > 1 else 1, -1, key.shape[1])  # [b, nq|1, s|1, kv]

    @jax.checkpoint
    def one_block(qc, kh, vh, mc):  # [size, head_dim], [kv, head_dim] x 2, [size or 1, kv]
        logits = scale * jnp.einsum("qd,kd->qk", qc, kh, preferred_element_type=jnp.float32)
        logits = jnp.where(mc, logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(vh.dtype)  # [size, kv]
        return jnp.einsum("qk,kd->qd", weights, vh, preferred_element_type=jnp.float32)

    def one_head(qh, kh, vh, mb):  # [blocks, size, head_dim], ..., [blocks or 1, size or 1, kv]
        if mb.shape[0] == 1:
            return lax.map(lambda qc: one_block(qc, kh, vh, mb[0]), qh)
        return lax.map(lambda xs: one_block(xs[0], kh, vh, xs[1]), (qh, mb))

    def one_item(xs):  # [heads, blocks, size, head_dim], [heads, kv, head_dim] x 2, mask
        qb, kb, vb, mb = xs
        return lax.map(lambda h: one_head(*h, mb), (qb, kb, vb))

    if mask.shape[0] == 1:
        out = lax.map(lambda xs: one_item((*xs, mask[0])), (q, k, v))
    else:
        out = lax.map(one_item, (q, k, v, mask))  # [batch, heads, blocks, size, head_dim]
    out = out.reshape(batch, heads, blocks * size, head_dim)[:, :, :q_len]
    return out.transpose(0, 2, 1, 3).astype(value.dtype)  # [batch, q_len, heads, head_dim]


def fused_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: jax.Array | None,
    is_causal: bool,
    scale: float,
    kernel: str,
) -> jax.Array | None:
    """softmax(scale · q·kᵀ, masked) · v by `jax.nn.dot_product_attention(implementation=kernel)`;
    None where that kernel refuses the call while tracing (no cuDNN, or a shape that
    this cuDNN version does not take). cuDNN and XLA alike take the logits in float32 and round
    the weights to the compute dtype before they weight the values.

    Args:
      query: [batch, q_len, heads, head_dim].
      key, value: [batch, kv_len, heads, head_dim], in the dtype of `query`.
      mask: bool [batch or 1, heads or 1, q_len or 1, kv_len], True where attention is allowed;
        or None.
      is_causal: also mask every key after the query's position (needs q_len == kv_len).
      scale: the factor on the float32 logits.
      kernel: "cudnn" or "xla".
    Returns:
      [batch, q_len, heads, head_dim] in the dtype of `value`, or None.
    """
    if mask is not None:  # cuDNN adds the mask as a bias of the full [q_len, kv_len] extent
        mask = jnp.broadcast_to(mask, (*mask.shape[:2], query.shape[1], key.shape[1]))
    try:
        return jax.nn.dot_product_attention(
            query, key, value, mask=mask, scale=scale, is_causal=is_causal, implementation=kernel
        )
    except (NotImplementedError, RuntimeError):  # cuDNN's trace-time refusals
        return None


def attention_weights(
    query: jax.Array, key: jax.Array, mask: jax.Array | None, is_causal: bool, scale: float
) -> jax.Array:
    """The softmax weights, float32 [batch, heads, q_len, kv_len], of `query` [batch, q_len,
    heads, head_dim] over `key` [batch, kv_len, heads, head_dim] (`mask` and `is_causal` as in
    `fused_attention`): `MultiHeadAttention`'s einsum path."""
    # The logits accumulate and come out in float32 whatever the compute dtype: rounded to
    # bfloat16 (8 significant bits), a logit of 100 would be off by up to 0.25.
    logits = scale * jnp.einsum(
        "bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32
    )  # float32 [batch, heads, q_len, kv_len]
    if is_causal:
        causal = jnp.tril(jnp.ones(logits.shape[-2:], bool))  # [q_len, kv_len]
        mask = causal if mask is None else jnp.logical_and(mask, causal)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(logits, axis=-1)  # float32 [batch, heads, q_len, kv_len]


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
      causal: self-attention where each query also sees no later key (on top of `mask`); a
        kernel may then skip the masked blocks. A cached "self" step is causal by its cache.

    The logits q·k and the softmax are float32 whatever the compute dtype. Where
    `attention_kernel` picks a fused kernel (cuDNN flash attention on a GPU) and the weights
    themselves are not needed (`sow_weights`, or dropout on them while training), attention goes
    through it (`fused_attention`); elsewhere through explicit einsums (`attention_weights`).

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
    causal: bool = False

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
        cached_step = False
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
                cached_step = True
        # Cached cross-attention keys of `items` utterances may serve `batch` = items * group
        # queries (beam search: an item's beams): the group's queries attend as one sequence.
        batch, q_len = query.shape[:2]
        items = key.shape[0]
        query = query.reshape(items, batch // items * q_len, *query.shape[2:])
        query = constrain(query, BATCH, LENGTH, HEADS, KV)
        key = constrain(key, BATCH, LENGTH, HEADS, KV)
        value = constrain(value, BATCH, LENGTH, HEADS, KV)
        is_causal = self.causal and not cached_step
        if is_causal and query.shape[1] != key.shape[1]:
            raise ValueError(
                f"causal attention needs q_len == kv_len, got {query.shape[1]} and {key.shape[1]}"
            )
        scale = 1.0 / np.sqrt(head_dim)

        out = None
        if not (self.sow_weights or (self.dropout_rate > 0.0 and not deterministic)):
            key_mask = mask is not None and mask.shape[1:3] == (1, 1)  # [b, 1, 1, kv]
            kernel = attention_kernel(
                self.dtype, head_dim, query.shape[1], key.shape[1], mask is not None, key_mask
            )
            if kernel == "blocked" and not is_causal and (mask is None or mask.shape[1] == 1):
                out = blocked_attention(query, key, value, mask, scale)
            elif kernel == "splash":  # [items, group * q, heads, head_dim]
                out = splash.splash_attention(query, key, value, mask, is_causal, scale)
            elif kernel not in (None, "blocked"):  # [items, group * q, heads, head_dim] or None
                out = fused_attention(query, key, value, mask, is_causal, scale, kernel)
        if out is None:
            weights = attention_weights(query, key, mask, is_causal, scale)
            if self.sow_weights:  # float32 [items, heads, group * q, kv]
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
