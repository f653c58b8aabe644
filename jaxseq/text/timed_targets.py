"""Whisper-style timed targets for seq2seq models trained here (`model.timestamps`).

A window of audio (one utterance, or several joined by the input pipeline with
`data.pack_utterances`) is transcribed as

    <|s1|> text of utterance 1 <|e1|><|s2|> text 2 <|e2|> ... </s>

with `<|t|>` the timestamp token of t seconds from the window's start, one per 20 ms (an
encoder frame of two 10 ms feature frames), as Whisper writes its transcripts. An utterance
the window cuts (its speech runs past the window's end) contributes its start alone: the
target ends `... <|e|><|s|> </s>`, which tells a sequential decoder to seek to `<|e|>` and
decode that utterance in the next window (openai-whisper's `transcribe`).

Where the speech of an utterance starts and ends comes from its features: the first and last
frame within `TOP_DB` of its loudest frame (the rule of `librosa.effects.trim`, on the log-mel
power a prepared record holds).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

TIME_STEP = 0.02  # seconds per timestamp token (Whisper's)
FRAMES_PER_STEP = 2  # feature frames (10 ms each) per timestamp token
TOP_DB = 40.0  # a frame is speech within this many dB of the utterance's loudest


def time_token(index: int) -> str:
    """The text of timestamp token `index`: `<|0.00|>`, `<|0.02|>`, ..."""
    return f"<|{index * TIME_STEP:.2f}|>"


def speech_span(features: np.ndarray, top_db: float = TOP_DB) -> tuple[int, int] | None:
    """[start, end) feature frames of the speech in one utterance's log-mel, or None if empty.

    Args:
      features: [frames, n_mels] Whisper-normalized log-mel, (log10(power) + 4) / 4 (clipped 8
        decades below the utterance's maximum), as `jaxseq.audio.frontend` computes it.
      top_db: frames whose mean mel power is within this many dB of the loudest frame's are
        speech.
    """
    if len(features) == 0:
        return None
    log_power = 4.0 * np.asarray(features, np.float64) - 4.0  # [frames, n_mels], log10
    peak = log_power.max()
    frame_db = 10.0 * (np.log10(np.mean(10.0 ** (log_power - peak), axis=1)) + peak)  # [frames]
    loud = np.flatnonzero(frame_db > frame_db.max() - top_db)
    return int(loud[0]), int(loud[-1]) + 1


def timed_window(
    records: Sequence[dict[str, Any]],
    frames: int,
    encode: Callable[[str], np.ndarray],
    timestamp_begin: int,
    num_timestamps: int,
) -> np.ndarray:
    """The timed target ids int32 [n] (no start or end token) of `records` joined in order and
    cut at `frames` feature frames (see the module docstring).

    Args:
      records: prepared records ("text", "features" [frames_i, n_mels]).
      frames: the window's length in feature frames (at most the records' total).
      encode: text -> int32 ids.
      timestamp_begin: id of `<|0.00|>`; num_timestamps: how many timestamp ids follow it (a
        time past the last is written as the last).
    """

    def stamp(frame: int) -> int:
        return timestamp_begin + min(round(frame / FRAMES_PER_STEP), num_timestamps - 1)

    ids: list[int] = []
    offset = 0  # the record's first frame in the window
    for record in records:
        span = speech_span(record["features"])
        if span is not None:
            start, end = offset + span[0], offset + span[1]
            if start >= frames:
                break
            if end > frames:  # cut by the window: its start alone
                ids.append(stamp(start))
                break
            ids += [stamp(start), *encode(record["text"]).tolist(), stamp(end)]
        offset += len(record["features"])
    return np.asarray(ids, np.int32)
