"""Transcripts of audio with a speech recognizer's workdir (`jaxseq transcribe`).

CTC and seq2seq (Whisper) models take recordings of any length: longer than one window
(`eval.chunk_seconds`), a recording is decoded in overlapping windows, merged on the frame
alignment for CTC (`jaxseq.inference.ctc_longform`, whose segments and words carry times) and
on the tokens for seq2seq (`jaxseq.inference.seq2seq_longform`, on timestamp tokens where the
model has them, in the given or detected language: `jaxseq.inference.language`). The RNN
family decodes each recording in one piece.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxseq.errors import JaxseqError
from jaxseq.evaluation.waveforms import predict_waveforms
from jaxseq.inference.ctc_longform import ctc_transcribe_long
from jaxseq.inference.seq2seq_longform import seq2seq_transcribe_long
from jaxseq.inference.whisper_sequential import transcribe_sequential
from jaxseq.tasks.base import ASRTask
from jaxseq.tasks.seq2seq import Seq2SeqTask
from jaxseq.train.trained import Trained


def transcribe_waveforms(
    trained: Trained,
    waves: list[np.ndarray],
    *,
    decoder: str | None = None,
    beam_size: int | None = None,
    batch_size: int = 32,
    return_timestamps: bool | str = False,
    return_language: bool = False,
    language: str | None = None,
    task: str | None = None,
    chunk_seconds: float | None = None,
    stride_seconds: float | None = None,
    vad: bool | None = None,
) -> list[Any]:
    """Transcripts of float waveforms [samples] at the model's sample rate, `batch_size` at a
    time (decoder, beam size, chunk, stride and vad default to the workdir's `eval` section).

    Returns one text per waveform or, with `return_timestamps` True ("word": also the words) or
    `return_language`, one result in openai-whisper's layout: {"text", "language", "segments":
    [{"id", "start", "end", "text", "words"}]}. Timestamps need a CTC model decoded greedily
    (segments and words from the frame alignment) or a seq2seq model with timestamp tokens
    (segments, merged over the windows as transformers' pipeline merges them; words aligned
    on the merged segments' text, `jaxseq.inference.chunked_words`); without
    them "segments" is empty (a seq2seq model trained with model.timestamps=true is decoded
    with its timestamps either way). With `eval.longform=sequential` a model with timestamp
    tokens transcribes window after window by its timestamps
    (`jaxseq.inference.whisper_sequential`), and its dicts always hold segments with times.
    "language" is a Whisper model's spoken language, given or detected (None for the other
    families). `language` (a code, or "auto": detected on each recording's first 30 s) and
    `task` ("transcribe", "translate") choose a Whisper model's prompt, by default
    model.language and model.task. Calls with the same `trained` and options compile once per
    batch shape (feature bucket, power-of-two rows) and prompt. A collective with several
    processes (each passes its own waveforms).
    """
    family = trained.cfg.model.family
    if not isinstance(trained.task, ASRTask):
        raise JaxseqError(
            f"the workdir holds a {family} model; transcribe needs a speech "
            "recognizer's workdir (ctc, seq2seq, whisper or rnn)"
        )
    if (language is not None or task is not None) and not isinstance(trained.task, Seq2SeqTask):
        raise JaxseqError(
            f"language and task choose a Whisper model's prompt; this workdir holds a {family} "
            "model: transcribe it without them"
        )
    ev = trained.cfg.eval
    if ev.longform == "sequential":  # timestamp tokens only (config check): segments with times
        return transcribe_sequential(
            trained,
            waves,
            decoder=decoder,
            return_timestamps=return_timestamps,
            return_language=return_language,
            language=language,
            task=task,
            batch_size=batch_size,
        )
    windows = {
        "chunk_seconds": ev.chunk_seconds if chunk_seconds is None else chunk_seconds,
        "stride_seconds": ev.stride_seconds if stride_seconds is None else stride_seconds,
        "vad": ev.vad if vad is None else vad,
        "batch_size": batch_size,
    }
    if family != "ctc":
        if return_timestamps and not trained.task.has_timestamps:
            raise JaxseqError(
                f"timestamps come from a CTC model's frame alignment or a seq2seq model's "
                f"timestamp tokens (Whisper, or trained with model.timestamps=true); this "
                f"workdir holds a {family} model without them: transcribe it without timestamps"
            )
        if isinstance(trained.task, Seq2SeqTask):
            results = seq2seq_transcribe_long(
                trained,
                waves,
                decoder=decoder,
                beam_size=beam_size,
                language=language,
                task=task,
                timestamps=return_timestamps,
                **windows,
            )
            if return_timestamps:
                return results
        else:
            texts = predict_waveforms(
                trained, waves, batch_size=batch_size, decoder=decoder, beam_size=beam_size
            )
            results = [{"text": t, "language": None, "segments": []} for t in texts]
        return results if return_language else [r["text"] for r in results]
    decoder = decoder or ev.decoder
    if return_timestamps and decoder != "greedy":
        raise JaxseqError(
            f"timestamps come from the best path: decode with decoder=greedy, not {decoder!r}"
        )
    results = ctc_transcribe_long(
        trained, waves, decoder=decoder, beam_size=int(beam_size or ev.beam_size), **windows
    )
    if not return_timestamps:
        if return_language:
            return [{**r, "segments": []} for r in results]
        return [r["text"] for r in results]
    if return_timestamps != "word":
        for r in results:
            for segment in r["segments"]:
                del segment["words"]
    return results
