"""Reading a prepared split: its dataset.json, its records checked against its index, and
decoded records padded into one host batch (what the train and eval pipelines share)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grain
import numpy as np

from jaxseq.data.records import decode_record, index_name, read_index

Batch = dict[str, np.ndarray]


def load_dataset_info(dataset_dir: str | Path, split: str | None = None) -> dict[str, Any]:
    """Reads `dataset.json` of a prepared dataset folder.

    Raises:
      FileNotFoundError: naming the folder when it or its `dataset.json` is missing.
      ValueError: when `split` is given and the dataset has no such split (lists the splits).
    """
    path = Path(dataset_dir) / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{dataset_dir} is not a prepared dataset: {path} is missing "
            "(run `jaxseq prepare` to write one)"
        )
    info = json.loads(path.read_text())
    if split is not None and split not in info.get("splits", {}):
        available = sorted(info.get("splits", {}))
        raise ValueError(f"dataset {dataset_dir} has no split {split!r}; available: {available}")
    return info


def collate(
    records: list[dict[str, Any]], rows: int, length: int, label_width: int, n_mels: int, vocab
) -> Batch:
    """Pads decoded records into one batch; rows beyond `len(records)` stay zero (fillers).

    The labels are `vocab.encode(record["text"])`, or `vocab.encode_record(record)` when the
    vocabulary reads its targets from other record fields (jaxseq.data.labels.LabelSet).

    Returns: features float16 [rows, length, n_mels] (the records' own width), feature_lengths
      int32 [rows], labels int32 [rows, label_width], label_lengths int32 [rows].
    """
    encode_record = getattr(vocab, "encode_record", None) or (lambda r: vocab.encode(r["text"]))
    items = [(rec["id"], rec["features"], encode_record(rec)) for rec in records]
    return pad_batch(items, rows, length, label_width, n_mels)


def pad_batch(
    items: list[tuple[str, np.ndarray, np.ndarray]],
    rows: int,
    length: int,
    label_width: int,
    n_mels: int,
) -> Batch:
    """`collate`'s batch from (id, features [frames, n_mels], label ids [n]) per row."""
    features = np.zeros((rows, length, n_mels), np.float16)  # [b, T, n_mels]
    feature_lengths = np.zeros((rows,), np.int32)
    labels = np.zeros((rows, label_width), np.int32)  # [b, L]
    label_lengths = np.zeros((rows,), np.int32)
    for r, (item, feats, ids) in enumerate(items):
        if len(feats) > length or len(ids) > label_width:
            raise ValueError(
                f"record {item!r} has {len(feats)} frames and {len(ids)} label ids, but the "
                f"split index planned at most {length} and {label_width}: the index is stale or "
                "the vocabulary does not map one character to one id; re-run `jaxseq prepare`"
            )
        features[r, : len(feats)] = feats  # stored float16
        feature_lengths[r] = len(feats)
        labels[r, : len(ids)] = ids
        label_lengths[r] = len(ids)
    return {
        "features": features,
        "feature_lengths": feature_lengths,
        "labels": labels,
        "label_lengths": label_lengths,
    }


class Split:
    """A split's shards (one grain ArrayRecord source) and its index; picklable."""

    def __init__(self, dataset_dir: str | Path, split: str):
        info = load_dataset_info(dataset_dir, split)
        folder = Path(dataset_dir)
        paths = [str(folder / name) for name in info["splits"][split]["shards"]]
        for path in [*paths, str(folder / index_name(split))]:
            if not Path(path).is_file():
                raise FileNotFoundError(f"dataset {dataset_dir}: file {path} is missing")
        self.name = f"{dataset_dir}:{split}"
        self.n_mels = int(info["frontend"]["n_mels"])
        self.index = read_index(folder / index_name(split))
        self.source = grain.sources.ArrayRecordDataSource(paths)
        if len(self.source) != len(self.index["ids"]):
            raise ValueError(
                f"{self.name}: the shards hold {len(self.source)} records but the index lists "
                f"{len(self.index['ids'])}; re-run `jaxseq prepare`"
            )

    def read(self, records: np.ndarray) -> list[dict[str, Any]]:
        """Decoded records for record numbers `records` [n], checked against the index ids."""
        out = [decode_record(self.source[int(k)]) for k in records]
        for k, rec in zip(records, out, strict=True):
            if rec["id"] != self.index["ids"][k]:
                raise ValueError(
                    f"{self.name}: record {k} has id {rec['id']!r} but the index says "
                    f"{self.index['ids'][k]!r}; re-run `jaxseq prepare`"
                )
        return out
