"""Model numerics against an independent float64 PyTorch re-implementation, plus the properties
the rest of jaxseq relies on: padding invariance, Whisper's position table, logical axis names on
every parameter, and bfloat16 compute over float32 parameters."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import whisper.model
from jax.sharding import Mesh

from jaxseq.config import ModelConfig
from jaxseq.models.ctc import CTCModel
from jaxseq.models.encoder import subsampled_lengths
from jaxseq.models.layers import gelu, padding_mask, sinusoidal_positions
from jaxseq.models.transformer import EncoderLayer
from jaxseq.parallel import sharding
from jaxseq.parallel.sharding import LOGICAL_RULES, MESH_AXES, logical_shardings

CFG = ModelConfig(
    d_model=32, num_heads=2, num_layers=2, mlp_dim=64, dropout=0.0, subsample_strides=(2, 2)
)
VOCAB = 11
MELS = 80
AXIS_NAMES = {
    getattr(sharding, name)
    for name in dir(sharding)
    if name.isupper() and isinstance(getattr(sharding, name), str)
}


def _random_params(variables, seed: int):
    """Random unboxed params shaped like `variables["params"]` (abstract or concrete).

    Every leaf is N(0, 0.1), except LayerNorm scales, N(1, 0.1): unlike the initializers'
    zero biases and unit scales, a mis-copied bias or scale cannot go unnoticed.
    """
    paths, treedef = jax.tree_util.tree_flatten_with_path(nn.unbox(variables["params"]))
    rng = np.random.default_rng(seed)
    leaves = []
    for path, leaf in paths:
        mean = 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else 0.0
        leaves.append(jnp.asarray(rng.normal(mean, 0.1, leaf.shape), jnp.float32))
    return jax.tree.unflatten(treedef, leaves)


def _t(x) -> torch.Tensor:
    """A float64 torch copy of a JAX/NumPy array."""
    return torch.from_numpy(np.asarray(x, dtype=np.float64).copy())


def _whisper_sinusoids64(length: int, channels: int) -> torch.Tensor:
    """openai-whisper's `sinusoids` evaluated in float64 (it follows torch's default dtype)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return whisper.model.sinusoids(length, channels)
    finally:
        torch.set_default_dtype(old)


# ---------------------------------------------------------------------------------------------
# The float64 PyTorch reference
# ---------------------------------------------------------------------------------------------


class TorchEncoderLayer(torch.nn.Module):
    """Pre-LN layer from torch parts: x + MHA(LN(x)), then x + W_o GELU(W_i LN(x))."""

    def __init__(self, d_model: int, num_heads: int, mlp_dim: int):
        super().__init__()
        self.attn_norm = torch.nn.LayerNorm(d_model, eps=1e-5)
        self.attn = torch.nn.MultiheadAttention(d_model, num_heads, batch_first=True)
        self.mlp_norm = torch.nn.LayerNorm(d_model, eps=1e-5)
        self.wi = torch.nn.Linear(d_model, mlp_dim)
        self.wo = torch.nn.Linear(mlp_dim, d_model)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x [batch, length, embed], valid bool [batch, length] → [batch, length, embed]."""
        h = self.attn_norm(x)
        h, _ = self.attn(h, h, h, key_padding_mask=~valid, need_weights=False)
        x = x + h
        return x + self.wo(torch.nn.functional.gelu(self.wi(self.mlp_norm(x))))

    @torch.no_grad()
    def load_flax(self, p: dict) -> None:
        """Copies an `EncoderLayer`'s flax params (DenseGeneral kernels reshaped to Linear's)."""
        d = self.attn.embed_dim
        for norm, name in ((self.attn_norm, "attn_norm"), (self.mlp_norm, "mlp_norm")):
            norm.weight.copy_(_t(p[name]["LayerNorm_0"]["scale"]))
            norm.bias.copy_(_t(p[name]["LayerNorm_0"]["bias"]))
        a = p["attn"]
        # [embed, heads, head_dim] → [embed, heads * head_dim] → torch's [out, in].
        w_in = [_t(a[n]["kernel"]).reshape(d, d).T for n in ("query", "key", "value")]
        b_in = [_t(a[n]["bias"]).reshape(d) for n in ("query", "key", "value")]
        self.attn.in_proj_weight.copy_(torch.cat(w_in, 0))
        self.attn.in_proj_bias.copy_(torch.cat(b_in, 0))
        # [heads, head_dim, embed] → [heads * head_dim, embed] → [out, in].
        self.attn.out_proj.weight.copy_(_t(a["out"]["kernel"]).reshape(d, d).T)
        self.attn.out_proj.bias.copy_(_t(a["out"]["bias"]))
        for linear, name in ((self.wi, "wi"), (self.wo, "wo")):
            linear.weight.copy_(_t(p["mlp"][name]["kernel"]).T)
            linear.bias.copy_(_t(p["mlp"][name]["bias"]))


class TorchCTC(torch.nn.Module):
    """Conv1d+GELU stem (padded frames zeroed) → Whisper positions → layers → LN → linear."""

    def __init__(self, cfg: ModelConfig, n_mels: int, vocab: int):
        super().__init__()
        k = cfg.conv_kernel
        self.strides = tuple(cfg.subsample_strides)
        self.convs = torch.nn.ModuleList(
            torch.nn.Conv1d(n_mels if i == 0 else cfg.d_model, cfg.d_model, k, s, padding=k // 2)
            for i, s in enumerate(self.strides)
        )
        self.layers = torch.nn.ModuleList(
            TorchEncoderLayer(cfg.d_model, cfg.num_heads, cfg.mlp_dim)
            for _ in range(cfg.num_layers)
        )
        self.final_norm = torch.nn.LayerNorm(cfg.d_model, eps=1e-5)
        self.head = torch.nn.Linear(cfg.d_model, vocab)

    def forward(self, feats: torch.Tensor, lengths: list[int]) -> tuple[torch.Tensor, list[int]]:
        """feats [batch, frames, mels] → (logits [batch, enc_frames, vocab], enc lengths)."""
        x = feats.transpose(1, 2)  # [batch, mels, frames]
        for conv, stride in zip(self.convs, self.strides, strict=True):
            x = torch.nn.functional.gelu(conv(x))  # [batch, d_model, frames / stride]
            lengths = [math.ceil(n / stride) for n in lengths]
            valid = torch.arange(x.shape[-1])[None, :] < torch.tensor(lengths)[:, None]
            x = x * valid[:, None, :]
        x = x.transpose(1, 2)  # [batch, enc_frames, d_model]
        x = x + _whisper_sinusoids64(x.shape[1], x.shape[2])[None]
        for layer in self.layers:
            x = layer(x, valid)
        return self.head(self.final_norm(x)), lengths

    @torch.no_grad()
    def load_flax(self, params: dict) -> None:
        """Copies a `CTCModel`'s flax params (conv kernels [k, in, out] → [out, in, k])."""
        enc = params["encoder"]
        for i, conv in enumerate(self.convs):
            conv.weight.copy_(_t(enc["stem"][f"conv{i}"]["kernel"]).permute(2, 1, 0))
            conv.bias.copy_(_t(enc["stem"][f"conv{i}"]["bias"]))
        for i, layer in enumerate(self.layers):
            layer.load_flax(enc[f"layer{i}"])
        self.final_norm.weight.copy_(_t(enc["final_norm"]["LayerNorm_0"]["scale"]))
        self.final_norm.bias.copy_(_t(enc["final_norm"]["LayerNorm_0"]["bias"]))
        self.head.weight.copy_(_t(params["head"]["kernel"]).T)
        self.head.bias.copy_(_t(params["head"]["bias"]))


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


def _features(lengths, frames: int, seed: int) -> np.ndarray:
    """float32 [batch, frames, MELS] log-mel-like noise, zero beyond each length (as batched)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (len(lengths), frames, MELS)).astype(np.float32)
    x *= (np.arange(frames)[None, :] < np.asarray(lengths)[:, None])[..., None]
    return x


def _abstract_init(model: CTCModel, frames: int = 64):
    """Boxed abstract `model` variables (shapes only, nothing computed) for [1, frames, MELS]."""
    return jax.eval_shape(
        lambda: model.init(
            jax.random.key(0), jnp.zeros((1, frames, MELS)), jnp.array([frames]), True
        )
    )


@pytest.fixture(scope="module")
def ctc():
    """(jitted float32 CTCModel apply, randomized unboxed params)."""
    model = CTCModel(CFG, VOCAB)
    params = _random_params(_abstract_init(model), seed=1)
    apply = jax.jit(lambda p, x, n: model.apply({"params": p}, x, n, deterministic=True))
    return apply, params


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def test_gelu_is_the_exact_gelu():
    """jaxseq's erf GELU against a float64 oracle (x·Φ(x) from math.erf) and torch's exact GELU,
    tails included, and its gradient against torch's."""
    x = np.concatenate([np.linspace(-12, 12, 4001), [-40.0, 40.0, 0.0]]).astype(np.float32)
    oracle = np.array([v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
    np.testing.assert_allclose(np.asarray(jax.jit(gelu)(x)), oracle, rtol=2e-6, atol=1e-6)
    t = torch.tensor(x, requires_grad=True)
    torch.nn.functional.gelu(t, approximate="none").sum().backward()
    grad = jax.jit(jax.grad(lambda v: jnp.sum(gelu(v))))(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(grad), t.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_encoder_layer_matches_torch():
    batch, length, d = 3, 20, CFG.d_model
    lengths = np.array([20, 13, 1])
    layer = EncoderLayer(CFG.num_heads, CFG.mlp_dim)
    x = np.random.default_rng(0).normal(0.0, 1.0, (batch, length, d)).astype(np.float32)
    valid = np.asarray(padding_mask(jnp.asarray(lengths), length))  # [batch, length]
    mask = valid[:, None, None, :] & valid[:, None, :, None]  # [batch, 1, q, kv]
    variables = jax.eval_shape(lambda: layer.init(jax.random.key(0), x, mask, True))
    params = _random_params(variables, seed=2)
    apply = jax.jit(lambda p, x, m: layer.apply({"params": p}, x, m, deterministic=True))
    got = np.asarray(apply(params, x, mask))

    ref = TorchEncoderLayer(d, CFG.num_heads, CFG.mlp_dim).double().eval()
    ref.load_flax(params)
    with torch.no_grad():
        want = ref(_t(x), torch.tensor(valid)).numpy()
    assert got.dtype == np.float32 and got.shape == (batch, length, d)
    err = np.abs(got - want)[valid].max()
    assert err <= 1e-5, err
    assert np.abs(want[valid] - x[valid]).max() > 0.1  # the layer did something


def test_ctc_model_matches_torch(ctc):
    apply, params = ctc
    frames, lengths = 256, [256, 101, 7]
    feats = _features(lengths, frames, seed=3)
    logits, enc_lengths = apply(params, feats, jnp.asarray(lengths))
    logits, enc_lengths = np.asarray(logits), np.asarray(enc_lengths)

    ref = TorchCTC(CFG, MELS, VOCAB).double().eval()
    ref.load_flax(params)
    with torch.no_grad():
        want, want_lengths = ref(_t(feats), lengths)
    want = want.numpy()

    assert logits.dtype == np.float32 and logits.shape == (3, 64, VOCAB)
    assert enc_lengths.tolist() == want_lengths == [64, 26, 2]
    assert enc_lengths.tolist() == subsampled_lengths(np.asarray(lengths), (2, 2)).tolist()
    valid = np.arange(64)[None, :] < enc_lengths[:, None]
    err = np.abs(logits - want)[valid].max()
    assert err <= 1e-4, err
    assert np.abs(want[valid]).mean() > 0.1  # not a degenerate all-zero comparison


def test_logits_do_not_depend_on_padding_or_batch(ctc):
    apply, params = ctc
    n = 101  # odd: the last valid conv output reads one padded input frame
    utt = _features([n], 256, seed=4)[0]  # [256, MELS], zero beyond n
    others = [_features([230], 256, seed=s)[0] for s in (5, 6)]

    alone, alone_len = apply(params, utt[None, :128], jnp.array([n]))
    k = int(alone_len[0])
    assert k == 26
    # Not padded at all: the conv stem's own zero padding stands in for the padded frames.
    exact, exact_len = apply(params, utt[None, :n], jnp.array([n]))
    assert exact.shape[1] == exact_len[0] == k
    np.testing.assert_allclose(np.asarray(exact[0]), np.asarray(alone[0, :k]), atol=1e-5, rtol=0)
    partners = []
    for other in others:
        logits, lengths = apply(params, np.stack([utt, other]), jnp.array([n, 230]))
        assert lengths.tolist() == [k, 58]
        np.testing.assert_allclose(
            np.asarray(logits[0, :k]), np.asarray(alone[0, :k]), atol=1e-5, rtol=0
        )
        partners.append(np.asarray(logits[1, :58]))
    assert np.abs(partners[0] - partners[1]).max() > 1e-2  # the partners really differ


@pytest.mark.parametrize("length,channels", [(1500, 384), (256, 64), (64, 32), (3, 8)])
def test_sinusoidal_positions_match_whisper(length, channels):
    got = sinusoidal_positions(length, channels)
    assert got.dtype == np.float32 and got.shape == (length, channels)
    # Whisper's formula, evaluated in float64: the same table to float32 rounding.
    np.testing.assert_allclose(got, _whisper_sinusoids64(length, channels).numpy(), atol=1e-6)
    # Whisper as shipped evaluates in float32, whose error in the angle grows with the
    # position (~length * 2**-24); jaxseq evaluates in float64, then rounds.
    shipped = whisper.model.sinusoids(length, channels).numpy()
    np.testing.assert_allclose(got, shipped, atol=1e-6 + length * 2.0**-22, rtol=0)


def test_every_parameter_has_logical_axes():
    boxed = _abstract_init(CTCModel(CFG, VOCAB))["params"]
    leaves = jax.tree_util.tree_flatten_with_path(
        boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
    )[0]
    assert len(leaves) == len(jax.tree.leaves(nn.unbox(boxed))) > 20
    specs = nn.get_partition_spec(boxed)
    for (path, leaf), spec in zip(leaves, jax.tree.leaves(specs), strict=True):
        where = jax.tree_util.keystr(path)
        assert isinstance(leaf, nn.LogicallyPartitioned), where
        names = tuple(leaf.names)
        assert len(names) == leaf.value.ndim, where
        assert set(names) <= AXIS_NAMES, where
        assert tuple(spec) == names, where
        # flax refuses to map a name that appears twice in one array.
        assert len(set(names)) == len(names), f"{where} repeats a logical axis: {names}"
    # Every logical name the model uses has a rule, and the rules map to real mesh axes.
    ruled = dict(LOGICAL_RULES)
    assert {n for _, leaf in leaves for n in leaf.names} <= set(ruled)
    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), MESH_AXES)
    shardings = logical_shardings(boxed, mesh)  # the path create_train_state takes
    assert len(jax.tree.leaves(shardings)) == len(leaves)


def test_bfloat16_compute_keeps_float32_params(ctc):
    apply32, params = ctc
    model16 = CTCModel(CFG, VOCAB, dtype=jnp.bfloat16)
    init16 = _abstract_init(model16)["params"]
    assert {x.dtype for x in jax.tree.leaves(nn.unbox(init16))} == {jnp.dtype(jnp.float32)}

    frames, lengths = 128, jnp.array([128, 77])
    feats = _features(lengths.tolist(), frames, seed=7)
    apply16 = jax.jit(
        lambda p, x, n: model16.apply(
            {"params": p}, x, n, deterministic=True, capture_intermediates=True
        )
    )
    (logits16, _), state = apply16(params, feats, lengths)
    encoded, _ = state["intermediates"]["encoder"]["__call__"][0]
    assert encoded.dtype == jnp.bfloat16  # the encoder really computed in bfloat16
    assert logits16.dtype == jnp.float32

    logits32, enc_lengths = apply32(params, feats, lengths)
    valid = np.asarray(padding_mask(enc_lengths, logits32.shape[1]))
    diff = np.abs(np.asarray(logits16) - np.asarray(logits32))[valid]
    scale = np.abs(np.asarray(logits32))[valid].mean()
    assert 0 < diff.mean() < 0.05 * scale, (diff.mean(), scale)
