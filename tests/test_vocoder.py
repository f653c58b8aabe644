"""Vocoders: the inverse normalisation, a Griffin-Lim round trip, `load_vocoder`, WAV output."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from jaxseq.audio.frontend import log_mel_numpy, mel_filters
from jaxseq.audio.vocoder import (
    GriffinLim,
    Vocoder,
    load_vocoder,
    log_mel_to_mel_power,
    write_wav,
)
from jaxseq.config import FrontendConfig
from jaxseq.errors import JaxseqError

CFG = FrontendConfig()


class _IdentityVocoder:
    """Returns the log-mel's first column as 'audio' (a stand-in neural vocoder)."""

    def __init__(self, frontend: FrontendConfig):
        self.sample_rate = frontend.sample_rate
        self.frontend = frontend

    def __call__(self, log_mel: np.ndarray) -> np.ndarray:
        return np.asarray(log_mel, dtype=np.float32)[:, 0]


def make_identity_vocoder(frontend: FrontendConfig) -> _IdentityVocoder:
    return _IdentityVocoder(frontend)


def make_not_a_vocoder(frontend: FrontendConfig) -> str:
    return "no sample_rate, no __call__"


def _harmonic(seconds: float = 1.0, f0: float = 220.0, sr: int = 16000) -> np.ndarray:
    """float32 [seconds * sr]: a few harmonics under a raised-sine envelope, peak ~0.41."""
    t = np.arange(int(seconds * sr)) / sr
    tone = sum(
        amp * np.sin(2 * np.pi * k * f0 * t + k)
        for k, amp in [(1, 0.3), (2, 0.15), (3, 0.1), (5, 0.05)]
    )
    return (np.sin(np.pi * t / seconds) ** 2 * tone).astype(np.float32)


def test_log_mel_to_mel_power_inverts_the_normalisation():
    rng = np.random.default_rng(0)
    power = 10.0 ** rng.uniform(-5.0, 2.0, size=(CFG.n_mels, 30))  # [n_mels, frames], float64
    # The frontend's normalisation by hand; the 7-decade range stays above the max - 8 floor.
    log_spec = np.log10(power)
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    log_mel = ((log_spec + 4.0) / 4.0).T  # [frames, n_mels]
    got = log_mel_to_mel_power(log_mel.astype(np.float32))
    assert got.dtype == np.float32 and got.shape == (CFG.n_mels, 30)
    np.testing.assert_allclose(got, power, rtol=1e-5, atol=0)


def test_log_mel_to_mel_power_matches_the_frontend_mel():
    audio = _harmonic()
    frame = audio[12 * 160 - 200 : 12 * 160 + 200]  # frame 12, centred on sample 12 * hop
    stft = np.abs(np.fft.rfft(frame * np.hanning(401)[:-1])) ** 2  # [freq], periodic Hann
    want = mel_filters(CFG.sample_rate, CFG.n_fft, CFG.n_mels) @ stft  # [n_mels]
    got = log_mel_to_mel_power(log_mel_numpy(audio, CFG))[:, 12]
    above_floor = want > want.max() * 1e-6
    np.testing.assert_allclose(got[above_floor], want[above_floor], rtol=1e-3)


@pytest.fixture(scope="module")
def round_trip():
    audio = _harmonic()
    log_mel = log_mel_numpy(audio, CFG)  # [100, 80]
    vocoder = GriffinLim(CFG, n_iter=32)
    out = vocoder(log_mel)
    return log_mel, out, vocoder


def test_griffin_lim_round_trip(round_trip):
    log_mel, out, _ = round_trip
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(len(out) - len(log_mel) * CFG.hop_length) < CFG.hop_length
    peak = float(np.abs(out).max())
    assert 0.1 < peak <= 0.95  # the level is kept: the input's peak is 0.41
    again = log_mel_numpy(out, CFG)
    frames = min(len(again), len(log_mel))
    want, got = log_mel[2 : frames - 2], again[2 : frames - 2]  # [frames - 4, n_mels]
    error = np.abs(got - want)
    # Measured (librosa 0.11, 32 iterations, seed 0): 0.0575 over all bins, 59% of which sit at
    # the max - 8 floor; 0.0093 over the strong bins (within 2 log10 units of the peak), where a
    # single iteration (random phase, one projection) measures 0.059.
    assert error.mean() < 0.08, error.mean()
    strong = want > log_mel.max() - 0.5
    assert strong.sum() > 100
    assert error[strong].mean() < 0.02, error[strong].mean()


def test_griffin_lim_is_deterministic(round_trip):
    log_mel, out, vocoder = round_trip
    np.testing.assert_array_equal(vocoder(log_mel), out)


def test_griffin_lim_limits_the_peak_and_keeps_silence():
    loud = 3.0 * _harmonic()  # peak ~1.2
    out = GriffinLim(CFG, n_iter=4)(log_mel_numpy(loud, CFG))
    np.testing.assert_allclose(np.abs(out).max(), 0.95, rtol=1e-6)
    # An all-floor log-mel (digital silence) gives near-silence, not a normalised blast.
    silence = log_mel_numpy(np.zeros(8000, np.float32), CFG)
    quiet = GriffinLim(CFG, n_iter=4)(silence)
    assert quiet.shape == (8000,) and np.all(np.isfinite(quiet))
    assert np.abs(quiet).max() < 1e-3


def test_load_vocoder_griffin_lim():
    default = load_vocoder("griffin_lim", CFG)
    assert isinstance(default, GriffinLim) and default.n_iter == 32
    assert default.sample_rate == CFG.sample_rate
    eight = load_vocoder("griffin_lim:8", CFG)
    assert isinstance(eight, GriffinLim) and eight.n_iter == 8


def test_load_vocoder_factory():
    cfg = FrontendConfig(sample_rate=22050, n_mels=4)
    vocoder = load_vocoder("tests.test_vocoder:make_identity_vocoder", cfg)
    assert isinstance(vocoder, Vocoder)
    assert vocoder.frontend is cfg and vocoder.sample_rate == 22050
    np.testing.assert_array_equal(vocoder(np.eye(3, 4)), [1.0, 0.0, 0.0])


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("wavenet", "unknown vocoder"),
        ("griffin_lim:fast", "not a positive integer"),
        ("griffin_lim:0", "not a positive integer"),
        ("no_such_package_xyz.vocoders:make", "cannot import"),
        ("tests.test_vocoder:no_such_factory", "no callable"),
        ("tests.test_vocoder:make_not_a_vocoder", "not a Vocoder"),
        ("tests.test_vocoder:", "unknown vocoder"),
    ],
)
def test_load_vocoder_bad_specs(spec, problem):
    with pytest.raises(JaxseqError) as err:
        load_vocoder(spec, CFG)
    message = str(err.value)
    assert repr(spec) in message and problem in message
    assert "'griffin_lim:64'" in message and "package.module:factory" in message


def test_write_wav(tmp_path):
    audio = (0.5 * np.sin(np.linspace(0, 200, 4000))).astype(np.float32)
    path = write_wav(tmp_path / "a" / "b" / "x.wav", audio, 22050)
    back, sr = sf.read(path, dtype="float32")
    info = sf.info(path)
    assert sr == 22050 and info.subtype == "PCM_16"
    assert back.shape == audio.shape
    np.testing.assert_allclose(back, audio, atol=1 / 32767, rtol=0)
