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

Two engines make the shards, with the same per-item transform (`process_item`), shard layout
(jaxseq.data.prepare_shards) and bytes; this module plans the split and writes its index,
skipped list and summary for both:

  local  (default) a `spawn` process pool (jax may already be imported in the parent): workers
         compute records for chunks of items; the parent reads items from the source, writes
         shards in order and shows progress.
  beam   an Apache Beam pipeline (jaxseq.data.prepare_beam) on any Beam runner: the
         DirectRunner here, Dataflow, Flink or Spark for preparation that outgrows one machine
         (`pip install jaxseq[beam]`; docs/data.md).
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

from jaxseq.config import AugmentSpec, PrepareConfig, frontend_settings
from jaxseq.config_checks import check_prepare_augment
from jaxseq.data.prepare_augment import Copy, augment_settings, plan_copies
from jaxseq.data.prepare_item import process_item
from jaxseq.data.prepare_shards import (
    SIDECAR_VERSION,
    PrepareError,
    ShardWriter,
    finished_shard,
    shard_ranges,
    write_json,
)
from jaxseq.data.records import index_name, shard_name, write_index
from jaxseq.data.sources import ManifestSource, TfdsSource, parse_source
from jaxseq.data.stress import CONDITIONS, is_stress_corpus

__all__ = ["RUNNERS", "PrepareError", "prepare_corpus", "prepare_split"]

log = logging.getLogger(__name__)

RUNNERS = ("local", "beam")  # the engines (`runner=` of prepare_split, `--runner`)
# A worker process's start (its imports and loading librosa's compiled kernels, about 3 CPU
# seconds) costs what preparing about a thousand 2-second items does (3 ms each).
ITEMS_PER_WORKER = 1000
_NUM_EXAMPLES = 5  # skipped items quoted in a PrepareError


# ---------------------------------------------------------------- per item (runs in workers)


def _process_chunk(
    items: list[dict[str, Any]], cfg: PrepareConfig, evaluation: bool
) -> list[list[dict[str, Any]]]:
    return [process_item(item, cfg, evaluation) for item in items]


# ---------------------------------------------------------------- the local engine


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
            writer = writer or ShardWriter(out_dir, name, fingerprint)
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
    return {"frontend": frontend_settings(cfg.frontend), "text": dataclasses.asdict(cfg.text)}


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
    runner: str = "local",
    beam_options: Sequence[str] = (),
) -> dict[str, Any]:
    """Prepares one split from the source spec `source` (see jaxseq.data.sources) into `out_dir`.

    Args:
      source: `manifest:PATH.jsonl` or `tfds:NAME[/CONFIG]:SPLIT`.
      out_dir: the prepared-dataset folder (created if needed; other splits there are kept).
      split: the split's name in the dataset (`train`, `valid`, ...).
      cfg: frontend, text policy, filters, number of shards, augmentation.
      evaluation: an evaluation split: audio of any length is kept, and it is augmented only
        with `cfg.augment_evaluation`.
      num_workers: processes; None uses `cfg.num_workers`; 0 uses every CPU core, and with
        the local engine at most one per `ITEMS_PER_WORKER` items (a split of fewer is
        prepared in this process). With `runner="beam"`, the DirectRunner's worker processes
        (unless `beam_options` say else).
      progress: show a progress bar (local engine; Beam runners log their own progress).
      runner: "local" (a process pool) or "beam" (an Apache Beam pipeline; same output).
      beam_options: Beam pipeline options, e.g. ["--runner=DataflowRunner", "--project=p"],
        after the defaults (`prepare_beam.default_options`); for `runner="beam"` only.

    Returns:
      The split's summary, as stored under `dataset.json["splits"][split]`.

    Raises:
      PrepareError: more than `cfg.max_bad_fraction` of the items are bad (the skipped list is
        in `{split}.skipped.jsonl`), or `out_dir` holds a dataset with other frontend settings.
      SourceError: the source spec, manifest or TFDS dataset is invalid.
      ConfigError: `cfg.augment` holds an invalid spec.
    """
    check_prepare_augment(cfg)
    if runner not in RUNNERS:
        raise PrepareError(f"unknown runner {runner!r}; choose one of {', '.join(RUNNERS)}")
    if beam_options and runner != "beam":
        raise PrepareError("Beam options were given, but the runner is not beam: add --runner beam")
    beam = _beam_engine() if runner == "beam" else None
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", split):
        raise PrepareError(f"split name {split!r} must use only letters, digits, '_', '.', '-'")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset = _load_dataset_json(out_dir, cfg)  # fail early on a settings mismatch
    src = beam.open_source(source, cfg) if beam else parse_source(source, cfg)
    num_items = len(src)
    workers = cfg.num_workers if num_workers is None else num_workers
    if not workers:  # every core; the local engine, at most one per ITEMS_PER_WORKER items
        workers = os.cpu_count() or 1
        workers = workers if beam else max(1, min(workers, num_items // ITEMS_PER_WORKER))
    num_shards = max(1, min(cfg.num_shards, num_items))
    shards = [shard_name(split, i, num_shards) for i in range(num_shards)]
    specs: Sequence[AugmentSpec] = cfg.augment if cfg.augment_evaluation or not evaluation else ()
    augment = augment_settings(specs, cfg.augment_seed) if specs else None

    metas: dict[str, dict[str, Any]] = {}
    todo = []
    for name, (start, stop) in zip(shards, shard_ranges(num_items, num_shards), strict=True):
        fingerprint = {
            "version": SIDECAR_VERSION,
            "source": src.fingerprint,
            "range": [start, stop],
            "evaluation": evaluation,
            "max_seconds": None if evaluation else cfg.max_seconds,
            **_settings(cfg),
            **({"augment": augment} if augment else {}),  # unaugmented: as before augmentation
        }
        meta = finished_shard(out_dir, name, fingerprint)
        if meta is not None:
            metas[name] = meta
        else:
            todo.append((name, start, stop, fingerprint))
    _remove_stale(out_dir, split, keep=set(shards))

    reused = num_items - sum(stop - start for _, start, stop, _ in todo)
    if metas:
        log.info("%s: reusing %d finished shards of %d", split, len(metas), num_shards)
    if beam and todo:
        options = [*beam.default_options(workers), *beam_options]
        metas.update(beam.run(src, todo, out_dir, cfg, evaluation, split, specs, options))
    elif not beam:
        plan = functools.partial(plan_copies, src, split=split, specs=specs, seed=cfg.augment_seed)
        with tqdm(
            total=num_items,
            initial=reused,
            desc=f"prepare {split}",
            unit="utt",
            disable=not progress,
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
    write_json(out_dir / "dataset.json", dataset)
    return summary


def _beam_engine():
    """jaxseq.data.prepare_beam, or a PrepareError saying how to install Apache Beam."""
    try:
        import apache_beam  # noqa: F401
    except ImportError:
        raise PrepareError(
            "--runner beam (runner='beam') needs Apache Beam, which is not installed: "
            "pip install 'jaxseq[beam]' (or use the default local runner)"
        ) from None
    from jaxseq.data import prepare_beam

    return prepare_beam


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
    runner: str = "local",
    beam_options: Sequence[str] = (),
) -> dict[str, Any]:
    """Prepares a synthesized corpus (`jaxseq synth`): `{train,valid,test}/manifest.jsonl`, or
    for a stress corpus (synth.preset=stress) `{condition}/manifest.jsonl` per listening
    condition (`jaxseq.data.stress.CONDITIONS`).

    `train` is a training split; `valid`, `test` and every condition are evaluation splits
    (never length-filtered). A condition's source in dataset.json is its manifest's absolute
    path, where jaxseq.evaluation.robustness reads every utterance's voice, rate and pitch.

    `num_workers`, `progress`, `runner` and `beam_options` are as for `prepare_split`.

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
            runner=runner,
            beam_options=beam_options,
        )
        for split, manifest in manifests.items()
    }
