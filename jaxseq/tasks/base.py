"""The small interface the one train loop and the one evaluation path call.

A task owns a model family's model, tokenizer, loss and decoding; the loop never branches
on the family. (t5x's BaseModel: loss_fn / predict_batch / score_batch.)
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from jaxseq.config import Config

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


class Task(abc.ABC):
    """One model family: model, tokenizer, loss on a batch, prediction on a batch."""

    cfg: Config
    n_mels: int
    model: nn.Module
    tokenizer: Any  # has .encode(text) -> int ids; saved in the workdir

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
        batch["valid"] == False (evaluation fillers) contribute nothing.
        """

    @abc.abstractmethod
    def predict_fn(self, params: Any, batch: Batch, decoder: str, beam_size: int) -> Any:
        """Device-side prediction for a batch (jitted by the caller; decoder and beam size are
        static: "greedy", "beam" or "prefix_beam", as the family supports)."""

    @abc.abstractmethod
    def decode(self, outputs: Any, decoder: str, beam_size: int) -> list[str]:
        """Host-side: turns `predict_fn` outputs (as NumPy) into one hypothesis per row."""

    @abc.abstractmethod
    def save_tokenizer(self, workdir: Path) -> None:
        """Writes what `load` needs to rebuild the tokenizer into `workdir`."""
