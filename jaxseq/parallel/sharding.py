"""Logical axis names (used by models) and the rules that map them onto mesh axes.

Models name their parameter and activation axes with the constants below; this table is the
one place that decides how those names shard over the ("data", "fsdp", "tensor") mesh.
An activation whose batch axis already uses "fsdp" leaves "embed" unsharded (flax skips a
mesh axis that an earlier dimension has taken), so the same table serves parameters
(FSDP over "embed") and activations (data parallel over "batch").
"""

from __future__ import annotations

import contextlib

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH = "batch"
LENGTH = "length"
EMBED = "embed"
MLP = "mlp"
HEADS = "heads"
KV = "kv"
VOCAB = "vocab"
LABELS = "labels"  # the classes of a classifier's output (classify family)
MEL = "mel"
CONV_WINDOW = "conv_window"
CONV_IN = "conv_in"  # input channels of a conv after the first (never the same name as its output)
POSITION = "position"  # rows of a position-embedding table
LAYERS = "layers"  # the stacked layer axis of scanned layers (model.scan_layers)
GATES = "gates"  # an RNN cell's stacked gate units (4 x hidden for LSTM, 3 x for GRU)

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    (BATCH, ("data", "fsdp")),
    (EMBED, "fsdp"),
    (MLP, "tensor"),
    (HEADS, "tensor"),
    (KV, None),
    (VOCAB, None),  # character vocabularies are small and rarely divisible by the mesh
    (LABELS, None),  # so are label sets (e.g. AudioSet's 527)
    (LENGTH, None),
    (MEL, None),
    (CONV_WINDOW, None),
    (CONV_IN, None),
    (POSITION, None),
    (LAYERS, None),
    (GATES, "tensor"),
)


def logical_shardings(tree, mesh: Mesh):
    """NamedShardings for a tree of values carrying logical axis metadata (or PartitionSpecs)."""
    specs = nn.get_partition_spec(tree)
    return nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_RULES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a batch's leading axis over the data-parallel mesh axes."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
    """A fully replicated sharding."""
    return NamedSharding(mesh, PartitionSpec())


def sharding_context(mesh: Mesh):
    """Context under which jitted model code sees the mesh and the logical rules.

    Usage: `with sharding_context(mesh): step(state, batch)`.
    """
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(mesh))
    stack.enter_context(nn.logical_axis_rules(LOGICAL_RULES))
    return stack
