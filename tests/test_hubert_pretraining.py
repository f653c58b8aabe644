"""HuBERT pre-training (jaxseq.models.hubert_pretraining, jaxseq.losses.hubert) against a float64
NumPy oracle written from fairseq's `HubertModel.forward` / `compute_nce` and `HubertCriterion`
(fairseq is not installed): logits over [positive, every class] with the target's copies at
-inf, cross-entropy summed over masked (and unmasked) valid frames, sample size, and the feature
penalty; on a padded batch, through the real module."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseq.losses.hubert import hubert_loss
from jaxseq.models.hubert_pretraining import HubertPreTraining, HubertPreTrainingDims
from jaxseq.models.wav2vec2 import Wav2Vec2Dims, Wav2Vec2Encoder
from jaxseq.parallel.sharding import LOGICAL_RULES
from tests.wav2vec2_tiny import TINY

DIMS = Wav2Vec2Dims(
    **TINY,
    feat_proj_layer_norm=False,
    conv_bias=True,
)
OBJECTIVE = HubertPreTrainingDims(num_classes=7, final_dim=12)
SAMPLES, SHORT = 1600, 1100  # 79 and 54 frames
LENGTHS = np.array([79, 54])


def _fairseq_loss(x, final_proj, label_embs, targets, masked, lengths, weights, features_pen):
    """fairseq's HuBERT loss in float64 NumPy, step for step (one label set, untied
    final_proj off, no target_glu): returns (loss, loss_m, loss_u, sample_size)."""
    logit_temp, pred_masked_weight, pred_nomask_weight, pen_weight = weights
    padding = np.arange(x.shape[1])[None, :] >= lengths[:, None]

    def cosine(a, b):  # torch.cosine_similarity, eps 1e-8 on each norm
        a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-8)
        b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-8)
        return (a * b).sum(-1)

    def compute_nce(proj_x, pos, negs):  # fairseq: proj_x [S, D], pos [S, D], negs [C, S, D]
        neg_is_pos = (pos == negs).all(-1)
        targets_ = np.concatenate([pos[None], negs], axis=0)
        logits = cosine(proj_x[None], targets_) / logit_temp  # [C + 1, S]
        logits[1:][neg_is_pos] = -np.inf
        return logits.T  # [S, C + 1]

    def compute_pred(indices):
        proj_x = x[indices] @ final_proj["kernel"] + final_proj["bias"]
        pos = label_embs[targets[indices]]
        negs = np.broadcast_to(label_embs[:, None], (len(label_embs), len(proj_x), pos.shape[1]))
        return compute_nce(proj_x, pos, negs)

    def cross_entropy_sum(logits):  # target 0 on every row
        top = logits.max(-1, keepdims=True)
        lse = np.log(np.exp(logits - top).sum(-1)) + top[:, 0]
        return float((lse - logits[:, 0]).sum())

    loss_m = cross_entropy_sum(compute_pred(~padding & masked))
    loss_u = cross_entropy_sum(compute_pred(~padding & ~masked))
    loss, sample_size = 0.0, 0
    if pred_masked_weight > 0:
        loss += pred_masked_weight * loss_m
        sample_size += int((~padding & masked).sum())
    if pred_nomask_weight > 0:
        loss += pred_nomask_weight * loss_u
        sample_size += int((~padding & ~masked).sum())
    loss += pen_weight * features_pen * sample_size
    return loss, loss_m, loss_u, sample_size


@pytest.fixture(scope="module")
def run():
    """The module on a padded batch with a fixed mask: (params, mask, targets, output)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, SAMPLES)).astype(np.float32)
    x[1, SHORT:] = 0.0
    mask = np.zeros((2, 79), bool)
    mask[0, 3:13] = mask[0, 40:60] = mask[1, 10:20] = mask[1, 45:54] = True
    model = HubertPreTraining(DIMS, OBJECTIVE)
    params = jax.jit(model.init)(jax.random.key(0), x, None, mask)["params"]
    params = nn.unbox(params)
    apply = jax.jit(lambda p, x, m: model.apply({"params": p}, x, jnp.array([SAMPLES, SHORT]), m))
    out = apply(params, x, mask)
    targets = rng.integers(0, OBJECTIVE.num_classes, (2, 79))
    return model, params, x, mask, targets, out, apply


@pytest.mark.parametrize(
    "weights",
    [(0.1, 1.0, 0.0, 0.0), (0.1, 1.0, 0.5, 10.0), (0.3, 0.0, 1.0, 0.0)],
    ids=["masked", "both+penalty", "unmasked"],
)
def test_loss_matches_fairseq_oracle(run, weights):
    model, params, x, mask, targets, out, _ = run
    logit_temp, wm, wu, pen = weights
    objective = dataclasses.replace(OBJECTIVE, logit_temp=logit_temp)
    out = HubertPreTraining(DIMS, objective).apply(
        {"params": params}, x, jnp.array([SAMPLES, SHORT]), mask
    )
    ours = hubert_loss(
        out.logits, targets, mask, jnp.asarray(LENGTHS), wm, wu, out.features_pen, pen
    )
    hidden = np.asarray(out.encoder.last_hidden_state, np.float64)
    final_proj = {k: np.asarray(v, np.float64) for k, v in params["final_proj"].items()}
    label_embs = np.asarray(params["label_embeddings"], np.float64)
    features_pen = float(np.mean(np.asarray(out.encoder.conv_features, np.float64) ** 2))
    loss, loss_m, loss_u, sample_size = _fairseq_loss(
        hidden, final_proj, label_embs, targets, mask, LENGTHS, weights, features_pen
    )
    for what, a, b in [
        ("loss", ours.loss, loss),
        ("loss_m", ours.masked_loss, loss_m),
        ("loss_u", ours.unmasked_loss, loss_u),
        ("features_pen", out.features_pen, features_pen),
    ]:
        err = abs(float(a) - b) / max(1.0, abs(b))
        print(f"{what}: {float(a):.6f} vs fairseq oracle {b:.6f}, relative difference {err:.1e}")
        assert err < 1e-5, what
    assert float(ours.sample_size) == sample_size
    assert out.logits.shape == (2, 79, OBJECTIVE.num_classes)
    assert float(ours.num_masked) == 49 and float(ours.num_unmasked) == 79 + 54 - 49


def test_masked_frames_take_the_mask_embedding(run):
    model, params, x, mask, targets, out, apply = run
    encoder = Wav2Vec2Encoder(DIMS).apply(
        {"params": params["encoder"]}, x, jnp.array([SAMPLES, SHORT]), True, mask
    )
    np.testing.assert_allclose(out.encoder.last_hidden_state, encoder.last_hidden_state, atol=1e-5)
    unmasked = apply(params, x, np.zeros_like(mask))
    assert np.abs(np.asarray(unmasked.logits - out.logits)).max() > 1e-2
    # Logits are cosines over the temperature.
    assert np.abs(np.asarray(out.logits)).max() <= 1 / OBJECTIVE.logit_temp + 1e-4


def test_gradients_reach_every_parameter(run):
    model, params, x, mask, targets, _, _ = run

    def loss(p):
        out = model.apply({"params": p}, x, jnp.array([SAMPLES, SHORT]), mask)
        return hubert_loss(out.logits, targets, mask, jnp.asarray(LENGTHS)).loss

    grads = jax.jit(jax.grad(loss))(params)
    for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
        g = np.asarray(g)
        assert np.isfinite(g).all() and np.abs(g).max() > 0, jax.tree_util.keystr(path)


def test_every_parameter_has_logical_axes():
    boxed = jax.eval_shape(
        lambda: HubertPreTraining(DIMS, OBJECTIVE).init(
            jax.random.key(0), jnp.zeros((1, SAMPLES)), None, jnp.ones((1, 79), bool)
        )
    )["params"]
    assert {"encoder", "final_proj", "label_embeddings"} <= set(boxed)
    ruled = dict(LOGICAL_RULES)
    leaves = jax.tree_util.tree_flatten_with_path(
        boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
    )[0]
    for path, leaf in leaves:
        where = jax.tree_util.keystr(path)
        assert isinstance(leaf, nn.LogicallyPartitioned), where
        names = tuple(leaf.names)
        assert len(names) == leaf.value.ndim and len(set(names)) == len(names), where
        assert set(names) <= set(ruled), where
