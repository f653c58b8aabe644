"""Transcripts of audio with a speech recognizer's workdir (`jaxseq transcribe`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxseq.audio.io import load_audio
from jaxseq.errors import JaxseqError
from jaxseq.evaluation.waveforms import predict_waveforms
from jaxseq.tasks.base import ASRTask
from jaxseq.train.trained import Trained, load_trained


def transcribe_waveforms(
    trained: Trained,
    waves: list[np.ndarray],
    *,
    decoder: str | None = None,
    beam_size: int | None = None,
    batch_size: int = 32,
) -> list[str]:
    """Transcripts of float waveforms [samples] at the model's sample rate, `batch_size` at a
    time (decoder and beam size default to the workdir's `eval` section). Calls with the same
    `trained` and options compile once per batch shape (feature bucket, power-of-two rows)."""
    if not isinstance(trained.task, ASRTask):
        raise JaxseqError(
            f"the workdir holds a {trained.cfg.model.family} model; transcribe needs a speech "
            "recognizer's workdir (ctc, seq2seq, whisper or rnn)"
        )
    return predict_waveforms(
        trained, waves, batch_size=batch_size, decoder=decoder, beam_size=beam_size
    )


def transcribe(
    workdir: str | Path,
    audio_paths: list[str | Path],
    *,
    step: int | None = None,
    decoder: str | None = None,
    beam_size: int | None = None,
) -> list[str]:
    """Transcripts of audio files (any format librosa reads; resampled to the model's rate)."""
    trained = load_trained(workdir, step=step)
    waves = [load_audio(p, trained.frontend.sample_rate) for p in audio_paths]
    return transcribe_waveforms(trained, waves, decoder=decoder, beam_size=beam_size)
