"""Chunked transcription of long recordings with a seq2seq model (Whisper, or one trained here).

The windows of each recording (or of each speech region) are decoded by
`jaxseq.inference.longform.decode_windows`, each as an utterance of its own (a Whisper window
padded to 30 s). Their token sequences are merged where consecutive windows agree
(`jaxseq.inference.merge`, the method of transformers' chunked Whisper pipeline), and the
regions' texts are joined. With timestamps (a Whisper checkpoint's, or a model trained here
with `model.timestamps`), the windows are merged on their timestamp tokens instead, and the
segments carry times.

A Whisper recording is decoded with the prompt of its language: the given one, or with
"auto" the one detected on its first 30 s (`jaxseq.inference.language`); the recordings of
each language go through `decode_windows` together, the prompt a static option of
`predict_fn` (one compiled search per language).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxseq.inference.chunked_words import add_chunked_word_timestamps
from jaxseq.inference.language import recording_languages
from jaxseq.inference.longform import decode_windows
from jaxseq.inference.merge import merge_overlapping
from jaxseq.inference.timestamp_merge import merge_timestamped_windows
from jaxseq.inference.windows import Window
from jaxseq.tasks.seq2seq import Seq2SeqTask
from jaxseq.train.trained import Trained

TIME_PRECISION = 0.02  # seconds per Whisper timestamp step (30 s over 1,500 positions)


def _text(model: Seq2SeqTask, regions: list[tuple[list[Window], list[Any]]]) -> str:
    """One recording's text from its regions' windows and their `predict_fn` rows."""
    parts = []
    for _, rows in regions:
        ids = [model.hypothesis_ids([x[None] for x in row])[0] for row in rows]
        parts.append(model.ids_to_text(np.asarray(merge_overlapping(ids), np.int64)))
    return " ".join(p for p in parts if p)


def _segments(
    model: Seq2SeqTask, regions: list[tuple[list[Window], list[Any]]], rate: int, seconds: float
) -> list[dict[str, Any]]:
    """One recording's segments, {"id", "start", "end", "text", "tokens"}, from windows decoded with
    timestamps: each region's merged on its timestamp tokens (`timestamp_merge`), its times
    moved to the region's start. A segment whose start timestamp fell in a stride starts where
    the one before it ended (or the region starts); one no timestamp closed ends with its
    region; times past the recording's end are moved to it."""
    tokenizer = model.tokenizer
    segments = []
    for plan, rows in regions:
        ids = [np.asarray(seq)[: int(n)] for seq, n in rows]
        offset = previous_end = plan[0].start / rate
        for seg in merge_timestamped_windows(
            [
                (w._replace(start=w.start - plan[0].start, end=w.end - plan[0].start), i)
                for w, i in zip(plan, ids, strict=True)
            ],
            rate=rate,
            timestamp_begin=tokenizer.timestamp_begin,
            special_ids=tokenizer.special_ids,
            time_precision=TIME_PRECISION,
            decode=model.segment_text,
        ):
            start = previous_end if seg["start"] is None else seg["start"] + offset
            end = plan[-1].end / rate if seg["end"] is None else seg["end"] + offset
            # Within the recording: a window padded to 30 s may see timestamps past its end.
            start = min(start, seconds)
            previous_end = min(max(end, start), seconds)
            segments.append(
                {
                    "id": len(segments),
                    "start": round(start, 2),
                    "end": round(previous_end, 2),
                    "text": seg["text"],
                    "tokens": seg["tokens"],
                }
            )
    return segments


def seq2seq_transcribe_long(
    trained: Trained,
    waves: list[np.ndarray],
    *,
    decoder: str | None,
    beam_size: int | None,
    language: str | None = None,
    task: str | None = None,
    chunk_seconds: float = 0.0,
    stride_seconds: float = 0.0,
    vad: bool = False,
    batch_size: int = 32,
    timestamps: bool | str = False,
) -> list[dict[str, Any]]:
    """Transcripts of float waveforms [samples] of any length at the model's sample rate
    (windows of `chunk_seconds`, default the longest bucket: 30 s for Whisper, overlapping by
    `stride_seconds` on each side, default a sixth of the window), in openai-whisper's layout:
    {"text", "language", "segments"}. With `timestamps` (Whisper; always for a model trained
    with model.timestamps) the windows are decoded with timestamp tokens and merged on them,
    and "segments" holds {"id", "start", "end", "text", "tokens"} (its text ids, as
    openai-whisper's segments hold theirs); else it is empty and the windows'
    tokens are merged where they overlap. `timestamps="word"` also gives each segment its
    "words" (`jaxseq.inference.chunked_words`).

    `language` (a code or "auto") and `task` ("transcribe" or "translate") choose a Whisper
    prompt, by default model.language and model.task; "language" is the prompt's (None for a
    model trained here). A collective with several processes: every process calls it, with
    its own waveforms (any number, also none)."""
    model = trained.task
    words = timestamps == "word"
    timestamps = bool(timestamps) or model.timed  # such a model writes them whatever is asked
    languages, order = recording_languages(trained, waves, language, batch_size=batch_size)
    rate = trained.frontend.sample_rate
    results: list[dict[str, Any]] = [{}] * len(waves)
    for code in order:
        mine = [i for i, c in enumerate(languages) if c == code]
        options = model.eval_options(decoder=decoder, beam_size=beam_size)
        options["prompt"] = model.prompt_for(code, task, timestamps)
        if timestamps:
            options["timestamps"] = True
        decoded = decode_windows(
            trained,
            [waves[i] for i in mine],
            options=options,
            period=trained.frontend.hop_length,
            chunk_seconds=chunk_seconds,
            stride_seconds=stride_seconds,
            vad=vad,
            batch_size=batch_size,
        )
        for i, regions in zip(mine, decoded, strict=True):
            if timestamps:
                segments = _segments(model, regions, rate, len(waves[i]) / rate)
                text = "".join(seg["text"] for seg in segments).strip()
            else:
                segments, text = [], _text(model, regions)
            results[i] = {"text": text, "language": code, "segments": segments}
    if words:
        add_chunked_word_timestamps(trained, waves, results, task=task, batch_size=batch_size)
    return results
