"""Audio classification: AST, or heads on jaxseq's audio encoder, per sequence or per frame;
or, with classify.encoder=wav2vec2 (model.frontend=waveform), Wav2Vec2/HuBERT per sequence or
per frame.

Targets come from the prepared records through a `LabelSet` (the family's tokenizer): one
label per item (softmax + cross-entropy, or sigmoid + binary cross-entropy per label when
`classify.multi_label`), or one label per frame from the item's segments (level=frame:
cross-entropy on every encoder frame a segment covers; `frame_targets` says which label an
encoder frame takes). Padded frames never count, in pooling or in the loss.

classify.encoder=wav2vec2 is transformers' Wav2Vec2ForSequenceClassification /
HubertForSequenceClassification (level=sequence) or Wav2Vec2ForAudioFrameClassification
(level=frame: a linear layer on every 20 ms frame), sized by the config's wav2vec2 section and
classify.classifier_proj_size (sequence only) / use_weighted_layer_sum. Its batches hold
samples (features float32 [batch, samples], feature_lengths in samples; its min_frames and
max_frames count samples too; at the frame level, labels hold one id per sample, from the
segments of the waveform records). In training, as the base model does inside transformers'
classifier: dropout, LayerDrop, time spans replaced by the learned mask embedding
(wav2vec2.mask_time_*) and spans of hidden channels zeroed (wav2vec2.mask_feature_*); the head
has no dropout of its own.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxseq.audio.specaugment import spec_augment
from jaxseq.config import Config, ConfigError
from jaxseq.data.labels import LabelSet
from jaxseq.data.records import index_name, read_index
from jaxseq.errors import JaxseqError
from jaxseq.models.layers import padding_mask
from jaxseq.tasks.base import Batch, Metrics, Task
from jaxseq.tasks.registry import register

LABELS_FILE = "labels.json"


def frame_targets(labels: jax.Array, stride: int, enc_frames: int, offset: int = 0) -> jax.Array:
    """Per-input-frame label ids [batch, L] → the label of each encoder frame [batch,
    enc_frames]: the label of the input frame at the centre of encoder frame k's receptive
    field, k * stride + offset. jaxseq's log-mel stem pads its convs so that the centre is
    input frame k * stride (offset 0); Wav2Vec2's unpadded conv stack (`receptive_field`
    samples, `stride` apart) covers samples [k * stride, k * stride + field), so its offset is
    field // 2 (sample k * 320 + 200 of the base stack). Positions beyond L are -1
    (unlabeled)."""
    need = offset + enc_frames * stride
    if labels.shape[1] < need:
        labels = jnp.pad(labels, ((0, 0), (0, need - labels.shape[1])), constant_values=-1)
    return labels[:, offset::stride][:, :enc_frames]  # [batch, enc_frames]


def multi_hot(labels: jax.Array, lengths: jax.Array, num_labels: int) -> jax.Array:
    """Label ids [batch, L] with `lengths` [batch] valid → float32 [batch, num_labels] 0/1."""
    valid = padding_mask(lengths, labels.shape[1])[:, :, None]  # [b, L, 1]
    hot = jax.nn.one_hot(labels, num_labels) * valid  # [b, L, labels]
    return jnp.minimum(jnp.sum(hot, axis=1), 1.0)


@register
class ClassifyTask(Task):
    """Log-mel (or, with classify.encoder=wav2vec2, waveforms) → class labels (see the
    module docstring)."""

    family = "classify"
    metric_kind = "classify"

    def __init__(self, cfg: Config, labels: LabelSet, n_mels: int):
        self.cfg = cfg
        self.tokenizer = labels
        self.n_mels = n_mels
        c = cfg.classify
        self._check_config()
        self.level, self.multi_label = c.level, c.multi_label
        self.best_metric = "der" if c.level == "frame" else "error_rate"
        dtype = jnp.bfloat16 if cfg.train.compute_dtype == "bfloat16" else jnp.float32
        self._build_model(dtype)
        # train.init_from (a CTC model, or an AST converted from transformers) gives the
        # encoder; the head, sized to this task's labels, starts fresh.
        self.pretrained_groups = ("encoder",)

    def _build_model(self, dtype: Any) -> None:
        """Sets the model; the shortest and longest inputs it classifies (min_frames,
        max_frames, in record frames), what the shortest is (`min_length`, for errors), the
        input frames per encoder frame (`stride`) and the input frame at the centre of encoder
        frame 0 (`frame_offset`, see `frame_targets`)."""
        c = self.cfg.classify
        self.frame_offset = 0
        if c.encoder == "ast":
            from jaxseq.models.ast import AST, min_frames

            self.model = AST(self.cfg.model, c, self.tokenizer.size, self.n_mels, dtype=dtype)
            self.min_frames, self.max_frames = min_frames(c), c.max_frames
            self.min_length = f"one {self.min_frames}-frame patch"
            self.stride = math.prod(self.cfg.model.subsample_strides)
        elif c.encoder == "wav2vec2":
            from jaxseq.models.wav2vec2 import (
                Wav2Vec2FrameClassifier,
                Wav2Vec2SequenceClassifier,
            )
            from jaxseq.tasks.ctc import wav2vec2_dims

            self.dims = dataclasses.replace(
                wav2vec2_dims(self.cfg, vocab_size=0),  # no CTC head
                num_labels=self.tokenizer.size,
                classifier_proj_size=c.classifier_proj_size,
                use_weighted_layer_sum=c.use_weighted_layer_sum,
            )
            head = Wav2Vec2FrameClassifier if c.level == "frame" else Wav2Vec2SequenceClassifier
            self.model = head(self.dims, dtype=dtype)
            self.min_frames, self.max_frames = receptive_field(self.dims), math.inf  # samples
            self.min_length = (
                f"the conv feature encoder's receptive field ({self.min_frames} samples)"
            )
            self.stride = math.prod(self.dims.conv_stride)  # samples per encoder frame
            self.frame_offset = self.min_frames // 2  # the receptive field's centre
        else:
            from jaxseq.models.classifier import EncoderClassifier

            self.model = EncoderClassifier(
                self.cfg.model, self.tokenizer.size, c.level, dtype=dtype
            )
            self.min_frames, self.max_frames = 1, math.inf
            self.min_length = "one frame"
            self.stride = math.prod(self.cfg.model.subsample_strides)

    def _check_config(self) -> None:
        c, data = self.cfg.classify, self.cfg.data
        if c.encoder == "ast":
            if c.level == "frame":
                raise ConfigError(
                    "classify.level=frame needs classify.encoder=transformer (AST pools patches "
                    "that mix neighbouring frames into one prediction per clip)"
                )
            if max(data.buckets) > c.max_frames:
                raise ConfigError(
                    f"data.buckets go up to {max(data.buckets)} frames but AST's position table "
                    f"covers classify.max_frames={c.max_frames}; lower the buckets or raise "
                    "classify.max_frames"
                )
        elif c.pooling != "mean":
            raise ConfigError(
                f"classify.pooling={c.pooling!r} is AST's; classify.encoder=transformer pools "
                "with 'mean' (over the valid frames): set classify.pooling=mean"
            )
        if c.level == "frame" and c.multi_label:
            raise ConfigError("classify.multi_label applies to level=sequence only")
        if c.level == "frame" and data.max_label_length < max(data.buckets):
            raise ConfigError(
                f"classify.level=frame keeps one label per frame: data.max_label_length "
                f"({data.max_label_length}) must be at least the largest bucket "
                f"({max(data.buckets)})"
            )

    @classmethod
    def from_dataset(cls, cfg: Config, info: dict, workdir: Path | None = None) -> ClassifyTask:
        """The training split's label set (read from dataset.json: the same everywhere)."""
        del workdir
        split = cfg.data.train_split
        where = f"{cfg.data.dataset}:{split}"
        labels = LabelSet.from_inventory(info["splits"][split], cfg.classify.level, where)
        kind = info["frontend"].get("kind", "logmel")
        if kind != cfg.model.frontend:
            raise JaxseqError(
                f"model.frontend={cfg.model.frontend} reads {cfg.model.frontend} records, but "
                f"the dataset {cfg.data.dataset} holds {kind} ones: prepare it with "
                f"prepare.frontend.kind={cfg.model.frontend}"
            )
        task = cls(cfg, labels, int(info["frontend"].get("n_mels", 0)))
        task.check_split(cfg.data.dataset, info, split)
        return task

    @classmethod
    def from_config(cls, cfg: Config) -> ClassifyTask:
        """The label set is the training split's: there is no classifier without data."""
        raise JaxseqError(
            "model.family=classify takes its label set from the training split: set "
            "data.dataset to a prepared dataset (jaxseq prepare) to compile it"
        )

    @classmethod
    def from_workdir(cls, cfg: Config, workdir: Path, n_mels: int) -> ClassifyTask:
        return cls(cfg, LabelSet.load(Path(workdir) / LABELS_FILE), n_mels)

    def save_tokenizer(self, workdir: Path) -> None:
        self.tokenizer.save(Path(workdir) / LABELS_FILE)

    def check_split(self, dataset_dir: str | Path, info: dict, split: str) -> None:
        """Raises JaxseqError naming the items of a prepared split that cannot be classified:
        labels outside the model's set, clips shorter than the model's shortest input (AST:
        one patch; Wav2Vec2: the conv receptive field) or longer than AST's position table.
        Warns about the model's labels the split never uses."""
        where = f"{dataset_dir}:{split}"
        unused = self.tokenizer.check_split(info["splits"][split], where)
        if unused:
            logging.warning(
                "%s has no items of %d of the model's labels: %s", where, len(unused), unused[:10]
            )
        index = read_index(Path(dataset_dir) / index_name(split))
        short = index["ids"][index["num_frames"] < self.min_frames]
        if len(short):
            raise JaxseqError(
                f"{where}: {len(short)} clips are shorter than {self.min_length}, e.g. "
                f"{list(short[:5])}; the model cannot classify them: remove them from the "
                "manifest, or pad the audio"
            )
        long = index["ids"][index["num_frames"] > self.max_frames]
        if len(long):
            raise JaxseqError(
                f"{where}: {len(long)} clips are longer than AST's classify.max_frames="
                f"{self.max_frames}, e.g. {list(long[:5])}: cut them, or raise max_frames"
            )

    def label_lengths(self, dataset_dir: str | Path, info: dict, split: str) -> np.ndarray:
        """Label ids per record: one per frame (level=frame), one per item, or up to
        data.max_label_length for multi-label items."""
        frames = read_index(Path(dataset_dir) / index_name(split))["num_frames"]
        if self.level == "frame":
            return frames.astype(np.int32)
        per_item = self.cfg.data.max_label_length if self.multi_label else 1
        return np.full(frames.shape, per_item, np.int32)

    def dummy_batch(self, batch_size: int, frames: int) -> dict[str, np.ndarray]:
        """The training layout; with classify.encoder=wav2vec2, `frames` samples: features
        float32 [batch, samples]."""
        batch = super().dummy_batch(batch_size, frames)
        if self.cfg.classify.encoder == "wav2vec2":
            batch["features"] = np.zeros((batch_size, frames), np.float32)
        return batch

    def init_variables(self, rng: jax.Array, batch: Batch) -> dict[str, Any]:
        return self.model.init(
            {"params": rng}, batch["features"], batch["feature_lengths"], deterministic=True
        )

    def logits(
        self, params: Any, batch: Batch, rng: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """(logits: [batch, labels], or [batch, enc_frames, labels] at the frame level;
        valid encoder frames [batch]). With `rng`, a training forward pass (dropout, and
        SpecAugment when enabled; wav2vec2: the span masks of `wav2vec2_span_masks`)."""
        features, lengths = batch["features"], batch["feature_lengths"]
        if self.cfg.classify.encoder == "wav2vec2":
            return self._wav2vec2_logits(params, features, lengths, rng)
        if features.shape[1] > self.max_frames:  # AST: only bucket padding lies beyond
            features = features[:, : self.max_frames]
        train = rng is not None
        if train and self.cfg.spec_augment.enabled:
            features = spec_augment(
                jax.random.fold_in(rng, 1), features, lengths, self.cfg.spec_augment
            )
        rngs = {"dropout": jax.random.fold_in(rng, 2)} if train else {}
        out = self.model.apply(
            {"params": params}, features, lengths, deterministic=not train, rngs=rngs
        )
        return out if isinstance(out, tuple) else (out, lengths)  # AST: logits only

    def _wav2vec2_logits(
        self, params: Any, waveform: jax.Array, lengths: jax.Array, rng: jax.Array | None
    ) -> tuple[jax.Array, jax.Array]:
        """`logits` of the Wav2Vec2 classifier on waveforms [batch, samples] of `lengths`
        samples: (logits [batch, labels], or [batch, enc_frames, labels] at the frame level;
        valid encoder frames [batch]); with `rng`, dropout
        from fold_in(rng, 2), LayerDrop and the masks transformers' base model draws."""
        from jaxseq.tasks.ctc import wav2vec2_apply

        return wav2vec2_apply(self.model, self.dims, params, waveform, lengths, rng)

    def loss_fn(
        self, params: Any, batch: Batch, rng: jax.Array, train: bool
    ) -> tuple[jax.Array, Metrics]:
        logits, enc_lengths = self.logits(params, batch, rng if train else None)
        rows = batch.get("valid", jnp.ones(logits.shape[0], bool)).astype(jnp.float32)  # [b]
        labels = batch["labels"]  # [b, L]
        if self.level == "frame":
            targets = frame_targets(
                labels, self.stride, logits.shape[1], self.frame_offset
            )  # [b, enc_frames]
            weights = (padding_mask(enc_lengths, logits.shape[1]) & (targets >= 0)) * rows[
                :, None
            ]  # [b, enc_frames]
            safe = jnp.maximum(targets, 0)
            per = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
            correct = (jnp.argmax(logits, -1) == targets) * weights
        elif self.multi_label:
            hot = multi_hot(labels, batch["label_lengths"], logits.shape[-1])  # [b, labels]
            per = jnp.sum(optax.sigmoid_binary_cross_entropy(logits, hot), axis=-1)  # [b]
            weights = rows
            correct = jnp.all((logits > 0) == (hot > 0), axis=-1) * weights
        else:
            per = optax.softmax_cross_entropy_with_integer_labels(logits, labels[:, 0])  # [b]
            weights = rows
            correct = (jnp.argmax(logits, -1) == labels[:, 0]) * weights
        tokens = jnp.sum(weights)
        loss = jnp.sum(per * weights) / jnp.maximum(tokens, 1.0)
        metrics = {"utterances": jnp.sum(rows), "tokens": tokens, "correct": jnp.sum(correct)}
        return loss, metrics

    def predict_fn(self, params: Any, batch: Batch) -> tuple[jax.Array, jax.Array]:
        """(logits, valid encoder frames) of a batch, as `logits` in evaluation mode."""
        return self.logits(params, batch)


def receptive_field(dims: Any) -> int:
    """The fewest samples a Wav2Vec2Dims' conv feature encoder turns into one frame (400 for
    the base stack's kernels and strides: 25 ms at 16 kHz)."""
    samples = 1
    for kernel, stride in zip(reversed(dims.conv_kernel), reversed(dims.conv_stride), strict=True):
        samples = (samples - 1) * stride + kernel
    return samples
