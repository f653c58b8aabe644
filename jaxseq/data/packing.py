"""Training windows that join consecutive utterances (`data.pack_utterances`).

A model that transcribes long recordings window by window (Whisper's sequential long-form)
must have seen windows holding several utterances, the last one cut where the window ends.
With `data.pack_utterances = P > 1`, each kept training item starts one window per epoch:
the item, then the items after it in a seeded order of the epoch, up to a seeded number
1..P of them, while their timed targets fit `data.max_label_length`, each after a seeded pause
of 0..`MAX_GAP_FRAMES` (its first frame, its leading silence, repeated: recordings pause
longer than single utterances' margins, and a long-form window starts anywhere in a pause,
so that where the first speech starts varies too); the window is cut at the largest bucket.
So an epoch still has one window per kept item (the plan's batch count does not change), and
an item also appears inside other items' windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

NO_RECORD = -1  # a window's unused slots
MAX_GAP_FRAMES = 100  # the longest pause added before a joined utterance: 1 s of 10 ms frames


class Windows(NamedTuple):
    """One epoch's windows (see `plan_windows`)."""

    records: np.ndarray  # int64 [K, P] positions in the kept items, NO_RECORD after the last
    gaps: np.ndarray  # int64 [K, P] the pause in frames before each
    lengths: np.ndarray  # int64 [K] each window's frames, min(total, max_frames)


def plan_windows(
    frames: np.ndarray,
    label_lengths: np.ndarray,
    pack: int,
    max_frames: int,
    max_label_length: int,
    seed: int,
    epoch: int,
) -> Windows:
    """One epoch's windows over the kept items.

    Args:
      frames: int [K] feature frames per kept item; label_lengths: int [K] its target ids
        (timed: text + 2), each at most `max_label_length`.
      pack: the most items per window (P).
      max_frames: the largest bucket, where a window is cut.
      seed, epoch: the window sizes and the order are functions of these alone.

    Returns:
      `Windows`: one per kept item, starting with it.
    """
    rng = np.random.default_rng([seed, epoch, 1])
    num = len(frames)
    order = rng.permutation(num)
    after = np.empty(num, np.int64)
    after[order] = np.roll(order, -1)  # the next item in this epoch's order
    sizes = rng.integers(1, pack + 1, num)
    gaps = rng.integers(0, MAX_GAP_FRAMES + 1, (num, pack))
    windows = np.full((num, pack), NO_RECORD, np.int64)
    lengths = np.zeros(num, np.int64)
    for first in range(num):
        item, total, labels = first, 0, 0
        for slot in range(min(sizes[first], num)):
            if slot and (total >= max_frames or labels + label_lengths[item] > max_label_length):
                break
            windows[first, slot] = item
            total += int(gaps[first, slot] + frames[item])
            labels += int(label_lengths[item])
            item = after[item]
        lengths[first] = min(total, max_frames)
    gaps[windows == NO_RECORD] = 0
    return Windows(windows, gaps, lengths)


def join_window(
    records: Sequence[dict[str, Any]], gaps: Sequence[int], frames: int, vocab: Any
) -> tuple[str, np.ndarray, np.ndarray]:
    """(id, features [frames, n_mels], timed target ids) of `records` joined, each after its
    gap (its first frame repeated), and cut at `frames` (the first record's id names the
    window)."""
    paused = [
        {**r, "features": np.concatenate([np.repeat(r["features"][:1], gap, 0), r["features"]])}
        for r, gap in zip(records, gaps, strict=True)
    ]
    features = np.concatenate([r["features"] for r in paused])[:frames]  # [frames, n_mels]
    return records[0]["id"], features, vocab.encode_window(paused, frames)
