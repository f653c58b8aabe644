"""CTC transcription of recordings of any length, with segment and word timestamps.

The windows of each recording (or of each speech region) are decoded by
`jaxseq.inference.longform.decode_windows`. The frames each window keeps (its middle, without
the strides) tile the recording, so they are concatenated into one best path per recording,
which is collapsed once: a token that straddles two windows is emitted once, by the window
whose middle holds its frames.

Times come from the frame alignment: a token sits at the frames of its run in the best path,
a word spans its characters' runs, and a segment is a run of words without a pause of
`segment_pause` seconds or more between them (and, with VAD, within one speech region).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from jaxseq.decoding.ctc import TokenSpan, ctc_prefix_beam_search, ctc_token_spans
from jaxseq.errors import JaxseqError
from jaxseq.inference.longform import decode_windows
from jaxseq.inference.windows import Window
from jaxseq.train.trained import Trained

SEGMENT_PAUSE = 0.5  # seconds between two words that start a new segment


def frame_period(trained: Trained) -> int:
    """Samples per encoder frame: the feature hop times the conv stem's strides, or a waveform
    encoder's conv strides (`wav2vec2.conv_stride`: 320, 20 ms at 16 kHz)."""
    if trained.frontend.kind == "waveform":
        return math.prod(trained.cfg.wav2vec2.conv_stride)
    return trained.frontend.hop_length * math.prod(trained.cfg.model.subsample_strides)


def ctc_transcribe_long(
    trained: Trained,
    waves: list[np.ndarray],
    *,
    decoder: str,
    beam_size: int,
    chunk_seconds: float = 0.0,
    stride_seconds: float = 0.0,
    vad: bool = False,
    batch_size: int = 32,
    segment_pause: float = SEGMENT_PAUSE,
) -> list[dict[str, Any]]:
    """Transcripts of float waveforms [samples] of any length at the model's sample rate, in
    openai-whisper's layout: {"text", "language", "segments": [{"id", "start", "end", "text",
    "words": [{"word", "start", "end", "probability"}]}]} (times in seconds).

    With `vad`, only the speech regions (`jaxseq.audio.vad.speech_regions`) are decoded, each
    on its own, as a model trained on single utterances needs; else the whole recording.
    Greedy decoding gives the times; prefix_beam decodes the concatenated windows' log-probs
    and gives the text alone ("segments" empty). A collective with several processes: every
    process calls it, with its own waveforms (any number, also none).
    """
    period, rate = frame_period(trained), trained.frontend.sample_rate
    options = trained.task.eval_options(decoder=decoder, beam_size=beam_size)
    decoded = decode_windows(
        trained,
        waves,
        options=options,
        period=period,
        chunk_seconds=chunk_seconds,
        stride_seconds=stride_seconds,
        vad=vad,
        batch_size=batch_size,
    )
    tokenizer, blank = trained.task.tokenizer, trained.task.tokenizer.blank_id
    results = []
    for regions in decoded:
        texts, segments = [], []
        for plan, rows in regions:
            kept = [_kept(window, row, period) for window, row in zip(plan, rows, strict=True)]
            joined = [np.concatenate(arrays) for arrays in zip(*kept, strict=True)]
            if options["decoder"] == "prefix_beam":
                (log_probs,) = joined  # [frames, vocab]
                beams = options["beam_size"]
                best = ctc_prefix_beam_search(log_probs, len(log_probs), beams, blank)
                texts.append(tokenizer.decode(best).strip())
                continue
            ids, scores = joined  # [frames] each
            spans = ctc_token_spans(ids, scores, len(ids), blank)
            words = _words(tokenizer, spans, plan[0].start, period, rate, segment_pause)
            segments += _segments(words, segment_pause)  # none across two regions
        for i, segment in enumerate(segments):
            segment["id"] = i
        texts += [s["text"] for s in segments]
        results.append(
            {"text": " ".join(t for t in texts if t), "language": None, "segments": segments}
        )
    return results


def _kept(window: Window, row: tuple[np.ndarray, ...], period: int) -> tuple[np.ndarray, ...]:
    """The frames of a window's middle, from its predict_fn row (arrays over frames, then the
    encoder length): drops the padding and the frames of its left and right strides.

    Frame f of a window covers its samples from f * `period` on. An encoder whose first frame
    needs more than `period` samples (Wav2Vec2's convs: 400 samples for a 320-sample stride)
    gives a frame or two fewer than the window's ceil(samples / period); those missing frames
    are at its end, within the right stride (or past the recording's end), so the middles still
    tile the recording."""
    *arrays, length = row
    length = int(length)
    expected = -(-(window.end - window.start) // period)
    if not expected - 2 <= length <= expected + 1:
        raise JaxseqError(
            f"a window of {window.end - window.start} samples gave {length} encoder frames, "
            f"not about {expected} (one per {period} samples): long-form CTC needs "
            "model.subsample_strides to match the encoder"
        )
    first, last = window.left // period, min(length, expected - window.right // period)
    return tuple(a[first:last] for a in arrays)


def _words(
    tokenizer: Any, spans: list[TokenSpan], start: int, period: int, rate: int, pause: float
) -> list[dict[str, Any]]:
    """Words of characters between spaces or pauses of `pause` seconds (a model trained on
    single utterances emits no space between two of them): each from its first character's
    run to its last one's, with the mean of their spikes' probabilities. Frame f is at
    sample `start` + f * `period`."""
    words, current = [], []

    def seconds(frame: int) -> float:
        return round((start + frame * period) / rate, 3)

    for span in [*spans, None]:
        char = None if span is None else tokenizer.decode([span.token])
        paused = (
            bool(current)
            and span is not None
            and (span.start - current[-1][1].end) * period / rate >= pause
        )
        if span is not None and char.strip() and not paused:
            current.append((char, span))
            continue
        if current:
            words.append(
                {
                    "word": " " + "".join(c for c, _ in current),
                    "start": seconds(current[0][1].start),
                    "end": seconds(current[-1][1].end),
                    "probability": float(np.mean([math.exp(s.log_prob) for _, s in current])),
                }
            )
        current = [(char, span)] if paused and char.strip() else []
    return words


def _segments(words: list[dict[str, Any]], pause: float) -> list[dict[str, Any]]:
    """Runs of words with no pause of `pause` seconds or more inside."""
    groups: list[list[dict[str, Any]]] = []
    for word in words:
        if groups and word["start"] - groups[-1][-1]["end"] < pause:
            groups[-1].append(word)
        else:
            groups.append([word])
    return [
        {
            "id": 0,  # numbered by the caller
            "start": group[0]["start"],
            "end": group[-1]["end"],
            "text": "".join(w["word"] for w in group).strip(),
            "words": group,
        }
        for group in groups
    ]
