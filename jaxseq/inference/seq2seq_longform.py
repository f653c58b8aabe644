"""Chunked transcription of long recordings with a seq2seq model (Whisper, or one trained here).

The windows of each recording (or of each speech region) are decoded by
`jaxseq.inference.longform.decode_windows`, each as an utterance of its own (a Whisper window
padded to 30 s). Their token sequences are merged where consecutive windows agree
(`jaxseq.inference.merge`, the method of transformers' chunked Whisper pipeline), and the
regions' texts are joined. The text alone: timestamps need timestamp tokens, which this path
does not decode.

A Whisper recording is decoded with the prompt of its language: the given one, or with
"auto" the one detected on its first 30 s (`jaxseq.inference.language`); the recordings of
each language go through `decode_windows` together, the prompt a static option of
`predict_fn` (one compiled search per language).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxseq.inference.language import recording_languages
from jaxseq.inference.longform import decode_windows
from jaxseq.inference.merge import merge_overlapping
from jaxseq.inference.windows import Window
from jaxseq.tasks.seq2seq import Seq2SeqTask
from jaxseq.train.trained import Trained


def _text(model: Seq2SeqTask, regions: list[tuple[list[Window], list[Any]]]) -> str:
    """One recording's text from its regions' windows and their `predict_fn` rows."""
    parts = []
    for _, rows in regions:
        ids = [model.hypothesis_ids([x[None] for x in row])[0] for row in rows]
        parts.append(model.ids_to_text(np.asarray(merge_overlapping(ids), np.int64)))
    return " ".join(p for p in parts if p)


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
) -> list[dict[str, Any]]:
    """Transcripts of float waveforms [samples] of any length at the model's sample rate
    (windows of `chunk_seconds`, default the longest bucket: 30 s for Whisper, overlapping by
    `stride_seconds` on each side, default a sixth of the window), in openai-whisper's layout
    without segments: {"text", "language", "segments": []}.

    `language` (a code or "auto") and `task` ("transcribe" or "translate") choose a Whisper
    prompt, by default model.language and model.task; "language" is the prompt's (None for a
    model trained here). A collective with several processes: every process calls it, with
    its own waveforms (any number, also none)."""
    model = trained.task
    languages, order = recording_languages(trained, waves, language, batch_size=batch_size)
    texts = [""] * len(waves)
    for code in order:
        mine = [i for i, c in enumerate(languages) if c == code]
        options = model.eval_options(decoder=decoder, beam_size=beam_size)
        decoded = decode_windows(
            trained,
            [waves[i] for i in mine],
            options={**options, "prompt": model.prompt_for(code, task)},
            period=trained.frontend.hop_length,
            chunk_seconds=chunk_seconds,
            stride_seconds=stride_seconds,
            vad=vad,
            batch_size=batch_size,
        )
        for i, regions in zip(mine, decoded, strict=True):
            texts[i] = _text(model, regions)
    return [
        {"text": text, "language": code, "segments": []}
        for text, code in zip(texts, languages, strict=True)
    ]
