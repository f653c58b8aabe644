"""data.augment (VTLP and time stretch) against a float64 NumPy reference, and in the grain
pipeline: deterministic, resumable, inside the buckets, off for evaluation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from jaxseq.config import ConfigError, FeatureAugmentConfig, load_config
from jaxseq.data.eval_batches import make_eval_batches
from jaxseq.data.feature_augment import (
    VTLP_BOUNDARY,
    augment_record,
    draw_factors,
    time_stretch,
    vtlp_warp,
)
from jaxseq.data.pipeline import make_train_iterator
from jaxseq.data.reading import Split
from jaxseq.text.vocab import CharVocab
from tests.conftest import REPO, TINY_CONFIG

RNG = np.random.default_rng(0)


def reference_vtlp(x: np.ndarray, alpha: float) -> np.ndarray:
    """Jaitly & Hinton's warp on the bin axis, float64: output bin j = input at W^-1(j)."""
    x = np.asarray(x, np.float64)  # [frames, M]
    top = x.shape[1] - 1
    b = VTLP_BOUNDARY * top
    x0 = b * min(alpha, 1.0) / alpha
    slope = (top - alpha * x0) / (top - x0)  # W's slope above x0
    out = np.empty_like(x)
    for j in range(top + 1):
        src = j / alpha if j <= alpha * x0 else top - (top - j) / slope
        out[:, j] = [np.interp(src, np.arange(top + 1), row) for row in x]
    return out


def reference_stretch(x: np.ndarray, factor: float) -> np.ndarray:
    """float64 linear resampling of the frames to round(n * factor), ends aligned."""
    x = np.asarray(x, np.float64)  # [n, M]
    n = len(x)
    new = max(1, round(n * factor))
    at = np.array([j * (n - 1) / (new - 1) for j in range(new)]) if new > 1 else np.zeros(1)
    return np.stack([np.interp(at, np.arange(n), x[:, m]) for m in range(x.shape[1])], axis=1)


def test_vtlp_known_answer_identity_and_reference():
    # 11 bins (bend at 8), alpha 2: W^-1(j) = j / 2 up to 8, then 4 + 3 * (j - 8).
    ramp = np.tile(np.arange(11.0), (2, 1))  # [2, 11], value = bin
    np.testing.assert_allclose(vtlp_warp(ramp, 2.0)[0], [*np.arange(9) / 2, 7, 10])
    x = RNG.normal(size=(30, 80)).astype(np.float32)
    assert vtlp_warp(x, 1.0) is x
    for alpha in (0.87, 0.93, 1.06, 1.12):
        out = vtlp_warp(x, alpha)
        assert out.shape == x.shape and out.dtype == np.float32
        np.testing.assert_allclose(out, reference_vtlp(x, alpha), rtol=1e-5, atol=1e-5)
    half = x.astype(np.float16)
    assert vtlp_warp(half, 1.1).dtype == np.float16


def test_time_stretch_identity_length_and_reference():
    ramp = np.arange(5.0)[:, None]  # [5, 1]
    np.testing.assert_allclose(time_stretch(ramp, 1.8)[:, 0], np.arange(9) / 2)
    x = RNG.normal(size=(37, 16)).astype(np.float32)
    assert time_stretch(x, 1.0) is x
    for factor in (0.87, 0.9, 1.1, 1.13):
        out = time_stretch(x, factor)
        assert out.shape == (round(37 * factor), 16) and out.dtype == np.float32
        np.testing.assert_allclose(out, reference_stretch(x, factor), rtol=1e-5, atol=1e-5)


def test_stretch_moves_frame_labels_with_the_frames():
    names = ["a", "b", "c"]
    segments = [[0, 3, "a"], [3, 5, "b"], [7, 10, "c"]]  # frames 5, 6 unlabelled
    labels = np.full(10, -1)  # per source frame
    for start, end, name in segments:
        labels[start:end] = names.index(name)
    record = {"id": "x", "features": RNG.normal(size=(10, 4)), "num_frames": 10}
    for factor in (0.6, 1.45):
        out = augment_record({**record, "segments": segments}, 1.0, factor)
        new = round(10 * factor)
        assert out["num_frames"] == new == len(out["features"])
        got = np.full(new, -1)
        for start, end, name in out["segments"]:
            got[start:end] = names.index(name)
        nearest = [round(j * 9 / (new - 1)) for j in range(new)]  # each frame's source frame
        np.testing.assert_array_equal(got, labels[nearest])


def test_config_keys_default_off_and_bad_ranges():
    default = load_config(TINY_CONFIG).data.augment
    assert default == FeatureAugmentConfig(vtlp=(1.0, 1.0), time_stretch=(1.0, 1.0), seed=0)
    cfg = load_config(TINY_CONFIG, ["data.augment.vtlp=[0.9,1.1]"]).data.augment
    assert cfg.vtlp == (0.9, 1.1)
    for override in ("data.augment.vtlp=[1.1,0.9]", "data.augment.time_stretch=[0.0,1.1]"):
        key = override.split("=")[0]
        with pytest.raises(ConfigError, match=f"'{key}'.*0 < low <= high"):
            load_config(TINY_CONFIG, [override])
    tts = REPO / "configs" / "tts_tiny.yaml"
    with pytest.raises(ConfigError, match="'data.augment.time_stretch'.*model.family=tts"):
        load_config(tts, ["data.augment.time_stretch=[0.9,1.1]"])


VOCAB = CharVocab.from_charset(load_config(TINY_CONFIG).prepare.text.charset)
BASE = dataclasses.replace(load_config(TINY_CONFIG).data, buckets=(512,), sort_pool_batches=1)


def batches(dataset, augment: FeatureAugmentConfig, n: int, seed: int = 3, cfg=BASE):
    it = make_train_iterator(
        dataset, "train", dataclasses.replace(cfg, augment=augment), VOCAB, seed=seed
    )
    out = [next(it) for _ in range(n)]
    it.close()
    return out


def test_pipeline_applies_the_reference_to_each_item(tiny_dataset):
    # Fixed factors (a range of one value): every item is warped by 1.1 and stretched by 1.12.
    # Stretching by > 1 keeps the order of lengths, so the plan holds the same items.
    assert max(Split(tiny_dataset, "train").index["num_frames"]) * 1.12 < 512
    fixed = FeatureAugmentConfig(vtlp=(1.1, 1.1), time_stretch=(1.12, 1.12))
    plain, augmented = (
        batches(tiny_dataset, FeatureAugmentConfig(), 3),
        batches(tiny_dataset, fixed, 3),
    )
    for p, a in zip(plain, augmented, strict=True):
        np.testing.assert_array_equal(p["labels"], a["labels"])
        for r, n in enumerate(p["feature_lengths"]):
            want = reference_stretch(reference_vtlp(p["features"][r, :n], 1.1), 1.12)
            assert a["feature_lengths"][r] == len(want) == round(n * 1.12)
            np.testing.assert_allclose(a["features"][r, : len(want)], want, atol=3e-3)
            assert not a["features"][r, len(want) :].any()
    # Evaluation batches are never augmented.
    cfg = dataclasses.replace(BASE, augment=fixed)
    (evaluated, _, _), (unaugmented, _, _) = (
        next(make_eval_batches(tiny_dataset, "valid", c, VOCAB)) for c in (cfg, BASE)
    )
    np.testing.assert_array_equal(evaluated["features"], unaugmented["features"])


def test_stretch_past_the_largest_bucket_is_left_unstretched(tiny_dataset):
    frames = Split(tiny_dataset, "train").index["num_frames"]  # [N]
    largest = int(frames.max())  # every item is kept; the longer ones cannot be stretched
    cfg = dataclasses.replace(BASE, buckets=(largest,))
    augment = FeatureAugmentConfig(time_stretch=(1.5, 1.5))
    records = np.arange(len(frames))
    factors = draw_factors(augment, len(frames), records, frames, largest, epoch=0)
    over = np.rint(frames * 1.5) > largest
    assert factors.unstretched == over.sum() > 0 and not over.all()
    want = np.where(over, frames, np.rint(frames * 1.5))
    assert len(frames) % cfg.batch_size == 0  # one epoch covers every item once
    epoch = batches(tiny_dataset, augment, len(frames) // cfg.batch_size, cfg=cfg)
    got = np.concatenate([b["feature_lengths"] for b in epoch])
    np.testing.assert_array_equal(np.sort(got), np.sort(want))


def test_determinism_and_resume_with_augmentation(tiny_dataset):
    augment = FeatureAugmentConfig(vtlp=(0.9, 1.1), time_stretch=(0.9, 1.1), seed=4)
    cfg = dataclasses.replace(BASE, augment=augment)
    k, n = 2, 3  # 3 batches an epoch: the resumed stretch crosses into the next epoch
    it = make_train_iterator(tiny_dataset, "train", cfg, VOCAB, seed=3)
    assert it.batches_per_epoch == 3
    first = [next(it) for _ in range(k)]
    state = it.get_state()
    expected = [next(it) for _ in range(n)]
    it.close()
    again = batches(tiny_dataset, augment, k + n)
    restored = make_train_iterator(tiny_dataset, "train", cfg, VOCAB, seed=3)
    restored.set_state(state)
    resumed = [next(restored) for _ in range(n)]
    restored.close()
    for x, y in zip(first + expected, again, strict=True):
        assert all(np.array_equal(x[key], y[key]) for key in x)
    for x, y in zip(expected, resumed, strict=True):
        assert all(np.array_equal(x[key], y[key]) for key in x)
    other = batches(tiny_dataset, dataclasses.replace(augment, seed=5), 1)[0]
    assert not np.array_equal(other["features"], first[0]["features"])
