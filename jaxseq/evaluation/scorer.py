"""What the evaluation loop asks of a metric kind's scorer (asr, tts, classify)."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jaxseq.config import FrontendConfig, TextConfig
from jaxseq.tasks.base import Task


@dataclass(frozen=True)
class SplitContext:
    """The split being scored: where it is, its features and text policy, the options."""

    dataset: str
    split: str
    frontend: FrontendConfig
    text: TextConfig
    options: dict[str, Any]


class Scorer(abc.ABC):
    """Host-side scoring of one metric kind; the loop calls these in this order."""

    def start(self, task: Task, context: SplitContext) -> None:
        """Before the first batch: load and check what scoring needs, so that a bad setting
        fails before any prediction (a collective may run here). Default: nothing."""
        del task, context

    @abc.abstractmethod
    def records(
        self,
        task: Task,
        context: SplitContext,
        predictions: list[Any],
        batch: dict[str, np.ndarray],
        ids: list[str],
        texts: list[str],
    ) -> list[dict[str, Any]]:
        """One JSON-able record per item of a batch: `predictions` (the task's `decode`), and
        this process's valid rows of the host batch, their ids and transcripts."""

    def plot(
        self,
        task: Task,
        report_dir: Path,
        context: SplitContext,
        records: list[dict[str, Any]],
        predictions: list[Any],
        batch: dict[str, np.ndarray],
        extras: Any,
    ) -> None:
        """Writes the plots of the first items (process 0; `extras`: `task.plot_batch`'s rows)
        under report_dir/plots/ and names them in their records ("plots"). Default: none."""
        del task, report_dir, context, records, predictions, batch, extras

    def finish(
        self, task: Task, records: list[dict[str, Any]], context: SplitContext
    ) -> list[dict[str, Any]]:
        """This process's records once every batch is done, before they are gathered (it may
        run collectives in lockstep). Default: unchanged."""
        del task, context
        return records

    @abc.abstractmethod
    def score(
        self,
        task: Task,
        records: list[dict[str, Any]],
        context: SplitContext,
        *,
        seconds: float,
        input_seconds: float,
    ) -> dict[str, Any]:
        """The split's metrics from every process's records; `seconds`: prediction time
        summed over the processes (compilation excluded), `input_seconds`: the audio in."""

    @abc.abstractmethod
    def headline(self, task: Task, metrics: dict[str, Any]) -> str:
        """One line of the metrics (printed by the CLI and the train loop)."""

    @abc.abstractmethod
    def write_report(
        self, metrics: dict[str, Any], records: list[dict[str, Any]], text: TextConfig, path: Path
    ) -> None:
        """The JSON report at `path` (metrics + records) and a markdown one beside it."""
