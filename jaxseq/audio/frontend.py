"""Whisper-compatible log-mel features, in NumPy, computed offline (`prepare`) and for in-memory
audio (transcription).

They follow `whisper.log_mel_spectrogram` step by step: a periodic Hann window, a centered STFT
with reflect padding whose last frame is dropped (`stft[..., :-1]`), the power spectrum, Slaney
mel filters (`librosa.filters.mel`, the same matrix as Whisper's `mel_filters.npz`),
`log10(max(x, 1e-10))`, a floor at the utterance's maximum minus 8, then `(x + 4) / 4`.

Unlike Whisper, features are TIME-MAJOR: [num_frames, n_mels], with
`num_frames = num_samples // hop_length`.
"""

from __future__ import annotations

import functools

import librosa
import numpy as np

from jaxseq.config import FrontendConfig

_LOG_FLOOR = 1e-10  # power floor before log10
_DYNAMIC_RANGE = 8.0  # log10 units kept below each utterance's maximum


@functools.lru_cache(maxsize=16)
def _mel_filters_cached(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    filters = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels)
    filters = filters.astype(np.float32)
    filters.flags.writeable = False  # shared by every caller
    return filters


def mel_filters(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Slaney-normalized mel filter bank (cached; read-only).

    Returns:
      float32 [n_mels, n_fft // 2 + 1].
    """
    return _mel_filters_cached(int(sample_rate), int(n_fft), int(n_mels))


def num_frames(num_samples: int, cfg: FrontendConfig) -> int:
    """Number of feature frames for `num_samples` samples: `num_samples // hop_length`."""
    return num_samples // cfg.hop_length


def _normalize_numpy(log_spec: np.ndarray) -> np.ndarray:
    log_spec = np.maximum(log_spec, log_spec.max() - _DYNAMIC_RANGE)
    return (log_spec + 4.0) / 4.0


def log_mel_numpy(audio: np.ndarray, cfg: FrontendConfig) -> np.ndarray:
    """Log-mel features of one utterance, on the host.

    Args:
      audio: float [num_samples] at `cfg.sample_rate`; needs num_samples > n_fft // 2 (the
        reflect padding of a centered STFT).

    Returns:
      float32 [num_samples // hop_length, n_mels].
    """
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"audio must be [num_samples], got shape {audio.shape}")
    stft = librosa.stft(
        audio,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        window="hann",  # periodic (scipy fftbins=True), as torch.hann_window
        center=True,
        pad_mode="reflect",
    )  # [n_fft // 2 + 1, num_samples // hop + 1] complex64
    power = np.abs(stft[:, :-1]) ** 2  # [freq, frames]; the last frame is dropped like Whisper
    mel = mel_filters(cfg.sample_rate, cfg.n_fft, cfg.n_mels) @ power  # [n_mels, frames]
    log_spec = np.log10(np.maximum(mel, _LOG_FLOOR))
    return np.ascontiguousarray(_normalize_numpy(log_spec).T, dtype=np.float32)  # [frames, mels]
