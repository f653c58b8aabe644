"""Audio encoder: a conv1d subsampling stem and a pre-LN Transformer encoder."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseq.config import ModelConfig
from jaxseq.models.layers import (
    LayerNorm,
    constrain,
    gelu,
    padding_mask,
    partitioned,
    remat_layer,
    scanned_layers,
    sinusoidal_positions,
)
from jaxseq.models.transformer import EncoderLayer
from jaxseq.parallel.sharding import (
    BATCH,
    CONV_IN,
    CONV_WINDOW,
    EMBED,
    LENGTH,
    MEL,
    POSITION,
)

Dtype = Any


def subsampled_lengths(lengths: jax.Array, strides: tuple[int, ...]) -> jax.Array:
    """Frame counts after the conv stem: each stride-s conv maps n valid frames to ceil(n/s)."""
    for s in strides:
        lengths = (lengths + s - 1) // s
    return lengths


def sinusoidal_init(key: jax.Array, shape: tuple[int, int], dtype=jnp.float32) -> jax.Array:
    """Initializer of a [length, features] position table: the sinusoids (`key` is unused)."""
    del key
    return jnp.asarray(sinusoidal_positions(*shape), dtype)


class ConvSubsampler(nn.Module):
    """Conv1d + GELU layers over time (mel bins as channels), one per stride.

    With strides (2, 2) and a 10 ms hop the output frames are 40 ms apart. Padded frames are
    zeroed before the first layer and after every layer, so that outputs never depend on how
    much padding a batch has.
    """

    features: int
    strides: tuple[int, ...]
    kernel_size: int = 3
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        """[batch, frames, n_mels] → ([batch, ceil(frames / prod(strides)), features], lengths)."""
        pad = self.kernel_size // 2
        x = x * padding_mask(lengths, x.shape[1])[:, :, None].astype(x.dtype)
        for i, stride in enumerate(self.strides):
            in_axis = MEL if i == 0 else CONV_IN
            x = nn.Conv(
                self.features,
                kernel_size=(self.kernel_size,),
                strides=(stride,),
                padding=((pad, pad),),
                dtype=self.dtype,
                param_dtype=jnp.float32,
                kernel_init=partitioned(
                    nn.initializers.lecun_normal(), CONV_WINDOW, in_axis, EMBED
                ),
                bias_init=partitioned(nn.initializers.zeros, EMBED),
                name=f"conv{i}",
            )(x)  # [batch, ceil(frames / stride), features]
            x = gelu(x)
            lengths = subsampled_lengths(lengths, (stride,))
            x = x * padding_mask(lengths, x.shape[1])[:, :, None].astype(x.dtype)
        return constrain(x, BATCH, LENGTH, EMBED), lengths


class TransformerEncoder(nn.Module):
    """Conv stem → sinusoidal positions → pre-LN Transformer layers → final LayerNorm.

    `position_table=N` stores the position table as a parameter "pos_embedding" [N, d_model]
    (initialized to the sinusoids), as Whisper checkpoints do; `key_bias=False` drops the key
    projection's bias, as Whisper does.
    """

    d_model: int
    num_heads: int
    num_layers: int
    mlp_dim: int
    subsample_strides: tuple[int, ...]
    conv_kernel: int = 3
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32
    key_bias: bool = True
    position_table: int | None = None
    remat: str = "none"  # a layers.REMAT_POLICIES key
    # One `nn.scan` over the layers (parameters stacked under "layers", leading axis LAYERS):
    # one layer is compiled instead of num_layers; the numerics are the loop's.
    scan_layers: bool = False

    @nn.compact
    def __call__(
        self, features: jax.Array, lengths: jax.Array, deterministic: bool
    ) -> tuple[jax.Array, jax.Array]:
        """Encodes log-mel features.

        Args:
          features: float [batch, frames, n_mels].
          lengths: int [batch] valid frames.
        Returns:
          (encoded [batch, enc_frames, d_model], enc_lengths int [batch]).
        """
        x = features.astype(self.dtype)
        x, lengths = ConvSubsampler(
            self.d_model, self.subsample_strides, self.conv_kernel, self.dtype, name="stem"
        )(x, lengths)
        length = x.shape[1]
        if self.position_table is None:
            positions = jnp.asarray(sinusoidal_positions(length, self.d_model))
        else:
            if length > self.position_table:
                raise ValueError(
                    f"{length} encoder frames exceed the {self.position_table}-row position table"
                )
            table = self.param(
                "pos_embedding",
                partitioned(sinusoidal_init, POSITION, EMBED),
                (self.position_table, self.d_model),
            )  # [position_table, d_model]
            positions = table[:length]
        x = x + positions[None].astype(self.dtype)  # [batch, enc_frames, d_model]
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        valid = padding_mask(lengths, length)  # [batch, enc_frames]
        # Keys only: a padded frame's own output is never read (later layers, the heads and the
        # cross-attention mask it out), so it may attend like any other query; the CPU's blocked
        # and the TPU's splash kernels then take a [batch, kv] mask instead of [batch, q, kv].
        mask = valid[:, None, None, :]  # [batch, 1, 1, enc_frames]
        layer_cls = remat_layer(EncoderLayer, self.remat, static_argnums=(3,))  # deterministic
        make_layer = functools.partial(
            layer_cls,
            self.num_heads,
            self.mlp_dim,
            self.dtype,
            self.dropout_rate,
            key_bias=self.key_bias,
        )
        if self.scan_layers:
            stack = scanned_layers(make_layer, self.num_layers, 2, name="layers")
            x, _ = stack(x, mask, deterministic)  # [batch, enc_frames, d_model]
        else:
            for i in range(self.num_layers):
                x = make_layer(name=f"layer{i}")(x, mask, deterministic)
        x = LayerNorm(dtype=self.dtype, name="final_norm")(x)
        return x, lengths


def audio_encoder(cfg: ModelConfig, dtype: Dtype, name: str = "encoder") -> TransformerEncoder:
    """The encoder of the CTC family and of the classification heads, from the model config
    (so a classifier's encoder can start from a CTC checkpoint)."""
    return TransformerEncoder(
        d_model=cfg.d_model,
        num_heads=cfg.num_heads,
        num_layers=cfg.num_layers,
        mlp_dim=cfg.mlp_dim,
        subsample_strides=tuple(cfg.subsample_strides),
        conv_kernel=cfg.conv_kernel,
        dropout_rate=cfg.dropout,
        dtype=dtype,
        remat=cfg.remat,
        scan_layers=cfg.scan_layers,
        name=name,
    )
