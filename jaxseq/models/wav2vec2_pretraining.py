"""wav2vec 2.0 self-supervised pre-training (Baevski et al., 2020): the Wav2Vec2 encoder plus a
Gumbel-softmax product quantizer of the (unmasked) features and the two projections into the
space where the contrastive loss compares them.

The layout is transformers' `Wav2Vec2ForPreTraining`, so that `jaxseq.convert.hf_wav2vec2`
(head "contrastive") imports and exports its checkpoints exactly:

    waveform [batch, samples] → Wav2Vec2Encoder (masked_spec_embed at `time_mask`)
      last_hidden_state [batch, frames, hidden] → "project_hid" → projected_states [.., proj]
      the encoder's LayerNormed conv features [batch, frames, conv_dim[-1]]
        → dropout(feat_quantizer_dropout) → "quantizer" → [batch, frames, codevector_dim]
        → "project_q" → projected_quantized_states [batch, frames, proj]

The loss over these (contrastive over sampled distractors + codebook diversity) is
`jaxseq.losses.wav2vec2`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseq.models.layers import dense, partitioned
from jaxseq.models.wav2vec2 import Wav2Vec2Dims, Wav2Vec2Encoder, Wav2Vec2Output
from jaxseq.parallel.sharding import CONV_IN, EMBED, MLP, VOCAB

Dtype = Any


@dataclass(frozen=True)
class Wav2Vec2PreTrainingDims:
    """The quantizer's and the objective's hyperparameters, named after transformers'
    Wav2Vec2Config fields, with its defaults (wav2vec2-base's)."""

    num_codevector_groups: int = 2  # G codebooks; one codevector of each is concatenated
    num_codevectors_per_group: int = 320  # V entries per codebook
    codevector_dim: int = 256  # the concatenated codevector (divisible by G)
    proj_codevector_dim: int = 256  # where project_hid and project_q meet
    feat_quantizer_dropout: float = 0.0  # on the features before the quantizer
    num_negatives: int = 100  # distractors per masked frame
    contrastive_logits_temperature: float = 0.1
    diversity_loss_weight: float = 0.1

    @property
    def num_codevectors(self) -> int:
        """G · V, the most the codevector perplexity can reach."""
        return self.num_codevector_groups * self.num_codevectors_per_group


class Wav2Vec2PreTrainingOutput(NamedTuple):
    """What `Wav2Vec2PreTraining` returns."""

    projected_states: jax.Array  # float32 [batch, frames, proj_codevector_dim]
    projected_quantized_states: jax.Array  # float32 [batch, frames, proj_codevector_dim]
    codevector_perplexity: jax.Array  # float32 [], summed over the G groups
    encoder: Wav2Vec2Output


def gumbel_softmax_hard(logits: jax.Array, noise: jax.Array, temperature: float) -> jax.Array:
    """Hard Gumbel-softmax with the straight-through estimator, as torch's
    `gumbel_softmax(logits, tau, hard=True)`: the forward value is one-hot at
    argmax(logits + noise); the gradient is that of softmax((logits + noise) / temperature).

    Args:
      logits: float [..., V].
      noise: float [..., V], standard Gumbel samples (`jax.random.gumbel`).
      temperature: τ > 0 (a Python float or a traced scalar).
    Returns:
      float32 [..., V], one 1 per row in the forward pass.
    """
    soft = jax.nn.softmax((logits.astype(jnp.float32) + noise) / temperature, axis=-1)
    hard = jax.nn.one_hot(jnp.argmax(soft, axis=-1), soft.shape[-1], dtype=soft.dtype)
    return hard - jax.lax.stop_gradient(soft) + soft  # torch's expression, to the last bit


def codevector_perplexity(probs: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Perplexity of the average codevector distribution, summed over groups (transformers'
    `_compute_perplexity`): Σ_g exp(-Σ_v p̄_gv log p̄_gv), p̄ the mean of `probs` over the frames
    of `mask` (over every frame when None).

    Args:
      probs: float [batch, frames, G, V].
      mask: bool [batch, frames] or None.
    Returns:
      float32 [], between G and G · V.
    """
    probs = probs.astype(jnp.float32)
    if mask is None:
        marginal = jnp.mean(probs, axis=(0, 1))  # [G, V]
    else:
        weights = mask.astype(jnp.float32)[:, :, None, None]
        count = jnp.maximum(jnp.sum(mask), 1)  # transformers divides by zero without masks
        marginal = jnp.sum(probs * weights, axis=(0, 1)) / count  # [G, V]
    return jnp.sum(jnp.exp(-jnp.sum(jax.scipy.special.xlogy(marginal, marginal), axis=-1)))


class GumbelVectorQuantizer(nn.Module):
    """Product quantizer (transformers' `Wav2Vec2GumbelVectorQuantizer`): a linear "weight_proj"
    to G · V logits per frame; per group, one of V "codevectors" [G · V, codevector_dim / G] is
    picked (hard Gumbel-softmax at `temperature` in training, with noise from the "gumbel" rng;
    argmax when deterministic), and the G picks are concatenated."""

    num_groups: int
    num_vars: int
    codevector_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        features: jax.Array,
        mask: jax.Array | None,
        temperature: float | jax.Array,
        deterministic: bool,
    ) -> tuple[jax.Array, jax.Array]:
        """features float [batch, frames, channels]; mask bool [batch, frames] (the frames the
        perplexity averages over) or None → (codevectors float32 [batch, frames,
        codevector_dim], perplexity float32 []). In training the perplexity is that of the
        soft distribution softmax(logits); when deterministic, of the one-hot picks."""
        g, v = self.num_groups, self.num_vars
        if self.codevector_dim % g:
            raise ValueError(
                f"codevector_dim {self.codevector_dim} must be divisible by "
                f"num_codevector_groups {g}"
            )
        codevectors = self.param(
            "codevectors",
            partitioned(nn.initializers.uniform(1.0), VOCAB, EMBED),
            (g * v, self.codevector_dim // g),
            jnp.float32,
        )
        proj = nn.Dense(
            g * v,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=partitioned(nn.initializers.normal(1.0), CONV_IN, VOCAB),
            bias_init=partitioned(nn.initializers.zeros, VOCAB),
            name="weight_proj",
        )
        batch, frames = features.shape[:2]
        logits = proj(features).astype(jnp.float32).reshape(batch, frames, g, v)
        if deterministic:
            probs = jax.nn.one_hot(jnp.argmax(logits, axis=-1), v, dtype=jnp.float32)
            perplexity = codevector_perplexity(probs, mask)
        else:
            noise = jax.random.gumbel(self.make_rng("gumbel"), logits.shape, jnp.float32)
            probs = gumbel_softmax_hard(logits, noise, temperature)  # [batch, frames, G, V]
            perplexity = codevector_perplexity(jax.nn.softmax(logits, axis=-1), mask)
        table = codevectors.reshape(g, v, -1)  # [G, V, codevector_dim / G]
        picked = jnp.einsum("btgv,gvd->btgd", probs, table)
        return picked.reshape(batch, frames, self.codevector_dim), perplexity


class Wav2Vec2PreTraining(nn.Module):
    """Waveform → the states the wav2vec 2.0 objective compares (transformers'
    `Wav2Vec2ForPreTraining`): "encoder" (Wav2Vec2Encoder), "quantizer"
    (GumbelVectorQuantizer), "project_hid" and "project_q" (see the module docstring).

    Randomness in training: the "dropout" rng (the encoder's dropouts and LayerDrop, and
    feat_quantizer_dropout) and the "gumbel" rng (the quantizer's noise).
    """

    dims: Wav2Vec2Dims
    objective: Wav2Vec2PreTrainingDims = Wav2Vec2PreTrainingDims()
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        waveform: jax.Array,
        lengths: jax.Array | None = None,
        time_mask: jax.Array | None = None,
        deterministic: bool = True,
        temperature: float | jax.Array = 2.0,
    ) -> Wav2Vec2PreTrainingOutput:
        """Encodes raw audio with `time_mask` frames masked, and quantizes the unmasked features.

        Args:
          waveform: float [batch, samples], 16 kHz (see Wav2Vec2Encoder).
          lengths: int [batch] valid samples, or None (every sample valid).
          time_mask: bool [batch, frames], the frames to mask and predict (e.g. from
            `sample_span_mask`); also the frames the codevector perplexity averages over.
          deterministic: False in training: dropout, and Gumbel noise in the quantizer.
          temperature: the Gumbel-softmax temperature (`jaxseq.losses.wav2vec2.
            gumbel_temperature` of the step); unused when deterministic.
        Returns:
          Wav2Vec2PreTrainingOutput.
        """
        d, o = self.dims, self.objective
        out = Wav2Vec2Encoder(d, self.dtype, name="encoder")(
            waveform, lengths, deterministic, time_mask
        )
        features = out.extract_features  # [batch, frames, conv_dim[-1]]
        features = nn.Dropout(o.feat_quantizer_dropout)(features, deterministic=deterministic)
        quantized, perplexity = GumbelVectorQuantizer(
            o.num_codevector_groups,
            o.num_codevectors_per_group,
            o.codevector_dim,
            self.dtype,
            name="quantizer",
        )(features, time_mask, temperature, deterministic)
        proj = o.proj_codevector_dim
        projected = dense(proj, (EMBED, MLP), self.dtype, "project_hid")(out.last_hidden_state)
        projected_quantized = dense(proj, (EMBED, MLP), self.dtype, "project_q")(quantized)
        return Wav2Vec2PreTrainingOutput(
            projected.astype(jnp.float32),
            projected_quantized.astype(jnp.float32),
            perplexity,
            out,
        )
