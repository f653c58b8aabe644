"""transformers' `SpeechT5HifiGan` vocoder (a HiFi-GAN V1 generator) in flax, for inference.

    log-mel [batch, frames, mels] → (normalize_before: (x - mean) / scale)
      → conv_pre (k=7)                                        [batch, frames, C]
      → for each upsampling i: leaky ReLU → ConvTranspose (stride u_i)
                                                  [batch, T · u_i, C / 2^(i+1)]
           → mean over the multi-receptive-field ResBlocks (kernels k_j, dilations d_j)
      → leaky ReLU (slope 0.01, torch's default, as transformers) → conv_post (k=7) → tanh
    waveform [batch, frames · prod(u)]

Weight norm is folded into plain kernels at conversion (`jaxseq.convert.hf_speecht5`).
Variables: {"params": ..., "stats": {"mean", "scale"}} (the vocoder's input normalization).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseq.models.layers import constrain, partitioned
from jaxseq.parallel.sharding import BATCH, CONV_IN, CONV_WINDOW, EMBED, LENGTH, MEL

Dtype = Any


@dataclass(frozen=True)
class HifiGanDims:
    """SpeechT5HifiGanConfig fields, with its defaults (microsoft/speecht5_hifigan)."""

    model_in_dim: int = 80
    sampling_rate: int = 16000
    upsample_initial_channel: int = 512
    upsample_rates: tuple[int, ...] = (4, 4, 4, 4)
    upsample_kernel_sizes: tuple[int, ...] = (8, 8, 8, 8)
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    leaky_relu_slope: float = 0.1
    normalize_before: bool = True

    @property
    def hop_length(self) -> int:
        """Waveform samples per spectrogram frame."""
        out = 1
        for u in self.upsample_rates:
            out *= u
        return out


def _conv(
    features: int,
    kernel: int,
    dilation: int,
    dtype: Dtype,
    name: str,
    in_axis: str = CONV_IN,
    out_axis: str = EMBED,
) -> nn.Conv:
    """A torch-style Conv1d: stride 1, symmetric padding (kernel · dilation - dilation) // 2."""
    pad = (kernel * dilation - dilation) // 2
    return nn.Conv(
        features,
        kernel_size=(kernel,),
        kernel_dilation=(dilation,),
        padding=((pad, pad),),
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=partitioned(nn.initializers.lecun_normal(), CONV_WINDOW, in_axis, out_axis),
        bias_init=partitioned(nn.initializers.zeros, out_axis),
        name=name,
    )


class ConvTranspose1d(nn.Module):
    """torch's ConvTranspose1d(stride, padding): output length (T - 1) · stride - 2 · padding +
    kernel. "kernel" [window, in, out] is torch's weight [in, out, window] transposed (and not
    flipped: it is flipped here, as a transposed convolution is a strided-input convolution
    with the flipped kernel)."""

    features: int
    kernel: int
    stride: int
    padding: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x [batch, T, in] → [batch, (T - 1) · stride - 2 · padding + kernel, features]."""
        kernel = self.param(
            "kernel",
            partitioned(nn.initializers.lecun_normal(), CONV_WINDOW, CONV_IN, EMBED),
            (self.kernel, x.shape[-1], self.features),
            jnp.float32,
        )
        bias = self.param(
            "bias", partitioned(nn.initializers.zeros, EMBED), (self.features,), jnp.float32
        )
        edge = self.kernel - 1 - self.padding
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            kernel[::-1].astype(self.dtype),
            window_strides=(1,),
            padding=((edge, edge),),
            lhs_dilation=(self.stride,),
            dimension_numbers=("NWC", "WIO", "NWC"),
        )
        return y + bias.astype(self.dtype)


class ResBlock(nn.Module):
    """HiFi-GAN's ResBlock1: for each dilation d, x = x + conv2(lrelu(conv1_d(lrelu(x))))."""

    channels: int
    kernel: int
    dilations: tuple[int, ...]
    slope: float
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x [batch, T, channels] → the same shape."""
        for i, d in enumerate(self.dilations):
            h = nn.leaky_relu(x, self.slope)
            h = _conv(self.channels, self.kernel, d, self.dtype, f"convs1_{i}")(h)
            h = nn.leaky_relu(h, self.slope)
            h = _conv(self.channels, self.kernel, 1, self.dtype, f"convs2_{i}")(h)
            x = x + h
        return x


class HifiGan(nn.Module):
    """transformers' SpeechT5HifiGan.forward on a batch."""

    dims: HifiGanDims
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, spectrogram: jax.Array) -> jax.Array:
        """spectrogram [batch, frames, model_in_dim] → waveform float32 [batch, frames · hop]."""
        d = self.dims
        x = spectrogram.astype(jnp.float32)
        mean = self.variable("stats", "mean", jnp.zeros, (d.model_in_dim,), jnp.float32)
        scale = self.variable("stats", "scale", jnp.ones, (d.model_in_dim,), jnp.float32)
        if d.normalize_before:
            x = (x - mean.value) / scale.value
        x = _conv(d.upsample_initial_channel, 7, 1, self.dtype, "conv_pre", MEL)(
            x.astype(self.dtype)
        )
        x = constrain(x, BATCH, LENGTH, EMBED)  # [batch, frames, C]
        kernels = len(d.resblock_kernel_sizes)
        for i, (rate, size) in enumerate(
            zip(d.upsample_rates, d.upsample_kernel_sizes, strict=True)
        ):
            channels = d.upsample_initial_channel // 2 ** (i + 1)
            x = nn.leaky_relu(x, d.leaky_relu_slope)
            x = ConvTranspose1d(
                channels, size, rate, (size - rate) // 2, self.dtype, name=f"upsample{i}"
            )(x)
            # [batch, T · rate, channels]
            total = None
            for j, (k, dil) in enumerate(
                zip(d.resblock_kernel_sizes, d.resblock_dilation_sizes, strict=True)
            ):
                out = ResBlock(
                    channels,
                    k,
                    tuple(dil),
                    d.leaky_relu_slope,
                    self.dtype,
                    name=f"resblock{i * kernels + j}",
                )(x)
                total = out if total is None else total + out
            x = total / kernels
        x = nn.leaky_relu(x, 0.01)  # transformers calls leaky_relu with torch's default slope
        x = _conv(1, 7, 1, self.dtype, "conv_post", out_axis=MEL)(x)  # [batch, samples, 1]
        return jnp.tanh(x[..., 0].astype(jnp.float32))  # [batch, samples]
