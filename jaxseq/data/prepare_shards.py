"""The shards of `jaxseq prepare`, shared by its engines (the local process pool in
jaxseq.data.prepare, Apache Beam in jaxseq.data.prepare_beam): which items each shard holds,
how one is written (a temp name, then a rename) and its sidecar `{shard}.meta.json`, by which a
rerun reuses a finished shard."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from jaxseq.errors import JaxseqError

SIDECAR_VERSION = 2  # 2: rows carry labels and segment frames


class PrepareError(JaxseqError, RuntimeError):
    """Preparation cannot go on; the message names the file or config key and what to do."""


def shard_ranges(num_items: int, num_shards: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) item ranges, one per shard, sizes differing by at most one."""
    bounds = np.linspace(0, num_items, num_shards + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def sidecar_path(out_dir: Path, shard: str) -> Path:
    """Where the sidecar of `shard` is."""
    return out_dir / f"{shard}.meta.json"


def finished_shard(out_dir: Path, shard: str, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """The sidecar of a finished shard made with the same fingerprint, else None."""
    path = sidecar_path(out_dir, shard)
    if not (path.is_file() and (out_dir / shard).is_file()):
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return meta if meta.get("fingerprint") == fingerprint else None


def write_json(path: Path, obj: Any) -> None:
    """Writes JSON atomically (temp file, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


class ShardWriter:
    """Writes one shard to a temp name; `finish` renames it and writes its sidecar, `abort`
    deletes the temp file (so no half shard is ever left under the shard's name)."""

    def __init__(self, out_dir: Path, shard: str, fingerprint: dict[str, Any]):
        from array_record.python.array_record_module import ArrayRecordWriter

        self.out_dir, self.shard, self.fingerprint = out_dir, shard, fingerprint
        self.tmp = out_dir / f"{shard}.tmp"
        self.writer = ArrayRecordWriter(str(self.tmp), "group_size:1")
        # [id, num_frames, text_length, seconds, label, {segment label: frames}]
        self.rows: list[list[Any]] = []
        self.skipped: list[dict[str, Any]] = []

    def add(self, result: dict[str, Any]) -> None:
        """Appends one result of `process_item`: a record (and its index row), or a skip."""
        if "record" in result:
            self.writer.write(result["record"])
            keys = ("id", "num_frames", "text_length", "seconds", "label", "segment_frames")
            self.rows.append([result[k] for k in keys])
        else:
            self.skipped.append(result)

    def finish(self) -> dict[str, Any]:
        """Renames the shard into place, writes its sidecar and returns it."""
        self.writer.close()
        os.replace(self.tmp, self.out_dir / self.shard)
        meta = {"fingerprint": self.fingerprint, "rows": self.rows, "skipped": self.skipped}
        write_json(sidecar_path(self.out_dir, self.shard), meta)
        return meta

    def abort(self) -> None:
        """Closes and deletes the temp file after a failure."""
        try:
            self.writer.close()
        finally:
            self.tmp.unlink(missing_ok=True)
