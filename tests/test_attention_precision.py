"""MultiHeadAttention in bfloat16 against a float64 NumPy oracle, where bfloat16 logits fail.

The logits q·k are the one place where rounding to bfloat16 costs more than bfloat16 storage
does: a logit of 90 stored in bfloat16 (8 significant bits) is off by up to 0.25, which moves
the softmax weights by up to 28%. The module keeps its activations (projections, weights,
outputs) in the compute dtype but must take the logits, and the sums over keys, in float32.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from jaxseq.models.attention import MultiHeadAttention

BATCH, Q_LEN, KV_LEN, EMBED, HEADS = 2, 8, 512, 64, 4
HEAD_DIM = EMBED // HEADS  # 16: dividing by sqrt(16) = 4 is exact in bfloat16


def to_bf16(x) -> np.ndarray:
    """float64 values rounded to the nearest bfloat16."""
    return np.asarray(x, np.float64).astype(ml_dtypes.bfloat16).astype(np.float64)


def oracle(p, xq, xkv, mask, rounded) -> np.ndarray:
    """Attention in float64 NumPy [batch, q_len, embed]; `rounded` is applied where the module
    stores an activation (each projection, the softmax weights, the attended values, the output)
    and never inside a contraction."""
    q = rounded(rounded(np.einsum("bqe,ehd->bqhd", xq, p["query"]["kernel"])) + p["query"]["bias"])
    k = rounded(rounded(np.einsum("bke,ehd->bkhd", xkv, p["key"]["kernel"])) + p["key"]["bias"])
    v = rounded(rounded(np.einsum("bke,ehd->bkhd", xkv, p["value"]["kernel"])) + p["value"]["bias"])
    q = rounded(q / np.sqrt(HEAD_DIM))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k)  # [batch, heads, q_len, kv_len]
    logits = np.where(mask, logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights = rounded(weights / weights.sum(-1, keepdims=True))
    out = rounded(np.einsum("bhqk,bkhd->bqhd", weights, v))  # [batch, q_len, heads, head_dim]
    y = rounded(np.einsum("bqhd,hde->bqe", out, p["out"]["kernel"]))
    return rounded(y + p["out"]["bias"])


@pytest.fixture(scope="module")
def case():
    """bfloat16-exact inputs of scale 4 and parameters (so logits reach ~90), the last 100 keys
    of the second item masked out, and the module's bfloat16 output."""
    rng = np.random.default_rng(0)
    xq = to_bf16(4.0 * rng.normal(size=(BATCH, Q_LEN, EMBED)))
    xkv = to_bf16(4.0 * rng.normal(size=(BATCH, KV_LEN, EMBED)))
    valid = np.ones((BATCH, KV_LEN), bool)
    valid[1, -100:] = False
    mask = valid[:, None, None, :]  # [batch, 1, 1, kv_len]
    module = MultiHeadAttention(num_heads=HEADS, dtype=jnp.bfloat16)
    shapes = nn.meta.unbox(  # shapes only: nothing to compile or compute
        jax.eval_shape(
            module.init, jax.random.key(0), jnp.float32(xq), jnp.float32(xkv), mask, True
        )
    )
    # Random float32 parameters that bfloat16 holds exactly (biases included, not zeros).
    params = jax.tree.map(lambda s: to_bf16(rng.normal(size=s.shape) / np.sqrt(EMBED)), shapes)
    apply = jax.jit(lambda v, a, b, m: module.apply(v, a, b, m, True))
    out = apply(jax.tree.map(jnp.float32, params), jnp.float32(xq), jnp.float32(xkv), mask)
    assert out.dtype == jnp.bfloat16
    return params["params"], xq, xkv, mask, np.asarray(out, np.float64)


def test_bf16_attention_matches_oracle_with_float32_logits(case):
    p, xq, xkv, mask, out = case
    expected = oracle(p, xq, xkv, mask, to_bf16)
    logits = np.einsum(
        "bqhd,bkhd->bhqk",
        np.einsum("bqe,ehd->bqhd", xq, p["query"]["kernel"]) / np.sqrt(HEAD_DIM),
        np.einsum("bke,ehd->bkhd", xkv, p["key"]["kernel"]),
    )
    assert np.abs(logits).max() > 64  # where bfloat16's spacing is 0.5 and more
    # Within 2 bfloat16 steps (2^-7 relative) of the oracle; bfloat16 logits are off by ~0.1
    # of the output scale (about 16 steps).
    np.testing.assert_allclose(out, expected, rtol=2**-7, atol=2**-7 * np.abs(expected).std())


def test_bf16_attention_closer_to_exact_float64(case):
    """Against attention computed entirely in float64 (no bfloat16 rounding at all), the error
    is what bfloat16 activations cost: 1.1% of the output scale (bfloat16 logits: 1.9%)."""
    p, xq, xkv, mask, out = case
    exact = oracle(p, xq, xkv, mask, lambda x: x)
    rms = np.sqrt(np.mean((out - exact) ** 2)) / exact.std()
    assert rms < 0.015, rms


def test_rnn_attention_scores_in_float32_under_bfloat16():
    """The RNN decoder's Luong attention (`jaxseq.models.rnn.attend`): bfloat16 states of scale
    4 over 512 frames give scores of ~90; the weights must match a float64 softmax of the
    bfloat16-rounded inputs' scores to bfloat16 precision (bfloat16 scores miss by up to 28%)."""
    from jaxseq.models.rnn import Memory, attend

    rng = np.random.default_rng(1)
    hidden, frames = 64, 512
    query = to_bf16(4.0 * rng.normal(size=(BATCH, hidden)))  # [n = batch, hidden]
    keys = to_bf16(rng.normal(size=(BATCH, frames, hidden)))
    values = to_bf16(rng.normal(size=(BATCH, frames, hidden)))
    mask = np.ones((BATCH, frames), bool)
    mask[1, -100:] = False
    memory = Memory(jnp.float32(keys), jnp.float32(values), jnp.asarray(mask), mask.sum(-1))
    context, weights = jax.jit(attend, static_argnums=2)(jnp.float32(query), memory, jnp.bfloat16)
    scores = np.einsum("bh,bth->bt", query, keys)  # float64 [batch, frames]
    assert np.abs(scores).max() > 60
    scores = np.where(mask, scores, -np.inf)
    want = np.exp(scores - scores.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    got_w = np.asarray(weights, np.float64)
    big = want > 1e-4  # bfloat16 scores move these by up to 28%; float32 scores by < 1%
    np.testing.assert_allclose(got_w[big], want[big], rtol=2**-7)
    np.testing.assert_allclose(got_w[~big], want[~big], atol=2e-4)
    want_context = to_bf16(np.einsum("bt,btw->bw", to_bf16(want), values))
    got = np.asarray(context, np.float64)
    np.testing.assert_allclose(got, want_context, atol=2**-7 * np.abs(want_context).max())
