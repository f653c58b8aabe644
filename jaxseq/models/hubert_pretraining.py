"""HuBERT self-supervised pre-training (Hsu et al., 2021): the Wav2Vec2/HuBERT encoder with
masked frames replaced by "masked_spec_embed", and fairseq's prediction head over frame-level
cluster targets:

    waveform [batch, samples] → Wav2Vec2Encoder (masked_spec_embed at `time_mask`)
      → last_hidden_state [batch, frames, hidden] → "final_proj" → [batch, frames, final_dim]
      → cosine similarity with each of "label_embeddings" [num_classes, final_dim] / logit_temp
      → logits [batch, frames, num_classes]

The loss over the logits is `jaxseq.losses.hubert.hubert_loss`; the targets come from
`jaxseq.data.cluster_targets` (MFCC k-means first, a previous model's layer afterwards).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseq.losses.hubert import LOGIT_TEMP, hubert_logits
from jaxseq.models.layers import dense, partitioned
from jaxseq.models.wav2vec2 import Wav2Vec2Dims, Wav2Vec2Encoder, Wav2Vec2Output
from jaxseq.parallel.sharding import EMBED, LABELS, MLP

Dtype = Any


@dataclass(frozen=True)
class HubertPreTrainingDims:
    """The prediction head's and the loss's hyperparameters, named after fairseq's HubertConfig
    and HubertCriterionConfig, with hubert_base_librispeech's values."""

    num_classes: int = 100  # k-means clusters (100 for MFCC targets, 500 afterwards)
    final_dim: int = 256
    logit_temp: float = LOGIT_TEMP
    pred_masked_weight: float = 1.0
    pred_nomask_weight: float = 0.0
    features_pen_weight: float = 10.0  # fairseq's loss_weights: [10]


class HubertPreTrainingOutput(NamedTuple):
    """What `HubertPreTraining` returns."""

    logits: jax.Array  # float32 [batch, frames, num_classes]
    features_pen: jax.Array  # float32 [], mean of the squared conv features (padding included)
    encoder: Wav2Vec2Output


class HubertPreTraining(nn.Module):
    """Waveform → per-frame class logits for HuBERT's masked prediction: "encoder"
    (Wav2Vec2Encoder, which needs `dims.has_mask_embedding` for a time mask), "final_proj"
    (Dense to final_dim) and "label_embeddings" (fairseq's `label_embs_concat`, uniform in
    [0, 1) at init)."""

    dims: Wav2Vec2Dims
    objective: HubertPreTrainingDims = HubertPreTrainingDims()
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        waveform: jax.Array,
        lengths: jax.Array | None = None,
        time_mask: jax.Array | None = None,
        deterministic: bool = True,
    ) -> HubertPreTrainingOutput:
        """waveform float [batch, samples] (16 kHz), lengths int [batch] valid samples or
        None, time_mask bool [batch, frames] the frames to mask and predict (e.g. from
        `sample_span_mask`) → HubertPreTrainingOutput."""
        o = self.objective
        out = Wav2Vec2Encoder(self.dims, self.dtype, name="encoder")(
            waveform, lengths, deterministic, time_mask
        )
        projected = dense(o.final_dim, (EMBED, MLP), self.dtype, "final_proj")(
            out.last_hidden_state
        )  # [batch, frames, final_dim]
        label_embeddings = self.param(
            "label_embeddings",
            partitioned(nn.initializers.uniform(1.0), LABELS, MLP),
            (o.num_classes, o.final_dim),
            jnp.float32,
        )
        logits = hubert_logits(projected, label_embeddings, o.logit_temp)
        features_pen = jnp.mean(jnp.square(out.conv_features.astype(jnp.float32)))
        return HubertPreTrainingOutput(logits, features_pen, out)
