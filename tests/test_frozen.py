"""Frozen parameters (optim.freeze) get no backward computation: the train step feeds them
through `lax.stop_gradient`, which leaves the update as it was and drops the FLOPs of the
frozen part's backward pass."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxseq.config import load_config
from jaxseq.data.pipeline import load_dataset_info, make_train_iterator
from jaxseq.parallel.mesh import make_mesh
from jaxseq.tasks import build_task
from jaxseq.tasks.base import STEP_KEY
from jaxseq.train.optimizer import make_optimizer, param_path
from jaxseq.train.state import abstract_train_state, create_train_state
from jaxseq.train.steps import make_train_step
from tests.conftest import TINY_CONFIG

FREEZE = "encoder/.*"  # everything but the CTC head: the whole backward pass but the head's


def _setup(tiny_dataset, freeze: str, *, abstract: bool = False):
    """(task, optimizer, train state, two steps' batches); with `abstract`, the state's shapes
    only (enough to compile a step, and no initialization to compile)."""
    cfg = load_config(
        TINY_CONFIG, [f"data.dataset={tiny_dataset}", "mesh.data=1", f"optim.freeze={freeze}"]
    )
    task = build_task(cfg, load_dataset_info(tiny_dataset, "train"))
    it = make_train_iterator(tiny_dataset, "train", cfg.data, task.tokenizer, seed=0)
    batch = next(it)
    it.close()
    tx = make_optimizer(cfg.optim, cfg.train.num_steps)
    mesh = make_mesh(cfg.mesh)
    if abstract:
        return task, tx, abstract_train_state(task, tx, batch, mesh)[0], [batch] * 2
    return task, tx, create_train_state(task, tx, batch, mesh, 0), [batch] * 2


def _compiled(step, state, batch):
    """The step compiled for the batch's shapes (one program for both steps and the FLOPs)."""
    return jax.jit(step).lower(state, batch, jnp.zeros((), jnp.int32)).compile()


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def test_frozen_parameters_update_as_before_with_fewer_flops(tiny_dataset):
    task, tx, state, batches = _setup(tiny_dataset, f"[{FREEZE}]")
    start = jax.device_get(state.params)
    # Two steps: the new step (frozen = the config's patterns) and the step as it was before
    # (frozen=(): gradients of every parameter, the frozen ones zeroed by the optimizer).
    new = _compiled(make_train_step(task, tx), state, batches[0])
    old = _compiled(make_train_step(task, tx, frozen=()), state, batches[0])
    runs = {}
    for name, step in (("new", new), ("old", old)):
        s, streak, metrics = state, jnp.zeros((), jnp.int32), []
        for batch in batches:
            s, m, streak = step(s, batch, streak)
            metrics.append(jax.device_get(m))
        runs[name] = jax.device_get(s.params), metrics
    frozen = 0
    for (path, a), b, c in zip(
        jax.tree_util.tree_leaves_with_path(runs["new"][0]),
        jax.tree.leaves(runs["old"][0]),
        jax.tree.leaves(start),
        strict=True,
    ):
        if param_path(path).startswith("encoder/"):
            frozen += 1
            np.testing.assert_array_equal(a, c)  # unchanged
            np.testing.assert_array_equal(b, c)
        else:
            assert not np.array_equal(a, c)  # the head trains
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)
    assert frozen > 10
    for got, want in zip(*(runs[k][1] for k in ("new", "old")), strict=True):
        np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-6)

    # grad_norm is the norm of the trained parameters' gradients (jax.grad of the task's loss).
    rows = len(batches[0]["features"])
    batch = {**batches[0], STEP_KEY: jnp.zeros((rows,), jnp.int32)}
    batch["features"] = batch["features"].astype(np.float32)
    rng = jax.random.fold_in(state.rng, 0)
    grads = jax.jit(jax.grad(lambda p: task.loss_fn(p, batch, rng, True)[0]))(state.params)
    trained = {k: v for k, v in grads.items() if k != "encoder"}
    np.testing.assert_allclose(runs["new"][1][0]["grad_norm"], optax.global_norm(trained), 1e-5)

    # XLA's cost analysis: no backward pass through the encoder.
    frozen_flops, before = _flops(new), _flops(old)
    task, tx, state, batches = _setup(tiny_dataset, "[]", abstract=True)
    trained_flops = _flops(_compiled(make_train_step(task, tx), state, batches[0]))
    assert before >= 0.99 * trained_flops  # the optimizer alone saved nothing
    assert frozen_flops < 0.6 * trained_flops, (frozen_flops, trained_flops)
