"""The host-side rules of Whisper's sequential long-form transcription, on token lists.

Each function is the list form of a step of transformers' long-form `generate`
(`transformers/models/whisper/generation_whisper.py`, named beside each one), which follows
openai-whisper's `transcribe` (whisper/transcribe.py): how a window's tokens become segments
and how far the next window starts (`window_segments`), when a decoding is retried at the next
temperature or the window skipped as silence (`compression_ratio`, `fallback`), and which
earlier tokens the next window is conditioned on (`previous_tokens`).

Times: a window starts at `seek` log-mel frames (10 ms each); a timestamp token is
`<|0.00|>` + k, k * 20 ms after the window's start (`TIME_PRECISION`), and moving to it moves
`INPUT_STRIDE` = 2 frames per k.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

TIME_PRECISION = 0.02  # seconds per timestamp step
FRAME_SECONDS = 0.01  # seconds per log-mel frame (transformers' time_precision_features)
INPUT_STRIDE = 2  # log-mel frames per encoder frame, per timestamp step


def compression_ratio(tokens: Sequence[int], vocab_size: int) -> float:
    """Raw over zlib-compressed bytes of the tokens, each `int(log2(vocab) / 8) + 1` bytes
    little-endian (`_retrieve_compression_ratio`; openai-whisper compresses the text instead).
    A repetitive decoding compresses well: a high ratio."""
    width = int(math.log2(vocab_size) / 8) + 1
    raw = b"".join(int(t).to_bytes(width, "little") for t in tokens)
    return len(raw) / len(zlib.compress(raw))


def fallback(
    compression: float,
    avg_logprob: float,
    no_speech_prob: float,
    *,
    compression_ratio_threshold: float | None,
    logprob_threshold: float | None,
    no_speech_threshold: float | None,
) -> tuple[bool, bool]:
    """(retry at the next temperature, skip the window as silence), as `_need_fallback`: a
    retry when the decoding is too repetitive or too improbable; a skip, and no retry, when
    `<|nospeech|>` is likelier than `no_speech_threshold` and the decoding is improbable. With
    `logprob_threshold` None the no-speech probability alone decides (openai-whisper's rule;
    transformers fails there)."""
    retry = compression_ratio_threshold is not None and compression > compression_ratio_threshold
    improbable = logprob_threshold is not None and avg_logprob < logprob_threshold
    retry |= improbable
    silent = no_speech_threshold is not None and no_speech_prob > no_speech_threshold
    if silent and (improbable or logprob_threshold is None):
        return False, True
    return retry, False


def window_segments(
    tokens: Sequence[int], *, timestamp_begin: int, seek: int, window_frames: int
) -> tuple[list[dict[str, Any]], int]:
    """A window's segments and how many frames the next window starts later
    (`_retrieve_segment`).

    Args:
      tokens: the window's generated tokens, its end-of-text dropped.
      timestamp_begin: id of `<|0.00|>`.
      seek: the window's first frame in the recording.
      window_frames: its frames of audio (the last window's may be fewer than the model's).
    Returns:
      [{"start", "end" (seconds in the recording), "tokens" (timestamps included)}], and the
      advance in frames: to the last pair's timestamp (the text after it is cut off mid-speech
      and decoded again by the next window), or the whole window when the tokens end in a
      single timestamp or hold no pair.
    """
    tokens = [int(t) for t in tokens]
    offset = seek * TIME_PRECISION / INPUT_STRIDE  # the window's start, seconds
    is_time = [t >= timestamp_begin for t in tokens]
    single_ending = is_time[-2:] == [False, True]
    # Each pair `<|a|><|b|>` ends one segment after `<|a|>` and starts the next at `<|b|>`.
    cuts = [i + 1 for i in range(len(tokens) - 1) if is_time[i] and is_time[i + 1]]
    if not cuts:  # one segment: to the last timestamp, else to the end of the window
        # In float32, as transformers computes it from an integer tensor.
        end_step = int(
            np.float32(window_frames) * np.float32(FRAME_SECONDS) / np.float32(TIME_PRECISION)
        )
        times = [t for t in tokens if t >= timestamp_begin]
        if times and times[-1] != timestamp_begin:
            end_step = times[-1] - timestamp_begin
        segment = {"start": offset, "end": offset + end_step * TIME_PRECISION, "tokens": tokens}
        return [segment], window_frames
    if single_ending:
        cuts.append(len(tokens))
    else:
        cuts[-1] += 1  # the last pair stays whole in the last segment
    segments, last = [], 0
    for n, cut in enumerate(cuts):
        piece = tokens[last:cut]
        end = piece[-2] if n == len(cuts) - 1 and not single_ending else piece[-1]
        segments.append(
            {
                "start": offset + (piece[0] - timestamp_begin) * TIME_PRECISION,
                "end": offset + (end - timestamp_begin) * TIME_PRECISION,
                "tokens": piece,
            }
        )
        last = cut
    if single_ending:
        return segments, window_frames
    return segments, (tokens[last - 2] - timestamp_begin) * INPUT_STRIDE


def previous_tokens(
    segments: Sequence[dict[str, Any]], *, timestamp_begin: int, max_tokens: int
) -> list[int]:
    """The tokens a window is conditioned on: every earlier segment's, a segment that ends in
    two timestamps without its last one, the last `max_tokens` of them (`_pad_to_max_length`
    with `skip_ending_double_timestamps`, `cut_off_length`)."""
    out: list[int] = []
    for segment in segments:
        tokens = list(segment["tokens"])
        if len(tokens) > 2 and tokens[-2] >= timestamp_begin:
            tokens = tokens[:-1]
        out += tokens
    return out[-max_tokens:] if max_tokens > 0 else []
