"""Overlapping windows over a long recording, for chunked long-form decoding.

A window covers `chunk` samples and the next one starts `chunk - 2 * stride` later, so that
neighbours overlap by two strides (the method of transformers' ASR pipeline,
`chunk_length_s` with `stride_length_s`). Each window keeps only the outputs of its middle,
[start + left, end - right): `left` and `right` are `stride`, except 0 at the recording's
start and end. The kept parts tile the recording exactly, and every kept output has seen at
least `stride` samples of context on both sides (where the recording has them).
"""

from __future__ import annotations

from typing import NamedTuple

from jaxseq.errors import JaxseqError


class Window(NamedTuple):
    """Samples [start, end) of the recording; outputs of [start + left, end - right) are kept."""

    start: int
    end: int
    left: int
    right: int


def plan_windows(num_samples: int, chunk: int, stride: int) -> list[Window]:
    """The windows over `num_samples` samples: one window, no strides, when it fits in one.

    Args:
      num_samples: the recording's length.
      chunk: samples per window.
      stride: samples of context kept on each side of a window's middle (0 <= 2 * stride <
        chunk).
    """
    if not 0 <= 2 * stride < chunk:
        raise JaxseqError(
            f"chunk of {chunk} samples with strides of {stride}: the strides on both sides "
            "must leave part of the chunk (0 <= 2 * stride < chunk); lower eval.stride_seconds "
            "or raise eval.chunk_seconds"
        )
    step = chunk - 2 * stride
    windows = []
    for start in range(0, max(num_samples, 1), step):
        end = min(start + chunk, num_samples)
        last = start + chunk >= num_samples
        windows.append(Window(start, end, stride if start else 0, 0 if last else stride))
        if last:
            break
    return windows


def window_samples(
    chunk_seconds: float, stride_seconds: float, longest: int, rate: int, period: int
) -> tuple[int, int]:
    """(chunk, stride) in samples, each a whole number of `period` samples (a model's frame),
    so that windows start on frame boundaries. Zeros mean the defaults: `longest` samples
    (what the model trained on), and a sixth of the chunk on each side."""
    chunk = longest if chunk_seconds <= 0 else round(chunk_seconds * rate)
    chunk = max(chunk // period, 1) * period
    stride = chunk / 6 if stride_seconds <= 0 else stride_seconds * rate
    return chunk, int(stride // period) * period


def region_windows(regions: list[tuple[int, int]], chunk: int, stride: int) -> list[list[Window]]:
    """`plan_windows` over each region [start, end) of a recording, in recording samples."""
    return [
        [w._replace(start=w.start + a, end=w.end + a) for w in plan_windows(b - a, chunk, stride)]
        for a, b in regions
    ]
