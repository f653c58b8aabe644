"""The small interface the one train loop and the one evaluation path call.

A task owns a model family's model, tokenizer, loss and evaluation; the loop never branches
on the family. (t5x's BaseModel: loss_fn / predict_batch / score_batch.) `ASRTask` adds the
decoding that speech recognition families share (jaxseq.evaluation.asr scores it by WER).
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh

from jaxseq.config import Config, TextConfig

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
# In training batches only: the train step being taken, int32 [batch] (jaxseq.train.loop).
STEP_KEY = "step"


class Task(abc.ABC):
    """One model family: model, tokenizer, loss on a batch, prediction on a batch."""

    cfg: Config
    n_mels: int
    model: nn.Module
    tokenizer: Any  # has .encode(text) -> int ids; saved in the workdir
    # The validation metric that ranks checkpoints (lower is better) and is printed in training.
    best_metric: str = "wer"
    # The top-level parameter groups `train.init_from` provides (e.g. ("encoder",): a classifier
    # takes a CTC model's encoder and starts its own head); empty = all of them.
    pretrained_groups: tuple[str, ...] = ()

    def label_lengths(self, dataset_dir: str | Path, info: dict, split: str) -> np.ndarray | None:
        """Label ids per record of a split, for the length filter; None: the text lengths."""
        del dataset_dir, info, split
        return None

    def dummy_batch(self, batch_size: int, frames: int) -> dict[str, np.ndarray]:
        """A host batch of the training layout, used for shapes at initialization."""
        return {
            "features": np.zeros((batch_size, frames, self.n_mels), np.float32),
            "feature_lengths": np.full((batch_size,), frames, np.int32),
            "labels": np.zeros((batch_size, self.cfg.data.max_label_length), np.int32),
            "label_lengths": np.ones((batch_size,), np.int32),
        }

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

    @abc.abstractmethod
    def evaluate_split(
        self, params: Any, mesh: Mesh, dataset_dir: str | Path, split: str, **options: Any
    ) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """Scores every item of a prepared split: (metrics holding `best_metric`, one record
        per item in dataset order, from all processes). A collective: call on every process.
        `options` are the family's evaluation options (e.g. decoder, beam_size)."""

    @abc.abstractmethod
    def write_report(
        self, metrics: dict[str, Any], records: list[dict], text: TextConfig, path: Path
    ) -> None:
        """Writes the JSON report at `path` (metrics + records) and a markdown one beside it
        (`text`: the workdir's text policy)."""

    @abc.abstractmethod
    def headline(self, metrics: dict[str, Any]) -> str:
        """One line summarizing `evaluate_split`'s metrics (printed by the CLI and the loop)."""

    @abc.abstractmethod
    def save_tokenizer(self, workdir: Path) -> None:
        """Writes what `load` needs to rebuild the tokenizer into `workdir`."""


class ASRTask(Task):
    """A speech recognizer: predictions decoded to text and scored by WER/CER."""

    @abc.abstractmethod
    def predict_fn(self, params: Any, batch: Batch, decoder: str, beam_size: int) -> Any:
        """Device-side prediction for a batch (jitted by the caller; decoder and beam size are
        static: "greedy", "beam" or "prefix_beam", as the family supports)."""

    @abc.abstractmethod
    def decode(self, outputs: Any, decoder: str, beam_size: int) -> list[str]:
        """Host-side: turns `predict_fn` outputs (as NumPy) into one hypothesis per row."""

    def evaluate_split(
        self, params: Any, mesh: Mesh, dataset_dir: str | Path, split: str, **options: Any
    ) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """WER/CER of the decoded split (options: decoder, beam_size; see
        jaxseq.evaluation.asr.evaluate_split)."""
        from jaxseq.evaluation.asr import evaluate_split

        return evaluate_split(self, params, mesh, self.cfg, dataset_dir, split, **options)

    def write_report(
        self, metrics: dict[str, Any], records: list[dict], text: TextConfig, path: Path
    ) -> None:
        from jaxseq.evaluation.asr import write_report

        write_report(metrics, records, text, path)

    def headline(self, metrics: dict[str, Any]) -> str:
        return (
            f"WER {metrics['wer']:.2%}  CER {metrics['cer']:.2%}  "
            f"real-time factor {metrics['real_time_factor']:.4f}"
        )
