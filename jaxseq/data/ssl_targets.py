"""HuBERT's frame-level cluster targets beside a prepared waveform dataset, and the tokenizer that
puts them into batches.

`write_dataset_targets` (CLI: `scripts/hubert_targets.py`) writes DATASET/{split}.targets.npz:
one int16 array per item, keyed by the item's id, with one cluster id per frame of the conv
feature encoder (`conv_output_lengths` of its samples). `ClusterTargets` is the ssl family's
tokenizer: the pipeline asks a tokenizer for each record's label ids (`encode_record`), so a
training or an evaluation batch's `labels` hold the record's targets, read deterministically
per record, with no change to the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from jaxseq.data.records import record_waveform
from jaxseq.errors import JaxseqError

SUFFIX = ".targets.npz"
KMEANS_FILE = "kmeans.npz"  # the centroids the targets were assigned with
READ_CHUNK = 64  # records read at once


def targets_path(dataset_dir: str | Path, split: str) -> Path:
    """Where the cluster targets of a split live: DATASET/{split}.targets.npz."""
    return Path(dataset_dir) / f"{split}{SUFFIX}"


def write_targets(path: str | Path, targets: dict[str, np.ndarray]) -> None:
    """Saves {item id: int [frames] cluster ids} as int16 arrays (fewer than 32768 clusters)."""
    np.savez(path, **{k: np.asarray(v, np.int16) for k, v in targets.items()})


def read_targets(path: str | Path) -> dict[str, np.ndarray]:
    """{item id: int32 [frames]} of one targets file."""
    with np.load(path) as data:
        return {k: data[k].astype(np.int32) for k in data.files}


def split_waveforms(dataset_dir: str | Path, split: str) -> Iterator[tuple[str, np.ndarray]]:
    """(id, float32 [samples]) of every record of a prepared waveform split, in record order."""
    from jaxseq.data.reading import Split

    data = Split(dataset_dir, split)
    for start in range(0, len(data.index["ids"]), READ_CHUNK):
        stop = min(start + READ_CHUNK, len(data.index["ids"]))
        for record in data.read(np.arange(start, stop)):
            yield record["id"], record_waveform(record["features"])


def write_dataset_targets(
    dataset_dir: str | Path,
    splits: tuple[str, ...],
    n_clusters: int,
    seed: int = 0,
    fit_split: str | None = None,
    max_frames: int = 1_000_000,
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2),
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2),
    features: Callable[[np.ndarray], np.ndarray] | None = None,
    feature_settings: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """HuBERT's targets: k-means (`fit_kmeans`, seeded) of the frames of `fit_split` (default
    the first of `splits`), then every item of `splits` labelled frame by frame, one target
    per conv-encoder frame of the given stack.

    The frames' features are the MFCCs of that stack's frames (iteration 1), or `features`
    (waveform float32 [samples] → float [frames, dim], described by `feature_settings`), e.g.
    a layer of the previous iteration's encoder (iteration 2).

    Writes DATASET/{split}.targets.npz per split and the centroids to DATASET/kmeans.npz;
    returns {split: its targets file}. The same data, features and seed give the same files.
    """
    from jaxseq.data.cluster_targets import (
        MfccFeatures,
        cluster_targets,
        fit_kmeans,
        save_kmeans,
    )

    if features is None:
        features = MfccFeatures(conv_kernel=tuple(conv_kernel), conv_stride=tuple(conv_stride))
        feature_settings = features.settings()
    fit_on = (w for _, w in split_waveforms(dataset_dir, fit_split or splits[0]))
    model = fit_kmeans(fit_on, features, n_clusters, feature_settings or {}, seed, max_frames)
    save_kmeans(model, Path(dataset_dir) / KMEANS_FILE)
    written = {}
    for split in splits:
        targets = {
            item: cluster_targets(wave, model, features)
            for item, wave in split_waveforms(dataset_dir, split)
        }
        written[split] = targets_path(dataset_dir, split)
        write_targets(written[split], targets)
    return written


class ClusterTargets:
    """The ssl family's tokenizer with objective=hubert: a record's "label ids" are its
    cluster targets, from every DATASET/*.targets.npz (read once, on first use, in each
    process that reads batches; item ids must be unique across the files)."""

    def __init__(self, dataset_dir: str | Path, num_classes: int):
        self.dataset_dir = Path(dataset_dir)
        self.size = num_classes
        self._targets: dict[str, np.ndarray] | None = None

    def __getstate__(self) -> dict[str, Any]:  # grain workers load the files themselves
        return {**self.__dict__, "_targets": None}

    def _load(self) -> dict[str, np.ndarray]:
        if self._targets is None:
            files = sorted(self.dataset_dir.glob(f"*{SUFFIX}"))
            if not files:
                raise JaxseqError(
                    f"{self.dataset_dir} has no *{SUFFIX}: ssl.objective=hubert predicts cluster "
                    f"targets; write them with `python scripts/hubert_targets.py --dataset "
                    f"{self.dataset_dir}`"
                )
            targets: dict[str, np.ndarray] = {}
            for path in files:
                more = read_targets(path)
                if twice := sorted(set(more) & set(targets)):
                    raise JaxseqError(
                        f"{path} repeats item ids of another {SUFFIX} file in "
                        f"{self.dataset_dir}, e.g. {twice[:3]}: ids must be unique"
                    )
                targets.update(more)
            self._targets = targets
        return self._targets

    def encode_record(self, record: dict[str, Any]) -> np.ndarray:
        """The cluster ids int32 [frames] of a decoded record (by its "id")."""
        targets = self._load().get(record["id"])
        if targets is None:
            raise JaxseqError(
                f"item {record['id']!r} has no targets in {self.dataset_dir}/*{SUFFIX}: "
                "re-run scripts/hubert_targets.py for its split"
            )
        return targets

    def encode(self, text: str) -> np.ndarray:
        """Text has no targets: the item's come from `encode_record`."""
        raise JaxseqError(
            "ssl.objective=hubert reads cluster targets per record, not text: "
            f"the {self.dataset_dir} batches must come from jaxseq's pipeline"
        )


class NoLabels:
    """The ssl family's tokenizer with objective=wav2vec2: the text is never read; every record
    has no label ids."""

    size = 0

    def encode_record(self, record: dict[str, Any]) -> np.ndarray:
        del record
        return np.zeros((0,), np.int32)

    def encode(self, text: str) -> np.ndarray:
        del text
        return np.zeros((0,), np.int32)
