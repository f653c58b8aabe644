"""Token sequences of overlapping windows merged into one, where windows share no frames to
align on (seq2seq decoders emit tokens, not frames).

The method of transformers' ASR pipeline for chunked Whisper (`_find_longest_common_sequence`):
each next sequence is slid along the merged one so far; the offset whose overlap has the most
equal tokens per overlapping position wins (at least two equal tokens; ties go to the shorter
overlap, and a tiny bonus of offset / 10,000 favours long perfect matches). The merge keeps the
left sequence up to the middle of that overlap and the right one from its middle, trusting each
window where it has the most context. Without such an overlap the sequences are concatenated.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _best_overlap(left: np.ndarray, right: np.ndarray) -> tuple[int, int, int, int]:
    """(left_start, left_stop, right_start, right_stop) of the best overlap, or
    (len(left), len(left), 0, 0) for none."""
    n_left, n_right = len(left), len(right)
    equal = left[:, None] == right[None, :]  # [n_left, n_right]
    best, where = 0.0, (n_left, n_left, 0, 0)
    for shift in range(1, n_left + n_right):  # right[0] sits under left[n_left - shift]
        matches = int(np.trace(equal, offset=shift - n_left))
        score = matches / shift + shift / 10000.0
        if matches > 1 and score > best:
            best = score
            where = (
                max(0, n_left - shift),
                min(n_left, n_left + n_right - shift),
                max(0, shift - n_left),
                min(n_right, shift),
            )
    return where


def merge_overlapping(sequences: Sequence[Sequence[int]]) -> list[int]:
    """One token sequence from those of consecutive overlapping windows (see the module doc)."""
    if not sequences:
        return []
    merged: list[int] = []
    left = np.asarray(sequences[0], np.int64)
    for seq in sequences[1:]:
        right = np.asarray(seq, np.int64)
        left_start, left_stop, right_start, right_stop = _best_overlap(left, right)
        merged += left[: (left_start + left_stop) // 2].tolist()
        left = right[(right_start + right_stop) // 2 :]
    return merged + left.tolist()
