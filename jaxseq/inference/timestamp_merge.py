"""Segments of a chunked Whisper transcription, merged on timestamp tokens.

The method of transformers' ASR pipeline (`_decode_asr` in its Whisper tokenizer) for windows
decoded with timestamps. Each window (samples [start, end) with `left` and `right` strides of
context, `jaxseq.inference.windows.Window`) gives `<|t0|> text <|t1|><|t2|> text <|t3|> ...`;
a timestamp is `time_offset + k * time_precision`, the offset advancing by each window's length
less its right stride and moving back by its left stride. Walking the windows in order:

- a segment opens at a start timestamp and closes at the next, later one;
- a timestamp inside a window's right stride (from the last one there) is skipped together
  with the one after it: the next window, which sees that audio with context, decides there;
- inside a window's left stride, a timestamp is skipped while text carried over from the
  previous window waits: that segment was opened there and closes here;
- the text of a segment that spans windows is the windows' token runs merged where they
  overlap (`jaxseq.inference.merge`).

Within one window the timestamps never decrease (the search's rules), so transformers' branch
for concatenated sequential segments does not arise here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from jaxseq.inference.merge import merge_overlapping
from jaxseq.inference.windows import Window


def merge_timestamped_windows(
    windows: Sequence[tuple[Window, Sequence[int]]],
    *,
    rate: int,
    timestamp_begin: int,
    special_ids: frozenset[int],
    time_precision: float,
    decode: Callable[[list[int]], str],
) -> list[dict[str, Any]]:
    """Segments {"start", "end", "text", "tokens"} (seconds in the recording; "end" None for
    text that no timestamp closed; its text ids) from consecutive windows and their generated
    tokens.

    Args:
      windows: each window with its generated ids (timestamps, text, special tokens; the
        prompt may be included: special tokens are passed over).
      rate: samples per second of the windows' positions.
      timestamp_begin: id of `<|0.00|>`; special_ids: ids that are neither text nor time.
      time_precision: seconds per timestamp step (0.02 for Whisper's 30 s / 1,500 frames).
      decode: text of a list of text ids (leading spaces kept).
    """
    segments: list[dict[str, Any]] = []
    segment: dict[str, Any] = {"start": None, "end": None}
    carried: list[list[int]] = []  # the open segment's token runs, one per window
    time_offset, skip = 0.0, False

    def close(end: float | None) -> None:
        nonlocal segment, carried
        tokens = merge_overlapping(carried)
        segments.append(
            {"start": segment["start"], "end": end, "text": decode(tokens), "tokens": tokens}
        )
        segment, carried = {"start": None, "end": None}, []

    for window, ids in windows:
        ids = [int(i) for i in ids]
        length = (window.end - window.start) / rate
        left, right = window.left / rate, window.right / rate
        time_offset -= left
        first_allowed = timestamp_begin + left / time_precision if left else timestamp_begin
        last_allowed = None  # the first timestamp id inside the right stride, if any
        if right:
            right_start = length - right
            for token in reversed(ids):
                if token >= timestamp_begin:
                    if (
                        last_allowed is not None
                        and (token - timestamp_begin) * time_precision < right_start
                    ):
                        break
                    last_allowed = token
        run: list[int] = []
        for token in ids:
            if token >= timestamp_begin:
                time = round((token - timestamp_begin) * time_precision + time_offset, 2)
                if last_allowed is not None and token >= last_allowed:
                    skip = True  # in the right stride: this pair is the next window's
                elif skip or (carried and token < first_allowed):
                    skip = False
                elif segment["start"] is None:
                    segment["start"] = time
                elif time != segment["start"]:  # an end equal to the start is a start again
                    carried.append(run)
                    run = []
                    close(time)
            elif token not in special_ids:
                run.append(token)
        time_offset += length - right
        if run:
            carried.append(run)
        elif not any(carried):
            segment, carried = {"start": None, "end": None}, []
    if carried:
        close(None)
    return segments
