"""Metric output: metrics.jsonl and TensorBoard scalars, written by process 0 only."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax


class MetricWriter:
    """Appends `{"step", "split", **scalars}` lines to metrics.jsonl and TensorBoard scalars."""

    def __init__(self, workdir: str | Path):
        self.enabled = jax.process_index() == 0
        self.path = Path(workdir) / "metrics.jsonl"
        self._tb = None
        if self.enabled:
            self._tb = _summary_writer(Path(workdir) / "tensorboard")

    def write(self, step: int, split: str, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        scalars = {k: float(v) for k, v in scalars.items()}
        with self.path.open("a") as f:
            f.write(
                json.dumps({"step": step, "split": split, "time": time.time(), **scalars}) + "\n"
            )
        for name, value in scalars.items():
            self._tb.add_scalar(f"{split}/{name}", value, step)
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _summary_writer(logdir: Path):
    """tensorboardX's SummaryWriter, imported without torch. tensorboardX imports torch, when it
    is installed, only to accept torch tensors as values (1.4-2 s of every training process's
    start); jaxseq writes Python floats. A torch that is already imported is left as it is."""
    absent = "torch" not in sys.modules
    if absent:
        sys.modules["torch"] = None  # `import torch` raises ImportError, which it catches
    try:
        from tensorboardX import SummaryWriter
    finally:
        if absent:
            del sys.modules["torch"]
    return SummaryWriter(str(logdir))
