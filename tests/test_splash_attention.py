"""Splash attention (`jaxseq.models.splash`), the Pallas kernel `MultiHeadAttention` attends with
on TPUs.

Its numbers come from Pallas's interpreter on this CPU (`interpret=True` runs the TPU kernel's
own code, blocks, online softmax and backward kernels included), against the module's einsum
path (`attention_weights`, then the weights · values) and against attention written out in
float64 NumPy with its gradients derived by hand: forward and gradients with respect to the
query, keys and values, for key padding masks with a different valid length per item, causal
self-attention, and lengths that are not a multiple of the kernel's 128-wide blocks.

Whether a TPU program uses it comes from compiling a `MultiHeadAttention` train step for a TPU
topology (libtpu, no TPU) under a data x tensor mesh: the Mosaic custom calls must be there,
on each device's shard of the batch and heads, and absent from the same program for this CPU.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseq.config import MeshConfig
from jaxseq.models.attention import MultiHeadAttention, attention_kernel, attention_weights
from jaxseq.models.splash import kernel_flops, splash_attention, target_platform
from jaxseq.parallel.mesh import make_mesh
from jaxseq.parallel.sharding import batch_sharding, logical_shardings, sharding_context
from jaxseq.train.compile import topology_devices

BATCH, HEADS, HEAD_DIM = 2, 2, 64
SCALE = 0.125

# q_len, kv_len, is_causal, valid keys per item (None: no mask). Each length pads to 256 or
# 384, so the kernel runs over 2 or 3 blocks of 128 and masks the padded keys by itself.
CASES = {
    "cross_key_padding": (200, 300, False, (300, 123)),
    "cross_no_mask": (200, 300, False, None),
    "causal_key_padding": (200, 200, True, (200, 150)),
    "causal_no_mask": (200, 200, True, None),
}


def key_mask(valid: tuple[int, ...] | None, kv_len: int) -> np.ndarray | None:
    """bool [batch, 1, 1, kv_len]: the first `valid[b]` keys of item b; or None."""
    if valid is None:
        return None
    return (np.arange(kv_len)[None] < np.array(valid)[:, None])[:, None, None, :]


def oracle(q, k, v, mask, is_causal, cotangent):
    """Attention in float64 NumPy and its gradients for the output cotangent `cotangent`:
    (out, dq, dk, dv), each [batch, length, heads, head_dim]."""
    q, k, v, d_out = (np.asarray(x, np.float64).transpose(0, 2, 1, 3) for x in (q, k, v, cotangent))
    allowed = np.ones((q.shape[2], k.shape[2]), bool)  # [q_len, kv_len]
    if is_causal:
        allowed = np.tril(allowed)
    if mask is not None:
        allowed = allowed & mask  # [batch, 1, q_len, kv_len]
    logits = np.where(allowed, SCALE * q @ k.swapaxes(-1, -2), -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)  # [batch, heads, q_len, kv_len]
    out = p @ v
    d_v = p.swapaxes(-1, -2) @ d_out
    d_p = d_out @ v.swapaxes(-1, -2)
    d_logits = p * (d_p - (d_p * p).sum(-1, keepdims=True))
    d_q = SCALE * d_logits @ k
    d_k = SCALE * d_logits.swapaxes(-1, -2) @ q
    back = lambda x: x.transpose(0, 2, 1, 3)  # noqa: E731
    return back(out), back(d_q), back(d_k), back(d_v)


def einsum_attention(q, k, v, mask, is_causal):
    """`MultiHeadAttention`'s einsum path (float32)."""
    weights = attention_weights(q, k, mask, is_causal, SCALE)  # [batch, heads, q_len, kv_len]
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v, preferred_element_type=jnp.float32)


def forward_and_grads(attend, q, k, v, cotangent):
    """(out, dq, dk, dv) of `attend(q, k, v)` for the output cotangent, as NumPy arrays."""

    @jax.jit
    def run(q, k, v):
        out, vjp = jax.vjp(attend, q, k, v)
        return out, *vjp(cotangent)

    return jax.tree.map(np.asarray, run(q, k, v))


@pytest.mark.parametrize("case", list(CASES))
def test_splash_matches_the_einsum_path_and_a_float64_oracle(case):
    """float32: the kernel sums in other orders (blocks of 128 keys, an online softmax) and
    rounds the scale on the query rather than on the logit; outputs and gradients agree with
    the oracle and the einsum path within 1e-5 relative or 2e-6 of their largest entry
    (measured: under 8e-7 of the largest entry)."""
    q_len, kv_len, is_causal, valid = CASES[case]
    rng = np.random.default_rng(0)
    q = rng.normal(size=(BATCH, q_len, HEADS, HEAD_DIM)).astype(np.float32)
    k, v = (rng.normal(size=(BATCH, kv_len, HEADS, HEAD_DIM)).astype(np.float32) for _ in "kv")
    cotangent = rng.normal(size=q.shape).astype(np.float32)
    mask = key_mask(valid, kv_len)

    def splash(q, k, v):
        return splash_attention(q, k, v, mask, is_causal, SCALE, interpret=True)

    def einsum(q, k, v):
        return einsum_attention(q, k, v, mask, is_causal)

    got = forward_and_grads(splash, q, k, v, cotangent)
    path = forward_and_grads(einsum, q, k, v, cotangent)
    want = oracle(q, k, v, mask, is_causal, cotangent)
    assert got[0].shape == (BATCH, q_len, HEADS, HEAD_DIM) and got[0].dtype == np.float32
    for name, g, p, w in zip(("out", "dq", "dk", "dv"), got, path, want, strict=True):
        atol = 2e-6 * np.abs(w).max()
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=atol, err_msg=f"{name} vs oracle")
        np.testing.assert_allclose(g, p, rtol=1e-5, atol=atol, err_msg=f"{name} vs einsum")
    if valid is not None:  # masked keys get no gradient at all
        d_k, d_v = got[2:]
        assert not d_k[1, valid[1] :].any() and not d_v[1, valid[1] :].any()


def test_attention_kernel_picks_splash_on_tpus_within_its_limits():
    """Splash on a TPU for bfloat16 / float32, head sizes of 64s, both lengths at least a block,
    and no mask or a key padding mask; the GPU's and CPU's picks as before."""
    pick = lambda *args: attention_kernel(*args, backend="tpu")  # noqa: E731
    assert pick(jnp.bfloat16, 64, 448, 1500, True, True) == "splash"  # key padding
    assert pick(jnp.float32, 128, 200, 200, False) == "splash"  # no mask
    assert pick(jnp.bfloat16, 64, 200, 200, True, False) is None  # a mask per query
    assert pick(jnp.bfloat16, 36, 200, 200, False) is None  # head size
    assert pick(jnp.float16, 64, 200, 200, False) is None
    assert pick(jnp.bfloat16, 64, 1, 1500, True, True) is None  # a decoding step's query
    assert attention_kernel(jnp.bfloat16, 64, 200, 200, True, True, "gpu") == "cudnn"
    assert attention_kernel(jnp.float32, 64, 1500, 1500, True, True) == "blocked"  # this CPU


def _train_step_hlo(devices, mesh_cfg: MeshConfig) -> tuple[str, str | None]:
    """The compiled HLO of a bfloat16 causal `MultiHeadAttention`'s loss and gradients (batch 4,
    200 positions, 4 heads of 64) under a mesh of `devices`, with the kernel the module picks
    there."""
    batch, length, embed = 4, 200, 256
    module = MultiHeadAttention(4, dtype=jnp.bfloat16, causal=True)

    def loss(params, x, lengths):
        mask = (jnp.arange(length)[None] < lengths[:, None])[:, None, None, :]  # [b, 1, 1, kv]
        return module.apply({"params": params}, x, x, mask, True).astype(jnp.float32).sum()

    x = jnp.zeros((batch, length, embed))
    boxed = jax.eval_shape(lambda: module.init(jax.random.key(0), x, x, None, True))
    mesh = make_mesh(mesh_cfg, devices)
    params = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        nn.unbox(boxed),
        logical_shardings(boxed, mesh),
    )["params"]
    rows = batch_sharding(mesh)
    args = (
        params,
        jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rows),
        jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=rows),
    )
    with sharding_context(mesh):
        kernel = attention_kernel(jnp.bfloat16, 64, length, length, True, True)
        assert target_platform() == devices[0].platform
        return jax.jit(jax.grad(loss)).lower(*args).compile().as_text(), kernel


@pytest.fixture(scope="module")
def tpu_step():
    """The TPU program of `_train_step_hlo` on v5e:2x2 as data 2 x tensor 2, and its kernel."""
    return _train_step_hlo(topology_devices("v5e:2x2"), MeshConfig(data=-1, tensor=2))


def test_a_tpu_train_step_attends_through_splash_on_each_shard_and_a_cpu_one_does_not(tpu_step):
    """v5e:2x2 as data 2 x tensor 2: the forward, dq and dkv kernels are Mosaic custom calls
    on each device's 2 items x 2 heads of 256 (200 padded) positions x 64."""
    hlo, kernel = tpu_step
    assert kernel == "splash"
    calls = [line for line in hlo.splitlines() if 'custom_call_target="tpu_custom_call"' in line]
    for name in ("splash_mha_fwd", "splash_mha_dq", "splash_mha_dkv"):
        call = next(line for line in calls if line.lstrip().startswith(f"%{name}"))
        assert "bf16[2,2,256,64]" in call, call[:300]
    hlo, kernel = _train_step_hlo(jax.devices()[:1], MeshConfig())
    assert kernel is None and "tpu_custom_call" not in hlo


def test_the_splash_kernels_flops_are_counted_from_their_shapes(tpu_step):
    """XLA's cost analysis does not see inside the kernels; `kernel_flops` counts each device's
    matmuls from the calls' shapes: 2 items x 2 heads x 256 queries x 256 keys x 64, times 2
    FLOPs a multiply-add for the forward's 2 matmuls, the dq kernel's 3 and the dkv kernel's 4."""
    hlo, _ = tpu_step
    assert kernel_flops(hlo) == 2 * (2 + 3 + 4) * 2 * 2 * 256 * 256 * 64
    assert kernel_flops(_train_step_hlo(jax.devices()[:1], MeshConfig())[0]) == 0.0
