"""A split for evaluation: this process's batches in, every process's records back out."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from jaxseq.config import DataConfig
from jaxseq.data.eval_batches import make_eval_batches, num_eval_batches


def eval_batches(
    dataset_dir: str | Path,
    split: str,
    cfg: DataConfig,
    vocab: Any,
    desc: str,
    label_lengths: np.ndarray | None = None,
    max_frames: int | None = None,
) -> Iterator[tuple[dict[str, np.ndarray], list[str], list[str]]]:
    """`make_eval_batches` for this process, with a progress bar on process 0."""
    p, count = jax.process_index(), jax.process_count()
    batches = make_eval_batches(
        dataset_dir,
        split,
        cfg,
        vocab,
        process_index=p,
        process_count=count,
        label_lengths=label_lengths,
        max_frames=max_frames,
    )
    return tqdm(
        batches,
        total=num_eval_batches(dataset_dir, split, cfg, process_count=count, max_frames=max_frames),
        desc=f"{desc} {split}",
        disable=p != 0,
        leave=False,
        dynamic_ncols=True,
    )


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
