"""AST (jaxseq.models.ast) against transformers' ASTForAudioClassification; its padding mask
and pooling against a float64 NumPy oracle; the converter (jaxseq.convert.hf_ast) and
`jaxseq convert` of an AST folder into a classify workdir."""

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.sharding import Mesh, SingleDeviceSharding
from transformers import ASTConfig, ASTForAudioClassification

from jaxseq.config import ClassifyConfig, ModelConfig, load_config
from jaxseq.convert.hf_ast import ast_config_from_hf, ast_params_from_hf
from jaxseq.convert.hf_whisper import ConversionError
from jaxseq.convert.workdir import convert_to_workdir
from jaxseq.data.labels import LabelSet
from jaxseq.models.ast import AST, ASTEncoder, min_frames, patch_grid
from jaxseq.parallel.sharding import LOGICAL_RULES, MESH_AXES, logical_shardings
from jaxseq.train.checkpoint import restore_workdir_params

HF_SIZES = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    num_mel_bins=32,
    max_length=64,
    patch_size=16,
)
LABELS = ["dog", "cat", "rain", "bell", "car"]  # id order, deliberately not sorted
FRAMES, MELS = 64, 32


def _hf_model(frequency_stride: int = 10, time_stride: int = 10) -> ASTForAudioClassification:
    torch.manual_seed(0)
    config = ASTConfig(
        **HF_SIZES,
        frequency_stride=frequency_stride,
        time_stride=time_stride,
        id2label=dict(enumerate(LABELS)),
        label2id={name: i for i, name in enumerate(LABELS)},
    )
    model = ASTForAudioClassification(config).eval()
    # transformers starts the tokens and positions at zero, which would hide patch and token
    # order; every parameter gets random values instead (LayerNorm scales around 1).
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_scale = "layernorm" in name and name.endswith("weight")
            p.copy_(torch.randn_like(p) * 0.3 + float(is_scale))
    return model


def _converted(hf: ASTForAudioClassification, scan_layers: bool = False, **classify_changes):
    model_over, classify_over, n_mels, labels = ast_config_from_hf(hf.config)
    cfg = dataclasses.replace(ModelConfig(), scan_layers=scan_layers, **model_over)
    classify = dataclasses.replace(ClassifyConfig(), **{**classify_over, **classify_changes})
    params = ast_params_from_hf(
        hf.state_dict(), cfg, classify, n_mels=n_mels, num_labels=len(labels)
    )
    return AST(cfg, classify, len(labels), n_mels), params


def _hf_logits(hf: ASTForAudioClassification, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return hf(torch.from_numpy(x)).logits.numpy()


def _features(batch: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, FRAMES, MELS)).astype(np.float32)


@pytest.fixture(scope="module")
def hf():
    return _hf_model()


def _abstract_params(model: AST):
    return jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, FRAMES, MELS)), jnp.array([FRAMES]))
    )["params"]


@pytest.mark.parametrize("strides", [(10, 10), (8, 12)])
def test_logits_match_transformers(strides):
    hf = _hf_model(*strides)
    model, params = _converted(hf)
    shapes = jax.tree.map(lambda x: x.shape, nn.unbox(_abstract_params(model)))
    assert jax.tree.map(lambda x: x.shape, params) == shapes  # the converter fills init's tree
    x = _features()
    ours = jax.jit(model.apply)({"params": params}, x, jnp.array([FRAMES, FRAMES]))
    err = float(np.abs(np.asarray(ours) - _hf_logits(hf, x)).max())
    print(f"AST strides {strides}: max |jaxseq - transformers| = {err:.2e}")
    assert ours.dtype == jnp.float32 and ours.shape == (2, len(LABELS))
    assert err <= 1e-4


def test_scanned_layers_give_the_same_logits(hf):
    model, params = _converted(hf)
    scanned, scanned_params = _converted(hf, scan_layers=True)
    assert scanned_params["encoder"]["layers"]["layer"]["attn"]["query"]["kernel"].shape[0] == 2
    x, lengths = _features(), jnp.array([FRAMES, 40])
    np.testing.assert_allclose(
        jax.jit(scanned.apply)({"params": scanned_params}, x, lengths),
        jax.jit(model.apply)({"params": params}, x, lengths),
        atol=1e-5,
    )


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_padding_content_does_not_matter(hf, pooling):
    model, params = _converted(hf, pooling=pooling)
    apply = jax.jit(model.apply)
    x = _features()
    length = 37  # time patches 0..3 start before frame 37; patch 4 (frames 40-55) is padding
    zeros, garbage = x.copy(), x.copy()
    zeros[1, length:] = 0.0
    garbage[1, length:] = 100.0 * np.random.default_rng(1).standard_normal((FRAMES - length, MELS))
    lengths = jnp.array([FRAMES, length])
    with_zeros = np.asarray(apply({"params": params}, zeros, lengths))
    with_garbage = np.asarray(apply({"params": params}, garbage, lengths))
    np.testing.assert_allclose(with_garbage, with_zeros, atol=1e-5, rtol=0)
    # The clip alone, unpadded (the model pads it to max_frames), gives the same logits.
    alone = apply({"params": params}, x[1:, :length], jnp.array([length]))
    np.testing.assert_allclose(np.asarray(alone)[0], with_zeros[1], atol=1e-5, rtol=0)
    # Not vacuous: read as valid, the garbage changes the logits.
    unmasked = np.asarray(apply({"params": params}, garbage, jnp.array([FRAMES, FRAMES])))
    assert np.abs(unmasked[1] - with_zeros[1]).max() > 1e-2


def test_mean_pooling_matches_a_float64_oracle(hf):
    model, params = _converted(hf, pooling="mean")
    x, lengths = _features(), jnp.array([FRAMES, 37])
    capture = jax.jit(
        lambda p, x, n: model.apply(
            {"params": p},
            x,
            n,
            capture_intermediates=lambda mdl, _: isinstance(mdl, ASTEncoder),
            mutable=["intermediates"],
        )
    )
    logits, state = capture(params, x, lengths)
    hidden, valid = state["intermediates"]["encoder"]["__call__"][0]
    # [CLS], distillation, then 2 frequency rows of 5 time patches; length 37 keeps t = 0..3.
    row = [True, True, True, True, False]
    np.testing.assert_array_equal(valid[1], [True, True] + row + row)
    assert bool(valid[0].all())
    hidden = np.asarray(hidden, np.float64)
    head_norm = params["head_norm"]["LayerNorm_0"]
    for b in range(2):
        pooled = hidden[b, 2:][np.asarray(valid[b, 2:])].mean(axis=0)  # [d_model]
        normed = (pooled - pooled.mean()) / np.sqrt(pooled.var() + 1e-12)
        normed = normed * head_norm["scale"] + head_norm["bias"]
        want = normed @ params["head"]["kernel"].astype(np.float64) + params["head"]["bias"]
        np.testing.assert_allclose(np.asarray(logits[b]), want, atol=1e-5, rtol=0)


def test_input_checks(hf):
    model, params = _converted(hf)
    too_long = np.zeros((1, FRAMES + 1, MELS), np.float32)
    with pytest.raises(ValueError, match="exceed AST's classify.max_frames=64"):
        model.apply({"params": params}, too_long, jnp.array([FRAMES + 1]))
    with pytest.raises(ValueError, match="32 mel bins"):
        model.apply({"params": params}, np.zeros((1, FRAMES, 40)), jnp.array([FRAMES]))


def test_patch_grid_and_min_frames():
    assert patch_grid(128, ClassifyConfig()) == (12, 101)  # AudioSet AST: 1212 patches
    strided = ClassifyConfig(max_frames=64, frequency_stride=8, time_stride=12)
    assert patch_grid(32, strided) == (3, 5)
    assert min_frames(ClassifyConfig()) == 16
    with pytest.raises(ValueError, match="at least 16 mel bins"):
        patch_grid(8, ClassifyConfig())


def test_every_parameter_has_logical_axes(hf):
    model, _ = _converted(hf)
    boxed = _abstract_params(model)
    leaves = jax.tree_util.tree_flatten_with_path(
        boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
    )[0]
    assert len(leaves) == len(jax.tree.leaves(nn.unbox(boxed)))
    ruled = dict(LOGICAL_RULES)
    for path, leaf in leaves:
        where = jax.tree_util.keystr(path)
        assert isinstance(leaf, nn.LogicallyPartitioned), where
        names = tuple(leaf.names)
        assert len(names) == leaf.value.ndim and len(set(names)) == len(names), where
        assert set(names) <= set(ruled), where
    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), MESH_AXES)
    assert len(jax.tree.leaves(logical_shardings(boxed, mesh))) == len(leaves)


def test_config_from_hf(hf):
    model, classify, n_mels, labels = ast_config_from_hf(hf.config)
    assert model == {"d_model": 32, "num_heads": 2, "num_layers": 2, "mlp_dim": 64, "dropout": 0}
    assert classify == {
        "encoder": "ast",
        "level": "sequence",
        "pooling": "cls",
        "patch_size": 16,
        "frequency_stride": 10,
        "time_stride": 10,
        "max_frames": 64,
        "layer_norm_eps": 1e-12,
    }
    assert (n_mels, labels) == (32, LABELS)
    assert ast_config_from_hf(hf.config.to_dict()) == (model, classify, n_mels, labels)
    with pytest.raises(ConversionError, match="hidden_act 'gelu_new'"):
        ast_config_from_hf({**hf.config.to_dict(), "hidden_act": "gelu_new"})
    with pytest.raises(ConversionError, match="model_type"):
        ast_config_from_hf({**hf.config.to_dict(), "model_type": "vit"})
    state = {k: v for k, v in hf.state_dict().items() if "layers.1.mlp" not in k}
    cfg = dataclasses.replace(ModelConfig(), **model)
    with pytest.raises(ConversionError, match="lacks 4 tensors"):
        ast_params_from_hf(
            state, cfg, dataclasses.replace(ClassifyConfig(), **classify), n_mels=32, num_labels=5
        )


def test_convert_an_ast_folder_into_a_workdir(hf, tmp_path):
    hf.save_pretrained(tmp_path / "hf")  # legacy tensor names (encoder.layer.0.attention...)
    workdir = convert_to_workdir(tmp_path / "hf", tmp_path / "workdir")
    cfg = load_config(workdir / "config.yaml")
    assert (cfg.model.family, cfg.classify.encoder, cfg.classify.max_frames) == (
        "classify",
        "ast",
        FRAMES,
    )
    assert (cfg.model.d_model, cfg.model.num_layers, cfg.data.buckets) == (32, 2, (FRAMES,))
    assert json.loads((workdir / "frontend.json").read_text())["frontend"]["n_mels"] == MELS
    assert LabelSet.load(workdir / "labels.json").names == tuple(LABELS)

    model = AST(cfg.model, cfg.classify, len(LABELS), MELS)
    device = SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
        nn.unbox(_abstract_params(model)),
    )
    params, step = restore_workdir_params(workdir, abstract)
    x = _features(seed=3)
    ours = jax.jit(model.apply)({"params": params}, x, jnp.array([FRAMES, FRAMES]))
    err = float(np.abs(np.asarray(ours) - _hf_logits(hf, x)).max())
    print(f"AST converted workdir: max |jaxseq - transformers| = {err:.2e}")
    assert step == 0 and err <= 1e-4
    with pytest.raises(ConversionError, match="already holds checkpoints"):
        convert_to_workdir(tmp_path / "hf", workdir)
