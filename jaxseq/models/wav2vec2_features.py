"""The waveform front of Wav2Vec2 and HuBERT (Baevski et al., 2020; Hsu et al., 2021): the CNN
feature encoder over raw 16 kHz audio, its length arithmetic, the convolutional relative
position embedding with weight normalization, and span-mask sampling.

The layouts follow transformers' `Wav2Vec2FeatureEncoder` and `Wav2Vec2PositionalConvEmbedding`,
so that `jaxseq.convert.hf_wav2vec2` maps checkpoints onto them exactly; the encoder that uses
them is `jaxseq.models.wav2vec2`.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxseq.models.layers import LayerNorm, constrain, gelu, partitioned
from jaxseq.parallel.sharding import BATCH, CONV_IN, CONV_WINDOW, EMBED, LENGTH

Dtype = Any

GROUP_NORM_EPS = 1e-5  # torch's GroupNorm and LayerNorm default, used by the conv layers


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def scale_gradient(x: jax.Array, factor: float) -> jax.Array:
    """x itself, whose gradient is scaled by `factor` on the way back (fairseq's GradMultiply,
    its wav2vec 2.0 feature_grad_mult)."""
    return x


def _scale_gradient_fwd(x: jax.Array, factor: float) -> tuple[jax.Array, None]:
    del factor
    return x, None


def _scale_gradient_bwd(factor: float, residual: None, grad: jax.Array) -> tuple[jax.Array]:
    del residual
    return (grad * jnp.asarray(factor, grad.dtype),)


scale_gradient.defvjp(_scale_gradient_fwd, _scale_gradient_bwd)


def conv_output_lengths(
    lengths: Any, conv_kernel: tuple[int, ...], conv_stride: tuple[int, ...]
) -> Any:
    """Feature frames of waveforms of `lengths` [batch] samples: each unpadded conv maps n
    samples (or frames) to floor((n - kernel) / stride) + 1. 400 / 320 samples (25 / 20 ms at
    16 kHz) per frame for the standard stack; clamped at 0 for inputs shorter than one frame.
    A Python int (a static shape) gives a Python int, with no device op: `jaxseq compile` for
    a TPU topology has no chips to run one on."""
    for kernel, stride in zip(conv_kernel, conv_stride, strict=True):
        if isinstance(lengths, int):
            lengths = max((lengths - kernel) // stride + 1, 0)
        else:
            lengths = jnp.maximum((lengths - kernel) // stride + 1, 0)
    return lengths


class ConvFeatureEncoder(nn.Module):
    """Raw waveform [batch, samples] → features [batch, frames, conv_dim[-1]].

    One unpadded Conv1d per entry of conv_dim/conv_kernel/conv_stride, each followed by GELU.
    `feat_extract_norm="group"` (Wav2Vec2/HuBERT base): a GroupNorm with one group per channel
    (statistics over time) after the first conv only; `"layer"` (large/lv60): a LayerNorm over
    channels after every conv.

    With `lengths` (valid samples [batch]) the GroupNorm takes its statistics over each item's
    valid frames only, so an item's features do not depend on its padding: they equal
    transformers' on the item alone (transformers itself takes them over the padding too, which
    is why its base processors send unpadded batches of one); an item of no samples takes them
    over its padding. Without `lengths` every frame counts, as in transformers.
    """

    conv_dim: tuple[int, ...]
    conv_kernel: tuple[int, ...]
    conv_stride: tuple[int, ...]
    conv_bias: bool = False
    feat_extract_norm: str = "group"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, waveform: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
        if self.feat_extract_norm not in ("group", "layer"):
            raise ValueError(
                f"feat_extract_norm must be 'group' or 'layer', got {self.feat_extract_norm!r}"
            )
        x = waveform.astype(self.dtype)[:, :, None]  # [batch, samples, 1]
        layers = zip(self.conv_dim, self.conv_kernel, self.conv_stride, strict=True)
        for i, (channels, kernel, stride) in enumerate(layers):
            x = nn.Conv(
                channels,
                kernel_size=(kernel,),
                strides=(stride,),
                padding="VALID",
                use_bias=self.conv_bias,
                dtype=self.dtype,
                param_dtype=jnp.float32,
                kernel_init=partitioned(nn.initializers.he_normal(), CONV_WINDOW, CONV_IN, EMBED),
                bias_init=partitioned(nn.initializers.zeros, EMBED),
                name=f"conv{i}",
            )(x)  # [batch, (frames - kernel) // stride + 1, channels]
            if self.feat_extract_norm == "layer":
                x = LayerNorm(dtype=self.dtype, epsilon=GROUP_NORM_EPS, name=f"norm{i}")(x)
            elif i == 0:
                valid = None
                if lengths is not None:  # [batch, frames, channels]: the first conv's frames
                    first = conv_output_lengths(lengths, (kernel,), (stride,))
                    valid = jnp.arange(x.shape[1])[None, :, None] < first[:, None, None]
                    # A row with no valid frame (an evaluation batch's filler, 0 samples) takes
                    # its statistics over all of its (zero) frames: none would give 0/0 = NaN.
                    valid = valid | (first == 0)[:, None, None]
                    valid = jnp.broadcast_to(valid, x.shape)
                x = nn.GroupNorm(
                    num_groups=channels,  # one channel per group: statistics over time
                    epsilon=GROUP_NORM_EPS,
                    dtype=self.dtype,
                    param_dtype=jnp.float32,
                    use_fast_variance=False,
                    scale_init=partitioned(nn.initializers.ones, EMBED),
                    bias_init=partitioned(nn.initializers.zeros, EMBED),
                    name="norm0",
                )(x, mask=valid)
            x = gelu(x)
        return constrain(x, BATCH, LENGTH, EMBED)  # [batch, frames, conv_dim[-1]]


class ConvPositionalEmbedding(nn.Module):
    """Wav2Vec2's relative position embedding: a grouped Conv1d over time (kernel
    `num_conv_pos_embeddings`, `num_conv_pos_embedding_groups` groups, zero "same" padding,
    the last output frame dropped for an even kernel), then GELU.

    The kernel is weight-normalized over each tap, as torch's `weight_norm(conv, dim=2)`:
    kernel[k] = weight_g[k] · weight_v[k] / ‖weight_v[k]‖, with weight_v [kernel, channels /
    groups, channels] and weight_g [kernel]; both are parameters, as in the checkpoints.
    """

    num_conv_pos_embeddings: int
    num_conv_pos_embedding_groups: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x [batch, frames, hidden] → position embeddings [batch, frames, hidden]."""
        hidden = x.shape[-1]
        size, groups = self.num_conv_pos_embeddings, self.num_conv_pos_embedding_groups
        if hidden % groups:
            raise ValueError(f"hidden size {hidden} is not divisible by {groups} conv groups")
        weight_v = self.param(
            "weight_v",
            partitioned(nn.initializers.he_normal(), CONV_WINDOW, CONV_IN, EMBED),
            (size, hidden // groups, hidden),
            jnp.float32,
        )
        weight_g = self.param(
            "weight_g",
            partitioned(
                lambda _, shape, dtype: jnp.sqrt(jnp.sum(weight_v**2, axis=(1, 2))).astype(dtype),
                CONV_WINDOW,
            ),
            (size,),
            jnp.float32,
        )  # initialized to ‖weight_v[k]‖, so that the initial kernel is weight_v
        bias = self.param("bias", partitioned(nn.initializers.zeros, EMBED), (hidden,))
        norm = jnp.sqrt(jnp.sum(weight_v**2, axis=(1, 2), keepdims=True))  # [size, 1, 1]
        kernel = weight_v * (weight_g[:, None, None] / norm)  # [size, hidden / groups, hidden]
        y = lax.conv_general_dilated(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            window_strides=(1,),
            padding=((size // 2, size // 2),),
            dimension_numbers=("NWC", "WIO", "NWC"),
            feature_group_count=groups,
        )  # [batch, frames + 1 - size % 2, hidden]
        y = y[:, : x.shape[1]] + bias.astype(self.dtype)  # an even kernel's extra frame dropped
        return gelu(y)


def sample_span_mask(
    rng: jax.Array,
    lengths: jax.Array,
    size: int,
    mask_prob: float,
    mask_length: int,
    min_masks: int = 0,
) -> jax.Array:
    """Random spans to mask (SpecAugment-style, as wav2vec 2.0 pre-training and fine-tuning use),
    with the distribution of transformers' `_compute_mask_indices`, in JAX (jits; no NumPy).

    Item b gets n_b = max(min_masks, floor(mask_prob · lengths[b] / mask_length + u)) spans of
    `mask_length` positions (u ~ U[0, 1) drawn once per batch: probabilistic rounding), capped so
    that n_b · mask_length <= size and n_b <= lengths[b] - mask_length + 1; their starts are
    distinct, uniform over [0, lengths[b] - mask_length]. Spans may overlap, so fewer than
    n_b · mask_length positions can be masked; none lies past lengths[b].

    Args:
      rng: a PRNG key.
      lengths: int [batch] valid positions (frames for a time mask; pass `size` for a feature
        mask).
      size: the masked axis' extent.
      mask_prob, mask_length, min_masks: transformers' mask_time_prob, mask_time_length,
        mask_time_min_masks (or the mask_feature_* ones).
    Returns:
      bool [batch, size], True on masked positions.
    """
    if mask_length < 1:
        raise ValueError(f"mask_length must be at least 1, got {mask_length}")
    count_key, start_key = jax.random.split(rng)
    lengths = jnp.asarray(lengths, jnp.int32)
    u = jax.random.uniform(count_key, ())
    count = jnp.floor(mask_prob * lengths / mask_length + u).astype(jnp.int32)
    count = jnp.maximum(count, min_masks)
    count = jnp.minimum(count, size // mask_length)
    starts = jnp.maximum(lengths - mask_length + 1, 0)  # [batch] possible start positions
    count = jnp.minimum(count, starts)
    # Distinct uniform starts: the `count` candidates with the smallest random scores.
    scores = jax.random.uniform(start_key, (lengths.shape[0], size))  # [batch, size]
    candidate = jnp.arange(size)[None, :] < starts[:, None]
    scores = jnp.where(candidate, scores, 2.0)
    rank = jnp.argsort(jnp.argsort(scores, axis=1), axis=1)  # [batch, size]
    is_start = rank < count[:, None]
    # Position t is masked when a span starts in (t - mask_length, t].
    started = jnp.cumsum(is_start, axis=1)  # [batch, size]
    before = jnp.pad(started, ((0, 0), (mask_length, 0)))[:, :size]  # started[t - mask_length]
    return started - before > 0
