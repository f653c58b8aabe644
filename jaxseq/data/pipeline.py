"""The grain input pipeline over a prepared dataset: length filter, bucketing, batching, resume.

Training batches follow one GLOBAL plan per epoch, computed from the split index alone (no
features are read to plan):

  kept items ──seeded augmentation factors (data.augment; a time stretch changes the lengths)
    ──seeded permutation (seed, epoch)──► drop the tail that does not fill a batch
    ──► pools of `sort_pool_batches * batch_size` items, each sorted by length
    ──► cut into global batches ──► seeded shuffle of the batch order
    ──► each global batch padded to the bucket of its longest item

With `data.pack_utterances` > 1 (seq2seq with timed targets) the plan's items are windows that
join consecutive utterances, one starting at each kept item (`jaxseq.data.packing`).

A waveform dataset (prepare.frontend.kind=waveform) goes through the same plan, its lengths
and `data.buckets` counted in samples; its batches hold the samples (`jaxseq.data.
waveform_batch`), normalized per utterance with `data.normalize_waveform`.

Every process computes the same plan and reads rows `[p*b:(p+1)*b]` of each global batch, so at
every step all processes share one padded shape (one global `jax.Array` per field) and read
disjoint items. The plan is a grain `MapDataset` indexed by step, reading and collating a
`.map`, optionally in worker processes (`mp_prefetch`). Since a step's batch depends on nothing
but the step, `TrainIterator`'s state is `{"step": n}` and a restored iterator yields the same
next batch, bit for bit, whatever the worker count.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

import grain
import numpy as np

from jaxseq.config import DataConfig
from jaxseq.data.feature_augment import EpochFactors, augment_enabled, augment_record, draw_factors
from jaxseq.data.packing import NO_RECORD, Windows, join_window, plan_windows
from jaxseq.data.reading import Batch, Split, collate, pad_batch
from jaxseq.data.reading import load_dataset_info as load_dataset_info  # re-exported
from jaxseq.data.waveform_batch import collate_waveforms, is_waveform_dataset

# Reasons a training item is dropped (the values of `dropped[i]["reason"]`).
EMPTY_TEXT = "empty_text"
TOO_MANY_FRAMES = "frames_over_max_bucket"
LABEL_TOO_LONG = "label_over_max_label_length"


def bucket_length(num_frames: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket >= `num_frames`; beyond the largest, a multiple of the largest.

    Training never goes beyond the largest bucket (such items are dropped); evaluation does.
    """
    for bucket in sorted(buckets):
        if num_frames <= bucket:
            return int(bucket)
    largest = max(buckets)
    return int(math.ceil(num_frames / largest) * largest)


def length_filter(
    index: dict[str, np.ndarray], cfg: DataConfig
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Splits a split index into kept record numbers and dropped items with their reasons.

    Args:
      index: from `read_index`: ids str [N], num_frames int32 [N], text_lengths int32 [N].
      cfg: `buckets` (largest = most frames) and `max_label_length`.

    Returns:
      kept: int64 [K] record numbers (positions in shard order) of the items kept.
      dropped: one `{"id", "reason", "num_frames", "text_length"}` per dropped item, in record
        order; `reason` is the first of EMPTY_TEXT, TOO_MANY_FRAMES, LABEL_TOO_LONG that applies.
    """
    frames, text_lengths = index["num_frames"], index["text_lengths"]
    reasons = np.full(len(frames), "", dtype=object)
    # Later assignments win, so assign in reverse priority.
    reasons[text_lengths > cfg.max_label_length] = LABEL_TOO_LONG
    reasons[frames > max(cfg.buckets)] = TOO_MANY_FRAMES
    reasons[text_lengths == 0] = EMPTY_TEXT
    dropped = [
        {
            "id": str(index["ids"][i]),
            "reason": str(reasons[i]),
            "num_frames": int(frames[i]),
            "text_length": int(text_lengths[i]),
        }
        for i in np.flatnonzero(reasons != "")
    ]
    return np.flatnonzero(reasons == "").astype(np.int64), dropped


def epoch_batches(
    lengths: np.ndarray, batch_size: int, sort_pool_batches: int, seed: int, epoch: int
) -> np.ndarray:
    """The global batch plan of one epoch: int64 [num_batches, batch_size] positions in `lengths`.

    Seeded permutation → tail that does not fill a batch dropped → pools of
    `sort_pool_batches * batch_size` sorted by length → batches → seeded batch order.
    """
    rng = np.random.default_rng([seed, epoch])
    num_batches = len(lengths) // batch_size
    order = rng.permutation(len(lengths))[: num_batches * batch_size]
    pool = max(1, sort_pool_batches) * batch_size
    pools = [
        p[np.argsort(lengths[p], kind="stable")]
        for p in np.split(order, range(pool, len(order), pool))
    ]
    batches = np.concatenate(pools).reshape(num_batches, batch_size)
    return batches[rng.permutation(num_batches)]


class _TrainPlan(grain.MapDataset):
    """Step → this process's slice of that step's global batch (infinite, random access).

    Element: {"records": int64 [b] record numbers, "length": padded frames T (a bucket)}; with
    `cfg.pack_utterances` > 1, "records" is int64 [b, P]: each row a window's record numbers,
    `NO_RECORD` after its last, and "gaps" int64 [b, P] the pause in frames before each.
    With `cfg.augment` on, also "warp" and "stretch": float64 factors shaped like "records"
    (`jaxseq.data.feature_augment`).
    """

    def __init__(
        self,
        kept: np.ndarray,
        num_frames: np.ndarray,
        label_lengths: np.ndarray,
        cfg: DataConfig,
        seed: int,
        process_index: int,
        per_process: int,
    ):
        super().__init__()
        self._kept = kept  # int64 [K]
        self._num_records = len(num_frames)
        self._frames = num_frames[kept]  # int32 [K]
        self._labels = label_lengths[kept]  # int32 [K]
        self._cfg = cfg
        self._seed = seed
        self._rows = slice(process_index * per_process, (process_index + 1) * per_process)
        self.batches_per_epoch = len(kept) // cfg.batch_size
        self._plans: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return sys.maxsize

    def __str__(self) -> str:
        return f"_TrainPlan(kept={len(self._kept)}, batches_per_epoch={self.batches_per_epoch})"

    def _plan(
        self, epoch: int
    ) -> tuple[np.ndarray, np.ndarray, Windows | None, EpochFactors | None]:
        """(batches int64 [num_batches, B] of item positions, frames [items], the `Windows`
        when utterances are joined, else None, and the kept items' augmentation factors, else
        None) for one epoch."""
        plan = self._plans.get(epoch)
        if plan is None:
            c = self._cfg
            frames, windows, factors = self._frames, None, None
            if augment_enabled(c.augment):
                factors = draw_factors(
                    c.augment, self._num_records, self._kept, frames, max(c.buckets), epoch
                )
                frames = factors.frames
                if factors.unstretched:
                    logging.info(
                        "epoch %d: %d training items left unstretched (data.augment."
                        "time_stretch would pass the largest bucket)",
                        epoch,
                        factors.unstretched,
                    )
            if c.pack_utterances > 1:
                windows = plan_windows(
                    frames,
                    self._labels,
                    c.pack_utterances,
                    max(c.buckets),
                    c.max_label_length,
                    self._seed,
                    epoch,
                )
                frames = windows.lengths
            batches = epoch_batches(frames, c.batch_size, c.sort_pool_batches, self._seed, epoch)
            plan = (batches, frames, windows, factors)
            self._plans = {epoch: plan, **{e: p for e, p in self._plans.items() if e == epoch - 1}}
        return plan

    def __getitem__(self, step):
        if isinstance(step, slice):
            return self.slice(step)
        epoch, i = divmod(int(step), self.batches_per_epoch)
        batches, frames, windows, factors = self._plan(epoch)
        batch = batches[i]  # [B] positions in kept (or windows)
        length = bucket_length(int(frames[batch].max()), self._cfg.buckets)
        mine = batch[self._rows]  # [b]
        items = mine  # [b] (or [b, P]) positions in kept
        element = {"records": self._kept[mine], "length": length}
        if windows is not None:
            slots = windows.records[mine]  # [b, P]
            items = np.maximum(slots, 0)
            element["records"] = np.where(slots == NO_RECORD, NO_RECORD, self._kept[items])
            element["gaps"] = windows.gaps[mine]  # [b, P]
        if factors is not None:
            element["warp"], element["stretch"] = factors.warp[items], factors.stretch[items]
        return element


class _ReadTrainBatch(grain.transforms.Map):
    """Plan element → host batch (module level so grain worker processes can unpickle it).
    `normalize`: None for log-mel records, else waveform records normalized or not."""

    def __init__(
        self, split: Split, vocab, rows: int, max_label_length: int, normalize: bool | None
    ):
        self._split, self._vocab = split, vocab
        self._rows, self._max_label_length = rows, max_label_length
        self._normalize = normalize

    def map(self, element: dict[str, Any]) -> Batch:
        numbers, length = element["records"], element["length"]
        if numbers.ndim == 1:
            records = self._read(numbers, element, slice(None))
            if self._normalize is not None:
                return collate_waveforms(
                    records,
                    self._rows,
                    length,
                    self._max_label_length,
                    self._vocab,
                    self._normalize,
                )
            return collate(
                records, self._rows, length, self._max_label_length, self._split.n_mels, self._vocab
            )
        windows = []  # rows of joined records (data.pack_utterances)
        for i, (row, gaps) in enumerate(zip(numbers, element["gaps"], strict=True)):
            used = row != NO_RECORD
            records = self._read(row[used], element, (i, used))
            total = sum(len(r["features"]) for r in records) + int(gaps.sum())
            windows.append(join_window(records, gaps[used], min(total, length), self._vocab))
        return pad_batch(windows, self._rows, length, self._max_label_length, self._split.n_mels)

    def _read(self, numbers: np.ndarray, element: dict[str, Any], where: Any) -> list[dict]:
        """The records `numbers` [n], augmented by the element's factors at `where`."""
        records = self._split.read(numbers)
        if "warp" not in element:
            return records
        factors = zip(element["warp"][where], element["stretch"][where], strict=True)
        return [augment_record(r, w, s) for r, (w, s) in zip(records, factors, strict=True)]


def per_process(global_size: int, process_index: int, process_count: int, what: str) -> int:
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    if global_size % process_count:
        raise ValueError(
            f"data.{what}={global_size} is not divisible by the {process_count} processes"
        )
    return global_size // process_count


def read_threads(cfg: DataConfig) -> int:
    """Threads reading training batches per reading process: `cfg.read_threads`, or when 0
    the cores shared among the `cfg.worker_count` workers (or the main process), 1 to 8."""
    if cfg.read_threads < 0:
        raise ValueError(f"data.read_threads={cfg.read_threads} must be >= 0 (0 = from the cores)")
    cores = (os.cpu_count() or 1) // max(1, cfg.worker_count)
    return cfg.read_threads or min(8, max(1, cores))  # beyond 8 the GIL gains nothing


def _mark_absl_flags_parsed() -> None:
    """grain's worker processes read absl flags; outside an absl app they are unparsed."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_train_iterator(
    dataset_dir: str | Path,
    split: str,
    cfg: DataConfig,
    vocab,
    *,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    label_lengths: np.ndarray | None = None,
) -> TrainIterator:
    """An infinite, checkpointable iterator of this process's training batches.

    Args:
      dataset_dir: a folder written by `jaxseq prepare`.
      split: e.g. "train".
      cfg: batch_size (global), buckets, max_label_length, sort_pool_batches, worker_count,
        worker_buffer_size, read_threads, pack_utterances, augment (its own seed). (`cfg.
        shuffle_seed` is not read: pass it as `seed`.)
      vocab: has `encode(text) -> int32 [n]`, one id per character (the length filter uses the
        index's text lengths).
      seed: shuffle seed; the epoch is folded in, so each epoch has a different order.
      process_index, process_count: this process reads rows `[p*b:(p+1)*b]` of every global batch.
      label_lengths: int [N] label ids per record, for the length filter; default: the index's
        text lengths, exact for character vocabularies (subword tokenizers pass their counts).

    Returns:
      A `TrainIterator`, a grain `DatasetIterator` (get_state/set_state, checkpointable with
      `grain.checkpoint.CheckpointSave/Restore`) of dicts, b = cfg.batch_size // process_count,
      T a bucket of cfg.buckets (the same for all processes at a step):
        features float16 [b, T, n_mels] (the records' width, zero padded; the train step
        widens them on device), or for a waveform dataset float32 [b, T] samples (normalized
        with cfg.normalize_waveform), feature_lengths int32 [b],
        labels int32 [b, cfg.max_label_length] (zero padded), label_lengths int32 [b].
      It also holds `dropped` (every item the length filter dropped, with its reason),
      `num_kept` and `batches_per_epoch`: see `TrainIterator`.
    """
    b = per_process(cfg.batch_size, process_index, process_count, "batch_size")
    data = Split(dataset_dir, split)
    index = data.index
    waveform = is_waveform_dataset(dataset_dir)
    if waveform and augment_enabled(cfg.augment):
        raise ValueError(
            f"{data.name} holds waveforms, but data.augment warps log-mel features: leave "
            "data.augment.vtlp and data.augment.time_stretch at [1.0, 1.0] (augment waveforms "
            "with prepare.augment)"
        )
    if label_lengths is not None:
        index = {**index, "text_lengths": np.asarray(label_lengths, np.int32)}
    kept, dropped = length_filter(index, cfg)
    _log_dropped(data.name, len(kept), dropped)
    if len(kept) < cfg.batch_size:
        raise ValueError(
            f"{data.name}: only {len(kept)} items pass the length filter, fewer than one global "
            f"batch of {cfg.batch_size}; lower data.batch_size or check data.buckets"
        )
    if cfg.pack_utterances > 1 and not hasattr(vocab, "encode_window"):
        raise ValueError(
            f"data.pack_utterances={cfg.pack_utterances} joins utterances into windows with timed "
            "targets, which this model's tokenizer cannot write: use model.family=seq2seq with "
            "model.timestamps=true, or data.pack_utterances=1"
        )
    plan = _TrainPlan(
        kept, data.index["num_frames"], index["text_lengths"], cfg, seed, process_index, b
    )
    normalize = cfg.normalize_waveform if waveform else None
    read = _ReadTrainBatch(data, vocab, b, cfg.max_label_length, normalize)
    return TrainIterator(plan, read, cfg, dropped)


class TrainIterator(grain.DatasetIterator):
    """The training batches from a step on; its state is just that step.

    Each step's batch is a pure function of (index, cfg, seed, step), so `{"step": n}` is the
    whole state: restoring it rebuilds the grain pipeline from step n (`plan[n:]` → read →
    optional `mp_prefetch`), which also resumes exactly with a different `worker_count`, or a
    different process count (the global plan is the same). The pipeline (and its worker
    processes) is built lazily, at the first batch or `start_prefetch`.

    Attributes:
      dropped: every item the length filter dropped: {"id", "reason", "num_frames",
        "text_length"} (see `length_filter`).
      num_kept: items kept; batches_per_epoch: global batches per epoch (the tail is dropped).
    """

    def __init__(self, plan: _TrainPlan, read: _ReadTrainBatch, cfg: DataConfig, dropped):
        super().__init__()
        self._plan, self._read, self._cfg = plan, read, cfg
        self.dropped: list[dict[str, Any]] = dropped
        self.num_kept = len(plan._kept)
        self.batches_per_epoch = plan.batches_per_epoch
        self._step = 0
        self._batches: grain.DatasetIterator | None = None

    def _pipeline(self) -> grain.DatasetIterator:
        if self._batches is None:
            c = self._cfg
            threads = read_threads(c)
            ds = (
                self._plan[self._step :]
                .map(self._read)
                .to_iter_dataset(
                    grain.ReadOptions(
                        num_threads=threads,
                        # a thread reads one batch at a time: buffer at least one per thread
                        prefetch_buffer_size=max(2, threads, c.worker_buffer_size),
                    )
                )
            )
            if c.worker_count > 0:
                _mark_absl_flags_parsed()
                ds = ds.mp_prefetch(
                    grain.MultiprocessingOptions(
                        num_workers=c.worker_count, per_worker_buffer_size=c.worker_buffer_size
                    )
                )
            self._batches = iter(ds)
        return self._batches

    def __next__(self) -> Batch:
        self._assert_not_closed()
        batch = next(self._pipeline())
        self._step += 1
        # Worker processes hand back grain's shared-memory arrays: copy them to plain ndarrays so
        # the shared memory is released now (and not noisily at interpreter exit).
        return {k: v if type(v) is np.ndarray else np.array(v) for k, v in batch.items()}

    def get_state(self) -> dict[str, Any]:
        return {"step": self._step}

    def set_state(self, state: dict[str, Any]) -> None:
        if self._batches is not None:
            self._batches.close()
            self._batches = None
        self._step = int(state["step"])

    def start_prefetch(self) -> None:
        self._pipeline().start_prefetch()

    def close(self) -> None:
        if self._batches is not None:
            self._batches.close()
            self._batches = None  # freed now, not at interpreter exit (grain's __del__ is noisy)
        super().close()

    def __str__(self) -> str:
        return f"TrainIterator(step={self._step}, {self._plan})"


def _log_dropped(name: str, num_kept: int, dropped: list[dict[str, Any]]) -> None:
    logging.info("%s: %d items kept for training, %d dropped", name, num_kept, len(dropped))
    for reason in (EMPTY_TEXT, TOO_MANY_FRAMES, LABEL_TOO_LONG):
        ids = [d["id"] for d in dropped if d["reason"] == reason]
        if ids:
            logging.warning(
                "%s: dropped %d training items (%s), e.g. %s", name, len(ids), reason, ids[:5]
            )
