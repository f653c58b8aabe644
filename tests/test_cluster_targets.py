"""HuBERT cluster targets (jaxseq.data.cluster_targets): MFCC frames aligned with the conv
encoder's frames, seeded k-means, and labels against a NumPy nearest-centroid oracle."""

import numpy as np
import pytest

from jaxseq.data.cluster_targets import (
    ClusterTargetsError,
    MfccFeatures,
    assign_clusters,
    cluster_targets,
    fit_kmeans,
    load_kmeans,
    save_kmeans,
)
from jaxseq.models.wav2vec2_features import conv_output_lengths

TINY = dict(conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2))  # the parity tests' conv stack


def _waves(count: int, seed: int = 0) -> list[np.ndarray]:
    """Noise bursts and tones of different lengths (0.3 to 1 s at 16 kHz)."""
    rng = np.random.default_rng(seed)
    waves = []
    for i in range(count):
        n = int(rng.integers(4800, 16000))
        t = np.arange(n) / 16000
        tone = np.sin(2 * np.pi * rng.uniform(100, 3000) * t) * (i % 2)
        waves.append((tone + 0.3 * rng.standard_normal(n)).astype(np.float32))
    return waves


@pytest.mark.parametrize("conv", [{}, TINY], ids=["wav2vec2", "tiny"])
def test_frames_match_the_conv_encoder(conv):
    mfcc = MfccFeatures(**conv) if not conv else MfccFeatures(n_mfcc=6, n_mels=8, **conv)
    kernel, stride = mfcc.conv_kernel, mfcc.conv_stride
    assert (mfcc.window, mfcc.hop) == ((400, 320) if not conv else (40, 20))
    rng = np.random.default_rng(1)
    lengths = [0, 1, mfcc.window - 1, mfcc.window, mfcc.window + mfcc.hop - 1]
    lengths += [mfcc.window + mfcc.hop, 1600, 16000, 16001, 23457]
    for n in lengths:
        features = mfcc(rng.standard_normal(n).astype(np.float32))
        expected = int(conv_output_lengths(np.array([n]), kernel, stride)[0])
        assert features.shape == (expected, 3 * mfcc.n_mfcc), n
        assert features.dtype == np.float32 and np.isfinite(features).all()


def test_labels_are_the_nearest_centroids():
    mfcc = MfccFeatures()
    model = fit_kmeans(_waves(6), mfcc, 8, mfcc.settings(), seed=0, n_init=3)
    assert model.centroids.shape == (8, 39)
    for wave in _waves(3, seed=5):
        labels = cluster_targets(wave, model, mfcc)
        features = mfcc(wave).astype(np.float64)
        distances = ((features[:, None, :] - model.centroids[None].astype(np.float64)) ** 2).sum(-1)
        np.testing.assert_array_equal(labels, distances.argmin(1))
        assert labels.dtype == np.int32 and len(labels) == len(features)
        np.testing.assert_array_equal(cluster_targets(wave, model, mfcc), labels)  # repeatable
    assert len(set(np.concatenate([cluster_targets(w, model, mfcc) for w in _waves(6)]))) > 4
    with pytest.raises(ClusterTargetsError, match="dimension 39"):
        assign_clusters(np.zeros((3, 13)), model.centroids)


def test_same_seed_same_centroids_and_save_load(tmp_path):
    mfcc, waves = MfccFeatures(), _waves(6)
    first = fit_kmeans(waves, mfcc, 8, mfcc.settings(), seed=3, max_frames=200, n_init=3)
    again = fit_kmeans(waves, mfcc, 8, mfcc.settings(), seed=3, max_frames=200, n_init=3)
    other = fit_kmeans(waves, mfcc, 8, mfcc.settings(), seed=4, max_frames=200, n_init=3)
    np.testing.assert_array_equal(first.centroids, again.centroids)
    assert not np.array_equal(first.centroids, other.centroids)
    save_kmeans(first, tmp_path / "km.npz")
    loaded = load_kmeans(tmp_path / "km.npz")
    np.testing.assert_array_equal(loaded.centroids, first.centroids)
    assert loaded.feature_settings["features"] == "mfcc"
    assert loaded.feature_settings["conv_stride"] == [5, 2, 2, 2, 2, 2, 2]
    assert MfccFeatures(**{k: v for k, v in loaded.feature_settings.items() if k != "features"})
    with pytest.raises(ClusterTargetsError, match="no such k-means file"):
        load_kmeans(tmp_path / "missing.npz")
    np.savez(tmp_path / "bad.npz", centroids=first.centroids)
    with pytest.raises(ClusterTargetsError, match="lacks \\['feature_settings'\\]"):
        load_kmeans(tmp_path / "bad.npz")


def test_injected_features_for_later_iterations():
    # A stand-in for "layer 6 of the previous model": any waveform → [frames, dim] callable.
    mfcc = MfccFeatures()

    def layer(wave: np.ndarray) -> np.ndarray:
        return np.tanh(mfcc(wave)[:, :20] / 50.0)

    settings = {"features": "layer", "layer": 6, "workdir": "runs/iteration1"}
    model = fit_kmeans(_waves(6), layer, 5, settings, seed=0, n_init=2)
    assert model.centroids.shape == (5, 20) and model.feature_settings == settings
    wave = _waves(1, seed=9)[0]
    np.testing.assert_array_equal(
        cluster_targets(wave, model, layer), assign_clusters(layer(wave), model.centroids)
    )
    with pytest.raises(ClusterTargetsError, match="3 frames for 5 clusters"):
        fit_kmeans([np.zeros(400 + 2 * 320, np.float32)], mfcc, 5, mfcc.settings())
