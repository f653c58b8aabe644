"""Run by tests/test_sharding_presets.py in a process with 8 CPU devices:
`python -m tests.sharding_presets_run DATASET OUT.json CHECKPOINT_DIR`.

For the CTC and seq2seq tiny configs and each mesh preset, it records the loss and gradients of
one batch (compared with one device), the PartitionSpecs of a few parameter groups, and the
bytes of parameters + optimizer state that device 0 holds; then a checkpoint saved under
fsdp=8 is restored under fsdp=4 x tensor=2 and on one device.
(The PartitionSpecs name the same logical → mesh axes under every preset; what a preset
changes is the mesh shape, so the test checks the resulting splits per dimension.)
"""

from __future__ import annotations

import dataclasses
import json
import sys

import jax
import numpy as np
from jax.sharding import Mesh

from jaxseq.config import MeshConfig, load_config
from jaxseq.data.pipeline import load_dataset_info
from jaxseq.parallel.batch import to_global
from jaxseq.parallel.mesh import make_mesh
from jaxseq.parallel.sharding import MESH_AXES, batch_sharding, sharding_context
from jaxseq.tasks import build_task
from jaxseq.train.checkpoint import Checkpointer
from jaxseq.train.optimizer import make_optimizer
from jaxseq.train.state import abstract_train_state, create_train_state
from tests.conftest import REPO

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


def _splits(x: jax.Array) -> list[int]:
    """How many ways each dimension of `x` is split across devices."""
    shard = x.addressable_shards[0].data.shape
    return [full // part for full, part in zip(x.shape, shard, strict=True)]


def _loss_and_grads(task, state, batch, mesh):
    def fn(params):
        return task.loss_fn(params, batch, jax.random.PRNGKey(0), train=False)[0]

    with sharding_context(mesh):
        loss, grads = jax.jit(jax.value_and_grad(fn))(state.params)
    return float(loss), jax.tree.map(np.asarray, grads)


def run(config_name: str, dataset: str) -> dict:
    cfg = load_config(REPO / "configs" / f"{config_name}.yaml", [f"data.dataset={dataset}"])
    task = build_task(cfg, load_dataset_info(dataset, "train"))
    tx = make_optimizer(cfg.optim, cfg.train.num_steps)
    host = _batch(task, 8, cfg.data.buckets[0])
    one = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1, 1), MESH_AXES)
    state = create_train_state(task, tx, host, one, cfg.train.seed)
    ref_loss, ref_grads = _loss_and_grads(task, state, to_global(host, one), one)
    out = {"reference_loss": ref_loss}
    for name, mesh_cfg in PRESETS.items():
        mesh = make_mesh(mesh_cfg)
        state = create_train_state(task, tx, host, mesh, cfg.train.seed)
        batch = jax.device_put(host, batch_sharding(mesh))
        loss, grads = _loss_and_grads(task, state, batch, mesh)
        diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), grads, ref_grads)
        leaves = jax.tree.leaves((state.params, state.opt_state))
        device0 = jax.devices()[0]
        held = sum(
            s.data.nbytes for x in leaves for s in x.addressable_shards if s.device == device0
        )
        params = state.params
        specs = {}
        for group, path in GROUPS.items():
            leaf = params
            for key in path:
                leaf = leaf[key]
            specs[group] = _splits(leaf)
        out[name] = {
            "mesh": dict(mesh.shape),
            "loss": loss,
            "max_grad_diff": max(jax.tree.leaves(diffs)),
            "max_grad": max(float(np.max(np.abs(g))) for g in jax.tree.leaves(ref_grads)),
            "device0_bytes": held,
            "total_bytes": sum(x.nbytes for x in leaves),
            "splits": specs,
        }
    return out


def resharded_restore(dataset: str, directory: str) -> dict[str, bool]:
    """Saves the CTC demo model's train state under fsdp=8 and restores it under
    fsdp=4 x tensor=2 and on one device: are all arrays bitwise equal?"""
    cfg = load_config(REPO / "configs" / "ctc_demo.yaml", [f"data.dataset={dataset}"])
    task = build_task(cfg, load_dataset_info(dataset, "train"))
    tx = make_optimizer(cfg.optim, cfg.train.num_steps)
    host = task.dummy_batch(8, cfg.data.buckets[0])
    saved = create_train_state(task, tx, host, make_mesh(PRESETS["fsdp"]), cfg.train.seed)
    ckpt = Checkpointer(directory, cfg.train)
    ckpt.save(1, saved, None, {"step": 1})
    ckpt.wait()
    expected = jax.tree.leaves(jax.device_get(saved))
    meshes = {
        "fsdp_tensor": make_mesh(PRESETS["fsdp_tensor"]),
        "one_device": Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1, 1), MESH_AXES),
    }
    out = {}
    for name, mesh in meshes.items():
        abstract, _ = abstract_train_state(task, tx, host, mesh)
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
    results = {name: run(name, dataset) for name in ("ctc_demo", "seq2seq_tiny")}
    results["resharded_restore"] = resharded_restore(dataset, ckpt_dir)
    with open(path, "w") as f:
        json.dump(results, f, indent=2, default=lambda o: dataclasses.asdict(o))
