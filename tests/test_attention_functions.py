"""The attention functions on their own: `fused_attention` against the einsum path,
`attention_kernel`'s choice of kernel, and `blocked_attention` (the CPU's block-by-block path)
against the einsum path, outputs and gradients (helpers: tests/test_attention_kernel.py)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseq.models import attention
from jaxseq.models.attention import attention_kernel, fused_attention
from tests.test_attention_kernel import DTYPES, f64, to_bf16


@pytest.mark.parametrize("kernel", ["xla", "cudnn"])
def test_fused_attention_function(kernel):
    """`fused_attention` on raw [batch, length, heads, head_dim] arrays, a mask broadcast over
    heads and queries with is_causal on top, and the scale, against float64 NumPy; asked for
    cuDNN where there is none (this CPU), it declines (None) and the module takes its einsums."""
    rng = np.random.default_rng(8)
    q, k, v = (rng.normal(size=(2, 6, 3, 8)) for _ in range(3))
    mask = np.arange(6)[None, None, None, :] < np.array([6, 2])[:, None, None, None]
    attend = jax.jit(lambda q, k, v, mask: fused_attention(q, k, v, mask, True, 0.3, kernel))
    got = attend(*(jnp.float32(t) for t in (q, k, v)), mask)
    if kernel == "cudnn":
        assert jax.default_backend() == "cpu" and got is None
        return
    logits = 0.3 * np.einsum("bqhd,bkhd->bhqk", q, k)
    allowed = mask & np.tril(np.ones((6, 6), bool))
    weights = np.exp(np.where(allowed, logits, -np.inf) - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    want = np.einsum("bhqk,bkhd->bqhd", weights, v)  # [batch, q, heads, head_dim]
    np.testing.assert_allclose(f64(got), want, rtol=0, atol=1e-5)


def test_fused_attention_bfloat16_logits_in_float32():
    """bfloat16 q, k, v whose logits reach ~90 (bfloat16 spacing 0.5): XLA's dot_product_attention
    takes them in float32, like the einsum path (test_attention_precision.py). The output must
    be within 2 bfloat16 steps of float64 attention on the same bfloat16 values with the weights
    rounded to bfloat16; the same computed from bfloat16-rounded logits misses that by far."""
    rng = np.random.default_rng(9)
    q, k, v = (to_bf16(s * rng.normal(size=(2, 4, 2, 16))) for s in (8.0, 6.0, 1.0))
    k = np.concatenate([k] * 64, axis=1)  # [2, 256, 2, 16]: many keys near the top logit
    k = to_bf16(k + 0.1 * rng.normal(size=k.shape))
    v = to_bf16(rng.normal(size=k.shape))
    attend = jax.jit(lambda q, k, v: fused_attention(q, k, v, None, False, 0.25, "xla"))
    got = f64(attend(*(jnp.bfloat16(t) for t in (q, k, v))))

    def attention(logits):
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights = to_bf16(weights / weights.sum(-1, keepdims=True))
        return to_bf16(np.einsum("bhqk,bkhd->bqhd", weights, v))

    logits = 0.25 * np.einsum("bqhd,bkhd->bhqk", q, k)  # float64 [batch, heads, q, kv]
    assert np.abs(logits).max() > 64
    want, coarse = attention(logits), attention(to_bf16(logits))
    atol = 2 * 2**-8 * np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)
    assert np.abs(coarse - want).max() > 4 * atol


def test_attention_kernel_picks_cudnn_only_where_it_applies():
    """cuDNN on a GPU for bfloat16 / float16 with head sizes it supports and, under a mask,
    even lengths; the einsum path (None) on other backends, for float32, and outside those."""
    pick = functools.partial(attention_kernel, backend="gpu")
    assert pick(jnp.bfloat16, 64, 1500, 1500, True) == "cudnn"
    assert pick(jnp.float16, 128, 447, 447, False) == "cudnn"
    assert pick(jnp.float32, 64, 1500, 1500, True) is None
    assert pick(jnp.bfloat16, 12, 16, 16, True) is None  # not a multiple of 8
    assert pick(jnp.bfloat16, 256, 16, 16, True) is None
    assert pick(jnp.bfloat16, 64, 5, 1500, True) is None  # odd length under a mask
    assert attention_kernel(jnp.bfloat16, 64, 16, 16, True, backend="tpu") is None
    assert attention_kernel(jnp.bfloat16, 64, 16, 16, True, backend="cpu") is None
    assert attention_kernel(jnp.bfloat16, 64, 16, 16, True) is None  # this CPU
    assert attention_kernel(jnp.float32, 64, 1500, 1500, True, backend="cpu") == "blocked"
    assert attention_kernel(jnp.float32, 64, 1500, 64, True, backend="cpu") is None


# (q_len, BLOCKED_QUERIES, mask). The mask picks `blocked_attention`'s path: none (one all-true
# key row shared by every item), keys (a key row per item) or queries_and_keys (mask rows
# padded and split into blocks with the queries). 3 blocks of 3 with the last one padded runs
# all three; the block layout only enters the queries' padding and split, and the mask rows'
# under queries_and_keys, which also runs on 2 unpadded blocks and on a single block.
BLOCKED_CASES = [
    (7, 3, "none"),
    (7, 3, "keys"),
    (7, 3, "queries_and_keys"),
    (6, 3, "queries_and_keys"),
    (5, 256, "queries_and_keys"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("q_len, block, mask_kind", BLOCKED_CASES)
def test_blocked_attention_equals_the_einsum_path(dtype, q_len, block, mask_kind, monkeypatch):
    """Block by block (several blocks, a padded last one, or one) the same outputs and
    gradients as the einsum path, under no mask, a key mask, and a query-and-key mask."""
    monkeypatch.setattr(attention, "BLOCKED_QUERIES", block)
    rng = np.random.default_rng(q_len + block)
    b, kv, h, d = 2, 9, 3, 8
    q, k, v = (jnp.asarray(rng.normal(size=(b, n, h, d)), dtype) for n in (q_len, kv, kv))
    valid_k = np.arange(kv)[None, :] < np.array([[kv], [5]])  # [b, kv]
    valid_q = np.arange(q_len)[None, :] < np.array([[q_len], [q_len - 2]])
    mask = {
        "none": None,
        "keys": jnp.asarray(valid_k[:, None, None, :]),
        "queries_and_keys": jnp.asarray(valid_q[:, None, :, None] & valid_k[:, None, None, :]),
    }[mask_kind]

    def einsum_path(q, k, v):
        w = attention.attention_weights(q, k, mask, False, 0.3).astype(dtype)
        return jnp.einsum("bhqk,bkhd->bqhd", w, v, preferred_element_type=jnp.float32)

    def blocked(q, k, v):
        return attention.blocked_attention(q, k, v, mask, 0.3).astype(jnp.float32)

    @jax.jit  # one compiled program: both paths' outputs and gradients
    def outputs_and_grads(q, k, v):
        loss = lambda f: lambda *x: jnp.sum(jnp.sin(f(*x)))  # noqa: E731
        paths = (blocked, einsum_path)
        return [(f(q, k, v), jax.grad(loss(f), argnums=(0, 1, 2))(q, k, v)) for f in paths]

    tol = 1e-6 if dtype == jnp.float32 else 1e-2
    (got, grads), (path, want) = outputs_and_grads(q, k, v)
    np.testing.assert_allclose(got, path, rtol=tol, atol=tol)
    for g, w in zip(grads, want, strict=True):
        np.testing.assert_allclose(
            np.asarray(g, np.float32), np.asarray(w, np.float32), rtol=tol, atol=tol
        )
