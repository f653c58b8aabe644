"""Offline preparation (`jaxseq prepare`): audio + text from a source -> ArrayRecord shards.

Per item (jaxseq.data.prepare_item): normalize the transcript, load audio as mono at the
frontend's rate (resampling and downmixing as needed), compute log-mel features, convert its
labelled segments from seconds to frames, encode one record (jaxseq.data.records). With
`prepare.augment`, a training item's record is followed by those of its augmented copies, ids
`{id}~{kind}{n}` (waveform augmentation; ids, seeding and a YAML example in
jaxseq.data.prepare_augment). Bad items are skipped and listed with their reason, never silently
dropped (an augmented copy too, under its own id):

  bad_audio           missing, corrupt or empty audio (the loader's message)
  too_short           fewer samples than one STFT frame needs
  empty_text          the transcript is empty after normalization (a manifest item with a
                      label or segments may leave out "text": it needs no transcript)
  unknown_characters  the transcript uses characters outside `prepare.text.charset`
  too_long            longer than `prepare.max_seconds` (training splits only: evaluation
                      splits are never filtered by length)
  augment_failed      an augmented copy with babble noise and no other utterance that loads

`prepare.max_bad_fraction` counts the source's items only, not their copies.

Output in `out_dir`, per split: `prepare.num_shards` shards (`shard_name`), the split index
(`index_name`, rows in shard order then record order), `{split}.skipped.jsonl`, and the split's
summary merged into `dataset.json`, with the split's label inventories:

  labels          {name: {"items": kept items with that label, "example": the first one's id}}
                  (each label of a multi-label item counts)
  segment_labels  {name: {"frames": frames labelled with it, "example": the first item's id}}

both sorted by name and {} when the split has none, and

  augmentation    {"seed", "specs": the specs with their ranges filled in, "num_records":
                  augmented records kept}, or null for a split not augmented

Each finished shard has a sidecar `{shard}.meta.json` with its index rows and skipped items; a
rerun reuses every shard whose sidecar matches the current source and settings (augmentation
included), so an interrupted run resumes where it stopped.

Workers (a `spawn` pool: jax may already be imported in the parent) compute records for chunks
of items; the parent reads items from the source, writes shards in order and shows progress.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import re
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from itertools import islice
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from jaxseq.config import AugmentSpec, PrepareConfig
from jaxseq.config_checks import check_prepare_augment
from jaxseq.data.prepare_augment import Copy, augment_settings, plan_copies
from jaxseq.data.prepare_item import process_item
from jaxseq.data.records import index_name, shard_name, write_index
from jaxseq.data.sources import ManifestSource, TfdsSource, parse_source
from jaxseq.data.stress import CONDITIONS, is_stress_corpus
from jaxseq.errors import JaxseqError

log = logging.getLogger(__name__)

_SIDECAR_VERSION = 2  # 2: rows carry labels and segment frames
_NUM_EXAMPLES = 5  # skipped items quoted in a PrepareError


class PrepareError(JaxseqError, RuntimeError):
    """Preparation cannot go on; the message names the file or config key and what to do."""


# ---------------------------------------------------------------- per item (runs in workers)


def _process_chunk(
    items: list[dict[str, Any]], cfg: PrepareConfig, evaluation: bool
) -> list[list[dict[str, Any]]]:
    return [process_item(item, cfg, evaluation) for item in items]


# ---------------------------------------------------------------- shards


def _shard_ranges(num_items: int, num_shards: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) item ranges, one per shard, sizes differing by at most one."""
    bounds = np.linspace(0, num_items, num_shards + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _sidecar(out_dir: Path, shard: str) -> Path:
    return out_dir / f"{shard}.meta.json"


def _finished(out_dir: Path, shard: str, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """The sidecar of a finished shard made with the same fingerprint, else None."""
    path = _sidecar(out_dir, shard)
    if not (path.is_file() and (out_dir / shard).is_file()):
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return meta if meta.get("fingerprint") == fingerprint else None


def _write_json(path: Path, obj: Any) -> None:
    """Writes JSON atomically (temp file, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


class _ShardWriter:
    """Writes one shard to a temp name; `finish` renames it and writes its sidecar."""

    def __init__(self, out_dir: Path, shard: str, fingerprint: dict[str, Any]):
        from array_record.python.array_record_module import ArrayRecordWriter

        self.out_dir, self.shard, self.fingerprint = out_dir, shard, fingerprint
        self.tmp = out_dir / f"{shard}.tmp"
        self.writer = ArrayRecordWriter(str(self.tmp), "group_size:1")
        # [id, num_frames, text_length, seconds, label, {segment label: frames}]
        self.rows: list[list[Any]] = []
        self.skipped: list[dict[str, Any]] = []

    def add(self, result: dict[str, Any]) -> None:
        if "record" in result:
            self.writer.write(result["record"])
            keys = ("id", "num_frames", "text_length", "seconds", "label", "segment_frames")
            self.rows.append([result[k] for k in keys])
        else:
            self.skipped.append(result)

    def finish(self) -> dict[str, Any]:
        self.writer.close()
        os.replace(self.tmp, self.out_dir / self.shard)
        meta = {"fingerprint": self.fingerprint, "rows": self.rows, "skipped": self.skipped}
        _write_json(_sidecar(self.out_dir, self.shard), meta)
        return meta


def _run(
    source: ManifestSource | TfdsSource,
    todo: list[tuple[str, int, int, dict[str, Any]]],
    out_dir: Path,
    cfg: PrepareConfig,
    evaluation: bool,
    workers: int,
    bar: tqdm,
    plan: Callable[[int, str], list[Copy]],  # (item index, item id) -> the item's copies
) -> dict[str, dict[str, Any]]:
    """Prepares the shards in `todo` ([(name, start, stop, fingerprint)]); returns their sidecars.

    Items are read in the parent, given their augmented copies by `plan(index, item id)` and
    sent to the workers in chunks, a bounded number in flight; results come back in order, so
    each shard's records keep the source's order (an item's copies follow it).
    """
    num_items = sum(stop - start for _, start, stop, _ in todo)
    chunk = max(1, min(16, -(-num_items // (4 * workers))))
    tasks = []  # (shard position, start, stop, last chunk of its shard)
    for pos, (_, start, stop, _) in enumerate(todo):
        cuts = list(range(start, stop, chunk)) or [start]
        tasks += [(pos, a, min(a + chunk, stop), a == cuts[-1]) for a in cuts]
    pool: Executor | None = None
    if workers > 1 and len(tasks) > 1:
        n = min(workers, len(tasks))
        pool = ProcessPoolExecutor(n, mp_context=get_context("spawn"))

    def submit(task: tuple[int, int, int, bool]) -> Future:
        items = [source[i] for i in range(task[1], task[2])]
        items = [{**it, "copies": plan(i, it["id"])} for i, it in enumerate(items, task[1])]
        if pool is not None:
            return pool.submit(_process_chunk, items, cfg, evaluation)
        done: Future = Future()
        done.set_result(_process_chunk(items, cfg, evaluation))
        return done

    metas: dict[str, dict[str, Any]] = {}
    try:
        queue = iter(tasks)
        window = deque((t, submit(t)) for t in islice(queue, 2 * workers))
        writer = None
        while window:
            task, future = window.popleft()
            if (nxt := next(queue, None)) is not None:
                window.append((nxt, submit(nxt)))
            name, _, _, fingerprint = todo[task[0]]
            writer = writer or _ShardWriter(out_dir, name, fingerprint)
            for results in future.result():  # an item's, then its copies'
                for result in results:
                    writer.add(result)
                bar.update(1)
            if task[3]:
                metas[name] = writer.finish()
                writer = None
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return metas


# ---------------------------------------------------------------- summaries and dataset.json


def _frame_stats(num_frames: np.ndarray) -> dict[str, float]:
    if num_frames.size == 0:
        return {k: 0 for k in ("min", "max", "mean", "p50", "p90", "p99")}
    p50, p90, p99 = np.percentile(num_frames, [50, 90, 99])
    return {
        "min": int(num_frames.min()),
        "max": int(num_frames.max()),
        "mean": round(float(num_frames.mean()), 2),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
    }


def _label_inventories(rows: list[list[Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The `labels` and `segment_labels` of a split's summary (see the module docstring)."""
    labels: dict[str, dict[str, Any]] = {}
    segment_labels: dict[str, dict[str, Any]] = {}
    for item_id, _, _, _, label, segment_frames in rows:
        for name in [label] if isinstance(label, str) else label:
            if name:
                labels.setdefault(name, {"items": 0, "example": item_id})["items"] += 1
        for name, frames in segment_frames.items():
            segment_labels.setdefault(name, {"frames": 0, "example": item_id})["frames"] += frames
    return dict(sorted(labels.items())), dict(sorted(segment_labels.items()))


def _settings(cfg: PrepareConfig) -> dict[str, Any]:
    return {"frontend": dataclasses.asdict(cfg.frontend), "text": dataclasses.asdict(cfg.text)}


def _load_dataset_json(out_dir: Path, cfg: PrepareConfig) -> dict[str, Any]:
    """The existing dataset.json (or a fresh one); its settings must match `cfg`."""
    path = out_dir / "dataset.json"
    if not path.is_file():
        return {**_settings(cfg), "splits": {}}
    dataset = json.loads(path.read_text())
    for key, new in _settings(cfg).items():
        if dataset.get(key) != new:
            raise PrepareError(
                f"{path} was prepared with {key} settings {dataset.get(key)}, but this run uses "
                f"{new}. Every split of a dataset must share them: set prepare.{key}.* to match, "
                "or prepare into a new folder."
            )
    return dataset


def _bad_fraction_error(
    split: str, num_items: int, skipped: list[dict[str, Any]], where: Path, cfg: PrepareConfig
) -> PrepareError:
    counts = Counter(s["kind"] for s in skipped)
    fraction = len(skipped) / num_items
    lines = [
        f"split {split!r}: {len(skipped)} of {num_items} items ({fraction:.1%}) are bad, more "
        f"than prepare.max_bad_fraction={cfg.max_bad_fraction}.",
        "by reason: " + ", ".join(f"{k}: {n}" for k, n in counts.most_common()),
        "examples:",
        *(f"  {s['id']} ({s['audio']}): {s['reason']}" for s in skipped[:_NUM_EXAMPLES]),
        f"full list: {where}",
        "Fix the data, or accept it with a larger prepare.max_bad_fraction "
        f"(e.g. prepare.max_bad_fraction={min(1.0, round(fraction + 0.01, 2))}).",
    ]
    if counts.get("too_long"):
        lines.append("Longer training audio is kept with a larger prepare.max_seconds.")
    return PrepareError("\n".join(lines))


def prepare_split(
    source: str,
    out_dir: str | os.PathLike,
    split: str,
    cfg: PrepareConfig,
    *,
    evaluation: bool = False,
    num_workers: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Prepares one split from the source spec `source` (see jaxseq.data.sources) into `out_dir`.

    Args:
      source: `manifest:PATH.jsonl` or `tfds:NAME[/CONFIG]:SPLIT`.
      out_dir: the prepared-dataset folder (created if needed; other splits there are kept).
      split: the split's name in the dataset (`train`, `valid`, ...).
      cfg: frontend, text policy, filters, number of shards, augmentation.
      evaluation: an evaluation split: audio of any length is kept, and it is augmented only
        with `cfg.augment_evaluation`.
      num_workers: processes; None uses `cfg.num_workers`; 0 uses every CPU core.
      progress: show a progress bar.

    Returns:
      The split's summary, as stored under `dataset.json["splits"][split]`.

    Raises:
      PrepareError: more than `cfg.max_bad_fraction` of the items are bad (the skipped list is
        in `{split}.skipped.jsonl`), or `out_dir` holds a dataset with other frontend settings.
      SourceError: the source spec, manifest or TFDS dataset is invalid.
      ConfigError: `cfg.augment` holds an invalid spec.
    """
    check_prepare_augment(cfg)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", split):
        raise PrepareError(f"split name {split!r} must use only letters, digits, '_', '.', '-'")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset = _load_dataset_json(out_dir, cfg)  # fail early on a settings mismatch
    src = parse_source(source, cfg)
    num_items = len(src)
    workers = cfg.num_workers if num_workers is None else num_workers
    workers = workers or os.cpu_count() or 1
    num_shards = max(1, min(cfg.num_shards, num_items))
    shards = [shard_name(split, i, num_shards) for i in range(num_shards)]
    specs: Sequence[AugmentSpec] = cfg.augment if cfg.augment_evaluation or not evaluation else ()
    augment = augment_settings(specs, cfg.augment_seed) if specs else None
    plan = functools.partial(plan_copies, src, split=split, specs=specs, seed=cfg.augment_seed)

    metas: dict[str, dict[str, Any]] = {}
    todo = []
    for name, (start, stop) in zip(shards, _shard_ranges(num_items, num_shards), strict=True):
        fingerprint = {
            "version": _SIDECAR_VERSION,
            "source": src.fingerprint,
            "range": [start, stop],
            "evaluation": evaluation,
            "max_seconds": None if evaluation else cfg.max_seconds,
            **_settings(cfg),
            **({"augment": augment} if augment else {}),  # unaugmented: as before augmentation
        }
        meta = _finished(out_dir, name, fingerprint)
        if meta is not None:
            metas[name] = meta
        else:
            todo.append((name, start, stop, fingerprint))
    _remove_stale(out_dir, split, keep=set(shards))

    reused = num_items - sum(stop - start for _, start, stop, _ in todo)
    if metas:
        log.info("%s: reusing %d finished shards of %d", split, len(metas), num_shards)
    with tqdm(
        total=num_items, initial=reused, desc=f"prepare {split}", unit="utt", disable=not progress
    ) as bar:
        metas.update(_run(src, todo, out_dir, cfg, evaluation, workers, bar, plan))

    rows = [row for name in shards for row in metas[name]["rows"]]
    skipped = [s for name in shards for s in metas[name]["skipped"]]
    skipped_path = out_dir / f"{split}.skipped.jsonl"
    skipped_path.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in skipped))
    bad = [s for s in skipped if "copy_of" not in s]  # the source's items, not their copies
    if num_items and len(bad) / num_items > cfg.max_bad_fraction:
        raise _bad_fraction_error(split, num_items, bad, skipped_path, cfg)

    ids = [r[0] for r in rows]
    repeated = [i for i, n in Counter(ids).items() if n > 1]
    if repeated:
        raise PrepareError(f"{source}: ids must be unique within a split; repeated: {repeated[:5]}")
    num_frames = np.asarray([r[1] for r in rows], dtype=np.int64)
    write_index(out_dir / index_name(split), ids, num_frames, [r[2] for r in rows])
    labels, segment_labels = _label_inventories(rows)
    summary = {
        "source": source,
        "evaluation": evaluation,
        "shards": shards,
        "index": index_name(split),
        "num_utterances": len(rows),
        "hours": round(sum(r[3] for r in rows) / 3600.0, 6),
        "frames": _frame_stats(num_frames),
        "labels": labels,
        "segment_labels": segment_labels,
        "num_skipped": len(skipped),
        "skipped_by_reason": dict(Counter(s["kind"] for s in skipped).most_common()),
        "skipped": [{"id": s["id"], "audio": s["audio"], "reason": s["reason"]} for s in skipped],
        "augmentation": augment and {**augment, "num_records": len(rows) - num_items + len(bad)},
    }
    dataset = _load_dataset_json(out_dir, cfg)  # reread: another split may have landed since
    dataset["splits"][split] = summary
    _write_json(out_dir / "dataset.json", dataset)
    return summary


def _remove_stale(out_dir: Path, split: str, keep: set[str]) -> None:
    """Deletes this split's shards (and sidecars, temp files) from runs with other shard counts."""
    pattern = re.compile(rf"{re.escape(split)}-\d{{5}}-of-\d{{5}}\.array_record")
    for path in out_dir.iterdir():
        base = path.name.removesuffix(".meta.json").removesuffix(".tmp")
        if pattern.fullmatch(base) and base not in keep:
            path.unlink()


def prepare_corpus(
    corpus_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    cfg: PrepareConfig,
    *,
    num_workers: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Prepares a synthesized corpus (`jaxseq synth`): `{train,valid,test}/manifest.jsonl`, or
    for a stress corpus (synth.preset=stress) `{condition}/manifest.jsonl` per listening
    condition (`jaxseq.data.stress.CONDITIONS`).

    `train` is a training split; `valid`, `test` and every condition are evaluation splits
    (never length-filtered). A condition's source in dataset.json is its manifest's absolute
    path, where jaxseq.evaluation.robustness reads every utterance's voice, rate and pitch.

    Returns:
      {split: summary} for each split (as merged into `dataset.json`).
    """
    corpus_dir = Path(corpus_dir)
    if is_stress_corpus(corpus_dir):
        splits, what = CONDITIONS, "`jaxseq synth ... synth.preset=stress`"
        manifests = {s: (corpus_dir / s / "manifest.jsonl").resolve() for s in splits}
    else:
        splits, what = ("train", "valid", "test"), "`jaxseq synth`"
        manifests = {s: corpus_dir / s / "manifest.jsonl" for s in splits}
    missing = [str(p) for p in manifests.values() if not p.is_file()]
    if missing:
        raise PrepareError(
            f"corpus {corpus_dir} lacks {', '.join(missing)}; create it with {what} "
            "(or prepare your own manifests with `manifest:PATH.jsonl` sources)"
        )
    return {
        split: prepare_split(
            f"manifest:{manifest}",
            out_dir,
            split,
            cfg,
            evaluation=split != "train",
            num_workers=num_workers,
            progress=progress,
        )
        for split, manifest in manifests.items()
    }
