"""The Audio Spectrogram Transformer (AST; Gong et al., 2021) for audio classification.

The layout is transformers' `ASTForAudioClassification`, so that `jaxseq.convert.hf_ast` can
load its checkpoints: the log-mel [batch, frames, n_mels], padded to `classify.max_frames`, is
read as an image [n_mels, frames]; overlapping patch x patch squares (strides frequency_stride,
time_stride) are projected to d_model and flattened frequency-major; a [CLS] and a
distillation token are prepended and a learned position table added; pre-LN ViT layers
(jaxseq's EncoderLayer) and a final LayerNorm follow; the pooled output goes through a
LayerNorm and a linear head.

Beyond transformers (which has no padding mask): frames past an item's length are zeroed, and
patches that start past it are masked out of attention and out of mean pooling, so the logits
of a short clip do not depend on its padding. Full-length inputs give transformers' numerics.
Dropout differs from transformers' in training only: jaxseq's EncoderLayer also drops the MLP's
hidden units, and `model.dropout` serves attention weights and residual branches alike.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxseq.config import ClassifyConfig, ModelConfig
from jaxseq.models.layers import (
    LayerNorm,
    constrain,
    dense,
    padding_mask,
    partitioned,
    remat_layer,
    scanned_layers,
)
from jaxseq.models.transformer import EncoderLayer
from jaxseq.parallel.sharding import BATCH, CONV_WINDOW, EMBED, LABELS, LENGTH, MEL, POSITION

Dtype = Any

NUM_EXTRA_TOKENS = 2  # [CLS] and distillation, in front of the patches


def patch_grid(n_mels: int, classify: ClassifyConfig) -> tuple[int, int]:
    """(freq_patches, time_patches) of a [max_frames, n_mels] input: the output extent of a
    valid (unpadded) patch_size x patch_size convolution with AST's strides.

    Raises:
      ValueError: when n_mels or classify.max_frames is smaller than one patch.
    """
    p = classify.patch_size
    if n_mels < p or classify.max_frames < p:
        raise ValueError(
            f"AST needs at least {p} mel bins and classify.max_frames >= {p} (one "
            f"{p}x{p} patch), got n_mels={n_mels}, max_frames={classify.max_frames}"
        )
    freq_patches = (n_mels - p) // classify.frequency_stride + 1
    time_patches = (classify.max_frames - p) // classify.time_stride + 1
    return freq_patches, time_patches


def min_frames(classify: ClassifyConfig) -> int:
    """The shortest clip AST classifies: one patch of frames (shorter ones are refused)."""
    return classify.patch_size


class PatchEmbedding(nn.Module):
    """AST's patch projection: a Conv2d(1 → features) over the spectrogram image.

    The kernel is [patch (frequency), patch (time), features]: the frequency extent runs over
    mel bins (axis MEL), the time extent over frames (CONV_WINDOW).
    """

    features: int
    patch_size: int
    strides: tuple[int, int]  # (frequency, time)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, image: jax.Array) -> jax.Array:
        """[batch, n_mels, frames] → [batch, freq_patches, time_patches, features]."""
        p = self.patch_size
        kernel = self.param(
            "kernel",
            partitioned(
                nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2), MEL, CONV_WINDOW, EMBED
            ),
            (p, p, self.features),
            jnp.float32,
        )
        bias = self.param("bias", partitioned(nn.initializers.zeros, EMBED), (self.features,))
        x = image.astype(self.dtype)[..., None]  # [batch, n_mels, frames, 1]
        y = lax.conv_general_dilated(
            x,
            kernel[:, :, None, :].astype(self.dtype),  # [patch, patch, 1, features]
            window_strides=self.strides,
            padding="VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )  # [batch, freq_patches, time_patches, features]
        return y + bias.astype(self.dtype)


class ASTEncoder(nn.Module):
    """Patches + [CLS] + distillation token + positions → ViT layers → final LayerNorm."""

    cfg: ModelConfig
    classify: ClassifyConfig
    n_mels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, features: jax.Array, lengths: jax.Array, deterministic: bool
    ) -> tuple[jax.Array, jax.Array]:
        """Encodes log-mel features.

        Args:
          features: float [batch, frames, n_mels], frames <= classify.max_frames (zero-padded
            to max_frames here, as AST's position table covers exactly max_frames).
          lengths: int [batch] valid frames.
        Returns:
          (hidden [batch, 2 + num_patches, d_model]: [CLS], distillation, then the patches
          frequency-major; valid bool [batch, 2 + num_patches]: False on patches that start
          past the item's length).
        Raises:
          ValueError: when frames > classify.max_frames or the last axis is not n_mels.
        """
        cfg, c = self.cfg, self.classify
        batch, frames, n_mels = features.shape
        if n_mels != self.n_mels:
            raise ValueError(f"AST was built for {self.n_mels} mel bins, got features of {n_mels}")
        if frames > c.max_frames:
            raise ValueError(
                f"{frames} frames exceed AST's classify.max_frames={c.max_frames} (its position "
                "table's extent); crop or drop longer clips"
            )
        freq_patches, time_patches = patch_grid(n_mels, c)
        num_patches = freq_patches * time_patches
        x = features * padding_mask(lengths, frames)[:, :, None].astype(features.dtype)
        x = jnp.pad(x, ((0, 0), (0, c.max_frames - frames), (0, 0)))  # [batch, max_frames, mels]
        image = jnp.swapaxes(x, 1, 2)  # [batch, n_mels, max_frames], as transformers' image
        x = PatchEmbedding(
            cfg.d_model,
            c.patch_size,
            (c.frequency_stride, c.time_stride),
            self.dtype,
            name="patch_embed",
        )(image)  # [batch, freq_patches, time_patches, d_model]
        x = x.reshape(batch, num_patches, cfg.d_model)  # frequency-major, as torch's flatten(2)
        token_init = partitioned(nn.initializers.normal(0.02), EMBED)
        cls = self.param("cls_token", token_init, (cfg.d_model,))
        distill = self.param("distillation_token", token_init, (cfg.d_model,))
        extra = jnp.broadcast_to(
            jnp.stack([cls, distill]).astype(self.dtype), (batch, NUM_EXTRA_TOKENS, cfg.d_model)
        )
        x = jnp.concatenate([extra, x], axis=1)  # [batch, 2 + num_patches, d_model]
        table = self.param(
            "pos_embedding",
            partitioned(nn.initializers.normal(0.02), POSITION, EMBED),
            (NUM_EXTRA_TOKENS + num_patches, cfg.d_model),
        )  # [2 + num_patches, d_model]
        x = x + table[None].astype(self.dtype)
        x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
        x = constrain(x, BATCH, LENGTH, EMBED)

        # A patch is padding when its first frame is: time patch t starts at t * time_stride.
        time_valid = padding_mask((lengths + c.time_stride - 1) // c.time_stride, time_patches)
        patch_valid = jnp.broadcast_to(
            time_valid[:, None, :], (batch, freq_patches, time_patches)
        ).reshape(batch, num_patches)  # frequency-major, as the patches
        valid = jnp.concatenate(
            [jnp.ones((batch, NUM_EXTRA_TOKENS), bool), patch_valid], axis=1
        )  # [batch, 2 + num_patches]
        mask = valid[:, None, None, :]  # [batch, 1, 1 (every query), kv]

        layer_cls = remat_layer(EncoderLayer, cfg.remat, static_argnums=(3,))  # deterministic
        make_layer = functools.partial(
            layer_cls,
            cfg.num_heads,
            cfg.mlp_dim,
            self.dtype,
            cfg.dropout,
            epsilon=c.layer_norm_eps,
        )
        if cfg.scan_layers:
            stack = scanned_layers(make_layer, cfg.num_layers, 2, name="layers")
            x, _ = stack(x, mask, deterministic)  # [batch, 2 + num_patches, d_model]
        else:
            for i in range(cfg.num_layers):
                x = make_layer(name=f"layer{i}")(x, mask, deterministic)
        x = LayerNorm(dtype=self.dtype, epsilon=c.layer_norm_eps, name="final_norm")(x)
        return x, valid


def pool(hidden: jax.Array, valid: jax.Array, pooling: str) -> jax.Array:
    """AST's pooled output, float32 [batch, d_model], of hidden [batch, 2 + patches, d_model].

    "cls": the mean of the [CLS] and distillation tokens (transformers' pooler); "mean": the
    mean over the valid patches (`valid` bool [batch, 2 + patches]; the two tokens excluded).
    """
    hidden = hidden.astype(jnp.float32)
    if pooling == "cls":
        return (hidden[:, 0] + hidden[:, 1]) / 2
    if pooling == "mean":
        weights = valid[:, NUM_EXTRA_TOKENS:, None].astype(jnp.float32)  # [batch, patches, 1]
        total = jnp.sum(hidden[:, NUM_EXTRA_TOKENS:] * weights, axis=1)  # [batch, d_model]
        return total / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
    raise ValueError(f"classify.pooling must be 'cls' or 'mean', got {pooling!r}")


class AST(nn.Module):
    """Log-mel [batch, frames, n_mels] → classification logits float32 [batch, num_labels].

    Sizes come from `cfg` (d_model, num_heads, num_layers, mlp_dim, dropout, remat,
    scan_layers); the patching, pooling and LayerNorm epsilon from `classify`. Parameters:
    "encoder" (ASTEncoder), then transformers' ASTMLPHead as "head_norm" and "head".
    """

    cfg: ModelConfig
    classify: ClassifyConfig
    num_labels: int
    n_mels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, features: jax.Array, lengths: jax.Array, deterministic: bool = True
    ) -> jax.Array:
        """features float [batch, frames <= classify.max_frames, n_mels], lengths int [batch]
        valid frames → logits float32 [batch, num_labels] (see ASTEncoder for the errors)."""
        hidden, valid = ASTEncoder(
            self.cfg, self.classify, self.n_mels, self.dtype, name="encoder"
        )(
            features, lengths, deterministic
        )  # [batch, 2 + num_patches, d_model], [batch, 2 + num_patches]
        pooled = pool(hidden, valid, self.classify.pooling)  # float32 [batch, d_model]
        h = LayerNorm(dtype=self.dtype, epsilon=self.classify.layer_norm_eps, name="head_norm")(
            pooled
        )
        logits = dense(self.num_labels, (EMBED, LABELS), self.dtype, "head")(h)  # [b, labels]
        return constrain(logits.astype(jnp.float32), BATCH, LABELS)
