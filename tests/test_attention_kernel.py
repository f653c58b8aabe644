"""MultiHeadAttention's two routes against a float64 oracle and against the module as it was.

The module attends through `jax.nn.dot_product_attention` (`attention.fused_attention`) where
`attention.attention_kernel` names a fused kernel (cuDNN, on a GPU), else through its einsums. Every
module test runs both routes on this CPU: "einsum" as is, and "dot_product_attention" with
`attention_kernel` patched to name XLA's implementation, so the module code that feeds cuDNN
(mask broadcast, is_causal, scale, beam groups) runs here, on the XLA kernel.

`OldMultiHeadAttention` below is the module as it was before, copied verbatim (its projections
are the package's SplitHeads / MergeHeads, which did not change): with the same parameters the
new module must give the same outputs, caches and gradients, in float32 and bfloat16, for
padding masks, causal self-attention, cross-attention, cached decoding steps and beam-search
groups. The oracle is attention written out in float64 (NumPy; jax.numpy under
`jax.enable_x64` for the gradients), with no bfloat16 rounding at all. Fully masked query rows
(the padded rows of an encoder mask) average every value in all three, as they always did.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax import lax

from jaxseq.models import attention
from jaxseq.models.attention import (
    MergeHeads,
    MultiHeadAttention,
    SplitHeads,
)

EMBED, HEADS = 64, 4
HEAD_DIM = EMBED // HEADS  # 16: dividing by sqrt(16) = 4 is exact in bfloat16 (the old path did)
DTYPES = [jnp.float32, jnp.bfloat16]


class OldMultiHeadAttention(nn.Module):
    """The explicit einsum attention as it was (reference only; same parameter names)."""

    num_heads: int
    dtype: jnp.dtype = jnp.float32
    dropout_rate: float = 0.0
    key_bias: bool = True
    cache: str | None = None
    sow_weights: bool = False

    @nn.compact
    def __call__(self, inputs_q, inputs_kv, mask, deterministic, decode=False):
        features = inputs_q.shape[-1]
        head_dim = features // self.num_heads
        split = functools.partial(SplitHeads, self.num_heads, head_dim, dtype=self.dtype)
        query = split(name="query")(inputs_q)
        key_proj = split(use_bias=self.key_bias, name="key")
        value_proj = split(name="value")
        use_cache = decode and self.cache is not None
        if use_cache and self.cache == "cross" and self.has_variable("cache", "cross_key"):
            key = self.get_variable("cache", "cross_key")
            value = self.get_variable("cache", "cross_value")
        else:
            key = key_proj(inputs_kv)
            value = value_proj(inputs_kv)
            if use_cache and self.cache == "cross":
                self.put_variable("cache", "cross_key", key)
                self.put_variable("cache", "cross_value", value)
        if use_cache and self.cache == "self":
            is_initialized = self.has_variable("cache", "cached_key")
            cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
            cached_value = self.variable(
                "cache", "cached_value", jnp.zeros, value.shape, value.dtype
            )
            cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
            if is_initialized:
                i = cache_index.value
                key = lax.dynamic_update_slice(cached_key.value, key, (0, i, 0, 0))
                value = lax.dynamic_update_slice(cached_value.value, value, (0, i, 0, 0))
                cached_key.value, cached_value.value = key, value
                cache_index.value = i + 1
                mask = (jnp.arange(key.shape[1]) <= i)[None, None, None, :]
        batch, q_len = query.shape[:2]
        items = key.shape[0]
        query = query.reshape(items, batch // items * q_len, *query.shape[2:])
        query = query / np.sqrt(head_dim).astype(self.dtype)
        logits = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1)
        if self.sow_weights:
            self.sow("intermediates", "weights", weights)
        weights = weights.astype(self.dtype)
        if self.dropout_rate > 0.0:
            weights = nn.Dropout(self.dropout_rate)(weights, deterministic=deterministic)
        out = jnp.einsum(
            "bhqk,bkhd->bqhd", weights, value, preferred_element_type=jnp.float32
        ).astype(self.dtype)
        out = out.reshape(batch, q_len, *out.shape[2:])
        out = MergeHeads(features, dtype=self.dtype, name="out")(out)
        return out


@pytest.fixture(params=["einsum", "dot_product_attention", "blocked"])
def route(request, monkeypatch):
    """The module's route: its einsums (short sequences, TPUs), `fused_attention` with XLA's
    kernel in place of cuDNN's, or `blocked_attention` (long sequences on a CPU) with blocks of
    3 queries (several blocks, the last one padded); the kernel must then have been asked for."""
    asked = []
    if request.param != "einsum":
        kernel = "xla" if request.param == "dot_product_attention" else "blocked"
        monkeypatch.setattr(
            attention, "attention_kernel", lambda *args: asked.append(args) or kernel
        )
        monkeypatch.setattr(attention, "BLOCKED_QUERIES", 3)
    yield request.param
    assert bool(asked) == (request.param != "einsum")


def to_bf16(x) -> np.ndarray:
    """float64 values rounded to the nearest bfloat16."""
    return np.asarray(x, np.float64).astype(ml_dtypes.bfloat16).astype(np.float64)


def oracle(p, xq, xkv, mask, causal=False, group=1, xp=np):
    """Attention in float64 (`xp` = np, or jnp under `jax.enable_x64`): (output [batch, q_len,
    embed], weights [batch, heads, q_len, kv_len]). Query row b attends the keys of item
    b // `group`; masked logits are -1e30, so a fully masked row averages every value."""
    q = xp.einsum("bqe,ehd->bqhd", xq, p["query"]["kernel"]) + p["query"]["bias"]
    k = xp.einsum("bke,ehd->bkhd", xkv, p["key"]["kernel"]) + p["key"]["bias"]
    v = xp.einsum("bke,ehd->bkhd", xkv, p["value"]["kernel"]) + p["value"]["bias"]
    k, v = xp.repeat(k, group, axis=0), xp.repeat(v, group, axis=0)  # [batch, kv, heads, hd]
    logits = xp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(HEAD_DIM)  # [batch, heads, q, kv]
    allowed = np.ones(logits.shape[-2:], bool) if mask is None else np.asarray(mask)
    if mask is not None and allowed.shape[0] > 1:
        allowed = np.repeat(allowed, group, axis=0)
    if causal:
        allowed = allowed & np.tril(np.ones(logits.shape[-2:], bool))
    logits = xp.where(allowed, logits, -1e30)
    weights = xp.exp(logits - logits.max(-1, keepdims=True))
    weights = weights / weights.sum(-1, keepdims=True)
    out = xp.einsum("bhqk,bkhd->bqhd", weights, v)  # [batch, q_len, heads, head_dim]
    return xp.einsum("bqhd,hde->bqe", out, p["out"]["kernel"]) + p["out"]["bias"], weights


def random_case(rng, batch, q_len, kv_len, mask):
    """bfloat16-exact inputs [batch, q_len | kv_len, EMBED] and parameters (float64 NumPy
    leaves, biases not zero) in the modules' tree."""
    xq = to_bf16(rng.normal(size=(batch, q_len, EMBED)))
    xkv = to_bf16(rng.normal(size=(batch, kv_len, EMBED)))
    init = MultiHeadAttention(HEADS).init  # its shapes only (nothing to compile)
    shapes = nn.meta.unbox(jax.eval_shape(init, jax.random.key(0), xq, xkv, mask, True)["params"])
    params = jax.tree.map(lambda s: to_bf16(rng.normal(size=s.shape) / np.sqrt(EMBED)), shapes)
    return params, xq, xkv


def apply_each(params, calls, rngs=None):
    """The outputs of `calls`, each (module, inputs_q, inputs_kv, mask, deterministic[, dict of
    keyword arguments to `apply`]), with float32 `params` (float64 leaves in) and `rngs`: all
    in one compiled program, traced here under the test's route (eagerly, every primitive
    would compile on its own; compiling dominates these tiny modules)."""
    statics = [(call[0], call[4], call[5] if len(call) > 5 else {}) for call in calls]
    arrays = [call[1:4] for call in calls]  # [(inputs_q, inputs_kv, mask), ...]

    def fn(p, arrays, rngs):
        return [
            module.apply({"params": p}, *args, det, rngs=rngs, **kwargs)
            for (module, det, kwargs), args in zip(statics, arrays, strict=True)
        ]

    return jax.jit(fn)(jax.tree.map(jnp.float32, params), arrays, rngs)


def f64(x) -> np.ndarray:
    return np.asarray(jnp.asarray(x, jnp.float32), np.float64)


def check(got, want, dtype, scale):
    """float32: within 2e-5 of `scale`; bfloat16: within 2 steps (2^-7 relative) of `scale`."""
    atol = 2e-5 * scale if dtype == jnp.float32 else 2**-7 * scale
    np.testing.assert_allclose(f64(got), f64(want), rtol=0, atol=atol)


def check_oracle(got, exact, dtype):
    """float32: within 2e-5 of the output scale; bfloat16 (activations rounded at every step):
    an RMS error under 1.5% and no element off by more than 6% of the output scale."""
    got, scale = f64(got), np.abs(exact).max()
    if dtype == jnp.float32:
        np.testing.assert_allclose(got, exact, rtol=0, atol=2e-5 * scale)
    else:
        assert np.sqrt(np.mean((got - exact) ** 2)) < 0.015 * exact.std()
        np.testing.assert_allclose(got, exact, rtol=0, atol=0.06 * scale)


@pytest.mark.parametrize("dtype", DTYPES)
def test_padding_mask_self_attention(dtype, route):
    """Encoder-style masks [batch, 1, q, kv] (padded queries and keys), with one item of a
    single valid position and one fully valid."""
    rng = np.random.default_rng(0)
    valid = np.arange(12)[None] < np.array([12, 7, 1])[:, None]  # [batch, length]
    mask = valid[:, None, None, :] & valid[:, None, :, None]  # [batch, 1, q, kv]
    params, x, _ = random_case(rng, 3, 12, 12, mask)
    new, old = apply_each(
        params,
        [
            (MultiHeadAttention(HEADS, dtype=dtype), x, x, mask, True),
            (OldMultiHeadAttention(HEADS, dtype=dtype), x, x, mask, True),
        ],
    )
    exact, _ = oracle(params, x, x, mask)
    assert new.dtype == dtype
    check(new, old, dtype, np.abs(exact).max())
    check_oracle(new, exact, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_causal_self_attention(dtype, route):
    """`causal=True` (is_causal), alone and with a key padding mask, equals an explicit lower
    triangular mask (old path) and the oracle."""
    rng = np.random.default_rng(1)
    valid = np.arange(10)[None] < np.array([10, 6])[:, None]
    pad = valid[:, None, None, :]  # [batch, 1, 1, kv]
    tril = np.tril(np.ones((10, 10), bool))[None, None]  # [1, 1, q, kv]
    params, x, _ = random_case(rng, 2, 10, 10, pad)
    causal = MultiHeadAttention(HEADS, dtype=dtype, causal=True)
    calls = []
    for mask in (None, pad):
        full = tril if mask is None else tril & mask
        calls += [
            (causal, x, x, mask, True),
            (OldMultiHeadAttention(HEADS, dtype=dtype), x, x, full, True),
            (MultiHeadAttention(HEADS, dtype=dtype), x, x, full, True),
        ]
    outs = apply_each(params, calls)
    for i, mask in enumerate((None, pad)):
        new, old, by_mask = outs[3 * i : 3 * i + 3]
        exact, _ = oracle(params, x, x, mask, causal=True)
        check(new, old, dtype, np.abs(exact).max())
        check(by_mask, old, dtype, np.abs(exact).max())
        check_oracle(new, exact, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_attention(dtype, route):
    """5 queries over 9 keys with key padding [batch, 1, 1, kv]."""
    rng = np.random.default_rng(2)
    valid = np.arange(9)[None] < np.array([9, 4, 2])[:, None]
    mask = valid[:, None, None, :]
    params, xq, xkv = random_case(rng, 3, 5, 9, mask)
    new, old = apply_each(
        params,
        [
            (MultiHeadAttention(HEADS, dtype=dtype), xq, xkv, mask, True),
            (OldMultiHeadAttention(HEADS, dtype=dtype), xq, xkv, mask, True),
        ],
    )
    exact, _ = oracle(params, xq, xkv, mask)
    check(new, old, dtype, np.abs(exact).max())
    check_oracle(new, exact, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cached_self_attention_steps(dtype, route):
    """A "self" cache made by a full-length call, then one position per call: each step's
    output is that position's row of full causal attention, and the caches match the old
    module's after every step."""
    rng = np.random.default_rng(3)
    length = 6
    params, x, _ = random_case(rng, 2, length, length, None)
    tril = np.tril(np.ones((length, length), bool))[None, None]
    new = MultiHeadAttention(HEADS, dtype=dtype, cache="self", causal=True)
    old = OldMultiHeadAttention(HEADS, dtype=dtype, cache="self")
    variables = {"params": jax.tree.map(jnp.float32, params)}
    cached = {"decode": True, "mutable": ["cache"]}
    (_, new_state), (_, old_state) = apply_each(
        params, [(new, x, x, None, True, cached), (old, x, x, tril, True, cached)]
    )  # the first decode=True call creates the caches
    exact, _ = oracle(params, x, x, None, causal=True)  # [batch, length, embed]

    # One compiled program (traced here, under this test's route) steps both, for every step.
    @jax.jit
    def steps(new_state, old_state, s):  # s: [batch, 1, embed]
        new_out = new.apply({**variables, **new_state}, s, s, None, True, True, mutable=["cache"])
        old_out = old.apply({**variables, **old_state}, s, s, None, True, True, mutable=["cache"])
        return new_out, old_out

    for t in range(length):
        (got, new_state), (want, old_state) = steps(new_state, old_state, x[:, t : t + 1])
        check(got, want, dtype, np.abs(exact).max())
        check_oracle(got, exact[:, t : t + 1], dtype)
        jax.tree.map(np.testing.assert_array_equal, new_state, old_state)
    assert int(new_state["cache"]["cache_index"]) == length


@pytest.mark.parametrize("dtype", DTYPES)
def test_cached_cross_attention_beam_groups(dtype, route):
    """A "cross" cache of 2 items serves 6 queries (3 beams an item) as one group per item."""
    rng = np.random.default_rng(4)
    items, beams = 2, 3
    valid = np.arange(8)[None] < np.array([8, 5])[:, None]
    mask = valid[:, None, None, :]  # [items, 1, 1, kv]
    params, _, xkv = random_case(rng, items, 1, 8, mask)
    xq = to_bf16(rng.normal(size=(items * beams, 1, EMBED)))  # [items * beams, 1, embed]
    variables = {"params": jax.tree.map(jnp.float32, params)}

    @jax.jit  # one compiled program (traced here, under this test's route) for both modules
    def decode(variables, xq, xkv, mask):
        outs = []
        for cls in (MultiHeadAttention, OldMultiHeadAttention):
            module = cls(HEADS, dtype=dtype, cache="cross")
            _, state = module.apply(
                variables, xq[::beams], xkv, mask, True, True, mutable=["cache"]
            )
            out, later = module.apply(
                {**variables, **state}, xq, None, mask, True, True, mutable=["cache"]
            )
            outs.append((out, state, later))
        return outs

    outs = decode(variables, xq, xkv, mask)
    for _, state, later in outs:
        jax.tree.map(np.testing.assert_array_equal, later, state)  # read, never rewritten
    (new, new_state, _), (old, old_state, _) = outs
    jax.tree.map(np.testing.assert_array_equal, new_state, old_state)
    exact, _ = oracle(params, xq, xkv, mask, group=beams)
    assert new.shape == (items * beams, 1, EMBED)
    check(new, old, dtype, np.abs(exact).max())
    check_oracle(new, exact, dtype)


@functools.cache
def gradient_case(kind):
    """test_gradients' inputs for `kind` and the float64 oracle's gradients (jax.grad under
    jax.enable_x64), computed once for every dtype and route (neither enters the oracle)."""
    rng = np.random.default_rng(5)
    q_len, kv_len = (5, 9) if kind == "cross" else (8, 8)
    valid = np.arange(kv_len)[None] < np.array([kv_len, kv_len - 3])[:, None]
    mask = valid[:, None, None, :]  # [batch, 1, 1, kv]
    params, xq, xkv = random_case(rng, 2, q_len, kv_len, mask)
    if kind != "cross":
        xkv = xq
    cotangent = rng.normal(size=(2, q_len, EMBED))
    argnums = (0, 1) if kind != "cross" else (0, 1, 2)
    with jax.enable_x64(True):

        def exact_fn(p, a, b):
            out, _ = oracle(
                p, a, a if kind != "cross" else b, mask, causal=kind == "causal", xp=jnp
            )
            return jnp.sum(out * cotangent)

        exact = jax.jit(jax.grad(exact_fn, argnums))(*jax.tree.map(jnp.float64, (params, xq, xkv)))
        exact = jax.tree.map(np.asarray, exact)
    return params, xq, xkv, mask, cotangent, exact


def gradient_loss(cotangent, module, m, p, a, b):
    """<module's output, cotangent> for params `p`, queries `a`, keys and values `b`."""
    out = module.apply({"params": p}, a, b, m, True)
    return jnp.sum(out.astype(jnp.float32) * cotangent)


@functools.cache
def old_gradients(kind, dtype):
    """The old module's gradients for test_gradients: the same for every route."""
    params, xq, xkv, mask, cotangent, _ = gradient_case(kind)
    if kind == "causal":
        mask = mask & np.tril(np.ones((xq.shape[1], xkv.shape[1]), bool))[None, None]
    old_fn = functools.partial(
        gradient_loss, cotangent, OldMultiHeadAttention(HEADS, dtype=dtype), mask
    )
    if kind != "cross":  # self-attention: one input feeds both
        old_fn = functools.partial(lambda f, p, a, b: f(p, a, a), old_fn)
    argnums = (0, 1) if kind != "cross" else (0, 1, 2)
    args = (jax.tree.map(jnp.float32, params), jnp.float32(xq), jnp.float32(xkv))
    return jax.jit(jax.grad(old_fn, argnums))(*args)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["padding", "causal", "cross"])
def test_gradients(dtype, kind, route):
    """Gradients of <output, cotangent> for the parameters and both inputs: the new module vs
    the old one and vs the float64 oracle's (jax.grad under jax.enable_x64)."""
    params, xq, xkv, mask, cotangent, exact = gradient_case(kind)
    causal = kind == "causal"
    loss = functools.partial(gradient_loss, cotangent)
    args = (jax.tree.map(jnp.float32, params), jnp.float32(xq), jnp.float32(xkv))
    argnums = (0, 1) if kind != "cross" else (0, 1, 2)
    new_fn = functools.partial(loss, MultiHeadAttention(HEADS, dtype=dtype, causal=causal), mask)
    if kind != "cross":  # self-attention: one input feeds both
        new_fn = functools.partial(lambda f, p, a, b: f(p, a, a), new_fn)
    new = jax.jit(jax.grad(new_fn, argnums))(*args)  # traced here, under this test's route
    old = old_gradients(kind, dtype)
    largest = max(np.abs(want).max() for want in jax.tree.leaves(exact))
    flat_exact = jax.tree_util.tree_leaves_with_path(exact)
    for got, ref, (path, want) in zip(
        jax.tree.leaves(new), jax.tree.leaves(old), flat_exact, strict=True
    ):
        # The key bias's exact gradient is 0 (it shifts all of a query's logits alike), so its
        # rounding noise is measured against the largest gradient.
        key_bias = "'key'" in jax.tree_util.keystr(path) and "'bias'" in jax.tree_util.keystr(path)
        scale = largest if key_bias else np.abs(want).max()
        tol = 1e-4 if dtype == jnp.float32 else 2**-6  # bfloat16: both paths round alike
        np.testing.assert_allclose(f64(got), f64(ref), rtol=0, atol=tol * scale)
        tol = 1e-4 if dtype == jnp.float32 else 0.05  # bfloat16 activations vs exact
        np.testing.assert_allclose(f64(got), want, rtol=0, atol=tol * scale)


@pytest.mark.parametrize("dtype", DTYPES)
def test_weights_paths_sow_and_dropout(dtype, route):
    """The explicit path (sow_weights, or dropout while training) agrees with the fused one and
    the oracle; its sown weights are the oracle's; its dropout is the old module's, mask for
    mask (same "dropout" rng), and off when deterministic."""
    rng = np.random.default_rng(6)
    valid = np.arange(7)[None] < np.array([7, 3])[:, None]
    mask = valid[:, None, None, :]
    params, xq, xkv = random_case(rng, 2, 4, 7, mask)
    exact, exact_w = oracle(params, xq, xkv, mask)
    scale = np.abs(exact).max()
    rngs = {"dropout": jax.random.key(7)}
    sowing = MultiHeadAttention(HEADS, dtype=dtype, sow_weights=True)
    dropped = MultiHeadAttention(HEADS, dtype=dtype, dropout_rate=0.3)
    old_dropped = OldMultiHeadAttention(HEADS, dtype=dtype, dropout_rate=0.3)
    fused, (out, state), new, old, kept = apply_each(
        params,
        [
            (MultiHeadAttention(HEADS, dtype=dtype), xq, xkv, mask, True),
            (sowing, xq, xkv, mask, True, {"mutable": ["intermediates"]}),
            (dropped, xq, xkv, mask, False),  # training: dropout on the weights
            (old_dropped, xq, xkv, mask, False),
            (dropped, xq, xkv, mask, True),
        ],
        rngs,
    )
    (weights,) = state["intermediates"]["weights"]  # float32 [batch, heads, q, kv]
    check(out, fused, dtype, scale)
    check_oracle(out, exact, dtype)
    assert weights.dtype == jnp.float32
    atol = 1e-6 if dtype == jnp.float32 else 2**-7  # bfloat16 projections move the weights
    np.testing.assert_allclose(f64(weights), exact_w, rtol=0, atol=atol)

    check(new, old, dtype, scale)
    assert np.abs(f64(new) - f64(fused)).max() > 0.05 * scale  # dropout did act
    check(kept, fused, dtype, scale)
