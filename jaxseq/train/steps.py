"""The jitted device steps, built in one place for the train loop, the evaluation loop and
`jaxseq compile` (which lowers the very same functions for another topology).

- `make_train_step`: loss, gradients (optionally accumulated over microbatches) and the
  optimizer update, with non-finite steps skipped;
- `jit_train_step`: that step jitted with the state's shardings, the batch split over the
  data-parallel axes, and the state donated;
- `eval_step`: a batch's predictions and its loss, jitted once per (task, mesh, options).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jaxseq.config import Config, ConfigError
from jaxseq.parallel.sharding import batch_sharding, replicated
from jaxseq.tasks.base import STEP_KEY, Task
from jaxseq.train.optimizer import frozen_labels
from jaxseq.train.state import TrainState


def _widen(batch: dict) -> dict:
    """float16 fields (the stored log-mel, sent to the device at that width) as float32."""
    return {k: v.astype(jnp.float32) if v.dtype == jnp.float16 else v for k, v in batch.items()}


def make_train_step(
    task: Task,
    tx: optax.GradientTransformation,
    microbatches: int = 1,
    frozen: tuple[str, ...] | None = None,
):
    """The update: loss and gradients on one batch, then the optimizer step.

    Features may arrive as float16 (the records' width, halving the host-to-device transfer):
    the step widens every float16 field to float32 first, so the loss is that of the float32
    batch of the same values.

    `frozen` (default `task.cfg.optim.freeze`, what `make_optimizer` freezes) are regexes over
    parameter paths: those parameters enter the loss through `lax.stop_gradient`, so XLA
    computes no gradient for them (and no backward pass at all below the lowest trained
    layer); their gradient is zero, which is also what the optimizer makes of it, and the
    logged "grad_norm" is that of the trained parameters.

    With `microbatches` > 1 the batch is split into that many interleaved microbatches whose
    gradients are accumulated in a `lax.scan` (memory of one microbatch), each weighted by its
    `metrics["tokens"]`: the task's loss is a sum over the batch divided by that count, so the
    result is the large-batch step's (dropout and SpecAugment draw per microbatch).

    The task's loss sees the step being taken as `batch["step"]`, int32 [batch] (one value
    per row, so that microbatches split it like any field), for schedules inside the loss
    (e.g. the rnn family's scheduled sampling); evaluation batches have no "step".

    A batch whose loss or gradients are not finite changes nothing but the step counter: the
    parameters and optimizer state stay as they were, its metrics are zero, and "skipped" is 1.
    `streak` (int32 []) counts such steps in a row.
    """

    patterns = task.cfg.optim.freeze if frozen is None else tuple(frozen)

    def loss_and_grads(params, batch, rng):
        batch = _widen(batch)
        if patterns:
            held = frozen_labels(patterns)(params)  # "frozen" | "train" per leaf

        def loss_fn(params):
            if patterns:
                params = jax.tree.map(
                    lambda p, label: jax.lax.stop_gradient(p) if label == "frozen" else p,
                    params,
                    held,
                )
            return task.loss_fn(params, batch, rng, train=True)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, metrics, grads

    def accumulated(params, batch, rng):
        split = jax.tree.map(  # [m, batch / m, ...]: microbatch i holds rows i, i + m, ...
            lambda x: x.reshape(x.shape[0] // microbatches, microbatches, *x.shape[1:]).swapaxes(
                0, 1
            ),
            batch,
        )

        def body(carry, xs):
            micro, i = xs
            loss, metrics, grads = loss_and_grads(params, micro, jax.random.fold_in(rng, i))
            weight = metrics["tokens"]
            acc_grads, acc_loss, acc_metrics = carry
            acc_grads = jax.tree.map(lambda a, g: a + weight * g, acc_grads, grads)
            acc_metrics = jax.tree.map(jnp.add, acc_metrics, metrics)
            return (acc_grads, acc_loss + weight * loss, acc_metrics), None

        first = jax.tree.map(lambda x: x[0], split)
        _, metrics_shape, _ = jax.eval_shape(loss_and_grads, params, first, rng)
        zeros = (
            jax.tree.map(jnp.zeros_like, params),
            jnp.zeros((), jnp.float32),
            jax.tree.map(lambda m: jnp.zeros(m.shape, m.dtype), metrics_shape),
        )
        steps = (split, jnp.arange(microbatches))
        (grads, loss, metrics), _ = jax.lax.scan(body, zeros, steps)
        total = jnp.maximum(metrics["tokens"], 1.0)
        return loss / total, metrics, jax.tree.map(lambda g: g / total, grads)

    def train_step(
        state: TrainState, batch: dict, streak: jax.Array
    ) -> tuple[TrainState, dict[str, jax.Array], jax.Array]:
        rng = jax.random.fold_in(state.rng, state.step)
        rows = jax.tree.leaves(batch)[0].shape[0]
        frames = jnp.sum(batch["feature_lengths"]).astype(jnp.float32)  # of audio, unpadded
        batch = {**batch, STEP_KEY: jnp.full((rows,), state.step, jnp.int32)}
        compute = loss_and_grads if microbatches == 1 else accumulated
        loss, metrics, grads = compute(state.params, batch, rng)
        finite = jnp.isfinite(loss) & jax.tree.reduce(
            jnp.logical_and, jax.tree.map(lambda g: jnp.all(jnp.isfinite(g)), grads)
        )

        def update(params, opt_state):
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        # A branch, not a select over every parameter and moment: a skipped step costs nothing.
        params, opt_state = jax.lax.cond(
            finite, update, lambda *old: old, state.params, state.opt_state
        )
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        metrics = {**metrics, "loss": loss, "grad_norm": optax.global_norm(grads), "steps": 1.0}
        metrics["audio_frames"] = frames
        metrics = jax.tree.map(lambda m: jnp.where(finite, m, 0.0), metrics)
        metrics["skipped"] = 1.0 - finite.astype(jnp.float32)
        return new_state, metrics, jnp.where(finite, 0, streak + 1)

    return train_step


def check_batch_sizes(cfg: Config, data_parallel: int) -> None:
    """Raises ConfigError unless the global batch sizes split evenly over the data-parallel
    devices (and the train batch also over train.microbatches)."""
    dp = data_parallel
    if cfg.data.batch_size % (dp * cfg.train.microbatches):
        raise ConfigError(
            f"data.batch_size ({cfg.data.batch_size}) must be a multiple of the data-parallel "
            f"size {dp} times train.microbatches ({cfg.train.microbatches})"
        )
    if cfg.data.eval_batch_size % dp:
        raise ConfigError(
            f"data.eval_batch_size ({cfg.data.eval_batch_size}) must be a multiple of the "
            f"data-parallel size {dp}"
        )


def jit_train_step(
    task: Task,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    shardings: TrainState,
    microbatches: int = 1,
):
    """`make_train_step` jitted: (state, global batch, streak) -> (state, metrics, streak),
    the state in `shardings` and donated, the batch split over ("data", "fsdp"), metrics and
    the non-finite streak replicated."""
    return jax.jit(
        make_train_step(task, tx, microbatches),
        in_shardings=(shardings, batch_sharding(mesh), replicated(mesh)),
        out_shardings=(shardings, replicated(mesh), replicated(mesh)),
        donate_argnums=(0,),
    )


@functools.cache
def eval_step(task: Task, mesh: Mesh, options: tuple[tuple[str, Any], ...]):
    """One jitted function per (task, mesh, options), cached: (params, batch) -> a batch's
    predictions and its loss (every output replicated, so each process reads its own rows)."""

    def step(params, batch):
        predictions = task.predict_fn(params, batch, **dict(options))
        return predictions, task.loss_fn(params, batch, jax.random.PRNGKey(0), train=False)

    return jax.jit(step, out_shardings=replicated(mesh))
