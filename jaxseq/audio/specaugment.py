"""SpecAugment (Park et al., 2019) frequency and time masks, on device, per utterance.

All randomness comes from a `jax.random` key, so the masks are reproducible and jit-compatible.
`spec_augment_masks` returns the masks themselves, so tests (and plots) can recompute exactly
what `spec_augment` did.

Masked values are set to the utterance's mean feature value over its valid frames (one scalar
per utterance, over all mel bins): for log-mel features that is a "typical" level rather than
the 0 of the original paper, which for Whisper-scaled features is an arbitrary loud-ish value.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxseq.config import SpecAugmentConfig


def _band_masks(
    rng: jax.Array, size: jax.Array, length: int, num_masks: int, max_width: int
) -> jax.Array:
    """`num_masks` bands per row, width U[0, max_width] clipped to `size`, inside [0, size).

    Args:
      size: int [batch] usable extent per row (<= length).

    Returns:
      bool [batch, length], True where any band covers the position.
    """
    batch = size.shape[0]
    width_rng, start_rng = jax.random.split(rng)
    width = jax.random.randint(width_rng, (batch, num_masks), 0, max_width + 1)
    width = jnp.minimum(width, size[:, None])  # [batch, num_masks]
    # start ~ U{0, ..., size - width}: the band lies inside the usable extent.
    start = jax.random.randint(start_rng, (batch, num_masks), 0, size[:, None] - width + 1)
    pos = jnp.arange(length)[None, None, :]  # [1, 1, length]
    covered = (pos >= start[..., None]) & (pos < (start + width)[..., None])
    return jnp.any(covered, axis=1)  # [batch, num_masks, length] -> [batch, length]


def spec_augment_masks(
    rng: jax.Array, lengths: jax.Array, num_frames: int, n_mels: int, cfg: SpecAugmentConfig
) -> tuple[jax.Array, jax.Array]:
    """Draws the SpecAugment masks, independently per utterance.

    Each utterance gets `cfg.num_time_masks` time masks of width U[0, max_time_width] (clipped to
    its valid frames) placed inside its valid frames, and `cfg.num_freq_masks` frequency masks of
    width U[0, max_freq_width] (clipped to n_mels). Masks may overlap.

    Args:
      rng: a `jax.random` key.
      lengths: int [batch] valid frames per utterance.
      num_frames: padded number of frames (static).
      n_mels: number of mel bins (static).
      cfg: mask counts and maximum widths.

    Returns:
      (time_mask bool [batch, num_frames], freq_mask bool [batch, n_mels]), True = masked.
    """
    lengths = jnp.clip(lengths.astype(jnp.int32), 0, num_frames)
    time_rng, freq_rng = jax.random.split(rng)
    time_mask = _band_masks(time_rng, lengths, num_frames, cfg.num_time_masks, cfg.max_time_width)
    mels = jnp.full_like(lengths, n_mels)
    freq_mask = _band_masks(freq_rng, mels, n_mels, cfg.num_freq_masks, cfg.max_freq_width)
    return time_mask, freq_mask


def spec_augment(
    rng: jax.Array, features: jax.Array, lengths: jax.Array, cfg: SpecAugmentConfig
) -> jax.Array:
    """Applies SpecAugment masks to a padded batch of features (identity if not cfg.enabled).

    Masked values become the utterance's mean over its valid frames and all mel bins;
    frequency masks cover valid frames only, so padded frames are never changed.

    Args:
      rng: a `jax.random` key.
      features: float [batch, num_frames, n_mels].
      lengths: int [batch] valid frames per utterance.
      cfg: SpecAugment settings (static under jit).

    Returns:
      [batch, num_frames, n_mels], same dtype as `features`.
    """
    if not cfg.enabled:
        return features
    _, num_frames, n_mels = features.shape
    time_mask, freq_mask = spec_augment_masks(rng, lengths, num_frames, n_mels, cfg)
    valid = jnp.arange(num_frames)[None, :] < lengths[:, None]  # [batch, num_frames]
    count = jnp.maximum(jnp.minimum(lengths, num_frames), 1) * n_mels  # [batch]
    total = jnp.sum(jnp.where(valid[..., None], features, 0), axis=(1, 2), dtype=jnp.float32)
    mean = (total / count).astype(features.dtype)  # [batch]
    masked = (time_mask[:, :, None] | freq_mask[:, None, :]) & valid[:, :, None]
    return jnp.where(masked, mean[:, None, None], features)  # [batch, num_frames, n_mels]
