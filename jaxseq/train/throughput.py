"""Throughput accounting of the train loop: model FLOPs, TFLOP/s and MFU, tokens and audio per
second, and the share of time spent waiting for data (as MaxText and levanter log them)."""

from __future__ import annotations

from typing import Any

import jax

from jaxseq.models import splash


def compiled_flops(compiled: Any) -> float:
    """FLOPs one device runs in a compiled, partitioned program: XLA's cost analysis, plus the
    matmuls of the TPU splash attention kernels, which it does not see inside
    (`splash.kernel_flops`; the HLO text is rendered for TPU programs only)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get("flops", 0.0))
    shardings = jax.tree.leaves(compiled.input_shardings)
    on_tpu = bool(shardings) and next(iter(shardings[0].device_set)).platform == "tpu"
    return flops + (splash.kernel_flops(compiled.as_text()) if on_tpu else 0.0)


def device_flops(jitted: Any, *args: Any) -> float:
    """FLOPs one device runs in a call of `jitted` on `args` (`compiled_flops`). After a call
    with arguments of the same shapes and shardings, lowering and compiling hit jit's caches
    (nothing is compiled again)."""
    return compiled_flops(jitted.lower(*args).compile())


class Throughput:
    """Sums a logging window's FLOPs (over all devices) and data-wait time; `scalars` turns
    them into rates."""

    def __init__(self, num_devices: int, peak: float | None, hop_seconds: float):
        self.num_devices, self.peak, self.hop_seconds = num_devices, peak, hop_seconds
        self.reset()

    def reset(self) -> None:
        self.flops = 0.0
        self.steps = 0
        self.data_seconds = 0.0

    def add(self, flops: float, data_seconds: float) -> None:
        """One step: its compiled FLOPs and the seconds the loop waited for its batch."""
        self.flops += flops
        self.steps += 1
        self.data_seconds += data_seconds

    def scalars(self, metrics: dict[str, float], seconds: float) -> dict[str, float]:
        """Rates over the window of `seconds`: flops_per_step, tflops_per_second, mfu (chips
        with a known peak), tokens_per_second (tasks that count tokens),
        audio_seconds_per_second (from the step's `audio_frames`) and data_wait (a share)."""
        seconds = max(seconds, 1e-9)
        tflops = self.flops / seconds / 1e12
        out = {
            "flops_per_step": self.flops / max(self.steps, 1),
            "tflops_per_second": tflops,
            "audio_seconds_per_second": metrics["audio_frames"] * self.hop_seconds / seconds,
            "data_wait": self.data_seconds / seconds,
        }
        if self.peak is not None:
            out["mfu"] = tflops / (self.peak * self.num_devices)
        if "tokens" in metrics:
            out["tokens_per_second"] = metrics["tokens"] / seconds
        return out
