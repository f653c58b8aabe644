"""Frame-level cluster targets for HuBERT pre-training (Hsu et al., 2021): features of every
encoder frame → k-means → one int class per frame.

First iteration: `MfccFeatures`, 13 MFCCs + deltas + delta-deltas (39 values) per frame, each
frame the window of waveform samples that one output frame of the conv feature encoder sees
(400 samples, hop 320: 25 ms every 20 ms at 16 kHz for wav2vec2's stack), so that a waveform of
n samples gives exactly the encoder's `conv_output_lengths(n)` frames. Later iterations: any
callable `features(waveform) -> [frames, dim]`, e.g. a chosen layer of the previous model, is
injected; the k-means part is the same.

    model = fit_kmeans(waveforms, MfccFeatures(), n_clusters=100, seed=0)
    save_kmeans(model, "km.npz")
    labels = cluster_targets(waveform, load_kmeans("km.npz"), MfccFeatures())  # int32 [frames]

k-means is scikit-learn's MiniBatchKMeans with fairseq's `learn_kmeans.py` settings
(k-means++, 100 iterations, batch 10000, 20 initializations, no reassignment), seeded; applying
a model is a deterministic nearest-centroid search in float64.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import librosa
import numpy as np
import scipy.fft
import scipy.signal
from sklearn.cluster import MiniBatchKMeans

from jaxseq.errors import JaxseqError

Features = Callable[[np.ndarray], np.ndarray]  # waveform [samples] → float [frames, dim]


class ClusterTargetsError(JaxseqError):
    """A k-means file or feature set that cannot be used."""


@dataclass(frozen=True)
class MfccFeatures:
    """MFCC + Δ + ΔΔ per conv-encoder frame: a `Features` callable.

    The analysis window is the conv stack's receptive field and the hop its total stride (for
    wav2vec2's `conv_kernel`/`conv_stride`: 400 and 320 samples), unpadded, so frame i covers
    the same samples as the encoder's output frame i. Deltas are least-squares slopes over
    `delta_width` frames with the edge frames repeated (torchaudio's `compute_deltas`, as
    fairseq's MFCC dump uses).
    """

    sample_rate: int = 16000
    n_mfcc: int = 13
    n_mels: int = 40
    delta_width: int = 5
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)

    @property
    def hop(self) -> int:
        """Samples between frames: the product of the conv strides."""
        return int(np.prod(self.conv_stride))

    @property
    def window(self) -> int:
        """Samples per frame: the conv stack's receptive field."""
        window, step = 1, 1
        for kernel, stride in zip(self.conv_kernel, self.conv_stride, strict=True):
            window += (kernel - 1) * step
            step *= stride
        return window

    def settings(self) -> dict[str, Any]:
        """JSON-ready settings that `save_kmeans` stores beside the centroids."""
        return {"features": "mfcc", **dataclasses.asdict(self)}

    def __call__(self, waveform: np.ndarray) -> np.ndarray:
        """waveform float [samples] at `sample_rate` → float32 [frames, 3 · n_mfcc], frames =
        max((samples - window) // hop + 1, 0).

        The MFCCs are `librosa.feature.mfcc(y, sr, n_mfcc, n_fft=window, hop_length=hop,
        center=False, n_mels)`'s, computed from their parts (periodic Hann window, power
        spectrum, `librosa.filters.mel`, dB with an 80 dB floor, orthonormal DCT-II): importing
        librosa's feature and spectrum modules compiles their numba kernels, 40 s and more per
        process on a busy machine, for a one-line STFT.
        """
        y = np.asarray(waveform, np.float32)
        if y.ndim != 1:
            raise ClusterTargetsError(f"expected one waveform [samples], got shape {y.shape}")
        if len(y) < self.window:
            return np.zeros((0, 3 * self.n_mfcc), np.float32)
        frames = np.lib.stride_tricks.sliding_window_view(y, self.window)[:: self.hop]
        taper = scipy.signal.get_window("hann", self.window, fftbins=True)
        power = np.abs(np.fft.rfft(frames * taper, axis=1)) ** 2  # [frames, window // 2 + 1]
        mel_basis = librosa.filters.mel(sr=self.sample_rate, n_fft=self.window, n_mels=self.n_mels)
        db = 10.0 * np.log10(np.maximum(power @ mel_basis.T, 1e-10))  # [frames, n_mels]
        db = np.maximum(db, db.max() - 80.0)
        mfcc = scipy.fft.dct(db, type=2, norm="ortho", axis=1)[:, : self.n_mfcc]
        delta = _deltas(mfcc, self.delta_width)
        return np.concatenate([mfcc, delta, _deltas(delta, self.delta_width)], axis=1).astype(
            np.float32
        )


def _deltas(x: np.ndarray, width: int) -> np.ndarray:
    """torchaudio's `compute_deltas` over axis 0 of x [frames, dim]: Σ_k k · x[t + k] / Σ_k k²,
    k in [-(width - 1) / 2, (width - 1) / 2], edge frames repeated."""
    n = (width - 1) // 2
    padded = np.pad(x, ((n, n), (0, 0)), mode="edge")
    frames = len(x)
    total = sum(k * padded[n + k : n + k + frames] for k in range(-n, n + 1))
    return total / (2 * sum(k * k for k in range(1, n + 1)))


@dataclass(frozen=True)
class KMeansModel:
    """Centroids and the settings of the features they cluster."""

    centroids: np.ndarray  # float32 [n_clusters, dim]
    feature_settings: Mapping[str, Any]  # e.g. MfccFeatures().settings(); JSON-ready

    @property
    def n_clusters(self) -> int:
        return self.centroids.shape[0]


def fit_kmeans(
    waveforms: Iterable[np.ndarray],
    features: Features,
    n_clusters: int,
    feature_settings: Mapping[str, Any],
    seed: int = 0,
    max_frames: int = 1_000_000,
    n_init: int = 20,
    batch_size: int = 10_000,
    max_iter: int = 100,
) -> KMeansModel:
    """Fits k-means to the frames of a sample of waveforms.

    Args:
      waveforms: the sample to fit on, each float [samples].
      features: waveform → float [frames, dim] (`MfccFeatures()`, or a layer of a model).
      n_clusters: k.
      feature_settings: how `features` works, stored with the centroids (JSON-ready).
      seed: seeds the frame subsample and scikit-learn: the same seed, the same centroids.
      max_frames: at most this many frames (a seeded uniform subsample) are clustered.
      n_init, batch_size, max_iter: MiniBatchKMeans' settings (fairseq's defaults).
    Returns:
      KMeansModel.
    Raises:
      ClusterTargetsError: when there are fewer frames than clusters, or the feature sizes
        disagree between waveforms.
    """
    frames = [np.asarray(features(w), np.float32) for w in waveforms]
    if len({f.shape[1] for f in frames}) > 1:
        raise ClusterTargetsError(
            f"features of different sizes: {sorted({f.shape[1] for f in frames})}"
        )
    data = np.concatenate(frames, axis=0) if frames else np.zeros((0, 0), np.float32)
    if len(data) < n_clusters:
        raise ClusterTargetsError(
            f"{len(data)} frames for {n_clusters} clusters: fit on more (or longer) waveforms"
        )
    rng = np.random.default_rng(seed)
    if len(data) > max_frames:
        data = data[np.sort(rng.choice(len(data), max_frames, replace=False))]
    kmeans = MiniBatchKMeans(
        n_clusters=n_clusters,
        init="k-means++",
        max_iter=max_iter,
        batch_size=batch_size,
        tol=0.0,
        max_no_improvement=100,
        n_init=n_init,
        reassignment_ratio=0.0,
        compute_labels=False,
        random_state=seed,
    ).fit(data)
    return KMeansModel(kmeans.cluster_centers_.astype(np.float32), dict(feature_settings))


def assign_clusters(features: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The nearest centroid (squared Euclidean distance, float64, the lowest index on ties) of
    every frame: features float [frames, dim], centroids [n_clusters, dim] → int32 [frames]."""
    x = np.asarray(features, np.float64)
    c = np.asarray(centroids, np.float64)
    if x.ndim != 2 or x.shape[1] != c.shape[1]:
        raise ClusterTargetsError(
            f"features of shape {x.shape} for centroids of dimension {c.shape[1]}: were the "
            "features made with the settings the k-means model was fitted on?"
        )
    distances = (x**2).sum(1, keepdims=True) - 2 * x @ c.T + (c**2).sum(1)[None, :]
    return np.argmin(distances, axis=1).astype(np.int32)


def cluster_targets(waveform: np.ndarray, model: KMeansModel, features: Features) -> np.ndarray:
    """Targets of one waveform: int32 [frames], one cluster id per encoder frame."""
    return assign_clusters(features(waveform), model.centroids)


def save_kmeans(model: KMeansModel, path: str | Path) -> None:
    """Writes the centroids and the feature settings to one .npz file."""
    np.savez(
        Path(path),
        centroids=model.centroids,
        feature_settings=np.array(json.dumps(dict(model.feature_settings), sort_keys=True)),
    )


def load_kmeans(path: str | Path) -> KMeansModel:
    """Reads what `save_kmeans` wrote.

    Raises:
      ClusterTargetsError: naming the file, when it is missing or lacks a key.
    """
    path = Path(path)
    if not path.is_file():
        raise ClusterTargetsError(f"{path}: no such k-means file (written by save_kmeans)")
    with np.load(path) as data:
        missing = {"centroids", "feature_settings"} - set(data.files)
        if missing:
            raise ClusterTargetsError(
                f"{path}: lacks {sorted(missing)}; not a k-means file written by save_kmeans"
            )
        settings = json.loads(str(data["feature_settings"]))
        return KMeansModel(data["centroids"].astype(np.float32), settings)
