"""The RNN encoder–decoder against a float64 PyTorch re-implementation, and the properties the
task relies on: attention over valid frames only, padding invariance, cached steps equal to
teacher forcing, logical axes on every parameter, scheduled sampling, and the step the train
loop hands the loss."""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from jaxseq.config import load_config
from jaxseq.models.rnn import RNNDims, RNNModel
from jaxseq.parallel.sharding import LOGICAL_RULES
from jaxseq.tasks.base import STEP_KEY
from jaxseq.tasks.rnn import RNNTask, char_tokenizer, own_inputs
from jaxseq.train.state import TrainState
from jaxseq.train.steps import make_train_step
from tests.conftest import REPO

MELS, VOCAB = 6, 7
LENGTHS = np.array([13, 6, 9])  # frames, padded to 16


def _dims(cell: str, **kw) -> RNNDims:
    base = dict(n_mels=MELS, vocab_size=VOCAB, cell=cell, hidden=8, encoder_layers=2)
    return RNNDims(**{**base, "decoder_layers": 2, "pyramid": (2, 2), **kw})


def _inputs(seed: int = 0, frames: int = 16):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(len(LENGTHS), frames, MELS)).astype(np.float32)
    features[np.arange(frames)[None, :] >= LENGTHS[:, None]] = 0.0
    tokens = rng.integers(0, VOCAB, size=(len(LENGTHS), 5)).astype(np.int32)
    return jnp.asarray(features), jnp.asarray(LENGTHS), jnp.asarray(tokens)


def _random_params(model: RNNModel, seed: int = 0) -> dict:
    """Every parameter N(0, 0.4): zero-initialized biases cannot hide a mis-copy."""
    features, lengths, tokens = _inputs()
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), features, lengths, tokens))
    leaves, treedef = jax.tree.flatten(nn.unbox(shapes["params"]))
    rng = np.random.default_rng(seed)
    return jax.tree.unflatten(
        treedef, [jnp.asarray(rng.normal(0, 0.4, x.shape), jnp.float32) for x in leaves]
    )


def _jit_apply(model: nn.Module, method=None):
    """`model.apply` (of `method`) compiled as one program: run eagerly, every operation of
    the model (its scans, its decoder loop) would compile on its own."""
    return jax.jit(functools.partial(model.apply, method=method))


def _t(x) -> torch.Tensor:
    return torch.from_numpy(np.asarray(x, np.float64).copy())


def _copy_cell(module: torch.nn.Module, p: dict, suffix: str = "") -> None:
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        getattr(module, f"{name}{suffix}").data = _t(p[name])


@torch.no_grad()
def torch_reference(dims: RNNDims, params: dict, features, lengths, tokens) -> tuple:
    """The model in float64 torch: nn.LSTM/GRU layers on packed sequences (so the backward
    direction starts at each item's last frame), frames concatenated between layers, Luong
    attention written out, nn.LSTMCell/GRUCell decoder. -> (logits, attention weights)."""
    rnn = torch.nn.LSTM if dims.cell == "lstm" else torch.nn.GRU
    x, lengths = _t(features), torch.tensor(np.asarray(lengths)).long()
    for i in range(dims.encoder_layers):
        f = dims.reduction(i)
        pad = -x.shape[1] % f
        x = torch.nn.functional.pad(x, (0, 0, 0, pad))
        x = x.reshape(x.shape[0], x.shape[1] // f, f * x.shape[2])
        lengths = -(-lengths // f)
        layer = rnn(x.shape[-1], dims.hidden, batch_first=True, bidirectional=True).double()
        p = params["encoder"][f"layer{i}"]
        _copy_cell(layer, p["forward"], "_l0")
        _copy_cell(layer, p["backward"], "_l0_reverse")
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            x, lengths, batch_first=True, enforce_sorted=False
        )
        out, state = layer(packed)
        x, _ = torch.nn.utils.rnn.pad_packed_sequence(
            out, batch_first=True, total_length=x.shape[1]
        )
    h_n = state[0] if dims.cell == "lstm" else state
    final_h = torch.cat([h_n[0], h_n[1]], -1)  # [batch, 2H]
    b, L, H = x.shape[0], dims.decoder_layers, dims.hidden
    h = torch.tanh(final_h @ _t(params["bridge_h"]["kernel"]) + _t(params["bridge_h"]["bias"]))
    h = list(h.reshape(b, L, H).unbind(1))
    if dims.cell == "lstm":
        final_c = torch.cat([state[1][0], state[1][1]], -1)
        c = final_c @ _t(params["bridge_c"]["kernel"]) + _t(params["bridge_c"]["bias"])
        c = list(c.reshape(b, L, H).unbind(1))
    keys = x @ _t(params["keys"]["kernel"])  # [batch, frames', H]
    mask = torch.arange(x.shape[1])[None, :] < lengths[:, None]
    dec = params["decoder"]
    cell_cls = torch.nn.LSTMCell if dims.cell == "lstm" else torch.nn.GRUCell
    cells = []
    for i in range(L):
        cell = cell_cls(2 * H if i == 0 else H, H).double()
        _copy_cell(cell, dec[f"layer{i}"])
        cells.append(cell)
    feed = torch.zeros(b, H, dtype=torch.float64)
    all_logits, all_weights = [], []
    for t in range(tokens.shape[1]):
        inp = torch.cat([_t(dec["embed"]["embedding"])[np.array(tokens[:, t])], feed], -1)
        for i, cell in enumerate(cells):
            if dims.cell == "lstm":
                h[i], c[i] = cell(inp, (h[i], c[i]))
            else:
                h[i] = cell(inp, h[i])
            inp = h[i]
        scores = torch.einsum("bth,bh->bt", keys, inp).masked_fill(~mask, -torch.inf)
        weights = torch.softmax(scores, -1)
        context = torch.einsum("bt,btw->bw", weights, x)
        combine = torch.cat([context, inp], -1) @ _t(dec["combine"]["kernel"])
        feed = torch.tanh(combine + _t(dec["combine"]["bias"]))
        all_logits.append(feed @ _t(dec["output"]["kernel"]) + _t(dec["output"]["bias"]))
        all_weights.append(weights)
    return torch.stack(all_logits, 1).numpy(), torch.stack(all_weights, 1).numpy()


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_model_matches_a_torch_reimplementation(cell):
    dims = _dims(cell)
    model = RNNModel(dims)
    params = _random_params(model)
    features, lengths, tokens = _inputs()
    logits, weights = _jit_apply(model)({"params": params}, features, lengths, tokens)
    want_logits, want_weights = torch_reference(dims, params, features, lengths, tokens)
    np.testing.assert_allclose(logits, want_logits, atol=1e-5, rtol=0)
    np.testing.assert_allclose(weights, want_weights, atol=1e-6, rtol=0)


def test_attention_sums_to_one_over_valid_frames_and_is_zero_on_padding():
    model = RNNModel(_dims("lstm"))
    params = _random_params(model, seed=3)
    features, lengths, tokens = _inputs(frames=23)
    _, weights = _jit_apply(model)({"params": params}, features, lengths, tokens)  # [b, 5, 6]
    valid = -(-LENGTHS // 4)  # encoder frames after the (2, 2) pyramid: [4, 2, 3]
    weights = np.asarray(weights)
    frames = np.arange(weights.shape[-1])[None, None, :]
    mask = np.broadcast_to(frames < valid[:, None, None], weights.shape)
    assert weights.shape[-1] == 6 and np.all(weights[~mask] == 0.0)  # exactly 0 on padding
    np.testing.assert_allclose(np.sum(weights * mask, -1), 1.0, atol=1e-6)
    assert np.all(weights[mask] > 0)


def test_padding_and_batch_mates_change_nothing():
    model = RNNModel(_dims("gru", bidirectional=True))
    params = _random_params(model, seed=4)
    features, lengths, tokens = _inputs(frames=16)
    apply = _jit_apply(model)
    logits, weights = apply({"params": params}, features, lengths, tokens)
    longer = jnp.pad(features, ((0, 0), (0, 21), (0, 0)), constant_values=3.0)  # junk padding
    logits2, weights2 = apply({"params": params}, longer, lengths, tokens)
    np.testing.assert_allclose(logits2, logits, atol=1e-6)
    np.testing.assert_allclose(weights2[..., : weights.shape[-1]], weights, atol=1e-7)
    alone, _ = apply({"params": params}, features[1:2], lengths[1:2], tokens[1:2])
    np.testing.assert_allclose(alone[0], logits[1], atol=1e-6)


@pytest.mark.parametrize("feeding", [True, False])
def test_cached_steps_equal_teacher_forcing(feeding):
    """decode_step (the search's step) fed the same tokens gives the teacher-forced logits."""
    model = RNNModel(_dims("lstm", input_feeding=feeding, bidirectional=False))
    params = _random_params(model, seed=5)
    features, lengths, tokens = _inputs()
    logits, weights = _jit_apply(model)({"params": params}, features, lengths, tokens)
    memory, carry = _jit_apply(model, RNNModel.encode)({"params": params}, features, lengths)
    decode_step = _jit_apply(model, RNNModel.decode_step)  # one compile serves every step
    for t in range(tokens.shape[1]):
        carry, (step_logits, step_weights) = decode_step(
            {"params": params}, carry, tokens[:, t], memory
        )
        np.testing.assert_allclose(step_logits, logits[:, t], atol=1e-6)
        np.testing.assert_allclose(step_weights, weights[:, t], atol=1e-7)


def test_every_parameter_has_logical_axes():
    model = RNNModel(_dims("lstm"))
    boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *_inputs()))["params"]
    leaves = jax.tree_util.tree_flatten_with_path(
        boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
    )[0]
    assert (
        len(leaves) == len(jax.tree.leaves(nn.unbox(boxed))) == 34
    )  # 16 encoder, 4 bridge, 1 keys, 13 decoder
    ruled = dict(LOGICAL_RULES)
    for path, leaf in leaves:
        where = jax.tree_util.keystr(path)
        assert isinstance(leaf, nn.LogicallyPartitioned), where
        assert len(leaf.names) == leaf.value.ndim and set(leaf.names) <= set(ruled), where
        assert len(set(leaf.names)) == len(leaf.names), where


# ----------------------------------------------------------------------------- the task


@pytest.fixture(scope="module")
def task_and_batch():
    cfg = load_config(REPO / "configs" / "rnn_tiny.yaml", ["data.max_label_length=6"])
    task = RNNTask(cfg, char_tokenizer("abc "), n_mels=MELS)
    features, lengths, _ = _inputs()
    labels = np.array([[4, 5, 6, 7, 4, 0], [6, 6, 0, 0, 0, 0], [5, 4, 7, 6, 0, 0]], np.int32)
    batch = {
        "features": features,
        "feature_lengths": lengths,
        "labels": jnp.asarray(labels),
        "label_lengths": jnp.array([5, 2, 4], jnp.int32),
    }
    shapes = jax.eval_shape(lambda: task.init_variables(jax.random.PRNGKey(0), batch))
    leaves, treedef = jax.tree.flatten(nn.unbox(shapes["params"]))
    rng = np.random.default_rng(6)
    params = jax.tree.unflatten(
        treedef, [jnp.asarray(rng.normal(0, 0.5, x.shape), jnp.float32) for x in leaves]
    )
    return task, batch, params


@functools.partial(jax.jit, static_argnums=0)  # the task: hashed by identity
def _reference_loss_and_logits(task, params, batch, inputs):
    _, targets, weights = task._teacher_forcing(batch)
    logits, _ = task.model.apply(
        {"params": params}, batch["features"], batch["feature_lengths"], inputs
    )
    per_token = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return jnp.sum(per_token * weights) / jnp.sum(weights), logits


def _reference_loss(task, params, batch, inputs):
    """Mean cross-entropy (label smoothing 0 in rnn_tiny) of the targets given `inputs`."""
    value, logits = _reference_loss_and_logits(task, params, batch, inputs)
    return float(value), logits


def _loss_fn(task):
    """`task.loss_fn` in training mode, compiled as one program."""
    return jax.jit(functools.partial(task.loss_fn, train=True))


@pytest.fixture(scope="module")
def ramp(task_and_batch):
    """The task with scheduled sampling ramping linearly to p = 1 at step 4, and its loss
    compiled once (the step is data: both tests below run the one program)."""
    task, _, _ = task_and_batch
    full = dataclasses.replace(task.cfg.rnn, scheduled_sampling=1.0, scheduled_sampling_steps=4)
    task = RNNTask(dataclasses.replace(task.cfg, rnn=full), task.tokenizer, MELS)
    return task, _loss_fn(task)


def test_char_tokenizer_is_one_id_per_character():
    tok = char_tokenizer("abc' ")
    ids = tok.encode("ab c'")
    np.testing.assert_array_equal(ids, [4, 5, 8, 6, 7])  # after <pad> <s> </s> <unk>
    assert tok.decode([tok.start_id, *ids, tok.end_id, tok.pad_id]) == "ab c'"
    assert (tok.size, tok.start_id, tok.end_id) == (9, 1, 2)


def test_own_inputs_feeds_the_previous_prediction():
    inputs = jnp.array([[1, 10, 11, 12], [1, 20, 21, 22]])
    predictions = jnp.array([[30, 31, 32, 33], [40, 41, 42, 43]])
    swap = jnp.array([[True, True, False, True], [False, False, True, False]])
    np.testing.assert_array_equal(
        own_inputs(inputs, predictions, swap), [[1, 30, 11, 32], [1, 20, 41, 22]]
    )


def test_scheduled_sampling_zero_is_teacher_forcing(task_and_batch, ramp):
    task, batch, params = task_and_batch
    ramp_task, ramp_loss = ramp
    inputs, _, _ = ramp_task._teacher_forcing(batch)
    want, _ = _reference_loss(ramp_task, params, batch, inputs)
    zero = dataclasses.replace(task.cfg.rnn, scheduled_sampling=0.0)
    plain = RNNTask(dataclasses.replace(task.cfg, rnn=zero), task.tokenizer, MELS)
    step = {STEP_KEY: jnp.zeros(3, jnp.int32)}
    # p = 0 configured, and p = 0 at step 0 of the linear ramp.
    for loss_fn in (_loss_fn(plain), ramp_loss):
        loss, _ = loss_fn(params, {**batch, **step}, jax.random.PRNGKey(0))
        assert float(loss) == pytest.approx(want, rel=1e-6)


def test_scheduled_sampling_one_feeds_the_models_own_argmax(task_and_batch, ramp):
    _, batch, params = task_and_batch
    task, loss_fn = ramp
    inputs, _, _ = task._teacher_forcing(batch)
    _, logits = _reference_loss(task, params, batch, inputs)  # the first, teacher-forced pass
    own = jnp.concatenate([inputs[:, :1], jnp.argmax(logits, -1)[:, :-1]], axis=1)
    assert not np.array_equal(own, inputs)
    want, _ = _reference_loss(task, params, batch, own)
    step = {STEP_KEY: jnp.full(3, 4, jnp.int32)}  # the end of the ramp: p = 1
    loss, _ = loss_fn(params, {**batch, **step}, jax.random.PRNGKey(0))
    assert float(loss) == pytest.approx(want, rel=1e-6)
    # The probability grows linearly with the step the loop passes.
    probs = [float(task.sampling_probability(jnp.int32(s))) for s in (0, 1, 2, 4, 9)]
    assert probs == pytest.approx([0.0, 0.25, 0.5, 1.0, 1.0])


@pytest.mark.parametrize("microbatches", [1, 2])
def test_train_step_hands_the_loss_its_step(microbatches):
    """The loop's step reaches the loss as batch["step"], also split into microbatches."""

    class Probe:
        def loss_fn(self, params, batch, rng, train):
            seen = batch[STEP_KEY].astype(jnp.float32)
            loss = jnp.sum(params["w"] ** 2)
            return loss, {"tokens": jnp.float32(1.0), "step_sum": jnp.sum(seen)}

    tx = optax.sgd(0.1)
    params = {"w": jnp.ones(3)}
    state = TrainState(jnp.int32(7), params, tx.init(params), jax.random.PRNGKey(0))
    batch = {"features": jnp.zeros((4, 2)), "feature_lengths": jnp.ones(4, jnp.int32)}
    step = jax.jit(make_train_step(Probe(), tx, microbatches, frozen=()))  # no task.cfg
    _, metrics, _ = step(state, batch, jnp.int32(0))
    assert float(metrics["step_sum"]) == 7 * 4  # every row holds step 7
