"""SpeechT5 / Transformer-TTS style text-to-speech: characters → log-mel frames + stop.

    text ids ─► embedding + α·sinusoids ─► pre-LN encoder layers ─► encoded
    previous frame ─► pre-net ─► + α·sinusoids ─► pre-LN decoder layers (causal self-attention,
        cross-attention to encoded) ─► LayerNorm ─► r mel frames + r stop logits per step
    mel (before) ─► conv post-net ─► residual ─► mel (after)

One decoder step predicts `reduction_factor` (r) frames; its input is the last frame of the
previous step (all zeros at step 0). The pre-net's dropout stays on at inference, as in
Tacotron 2: it is what keeps the decoder from copying its input. Cached decoding follows
`jaxseq.models.whisper` (t5x style "cache" collection, one step per call).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseq.models.layers import (
    LayerNorm,
    constrain,
    decoding_start,
    dense,
    embedding,
    padding_mask,
    partitioned,
    remat_layer,
    sinusoidal_positions,
)
from jaxseq.models.transformer import DecoderLayer, EncoderLayer
from jaxseq.parallel.sharding import (
    BATCH,
    CONV_IN,
    CONV_WINDOW,
    EMBED,
    LENGTH,
    MEL,
    MLP,
)

Dtype = Any


@dataclass(frozen=True)
class TTSDims:
    """The TTS model's hyperparameters."""

    vocab_size: int
    n_mels: int = 80
    d_model: int = 256
    num_heads: int = 4
    encoder_layers: int = 4
    decoder_layers: int = 4
    mlp_dim: int = 1024
    reduction_factor: int = 4
    prenet_dim: int = 256
    prenet_dropout: float = 0.5
    postnet_layers: int = 5
    postnet_channels: int = 256
    postnet_kernel: int = 5
    max_steps: int = 256  # decoder positions: at most max_steps * reduction_factor frames


class ScaledPositions(nn.Module):
    """x + α · sinusoids[start : start + length], α a learned scalar (Transformer TTS)."""

    max_length: int

    @nn.compact
    def __call__(self, x: jax.Array, start: jax.Array | int = 0) -> jax.Array:
        """x: [batch, length, d_model] → the same shape."""
        table = jnp.asarray(sinusoidal_positions(self.max_length, x.shape[-1]))
        alpha = self.param("alpha", partitioned(nn.initializers.ones, None), (1,))
        positions = jax.lax.dynamic_slice_in_dim(table, start, x.shape[1])  # [length, d_model]
        return x + (alpha * positions)[None].astype(x.dtype)


class TextEncoder(nn.Module):
    """Character embedding + scaled sinusoids → pre-LN Transformer layers → LayerNorm."""

    dims: TTSDims
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32
    remat: str = "none"

    @nn.compact
    def __call__(self, ids: jax.Array, lengths: jax.Array, deterministic: bool) -> jax.Array:
        """ids int [batch, chars], lengths int [batch] → encoded [batch, chars, d_model]."""
        d = self.dims
        x = embedding(d.vocab_size, d.d_model, self.dtype, 0.3, "embed")(ids)  # [b, chars, d]
        x = ScaledPositions(ids.shape[1], name="positions")(x)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        valid = padding_mask(lengths, ids.shape[1])  # [batch, chars]
        mask = valid[:, None, None, :]  # [batch, 1, 1, chars]: keys only, as the audio encoder's
        layer_cls = remat_layer(EncoderLayer, self.remat, static_argnums=(3,))
        for i in range(d.encoder_layers):
            x = layer_cls(d.num_heads, d.mlp_dim, self.dtype, self.dropout_rate, name=f"layer{i}")(
                x, mask, deterministic
            )
        x = LayerNorm(dtype=self.dtype, name="final_norm")(x)
        return constrain(x, BATCH, LENGTH, EMBED)


class Prenet(nn.Module):
    """Two ReLU layers with always-on dropout, then a projection to d_model.

    The dropout masks are drawn per batch row (the "dropout" rng folded with the row), so an
    utterance's masks do not depend on what else is in the batch.
    """

    dims: TTSDims
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, frames: jax.Array) -> jax.Array:
        """frames [batch, steps, n_mels] → [batch, steps, d_model]; needs the "dropout" rng."""
        d = self.dims
        x = frames.astype(self.dtype)
        keep = 1.0 - d.prenet_dropout
        for i, axes in enumerate([(MEL, EMBED), (EMBED, MLP)]):
            x = nn.relu(dense(d.prenet_dim, axes, self.dtype, f"dense{i}")(x))
            if d.prenet_dropout > 0.0:
                rows = jax.vmap(jax.random.fold_in, (None, 0))(
                    self.make_rng("dropout"), jnp.arange(x.shape[0])
                )  # one key per row
                mask = jax.vmap(lambda k, s=x.shape[1:]: jax.random.bernoulli(k, keep, s))(rows)
                x = jnp.where(mask, x / keep, 0.0).astype(self.dtype)  # [batch, steps, dim]
        return dense(d.d_model, (MLP, EMBED), self.dtype, "out")(x)


class Postnet(nn.Module):
    """Conv1d stack over time (LayerNorm + tanh between layers) predicting a mel residual."""

    dims: TTSDims
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, mel: jax.Array, lengths: jax.Array, deterministic: bool) -> jax.Array:
        """mel [batch, frames, n_mels], lengths int [batch] → residual [batch, frames, n_mels]
        (zero on padded frames)."""
        d = self.dims
        valid = padding_mask(lengths, mel.shape[1])[:, :, None].astype(self.dtype)
        x = mel.astype(self.dtype) * valid
        pad = d.postnet_kernel // 2
        for i in range(d.postnet_layers):
            last = i == d.postnet_layers - 1
            x = nn.Conv(
                d.n_mels if last else d.postnet_channels,
                kernel_size=(d.postnet_kernel,),
                padding=((pad, pad),),
                dtype=self.dtype,
                param_dtype=jnp.float32,
                kernel_init=partitioned(
                    nn.initializers.lecun_normal(),
                    CONV_WINDOW,
                    MEL if i == 0 else CONV_IN,
                    MEL if last else EMBED,
                ),
                bias_init=partitioned(nn.initializers.zeros, MEL if last else EMBED),
                name=f"conv{i}",
            )(x)  # [batch, frames, channels]
            if not last:
                x = jnp.tanh(LayerNorm(dtype=self.dtype, name=f"norm{i}")(x))
                x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
            x = x * valid
        return x


class MelDecoder(nn.Module):
    """Pre-net + scaled sinusoids → pre-LN decoder layers → (mel frames, stop logits)."""

    dims: TTSDims
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32
    remat: str = "none"

    @nn.compact
    def __call__(
        self,
        frames: jax.Array,
        encoded: jax.Array,
        text_mask: jax.Array,
        deterministic: bool = True,
        decode: bool = False,
    ) -> tuple[jax.Array, jax.Array]:
        """Per-step outputs for decoder inputs `frames`.

        Args:
          frames: [batch, steps, n_mels] (steps 1 for a cached step): each step's input frame.
          encoded: [batch, chars, d_model] (ignored by a cached step).
          text_mask: bool [batch, chars].
          decode: use and update the "cache" collection.
        Returns:
          mel float32 [batch, steps, r, n_mels]; stop logits float32 [batch, steps, r].
        """
        d = self.dims
        steps = frames.shape[1]
        start = decoding_start(self, steps, decode)
        x = Prenet(d, self.dtype, name="prenet")(frames)  # [batch, steps, d_model]
        x = ScaledPositions(d.max_steps, name="positions")(x, start)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        x = constrain(x, BATCH, LENGTH, EMBED)
        cross_mask = text_mask[:, None, None, :]  # [batch, 1, 1, chars]
        layer_cls = remat_layer(DecoderLayer, "none" if decode else self.remat, (5, 6))
        make_layer = functools.partial(
            layer_cls,
            d.num_heads,
            d.mlp_dim,
            self.dtype,
            self.dropout_rate,
            sow_cross_weights=True,
        )
        for i in range(d.decoder_layers):
            x = make_layer(name=f"layer{i}")(x, encoded, None, cross_mask, deterministic, decode)
        x = LayerNorm(dtype=self.dtype, name="final_norm")(x)  # [batch, steps, d_model]
        r = d.reduction_factor
        mel = dense(r * d.n_mels, (EMBED, MEL), self.dtype, "mel_out")(x)  # [batch, steps, r*m]
        stop = dense(r, (EMBED, None), self.dtype, "stop_out")(x)  # [batch, steps, r]
        mel = mel.astype(jnp.float32).reshape(*mel.shape[:2], r, d.n_mels)
        return mel, stop.astype(jnp.float32)


class TTSModel(nn.Module):
    """Text encoder, autoregressive mel decoder with stop logits, and conv post-net."""

    dims: TTSDims
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32
    remat: str = "none"

    def setup(self):
        self.encoder = TextEncoder(self.dims, self.dropout_rate, self.dtype, self.remat)
        self.decoder = MelDecoder(self.dims, self.dropout_rate, self.dtype, self.remat)
        self.postnet = Postnet(self.dims, self.dropout_rate, self.dtype)

    def encode(
        self, ids: jax.Array, lengths: jax.Array, deterministic: bool = True
    ) -> tuple[jax.Array, jax.Array]:
        """ids int [batch, chars], lengths int [batch] →
        (encoded [batch, chars, d_model], text_mask bool [batch, chars])."""
        return self.encoder(ids, lengths, deterministic), padding_mask(lengths, ids.shape[1])

    def decode(
        self,
        frames: jax.Array,
        encoded: jax.Array,
        text_mask: jax.Array,
        deterministic: bool = True,
        use_cache: bool = False,
    ) -> tuple[jax.Array, jax.Array]:
        """See `MelDecoder`: (mel [batch, steps, r, n_mels], stop logits [batch, steps, r])."""
        return self.decoder(frames, encoded, text_mask, deterministic, use_cache)

    def refine(self, mel: jax.Array, lengths: jax.Array, deterministic: bool = True) -> jax.Array:
        """The post-net's output: mel + residual, [batch, frames, n_mels]."""
        return mel + self.postnet(mel, lengths, deterministic)

    def __call__(
        self,
        ids: jax.Array,
        id_lengths: jax.Array,
        frames: jax.Array,
        frame_lengths: jax.Array,
        deterministic: bool = True,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Teacher forcing.

        Args:
          ids, id_lengths: the text, int [batch, chars] and [batch].
          frames: [batch, steps, n_mels] decoder inputs (zeros, then the last frame of each
            step's target group).
          frame_lengths: int [batch] valid target frames (for the post-net's padding).
        Returns:
          mel before and after the post-net float32 [batch, steps * r, n_mels] and stop logits
          float32 [batch, steps * r].
        """
        encoded, text_mask = self.encode(ids, id_lengths, deterministic)
        mel, stop = self.decode(frames, encoded, text_mask, deterministic)
        mel = mel.reshape(mel.shape[0], -1, mel.shape[-1])  # [batch, steps * r, n_mels]
        after = self.refine(mel, frame_lengths, deterministic)
        return mel, after.astype(jnp.float32), stop.reshape(stop.shape[0], -1)
