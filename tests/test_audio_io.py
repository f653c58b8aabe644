"""Audio loading: resampling and downmix against librosa, PCM scaling, and clear errors."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import soundfile as sf

from jaxseq.audio.io import AudioError, load_audio, to_mono_resampled


def _stereo_tone(sr: int, seconds: float = 0.5) -> np.ndarray:
    """[samples, 2]: a chirp on the left, a two-tone mix plus noise on the right."""
    t = np.arange(int(sr * seconds)) / sr
    left = 0.5 * np.sin(2 * np.pi * (200 + 800 * t) * t)
    right = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 3000 * t)
    right += 0.01 * np.random.default_rng(0).standard_normal(t.shape)
    return np.stack([left, right], axis=1).astype(np.float32)


def test_stereo_22050_matches_librosa_load(tmp_path):
    path = tmp_path / "stereo.wav"
    sf.write(path, _stereo_tone(22050), 22050, subtype="FLOAT")
    got = load_audio(path, 16000)
    want, _ = librosa.load(path, sr=16000, mono=True)
    assert got.dtype == np.float32 and got.ndim == 1
    assert got.shape == want.shape == (8000,)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_file_at_target_rate_is_not_resampled(tmp_path):
    path = tmp_path / "mono.wav"
    audio = _stereo_tone(16000)[:, 0]
    sf.write(path, audio, 16000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path, 16000), audio)


def test_int16_pcm_scaling_in_memory():
    pcm = np.array([-32768, -16384, 0, 16384, 32767], dtype=np.int16)
    got = to_mono_resampled(pcm, 16000, 16000)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, [-1.0, -0.5, 0.0, 0.5, 32767 / 32768])
    stereo = np.stack([pcm, np.zeros_like(pcm)], axis=1)  # [samples, 2]
    np.testing.assert_array_equal(to_mono_resampled(stereo, 16000, 16000), got / 2)
    pcm32 = np.array([-(2**31), 2**30], dtype=np.int32)
    np.testing.assert_array_equal(to_mono_resampled(pcm32, 8000, 8000), [-1.0, 0.5])


def test_int16_wav_file(tmp_path):
    pcm = (np.random.default_rng(1).standard_normal(4000) * 3000).astype(np.int16)
    path = tmp_path / "pcm16.wav"
    sf.write(path, pcm, 16000, subtype="PCM_16")
    np.testing.assert_array_equal(load_audio(path, 16000), pcm.astype(np.float32) / 32768)


def test_in_memory_resample_matches_librosa():
    audio = _stereo_tone(44100)  # [samples, 2]
    got = to_mono_resampled(audio, 44100, 16000)
    want = librosa.resample(audio.mean(axis=1), orig_sr=44100, target_sr=16000)
    assert got.shape == (8000,)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_missing_file_raises(tmp_path):
    path = tmp_path / "nope.wav"
    with pytest.raises(AudioError, match="not found") as err:
        load_audio(path, 16000)
    assert str(path) in str(err.value)


def test_corrupt_file_raises(tmp_path):
    path = tmp_path / "corrupt.wav"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(AudioError, match="cannot decode") as err:
        load_audio(path, 16000)
    assert str(path) in str(err.value)


def test_empty_file_raises(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match="empty") as err:
        load_audio(path, 16000)
    assert str(path) in str(err.value)


def test_wav_without_samples_raises(tmp_path):
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros((0, 1), np.float32), 16000)
    with pytest.raises(AudioError, match="no samples") as err:
        load_audio(path, 16000)
    assert str(path) in str(err.value)
