"""Spectrogram distortion against float64 oracles: mel cepstra, DTW, MCD and DTW-L1."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jaxseq.audio.distortion import dtw_l1, dtw_path, mel_cepstra, mel_cepstral_distortion


def _log_mel(rng: np.random.Generator, frames: int, n_mels: int = 80) -> np.ndarray:
    """float32 [frames, n_mels] in the frontend's range, smooth along time."""
    walk = np.cumsum(rng.normal(0.0, 0.1, size=(frames, n_mels)), axis=0)
    return np.clip(walk + rng.uniform(-0.5, 1.0, size=(1, n_mels)), -1.5, 1.5).astype(np.float32)


def _dct2_ortho(n: int) -> np.ndarray:
    """float64 [n, n] orthonormal DCT-II matrix: y = D @ x."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.sqrt(2.0 / n) * np.cos(np.pi * k * (2 * i + 1) / (2 * n))
    d[0] /= np.sqrt(2.0)
    return d


def _dtw_oracle(a: np.ndarray, b: np.ndarray) -> tuple[float, list[tuple[int, int]]]:
    """Plain-Python DTW: total cost and the path from (0, 0) to (n-1, m-1)."""
    n, m = len(a), len(b)
    cost = [[math.dist(a[i], b[j]) for j in range(m)] for i in range(n)]
    acc = [[math.inf] * (m + 1) for _ in range(n + 1)]
    acc[0][0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            acc[i][j] = cost[i - 1][j - 1] + min(acc[i - 1][j - 1], acc[i - 1][j], acc[i][j - 1])
    path = [(n - 1, m - 1)]
    i, j = n, m
    while (i, j) != (1, 1):
        steps = [(acc[i - 1][j - 1], i - 1, j - 1), (acc[i - 1][j], i - 1, j)]
        steps.append((acc[i][j - 1], i, j - 1))
        _, i, j = min(steps)
        path.append((i - 1, j - 1))
    return acc[n][m], path[::-1]


def test_mel_cepstra_matches_an_explicit_dct():
    log_mel = _log_mel(np.random.default_rng(0), 17)
    ln_amplitude = np.log(10.0) * (4.0 * log_mel.astype(np.float64) - 4.0) / 2  # ln amplitude
    want = (ln_amplitude @ _dct2_ortho(80).T)[:, 1:14]
    got = mel_cepstra(log_mel)
    assert got.dtype == np.float64 and got.shape == (17, 13)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)
    np.testing.assert_allclose(mel_cepstra(log_mel, num_coeffs=5), want[:, :5], atol=1e-10)


@pytest.mark.parametrize(("n", "m", "seed"), [(9, 14, 0), (12, 5, 1), (1, 6, 2), (7, 7, 3)])
def test_dtw_path_matches_a_python_oracle(n, m, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(n, 3)), rng.normal(size=(m, 3))
    want_cost, want_path = _dtw_oracle(a, b)
    path = dtw_path(a, b)
    assert path.shape[1] == 2 and np.issubdtype(path.dtype, np.integer)
    assert tuple(path[0]) == (0, 0) and tuple(path[-1]) == (n - 1, m - 1)
    assert np.all(np.diff(path, axis=0) >= 0)
    assert np.all(np.diff(path, axis=0).sum(axis=1) >= 1)  # every step moves
    cost = sum(np.linalg.norm(a[i] - b[j]) for i, j in path)
    assert cost == pytest.approx(want_cost, rel=1e-12)
    assert [tuple(p) for p in path] == want_path  # unique optimum for random continuous data


def test_mcd_of_identical_and_stretched_inputs_is_zero():
    x = _log_mel(np.random.default_rng(0), 40)
    assert mel_cepstral_distortion(x, x) == 0.0
    stretched = np.repeat(x, [1, 2, 3] * 13 + [1], axis=0)  # 40 frames -> 79, same content
    assert stretched.shape == (79, 80)
    assert mel_cepstral_distortion(stretched, x) == pytest.approx(0.0, abs=1e-9)
    other = _log_mel(np.random.default_rng(1), 40)
    assert mel_cepstral_distortion(other, x) > 5.0  # dB


def test_mcd_matches_a_hand_computation_on_two_frames():
    rng = np.random.default_rng(3)
    pred = rng.uniform(-1.0, 1.0, size=(2, 80))
    ref = pred.copy()
    ref[1, :] += np.linspace(0.0, 0.2, 80)  # frame 1 differs in shape; frame 0 is equal
    # The diagonal path (0, 0), (1, 1) is optimal: any other adds an off-diagonal pair's positive
    # cost. So MCD = the mean of the two frames' terms, and frame 0's is zero.
    d = _dct2_ortho(80)
    ln10 = np.log(10.0)
    c_pred = (ln10 * (4 * pred - 4) / 2) @ d.T
    c_ref = (ln10 * (4 * ref - 4) / 2) @ d.T
    frame1 = 10.0 / ln10 * np.sqrt(2.0 * np.sum((c_pred[1, 1:14] - c_ref[1, 1:14]) ** 2))
    want = (0.0 + frame1) / 2.0
    assert frame1 > 1.0
    assert mel_cepstral_distortion(pred, ref) == pytest.approx(want, rel=1e-12)


def test_dtw_l1():
    x = _log_mel(np.random.default_rng(0), 25)
    assert dtw_l1(x, x) == 0.0
    assert dtw_l1(x, x + 0.25) == pytest.approx(0.25, abs=1e-6)  # float32 rounding of x + 0.25
    assert dtw_l1(np.repeat(x, 2, axis=0), x) == 0.0


@pytest.mark.parametrize("fn", [mel_cepstral_distortion, dtw_l1])
def test_bad_shapes_raise(fn):
    with pytest.raises(ValueError, match=r"\(10, 80\) and \(10, 40\)"):
        fn(np.zeros((10, 80)), np.zeros((10, 40)))
    with pytest.raises(ValueError, match=r"\(0, 80\)"):
        fn(np.zeros((0, 80)), np.zeros((10, 80)))
    with pytest.raises(ValueError, match=r"\(80,\)"):
        fn(np.zeros(80), np.zeros((10, 80)))
