"""Self-supervised pre-training of the Wav2Vec2/HuBERT encoder on unlabeled waveforms
(model.family=ssl, sized by the wav2vec2 section, the objective by the ssl section). The
records' text is never read.

Both objectives mask spans of the encoder's frames (wav2vec2.mask_time_prob/length/min_masks
over each item's valid frames, `sample_span_mask`) inside the jitted step, from the step's rng:

* ssl.objective=wav2vec2 (Baevski et al., 2020; transformers' Wav2Vec2ForPreTraining):
  distractors drawn among each item's masked frames (`sample_negative_indices`), the Gumbel
  temperature of the step (`gumbel_temperature`), and `wav2vec2_loss` (contrastive +
  diversity);
* ssl.objective=hubert (Hsu et al., 2021; fairseq's HubertModel): masked prediction of the
  cluster targets of DATASET/{split}.targets.npz (`jaxseq.data.ssl_targets`; the batch's
  `labels` carry them, int32 [batch, frames]), `hubert_loss`.

The loss the optimizer sees is the objective's sum divided by its sample size, the masked
frames (as fairseq's trainer and transformers' pre-training script divide), so that
`metrics["tokens"]` is that count and gradient accumulation and evaluation combine exactly
(wav2vec2's diversity term is per batch: with train.microbatches > 1 it is that of each
microbatch's codevectors).

The encoder's parameters are the top-level group "encoder", named as in Wav2Vec2CTC, so that
`train.init_from` of a model.frontend=waveform CTC config fine-tunes the pre-trained encoder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq.config import Config, ConfigError
from jaxseq.data.records import index_name, read_index
from jaxseq.data.ssl_targets import ClusterTargets, NoLabels
from jaxseq.errors import JaxseqError
from jaxseq.losses.hubert import hubert_loss
from jaxseq.losses.wav2vec2 import (
    contrastive_logits,
    gumbel_temperature,
    sample_negative_indices,
    wav2vec2_loss,
)
from jaxseq.models.hubert_pretraining import HubertPreTraining, HubertPreTrainingDims
from jaxseq.models.wav2vec2_features import sample_span_mask
from jaxseq.models.wav2vec2_pretraining import Wav2Vec2PreTraining, Wav2Vec2PreTrainingDims
from jaxseq.tasks.base import STEP_KEY, Batch, Metrics, Task
from jaxseq.tasks.ctc import wav2vec2_dims
from jaxseq.tasks.registry import register

OBJECTIVES = ("wav2vec2", "hubert")
# Evaluation draws its masks (and distractors) from this key: every evaluation of a split
# scores the same frames, whatever the process count.
EVAL_SEED = 0


@register
class SSLTask(Task):
    """Waveform → the pre-training objective's loss on masked frames (see the module
    docstring). In evaluation (masks and distractors drawn from EVAL_SEED) `loss_fn` gives the
    same loss, and `predict_fn` per item the masked frames and those predicted right (the
    positive's logit highest among the distractors, or the target cluster's), for a scorer of
    metric_kind "ssl": masked-frame accuracy and, for wav2vec2, codevector perplexity."""

    family = "ssl"
    metric_kind = "ssl"
    best_metric = "loss"

    def __init__(self, cfg: Config, tokenizer: ClusterTargets | NoLabels):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.n_mels = 0  # unused: the input is the waveform
        s, w = cfg.ssl, cfg.wav2vec2
        if cfg.model.frontend != "waveform":
            raise ConfigError(
                "model.family=ssl pre-trains the Wav2Vec2/HuBERT encoder of raw audio: set "
                "model.frontend=waveform"
            )
        if s.objective not in OBJECTIVES:
            raise ConfigError(f"ssl.objective={s.objective!r} is not one of {OBJECTIVES}")
        if not (w.apply_spec_augment and w.mask_time_prob > 0):
            raise ConfigError(
                "model.family=ssl predicts masked frames: set wav2vec2.apply_spec_augment=true "
                f"and wav2vec2.mask_time_prob > 0 (it is {w.mask_time_prob}; 0.65 pre-trains "
                "base models)"
            )
        dtype = jnp.bfloat16 if cfg.train.compute_dtype == "bfloat16" else jnp.float32
        self.dims = wav2vec2_dims(cfg, vocab_size=0)  # no CTC head
        if s.objective == "wav2vec2":
            self.objective = Wav2Vec2PreTrainingDims(
                num_codevector_groups=s.num_codevector_groups,
                num_codevectors_per_group=s.num_codevectors_per_group,
                codevector_dim=s.codevector_dim,
                proj_codevector_dim=s.proj_codevector_dim,
                feat_quantizer_dropout=s.feat_quantizer_dropout,
                num_negatives=s.num_negatives,
                contrastive_logits_temperature=s.contrastive_logits_temperature,
                diversity_loss_weight=s.diversity_loss_weight,
            )
            self.model = Wav2Vec2PreTraining(self.dims, self.objective, dtype)
        else:
            self.objective = HubertPreTrainingDims(
                num_classes=s.num_classes,
                final_dim=s.final_dim,
                pred_masked_weight=s.pred_masked_weight,
                pred_nomask_weight=s.pred_nomask_weight,
                features_pen_weight=s.features_pen_weight,
            )
            self.model = HubertPreTraining(self.dims, self.objective, dtype)
            frames = self.frames(max(cfg.data.buckets))
            if cfg.data.max_label_length < frames:
                raise ConfigError(
                    f"data.max_label_length={cfg.data.max_label_length}: the batches' labels "
                    f"hold one cluster target per frame, up to {frames} for the largest of "
                    "data.buckets; raise it to at least that"
                )

    # ------------------------------------------------------------------ construction

    @classmethod
    def _build(cls, cfg: Config) -> SSLTask:
        if cfg.ssl.objective == "hubert":
            return cls(cfg, ClusterTargets(cfg.data.dataset, cfg.ssl.num_classes))
        return cls(cfg, NoLabels())

    @classmethod
    def from_dataset(cls, cfg: Config, info: dict, workdir: Path | None = None) -> SSLTask:
        """Raises JaxseqError unless the dataset holds waveform records."""
        del workdir
        if info["frontend"].get("kind", "logmel") != "waveform":
            raise JaxseqError(
                f"model.family=ssl reads waveform records, but {cfg.data.dataset} holds log-mel "
                "ones: prepare it with prepare.frontend.kind=waveform"
            )
        return cls._build(cfg)

    @classmethod
    def from_workdir(cls, cfg: Config, workdir: Path, n_mels: int) -> SSLTask:
        """Nothing is learned but the weights: hubert's targets are read from data.dataset."""
        del workdir, n_mels
        return cls._build(cfg)

    def save_tokenizer(self, workdir: Path) -> None:
        """Nothing to save: the targets stay beside the dataset."""
        del workdir

    # ------------------------------------------------------------------ data

    def frames(self, samples: Any) -> Any:
        """The conv feature encoder's frames of `samples` (int [batch], NumPy or traced) as
        `conv_output_lengths`; of a Python int as a Python int (static shapes: no device op,
        which `jaxseq compile` for a topology without its chips could not run)."""
        return self.dims.output_lengths(samples)

    def label_lengths(self, dataset_dir: str | Path, info: dict, split: str) -> np.ndarray:
        """hubert: one target per frame; wav2vec2: the text is not read, and each item counts
        one placeholder label so that the pipeline's empty-text filter drops nothing."""
        del info
        samples = read_index(Path(dataset_dir) / index_name(split))["num_frames"]
        if self.cfg.ssl.objective == "hubert":
            return np.asarray(self.frames(samples.astype(np.int64)), np.int32)
        return np.ones(samples.shape, np.int32)

    def dummy_batch(self, batch_size: int, frames: int) -> dict[str, np.ndarray]:
        """The training layout with `frames` samples: features float32 [batch, samples]."""
        batch = super().dummy_batch(batch_size, frames)
        batch["features"] = np.zeros((batch_size, frames), np.float32)
        return batch

    # ------------------------------------------------------------------ device functions

    def init_variables(self, rng: jax.Array, batch: Batch) -> dict[str, Any]:
        return self.model.init({"params": rng}, batch["features"], batch["feature_lengths"])

    def time_mask(self, batch: Batch, rng: jax.Array) -> jax.Array:
        """The masked frames bool [batch, frames] of the batch's waveforms [batch, samples]:
        spans over each valid row's frames (none on evaluation fillers, valid False)."""
        w = self.cfg.wav2vec2
        frames = self.frames(int(batch["features"].shape[1]))  # static: of the padding
        lengths = self.frames(batch["feature_lengths"])  # [batch]
        if "valid" in batch:
            lengths = jnp.where(batch["valid"], lengths, 0)
        mask = sample_span_mask(
            rng, lengths, frames, w.mask_time_prob, w.mask_time_length, w.mask_time_min_masks
        )  # [batch, frames]
        return mask & (jnp.arange(frames)[None, :] < lengths[:, None])

    def step_keys(self, rng: jax.Array | None, train: bool) -> dict[str, jax.Array]:
        """The keys of one forward pass: "mask", "negatives", and in training "dropout" and
        "gumbel" (the step's rng folded); evaluation's from EVAL_SEED."""
        key = rng if train else jax.random.PRNGKey(EVAL_SEED)
        names = ("mask", "negatives", "dropout", "gumbel")
        return {name: jax.random.fold_in(key, i + 1) for i, name in enumerate(names)}

    def objective_terms(
        self, params: Any, batch: Batch, rng: jax.Array | None, train: bool
    ) -> tuple[Any, dict[str, jax.Array]]:
        """The objective on a batch: (its losses, `Wav2Vec2Losses` or `HubertLosses`; per item
        float32 [batch]: "masked" frames, those predicted "correct" (the positive's logit
        highest among the distractors, fairseq's "correct"; or the target cluster's), and for
        wav2vec2 the batch's codevector "perplexity" on every row)."""
        keys = self.step_keys(rng, train)
        waveform, lengths = batch["features"], batch["feature_lengths"]  # [b, samples], [b]
        mask = self.time_mask(batch, keys["mask"])  # [batch, frames]
        rngs = {"dropout": keys["dropout"], "gumbel": keys["gumbel"]} if train else {}
        o = self.objective
        if self.cfg.ssl.objective == "wav2vec2":
            temperature = 1.0  # unused when deterministic
            if train:
                step = batch[STEP_KEY][0]
                temperature = gumbel_temperature(step, *self.cfg.ssl.gumbel_temperature)
            out = self.model.apply(
                {"params": params},
                waveform,
                lengths,
                mask,
                deterministic=not train,
                temperature=temperature,
                rngs=rngs,
            )
            negatives = sample_negative_indices(keys["negatives"], mask, o.num_negatives)
            losses = wav2vec2_loss(
                out.projected_states,
                out.projected_quantized_states,
                out.codevector_perplexity,
                negatives,
                mask,
                o.num_codevectors,
                o.contrastive_logits_temperature,
                o.diversity_loss_weight,
            )
            logits = contrastive_logits(
                out.projected_states,
                out.projected_quantized_states,
                negatives,
                o.contrastive_logits_temperature,
            )  # [batch, frames, K + 1]
            hit = (jnp.argmax(logits, axis=-1) == 0) & mask
            perplexity = jnp.full(mask.shape[:1], out.codevector_perplexity, jnp.float32)
            extra = {"perplexity": perplexity}
        else:
            out = self.model.apply(
                {"params": params}, waveform, lengths, mask, deterministic=not train, rngs=rngs
            )
            targets = self._targets(batch, out.logits.shape[1])  # [batch, frames]
            losses = hubert_loss(
                out.logits,
                targets,
                mask,
                self.frames(lengths),
                o.pred_masked_weight,
                o.pred_nomask_weight,
                out.features_pen,
                o.features_pen_weight,
            )
            hit = (jnp.argmax(out.logits, axis=-1) == targets) & mask  # [batch, frames]
            extra = {}
        per_item = {
            "masked": jnp.sum(mask, axis=1, dtype=jnp.float32),
            "correct": jnp.sum(hit, axis=1, dtype=jnp.float32),
        }
        return losses, {**per_item, **extra}

    def _targets(self, batch: Batch, frames: int) -> jax.Array:
        """The batch's labels as cluster targets int32 [batch, frames] (zero padded)."""
        labels = batch["labels"][:, :frames]  # [batch, <= frames]
        return jnp.pad(labels, ((0, 0), (0, frames - labels.shape[1])))

    def loss_fn(
        self, params: Any, batch: Batch, rng: jax.Array, train: bool
    ) -> tuple[jax.Array, Metrics]:
        """The objective's sum over the batch / its sample size, the masked frames
        ("tokens"); also "correct" (masked frames predicted right) and the objective's parts."""
        losses, per_item = self.objective_terms(params, batch, rng, train)
        rows = batch.get("valid", jnp.ones(per_item["masked"].shape, bool))
        if self.cfg.ssl.objective == "wav2vec2":
            tokens = losses.num_masked
            parts = {
                "contrastive_loss": losses.contrastive_loss,
                "diversity": losses.diversity_loss,
            }
        else:
            tokens = losses.sample_size
            parts = {"masked_loss": losses.masked_loss}
        metrics = {
            "utterances": jnp.sum(rows.astype(jnp.float32)),
            "tokens": tokens,
            "correct": jnp.sum(per_item["correct"]),
        }
        return losses.loss / jnp.maximum(tokens, 1.0), {**metrics, **parts}

    def predict_fn(self, params: Any, batch: Batch) -> dict[str, jax.Array]:
        """The per-item counts of `objective_terms` under evaluation's masks."""
        return self.objective_terms(params, batch, None, train=False)[1]
