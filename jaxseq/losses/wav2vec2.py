"""The wav2vec 2.0 pre-training objective (Baevski et al., 2020), as transformers'
`Wav2Vec2ForPreTraining` computes it, in JAX (everything jits):

* `sample_negative_indices`: K distractors per frame, uniform over the same utterance's
  candidate frames (the masked ones, as transformers and fairseq draw them) other than the
  frame itself;
* `contrastive_loss`: L_m = Σ_masked t -log softmax(sim(c_t, [q_t, q̃_1..q̃_K]) / κ)[0], with
  sim the cosine similarity, and a distractor equal to the positive given -inf;
* `diversity_loss`: L_d = (G·V - perplexity) / (G·V);
* `wav2vec2_loss`: L = L_m + α · L_d · (number of masked frames), transformers' formula;
* `gumbel_temperature`: the quantizer's temperature schedule.

The states come from `jaxseq.models.wav2vec2_pretraining.Wav2Vec2PreTraining`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

COSINE_EPS = 1e-8  # torch.cosine_similarity's floor on each norm
MAX_TEMPERATURE = 2.0  # fairseq's and transformers' Gumbel temperature schedule
MIN_TEMPERATURE = 0.5
TEMPERATURE_DECAY = 0.999995


class Wav2Vec2Losses(NamedTuple):
    """What `wav2vec2_loss` returns (float32 scalars)."""

    loss: jax.Array  # contrastive_loss + weight · diversity_loss · num_masked
    contrastive_loss: jax.Array  # summed over masked frames
    diversity_loss: jax.Array  # (G·V - perplexity) / (G·V), not scaled by num_masked
    num_masked: jax.Array  # masked frames in the batch


def gumbel_temperature(
    step: jax.Array | int,
    max_temperature: float = MAX_TEMPERATURE,
    min_temperature: float = MIN_TEMPERATURE,
    decay: float = TEMPERATURE_DECAY,
) -> jax.Array:
    """max(max_temperature · decay^step, min_temperature), float32 [] (jits; `step` may be
    traced, the others are Python floats). decay^step is exp(step · log(decay)), with the log
    taken in float64: float32 powers of 0.999995 drift by ~1% at 400k steps."""
    log_decay = np.float32(np.log(np.float64(decay)))
    step = jnp.asarray(step, jnp.float32)
    return jnp.maximum(max_temperature * jnp.exp(step * log_decay), min_temperature)


def sample_negative_indices(rng: jax.Array, candidates: jax.Array, num_negatives: int) -> jax.Array:
    """Distractor frames for every frame (transformers' `_sample_negative_indices`, in JAX).

    For frame t of item b, `num_negatives` indices drawn independently and uniformly (with
    replacement) from item b's candidate frames other than t. A frame with no such candidate
    (an item with fewer than two candidates) gets t itself, which the contrastive loss gives
    -inf as a copy of the positive.

    Args:
      rng: a PRNG key.
      candidates: bool [batch, frames], the frames to draw from: the time mask (transformers,
        fairseq), never padded frames.
      num_negatives: K.
    Returns:
      int32 [batch, frames, K], frame indices within each item (transformers' indices are
      these plus b · frames).
    """
    candidates = jnp.asarray(candidates, bool)
    batch, frames = candidates.shape
    count = jnp.sum(candidates, axis=1, dtype=jnp.int32)  # [batch]
    # The candidates' frame indices in order, then the rest: order[b, :count[b]].
    order = jnp.argsort(~candidates, axis=1, stable=True).astype(jnp.int32)  # [batch, frames]
    rank = jnp.cumsum(candidates, axis=1, dtype=jnp.int32) - 1  # t's place among candidates
    high = count[:, None] - candidates.astype(jnp.int32)  # [batch, frames] choices for t
    draw = jax.random.randint(
        rng, (batch, frames, num_negatives), 0, jnp.maximum(high, 1)[:, :, None]
    )
    # Skip t itself, keeping the draw uniform over the other candidates.
    draw = jnp.where(candidates[:, :, None] & (draw >= rank[:, :, None]), draw + 1, draw)
    picked = jnp.take_along_axis(order, draw.reshape(batch, -1), axis=1).reshape(draw.shape)
    itself = jnp.arange(frames, dtype=jnp.int32)[None, :, None]
    return jnp.where(high[:, :, None] > 0, picked, itself)


def _normalize(x: jax.Array) -> jax.Array:
    """x / max(‖x‖, eps) over the last axis, as torch.cosine_similarity does."""
    norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
    return x / jnp.maximum(norm, COSINE_EPS)


def contrastive_logits(
    projected_states: jax.Array,
    projected_quantized_states: jax.Array,
    negative_indices: jax.Array,
    temperature: float,
) -> jax.Array:
    """sim(c_t, [q_t, q_{n_1}, .., q_{n_K}]) / temperature, a distractor equal to the positive
    (bit for bit, e.g. the same codevectors) set to -inf (transformers' `compute_contrastive_logits`
    and its masking).

    Args:
      projected_states: float [batch, frames, proj], c.
      projected_quantized_states: float [batch, frames, proj], q.
      negative_indices: int [batch, frames, K] frames within each item (`sample_negative_indices`).
      temperature: κ (contrastive_logits_temperature).
    Returns:
      float32 [batch, frames, K + 1]; index 0 is the positive.
    """
    c = projected_states.astype(jnp.float32)
    q = projected_quantized_states.astype(jnp.float32)
    batch, frames, proj = q.shape
    flat = negative_indices.reshape(batch, -1, 1)  # [batch, frames · K, 1]
    negatives = jnp.take_along_axis(q, flat, axis=1).reshape(*negative_indices.shape, proj)
    targets = jnp.concatenate([q[:, :, None], negatives], axis=2)  # [batch, frames, K + 1, proj]
    logits = jnp.sum(_normalize(c)[:, :, None] * _normalize(targets), axis=-1) / temperature
    neg_is_pos = jnp.all(negatives == q[:, :, None], axis=-1)  # [batch, frames, K]
    return logits.at[:, :, 1:].set(jnp.where(neg_is_pos, -jnp.inf, logits[:, :, 1:]))


def contrastive_loss(logits: jax.Array, time_mask: jax.Array) -> jax.Array:
    """Σ over masked frames of -log softmax(logits)[0]: float32 [] (transformers' cross-entropy
    with target 0, reduction "sum", unmasked frames ignored).

    Args:
      logits: float [batch, frames, K + 1] (`contrastive_logits`).
      time_mask: bool [batch, frames].
    """
    nll = -jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)[..., 0]  # [batch, frames]
    return jnp.sum(jnp.where(time_mask, nll, 0.0))


def diversity_loss(perplexity: jax.Array, num_codevectors: int) -> jax.Array:
    """(G·V - perplexity) / (G·V): 0 when every codevector is used equally often."""
    return (num_codevectors - perplexity) / num_codevectors


def wav2vec2_loss(
    projected_states: jax.Array,
    projected_quantized_states: jax.Array,
    codevector_perplexity: jax.Array,
    negative_indices: jax.Array,
    time_mask: jax.Array,
    num_codevectors: int,
    contrastive_logits_temperature: float = 0.1,
    diversity_loss_weight: float = 0.1,
) -> Wav2Vec2Losses:
    """The wav2vec 2.0 loss of one batch, as transformers' `Wav2Vec2ForPreTraining` sums it:
    contrastive + diversity_loss_weight · diversity · (number of masked frames).

    Args:
      projected_states, projected_quantized_states: float [batch, frames, proj], and
        codevector_perplexity float [] (`Wav2Vec2PreTrainingOutput`).
      negative_indices: int [batch, frames, K] (`sample_negative_indices` of the time mask).
      time_mask: bool [batch, frames], the masked frames: those predicted.
      num_codevectors: G · V (`Wav2Vec2PreTrainingDims.num_codevectors`).
      contrastive_logits_temperature, diversity_loss_weight: κ and α.
    Returns:
      Wav2Vec2Losses.
    """
    logits = contrastive_logits(
        projected_states,
        projected_quantized_states,
        negative_indices,
        contrastive_logits_temperature,
    )
    contrastive = contrastive_loss(logits, time_mask)
    diversity = diversity_loss(codevector_perplexity, num_codevectors)
    num_masked = jnp.sum(time_mask, dtype=jnp.int32).astype(jnp.float32)
    loss = contrastive + diversity_loss_weight * diversity * num_masked
    return Wav2Vec2Losses(loss, contrastive, diversity, num_masked)
