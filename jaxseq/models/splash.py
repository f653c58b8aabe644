"""Attention on TPUs through JAX's Pallas splash attention kernel (MaxText's
`tpu_flash_attention`), and the platform a program is being built for.

`splash_attention` computes what `MultiHeadAttention`'s einsum path computes (float32 logits
scaled by `scale`, a key padding mask, optional causal masking, a float32 softmax) without
materializing the [q_len, kv_len] logits: the kernel runs over blocks of queries and keys
and skips the blocks a causal mask hides. Splash takes one item [heads, length, head_dim]
whose lengths are multiples of its blocks; this module pads the lengths, expresses the key
padding as segment ids, maps the kernel over the batch, and under a sharded mesh runs it in a
`jax.shard_map` (XLA cannot partition a Pallas call): batch over ("data", "fsdp"), heads over
"tensor".
"""

from __future__ import annotations

import functools
import math
import re

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernels
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks
from jax.sharding import PartitionSpec

LANES = kernels.NUM_LANES  # 128: every block (and so every padded length) is a multiple of it
BLOCKS = (512, 256, LANES)  # block sizes tried, largest first (MaxText's default is 512)
BATCH_AXES = ("data", "fsdp")  # the mesh axes of jaxseq's logical "batch" axis
HEADS_AXIS = "tensor"  # the mesh axis of its logical "heads" axis


def target_platform() -> str:
    """The platform ("cpu", "gpu", "tpu") the current program is built for: that of the devices
    of the mesh set by `jax.set_mesh` (for `jaxseq compile --topology` TPUs that are not
    there), else `jax.default_backend()`. Also valid while tracing under `jax.jit`."""
    device = jax.sharding.get_abstract_mesh().abstract_device
    return jax.default_backend() if device is None else device.platform


def _padded(length: int) -> tuple[int, int]:
    """(the length padded to a multiple of LANES, the largest block of BLOCKS dividing it)."""
    padded = -(-length // LANES) * LANES
    return padded, next(b for b in BLOCKS if padded % b == 0)


def _kernel(
    heads: int, q_len: int, kv_len: int, is_causal: bool, interpret: bool
) -> kernels.SplashAttentionKernel:
    """The splash kernel for one item of `heads` heads, padded lengths `q_len` and `kv_len`,
    with forward, dq and dkv block sizes (the backward pass needs them all). (The kernel
    library caches the processed masks, so that every layer's call reuses them.)"""
    _, bq = _padded(q_len)
    _, bkv = _padded(kv_len)
    block_sizes = kernels.BlockSizes(
        block_q=bq,
        block_kv=bkv,
        block_kv_compute=bkv,
        block_q_dkv=bq,
        block_kv_dkv=bkv,
        block_kv_dkv_compute=bkv,
        block_q_dq=bq,
        block_kv_dq=bkv,
    )
    shape = (q_len, kv_len)
    mask = masks.CausalMask(shape) if is_causal else masks.FullMask(shape)
    return kernels.make_splash_mha(
        masks.MultiHeadMask([mask] * heads),
        block_sizes=block_sizes,
        head_shards=1,
        q_seq_shards=1,
        interpret=interpret,
    )


def _attend(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    kv_segments: jax.Array | None,
    is_causal: bool,
    interpret: bool,
) -> jax.Array:
    """The kernel mapped over the batch of padded `query` [batch, heads, q_len, head_dim],
    `key`, `value` [batch, heads, kv_len, head_dim] and `kv_segments` int32 [batch, kv_len]
    (1 for the keys to attend, 0 for the others) or None; [batch, heads, q_len, head_dim]."""
    kernel = _kernel(query.shape[1], query.shape[2], key.shape[2], is_causal, interpret)
    if kv_segments is None:
        return jax.vmap(kernel)(query, key, value)
    # Every query in segment 1: each sees exactly the keys of segment 1.
    q_segments = jnp.ones((query.shape[0], query.shape[2]), jnp.int32)  # [batch, q_len]
    segment_ids = kernels.SegmentIds(q_segments, kv_segments)
    return jax.vmap(kernel)(query, key, value, segment_ids)


def _mesh_spec(mesh: jax.sharding.AbstractMesh, batch: int, heads: int) -> PartitionSpec:
    """The spec of [batch, heads, ...] under `mesh`: batch over the mesh's BATCH_AXES and heads
    over HEADS_AXIS, each only where the mesh has the axes and their size divides the dim."""
    batch_axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
    if batch % math.prod(mesh.shape[a] for a in batch_axes):
        batch_axes = ()
    heads_axis = HEADS_AXIS if HEADS_AXIS in mesh.axis_names else None
    if heads_axis is not None and heads % mesh.shape[heads_axis]:
        heads_axis = None
    return PartitionSpec(batch_axes or None, heads_axis)


def splash_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: jax.Array | None,
    is_causal: bool,
    scale: float,
    *,
    interpret: bool = False,
) -> jax.Array:
    """softmax(scale · q·kᵀ, masked) · v by the splash attention kernel.

    The logits and the softmax are float32 whatever the dtype; the scale is folded into the
    query (in its dtype) since splash does not scale. Lengths pad up to a multiple of 128:
    padded keys are masked, padded queries dropped. A query with no key to attend (an item
    whose mask is all False) gets another meaningless average of values than the einsum
    path's mean of all kv_len values.

    Args:
      query: [batch, q_len, heads, head_dim].
      key, value: [batch, kv_len, heads, head_dim], in the dtype of `query`.
      mask: bool [batch or 1, 1, 1, kv_len], True for the keys every query may attend; or None.
      is_causal: also mask every key after the query's position (needs q_len == kv_len).
      scale: the factor on the logits.
      interpret: run the kernel in Pallas's interpreter (any platform, e.g. tests on a CPU).
    Returns:
      [batch, q_len, heads, head_dim] in the dtype of `value`.
    """
    batch, q_len, heads, _ = query.shape
    kv_len = key.shape[1]
    if mask is not None and mask.shape[1:3] != (1, 1):
        raise ValueError(
            f"splash attention takes a key padding mask [b, 1, 1, kv], got {mask.shape}"
        )
    if is_causal and q_len != kv_len:
        raise ValueError(f"causal attention needs q_len == kv_len, got {q_len} and {kv_len}")
    q_pad = _padded(q_len)[0] - q_len
    kv_pad = _padded(kv_len)[0] - kv_len

    def to_kernel(x: jax.Array, pad: int) -> jax.Array:  # [b, len, h, d] → [b, h, len + pad, d]
        return jnp.pad(x.transpose(0, 2, 1, 3), ((0, 0), (0, 0), (0, pad), (0, 0)))

    q = to_kernel(query * jnp.asarray(scale, query.dtype), q_pad)
    k = to_kernel(key, kv_pad)
    v = to_kernel(value, kv_pad)
    kv_segments = None  # int32 [batch, kv_len + kv_pad], or None where nothing is masked
    if mask is not None or (kv_pad and not is_causal):  # (causally, padded keys are hidden)
        valid = jnp.ones((1, kv_len), bool) if mask is None else mask[:, 0, 0, :]
        valid = jnp.pad(jnp.broadcast_to(valid, (batch, kv_len)), ((0, 0), (0, kv_pad)))
        kv_segments = valid.astype(jnp.int32)

    attend = functools.partial(_attend, is_causal=is_causal, interpret=interpret)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.size > 1:
        spec = _mesh_spec(mesh, batch, heads)
        segments_spec = None if kv_segments is None else PartitionSpec(spec[0])
        attend = jax.shard_map(
            attend,
            mesh=mesh,
            in_specs=(spec, spec, spec, segments_spec),
            out_specs=spec,
            check_vma=False,  # the kernel's pallas_call states no varying mesh axes
        )
    out = attend(q, k, v, kv_segments)  # [batch, heads, q_len + q_pad, head_dim]
    return out[:, :, :q_len].transpose(0, 2, 1, 3).astype(value.dtype)


# Matmul FLOPs per batch x head x query x key x head_dim of each splash kernel: the forward
# pass's q·k and weights·values; the backward's dq kernel recomputes q·k, then do·vᵀ and ds·k;
# its dkv kernel recomputes q·k, then weightsᵀ·do, do·vᵀ and dsᵀ·q (2 FLOPs a multiply-add).
_KERNEL_FLOPS = {"splash_mha_fwd": 4, "splash_mha_dq": 6, "splash_mha_dkv": 8}
_CALL = re.compile(r'^\s*%(splash_mha_(?:fwd|dq|dkv))\S* = .*custom_call_target="tpu_custom_call"')
_ARRAY = re.compile(r"(?:bf16|f16|f32)\[(\d+),(\d+),(\d+),(\d+)\]")


def kernel_flops(hlo_text: str) -> float:
    """Matmul FLOPs of the splash kernels in a compiled program's HLO text (one device's), which
    XLA's cost analysis does not see inside: per call, from its query [batch, heads, q_len,
    head_dim] and key [batch, heads, kv_len, head_dim] operands (the first two 4-d float ones
    of its operand layouts), counted as if no block were masked (a causal kernel skips about
    half). The backward kernels' recomputed q·k counts, as XLA counts rematerialized work; a
    call in a loop body counts once, as in XLA's cost analysis."""
    total = 0.0
    for line in hlo_text.splitlines():
        call = _CALL.match(line)
        if call is None:
            continue
        operands = line.split("operand_layout_constraints=", 1)[1]
        (b, h, q, d), (_, _, kv, _) = (tuple(map(int, m)) for m in _ARRAY.findall(operands)[:2])
        total += _KERNEL_FLOPS[call.group(1)] * b * h * q * kv * d
    return total
