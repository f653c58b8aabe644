"""Energy-based voice activity: where a recording has speech, for long-form pre-segmentation.

librosa's `effects.split` finds the frames within `top_db` of the recording's loudest one
(25 ms frames, 10 ms hop at 16 kHz); pauses shorter than `min_silence` are bridged, so a
region is an utterance rather than a word, and each region is padded with `pad` seconds of
its surroundings, as speech starts and ends softer than its loudest frame.
"""

from __future__ import annotations

import librosa
import numpy as np


def speech_regions(
    wave: np.ndarray,
    sample_rate: int,
    *,
    top_db: float = 60.0,
    min_silence: float = 0.3,
    pad: float = 0.1,
) -> list[tuple[int, int]]:
    """Sample ranges [start, end) of speech in float `wave` [samples], in order, disjoint."""
    frame, hop = int(0.025 * sample_rate), int(0.010 * sample_rate)
    if len(wave) < frame or not np.any(wave):
        return []
    intervals = librosa.effects.split(wave, top_db=top_db, frame_length=frame, hop_length=hop)
    regions: list[list[int]] = []
    gap, margin = int(min_silence * sample_rate), int(pad * sample_rate)
    for start, end in intervals:
        if regions and start - regions[-1][1] < gap:
            regions[-1][1] = int(end)
        else:
            regions.append([int(start), int(end)])
    return [(max(a - margin, 0), min(b + margin, len(wave))) for a, b in regions]
