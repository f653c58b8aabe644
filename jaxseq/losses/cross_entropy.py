"""Label-smoothed cross-entropy from integer labels, with no one-hot over the vocabulary."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def smoothed_cross_entropy(logits: jax.Array, targets: jax.Array, smoothing: float) -> jax.Array:
    """Cross-entropy of `logits` [..., V] against `targets` [...] smoothed by `smoothing`.

    Equals `optax.softmax_cross_entropy(logits, optax.smooth_labels(one_hot(targets, V),
    smoothing))`, whose target puts 1 - smoothing + smoothing / V on the label and
    smoothing / V on every other token:

        CE = logsumexp(z) - (1 - smoothing) * z[target] - smoothing * mean(z)

    so nothing of size [..., V] is built besides the logits (at Whisper's 51,865 tokens the
    one-hot target and its smoothed copy are two more [batch, length, V] float32 arrays, and
    their gradients). Computed in float32 whatever the logits' dtype.

    Returns:
      The per-position loss [...], float32.
    """
    z = logits.astype(jnp.float32)  # [..., V]
    lse = jax.nn.logsumexp(z, axis=-1)  # [...]
    picked = jnp.take_along_axis(z, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    loss = lse - (1.0 - smoothing) * picked
    if smoothing:
        loss = loss - smoothing * jnp.mean(z, axis=-1)
    return loss
