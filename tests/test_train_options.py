"""Train-step options with equal numerics: gradient accumulation over microbatches equals the
large-batch step; rematerialization and scanned encoder layers change nothing; bf16 compute
keeps float32 parameters and optimizer state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxseq.config import ConfigError, load_config
from jaxseq.data.pipeline import load_dataset_info
from jaxseq.parallel.mesh import make_mesh
from jaxseq.tasks import build_task
from jaxseq.train.loop import train
from jaxseq.train.optimizer import make_optimizer, param_path
from jaxseq.train.state import abstract_train_state, create_train_state
from jaxseq.train.steps import make_train_step
from tests.conftest import REPO, quick_config


def _setup(tiny_dataset, config, *overrides):
    cfg = load_config(
        REPO / "configs" / config, [f"data.dataset={tiny_dataset}", "mesh.data=1", *overrides]
    )
    task = build_task(cfg, load_dataset_info(tiny_dataset, "train"))
    return cfg, task, make_optimizer(cfg.optim, cfg.train.num_steps), make_mesh(cfg.mesh)


def _batch(task, rows=8, frames=128):
    rng = np.random.default_rng(0)
    batch = task.dummy_batch(rows, frames)
    batch["features"] = rng.normal(size=batch["features"].shape).astype(np.float32)
    batch["feature_lengths"] = rng.integers(frames // 2, frames + 1, rows).astype(np.int32)
    lengths = rng.integers(1, 8, rows).astype(np.int32)  # uneven: the weighting matters
    labels = rng.integers(4, task.tokenizer.size, batch["labels"].shape).astype(np.int32)
    labels[np.arange(labels.shape[1])[None] >= lengths[:, None]] = 0
    batch["labels"], batch["label_lengths"] = labels, lengths
    return batch


@pytest.mark.parametrize(
    "config, overrides",
    [("ctc_tiny.yaml", ()), ("seq2seq_tiny.yaml", ("model.ctc_weight=0.3",))],
)
def test_microbatches_equal_the_large_batch_step(tiny_dataset, config, overrides):
    """4 microbatches of 2 rows (uneven token counts) against the whole batch of 8. Every m > 1
    takes the same path (the accumulating scan); m = 2 runs through the loop below."""
    cfg, task, tx, mesh = _setup(tiny_dataset, config, *overrides)
    batch = _batch(task)
    results = {}
    state = create_train_state(task, tx, batch, mesh, seed=0)  # not donated: serves every m
    for m in (1, 4):
        step = jax.jit(make_train_step(task, tx, microbatches=m))
        new, metrics, _ = step(state, batch, jnp.zeros((), jnp.int32))
        results[m] = jax.device_get((new.params, new.opt_state, metrics))
    params, opt_state, metrics = results[4]
    np.testing.assert_allclose(metrics["loss"], results[1][2]["loss"], rtol=1e-6)
    np.testing.assert_allclose(metrics["grad_norm"], results[1][2]["grad_norm"], rtol=1e-5)
    assert metrics["tokens"] == results[1][2]["tokens"]
    for a, b in zip(
        jax.tree.leaves((params, opt_state)), jax.tree.leaves(results[1][:2]), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_microbatches_through_the_loop(tiny_dataset, tmp_path):
    # One bucket (one compiled step for both steps) and no evaluation: the loop's part.
    cfg = quick_config(tiny_dataset, "train.num_steps=2", "train.microbatches=2")
    assert train(cfg, tmp_path)["step"] == 2
    bad = load_config(
        REPO / "configs" / "ctc_tiny.yaml", [f"data.dataset={tiny_dataset}", "train.microbatches=3"]
    )
    with pytest.raises(ConfigError, match="multiple of the data-parallel size 1 times"):
        train(bad, tmp_path / "bad")


def test_bf16_compute_keeps_float32_state(tiny_dataset):
    """Mixed precision: activations in bfloat16, parameters and optimizer state float32 (as
    initialized and after a step), and a loss within bfloat16 rounding of the float32 one on
    the same weights. (The float32 state and step are those of the microbatch test above: the
    persistent compilation cache serves them.)"""

    def floats(tree) -> set:
        return {x.dtype for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}

    losses, state = {}, None
    for dtype in ("float32", "bfloat16"):
        cfg, task, tx, mesh = _setup(tiny_dataset, "ctc_tiny.yaml", f"train.compute_dtype={dtype}")
        batch = _batch(task)
        abstract = abstract_train_state(task, tx, batch, mesh)[0]  # the init's output, uncompiled
        assert floats(abstract) == {jnp.dtype("float32")}
        if state is None:  # not donated: the bfloat16 step starts from the same weights
            state = create_train_state(task, tx, batch, mesh, seed=0)
        assert jax.tree.map(jnp.shape, state) == jax.tree.map(jnp.shape, abstract)
        new, metrics, _ = jax.jit(make_train_step(task, tx))(state, batch, jnp.zeros((), jnp.int32))
        assert floats((new.params, new.opt_state)) == {jnp.dtype("float32")}
        losses[dtype] = float(metrics["loss"])
    np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=2e-2)


def _random_params(shapes: dict) -> dict:
    """Every parameter random (biases too, zero at initialization): N(1, 0.1²) for the
    LayerNorm scales, N(0, 0.1²) elsewhere. Drawn with numpy from the shapes alone: an
    initialization (jax.random's threefry on every leaf) costs seconds of XLA compiles."""
    rng = np.random.default_rng(1)

    def draw(path, x):
        mean = 1.0 if param_path(path).endswith("scale") else 0.0
        return jnp.asarray(mean + 0.1 * rng.normal(size=x.shape), x.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.mark.parametrize("config", ["ctc_tiny.yaml", "seq2seq_tiny.yaml"])
def test_remat_policies_do_not_change_the_numerics(tiny_dataset, config):
    results = {}
    params = None
    for remat in ("none", "full", "dots"):
        cfg, task, tx, mesh = _setup(tiny_dataset, config, f"model.remat={remat}")
        batch = _batch(task)
        shapes = abstract_train_state(task, tx, batch, mesh)[0].params  # nothing compiled
        if params is None:  # remat changes no parameter: the same weights serve all three
            params = _random_params(shapes)
        assert jax.tree.map(jnp.shape, shapes) == jax.tree.map(jnp.shape, params)

        def loss(params, task=task, batch=batch):
            return task.loss_fn(params, batch, jax.random.PRNGKey(0), train=True)[0]

        results[remat] = jax.device_get(jax.jit(jax.value_and_grad(loss))(params))
    reference = jax.tree.leaves(results["none"])
    for remat in ("full", "dots"):
        for a, b in zip(jax.tree.leaves(results[remat]), reference, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=5e-7)  # float32 rounding


LAYERS = 2  # a stack of layers to scan (each one more layer costs compile time)


def _layers(config: str) -> tuple[str, ...]:
    overrides = (f"model.num_layers={LAYERS}",)
    if config.startswith("seq2seq"):
        overrides += (f"model.decoder_layers={LAYERS}",)
    return overrides


def _stack_layers(params: dict, num_layers: int) -> dict:
    """Loop layout ({encoder,decoder}/layer{i}/...) → scan layout (.../layers/layer/...,
    stacked on a leading axis)."""
    out = dict(params)
    for part in ("encoder", "decoder"):
        if part not in params:
            continue
        module = dict(params[part])
        layers = [module.pop(f"layer{i}") for i in range(num_layers)]
        module["layers"] = {"layer": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}
        out[part] = module
    return out


@pytest.mark.parametrize("config", ["ctc_tiny.yaml", "seq2seq_tiny.yaml"])
def test_scanned_layers_equal_the_loop(tiny_dataset, config):
    """model.scan_layers: the same loss, gradients, parameters after one AdamW step with weight
    decay, and (seq2seq) greedy and beam-search tokens as the layer loop, given the same weights
    stacked (dropout off in the tiny configs)."""
    overrides = _layers(config)
    # A full learning rate from the first step and a strong decay; every parameter (biases
    # too, zero at initialization) random, so a decay of a bias or a scale shows. Adam's eps
    # above float32 noise: the key bias's gradient is zero but for rounding (softmax ignores
    # it), and Adam's first step would blow the noise up to ±learning_rate.
    overrides += ("optim.warmup_steps=0", "optim.learning_rate=1e-2", "optim.weight_decay=0.5")
    overrides += ("optim.eps=1e-4",)
    results = {}
    for scan in (False, True):
        cfg, task, tx, mesh = _setup(tiny_dataset, config, *overrides, f"model.scan_layers={scan}")
        batch = _batch(task)
        shapes = abstract_train_state(task, tx, batch, mesh)[0].params  # nothing compiled
        if not scan:
            params = _random_params(shapes)
        weights = _stack_layers(params, LAYERS) if scan else params
        assert jax.tree.structure(shapes) == jax.tree.structure(weights)
        assert jax.tree.map(jnp.shape, shapes) == jax.tree.map(jnp.shape, weights)

        def loss(p, task=task, batch=batch):
            return task.loss_fn(p, batch, jax.random.PRNGKey(0), train=True)[0]

        value, grads = jax.jit(jax.value_and_grad(loss))(weights)

        # The optimizer step of the train loop (clipping, AdamW with the decay mask).
        @jax.jit
        def optimizer_step(grads, weights, tx=tx):
            updates, _ = tx.update(grads, tx.init(weights), weights)
            return optax.apply_updates(weights, updates)

        stepped = optimizer_step(grads, weights)
        decoded = {}
        if config.startswith("seq2seq"):
            predict = jax.jit(task.predict_fn, static_argnums=(2, 3))
            decoded = {d: jax.device_get(predict(weights, batch, d, 3)) for d in ("greedy", "beam")}
        results[scan] = (float(value), grads, decoded, jax.device_get(stepped))
    np.testing.assert_allclose(results[True][0], results[False][0], rtol=1e-6)
    expected = _stack_layers(results[False][1], LAYERS)
    for a, b in zip(jax.tree.leaves(results[True][1]), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    for decoder, (tokens, lengths) in results[False][2].items():
        np.testing.assert_array_equal(results[True][2][decoder][0], tokens)
        np.testing.assert_array_equal(results[True][2][decoder][1], lengths)
    expected = jax.tree_util.tree_leaves_with_path(_stack_layers(results[False][3], LAYERS))
    for (path, want), got in zip(expected, jax.tree.leaves(results[True][3]), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=param_path(path))
