"""Class labels: names ↔ ids, and the targets a classification batch holds per record.

A `LabelSet` is the classification family's tokenizer. The input pipeline calls its
`encode_record(record)` (instead of `encode(text)`) to fill a batch's `labels` row:

  level "sequence": the ids of the record's `label` (one id; several for multi-label records);
  level "frame":    one id per input frame from the record's `segments`
                    ([start_frame, end_frame, label], end exclusive), -1 on frames no segment
                    covers (never scored).

Records written by `jaxseq prepare` carry `label` (str, or list of str) and `segments`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from jaxseq.errors import JaxseqError

UNLABELED = -1  # a frame no segment covers


class LabelSet:
    """An ordered set of class names.

    Args:
      names: class names in id order (unique, non-empty).
      level: "sequence" or "frame" (which record field holds the targets).
    """

    def __init__(self, names: list[str] | tuple[str, ...], level: str = "sequence"):
        names = [str(n) for n in names]
        if not names or len(set(names)) != len(names) or "" in names:
            raise ValueError(f"class names must be unique and non-empty, got {names}")
        self.names = tuple(names)
        self.level = level
        self._ids = {n: i for i, n in enumerate(names)}

    @property
    def size(self) -> int:
        return len(self.names)

    @classmethod
    def from_inventory(cls, split_info: dict[str, Any], level: str, where: str) -> LabelSet:
        """The labels of a prepared split's dataset.json entry (`labels` for the sequence level,
        `segment_labels` for the frame level), sorted by name."""
        key = "segment_labels" if level == "frame" else "labels"
        inventory = split_info.get(key) or {}
        if not inventory:
            field = "segments" if level == "frame" else "label"
            raise JaxseqError(
                f"{where} has no class labels (dataset.json has no '{key}'): give every manifest "
                f"item a '{field}' and re-run `jaxseq prepare`"
            )
        return cls(sorted(inventory), level)

    def check_split(self, split_info: dict[str, Any], where: str) -> list[str]:
        """Raises JaxseqError naming an item when a prepared split has a label outside this
        set; returns this set's labels that the split never uses (the caller warns)."""
        key = "segment_labels" if self.level == "frame" else "labels"
        inventory = split_info.get(key) or {}
        unknown = sorted(set(inventory) - set(self.names))
        if unknown:
            examples = {name: inventory[name].get("example", "?") for name in unknown[:5]}
            raise JaxseqError(
                f"{where} has labels the model was not trained on: {unknown} (e.g. item "
                f"{examples}); the model knows {list(self.names)}. Evaluate on data with the "
                "training label set, or train on data that includes these labels"
            )
        return sorted(set(self.names) - set(inventory))

    def id(self, name: str, item: str) -> int:
        """The id of class `name` of record `item`; JaxseqError naming both when unknown."""
        if name not in self._ids:
            raise JaxseqError(
                f"item {item!r} has label {name!r}, which is not one of the {self.size} known "
                f"labels {list(self.names)[:20]}; fix the manifest or re-prepare the dataset"
            )
        return self._ids[name]

    def encode_record(self, record: dict[str, Any]) -> np.ndarray:
        """The targets of a prepared record: int32 [n] (see the module docstring)."""
        item = record["id"]
        if self.level == "frame":
            ids = np.full((int(record["num_frames"]),), UNLABELED, np.int32)  # [frames]
            segments = record.get("segments") or []
            if not segments:
                raise JaxseqError(
                    f"item {item!r} has no segments: frame classification needs per-frame "
                    "labels (manifest 'segments'); fix the manifest and re-run `jaxseq prepare`"
                )
            for start, end, name in segments:
                ids[int(start) : int(end)] = self.id(name, item)
            return ids
        label = record.get("label", "")
        names = [label] if isinstance(label, str) else list(label)
        if not names or "" in names:
            raise JaxseqError(
                f"item {item!r} has no label: give every manifest item a 'label' and re-run "
                "`jaxseq prepare`"
            )
        return np.asarray([self.id(n, item) for n in names], np.int32)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"level": self.level, "labels": list(self.names)}))

    @classmethod
    def load(cls, path: str | Path) -> LabelSet:
        saved = json.loads(Path(path).read_text())
        return cls(saved["labels"], saved["level"])
