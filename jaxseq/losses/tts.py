"""TTS losses: masked spectrogram error, weighted stop BCE, guided attention.

Each returns per-utterance SUMS (float32 [batch]), so that a task can divide the batch's sum by
its frame count, the normalizer the train loop's gradient accumulation expects.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

SPECTROGRAM_LOSSES = ("l1", "mse", "l1+mse")


def spectrogram_error(
    pred: jax.Array, target: jax.Array, frame_mask: jax.Array, kind: str
) -> jax.Array:
    """Σ over valid frames of the error averaged over mel bins.

    Args:
      pred, target: float [batch, frames, n_mels].
      frame_mask: bool [batch, frames], True on frames that count.
      kind: "l1" (|d|), "mse" (d²) or "l1+mse" (both added).
    Returns:
      float32 [batch].
    """
    if kind not in SPECTROGRAM_LOSSES:
        raise ValueError(f"spectrogram loss {kind!r} is not one of {SPECTROGRAM_LOSSES}")
    diff = pred.astype(jnp.float32) - target.astype(jnp.float32)
    per_frame = jnp.zeros(diff.shape[:2], jnp.float32)  # [batch, frames]
    if "l1" in kind:
        per_frame += jnp.mean(jnp.abs(diff), axis=-1)
    if "mse" in kind:
        per_frame += jnp.mean(jnp.square(diff), axis=-1)
    return jnp.sum(per_frame * frame_mask, axis=-1)


def stop_bce(
    logits: jax.Array, targets: jax.Array, mask: jax.Array, pos_weight: float
) -> jax.Array:
    """Σ over masked positions of binary cross-entropy with logits, positives weighted by
    `pos_weight` (torch's BCEWithLogitsLoss(pos_weight=...)):
    pos_weight · y · softplus(−x) + (1 − y) · softplus(x).

    Args:
      logits, targets: float [batch, frames] (targets 0 or 1); mask: bool [batch, frames].
    Returns:
      float32 [batch].
    """
    x = logits.astype(jnp.float32)
    y = targets.astype(jnp.float32)
    per = pos_weight * y * jax.nn.softplus(-x) + (1.0 - y) * jax.nn.softplus(x)
    return jnp.sum(per * mask, axis=-1)


def guided_attention_weights(
    steps: jax.Array, chars: jax.Array, max_steps: int, max_chars: int, sigma: float
) -> jax.Array:
    """The diagonal penalty of Tachibana et al. (2017), as ESPnet's GuidedAttentionLoss:
    W[s, n] = 1 − exp(−(n / N − s / S)² / (2σ²)) inside each item's S × N, 0 outside.

    Args:
      steps, chars: int [batch] decoder steps S and text length N of each item.
    Returns:
      float32 [batch, max_steps, max_chars].
    """
    s = jnp.arange(max_steps, dtype=jnp.float32)[None, :, None]  # [1, max_steps, 1]
    n = jnp.arange(max_chars, dtype=jnp.float32)[None, None, :]  # [1, 1, max_chars]
    big_s = jnp.maximum(steps, 1).astype(jnp.float32)[:, None, None]
    big_n = jnp.maximum(chars, 1).astype(jnp.float32)[:, None, None]
    w = 1.0 - jnp.exp(-jnp.square(n / big_n - s / big_s) / (2.0 * sigma**2))
    inside = (s < steps[:, None, None]) & (n < chars[:, None, None])
    return jnp.where(inside, w, 0.0)


def guided_attention_loss(
    attention: jax.Array, steps: jax.Array, chars: jax.Array, sigma: float
) -> jax.Array:
    """Σ over each item's valid (step, char) cells of attention · W (see
    `guided_attention_weights`); at most S per item, since each step's weights sum to 1.

    Args:
      attention: float [batch, max_steps, max_chars] cross-attention weights (e.g. averaged
        over layers and heads).
      steps, chars: int [batch].
    Returns:
      float32 [batch].
    """
    _, max_steps, max_chars = attention.shape
    w = guided_attention_weights(steps, chars, max_steps, max_chars, sigma)
    return jnp.sum(attention.astype(jnp.float32) * w, axis=(1, 2))
