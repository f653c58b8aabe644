"""Autoregressive frame generation with per-item stop tokens, one ``jax.lax.while_loop``.

The model is a ``step_fn`` that reads each item's previous frame and returns its next ``r``
frames and their stop probabilities:

    step_fn(prev, cache, step) -> (frames, stop_probs, aux, new_cache)
      prev        float [batch, n_mels]     the last frame of the previous step (zeros at step 0)
      cache       pytree                    whatever the model keeps between steps
      step        int32 []                  the decoder step (0-based)
      frames      float [batch, r, n_mels]
      stop_probs  float [batch, r]          p(this frame is the last one)
      aux         float [batch, ...]        recorded per step (e.g. attention weights)

An item stops at the first frame whose stop probability is ``>= threshold``; that frame is its
last. Items stop independently; the loop ends when all have stopped or after ``max_steps``
steps. An item that never stops keeps all ``max_steps * r`` frames and is reported in
``stopped`` so that the caller can warn.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

FrameStepFn = Callable[[jax.Array, Any, jax.Array], tuple[jax.Array, jax.Array, jax.Array, Any]]


class GeneratedFrames(NamedTuple):
    frames: jax.Array  # float32 [batch, max_steps * r, n_mels]; zero past each length
    lengths: jax.Array  # int32 [batch] frames up to and including the stop frame
    stopped: jax.Array  # bool [batch] False where max_steps was reached without a stop
    aux: jax.Array  # float32 [batch, max_steps, ...] step_fn's aux; zero after an item stopped
    steps: jax.Array  # int32 [] decoder steps run (the loop exits when every item stopped)


def generate_frames(
    step_fn: FrameStepFn,
    cache: Any,
    *,
    batch: int,
    n_mels: int,
    reduction_factor: int,
    aux_shape: tuple[int, ...],
    max_steps: int,
    threshold: float,
) -> GeneratedFrames:
    """Runs `step_fn` from an all-zero frame until every item stops or `max_steps` steps.

    Args:
      aux_shape: the per-item shape of step_fn's `aux` (e.g. (chars,)).
      threshold: stop probability at which an item stops.
    """
    r = reduction_factor
    init = (
        jnp.zeros((), jnp.int32),  # step
        cache,
        jnp.zeros((batch, n_mels), jnp.float32),  # previous frame
        jnp.zeros((batch, max_steps * r, n_mels), jnp.float32),  # output frames
        jnp.zeros((batch,), jnp.int32),  # lengths
        jnp.zeros((batch,), bool),  # stopped
        jnp.zeros((batch, max_steps, *aux_shape), jnp.float32),  # aux per step
    )

    def cond(carry):
        step, _, _, _, _, stopped, _ = carry
        return (step < max_steps) & ~jnp.all(stopped)

    def body(carry):
        step, cache, prev, out, lengths, stopped, aux_out = carry
        frames, probs, aux, cache = step_fn(prev, cache, step)  # [b, r, m], [b, r], [b, ...]
        live = ~stopped  # [batch]
        frames = jnp.where(live[:, None, None], frames.astype(jnp.float32), 0.0)
        out = jax.lax.dynamic_update_slice_in_dim(out, frames, step * r, axis=1)
        aux = jnp.where(live.reshape(-1, *([1] * len(aux_shape))), aux.astype(jnp.float32), 0.0)
        aux_out = jax.lax.dynamic_update_slice_in_dim(aux_out, aux[:, None], step, axis=1)
        hit = probs >= threshold  # [batch, r]
        first = jnp.argmax(hit, axis=-1)  # the first stop frame of this step
        stops_now = live & jnp.any(hit, axis=-1)
        lengths = jnp.where(live, step * r + jnp.where(stops_now, first + 1, r), lengths)
        return step + 1, cache, frames[:, -1], out, lengths, stopped | stops_now, aux_out

    steps, _, _, out, lengths, stopped, aux_out = jax.lax.while_loop(cond, body, init)
    keep = jnp.arange(max_steps * r)[None, :] < lengths[:, None]  # [batch, max_steps * r]
    return GeneratedFrames(out * keep[:, :, None], lengths, stopped, aux_out, steps)
