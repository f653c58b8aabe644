"""Transformer layers: the position-wise MLP block and the pre-LN encoder and decoder layers."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseq.models.attention import MultiHeadAttention
from jaxseq.models.layers import LayerNorm, constrain, dense, gelu
from jaxseq.parallel.sharding import BATCH, EMBED, LENGTH, MLP

Dtype = Any


class MlpBlock(nn.Module):
    """Position-wise feed-forward block: Dense → GELU → dropout → Dense."""

    mlp_dim: int
    dtype: Dtype = jnp.float32
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        features = x.shape[-1]
        h = dense(self.mlp_dim, (EMBED, MLP), self.dtype, "wi")(x)  # [batch, length, mlp]
        h = constrain(gelu(h), BATCH, LENGTH, MLP)
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
        """x: [batch, length, embed]; mask: bool [batch, 1, 1 or length, length]."""
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
        self_mask: bool [batch, 1, length, length] or None (the self-attention is causal either
        way); cross_mask: bool [batch, 1, 1, enc_frames].
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
        h = attn(cache="self", causal=True, name="self_attn")(
            h, h, self_mask, deterministic, decode
        )
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
