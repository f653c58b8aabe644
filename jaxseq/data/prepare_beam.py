"""The Apache Beam engine of `jaxseq prepare` (`--runner beam`): the same per-item transform
(jaxseq.data.prepare_item.process_item), the same shards, bytes, sidecars, index and
dataset.json as the local engine, on any Beam runner (the DirectRunner here; Dataflow, Flink or
Spark for corpora that outgrow one machine). Needs `pip install jaxseq[beam]`.

The pipeline, for the shards a run still has to make (finished ones are reused, as locally):

  work units          (shard, first item, stop) index ranges: a manifest is cut by
                      `scan_manifest` (the driver streams it once; each unit reads its own byte
                      range, so no worker holds the manifest), a TFDS split into runs of items
  | Reshuffle         spread the units over the workers
  | ParDo(process)    read the unit's items, plan their augmented copies (`plan_copies`, the
                      same seeds as locally), `process_item`; every result keyed by its shard
                      and (item index, position among the item's results); records to the main
                      output, skipped items (with their reasons) to the tagged output "skipped"
  | CoGroupByKey      per shard: its records and its skipped items
  | ParDo(write)      sort by key (the source's order, an item's copies after it), write the
                      shard to `{shard}.tmp`, rename it into place, write its sidecar
                      (`ShardWriter`, shared with the local engine)

The driver then reads the sidecars back; jaxseq.data.prepare writes the index, the skipped
list and the summary from them for both engines. A shard is renamed into place only once whole,
and its sidecar only after it: a failed or retried worker never leaves a half shard, and a rerun
reuses every finished shard. A shard's records are sorted in one worker's memory: choose
`prepare.num_shards` so that a shard fits (docs/data.md).

Every worker must see the manifest, the audio and `out_dir` at the same paths (one machine, or
a filesystem that every worker mounts), as everywhere in jaxseq.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from jaxseq.config import AugmentSpec, PrepareConfig
from jaxseq.data.manifest_ranges import ManifestRanges, scan_manifest
from jaxseq.data.prepare_augment import plan_copies
from jaxseq.data.prepare_item import process_item
from jaxseq.data.prepare_shards import PrepareError, ShardWriter, finished_shard
from jaxseq.data.sources import TfdsSource, parse_source

SKIPPED = "skipped"  # the tagged output of skipped items
ITEMS_PER_UNIT = 64  # items of a TFDS split per work unit (a manifest's: its ranges)

# (shard name, first item, stop item, fingerprint) of a shard to make, as jaxseq.data.prepare
# plans them.
Todo = tuple[str, int, int, dict[str, Any]]


def default_options(workers: int) -> list[str]:
    """The pipeline options before the user's: the DirectRunner with `workers` processes."""
    return [
        "--runner=DirectRunner",
        "--direct_running_mode=multi_processing",
        f"--direct_num_workers={workers}",
    ]


def open_source(spec: str, cfg: PrepareConfig) -> ManifestRanges | TfdsSource:
    """The source named by `spec`, for the driver: a manifest is scanned (streamed once, never
    held in memory), a TFDS split opened for random access.

    Raises:
      SourceError: as jaxseq.data.sources.parse_source.
    """
    scheme, _, rest = spec.partition(":")
    if scheme == "manifest" and rest:
        return scan_manifest(rest)
    return parse_source(spec, cfg)


def _units(src: ManifestRanges | TfdsSource, todo: Sequence[Todo]) -> list[tuple[int, int, int]]:
    """(shard position in `todo`, first item, stop) work units: each shard's items cut at the
    manifest's range starts (one byte range read per unit), or every ITEMS_PER_UNIT items."""
    units = []
    for pos, (_, start, stop, _) in enumerate(todo):
        if isinstance(src, ManifestRanges):
            cuts = [b for b in src.bounds() if start < b < stop]
        else:
            cuts = list(
                range(start - start % ITEMS_PER_UNIT + ITEMS_PER_UNIT, stop, ITEMS_PER_UNIT)
            )
        edges = [start, *cuts, stop]
        units += [(pos, a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if a < b]
    return units


def _items(src: ManifestRanges | TfdsSource, start: int, stop: int):
    """(index, item) for the items [start, stop) of the source."""
    if isinstance(src, ManifestRanges):
        return src.items(start, stop)
    return ((i, src[i]) for i in range(start, stop))


class _Process(beam.DoFn):
    """A work unit -> its items' results, keyed (shard position, (item index, position among
    the item's results)): records on the main output, skipped items on SKIPPED."""

    def __init__(
        self,
        src: ManifestRanges | tuple[str, str],  # a manifest, or a TFDS (name, split)
        cfg: PrepareConfig,
        evaluation: bool,
        split: str,
        specs: Sequence[AugmentSpec],
    ):
        self.src_spec, self.cfg, self.evaluation = src, cfg, evaluation
        self.split, self.specs = split, tuple(specs)
        self.items = beam.metrics.Metrics.counter("prepare", "items")
        self.records = beam.metrics.Metrics.counter("prepare", "records")
        self.skipped = beam.metrics.Metrics.counter("prepare", "skipped")

    def setup(self) -> None:
        if isinstance(self.src_spec, ManifestRanges):
            self.src = self.src_spec
        else:
            self.src = TfdsSource(*self.src_spec, self.cfg)
        self.plan = functools.partial(
            plan_copies, self.src, split=self.split, specs=self.specs, seed=self.cfg.augment_seed
        )

    def process(self, unit: tuple[int, int, int]) -> Iterator[Any]:
        pos, start, stop = unit
        for index, item in _items(self.src, start, stop):
            item = {**item, "copies": self.plan(index, item["id"])}
            self.items.inc()
            for k, result in enumerate(process_item(item, self.cfg, self.evaluation)):
                keyed = (pos, ((index, k), result))
                if "record" in result:
                    self.records.inc()
                    yield keyed
                else:
                    self.skipped.inc()
                    yield beam.pvalue.TaggedOutput(SKIPPED, keyed)


class _Write(beam.DoFn):
    """(shard position, {"records": [...], SKIPPED: [...]}) -> the shard and its sidecar."""

    def __init__(self, out_dir: str, todo: Sequence[Todo]):
        self.out_dir, self.todo = out_dir, [(name, fp) for name, _, _, fp in todo]

    def process(self, element: tuple[int, dict[str, list]]) -> Iterator[str]:
        pos, grouped = element
        name, fingerprint = self.todo[pos]
        results = sorted([*grouped["records"], *grouped[SKIPPED]], key=lambda kr: kr[0])
        _write_shard(Path(self.out_dir), name, fingerprint, (r for _, r in results))
        yield name


def _write_shard(out_dir: Path, name: str, fingerprint: dict[str, Any], results) -> None:
    """Writes one shard from its results in order (temp name, rename, sidecar); on a failure
    deletes the temp file and re-raises."""
    writer = ShardWriter(out_dir, name, fingerprint)
    try:
        for result in results:
            writer.add(result)
        writer.finish()
    except BaseException:
        writer.abort()
        raise


def run(
    src: ManifestRanges | TfdsSource,
    todo: Sequence[Todo],
    out_dir: Path,
    cfg: PrepareConfig,
    evaluation: bool,
    split: str,
    specs: Sequence[AugmentSpec],
    options: Sequence[str],
) -> dict[str, dict[str, Any]]:
    """Makes the shards in `todo` with one Beam pipeline; returns their sidecars.

    Args:
      src: from `open_source`; todo: the shards to make (jaxseq.data.prepare plans them).
      specs: the split's augmentation specs (empty: none).
      options: Beam pipeline options, e.g. `default_options(2)` or
        ["--runner=DataflowRunner", "--project=p", "--region=r", "--temp_location=gs://b/t"].

    Raises:
      PrepareError: the pipeline finished but a shard has no sidecar.
      Whatever the pipeline raises (a worker's error, with its traceback).
    """
    for name, start, stop, fingerprint in todo:
        (out_dir / f"{name}.tmp").unlink(missing_ok=True)  # left by a killed worker
        if start == stop:  # an empty split's one shard: no work unit reaches it
            _write_shard(out_dir, name, fingerprint, ())
    units = _units(src, todo)
    worker_src = src if isinstance(src, ManifestRanges) else (src.name, src.split)
    if units:
        with beam.Pipeline(options=PipelineOptions(list(options))) as p:
            results = (
                p
                | "units" >> beam.Create(units)
                | "spread" >> beam.Reshuffle()
                | "process"
                >> beam.ParDo(_Process(worker_src, cfg, evaluation, split, specs)).with_outputs(
                    SKIPPED, main="records"
                )
            )
            _ = (
                {"records": results.records, SKIPPED: results[SKIPPED]}
                | "by shard" >> beam.CoGroupByKey()
                | "write" >> beam.ParDo(_Write(os.fspath(out_dir), todo))
            )
    metas, missing = {}, []
    for name, _, _, fingerprint in todo:
        meta = finished_shard(out_dir, name, fingerprint)
        if meta is None:
            missing.append(name)
        else:
            metas[name] = meta
    if missing:
        raise PrepareError(
            f"the Beam pipeline finished, but {len(missing)} shards in {out_dir} have no "
            f"sidecar (e.g. {missing[0]}): do the workers write to the same {out_dir} as this "
            "machine? Every worker must see the manifest, the audio and --out at the same paths"
        )
    return metas
