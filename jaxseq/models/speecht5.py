"""transformers' `SpeechT5ForTextToSpeech`, exactly, for inference (imported by
`jaxseq.convert.hf_speecht5`; generation in `jaxseq.decoding.speecht5`).

    text ids [batch, chars]
      → embedding + α · interleaved sinusoids → LayerNorm               [batch, chars, hidden]
      → post-LN encoder layers with a relative position bias             encoded
    previous frame [batch, steps, mels]
      → pre-net: (Dense → ReLU → consistent dropout) × n → Dense → + α · interleaved sinusoids
      → concat(L2-normalized speaker embedding) → Dense → ReLU            [batch, steps, hidden]
      → post-LN decoder layers (causal self-attention, cross-attention, MLP)
      → feat_out: r mel frames per step; prob_out: r stop logits per step
    mel before post-net [batch, steps · r, mels] → post-net (Conv1d → BatchNorm → tanh) + residual

This is *not* jaxseq's own TTS family (`jaxseq.models.tts`, pre-LN and different positions);
it mirrors transformers' module layout so that checkpoints convert exactly:

  * Attention scales the query by head_dim^-0.5; the encoder adds q · pe_k[clip(i - j)] (the
    relative position bias, `encoder_max_relative_position`) to the logits.
  * The pre-net's dropout is transformers' `_consistent_dropout`: ONE mask for the whole batch,
    drawn as bernoulli(p) and *keeping* the ones, scaled by 1 / (1 - p) (the usual dropout only
    at SpeechT5's p = 0.5). transformers keeps it on at inference; here it is on when the
    "dropout" rng is given (`prenet_dropout=True`) and can be replaced by explicit masks.
  * The post-net's BatchNorms use their running statistics ("batch_stats" collection).

Variables are {"params": ..., "batch_stats": ...}; parameters are float32 and carry logical axes
(jaxseq.parallel.sharding) like the other models.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxseq.models.attention import MergeHeads, MultiHeadAttention, SplitHeads
from jaxseq.models.layers import LayerNorm, constrain, dense, embedding, partitioned
from jaxseq.models.transformer import MlpBlock
from jaxseq.parallel.sharding import (
    BATCH,
    CONV_IN,
    CONV_WINDOW,
    EMBED,
    HEADS,
    KV,
    LENGTH,
    MEL,
    MLP,
    POSITION,
)

Dtype = Any


@dataclass(frozen=True)
class SpeechT5Dims:
    """SpeechT5 text-to-speech hyperparameters, named after transformers' SpeechT5Config
    fields, with its defaults (microsoft/speecht5_tts). Activations are exact GELU."""

    vocab_size: int = 81
    hidden_size: int = 768
    encoder_layers: int = 12
    encoder_attention_heads: int = 12
    encoder_ffn_dim: int = 3072
    decoder_layers: int = 6
    decoder_attention_heads: int = 12
    decoder_ffn_dim: int = 3072
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    eos_token_id: int = 2
    num_mel_bins: int = 80
    speech_decoder_prenet_layers: int = 2
    speech_decoder_prenet_units: int = 256
    speech_decoder_prenet_dropout: float = 0.5
    speaker_embedding_dim: int = 512
    speech_decoder_postnet_layers: int = 5
    speech_decoder_postnet_units: int = 256
    speech_decoder_postnet_kernel: int = 5
    reduction_factor: int = 2
    max_speech_positions: int = 4000
    max_text_positions: int = 450
    encoder_max_relative_position: int = 160


def scaled_positions_table(length: int, features: int) -> np.ndarray:
    """SpeechT5's (ESPnet's) sinusoid table, float32 [length, features]: sin at even channels,
    cos at odd ones, timescales 10000^(2i / features); computed in float32 as torch does."""
    div = np.exp(
        np.arange(0, features, 2).astype(np.float32) * np.float32(-(np.log(10000.0) / features))
    ).astype(np.float32)
    angles = np.arange(length).astype(np.float32)[:, None] * div[None, :]  # [length, f // 2]
    table = np.zeros((length, features), np.float32)
    table[:, 0::2] = np.sin(angles)
    table[:, 1::2] = np.cos(angles[:, : features // 2])
    return table


class ScaledPositionalEncoding(nn.Module):
    """x + α · table[start : start + length] (transformers' SpeechT5ScaledPositionalEncoding;
    its dropout is off at inference). Parameter "alpha" []."""

    max_length: int

    @nn.compact
    def __call__(self, x: jax.Array, start: jax.Array | int = 0) -> jax.Array:
        """x: [batch, length, hidden] → the same shape."""
        table = jnp.asarray(scaled_positions_table(self.max_length, x.shape[-1]))
        alpha = self.param("alpha", partitioned(nn.initializers.ones), (), jnp.float32)
        rows = jax.lax.dynamic_slice_in_dim(table, start, x.shape[1])  # [length, hidden]
        return x + (alpha * rows)[None].astype(x.dtype)


def relative_positions(length: int, max_relative: int) -> np.ndarray:
    """int [length, length] rows of SpeechT5's relative position table: i - j clipped to
    [-max_relative, max_relative - 1], offset by max_relative."""
    pos = np.arange(length)[:, None] - np.arange(length)[None, :]
    return np.clip(pos, -max_relative, max_relative - 1) + max_relative


class RelativeSelfAttention(nn.Module):
    """SpeechT5's encoder self-attention: softmax(s·q·kᵀ + s·q·pe[i, j]) · v, s = head_dim^-0.5,
    with pe [length, length, head_dim] the relative position embeddings (shared by every
    layer; `SpeechT5TTS.encode`). Logits and softmax are float32."""

    num_heads: int
    dtype: Dtype = jnp.float32
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(
        self, x: jax.Array, pos: jax.Array, mask: jax.Array | None, deterministic: bool
    ) -> jax.Array:
        """x: [batch, length, hidden]; pos: [length, length, head_dim]; mask: bool [batch, 1, 1,
        length] (valid keys) or None. Returns [batch, length, hidden]."""
        features = x.shape[-1]
        head_dim = features // self.num_heads
        split = functools.partial(SplitHeads, self.num_heads, head_dim, dtype=self.dtype)
        query = split(name="query")(x) * np.float32(head_dim**-0.5)  # [b, len, heads, hd]
        key = split(name="key")(x)
        value = split(name="value")(x)
        query = constrain(query, BATCH, LENGTH, HEADS, KV)
        logits = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
        logits = logits + jnp.einsum(
            "bqhd,qkd->bhqk", query, pos.astype(self.dtype), preferred_element_type=jnp.float32
        )  # float32 [batch, heads, length, length]
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        weights = nn.Dropout(self.dropout_rate)(weights, deterministic=deterministic)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, value, preferred_element_type=jnp.float32)
        out = MergeHeads(features, dtype=self.dtype, name="out")(out.astype(self.dtype))
        return constrain(out, BATCH, LENGTH, EMBED)  # [batch, length, hidden]


class SpeechT5EncoderLayer(nn.Module):
    """Post-LN: x = LN(x + Attn(x) [relative bias]); x = LN(x + MLP(x))."""

    dims: SpeechT5Dims
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, pos: jax.Array, mask: jax.Array | None) -> jax.Array:
        """x: [batch, chars, hidden]; pos: [chars, chars, head_dim] relative position
        embeddings; mask: bool [batch, 1, 1, chars] → [batch, chars, hidden]."""
        d = self.dims
        norm = functools.partial(LayerNorm, dtype=self.dtype, epsilon=d.layer_norm_eps)
        h = RelativeSelfAttention(d.encoder_attention_heads, self.dtype, name="attn")(
            x, pos, mask, True
        )
        x = norm(name="attn_norm")(x + h)
        h = MlpBlock(d.encoder_ffn_dim, dtype=self.dtype, name="mlp")(x, True)
        return norm(name="mlp_norm")(x + h)


class SpeechT5DecoderLayer(nn.Module):
    """Post-LN: x = LN(x + SelfAttn(x) [causal]); x = LN(x + CrossAttn(x, encoded));
    x = LN(x + MLP(x)). With `decode=True` both attentions use the "cache" collection
    (jaxseq.models.attention.MultiHeadAttention)."""

    dims: SpeechT5Dims
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        encoded: jax.Array | None,
        cross_mask: jax.Array | None,
        decode: bool = False,
    ) -> jax.Array:
        """x: [batch, steps, hidden]; encoded: [batch, chars, hidden] (unread by a cached step);
        cross_mask: bool [batch, 1, 1, chars]. Returns [batch, steps, hidden]."""
        d = self.dims
        norm = functools.partial(LayerNorm, dtype=self.dtype, epsilon=d.layer_norm_eps)
        attn = functools.partial(MultiHeadAttention, d.decoder_attention_heads, dtype=self.dtype)
        h = attn(cache="self", causal=True, name="self_attn")(x, x, None, True, decode)
        x = norm(name="self_attn_norm")(x + h)
        h = attn(cache="cross", name="cross_attn")(x, encoded, cross_mask, True, decode)
        x = norm(name="cross_attn_norm")(x + h)
        h = MlpBlock(d.decoder_ffn_dim, dtype=self.dtype, name="mlp")(x, True)
        return constrain(norm(name="mlp_norm")(x + h), BATCH, LENGTH, EMBED)


class SpeechDecoderPrenet(nn.Module):
    """transformers' SpeechT5SpeechDecoderPrenet (see the module docstring for its dropout)."""

    dims: SpeechT5Dims
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        frames: jax.Array,
        speaker: jax.Array,
        start: jax.Array | int = 0,
        prenet_dropout: bool = False,
        dropout_masks: tuple[jax.Array, ...] | None = None,
    ) -> jax.Array:
        """frames [batch, steps, mels] at positions start.. → [batch, steps, hidden].

        speaker: [batch, speaker_dim] x-vectors (L2-normalized here). `prenet_dropout`: draw the
        consistent dropout masks from the "dropout" rng; `dropout_masks` (one bool [steps,
        units] per pre-net layer, True = keep) replace them (e.g. to match transformers')."""
        d = self.dims
        p = d.speech_decoder_prenet_dropout
        x = frames.astype(self.dtype)
        for i in range(d.speech_decoder_prenet_layers):
            axes = (MEL, MLP) if i == 0 else (CONV_IN, MLP)
            x = nn.relu(dense(d.speech_decoder_prenet_units, axes, self.dtype, f"dense{i}")(x))
            if dropout_masks is not None:
                keep = dropout_masks[i]
            elif prenet_dropout:  # bernoulli(p) = keep, as transformers' _consistent_dropout
                keep = jax.random.bernoulli(self.make_rng("dropout"), p, x.shape[1:])
            else:
                continue
            x = jnp.where(keep[None], x, 0.0) * np.float32(1.0 / (1.0 - p))  # [b, steps, units]
        x = dense(d.hidden_size, (MLP, EMBED), self.dtype, "out")(x)  # [batch, steps, hidden]
        x = ScaledPositionalEncoding(d.max_speech_positions, name="positions")(x, start)
        norm = jnp.maximum(jnp.linalg.norm(speaker, axis=-1, keepdims=True), 1e-12)
        spk = jnp.broadcast_to((speaker / norm)[:, None], (*x.shape[:2], speaker.shape[-1]))
        x = jnp.concatenate([x, spk.astype(self.dtype)], axis=-1)  # [b, steps, hidden + spk]
        x = dense(d.hidden_size, (CONV_IN, EMBED), self.dtype, "speaker")(x)
        return constrain(nn.relu(x), BATCH, LENGTH, EMBED)  # [batch, steps, hidden]


class SpeechT5Postnet(nn.Module):
    """(Conv1d without bias → BatchNorm (running stats) → tanh but the last) × n, residual:
    transformers' SpeechT5SpeechDecoderPostnet.postnet."""

    dims: SpeechT5Dims
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, mel: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
        """mel [batch, frames, mels] → mel + residual, the same shape. With `lengths` int
        [batch], frames past each length are zeroed between layers, so each row is what the
        post-net gives on that row cut to its length (transformers' generate_speech)."""
        d = self.dims
        valid = None
        if lengths is not None:
            valid = (jnp.arange(mel.shape[1])[None, :] < lengths[:, None])[..., None]
        x = mel.astype(self.dtype)
        if valid is not None:
            x = jnp.where(valid, x, 0.0)
        pad = (d.speech_decoder_postnet_kernel - 1) // 2
        n = d.speech_decoder_postnet_layers
        for i in range(n):
            last = i == n - 1
            out_axis = MEL if last else EMBED
            x = nn.Conv(
                d.num_mel_bins if last else d.speech_decoder_postnet_units,
                kernel_size=(d.speech_decoder_postnet_kernel,),
                padding=((pad, pad),),
                use_bias=False,
                dtype=self.dtype,
                param_dtype=jnp.float32,
                kernel_init=partitioned(
                    nn.initializers.lecun_normal(),
                    CONV_WINDOW,
                    MEL if i == 0 else CONV_IN,
                    out_axis,
                ),
                name=f"conv{i}",
            )(x)  # [batch, frames, channels]
            x = nn.BatchNorm(
                use_running_average=True,
                epsilon=1e-5,
                dtype=self.dtype,
                param_dtype=jnp.float32,
                scale_init=partitioned(nn.initializers.ones, out_axis),
                bias_init=partitioned(nn.initializers.zeros, out_axis),
                name=f"norm{i}",
            )(x)
            if not last:
                x = jnp.tanh(x)
            if valid is not None:
                x = jnp.where(valid, x, 0.0)
        return mel + x.astype(mel.dtype)


class SpeechT5TTS(nn.Module):
    """transformers' SpeechT5ForTextToSpeech (inference). Methods: `encode`, `decode`,
    `postnet`, and `__call__` (teacher-forced, everything)."""

    dims: SpeechT5Dims
    dtype: Dtype = jnp.float32

    def setup(self):
        d = self.dims
        self.embed = embedding(d.vocab_size, d.hidden_size, self.dtype, 0.02, None)
        self.text_positions = ScaledPositionalEncoding(d.max_text_positions)
        self.encoder_norm = LayerNorm(dtype=self.dtype, epsilon=d.layer_norm_eps)
        self.rel_pos = self.param(  # [2 · max_relative, head_dim], shared by the encoder layers
            "rel_pos",
            partitioned(nn.initializers.normal(0.02), POSITION, KV),
            (2 * d.encoder_max_relative_position, d.hidden_size // d.encoder_attention_heads),
            jnp.float32,
        )
        self.encoder_layers = [
            SpeechT5EncoderLayer(d, self.dtype, name=f"encoder_layer{i}")
            for i in range(d.encoder_layers)
        ]
        self.prenet = SpeechDecoderPrenet(d, self.dtype)
        self.decoder_layers = [
            SpeechT5DecoderLayer(d, self.dtype, name=f"decoder_layer{i}")
            for i in range(d.decoder_layers)
        ]
        r = d.reduction_factor
        self.feat_out = dense(d.num_mel_bins * r, (EMBED, MEL), self.dtype, None)
        self.prob_out = dense(r, (EMBED, None), self.dtype, None)
        self.post = SpeechT5Postnet(d, self.dtype)

    def encode(self, ids: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Text ids int [batch, chars] with `lengths` int [batch] valid ids →
        (encoded [batch, chars, hidden], valid bool [batch, chars])."""
        if ids.shape[1] > self.dims.max_text_positions:  # transformers' table ends there too
            raise ValueError(
                f"{ids.shape[1]} text ids exceed max_text_positions={self.dims.max_text_positions}"
            )
        valid = jnp.arange(ids.shape[1])[None, :] < lengths[:, None]  # [batch, chars]
        x = self.text_positions(self.embed(ids))  # [batch, chars, hidden]
        x = self.encoder_norm(x)
        mask = valid[:, None, None, :]  # [batch, 1, 1, chars]
        rel = relative_positions(ids.shape[1], self.dims.encoder_max_relative_position)
        pos = self.rel_pos[rel]  # [chars, chars, head_dim]
        for layer in self.encoder_layers:
            x = layer(x, pos, mask)
        return constrain(x, BATCH, LENGTH, EMBED), valid

    def decode(
        self,
        frames: jax.Array,
        speaker: jax.Array,
        encoded: jax.Array | None,
        text_valid: jax.Array,
        start: jax.Array | int = 0,
        decode: bool = False,
        prenet_dropout: bool = False,
        dropout_masks: tuple[jax.Array, ...] | None = None,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Decoder inputs `frames` [batch, steps, mels] (positions start..; a cached step has
        steps = 1) → (hidden [batch, steps, hidden], mel before the post-net [batch, steps, r,
        mels], stop logits [batch, steps, r]). `decode`: use the "cache" collection (a first
        full-length call creates it); `prenet_dropout`, `dropout_masks`: see the pre-net."""
        d = self.dims
        x = self.prenet(frames, speaker, start, prenet_dropout, dropout_masks)
        cross_mask = text_valid[:, None, None, :]  # [batch, 1, 1, chars]
        for layer in self.decoder_layers:
            x = layer(x, encoded, cross_mask, decode)
        batch, steps = x.shape[:2]
        mel = self.feat_out(x).reshape(batch, steps, d.reduction_factor, d.num_mel_bins)
        return x, mel, self.prob_out(x)  # [b, s, hidden], [b, s, r, mels], [b, s, r]

    def postnet(self, mel: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
        """The post-net (`SpeechT5Postnet`): mel [batch, frames, mels] → the same shape."""
        return self.post(mel, lengths)

    def __call__(
        self,
        ids: jax.Array,
        lengths: jax.Array,
        frames: jax.Array,
        speaker: jax.Array,
        prenet_dropout: bool = False,
        dropout_masks: tuple[jax.Array, ...] | None = None,
    ) -> dict[str, jax.Array]:
        """Teacher-forced: ids int [batch, chars], lengths int [batch], decoder input frames
        [batch, steps, mels] (transformers' `decoder_input_values`), speaker [batch, spk] →
        {"encoded" [b, chars, hidden], "decoded" [b, steps, hidden], "mel_before" and
        "mel_after" [b, steps · r, mels], "stop_logits" [b, steps · r]}."""
        encoded, valid = self.encode(ids, lengths)
        hidden, mel, stop = self.decode(
            frames, speaker, encoded, valid, 0, False, prenet_dropout, dropout_masks
        )
        batch = mel.shape[0]
        before = mel.reshape(batch, -1, self.dims.num_mel_bins)  # [batch, steps · r, mels]
        return {
            "encoded": encoded,
            "decoded": hidden,
            "mel_before": before,
            "mel_after": self.postnet(before),
            "stop_logits": stop.reshape(batch, -1),
        }
