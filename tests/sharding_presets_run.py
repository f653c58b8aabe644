"""Run by tests/test_sharding_presets.py in a process with 8 CPU devices:
`python -m tests.sharding_presets_run DATASET OUT.json CHECKPOINT_DIR`.

For the CTC and seq2seq families and each mesh preset, it records the loss and gradients of
one batch (compared with one device), the PartitionSpecs of a few parameter groups, and the
bytes of parameters + optimizer state that device 0 holds; then the CTC train state built
under fsdp=8 is saved and restored under fsdp=4 x tensor=2 and on one device.
(The PartitionSpecs name the same logical → mesh axes under every preset; what a preset
changes is the mesh shape, so the test checks the resulting splits per dimension.)

The time goes into XLA compiling (per family: the initialization and the gradient step, once
on one device and once per preset), so the models are small: the CTC demo's widths with one
layer instead of four (each layer is another copy of the same sharded parameters), and the
FSDP state restored is the one the preset run built.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import jax
import numpy as np
import optax
from jax.sharding import Mesh

from jaxseq.config import Config, MeshConfig, load_config
from jaxseq.data.pipeline import load_dataset_info
from jaxseq.parallel.batch import to_global
from jaxseq.parallel.mesh import make_mesh
from jaxseq.parallel.sharding import MESH_AXES, batch_sharding, sharding_context
from jaxseq.tasks import build_task
from jaxseq.tasks.base import Task
from jaxseq.train.checkpoint import Checkpointer
from jaxseq.train.optimizer import make_optimizer
from jaxseq.train.state import TrainState, abstract_train_state, create_train_state
from tests.conftest import REPO

FAMILIES = {  # config name -> its overrides
    "ctc_demo": ["model.num_layers=1"],
    "seq2seq_tiny": [],
}
PRESETS = {
    "data": MeshConfig(preset="data"),
    "fsdp": MeshConfig(preset="fsdp"),
    "fsdp_tensor": MeshConfig(preset="fsdp_tensor", tensor=2),
}
GROUPS = {  # parameter group -> its path in the CTC and seq2seq params
    "attention query": ("encoder", "layer0", "attn", "query", "kernel"),
    "attention out": ("encoder", "layer0", "attn", "out", "kernel"),
    "mlp in": ("encoder", "layer0", "mlp", "wi", "kernel"),
    "mlp out": ("encoder", "layer0", "mlp", "wo", "kernel"),
    "norm scale": ("encoder", "layer0", "attn_norm", "LayerNorm_0", "scale"),
}


@dataclasses.dataclass
class Family:
    """What every mesh of one family shares."""

    cfg: Config
    task: Task
    tx: optax.GradientTransformation
    host: dict[str, np.ndarray]  # the batch


def _family(config_name: str, dataset: str) -> Family:
    overrides = [f"data.dataset={dataset}", *FAMILIES[config_name]]
    cfg = load_config(REPO / "configs" / f"{config_name}.yaml", overrides)
    task = build_task(cfg, load_dataset_info(dataset, "train"))
    tx = make_optimizer(cfg.optim, cfg.train.num_steps)
    return Family(cfg, task, tx, _batch(task, 8, cfg.data.buckets[0]))


def _batch(task, batch_size: int, frames: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    batch = task.dummy_batch(batch_size, frames)
    batch["features"] = rng.normal(size=batch["features"].shape).astype(np.float32)
    batch["feature_lengths"] = rng.integers(frames // 2, frames + 1, batch_size).astype(np.int32)
    lengths = rng.integers(1, 6, batch_size).astype(np.int32)
    labels = rng.integers(4, task.tokenizer.size, batch["labels"].shape).astype(np.int32)
    labels[np.arange(labels.shape[1])[None] >= lengths[:, None]] = 0
    batch["labels"], batch["label_lengths"] = labels, lengths
    return batch


def _one_device() -> Mesh:
    return Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1, 1), MESH_AXES)


def _splits(x: jax.Array) -> list[int]:
    """How many ways each dimension of `x` is split across devices."""
    shard = x.addressable_shards[0].data.shape
    return [full // part for full, part in zip(x.shape, shard, strict=True)]


def _loss_and_grads(value_and_grad, state: TrainState, batch, mesh: Mesh):
    with sharding_context(mesh):
        loss, grads = value_and_grad(state.params, batch)
    return float(loss), jax.tree.map(np.asarray, grads)


def run(family: Family) -> tuple[dict, dict[str, TrainState]]:
    """(the results of every preset, the train state each preset built)."""
    task, tx, host, seed = family.task, family.tx, family.host, family.cfg.train.seed

    def loss_of(params, batch):  # the batch an argument: not a constant baked into each compile
        return task.loss_fn(params, batch, jax.random.PRNGKey(0), train=False)[0]

    value_and_grad = jax.jit(jax.value_and_grad(loss_of))
    one = _one_device()
    state = create_train_state(task, tx, host, one, seed)
    ref_loss, ref_grads = _loss_and_grads(value_and_grad, state, to_global(host, one), one)
    max_grad = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(ref_grads))
    out, states = {"reference_loss": ref_loss}, {}
    for name, mesh_cfg in PRESETS.items():
        mesh = make_mesh(mesh_cfg)
        state = states[name] = create_train_state(task, tx, host, mesh, seed)
        batch = jax.device_put(host, batch_sharding(mesh))
        loss, grads = _loss_and_grads(value_and_grad, state, batch, mesh)
        diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), grads, ref_grads)
        leaves = jax.tree.leaves((state.params, state.opt_state))
        device0 = jax.devices()[0]
        held = sum(
            s.data.nbytes for x in leaves for s in x.addressable_shards if s.device == device0
        )
        specs = {}
        for group, path in GROUPS.items():
            leaf = state.params
            for key in path:
                leaf = leaf[key]
            specs[group] = _splits(leaf)
        out[name] = {
            "mesh": dict(mesh.shape),
            "loss": loss,
            "max_grad_diff": max(jax.tree.leaves(diffs)),
            "max_grad": max_grad,
            "device0_bytes": held,
            "total_bytes": sum(x.nbytes for x in leaves),
            "splits": specs,
        }
    return out, states


def resharded_restore(family: Family, saved: TrainState, directory: str) -> dict[str, bool]:
    """Saves a train state built under fsdp=8 and restores it under fsdp=4 x tensor=2 and on
    one device: are all arrays bitwise equal, with the target shardings?"""
    ckpt = Checkpointer(directory, family.cfg.train)
    ckpt.save(1, saved, None, {"step": 1})
    ckpt.wait()
    expected = jax.tree.leaves(jax.device_get(saved))
    meshes = {"fsdp_tensor": make_mesh(PRESETS["fsdp_tensor"]), "one_device": _one_device()}
    out = {}
    for name, mesh in meshes.items():
        abstract, _ = abstract_train_state(family.task, family.tx, family.host, mesh)
        restored = ckpt.restore(1, abstract)
        same_sharding = all(
            r.sharding == a.sharding
            for r, a in zip(jax.tree.leaves(restored), jax.tree.leaves(abstract), strict=True)
        )
        got = jax.tree.leaves(jax.device_get(restored))
        equal = all(np.array_equal(a, b) for a, b in zip(expected, got, strict=True))
        out[name] = bool(equal and same_sharding)
    ckpt.close()
    return out


if __name__ == "__main__":
    assert jax.device_count() == 8, jax.devices()
    dataset, path, ckpt_dir = sys.argv[1], sys.argv[2], sys.argv[3]
    results = {}
    for config_name in FAMILIES:
        family = _family(config_name, dataset)
        results[config_name], states = run(family)
        if config_name == "ctc_demo":
            results["resharded_restore"] = resharded_restore(family, states["fsdp"], ckpt_dir)
    with open(path, "w") as f:
        json.dump(results, f, indent=2, default=lambda o: dataclasses.asdict(o))
