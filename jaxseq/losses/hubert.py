"""The HuBERT pre-training objective (Hsu et al., 2021), as fairseq's `HubertModel` and
`HubertCriterion` compute it, in JAX (everything jits): masked prediction of frame-level cluster
targets.

* `hubert_logits`: cos(final_proj(x_t), e_c) / logit_temp for every frame t and class c, with
  e the learned label embeddings (fairseq's `compute_nce` against every class);
* `hubert_loss`: the cross-entropy of the target class summed over masked frames (weight
  `pred_masked_weight`) and, optionally, over unmasked ones (`pred_nomask_weight`), padding
  excluded, plus the feature penalty `features_pen_weight` · mean(conv features²) ·
  sample_size (fairseq's `loss_weights`).

fairseq scores [e_target, e_0, .., e_{C-1}] and gives -inf to every class whose embedding equals
the target's, the target's own slot included; that is the plain cross-entropy over the C classes
written here, unless two label embeddings are bit-for-bit equal. As in fairseq the loss is a sum:
divide by `sample_size` (what fairseq's trainer does) for a per-frame loss.

The states come from `jaxseq.models.hubert_pretraining.HubertPreTraining`; the targets from
`jaxseq.data.cluster_targets`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxseq.losses.wav2vec2 import COSINE_EPS

LOGIT_TEMP = 0.1  # fairseq's HubertConfig.logit_temp


class HubertLosses(NamedTuple):
    """What `hubert_loss` returns (float32 scalars)."""

    loss: jax.Array  # the weighted sum (fairseq's criterion's "loss")
    masked_loss: jax.Array  # cross-entropy summed over masked valid frames ("loss_m_0")
    unmasked_loss: jax.Array  # ... over unmasked valid frames ("loss_u_0")
    sample_size: jax.Array  # the frames that count: masked (and unmasked when weighted)
    masked_correct: jax.Array  # masked frames whose best class is the target
    num_masked: jax.Array
    num_unmasked: jax.Array


def hubert_logits(
    projected: jax.Array, label_embeddings: jax.Array, logit_temp: float = LOGIT_TEMP
) -> jax.Array:
    """Cosine similarity of every frame with every class embedding, over logit_temp.

    Args:
      projected: float [batch, frames, final_dim], final_proj of the last hidden state.
      label_embeddings: float [num_classes, final_dim] (fairseq's `label_embs_concat`).
      logit_temp: the temperature.
    Returns:
      float32 [batch, frames, num_classes].
    """

    def normalize(x: jax.Array) -> jax.Array:  # as torch.cosine_similarity: norms floored
        x = x.astype(jnp.float32)
        return x / jnp.maximum(jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True)), COSINE_EPS)

    cosine = jnp.einsum("btf,cf->btc", normalize(projected), normalize(label_embeddings))
    return cosine / logit_temp


def hubert_loss(
    logits: jax.Array,
    targets: jax.Array,
    time_mask: jax.Array,
    lengths: jax.Array,
    pred_masked_weight: float = 1.0,
    pred_nomask_weight: float = 0.0,
    features_pen: jax.Array | None = None,
    features_pen_weight: float = 0.0,
) -> HubertLosses:
    """fairseq's HuBERT criterion (one label set, reduction "sum").

    Args:
      logits: float [batch, frames, num_classes] (`hubert_logits`).
      targets: int [batch, frames] cluster ids (any value on padded frames).
      time_mask: bool [batch, frames], the masked frames.
      lengths: int [batch] valid frames.
      pred_masked_weight, pred_nomask_weight: the weights of the two cross-entropies; a
        weight of 0 leaves that part out of the loss and of sample_size.
      features_pen: float [], mean(conv features²) (`HubertPreTrainingOutput.features_pen`),
        weighted by features_pen_weight · sample_size; None leaves it out.
    Returns:
      HubertLosses.
    """
    frames = logits.shape[1]
    valid = jnp.arange(frames)[None, :] < lengths[:, None]  # [batch, frames]
    masked = valid & time_mask
    unmasked = valid & ~time_mask
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    target_lp = jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)
    nll = -target_lp[..., 0]  # [batch, frames]
    masked_loss = jnp.sum(jnp.where(masked, nll, 0.0))
    unmasked_loss = jnp.sum(jnp.where(unmasked, nll, 0.0))
    num_masked = jnp.sum(masked, dtype=jnp.int32).astype(jnp.float32)
    num_unmasked = jnp.sum(unmasked, dtype=jnp.int32).astype(jnp.float32)
    loss = jnp.zeros((), jnp.float32)
    sample_size = jnp.zeros((), jnp.float32)
    if pred_masked_weight > 0:
        loss += pred_masked_weight * masked_loss
        sample_size += num_masked
    if pred_nomask_weight > 0:
        loss += pred_nomask_weight * unmasked_loss
        sample_size += num_unmasked
    if features_pen is not None and features_pen_weight != 0:
        loss += features_pen_weight * features_pen.astype(jnp.float32) * sample_size
    correct = jnp.argmax(logits, axis=-1) == targets
    masked_correct = jnp.sum(masked & correct, dtype=jnp.int32).astype(jnp.float32)
    return HubertLosses(
        loss, masked_loss, unmasked_loss, sample_size, masked_correct, num_masked, num_unmasked
    )
