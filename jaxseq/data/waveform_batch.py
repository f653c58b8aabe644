"""Host batches of a waveform dataset (prepare.frontend.kind=waveform): the records' samples,
optionally normalized per utterance, zero-padded into one float32 array, with their labels.

The layout is the log-mel batch's (`jaxseq.data.reading.collate`) with the features one axis
shorter, so that the pipeline, the train loop and the evaluation loop treat both alike:
`features` float32 [rows, samples] and `feature_lengths` in samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jaxseq.data.reading import Batch, load_dataset_info
from jaxseq.data.records import record_waveform

NORMALIZE_EPS = 1e-7  # Wav2Vec2FeatureExtractor's zero_mean_unit_var_norm


def is_waveform_dataset(dataset_dir: str | Path) -> bool:
    """Whether a prepared dataset's records hold waveforms (prepare.frontend.kind=waveform)."""
    return load_dataset_info(dataset_dir)["frontend"].get("kind", "logmel") == "waveform"


def normalize_waveform(wave: np.ndarray) -> np.ndarray:
    """`wave` float [samples] scaled to zero mean and unit variance, (x - mean) / sqrt(var +
    1e-7), as transformers' Wav2Vec2FeatureExtractor(do_normalize=True) does per utterance
    (over its valid samples: pass those alone) → float32 [samples]."""
    wave = np.asarray(wave, np.float64)
    return ((wave - wave.mean()) / np.sqrt(wave.var() + NORMALIZE_EPS)).astype(np.float32)


def collate_waveforms(
    records: list[dict[str, Any]],
    rows: int,
    length: int,
    label_width: int,
    vocab,
    normalize: bool,
) -> Batch:
    """Pads decoded waveform records into one batch; rows beyond `len(records)` stay zero.

    Args:
      records: decoded records whose `features` are int16 or float16 [num_samples].
      rows, length, label_width: the batch's rows, samples and label width.
      vocab: has `encode(text) -> int32 [n]` (or `encode_record(record)`).
      normalize: each waveform normalized over its own samples (`normalize_waveform`); the
        padding stays 0, as the feature extractor's padding_value.

    Returns: features float32 [rows, length], feature_lengths int32 [rows] (samples), labels
      int32 [rows, label_width], label_lengths int32 [rows].
    """
    encode_record = getattr(vocab, "encode_record", None) or (lambda r: vocab.encode(r["text"]))
    features = np.zeros((rows, length), np.float32)  # [b, T samples]
    feature_lengths = np.zeros((rows,), np.int32)
    labels = np.zeros((rows, label_width), np.int32)  # [b, L]
    label_lengths = np.zeros((rows,), np.int32)
    for r, record in enumerate(records):
        wave, ids = record_waveform(record["features"]), encode_record(record)
        if wave.ndim != 1:
            raise ValueError(
                f"record {record['id']!r} holds features {wave.shape}, not a waveform: the "
                "dataset.json says frontend kind waveform; re-run `jaxseq prepare`"
            )
        if len(wave) > length or len(ids) > label_width:
            raise ValueError(
                f"record {record['id']!r} has {len(wave)} samples and {len(ids)} label ids, but "
                f"the split index planned at most {length} and {label_width}: the index is "
                "stale or the vocabulary does not map one character to one id; re-run "
                "`jaxseq prepare`"
            )
        features[r, : len(wave)] = normalize_waveform(wave) if normalize else wave
        feature_lengths[r] = len(wave)
        labels[r, : len(ids)] = ids
        label_lengths[r] = len(ids)
    return {
        "features": features,
        "feature_lengths": feature_lengths,
        "labels": labels,
        "label_lengths": label_lengths,
    }
