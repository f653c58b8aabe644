"""On-the-fly augmentation of training log-mel features (`data.augment`), on the host.

Two per-item transforms of the stored features [frames, n_mels], both linear interpolation:

VTLP (vocal-tract-length perturbation, Jaitly & Hinton 2013) warps the frequency axis by a
factor alpha with the paper's piecewise-linear map, applied to the mel-bin coordinate
x in [0, top] (bin centres, top = n_mels - 1) instead of to Hz:

    W(x) = alpha * x                                           for x <= x0,
    W(x) = top - (top - alpha * x0) / (top - x0) * (top - x)   above x0 = b * min(alpha, 1) / alpha,

with the boundary b = VTLP_BOUNDARY * top, so W(0) = 0 and W(top) = top: nothing leaves the
axis. Output bin j is the input interpolated at W^-1(j); alpha > 1 moves the spectrum up (a
shorter vocal tract). alpha = 1 returns the features unchanged.

Time stretch by a factor f: n frames become n' = max(1, rint(n * f)) (halves to even), output
frame j the input interpolated at p_j = j * (n - 1) / (n' - 1) (the first and last frames are
kept). Per-frame labels (`segments`) follow: output frame j carries the label of source frame
rint(p_j). Timed targets (seq2seq with timestamps) are found later in the stretched features.

The factors are drawn when an epoch is planned, since a stretched item's length decides its
bucket: `np.random.default_rng([data.augment.seed, epoch, 2]).uniform` once per record of the
split, indexed by record number. An item's factors are thus a function of (seed, epoch, record)
alone, never of the process, the worker count or where a run resumed. (grain's `random_map`
seeds a generator per element of the map, here a whole batch, after its length is planned.)
An item that a stretch would make longer than the largest bucket is left unstretched in that
epoch (nothing is cropped or dropped); the plan logs how many.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from jaxseq.config import FeatureAugmentConfig

# Where the warp's second piece starts, as a fraction of the mel axis: the paper's 4.8 kHz of an
# 8 kHz band lies at about 0.84 of a Slaney mel axis over 0-8 kHz.
VTLP_BOUNDARY = 0.8
_STREAM = 2  # the draws' generator is default_rng([seed, epoch, _STREAM]); packing uses 1


def augment_enabled(cfg: FeatureAugmentConfig) -> bool:
    """Whether either range differs from (1, 1)."""
    return tuple(cfg.vtlp) != (1.0, 1.0) or tuple(cfg.time_stretch) != (1.0, 1.0)


class EpochFactors(NamedTuple):
    """One epoch's factors for the kept items (see `draw_factors`)."""

    warp: np.ndarray  # float64 [K] VTLP alpha
    stretch: np.ndarray  # float64 [K] time-stretch factor (1 where it would pass the bucket)
    frames: np.ndarray  # int64 [K] frames after the stretch
    unstretched: int  # items whose drawn stretch was undone (it would pass the largest bucket)


def draw_factors(
    cfg: FeatureAugmentConfig,
    num_records: int,
    records: np.ndarray,
    frames: np.ndarray,
    max_frames: int,
    epoch: int,
) -> EpochFactors:
    """The factors of one epoch for the items `records` (int [K] record numbers of a split of
    `num_records`, `frames` int [K] their frames, each at most `max_frames`)."""
    rng = np.random.default_rng([cfg.seed, epoch, _STREAM])
    warp = rng.uniform(*cfg.vtlp, num_records)[records]  # [K]
    stretch = rng.uniform(*cfg.time_stretch, num_records)[records]  # [K]
    stretched = stretched_length(frames, stretch)  # [K]
    over = stretched > max_frames
    stretch[over] = 1.0
    return EpochFactors(warp, stretch, np.where(over, frames, stretched), int(over.sum()))


def stretched_length(frames: Any, factor: Any) -> np.ndarray:
    """max(1, rint(frames * factor)), elementwise: the frames after a time stretch."""
    return np.maximum(1, np.rint(np.asarray(frames) * factor)).astype(np.int64)


def vtlp_warp(features: np.ndarray, alpha: float, boundary: float = VTLP_BOUNDARY) -> np.ndarray:
    """`features` [frames, n_mels] with the mel axis warped by `alpha` (module docstring);
    the same shape and dtype, interpolated in float32."""
    if alpha == 1.0:
        return features
    top = features.shape[1] - 1
    x0 = boundary * top * min(alpha, 1.0) / alpha
    # W is linear between its knots 0 -> 0, x0 -> alpha * x0, top -> top: so is W^-1.
    source = np.interp(np.arange(top + 1), [0.0, alpha * x0, top], [0.0, x0, top])  # [n_mels]
    return _lerp(features.astype(np.float32), source, axis=1).astype(features.dtype)


def time_stretch(features: np.ndarray, factor: float) -> np.ndarray:
    """`features` [n, n_mels] resampled to [stretched_length(n, factor), n_mels] (module
    docstring), in the same dtype, interpolated in float32."""
    n = len(features)
    positions = _stretch_positions(n, int(stretched_length(n, factor)))
    if len(positions) == n:
        return features
    return _lerp(features.astype(np.float32), positions, axis=0).astype(features.dtype)


def stretch_segments(segments: list[list], frames: int, new_frames: int) -> list[list]:
    """Per-frame label spans [start, end, label] (end exclusive) of `frames` frames, after a
    time stretch to `new_frames`: each output frame carries its nearest source frame's label;
    spans left empty are dropped."""
    if new_frames == frames:
        return segments
    source = np.rint(_stretch_positions(frames, new_frames))  # [new_frames]
    out = []
    for start, end, label in segments:
        a, b = np.searchsorted(source, [start, end])
        if a < b:
            out.append([int(a), int(b), label])
    return out


def augment_record(record: dict[str, Any], warp: float, stretch: float) -> dict[str, Any]:
    """`record` (as `decode_record` gives it) with its features warped by `warp` (VTLP) and
    stretched in time by `stretch`; `num_frames` and `segments` follow the stretch."""
    features = vtlp_warp(record["features"], warp)  # [n, n_mels]
    frames = len(features)
    features = time_stretch(features, stretch)  # [n', n_mels]
    return {
        **record,
        "features": features,
        "num_frames": len(features),
        "segments": stretch_segments(record["segments"], frames, len(features)),
    }


def _stretch_positions(n: int, new_n: int) -> np.ndarray:
    """float64 [new_n] source positions j * (n - 1) / (new_n - 1) of a stretch."""
    return np.arange(new_n) * (n - 1) / max(new_n - 1, 1)


def _lerp(x: np.ndarray, positions: np.ndarray, axis: int) -> np.ndarray:
    """`x` linearly interpolated at fractional `positions` (in [0, size - 1]) along `axis`."""
    lo = np.floor(positions).astype(np.int64)
    hi = np.minimum(lo + 1, x.shape[axis] - 1)
    shape = [1] * x.ndim
    shape[axis] = -1
    w = (positions - lo).astype(x.dtype).reshape(shape)
    return np.take(x, lo, axis) * (1 - w) + np.take(x, hi, axis) * w
