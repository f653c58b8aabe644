"""SpecAugment against a float64 NumPy application of the same masks, plus mask properties."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq.audio.specaugment import spec_augment, spec_augment_masks
from jaxseq.config import SpecAugmentConfig

CFG = SpecAugmentConfig(
    enabled=True, num_freq_masks=2, max_freq_width=10, num_time_masks=2, max_time_width=20
)
ONE_MASK = dataclasses.replace(CFG, num_freq_masks=1, num_time_masks=1)
LENGTHS = np.array([120, 37, 90, 5, 120, 64])  # one utterance shorter than max_time_width
FRAMES, MELS = 120, 80

# Compiled once each (eager dispatch op by op is slow on CPU); test_jit_matches_eager checks
# that compiling changes nothing.
_augment = jax.jit(spec_augment, static_argnames="cfg")
_masks = jax.jit(spec_augment_masks, static_argnames=("num_frames", "n_mels", "cfg"))


def _features(seed: int = 0) -> np.ndarray:
    """[batch, frames, mels] float32, with non-zero padding so 'untouched' is meaningful."""
    rng = np.random.default_rng(seed)
    return rng.normal(1.0, 2.0, (len(LENGTHS), FRAMES, MELS)).astype(np.float32)


def _reference(features, lengths, time_mask, freq_mask) -> np.ndarray:
    """float64 NumPy: masked (valid) cells become the utterance's mean over its valid frames."""
    out = features.astype(np.float64)
    for b, length in enumerate(lengths):
        mean = out[b, :length].mean()
        cells = time_mask[b][:, None] | freq_mask[b][None, :]  # [frames, mels]
        cells[length:] = False
        out[b][cells] = mean
    return out


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, width) of each run of True in a 1-D boolean mask."""
    edges = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return [(int(s), int(e - s)) for s, e in zip(starts, ends, strict=True)]


def test_matches_numpy_reference():
    features = _features()
    for seed in range(5):
        rng = jax.random.key(seed)
        got = np.asarray(_augment(rng, jnp.asarray(features), jnp.asarray(LENGTHS), cfg=CFG))
        time_mask, freq_mask = _masks(rng, jnp.asarray(LENGTHS), FRAMES, MELS, cfg=CFG)
        assert time_mask.shape == (len(LENGTHS), FRAMES) and time_mask.dtype == jnp.bool_
        assert freq_mask.shape == (len(LENGTHS), MELS) and freq_mask.dtype == jnp.bool_
        want = _reference(features, LENGTHS, np.asarray(time_mask), np.asarray(freq_mask))
        assert got.dtype == np.float32 and got.shape == features.shape
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
        assert (got != features).any()  # something was masked


def test_jit_matches_eager():
    features, lengths, rng = jnp.asarray(_features(1)), jnp.asarray(LENGTHS), jax.random.key(3)
    eager = spec_augment(rng, features, lengths, CFG)
    np.testing.assert_array_equal(_augment(rng, features, lengths, cfg=CFG), eager)


def test_widths_and_placement():
    """One mask of each kind: a single run, width within limits, time runs inside valid frames."""
    keys = jax.random.split(jax.random.key(0), 200)
    draw = jax.jit(
        jax.vmap(lambda k: spec_augment_masks(k, jnp.asarray(LENGTHS), FRAMES, MELS, ONE_MASK))
    )
    time_masks, freq_masks = draw(keys)  # [keys, batch, frames], [keys, batch, mels]
    time_widths, freq_widths = [], []
    for time_mask, freq_mask in zip(np.asarray(time_masks), np.asarray(freq_masks), strict=True):
        for b, length in enumerate(LENGTHS):
            time_runs, freq_runs = _runs(time_mask[b]), _runs(freq_mask[b])
            assert len(time_runs) <= 1 and len(freq_runs) <= 1
            time_width = time_runs[0][1] if time_runs else 0
            assert 0 <= time_width <= min(ONE_MASK.max_time_width, length)
            assert not time_mask[b, length:].any()  # never in the padding
            time_widths.append(time_width)
            freq_widths.append(freq_runs[0][1] if freq_runs else 0)
    # Widths are drawn from all of U[0, max]: both ends occur.
    assert set(freq_widths) == set(range(ONE_MASK.max_freq_width + 1))
    assert {0, ONE_MASK.max_time_width} <= set(time_widths)


def test_total_masked_within_limits():
    time_mask, freq_mask = _masks(jax.random.key(7), jnp.asarray(LENGTHS), FRAMES, MELS, cfg=CFG)
    assert (np.asarray(time_mask).sum(1) <= CFG.num_time_masks * CFG.max_time_width).all()
    assert (np.asarray(freq_mask).sum(1) <= CFG.num_freq_masks * CFG.max_freq_width).all()


def test_padded_frames_untouched():
    features = _features(2)
    for seed in range(10):
        got = np.asarray(
            _augment(jax.random.key(seed), jnp.asarray(features), jnp.asarray(LENGTHS), cfg=CFG)
        )
        for b, length in enumerate(LENGTHS):
            np.testing.assert_array_equal(got[b, length:], features[b, length:])


def test_deterministic_and_independent_per_utterance():
    features, lengths = jnp.asarray(_features()), jnp.asarray(LENGTHS)
    a = _augment(jax.random.key(11), features, lengths, cfg=CFG)
    b = _augment(jax.random.key(11), features, lengths, cfg=CFG)
    c = _augment(jax.random.key(12), features, lengths, cfg=CFG)
    np.testing.assert_array_equal(a, b)
    assert (np.asarray(a) != np.asarray(c)).any()
    same = jnp.full((8,), FRAMES)
    time_mask, freq_mask = _masks(jax.random.key(0), same, FRAMES, MELS, cfg=CFG)
    assert len({tuple(row) for row in np.asarray(time_mask)}) > 1
    assert len({tuple(row) for row in np.asarray(freq_mask)}) > 1


def test_disabled_is_identity():
    features = jnp.asarray(_features())
    cfg = dataclasses.replace(CFG, enabled=False)
    out = spec_augment(jax.random.key(0), features, jnp.asarray(LENGTHS), cfg)
    assert out is features


def test_zero_masks_is_identity():
    features = jnp.asarray(_features())
    cfg = dataclasses.replace(CFG, num_freq_masks=0, num_time_masks=0)
    out = _augment(jax.random.key(0), features, jnp.asarray(LENGTHS), cfg=cfg)
    np.testing.assert_array_equal(out, features)
