"""Objective distortion between a predicted and a reference Whisper-style log-mel spectrogram.

TTS generation picks its own length, so the two spectrograms are aligned by dynamic time warping
(`librosa.sequence.dtw` on a Euclidean frame-distance matrix) before they are compared:

  - `mel_cepstral_distortion`: MCD in dB over mel cepstra (c1..c13 by default, c0 dropped).
  - `dtw_l1`: mean absolute log-mel difference.
"""

from __future__ import annotations

import librosa
import numpy as np
import scipy.fft
from scipy.spatial.distance import cdist

_MCD_SCALE = 10.0 / np.log(10.0)  # natural-log cepstra -> dB


def _check_pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 copies of two [frames, dim] arrays; ValueError naming the shapes if they differ."""
    pred = np.asarray(pred, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if pred.ndim != 2 or ref.ndim != 2 or pred.shape[1] != ref.shape[1]:
        raise ValueError(
            f"need two 2-D [frames, n_mels] arrays with the same n_mels, got {pred.shape} and "
            f"{ref.shape}"
        )
    if pred.shape[0] == 0 or ref.shape[0] == 0:
        raise ValueError(f"need at least one frame each, got {pred.shape} and {ref.shape}")
    return pred, ref


def mel_cepstra(log_mel: np.ndarray, num_coeffs: int = 13) -> np.ndarray:
    """Mel cepstra of a Whisper-style log-mel: orthonormal DCT-II of ln(mel amplitude)
    (half the natural log of the mel power).

    Args:
      log_mel: float [frames, n_mels] (`(log10(mel power) + 4) / 4`).
      num_coeffs: cepstra kept, c1..c_num_coeffs (c0, the frame energy, is dropped).

    Returns:
      float64 [frames, num_coeffs].
    """
    log_mel = np.asarray(log_mel, dtype=np.float64)
    if log_mel.ndim != 2:
        raise ValueError(f"log_mel must be [frames, n_mels], got shape {log_mel.shape}")
    if not 1 <= num_coeffs < log_mel.shape[1]:
        raise ValueError(f"num_coeffs must be in [1, {log_mel.shape[1] - 1}], got {num_coeffs}")
    # ln |amplitude| = ln(power) / 2, as cepstral distortion is conventionally defined
    ln_amplitude = np.log(10.0) * (4.0 * log_mel - 4.0) / 2.0  # [frames, n_mels]
    cepstra = scipy.fft.dct(ln_amplitude, type=2, norm="ortho", axis=-1)  # [frames, n_mels]
    return cepstra[:, 1 : num_coeffs + 1]


def dtw_path(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Minimum-cost monotonic alignment of the rows of `a` and `b` (Euclidean distance).

    Steps (1, 0), (0, 1) and (1, 1), all with weight 1; the path runs from (0, 0) to (n-1, m-1).

    Args:
      a: float [n, d]; b: float [m, d].

    Returns:
      int [path_len, 2]: (row of a, row of b) pairs in increasing order.
    """
    a, b = _check_pair(a, b)
    cost = cdist(a, b, metric="euclidean")  # [n, m]
    _, path = librosa.sequence.dtw(C=cost)  # [path_len, 2], end to start
    return np.ascontiguousarray(path[::-1], dtype=np.int64)


def mel_cepstral_distortion(
    pred_log_mel: np.ndarray, ref_log_mel: np.ndarray, num_coeffs: int = 13
) -> float:
    """Mel cepstral distortion in dB, averaged over the DTW path of the two cepstra.

    MCD = mean over aligned frames of (10 / ln 10) * sqrt(2 * sum_d (c_d - c'_d) ** 2).

    Args:
      pred_log_mel: float [n, n_mels]; ref_log_mel: float [m, n_mels].
      num_coeffs: cepstra compared, c1..c_num_coeffs.
    """
    pred, ref = _check_pair(pred_log_mel, ref_log_mel)
    pred_c = mel_cepstra(pred, num_coeffs)  # [n, num_coeffs]
    ref_c = mel_cepstra(ref, num_coeffs)  # [m, num_coeffs]
    path = dtw_path(pred_c, ref_c)  # [path_len, 2]
    diff = pred_c[path[:, 0]] - ref_c[path[:, 1]]  # [path_len, num_coeffs]
    per_frame = _MCD_SCALE * np.sqrt(2.0 * np.sum(diff**2, axis=-1))  # [path_len]
    return float(per_frame.mean())


def dtw_l1(pred_log_mel: np.ndarray, ref_log_mel: np.ndarray) -> float:
    """Mean absolute log-mel difference over the DTW path of the log-mels themselves.

    Args:
      pred_log_mel: float [n, n_mels]; ref_log_mel: float [m, n_mels].

    Returns:
      The mean over aligned frame pairs and mel bins.
    """
    pred, ref = _check_pair(pred_log_mel, ref_log_mel)
    path = dtw_path(pred, ref)  # [path_len, 2]
    return float(np.abs(pred[path[:, 0]] - ref[path[:, 1]]).mean())
