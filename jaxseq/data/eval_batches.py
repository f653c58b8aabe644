"""Evaluation batches over a prepared split: every item once, in index order, each batch
padded to the bucket of its longest item (`jaxseq.data.pipeline.bucket_length`); every process
reads its own rows of each global batch."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from jaxseq.config import DataConfig
from jaxseq.data.pipeline import bucket_length, per_process
from jaxseq.data.reading import Batch, Split, collate, load_dataset_info
from jaxseq.data.waveform_batch import collate_waveforms, is_waveform_dataset

_EVAL_LABEL_MULTIPLE = 32  # eval labels longer than max_label_length pad to a multiple of this


def num_eval_batches(
    dataset_dir: str | Path,
    split: str,
    cfg: DataConfig,
    *,
    process_count: int = 1,
    max_frames: int | None = None,
) -> int:
    """How many batches `make_eval_batches` yields (the same on every process)."""
    per_process(cfg.eval_batch_size, 0, process_count, "eval_batch_size")
    if max_frames is None:
        info = load_dataset_info(dataset_dir, split)
        num = int(info["splits"][split]["num_utterances"])
    else:
        num = int(np.sum(Split(dataset_dir, split).index["num_frames"] <= max_frames))
    return math.ceil(num / cfg.eval_batch_size)


def too_long_items(dataset_dir: str | Path, split: str, max_frames: int) -> list[dict]:
    """The items of a prepared split longer than `max_frames` feature frames (those
    `make_eval_batches(max_frames=...)` leaves out), as {"id", "num_frames"} in index order."""
    index = Split(dataset_dir, split).index
    over = np.flatnonzero(index["num_frames"] > max_frames)
    return [{"id": str(index["ids"][i]), "num_frames": int(index["num_frames"][i])} for i in over]


def make_eval_batches(
    dataset_dir: str | Path,
    split: str,
    cfg: DataConfig,
    vocab,
    *,
    process_index: int = 0,
    process_count: int = 1,
    label_lengths: np.ndarray | None = None,
    max_frames: int | None = None,
) -> Iterator[tuple[Batch, list[str], list[str]]]:
    """Every item of a split once, in dataset order, as `(batch, ids, texts)` for this process.

    Nothing is dropped, except, when `max_frames` is given (a model's longest input), the
    items longer than it (`too_long_items` lists them for the caller to report). Global
    batches of cfg.eval_batch_size, process p holding rows `[p*b:(p+1)*b]`; each global batch
    is padded to `bucket_length` of its longest item (beyond the largest bucket: a multiple of
    it; never past `max_frames`) and its labels to cfg.max_label_length, or, when an item's
    label is longer, to the batch's longest label (in label ids: `vocab`'s encoding) rounded
    up to a multiple of 32. For that width every process reads all records of each global
    batch, unless the caller passes `label_lengths` (int [N], label ids per record, as in
    `make_train_iterator`); then each reads only its own rows.

    Yields:
      batch: the training fields (features as float32; a waveform dataset's as in
        `make_train_iterator`) with b = cfg.eval_batch_size //
        process_count, plus valid bool [b]; the final partial batch is filled with
        zero-length rows, valid False.
      ids, texts: lists of b strings for this process's rows ("" for fillers).
    """
    b = per_process(cfg.eval_batch_size, process_index, process_count, "eval_batch_size")
    data = Split(dataset_dir, split)
    frames = data.index["num_frames"]
    rows = np.arange(len(frames))  # the index positions evaluated, in order
    if max_frames is not None:
        rows = rows[frames <= max_frames]
    if label_lengths is not None:
        label_lengths = np.asarray(label_lengths, np.int32)
    encode_record = getattr(vocab, "encode_record", None)
    waveform = is_waveform_dataset(dataset_dir)
    num = len(rows)
    for start in range(0, num, cfg.eval_batch_size):
        stop = min(start + cfg.eval_batch_size, num)
        length = bucket_length(int(frames[rows[start:stop]].max()), cfg.buckets)
        if max_frames is not None:  # no padding past the model's input either
            length = min(length, max_frames)
        mine = slice(start + process_index * b, min(start + (process_index + 1) * b, stop))
        if label_lengths is not None:
            longest_label = int(label_lengths[rows[start:stop]].max())
            records = data.read(rows[mine])
        else:
            # Label ids, not characters (a byte-level BPE makes more ids than characters), of
            # the whole global batch: every process must pad to the same width.
            everyone = data.read(rows[start:stop])
            longest_label = max(
                len(encode_record(r) if encode_record else vocab.encode(r["text"]))
                for r in everyone
            )
            records = everyone[mine.start - start : mine.stop - start]
        label_width = cfg.max_label_length
        if longest_label > label_width:
            label_width = math.ceil(longest_label / _EVAL_LABEL_MULTIPLE) * _EVAL_LABEL_MULTIPLE
        if waveform:
            batch = collate_waveforms(
                records, b, length, label_width, vocab, cfg.normalize_waveform
            )
        else:
            batch = collate(records, b, length, label_width, data.n_mels, vocab)
            # float32: host-side scorers and plots read the reference features (TTS distortion)
            batch["features"] = batch["features"].astype(np.float32)
        batch["valid"] = np.arange(b) < len(records)
        ids = [r["id"] for r in records] + [""] * (b - len(records))
        texts = [r["text"] for r in records] + [""] * (b - len(records))
        yield batch, ids, texts
