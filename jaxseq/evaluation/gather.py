"""Collecting per-process evaluation records on every process, in dataset order."""

from __future__ import annotations

import json

import numpy as np
from jax.experimental import multihost_utils


def gather_records(records: list[dict[str, str]], rows_per_batch: list[int]) -> list[dict]:
    """Every process's records in dataset order (process p holds the p-th slice of each global
    batch, `rows_per_batch[i]` records of batch i). A collective: call on every process."""
    mine = np.frombuffer(json.dumps([records, rows_per_batch]).encode(), np.uint8)
    sizes = multihost_utils.process_allgather(np.array([mine.size], np.int64))[:, 0]
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: mine.size] = mine
    everyone = multihost_utils.process_allgather(padded)  # uint8 [processes, max size]
    per_batch: list[list[dict]] = []  # batch i: process 0's records, then process 1's, ...
    for data, size in zip(everyone, sizes, strict=True):
        recs, rows = json.loads(data[:size].tobytes())
        per_batch += [[] for _ in range(len(rows) - len(per_batch))]
        starts = np.cumsum([0, *rows])
        for i, n in enumerate(rows):
            per_batch[i] += recs[starts[i] : starts[i] + n]
    return [r for batch in per_batch for r in batch]
