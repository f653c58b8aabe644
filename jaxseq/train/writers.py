"""Metric output: metrics.jsonl and TensorBoard scalars, written by process 0 only."""

from __future__ import annotations

import json
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
            # Imported here: tensorboardX imports torch when it is installed (about 1 s), which
            # every process that imports jaxseq (synth and prepare workers too) would pay.
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))

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
