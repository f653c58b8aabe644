"""Train state, built already sharded over the mesh (eval_shape → shardings → jitted init)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh

from jaxseq.parallel.sharding import LOGICAL_RULES
from jaxseq.tasks.base import Task


@struct.dataclass
class TrainState:
    """Everything a train step updates. `rng` is a raw uint32 [2] key (checkpointable)."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def _init_fn(task: Task, tx: optax.GradientTransformation, batch: dict):
    def init(rng: jax.Array) -> TrainState:
        params_rng, state_rng = jax.random.split(rng)
        params = task.init_variables(params_rng, batch)["params"]  # boxed with logical axes
        return TrainState(
            step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=state_rng
        )

    return init


def abstract_train_state(
    task: Task, tx: optax.GradientTransformation, batch: dict, mesh: Mesh
) -> tuple[TrainState, TrainState]:
    """(abstract state of ShapeDtypeStructs carrying shardings, the shardings themselves)."""
    _, abstract, shardings = _traced(_init_fn(task, tx, batch), mesh)
    return abstract, shardings


def _traced(init, mesh: Mesh) -> tuple[TrainState, TrainState, TrainState]:
    """(the boxed abstract state, the abstract state with shardings, the shardings) of `init`.

    The trace is JAX's: a later `jax.jit(init)` with the same input shapes reuses it."""
    # Outside the mesh context on purpose: flax's DenseGeneral initializes its kernel flat and
    # reshapes it, and a logical constraint on the flat kernel would not fit. Initialization
    # needs no activation constraints; `out_shardings` places the parameters.
    boxed = jax.eval_shape(init, jax.random.PRNGKey(0))
    specs = nn.get_partition_spec(boxed)
    shardings = nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_RULES)
    unboxed = nn.meta.unbox(boxed)
    # optax.masked (frozen parameters) keeps MaskedNode placeholders, which hold no array but
    # got a spec above: keep the placeholder in both trees.
    masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
    shardings = jax.tree.map(lambda x, s: x if masked(x) else s, unboxed, shardings, is_leaf=masked)
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), unboxed, shardings
    )
    return boxed, abstract, shardings


def create_train_state(
    task: Task,
    tx: optax.GradientTransformation,
    batch: dict,
    mesh: Mesh,
    seed: int,
    params: Any | None = None,
) -> TrainState:
    """A fresh train state at step 0 whose every leaf is created with its final sharding.

    `params` (unboxed, e.g. restored pretrained weights) replace the random initialization
    of the top-level parameter groups they hold (the others stay random); the optimizer state
    is always fresh. The model's initialization is traced once (tracing is most of the cost of
    creating a tiny model's state).
    """
    init = _init_fn(task, tx, batch)
    boxed, _, shardings = _traced(init, mesh)
    if params is None:
        # The boxed output, each box holding its leaf's sharding: jit then reuses the trace.
        is_box = lambda x: isinstance(x, (nn.meta.AxisMetadata, optax.MaskedNode))  # noqa: E731
        boxed_shardings = jax.tree.map(
            lambda b, s: b.replace_boxed(s) if isinstance(b, nn.meta.AxisMetadata) else s,
            boxed,
            shardings,
            is_leaf=is_box,
        )
        created = jax.jit(init, out_shardings=boxed_shardings)(jax.random.PRNGKey(seed))
        return nn.meta.unbox(created)

    def from_params(rng: jax.Array, params: Any) -> TrainState:
        fresh = nn.meta.unbox(init(rng))  # unused parts are compiled away
        params = {**fresh.params, **params}
        return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), fresh.rng)

    return jax.jit(from_params, out_shardings=shardings)(jax.random.PRNGKey(seed), params)


def abstract_like(state: TrainState) -> TrainState:
    """`state` as ShapeDtypeStructs carrying its arrays' shardings."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
    )
