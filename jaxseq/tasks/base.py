"""The interface the one train loop and the one evaluation loop call, and nothing more.

A task is a model family's device functions and what they need: the model, its tokenizer, the
loss on a batch, prediction on a batch, and which metrics score it (`metric_kind`). It knows
nothing of training loops or evaluation: `jaxseq.train.loop` and `jaxseq.evaluation.loop`
call it, never the reverse. (t5x's BaseModel: loss_fn / predict_batch / score_batch.)

A family joins with `@register` (jaxseq.tasks.registry) on its Task subclass.
"""

from __future__ import annotations

import abc
import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import flax.linen as nn
import jax
import numpy as np

from jaxseq.config import Config, frontend_settings

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
# In training batches only: the train step being taken, int32 [batch] (jaxseq.train.loop).
STEP_KEY = "step"


class Task(abc.ABC):
    """One model family: model, tokenizer, loss on a batch, prediction on a batch."""

    # The `model.family` value that selects this task (jaxseq.tasks.registry).
    family: ClassVar[str]
    # How evaluation scores its predictions: "asr" (WER/CER of text), "tts" (spectrogram
    # distortion and intelligibility) or "classify" (accuracy, F1, DER); jaxseq.evaluation
    # has one scorer per kind.
    metric_kind: ClassVar[str]
    # The validation metric that ranks checkpoints (lower is better) and is printed in training.
    best_metric: str = "wer"
    # The top-level parameter groups `train.init_from` provides (e.g. ("encoder",): a classifier
    # takes a CTC model's encoder and starts its own head); empty = all of them.
    pretrained_groups: tuple[str, ...] = ()
    # The longest input the model takes, in feature frames (a fixed encoder context); None:
    # any length. Evaluation leaves longer items out and reports them (jaxseq.evaluation.loop).
    max_input_frames: int | None = None

    cfg: Config
    n_mels: int
    model: nn.Module
    tokenizer: Any  # has .encode(text) -> int ids; saved in the workdir by save_tokenizer

    # ------------------------------------------------------------------ construction

    @classmethod
    @abc.abstractmethod
    def from_dataset(cls, cfg: Config, info: dict, workdir: Path | None = None) -> Task:
        """A fresh task for training on a prepared dataset (`info`: its dataset.json).

        A tokenizer learned from the data is trained on process 0 only and written into
        `workdir`; the other processes read it back from there (after a barrier), so that
        every process holds byte-identical tokenizer files.
        """

    @classmethod
    def from_config(cls, cfg: Config) -> Task:
        """A task from the config alone, with no data: the model whose steps `jaxseq compile`
        lowers for a topology. The default is `from_dataset` on what the config says of a
        dataset (`prepare.frontend`, `prepare.text`: a character vocabulary); a family whose
        tokenizer is learned from data builds one of the configured size instead."""
        info = {
            "frontend": frontend_settings(cfg.prepare.frontend),
            "text": dataclasses.asdict(cfg.prepare.text),
        }
        return cls.from_dataset(cfg, info)

    @classmethod
    @abc.abstractmethod
    def from_workdir(cls, cfg: Config, workdir: Path, n_mels: int) -> Task:
        """The task of a trained workdir (its tokenizer read back from it)."""

    @abc.abstractmethod
    def save_tokenizer(self, workdir: Path) -> None:
        """Writes what `from_workdir` needs to rebuild the tokenizer into `workdir`."""

    # ------------------------------------------------------------------ data

    def label_lengths(self, dataset_dir: str | Path, info: dict, split: str) -> np.ndarray | None:
        """Label ids per record of a split (length filter, label widths); None: the text
        lengths are the label lengths (one id per character)."""
        del dataset_dir, info, split
        return None

    def check_split(self, dataset_dir: str | Path, info: dict, split: str) -> None:
        """Raises JaxseqError naming the items of a split the model cannot handle (called before
        a split is evaluated); the default accepts every split."""
        del dataset_dir, info, split

    def dummy_batch(self, batch_size: int, frames: int) -> dict[str, np.ndarray]:
        """A host batch of the training layout, used for shapes at initialization (features
        float16, as the pipeline sends them; the train step widens them on device)."""
        return {
            "features": np.zeros((batch_size, frames, self.n_mels), np.float16),
            "feature_lengths": np.full((batch_size,), frames, np.int32),
            "labels": np.zeros((batch_size, self.cfg.data.max_label_length), np.int32),
            "label_lengths": np.ones((batch_size,), np.int32),
        }

    # ------------------------------------------------------------------ device functions

    @abc.abstractmethod
    def init_variables(self, rng: jax.Array, batch: Batch) -> dict[str, Any]:
        """Model variables (with logical partitioning metadata) for `batch`'s shapes."""

    @abc.abstractmethod
    def loss_fn(
        self, params: Any, batch: Batch, rng: jax.Array, train: bool
    ) -> tuple[jax.Array, Metrics]:
        """Scalar training loss and a dict of scalar metrics (sums and counts).

        The loss is a sum over the batch divided by `metrics["tokens"]`, so that microbatches
        combine exactly (gradient accumulation weights each by its token count). Rows with
        batch["valid"] == False (evaluation fillers) contribute nothing. Training batches also
        hold batch[STEP_KEY], the step being taken (int32 [batch], every row the same).
        """

    def eval_options(self, decoder: str | None = None, beam_size: int | None = None) -> dict:
        """The prediction options of `predict_fn`/`decode`, defaults filled in from
        the config and checked (hashable values: one compiled step per distinct set)."""
        del decoder, beam_size
        return {}

    @abc.abstractmethod
    def predict_fn(self, params: Any, batch: Batch, **options: Any) -> Any:
        """Device side: the predictions for a batch, a pytree whose leaves have the batch's rows
        as their leading axis (jitted by the caller; `options` from `eval_options`)."""

    def decode(self, outputs: Any, **options: Any) -> list[Any]:
        """Host side: `predict_fn` outputs (NumPy, some rows) → one prediction per row. The
        default splits the pytree into rows."""
        del options
        rows = len(jax.tree.leaves(outputs)[0])
        return [jax.tree.map(lambda x, i=i: x[i], outputs) for i in range(rows)]

    # ------------------------------------------------------------------ plots

    @property
    def num_plots(self) -> int:
        """How many items of the first evaluation batch the report plots (0: none)."""
        return 0

    def plot_batch(self, params: Any, batch: Batch, outputs: Any) -> Any:
        """Device side: the arrays the plots of a batch need beyond `outputs` (e.g. attention
        weights along the decoded hypotheses), leading axis the batch's rows; None: none."""
        del params, batch, outputs
        return None


class ASRTask(Task):
    """A speech recognizer: predictions decoded to text and scored by WER/CER."""

    metric_kind = "asr"
    # Whether the recognizer writes timestamp tokens (segment times decoded, not aligned).
    has_timestamps: bool = False

    def eval_options(self, decoder: str | None = None, beam_size: int | None = None) -> dict:
        """decoder and beam_size, by default the config's `eval` section's."""
        return {
            "decoder": decoder or self.cfg.eval.decoder,
            "beam_size": int(beam_size or self.cfg.eval.beam_size),
        }

    @abc.abstractmethod
    def predict_fn(self, params: Any, batch: Batch, decoder: str, beam_size: int) -> Any:
        """Device-side search for a batch (decoder and beam size are static; a decoder the
        family lacks is a JaxseqError naming eval.decoder)."""

    @abc.abstractmethod
    def decode(self, outputs: Any, decoder: str, beam_size: int) -> list[str]:
        """Host side: `predict_fn` outputs (as NumPy) → one hypothesis text per row."""
