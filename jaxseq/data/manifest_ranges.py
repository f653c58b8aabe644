"""A JSONL manifest read in byte ranges, for preparation that outgrows one machine
(jaxseq.data.prepare_beam): no process ever holds the whole manifest.

`scan_manifest` streams the file once (on the driver): it checks every line as
`ManifestSource` does (the same errors, naming `path:line`), computes the same fingerprint, and
cuts the file into ranges of about `items_per_range` items at line boundaries, each
(first item index, first line number, byte start, byte stop). Workers read their range's bytes
and parse those lines only (`ManifestRanges.items`); a random item (`ranges[i]`, e.g. a babble
talker of prepare.augment) reads the range holding it. Items, ids, line numbers and the
fingerprint are exactly those of `ManifestSource` on the same file.
"""

from __future__ import annotations

import bisect
import hashlib
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from jaxseq.data.sources import SourceError, parse_manifest_line

ITEMS_PER_RANGE = 64  # a range is one unit of work: ~1-3 s of feature computation


def _id_hash(item_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "little")


def _lines(raw: bytes, first_line: int) -> Iterator[tuple[int, str]]:
    """(line number, text) of the lines in `raw` (whole lines of a manifest), numbered from
    `first_line` as `str.splitlines` on the whole file numbers them."""
    lineno = first_line
    for physical in raw.splitlines(keepends=True):  # bytes: split at \n, \r\n and \r only
        for line in physical.decode("utf-8").splitlines():
            yield lineno, line
            lineno += 1


class ManifestRanges:
    """A manifest as a random-access source (`len`, `[i]`, `fingerprint`, `spec`) read in
    byte ranges (see the module docstring). Pickles small: the ranges, not the items."""

    def __init__(self, path: str | Path, ranges: np.ndarray, num_items: int, fingerprint: str):
        self.path = Path(path)
        self.spec = f"manifest:{path}"
        self.fingerprint = fingerprint
        self.ranges = ranges  # int64 [num_ranges, 4]: first index, first line, byte start, stop
        self.num_items = num_items
        self._cache: dict[int, list[dict[str, Any]]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": {}}

    def __len__(self) -> int:
        return self.num_items

    def _range(self, k: int) -> list[dict[str, Any]]:
        """The items of range `k`, in order (the last few ranges read are kept)."""
        if k not in self._cache:
            _, first_line, start, stop = (int(x) for x in self.ranges[k])
            with open(self.path, "rb") as f:
                f.seek(start)
                raw = f.read(stop - start)
            root = self.path.resolve().parent
            self._cache[k] = [
                parse_manifest_line(self.path, line, lineno, root)
                for lineno, line in _lines(raw, first_line)
                if line.strip()
            ]
            while len(self._cache) > 4:
                del self._cache[next(iter(self._cache))]
        return self._cache[k]

    def _range_of(self, index: int) -> int:
        return bisect.bisect_right(self.ranges[:, 0], index) - 1

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_items:
            raise IndexError(f"item {index} of {self.path} ({self.num_items} items)")
        k = self._range_of(index)
        return dict(self._range(k)[index - int(self.ranges[k, 0])])

    def items(self, start: int, stop: int) -> Iterator[tuple[int, dict[str, Any]]]:
        """(index, item) for the items [start, stop), reading only the ranges that hold them."""
        k = self._range_of(start) if start < stop else len(self.ranges)
        while k < len(self.ranges) and int(self.ranges[k, 0]) < stop:
            first = int(self.ranges[k, 0])
            for index, item in enumerate(self._range(k), first):
                if start <= index < stop:
                    yield index, dict(item)
            k += 1

    def bounds(self) -> list[int]:
        """The first item index of every range: where work units may start."""
        return [int(x) for x in self.ranges[:, 0]]


def scan_manifest(path: str | Path, items_per_range: int | None = None) -> ManifestRanges:
    """Streams the manifest once: checks every line, finds repeated ids, cuts the ranges.

    Memory: 16 bytes per item (a 64-bit hash of its id and its line number), never the items.
    `items_per_range` None: ITEMS_PER_RANGE.

    Raises:
      SourceError: as `ManifestSource`: a missing file, or `path:line` with what is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"manifest not found: {path}. Check the path after 'manifest:'.")
    root = path.resolve().parent
    items_per_range = items_per_range or ITEMS_PER_RANGE
    sha = hashlib.sha1()
    hashes, linenos = array("Q"), array("q")  # per item
    ranges: list[list[int]] = []  # [first index, first line, byte start, byte stop]
    offset, lineno, in_range = 0, 1, items_per_range
    with open(path, "rb") as f:
        for physical in f:  # split at b"\n" only; `_lines` splits further as splitlines does
            sha.update(physical)
            if in_range >= items_per_range:  # a new range starts at this line
                ranges.append([len(hashes), lineno, offset, -1])
                in_range = 0
            lines = list(_lines(physical, lineno))
            for n, line in lines:
                if line.strip():
                    hashes.append(_id_hash(parse_manifest_line(path, line, n, root)["id"]))
                    linenos.append(n)
                    in_range += 1
            lineno += len(lines)
            offset += len(physical)
            ranges[-1][3] = offset
    _check_unique_ids(
        path, root, np.frombuffer(hashes, np.uint64), np.frombuffer(linenos, np.int64)
    )
    table = np.asarray(ranges or [[0, 1, 0, 0]], dtype=np.int64)  # [num_ranges, 4]
    fingerprint = f"manifest:{path.resolve()}:{sha.hexdigest()}"
    return ManifestRanges(path, table, len(hashes), fingerprint)


def _item_at(path: Path, root: Path, lineno: int) -> dict[str, Any]:
    """The item on line `lineno` (rereads the file up to it)."""
    with open(path, "rb") as f:
        n = 1
        for physical in f:
            for n_line, line in _lines(physical, n):
                if n_line == lineno:
                    return parse_manifest_line(path, line, lineno, root)
                n = n_line + 1
    raise IndexError(f"{path} has no line {lineno}")


def _check_unique_ids(path: Path, root: Path, hashes: np.ndarray, linenos: np.ndarray) -> None:
    """Raises ManifestSource's error for the first line that repeats an earlier line's id.

    Args:
      hashes: uint64 [num_items], a hash of each item's id; linenos: int64 [num_items].
    """
    if hashes.size < 2:
        return
    order = np.argsort(hashes, kind="stable")  # equal hashes keep their file order
    ordered = hashes[order]
    new_run = np.r_[True, ordered[1:] != ordered[:-1]]  # [num_items]
    first = order[np.flatnonzero(new_run)[np.cumsum(new_run) - 1]]  # first item of each's run
    repeats = np.flatnonzero(~new_run)
    pairs = sorted((int(linenos[order[p]]), int(linenos[first[p]])) for p in repeats)
    for later, earlier in pairs:
        ids = {_item_at(path, root, n)["id"] for n in (later, earlier)}
        if len(ids) == 1:  # not a hash collision
            raise SourceError(
                f"{path}:{later}: duplicate id {ids.pop()!r} (first on line {earlier}); "
                'give each line a unique "id"'
            )
