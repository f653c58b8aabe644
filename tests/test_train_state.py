"""create_train_state: the model's initialization traced once (the eval_shape that finds the
shardings serves the jitted initialization too), every leaf placed with the sharding that
abstract_train_state gives it, and the numbers of the initialization run op by op."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from jaxseq.config import load_config
from jaxseq.data.pipeline import load_dataset_info
from jaxseq.parallel.mesh import make_mesh
from jaxseq.tasks import build_task
from jaxseq.train.optimizer import make_optimizer
from jaxseq.train.state import abstract_train_state, create_train_state
from tests.conftest import TINY_CONFIG


@pytest.mark.parametrize("freeze", ["[]", "[encoder/.*]"])  # frozen: MaskedNode placeholders
def test_a_new_state_traces_the_init_once_and_matches_it_op_by_op(tiny_dataset, freeze):
    cfg = load_config(
        TINY_CONFIG, [f"data.dataset={tiny_dataset}", "mesh.data=1", f"optim.freeze={freeze}"]
    )
    task = build_task(cfg, load_dataset_info(tiny_dataset, "train"))
    tx, mesh = make_optimizer(cfg.optim, cfg.train.num_steps), make_mesh(cfg.mesh)
    batch = task.dummy_batch(2, 64)
    traced, init = [], task.init_variables
    task.init_variables = lambda rng, b: traced.append(1) or init(rng, b)  # runs when traced

    state = create_train_state(task, tx, batch, mesh, seed=3)
    assert len(traced) == 1

    _, shardings = abstract_train_state(task, tx, batch, mesh)
    got = jax.tree.map(lambda x: x.sharding, state)
    assert jax.tree.structure(got) == jax.tree.structure(shardings)
    assert all(
        a == b for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(shardings), strict=True)
    )

    with jax.disable_jit():  # the reference: the same initialization, op by op
        params_rng, rng = jax.random.split(jax.random.PRNGKey(3))
        params = nn.meta.unbox(init(params_rng, batch)["params"])
        opt_state = tx.init(params)
    np.testing.assert_array_equal(state.rng, rng)
    assert int(state.step) == 0
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
    assert jax.tree.structure(state.opt_state, is_leaf=masked) == jax.tree.structure(
        opt_state, is_leaf=masked
    )
    for a, b in zip(jax.tree.leaves(state.opt_state), jax.tree.leaves(opt_state), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
