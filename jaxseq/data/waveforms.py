"""In-memory audio features → a padded host batch (transcribe, classify, TTS intelligibility)."""

from __future__ import annotations

import numpy as np


def feature_batch(
    features: list[np.ndarray], rows: int, frames: int, n_mels: int
) -> dict[str, np.ndarray]:
    """Log-mel features (each [frames_i, n_mels], frames_i <= `frames`) as a host batch of
    `rows` rows: features float32 [rows, frames, n_mels] zero-padded, feature_lengths int32
    [rows] (0 for the filler rows past len(features))."""
    batch = {
        "features": np.zeros((rows, frames, n_mels), np.float32),
        "feature_lengths": np.zeros((rows,), np.int32),
    }
    for i, f in enumerate(features):
        batch["features"][i, : len(f)] = f
        batch["feature_lengths"][i] = len(f)
    return batch
