"""Log-mel frontend numerics against openai-whisper (torch CPU) on espeak-ng speech."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import whisper

from jaxseq.audio.espeak import synthesize
from jaxseq.audio.frontend import log_mel_numpy, mel_filters, num_frames
from jaxseq.audio.io import to_mono_resampled
from jaxseq.config import FrontendConfig

_UTTERANCES = [
    ("The quick brown fox jumps over the lazy dog.", "en-us", 175, 50),
    ("Seven, four, two; nine zero one.", "en-gb-scotland+f2", 220, 70),
    ("Hello there", "en-us+m3", 140, 30),
]
_TOL = 1e-4


@pytest.fixture(scope="module")
def speech() -> list[np.ndarray]:
    """Real speech at 16 kHz: float32 [num_samples] each, lengths not multiples of the hop."""
    out = []
    for text, voice, rate, pitch in _UTTERANCES:
        audio, sr = synthesize(text, voice=voice, rate=rate, pitch=pitch)
        out.append(to_mono_resampled(audio, sr, 16000))
    assert all(len(a) % 160 != 0 for a in out)
    return out


def _whisper(audio: np.ndarray, n_mels: int) -> np.ndarray:
    """Whisper's log-mel of the unpadded audio, transposed to [frames, n_mels]."""
    return whisper.log_mel_spectrogram(torch.from_numpy(audio), n_mels=n_mels).numpy().T


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_match_whisper_assets(n_mels):
    path = os.path.join(os.path.dirname(whisper.__file__), "assets", "mel_filters.npz")
    with np.load(path) as assets:
        want = assets[f"mel_{n_mels}"]
    got = mel_filters(16000, 400, n_mels)
    assert got.dtype == np.float32 and got.shape == (n_mels, 201)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_numpy_matches_whisper(speech, n_mels):
    cfg = FrontendConfig(n_mels=n_mels)
    for audio in speech:
        want = _whisper(audio, n_mels)
        got = log_mel_numpy(audio, cfg)
        assert got.dtype == np.float32
        assert got.shape == want.shape == (num_frames(len(audio), cfg), n_mels)
        assert want.max() - want.min() > 1.5  # real dynamic range, not a flat floor
        np.testing.assert_allclose(got, want, atol=_TOL, rtol=0)


def test_num_frames():
    cfg = FrontendConfig()
    assert num_frames(480000, cfg) == 3000
    assert num_frames(16159, cfg) == 100
    assert num_frames(201, cfg) == 1
