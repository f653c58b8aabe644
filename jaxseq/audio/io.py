"""Reading audio into float32 mono arrays at a fixed sample rate.

Files are read with soundfile (libsndfile: wav, flac, ogg, mp3 ...); formats it cannot read fall
back to `librosa.load` (audioread). Multi-channel audio is downmixed by averaging the channels and
resampled with `librosa.resample` (soxr), the same steps as `librosa.load(sr=..., mono=True)`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf

from jaxseq.errors import JaxseqError


class AudioError(JaxseqError):
    """An audio file is missing, unreadable or empty; the message names the file and a fix."""


def to_mono_resampled(audio: np.ndarray, orig_sr: int, sample_rate: int) -> np.ndarray:
    """Downmixes and resamples an in-memory waveform.

    Args:
      audio: [num_samples] or [num_samples, channels]; integer PCM (int16, int32, or unsigned
        8-bit) is scaled to [-1, 1], floating point is kept as is.
      orig_sr: sample rate of `audio` in Hz.
      sample_rate: wanted sample rate in Hz.

    Returns:
      float32 [num_samples * sample_rate / orig_sr]: the channel average, resampled with soxr.
    """
    audio = np.asarray(audio)
    if audio.ndim not in (1, 2):
        raise ValueError(f"audio must be [samples] or [samples, channels], got {audio.shape}")
    if audio.dtype == np.uint8:  # 8-bit PCM is unsigned, centered on 128
        audio = (audio.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(audio.dtype, np.signedinteger):
        audio = audio.astype(np.float32) / float(-np.iinfo(audio.dtype).min)
    elif np.issubdtype(audio.dtype, np.floating):
        audio = audio.astype(np.float32, copy=False)
    else:
        raise ValueError(f"unsupported audio dtype {audio.dtype}")
    if audio.ndim == 2:
        audio = audio.mean(axis=1, dtype=np.float32)  # [samples, channels] -> [samples]
    if orig_sr != sample_rate:
        audio = librosa.resample(audio, orig_sr=orig_sr, target_sr=sample_rate)
    return np.ascontiguousarray(audio, dtype=np.float32)


def _read(path: Path) -> tuple[np.ndarray, int]:
    """Returns ([num_samples, channels] float32, sample rate), trying soundfile then librosa."""
    try:
        audio, sr = sf.read(path, dtype="float32", always_2d=True)  # [samples, channels]
        return audio, int(sr)
    except Exception as sf_err:  # libsndfile cannot read it: let audioread try
        try:
            with warnings.catch_warnings():  # librosa warns that soundfile failed: we know
                warnings.simplefilter("ignore")
                audio, sr = librosa.load(path, sr=None, mono=False)  # [ch, samples] or [samples]
        except Exception as lr_err:
            why = ": ".join(filter(None, [type(lr_err).__name__, str(lr_err)]))
            raise AudioError(
                f"cannot decode audio file {path}: not a format soundfile reads ({sf_err}) "
                f"and librosa/audioread failed too ({why}). "
                "Check the file is not truncated or corrupt, or convert it to wav/flac."
            ) from None
        audio = np.atleast_2d(audio).T  # -> [samples, channels]
        return audio.astype(np.float32, copy=False), int(sr)


def load_audio(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """Loads an audio file as float32 mono at `sample_rate`.

    Args:
      path: any format soundfile (libsndfile) or librosa/audioread decodes.
      sample_rate: wanted sample rate in Hz; the file is resampled (soxr) if it differs.

    Returns:
      float32 [num_samples] in [-1, 1].

    Raises:
      AudioError: the file is missing, cannot be decoded, or holds no samples.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}. Check the path (and the manifest).")
    if path.stat().st_size == 0:
        raise AudioError(f"audio file is empty (0 bytes): {path}. Re-export or remove it.")
    audio, sr = _read(path)  # [samples, channels]
    if audio.shape[0] == 0:
        raise AudioError(f"audio file has no samples: {path}. Re-export or remove it.")
    return to_mono_resampled(audio, sr, sample_rate)
