"""LSTM and GRU layers against torch.nn.LSTM / torch.nn.GRU with copied weights: outputs and
final states, one and two directions, with padding (torch's packed sequences as reference)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxseq.models.rnn import RNNLayer, reverse_valid, stack_frames

HIDDEN, FEATURES = 8, 5
LENGTHS = np.array([7, 3, 5, 1])  # padded to 9 frames: the final state is not the padding's


def _torch_layer(cell: str, bidirectional: bool, seed: int):
    torch.manual_seed(seed)
    cls = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU
    return cls(FEATURES, HIDDEN, batch_first=True, bidirectional=bidirectional).double()


def _copied_params(layer, bidirectional: bool) -> dict:
    """torch's weight_ih_l0 / ..._reverse → our {"forward": ..., "backward": ...}, 1:1."""
    params = {}
    for direction, suffix in [("forward", ""), ("backward", "_reverse")][: 1 + bidirectional]:
        params[direction] = {
            name: jnp.asarray(getattr(layer, f"{name}_l0{suffix}").detach().numpy(), jnp.float32)
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        }
    return params


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_layer_matches_torch(cell, bidirectional):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(len(LENGTHS), 9, FEATURES))
    x[np.arange(9)[None, :] >= LENGTHS[:, None]] = 0.0
    layer = _torch_layer(cell, bidirectional, seed=1)
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        torch.from_numpy(x), torch.from_numpy(LENGTHS), batch_first=True, enforce_sorted=False
    )
    with torch.no_grad():
        out, state = layer(packed)
    want, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=9)
    h_n = state[0] if cell == "lstm" else state  # [directions, batch, hidden]

    model = RNNLayer(cell, HIDDEN, bidirectional)
    params = _copied_params(layer, bidirectional)
    got, final = jax.jit(model.apply)(
        {"params": params}, jnp.asarray(x, jnp.float32), jnp.asarray(LENGTHS)
    )  # [batch, 9, D·H], [batch, parts, D·H]
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(final[:, 0], torch.cat(list(h_n), -1).numpy(), atol=1e-5, rtol=0)
    if cell == "lstm":
        c_n = torch.cat(list(state[1]), -1).numpy()
        np.testing.assert_allclose(final[:, 1], c_n, atol=1e-5, rtol=0)
    # The parameters init creates have torch's names and shapes.
    init = jax.eval_shape(  # shapes only: nothing to compute
        model.init, jax.random.PRNGKey(0), jnp.asarray(x, jnp.float32), jnp.asarray(LENGTHS)
    )
    assert jax.tree.map(jnp.shape, nn.unbox(init["params"])) == jax.tree.map(jnp.shape, params)


def test_padding_frames_change_nothing():
    """More padding after the valid frames leaves outputs and final states unchanged."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 9, FEATURES)).astype(np.float32)
    model = RNNLayer("lstm", HIDDEN, bidirectional=True)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.asarray(x), jnp.asarray(LENGTHS))
    params = params["params"]
    apply = jax.jit(model.apply)
    out, final = apply({"params": params}, jnp.asarray(x), jnp.asarray(LENGTHS))
    longer = np.concatenate([x, rng.normal(size=(4, 6, FEATURES)).astype(np.float32)], axis=1)
    out2, final2 = apply({"params": params}, jnp.asarray(longer), jnp.asarray(LENGTHS))
    valid = np.arange(9)[None, :] < LENGTHS[:, None]
    np.testing.assert_allclose(out2[:, :9][valid], np.asarray(out)[valid], atol=1e-6)
    assert np.all(np.asarray(out2)[:, 9:] == 0) and np.all(np.asarray(out)[~valid] == 0)
    np.testing.assert_allclose(final2, final, atol=1e-6)


def test_reverse_valid_and_stack_frames():
    x = jnp.arange(10).reshape(2, 5, 1)
    np.testing.assert_array_equal(
        reverse_valid(x, jnp.array([3, 5]))[..., 0], [[2, 1, 0, 3, 4], [9, 8, 7, 6, 5]]
    )
    stacked, lengths = stack_frames(x, jnp.array([3, 5]), 2)  # 5 frames → 3 pairs, zero padded
    np.testing.assert_array_equal(stacked, [[[0, 1], [2, 3], [4, 0]], [[5, 6], [7, 8], [9, 0]]])
    np.testing.assert_array_equal(lengths, [2, 3])
