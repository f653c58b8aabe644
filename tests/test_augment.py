"""Waveform augmentation (jaxseq.audio.augment) against float64 NumPy references: durations,
pitches, SNRs, band energies, the mu-law formula, aligned convolution, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from jaxseq.audio import augment
from jaxseq.config import AugmentSpec
from jaxseq.config_checks import AUGMENT_RANGES

SR = 16000


def _tone(freq: float, seconds: float = 1.0, amplitude: float = 0.1) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(audio: np.ndarray) -> float:
    """The strongest frequency of a float64 FFT, to the bin (1 / duration Hz)."""
    spectrum = np.abs(np.fft.rfft(audio.astype(np.float64)))
    return float(np.fft.rfftfreq(audio.shape[0], 1 / SR)[np.argmax(spectrum)])


def _speech_like(rng: np.random.Generator, seconds: float = 1.0) -> np.ndarray:
    """Harmonics of a wandering pitch under a syllable-rate envelope, peak 0.05."""
    t = np.arange(int(seconds * SR)) / SR
    f0 = 120 + 30 * np.sin(2 * np.pi * 3 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / SR
    voice = sum(np.sin(k * phase) / k for k in range(1, 12))
    audio = voice * (0.55 + 0.45 * np.sin(2 * np.pi * 4 * t))
    return (0.05 * audio / np.max(np.abs(audio))).astype(np.float32)


def _snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    clean = clean.astype(np.float64)
    return 10 * np.log10(np.sum(clean**2) / np.sum((noisy.astype(np.float64) - clean) ** 2))


@pytest.mark.parametrize("factor", [0.8, 0.9, 1.25])
def test_speed_scales_duration_and_pitch_by_its_factor(factor):
    audio = _tone(500.0)
    out = augment.speed(audio, SR, factor)
    assert out.dtype == np.float32 and out.shape[0] == int(np.ceil(audio.shape[0] / factor))
    assert _peak_hz(out) == pytest.approx(500.0 * factor, abs=1.0)


def test_tempo_scales_duration_and_keeps_pitch_and_pitch_shift_the_reverse():
    audio, rng = _tone(500.0), np.random.default_rng(0)
    slow = augment.tempo(audio, SR, 0.8, rng)
    assert slow.shape[0] == pytest.approx(audio.shape[0] / 0.8, abs=SR * 0.01)
    assert _peak_hz(slow) == pytest.approx(500.0, abs=3.0)
    up = augment.pitch_shift(audio, SR, 3.0, rng)
    assert up.shape == audio.shape
    assert _peak_hz(up) == pytest.approx(500.0 * 2 ** (3 / 12), abs=3.0)


def test_gain_scales_the_level_and_rescales_what_would_clip():
    audio = _tone(300.0)
    np.testing.assert_allclose(augment.gain(audio, 6.0), audio * 10 ** (6 / 20), rtol=1e-6)
    loud = augment.gain(audio, 30.0)
    assert np.max(np.abs(loud)) == pytest.approx(1.0) and np.argmax(loud) == np.argmax(audio)


@pytest.mark.parametrize("color", ["white", "pink", "brown", "babble"])
@pytest.mark.parametrize("snr_db", [0.0, 12.5])
def test_noise_hits_its_snr(color, snr_db):
    rng = np.random.default_rng(1)
    clean = _speech_like(rng)
    babble = [_speech_like(rng, seconds) for seconds in (0.7, 1.3)]  # shorter and longer
    noisy = augment.add_noise(clean, SR, snr_db, color, np.random.default_rng(2), babble)
    assert noisy.dtype == np.float32 and noisy.shape == clean.shape
    assert abs(_snr_db(clean, noisy) - snr_db) < 0.5


def test_noise_colors_tilt_the_spectrum():
    """White is flat; pink and brown put more and more of their power at low frequencies."""
    silence = np.full(4 * SR, 1e-3, np.float32)  # a DC offset: the noise's level reference
    freqs = np.fft.rfftfreq(silence.shape[0], 1 / SR)
    tilt = {}
    for color in ("white", "pink", "brown"):
        noise = augment.add_noise(silence, SR, 0.0, color, np.random.default_rng(3)) - silence
        power = np.abs(np.fft.rfft(noise.astype(np.float64))) ** 2
        low, high = power[(freqs > 200) & (freqs < 400)], power[(freqs > 3200) & (freqs < 6400)]
        tilt[color] = 10 * np.log10(low.mean() / high.mean())  # dB, over 4 octaves
    assert abs(tilt["white"]) < 1.5
    assert tilt["white"] + 6 < tilt["pink"] < tilt["brown"] - 6


def test_babble_needs_utterances():
    with pytest.raises(ValueError, match="babble noise needs other utterances"):
        augment.add_noise(_tone(200.0), SR, 10.0, "babble", np.random.default_rng(0))


def test_convolve_with_a_delta_gives_back_the_input():
    audio = _speech_like(np.random.default_rng(4))
    delta = np.zeros(64)
    delta[9] = 1.0
    np.testing.assert_allclose(augment.convolve(audio, delta, 9), audio, atol=1e-7)
    echo = delta.copy()
    echo[40] = 0.5  # the direct path at 9, an echo 31 samples later
    expected = np.convolve(audio.astype(np.float64), echo)[9 : 9 + audio.shape[0]]
    np.testing.assert_allclose(augment.convolve(audio, echo, 9), expected, atol=1e-6)


def test_reverberation_keeps_length_and_alignment():
    click = np.zeros(SR, np.float32)
    click[4000] = 0.5
    ir, delay = augment.room_impulse_response(SR, 0.5, np.random.default_rng(5))
    assert np.argmax(np.abs(ir)) == delay  # the direct path is the strongest arrival
    wet = augment.reverberate(click, SR, 0.5, np.random.default_rng(5))
    assert wet.shape == click.shape and np.argmax(np.abs(wet)) == 4000
    assert np.sum(wet[4010:] ** 2) > 0.1 * np.sum(wet**2)  # a tail, not only the direct path
    # The room is the bank's: RT60 rounded to 0.05 s (10 steps), the room drawn with the rng,
    # its impulse response simulated with a generator seeded by the two.
    room = int(np.random.default_rng(5).integers(augment.ROOMS_PER_RT60))
    ir, delay = augment.room_impulse_response(SR, 0.5, np.random.default_rng([10, room]))
    expected = augment.convolve(click, ir, delay)
    np.testing.assert_array_equal(wet, expected / max(1.0, np.abs(expected).max()))
    np.testing.assert_array_equal(
        wet, augment.reverberate(click, SR, 0.52, np.random.default_rng(5))
    )


def test_telephone_keeps_only_the_telephone_band():
    noise = (0.1 * np.random.default_rng(6).standard_normal(2 * SR)).astype(np.float32)
    out = augment.telephone(noise, SR)
    assert out.shape == noise.shape
    freqs = np.fft.rfftfreq(noise.shape[0], 1 / SR)
    before = np.abs(np.fft.rfft(noise.astype(np.float64))) ** 2
    after = np.abs(np.fft.rfft(out.astype(np.float64))) ** 2

    def kept(low: float, high: float) -> float:
        band = (freqs >= low) & (freqs < high)
        return after[band].sum() / before[band].sum()

    assert kept(0, 300) < 0.03 and kept(3400, SR / 2) < 0.01
    assert kept(500, 3000) == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("bits", [8, 4])
def test_mu_law_matches_the_closed_form(bits):
    x = np.random.default_rng(7).uniform(-1, 1, 5000)
    mu = 2**bits - 1
    compressed = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)  # in [-1, 1]
    codes = np.ceil((compressed + 1) * mu / 2) - (mu + 1) // 2  # bits-bit signed integers
    y = 2 * codes / (mu + 1)
    expected = np.sign(y) / mu * ((1 + mu) ** np.abs(y) - 1)
    assert codes.min() >= -(2 ** (bits - 1)) and codes.max() <= 2 ** (bits - 1) - 1
    np.testing.assert_allclose(augment.mu_law(x.astype(np.float32), bits), expected, atol=1e-6)


def test_every_kind_is_deterministic_given_its_rng_and_never_clips():
    rng = np.random.default_rng(8)
    audio = _speech_like(rng) * 19  # peak 0.95
    babble = [_speech_like(rng)]
    for kind in AUGMENT_RANGES:
        spec = AugmentSpec(kind, colors=("pink", "babble"))
        outs = [augment.apply(audio, SR, spec, np.random.default_rng(s), babble) for s in (0, 0, 1)]
        np.testing.assert_array_equal(outs[0], outs[1], err_msg=kind)
        assert outs[0].dtype == np.float32 and np.max(np.abs(outs[0])) <= 1.0, kind
        if kind not in ("telephone", "mulaw"):  # these have no random part at their defaults
            assert not np.array_equal(outs[0], outs[2]), kind
