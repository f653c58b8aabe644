"""AdamW's weight-decay mask: by parameter role (kernels, embeddings and position tables decay;
biases, LayerNorm scales and offsets, gains and special tokens do not), whatever the rank, so
scanned layers (a leading layer axis) decay exactly what the layer loop does. The same step
scanned and unscanned is in tests/test_train_options.py."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxseq.config import OptimConfig, load_config
from jaxseq.data.labels import LabelSet
from jaxseq.data.pipeline import load_dataset_info
from jaxseq.tasks import build_task
from jaxseq.tasks.classify import ClassifyTask
from jaxseq.train.optimizer import decay_mask, learning_rate_schedule, make_optimizer, param_path
from tests.conftest import REPO

# name → (shape, decayed): real paths of the families' parameter trees, by hand.
PARAMS = {
    "encoder/layer0/attn/query/kernel": ((4, 2, 3), True),
    "encoder/layer0/attn/query/bias": ((2, 3), False),  # [heads, head_dim]: 2-D, no decay
    "encoder/layer0/attn_norm/LayerNorm_0/scale": ((4,), False),
    "encoder/layer0/attn_norm/LayerNorm_0/bias": ((4,), False),
    "encoder/layers/layer/mlp/wi/kernel": ((2, 4, 8), True),  # scanned: [layers, ...]
    "encoder/layers/layer/mlp/wi/bias": ((2, 8), False),
    "encoder/layers/layer/mlp_norm/LayerNorm_0/scale": ((2, 4), False),
    "encoder/stem/conv0/kernel": ((3, 5, 4), True),
    "encoder/stem/conv0/bias": ((4,), False),
    "encoder/pos_embedding": ((6, 4), True),
    "encoder/cls_token": ((4,), False),
    "decoder/embed/embedding": ((10, 4), True),
    "decoder/positions/alpha": ((1,), False),
    "decoder/layer0/weight_ih": ((8, 4), True),
    "decoder/layer0/weight_hh": ((8, 2), True),
    "decoder/layer0/bias_ih": ((8,), False),
}
DECAYED = {"kernel", "embedding", "pos_embedding", "weight_ih", "weight_hh"}
NOT_DECAYED = {"bias", "scale", "bias_ih", "bias_hh", "alpha", "cls_token", "distillation_token"}


def _nest(flat: dict) -> dict:
    tree = {}
    for name, value in flat.items():
        *parents, leaf = name.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def test_adamw_step_decays_by_role_like_optax_with_a_hand_written_mask():
    rng = np.random.default_rng(0)
    params = _nest(
        {n: jnp.asarray(rng.normal(size=s), jnp.float32) for n, (s, _) in PARAMS.items()}
    )
    mask = _nest({n: decayed for n, (_, decayed) in PARAMS.items()})
    cfg = OptimConfig(learning_rate=1e-2, warmup_steps=0, weight_decay=0.5, clip_norm=1e9)
    reference = optax.adamw(
        learning_rate_schedule(cfg, 10),
        b1=cfg.b1,
        b2=cfg.b2,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        mask=mask,
    )  # make_optimizer's clipping at clip_norm 1e9 changes nothing
    grads = [jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), params)]
    grads.append(jax.tree.map(lambda g: -0.5 * g, grads[0]))
    results = []
    for tx in (make_optimizer(cfg, 10), reference):
        p, state = params, tx.init(params)
        for g in grads:  # two steps: the second one with Adam's moments from the first
            updates, state = jax.jit(tx.update)(g, state, p)
            p = optax.apply_updates(p, updates)
        results.append(p)
    got, want = results
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=param_path(path))
    assert decay_mask(params) == mask


def _family_params(tiny_dataset, config: str, *overrides: str) -> dict:
    cfg = load_config(REPO / "configs" / config, [f"data.dataset={tiny_dataset}", *overrides])
    if cfg.model.family == "classify":  # the tiny corpus has no class labels
        task = ClassifyTask(cfg, LabelSet(("a", "b", "c"), cfg.classify.level), 80)
    else:
        task = build_task(cfg, load_dataset_info(tiny_dataset, "train"))
    batch = task.dummy_batch(2, cfg.data.buckets[0])
    init = jax.eval_shape(lambda r: task.init_variables(r, batch), jax.random.PRNGKey(0))
    return nn.meta.unbox(init["params"])


@pytest.mark.parametrize(
    "config, overrides",
    [
        ("ctc_tiny.yaml", ()),
        ("ctc_tiny.yaml", ("model.scan_layers=true",)),
        ("seq2seq_tiny.yaml", ("model.ctc_weight=0.3",)),
        ("seq2seq_tiny.yaml", ("model.ctc_weight=0.3", "model.scan_layers=true")),
        ("tts_tiny.yaml", ()),
        ("rnn_tiny.yaml", ()),
        ("classify_tiny.yaml", ()),
        ("classify_tiny.yaml", ("classify.encoder=ast", "model.scan_layers=true")),
    ],
)
def test_every_family_parameter_has_a_decay_role(tiny_dataset, config, overrides):
    """Every parameter name of every family is a known role (a new one must be added above
    and to jaxseq.train.optimizer.NO_DECAY if it is no matrix), and decays by that role."""
    params = _family_params(tiny_dataset, config, *overrides)
    names = {
        p: param_path(p).rsplit("/", 1)[-1] for p, _ in jax.tree_util.tree_leaves_with_path(params)
    }
    assert set(names.values()) <= DECAYED | NOT_DECAYED, set(names.values()) - DECAYED - NOT_DECAYED
    got = jax.tree_util.tree_leaves_with_path(decay_mask(params))
    assert {param_path(p): m for p, m in got} == {
        param_path(p): n in DECAYED for p, n in names.items()
    }
