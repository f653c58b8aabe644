"""Wav2Vec2 and HuBERT: a Transformer over features learned from the raw 16 kHz waveform, with
CTC, sequence-classification and frame-classification heads.

The layout is transformers' (`Wav2Vec2ForCTC`, `HubertForCTC`,
`Wav2Vec2ForSequenceClassification`, `Wav2Vec2ForAudioFrameClassification`), so that
`jaxseq.convert.hf_wav2vec2` imports and exports their checkpoints exactly:

    waveform [batch, samples]
      → ConvFeatureEncoder                  [batch, frames, conv_dim[-1]]   (20 ms frames)
      → LayerNorm (optional for HuBERT) → Dense → dropout          [batch, frames, hidden]
      → masked_spec_embed at masked frames; zeros at padded frames
      → + ConvPositionalEmbedding → (LayerNorm, post-LN only) → dropout
      → Transformer layers: post-LN (base) or pre-LN (`do_stable_layer_norm`, large)
      → (LayerNorm, pre-LN only)             last_hidden_state [batch, frames, hidden]

Padding: with `lengths` (valid samples), frames past each item's conv output length are
zeroed before the position conv and masked out of attention, as transformers does when given
an `attention_mask`. With `feat_extract_norm="layer"` valid frames are then independent of the
padding. With `"group"` they are not, in transformers as here: the first conv's GroupNorm
takes its statistics over every sample, padding included; that is why transformers' base
processors send no attention mask (call with `lengths=None` for that: every frame valid).

`hidden_states` are transformers' (5.x): the input of the first layer, then each layer's
output; with `do_stable_layer_norm` the last of them precedes the final LayerNorm, which only
`last_hidden_state` has.

Dropout follows transformers' rates: `hidden_dropout` on the residual branches and after the
position embedding, `attention_dropout` on the attention weights, `activation_dropout` inside
the MLP, `feat_proj_dropout` after the feature projection, `final_dropout` before the CTC head;
LayerDrop (`layerdrop`) skips whole layers in training. All are off when `deterministic`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseq.models.attention import MultiHeadAttention
from jaxseq.models.layers import LayerNorm, constrain, dense, padding_mask, partitioned, remat_layer
from jaxseq.models.transformer import MlpBlock
from jaxseq.models.wav2vec2_features import (
    ConvFeatureEncoder,
    ConvPositionalEmbedding,
    conv_output_lengths,
    scale_gradient,
)
from jaxseq.parallel.sharding import BATCH, CONV_IN, EMBED, LABELS, LAYERS, LENGTH, MLP, VOCAB

Dtype = Any


@dataclass(frozen=True)
class Wav2Vec2Dims:
    """Wav2Vec2/HuBERT hyperparameters, named after transformers' Wav2Vec2Config/HubertConfig
    fields (see `jaxseq.convert.hf_wav2vec2.wav2vec2_config_from_hf`), with transformers'
    defaults (wav2vec2-base's sizes). Activations are exact GELU throughout."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    conv_dim: tuple[int, ...] = (512,) * 7
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    feat_extract_norm: str = "group"  # "group" (base) or "layer" (large, lv60)
    feat_proj_layer_norm: bool = True  # HuBERT may leave out the projection's LayerNorm
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    do_stable_layer_norm: bool = False  # pre-LN layers + a final LayerNorm (large)
    layer_norm_eps: float = 1e-5
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.1
    feat_proj_dropout: float = 0.0
    final_dropout: float = 0.1
    layerdrop: float = 0.1
    # Span masking (see wav2vec2_features.sample_span_mask). As in transformers, the learned
    # "masked_spec_embed" exists when either probability is positive, and the model ignores the
    # masks it is given when apply_spec_augment is False.
    apply_spec_augment: bool = True
    mask_time_prob: float = 0.05
    mask_time_length: int = 10
    mask_time_min_masks: int = 2
    mask_feature_prob: float = 0.0
    mask_feature_length: int = 10
    mask_feature_min_masks: int = 0
    # fairseq's GradMultiply on the conv features (jaxseq only; not a transformers field).
    feature_grad_mult: float = 1.0
    # Heads.
    vocab_size: int = 32  # CTC outputs, the blank (transformers' pad token) included
    num_labels: int = 2
    classifier_proj_size: int = 256  # the sequence classifier's projector width
    use_weighted_layer_sum: bool = False  # classify a softmax-weighted sum of hidden_states
    # jaxseq only: recompute each layer in the backward pass (a layers.REMAT_POLICIES key).
    remat: str = "none"

    @property
    def has_mask_embedding(self) -> bool:
        """Whether the model has the learned "masked_spec_embed" vector."""
        return self.mask_time_prob > 0.0 or self.mask_feature_prob > 0.0

    def output_lengths(self, lengths: jax.Array) -> jax.Array:
        """Encoder frames of waveforms of `lengths` [batch] samples (of a Python int, an int)."""
        return conv_output_lengths(lengths, self.conv_kernel, self.conv_stride)


class Wav2Vec2Output(NamedTuple):
    """What `Wav2Vec2Encoder` returns."""

    last_hidden_state: jax.Array  # [batch, frames, hidden]
    hidden_states: tuple[jax.Array, ...]  # num_hidden_layers + 1 of [batch, frames, hidden]
    conv_features: jax.Array  # the ConvFeatureEncoder's output [batch, frames, conv_dim[-1]]
    # conv_features after "feature_norm" (unchanged without it), before the projection:
    # transformers' `extract_features`, which the wav2vec 2.0 quantizer reads
    extract_features: jax.Array
    lengths: jax.Array  # int [batch] valid frames


class Wav2Vec2Layer(nn.Module):
    """One Transformer layer, in either of transformers' arrangements.

    Post-LN (base): x = LN(x + drop(Attn(x))); x = LN(x + MLP(x)).
    Pre-LN (`stable_layer_norm`): x = x + drop(Attn(LN(x))); x = x + MLP(LN(x)).
    The MLP is Dense → GELU → dropout(activation_dropout) → Dense → dropout(hidden_dropout).
    """

    dims: Wav2Vec2Dims
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None, deterministic: bool) -> jax.Array:
        """x: [batch, frames, hidden]; mask: bool [batch, 1, 1, frames] or None."""
        d = self.dims
        drop = nn.Dropout(d.hidden_dropout)
        attn_norm = LayerNorm(dtype=self.dtype, epsilon=d.layer_norm_eps, name="attn_norm")
        mlp_norm = LayerNorm(dtype=self.dtype, epsilon=d.layer_norm_eps, name="mlp_norm")
        attention = MultiHeadAttention(
            d.num_attention_heads,
            dtype=self.dtype,
            dropout_rate=d.attention_dropout,
            name="attn",
        )
        mlp = MlpBlock(
            d.intermediate_size, dtype=self.dtype, dropout_rate=d.activation_dropout, name="mlp"
        )

        def feed_forward(h: jax.Array) -> jax.Array:
            return drop(mlp(h, deterministic), deterministic=deterministic)

        def attend(h: jax.Array) -> jax.Array:
            return drop(attention(h, h, mask, deterministic), deterministic=deterministic)

        if d.do_stable_layer_norm:
            x = x + attend(attn_norm(x))
            x = x + feed_forward(mlp_norm(x))
        else:
            x = attn_norm(x + attend(x))
            x = mlp_norm(x + feed_forward(x))
        return constrain(x, BATCH, LENGTH, EMBED)


class Wav2Vec2Encoder(nn.Module):
    """Waveform → Wav2Vec2/HuBERT hidden states (transformers' Wav2Vec2Model/HubertModel).

    Parameters: "feature_encoder" (ConvFeatureEncoder), "feature_norm" (absent when
    `feat_proj_layer_norm` is False) and "feature_projection", "masked_spec_embed" [hidden]
    (when `dims.has_mask_embedding`), "pos_conv" (ConvPositionalEmbedding), "encoder_norm", and
    "layer0".."layer{n-1}".
    """

    dims: Wav2Vec2Dims
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        waveform: jax.Array,
        lengths: jax.Array | None = None,
        deterministic: bool = True,
        time_mask: jax.Array | None = None,
        feature_mask: jax.Array | None = None,
    ) -> Wav2Vec2Output:
        """Encodes raw audio.

        Args:
          waveform: float [batch, samples], 16 kHz (normalized as the checkpoint's processor
            does, e.g. zero mean and unit variance per utterance).
          lengths: int [batch] valid samples, or None: every sample valid and nothing masked
            (transformers without an attention mask).
          time_mask: bool [batch, frames], frames replaced by "masked_spec_embed" (e.g. from
            `sample_span_mask`); needs `dims.has_mask_embedding`.
          feature_mask: bool [batch, hidden], channels zeroed on every frame.
          (Both are ignored when `dims.apply_spec_augment` is False, as in transformers.)
        Returns:
          Wav2Vec2Output.
        Raises:
          ValueError: on a time_mask without the mask embedding.
        """
        d = self.dims
        conv = ConvFeatureEncoder(
            d.conv_dim,
            d.conv_kernel,
            d.conv_stride,
            d.conv_bias,
            d.feat_extract_norm,
            self.dtype,
            name="feature_encoder",
        )(waveform, lengths)  # [batch, frames, conv_dim[-1]]
        if d.feature_grad_mult != 1.0:
            conv = scale_gradient(conv, d.feature_grad_mult)
        batch, frames = conv.shape[:2]
        if lengths is None:
            frame_lengths = jnp.full((batch,), frames, jnp.int32)
            valid = None
        else:
            frame_lengths = d.output_lengths(jnp.asarray(lengths, jnp.int32))
            valid = padding_mask(frame_lengths, frames)  # [batch, frames]

        extract = conv
        if d.feat_proj_layer_norm:
            extract = LayerNorm(self.dtype, d.layer_norm_eps, name="feature_norm")(conv)
        x = dense(d.hidden_size, (CONV_IN, EMBED), self.dtype, "feature_projection")(extract)
        x = nn.Dropout(d.feat_proj_dropout)(x, deterministic=deterministic)  # [b, frames, hidden]
        if not d.apply_spec_augment:
            time_mask = feature_mask = None
        if d.has_mask_embedding:
            embed = self.param(
                "masked_spec_embed",
                partitioned(nn.initializers.uniform(1.0), EMBED),
                (d.hidden_size,),
                jnp.float32,
            )
            if time_mask is not None:
                x = jnp.where(time_mask[:, :, None], embed.astype(x.dtype), x)
        elif time_mask is not None:
            raise ValueError("a time_mask needs masked_spec_embed (mask_time_prob > 0)")
        if feature_mask is not None:
            x = jnp.where(feature_mask[:, None, :], jnp.zeros((), x.dtype), x)
        if valid is not None:
            x = jnp.where(valid[:, :, None], x, jnp.zeros((), x.dtype))

        x = x + ConvPositionalEmbedding(
            d.num_conv_pos_embeddings, d.num_conv_pos_embedding_groups, self.dtype, name="pos_conv"
        )(x)
        final_norm = LayerNorm(dtype=self.dtype, epsilon=d.layer_norm_eps, name="encoder_norm")
        if not d.do_stable_layer_norm:
            x = final_norm(x)
        x = nn.Dropout(d.hidden_dropout)(x, deterministic=deterministic)
        x = constrain(x, BATCH, LENGTH, EMBED)

        mask = None if valid is None else valid[:, None, None, :]  # [batch, 1, 1, frames] keys
        layer_cls = remat_layer(Wav2Vec2Layer, d.remat, static_argnums=(3,))  # deterministic
        hidden_states = [x]
        for i in range(d.num_hidden_layers):
            y = layer_cls(d, self.dtype, name=f"layer{i}")(x, mask, deterministic)
            if d.layerdrop > 0.0 and not deterministic:  # LayerDrop: the layer's output unused
                skip = jax.random.uniform(self.make_rng("dropout")) < d.layerdrop
                y = jnp.where(skip, x, y)
            x = y  # [batch, frames, hidden]
            hidden_states.append(x)
        if d.do_stable_layer_norm:
            x = final_norm(x)
        return Wav2Vec2Output(x, tuple(hidden_states), conv, extract, frame_lengths)


def _classifier_input(
    module: nn.Module, waveform: jax.Array, lengths: jax.Array | None, *masks_and_mode: Any
) -> tuple[jax.Array, Wav2Vec2Output]:
    """What a classification head of `module` (dims, dtype) reads: its "encoder"'s last hidden
    state, or with dims.use_weighted_layer_sum the softmax("layer_weights")-weighted sum of
    its hidden states (transformers' `use_weighted_layer_sum`) → ([batch, frames, hidden],
    the encoder's output). `masks_and_mode`: deterministic, time_mask, feature_mask."""
    d = module.dims
    out = Wav2Vec2Encoder(d, module.dtype, name="encoder")(waveform, lengths, *masks_and_mode)
    if not d.use_weighted_layer_sum:
        return out.last_hidden_state, out
    weights = module.param(
        "layer_weights",
        partitioned(nn.initializers.constant(1.0 / (d.num_hidden_layers + 1)), LAYERS),
        (d.num_hidden_layers + 1,),
        jnp.float32,
    )
    stacked = jnp.stack(out.hidden_states, axis=0)  # [layers + 1, batch, frames, hidden]
    norm = jax.nn.softmax(weights).astype(stacked.dtype)
    return jnp.einsum("l,lbth->bth", norm, stacked), out


class Wav2Vec2CTC(nn.Module):
    """Waveform → per-frame CTC logits (transformers' Wav2Vec2ForCTC/HubertForCTC):
    "encoder" (Wav2Vec2Encoder), dropout(final_dropout), then a linear "head" to vocab_size."""

    dims: Wav2Vec2Dims
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        waveform: jax.Array,
        lengths: jax.Array | None = None,
        deterministic: bool = True,
        time_mask: jax.Array | None = None,
        feature_mask: jax.Array | None = None,
    ) -> tuple[jax.Array, Wav2Vec2Output]:
        """waveform float [batch, samples], lengths int [batch] or None, time_mask bool [batch,
        frames] and feature_mask bool [batch, hidden] or None (see Wav2Vec2Encoder) →
        (logits float32 [batch, frames, vocab_size], the encoder's output)."""
        out = Wav2Vec2Encoder(self.dims, self.dtype, name="encoder")(
            waveform, lengths, deterministic, time_mask, feature_mask
        )
        x = nn.Dropout(self.dims.final_dropout)(out.last_hidden_state, deterministic=deterministic)
        logits = dense(self.dims.vocab_size, (EMBED, VOCAB), self.dtype, "head")(x)
        return constrain(logits.astype(jnp.float32), BATCH, LENGTH, VOCAB), out


class Wav2Vec2SequenceClassifier(nn.Module):
    """Waveform → class logits per utterance (transformers' Wav2Vec2ForSequenceClassification):
    "encoder", a linear "projector" to classifier_proj_size, the mean over valid frames, and a
    linear "classifier"; with `use_weighted_layer_sum`, the projector reads the
    "layer_weights"-weighted sum of the hidden states instead of the last one."""

    dims: Wav2Vec2Dims
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        waveform: jax.Array,
        lengths: jax.Array | None = None,
        deterministic: bool = True,
        time_mask: jax.Array | None = None,
        feature_mask: jax.Array | None = None,
    ) -> tuple[jax.Array, Wav2Vec2Output]:
        """waveform float [batch, samples], lengths int [batch] or None, time_mask bool [batch,
        frames] and feature_mask bool [batch, hidden] or None (see Wav2Vec2Encoder) →
        (logits float32 [batch, num_labels], the encoder's output)."""
        d = self.dims
        x, out = _classifier_input(
            self, waveform, lengths, deterministic, time_mask, feature_mask
        )  # [b, T, hidden]
        h = dense(d.classifier_proj_size, (EMBED, MLP), self.dtype, "projector")(x)  # [b, T, p]
        valid = padding_mask(out.lengths, h.shape[1])[:, :, None].astype(h.dtype)  # [b, T, 1]
        pooled = jnp.sum(h * valid, axis=1) / jnp.maximum(jnp.sum(valid, axis=1), 1)  # [b, p]
        logits = dense(d.num_labels, (MLP, LABELS), self.dtype, "classifier")(pooled)
        return constrain(logits.astype(jnp.float32), BATCH, LABELS), out


class Wav2Vec2FrameClassifier(nn.Module):
    """Waveform → class logits per frame (transformers' Wav2Vec2ForAudioFrameClassification):
    "encoder", then a linear "classifier" on every frame (of the last hidden state, or of the
    "layer_weights"-weighted sum with `use_weighted_layer_sum`)."""

    dims: Wav2Vec2Dims
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        waveform: jax.Array,
        lengths: jax.Array | None = None,
        deterministic: bool = True,
        time_mask: jax.Array | None = None,
        feature_mask: jax.Array | None = None,
    ) -> tuple[jax.Array, Wav2Vec2Output]:
        """waveform float [batch, samples], lengths int [batch] or None, time_mask bool [batch,
        frames] and feature_mask bool [batch, hidden] or None (see Wav2Vec2Encoder) →
        (logits float32 [batch, frames, num_labels], the encoder's output); frames past
        `out.lengths` are padding."""
        x, out = _classifier_input(
            self, waveform, lengths, deterministic, time_mask, feature_mask
        )  # [b, T, hidden]
        logits = dense(self.dims.num_labels, (EMBED, LABELS), self.dtype, "classifier")(x)
        return constrain(logits.astype(jnp.float32), BATCH, LENGTH, LABELS), out
