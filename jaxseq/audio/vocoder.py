"""Vocoders: Whisper-style log-mel spectrograms back to waveforms, outside the model.

A TTS model predicts the features `jaxseq.audio.frontend.log_mel_numpy` computes (float
[frames, n_mels], `(max(log10(mel_power), peak - 8) + 4) / 4`); a vocoder turns them into audio.

The interface is the `Vocoder` protocol: an object with a `sample_rate: int` attribute and a
`__call__(log_mel) -> audio` taking float [frames, n_mels] and returning float32 [samples] in
[-1, 1]. `load_vocoder(spec, frontend)` builds one from a config string:

  - `"griffin_lim"` (the default) or `"griffin_lim:N"`: `GriffinLim` with N iterations; no
    weights, deterministic, intelligible but phasey.
  - `"package.module:factory"`: a neural vocoder (HiFi-GAN, Vocos, ...) plugged in from any
    importable module. `factory(frontend)` is called with the `FrontendConfig` the model was
    trained on and must return a `Vocoder`: it loads its own weights, converts the Whisper
    log-mel to whatever its network expects (`log_mel_to_mel_power` gives the mel power), and
    returns float32 audio at its `sample_rate`.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import librosa
import numpy as np
import soundfile as sf

from jaxseq.config import FrontendConfig
from jaxseq.errors import JaxseqError

DEFAULT_VOCODER = "griffin_lim"
_PEAK = 0.95  # loudest sample a vocoder output is allowed (headroom for 16-bit PCM)
_SEED = 0  # Griffin-Lim's random initial phase, fixed so synthesis is reproducible
_SPEC_HELP = "use 'griffin_lim', 'griffin_lim:64' or 'package.module:factory'"


@runtime_checkable
class Vocoder(Protocol):
    """Turns one Whisper-style log-mel spectrogram into a waveform."""

    sample_rate: int

    def __call__(self, log_mel: np.ndarray) -> np.ndarray:
        """float [frames, n_mels] log-mel -> float32 [samples] in [-1, 1] at `sample_rate`."""
        ...


def log_mel_to_mel_power(log_mel: np.ndarray) -> np.ndarray:
    """Undoes the frontend's normalisation: mel power = 10 ** (4 * x - 4).

    Exact above the utterance's floor (its peak minus 8 log10 units); floored bins come back
    at the floor's power.

    Args:
      log_mel: float [frames, n_mels], as `log_mel_numpy` returns.

    Returns:
      float32 [n_mels, frames]: mel power, FREQUENCY-MAJOR (librosa's layout).
    """
    log_mel = np.asarray(log_mel, dtype=np.float64)
    if log_mel.ndim != 2:
        raise ValueError(f"log_mel must be [frames, n_mels], got shape {log_mel.shape}")
    return np.power(10.0, 4.0 * log_mel.T - 4.0).astype(np.float32)  # [n_mels, frames]


def _limit_peak(audio: np.ndarray, peak: float = _PEAK) -> np.ndarray:
    """Scales `audio` down so that max |audio| <= `peak`; quieter audio (and silence) is kept."""
    loudest = float(np.max(np.abs(audio), initial=0.0))
    if loudest > peak:
        audio = audio * (peak / loudest)
    return audio.astype(np.float32)


class GriffinLim:
    """Griffin-Lim phase reconstruction of the frontend's mel power spectrogram.

    The mel power is mapped back to a linear power spectrogram by librosa's non-negative least
    squares (`mel_to_stft`, with the frontend's Slaney filters), then phases are estimated by
    `librosa.griffinlim` from a fixed random start, so the same input gives the same audio.
    The output keeps the spectrogram's level (the log-mel is absolute), only scaled down if its
    peak would exceed 0.95.
    """

    def __init__(self, frontend: FrontendConfig, n_iter: int = 32):
        if n_iter < 1:
            raise ValueError(f"n_iter must be >= 1, got {n_iter}")
        self.frontend = frontend
        self.n_iter = n_iter
        self.sample_rate = frontend.sample_rate

    def __call__(self, log_mel: np.ndarray) -> np.ndarray:
        """float [frames, n_mels] -> float32 [frames * hop_length] in [-0.95, 0.95]."""
        cfg = self.frontend
        mel_power = log_mel_to_mel_power(log_mel)  # [n_mels, frames]
        if mel_power.shape[0] != cfg.n_mels:
            raise ValueError(f"log_mel must have {cfg.n_mels} mel bins, got {log_mel.shape}")
        frames = mel_power.shape[1]
        if frames == 0:
            return np.zeros((0,), dtype=np.float32)
        # The frontend computes frames + 1 STFT columns and drops the last; repeat the last frame
        # in its place so that `frames * hop` samples are exactly what the columns describe.
        mel_power = np.concatenate([mel_power, mel_power[:, -1:]], axis=1)  # [n_mels, frames+1]
        # librosa.feature.inverse.mel_to_audio, spelled out: its **kwargs go to the mel filters,
        # not to griffinlim, so it cannot take the fixed `random_state`.
        magnitude = librosa.feature.inverse.mel_to_stft(
            mel_power, sr=cfg.sample_rate, n_fft=cfg.n_fft, power=2.0
        )  # [n_fft // 2 + 1, frames + 1]
        audio = librosa.griffinlim(
            magnitude,
            n_iter=self.n_iter,
            hop_length=cfg.hop_length,
            n_fft=cfg.n_fft,
            window="hann",
            center=True,
            length=frames * cfg.hop_length,
            pad_mode="reflect",  # as the frontend's STFT
            init="random",
            random_state=_SEED,
        )  # [frames * hop_length]
        return _limit_peak(audio)


def _spec_error(spec: str, problem: str) -> JaxseqError:
    return JaxseqError(f"tts.vocoder={spec!r}: {problem}; {_SPEC_HELP}")


def load_vocoder(spec: str, frontend: FrontendConfig) -> Vocoder:
    """Builds the vocoder a config string names (see the module docstring).

    Args:
      spec: "griffin_lim", "griffin_lim:N" (N iterations), or "package.module:factory".
      frontend: the features the model predicts; passed to a factory as `factory(frontend)`.

    Raises:
      JaxseqError: naming `spec` and what to write, if it cannot be built.
    """
    spec = spec.strip()
    name, sep, arg = spec.partition(":")
    if name == "griffin_lim":
        if not sep:
            return GriffinLim(frontend)
        if not arg.isdigit() or int(arg) < 1:
            raise _spec_error(spec, f"the iteration count {arg!r} is not a positive integer")
        return GriffinLim(frontend, n_iter=int(arg))
    if not sep or not name or not arg:
        raise _spec_error(spec, "unknown vocoder")
    try:
        module = importlib.import_module(name)
    except ImportError as err:
        raise _spec_error(spec, f"cannot import module {name!r} ({err})") from err
    factory = getattr(module, arg, None)
    if not callable(factory):
        raise _spec_error(spec, f"module {name!r} has no callable {arg!r}")
    vocoder = factory(frontend)
    if not isinstance(vocoder, Vocoder):  # runtime_checkable: has sample_rate and __call__
        raise _spec_error(spec, f"{arg}(frontend) returned {type(vocoder).__name__}, not a Vocoder")
    return vocoder


def write_wav(path: str | os.PathLike, audio: np.ndarray, sample_rate: int) -> Path:
    """Writes float [samples] audio in [-1, 1] as 16-bit PCM WAV, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"audio must be [samples], got shape {audio.shape}")
    sf.write(path, audio, int(sample_rate), subtype="PCM_16")
    return path
