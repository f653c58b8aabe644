"""CTC encoder-only ASR: characters + blank, trained with jaxseq's vmapped CTC loss, on log-mel
features (a conv stem + Transformer) or, with model.frontend=waveform, on raw audio
(Wav2Vec2/HuBERT, sized by the config's wav2vec2 section)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq.audio.specaugment import spec_augment
from jaxseq.config import Config
from jaxseq.decoding.ctc import (
    ctc_batch_prefix_beam_search,
    ctc_greedy_decode,
    ctc_greedy_path,
)
from jaxseq.errors import JaxseqError
from jaxseq.losses.ctc import ctc_feasible, ctc_loss
from jaxseq.models.ctc import CTCModel
from jaxseq.models.wav2vec2 import Wav2Vec2CTC, Wav2Vec2Dims
from jaxseq.models.wav2vec2_features import sample_span_mask
from jaxseq.tasks.base import ASRTask, Batch, Metrics
from jaxseq.tasks.registry import register
from jaxseq.text.vocab import CharVocab

VOCAB_FILE = "vocab.json"
DECODERS = ("greedy", "prefix_beam")


@register
class CTCTask(ASRTask):
    """Log-mel → characters with a Transformer encoder and a CTC head."""

    family = "ctc"

    def __init__(self, cfg: Config, vocab: CharVocab, n_mels: int):
        self.cfg = cfg
        self.tokenizer = vocab
        self.n_mels = n_mels
        dtype = jnp.bfloat16 if cfg.train.compute_dtype == "bfloat16" else jnp.float32
        self.model = CTCModel(cfg.model, vocab.size, dtype=dtype)

    @classmethod
    def from_dataset(cls, cfg: Config, info: dict, workdir: Path | None = None) -> CTCTask:
        """Characters of the dataset's charset (the same on every process: nothing learned).

        Raises:
          JaxseqError: when the dataset's records (log-mel or waveform) are not the input of
            model.frontend.
        """
        del workdir
        kind = info["frontend"].get("kind", "logmel")
        if kind != cfg.model.frontend:
            raise JaxseqError(
                f"model.frontend={cfg.model.frontend} reads {cfg.model.frontend} records, but "
                f"the dataset {cfg.data.dataset} holds {kind} ones: prepare it with "
                f"prepare.frontend.kind={cfg.model.frontend}"
            )
        vocab = CharVocab.from_charset(info["text"]["charset"])
        return _task_class(cfg)(cfg, vocab, int(info["frontend"]["n_mels"]))

    @classmethod
    def from_workdir(cls, cfg: Config, workdir: Path, n_mels: int) -> CTCTask:
        return _task_class(cfg)(cfg, CharVocab.load(Path(workdir) / VOCAB_FILE), n_mels)

    def save_tokenizer(self, workdir: Path) -> None:
        self.tokenizer.save(Path(workdir) / VOCAB_FILE)

    def init_variables(self, rng: jax.Array, batch: Batch) -> dict[str, Any]:
        return self.model.init(
            {"params": rng}, batch["features"], batch["feature_lengths"], deterministic=True
        )

    def logits(
        self, params: Any, batch: Batch, rng: jax.Array | None, train: bool
    ) -> tuple[jax.Array, jax.Array]:
        """(logits float32 [batch, enc_frames, vocab], encoder lengths [batch]) of a batch; in
        training with SpecAugment and dropout drawn from `rng`."""
        features = batch["features"]  # [batch, frames, n_mels]
        if not train:
            return self.model.apply({"params": params}, features, batch["feature_lengths"])
        features = spec_augment(
            jax.random.fold_in(rng, 1), features, batch["feature_lengths"], self.cfg.spec_augment
        )
        return self.model.apply(
            {"params": params},
            features,
            batch["feature_lengths"],
            deterministic=False,
            rngs={"dropout": jax.random.fold_in(rng, 2)},
        )

    def loss_fn(
        self, params: Any, batch: Batch, rng: jax.Array, train: bool
    ) -> tuple[jax.Array, Metrics]:
        logits, lengths = self.logits(params, batch, rng, train)  # [b, frames, vocab], [b]
        per_utt = ctc_loss(
            logits, lengths, batch["labels"], batch["label_lengths"], self.tokenizer.blank_id
        )  # [batch]
        weights = batch.get("valid", jnp.ones_like(per_utt, dtype=bool)).astype(jnp.float32)
        tokens = jnp.sum(batch["label_lengths"] * weights)
        loss = jnp.sum(per_utt * weights) / jnp.maximum(tokens, 1.0)
        infeasible = ~ctc_feasible(lengths, batch["labels"], batch["label_lengths"])
        metrics = {
            "utterances": jnp.sum(weights),
            "tokens": tokens,
            "infeasible": jnp.sum(infeasible * weights),
        }
        return loss, metrics

    def predict_fn(
        self, params: Any, batch: Batch, decoder: str, beam_size: int
    ) -> tuple[jax.Array, ...]:
        """Greedy: the best path's ids and their log-probabilities [batch, enc_frames] (argmax
        on the device: the vocabulary's log-probs never reach the host); prefix_beam: log-probs
        [batch, enc_frames, vocab] for the host's beam search. Both with the encoder lengths
        [batch] last."""
        del beam_size  # the beam search runs in `decode`
        logits, lengths = self.logits(params, batch, None, train=False)
        if decoder == "greedy":
            return (*ctc_greedy_path(logits), lengths)
        return jax.nn.log_softmax(logits, axis=-1), lengths

    def decode(self, outputs: Any, decoder: str, beam_size: int) -> list[str]:
        if decoder not in DECODERS:
            raise JaxseqError(f"eval.decoder={decoder!r}: CTC decodes with one of {DECODERS}")
        scores_or_ids, lengths = np.asarray(outputs[0]), np.asarray(outputs[-1])
        blank = self.tokenizer.blank_id
        if decoder == "prefix_beam":
            ids = ctc_batch_prefix_beam_search(scores_or_ids, lengths, beam_size, blank)
        else:
            ids = ctc_greedy_decode(scores_or_ids, lengths, blank)
        return [self.tokenizer.decode(seq) for seq in ids]


def wav2vec2_dims(cfg: Config, vocab_size: int) -> Wav2Vec2Dims:
    """The model of a config's wav2vec2 section (its fields are Wav2Vec2Dims', one for one,
    but model_type), with a CTC head over `vocab_size` classes and model.remat."""
    fields = dataclasses.asdict(cfg.wav2vec2)
    del fields["model_type"]  # the checkpoint's transformers class: export reads it
    return Wav2Vec2Dims(**fields, vocab_size=vocab_size, remat=cfg.model.remat)


def wav2vec2_span_masks(
    dims: Wav2Vec2Dims, rng: jax.Array, waveform: jax.Array, lengths: jax.Array
) -> tuple[jax.Array | None, jax.Array | None]:
    """The training-time masks transformers' Wav2Vec2Model draws (`_mask_hidden_states`) for
    waveforms [batch, samples] of `lengths` [batch] samples: (time mask bool [batch, frames],
    spans of mask_time_length frames within each item's valid frames, or None; feature mask
    bool [batch, hidden], spans of mask_feature_length channels, one per utterance, or None),
    each None when apply_spec_augment is off or its probability is 0. Drawn from
    fold_in(rng, 1) and fold_in(rng, 3) (2 is the dropout's)."""
    d, time_mask, feature_mask = dims, None, None
    if d.apply_spec_augment and d.mask_time_prob > 0:
        frames = d.output_lengths(waveform.shape[1])  # static: the padded samples' frames
        time_mask = sample_span_mask(
            jax.random.fold_in(rng, 1),
            d.output_lengths(lengths),
            frames,
            d.mask_time_prob,
            d.mask_time_length,
            d.mask_time_min_masks,
        )  # [batch, frames]
    if d.apply_spec_augment and d.mask_feature_prob > 0:
        feature_mask = sample_span_mask(
            jax.random.fold_in(rng, 3),
            jnp.full(waveform.shape[:1], d.hidden_size),  # every channel valid
            d.hidden_size,
            d.mask_feature_prob,
            d.mask_feature_length,
            d.mask_feature_min_masks,
        )  # [batch, hidden]
    return time_mask, feature_mask


def wav2vec2_apply(
    model: Any,
    dims: Wav2Vec2Dims,
    params: Any,
    waveform: jax.Array,
    lengths: jax.Array,
    rng: jax.Array | None,
) -> tuple[jax.Array, jax.Array]:
    """(logits, valid encoder frames [batch]) of a Wav2Vec2 model with a head (its apply returns
    (logits, Wav2Vec2Output)) on waveforms [batch, samples] of `lengths` samples: in evaluation
    without `rng`; with it, as transformers trains: dropout and LayerDrop from fold_in(rng, 2)
    and the span masks of `wav2vec2_span_masks`."""
    if rng is None:
        logits, out = model.apply({"params": params}, waveform, lengths)
        return logits, out.lengths
    time_mask, feature_mask = wav2vec2_span_masks(dims, rng, waveform, lengths)
    logits, out = model.apply(
        {"params": params},
        waveform,
        lengths,
        deterministic=False,
        time_mask=time_mask,
        feature_mask=feature_mask,
        rngs={"dropout": jax.random.fold_in(rng, 2)},
    )
    return logits, out.lengths


class Wav2Vec2CTCTask(CTCTask):
    """Waveform → characters with Wav2Vec2/HuBERT and a CTC head (model.frontend=waveform), as
    transformers' Wav2Vec2ForCTC fine-tunes: batches hold samples (features float32 [batch,
    samples], feature_lengths in samples); in training, dropout, LayerDrop, time spans
    masked with the learned mask embedding (wav2vec2.mask_time_*) and spans of hidden channels
    zeroed (wav2vec2.mask_feature_*). `train.init_from` gives the
    encoder; the head over this dataset's characters starts fresh."""

    pretrained_groups = ("encoder",)

    def __init__(self, cfg: Config, vocab: CharVocab, n_mels: int):
        self.cfg = cfg
        self.tokenizer = vocab
        self.n_mels = n_mels  # unused: the input is the waveform
        dtype = jnp.bfloat16 if cfg.train.compute_dtype == "bfloat16" else jnp.float32
        self.dims = wav2vec2_dims(cfg, vocab.size)
        self.model = Wav2Vec2CTC(self.dims, dtype=dtype)

    def dummy_batch(self, batch_size: int, frames: int) -> dict[str, np.ndarray]:
        """The training layout with `frames` samples: features float32 [batch, samples]."""
        batch = super().dummy_batch(batch_size, frames)
        batch["features"] = np.zeros((batch_size, frames), np.float32)
        return batch

    def init_variables(self, rng: jax.Array, batch: Batch) -> dict[str, Any]:
        return self.model.init(
            {"params": rng}, batch["features"], batch["feature_lengths"], deterministic=True
        )

    def logits(
        self, params: Any, batch: Batch, rng: jax.Array | None, train: bool
    ) -> tuple[jax.Array, jax.Array]:
        """(logits float32 [batch, frames, vocab], frames [batch]) of the waveforms
        [batch, samples]; in training with dropout, LayerDrop, the time mask (spans of
        mask_time_length frames, sample_span_mask) and the feature mask (spans of
        mask_feature_length hidden channels, one mask per utterance zeroing those channels at
        every frame, as transformers' `_mask_hidden_states`) drawn from `rng`."""
        waveform, lengths = batch["features"], batch["feature_lengths"]  # [b, samples], [b]
        return wav2vec2_apply(
            self.model, self.dims, params, waveform, lengths, rng if train else None
        )


def _task_class(cfg: Config) -> type[CTCTask]:
    """The CTC task of model.frontend."""
    return Wav2Vec2CTCTask if cfg.model.frontend == "waveform" else CTCTask
