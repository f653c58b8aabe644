"""jaxseq's Whisper against transformers' WhisperForConditionalGeneration: checkpoint loading,
teacher-forced logits on real log-mel input, cached decoding, export back to transformers, the
errors for bad folders, and logical axis names on every parameter."""

from __future__ import annotations

import functools
import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from jaxseq.audio.espeak import synthesize
from jaxseq.audio.frontend import log_mel_numpy
from jaxseq.audio.io import to_mono_resampled
from jaxseq.config import FrontendConfig
from jaxseq.convert import ConversionError, export_hf_whisper, load_hf_whisper
from jaxseq.decoding.beam_search import greedy_search
from jaxseq.models.whisper import (
    WhisperDims,
    WhisperModel,
    decode_step,
    init_cache,
    search_setup,
)
from jaxseq.parallel import sharding
from jaxseq.parallel.sharding import LOGICAL_RULES
from tests.hf_whisper import random_whisper

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VOCAB = 100
SOURCE_POSITIONS = 150  # 300 mel frames: 3 s
TARGET_POSITIONS = 32
AXIS_NAMES = {
    getattr(sharding, name)
    for name in dir(sharding)
    if name.isupper() and isinstance(getattr(sharding, name), str)
}


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """(folder, torch model): a small random Whisper saved with `save_pretrained`.

    Every weight is redrawn, N(0, 0.1) (LayerNorm scales N(1, 0.1)), so that a zero bias or a
    unit scale copied to the wrong place cannot go unnoticed.
    """
    model = random_whisper(
        0.1,
        vocab_size=VOCAB,
        max_source_positions=SOURCE_POSITIONS,
        max_target_positions=TARGET_POSITIONS,
        pad_token_id=1,
        bos_token_id=1,
        eos_token_id=1,
        decoder_start_token_id=2,
    )
    folder = tmp_path_factory.mktemp("hf_whisper")
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module")
def features():
    """Real log-mel input [1, 300, 80]: espeak-ng speech, zero-padded to 3 s like Whisper does."""
    cfg = FrontendConfig()
    audio, sr = synthesize("one two three", "en-us")
    audio = to_mono_resampled(audio, sr, cfg.sample_rate)
    num_samples = 2 * SOURCE_POSITIONS * cfg.hop_length
    audio = np.pad(audio[:num_samples], (0, max(0, num_samples - len(audio))))
    mel = log_mel_numpy(audio, cfg)  # [300, 80]
    assert mel.shape == (2 * SOURCE_POSITIONS, cfg.n_mels)
    assert mel.std() > 0.1  # real speech, not silence
    return mel[None]


@pytest.fixture(scope="module")
def tokens():
    """Decoder input [2, 12]: the start token, then arbitrary ids."""
    rng = np.random.default_rng(0)
    ids = rng.integers(3, VOCAB, (2, 12))
    ids[:, 0] = 2
    return ids


@pytest.fixture(scope="module")
def converted(hf_folder):
    """(WhisperModel, params, dims) loaded from the HF folder."""
    params, dims = load_hf_whisper(hf_folder[0])
    return WhisperModel(dims), jax.tree.map(jnp.asarray, params), dims


def _torch_logits(model, features: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """features [batch, frames, mels] (time-major, like jaxseq) → logits [batch, tokens, vocab]."""
    with torch.no_grad():
        out = model(
            input_features=torch.from_numpy(np.ascontiguousarray(features.transpose(0, 2, 1))),
            decoder_input_ids=torch.from_numpy(tokens),
        )
    return out.logits.numpy()


def _jax_logits(converted, features: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    model, params, _ = converted
    lengths = jnp.full((features.shape[0],), features.shape[1])  # Whisper never masks frames
    return np.asarray(jax.jit(model.apply)({"params": params}, features, lengths, tokens))


@pytest.fixture(scope="module")
def encoded(converted, features):
    """(encoder output, encoder mask) of the two utterances the decoding tests use."""
    model, params, _ = converted
    feats = np.concatenate([features, features[:, ::-1]])
    lengths = jnp.full((2,), feats.shape[1])
    encode = jax.jit(functools.partial(model.apply, method=WhisperModel.encode))
    return encode({"params": params}, feats, lengths)


def test_dims_from_config(converted):
    _, _, dims = converted
    assert dims == WhisperDims(
        n_mels=80,
        d_model=64,
        encoder_layers=2,
        encoder_heads=4,
        encoder_ffn_dim=128,
        decoder_layers=2,
        decoder_heads=4,
        decoder_ffn_dim=128,
        vocab_size=VOCAB,
        max_source_positions=SOURCE_POSITIONS,
        max_target_positions=TARGET_POSITIONS,
        pad_token_id=1,
        bos_token_id=1,
        eos_token_id=1,
        decoder_start_token_id=2,
    )


def test_teacher_forced_logits_match_transformers(hf_folder, converted, features, tokens):
    feats = np.concatenate([features, features[:, ::-1]])  # two different utterances
    want = _torch_logits(hf_folder[1], feats, tokens)
    got = _jax_logits(converted, feats, tokens)
    assert got.dtype == np.float32 and got.shape == want.shape == (2, 12, VOCAB)
    err = np.abs(got - want).max()
    assert err <= 1e-4, err
    assert np.abs(want).mean() > 0.3  # logits of real size, not a degenerate comparison
    assert np.abs(want[0] - want[1]).max() > 0.1  # the audio really matters


def test_cached_decoding_matches_teacher_forcing(converted, features, tokens, encoded):
    model, params, _ = converted
    feats = np.concatenate([features, features[:, ::-1]])
    full = _jax_logits(converted, feats, tokens)  # [2, 12, vocab]

    encoded, mask = encoded
    init = jax.jit(functools.partial(init_cache, model), static_argnames="max_length")
    cache = init(params, encoded, mask, max_length=16)  # longer than needed
    step = jax.jit(functools.partial(decode_step, model))
    steps = []
    for t in range(tokens.shape[1]):
        logits, cache = step(params, cache, jnp.asarray(tokens[:, t : t + 1]), encoded, mask)
        steps.append(np.asarray(logits))  # [2, 1, vocab]
    assert int(cache["decoder"]["position"]) == tokens.shape[1]
    err = np.abs(np.concatenate(steps, axis=1) - full).max()
    assert err <= 1e-5, err


def test_greedy_search_follows_teacher_forced_argmax(converted, features, encoded):
    """jaxseq's generic greedy search over the Whisper step: every generated token is the argmax
    of the teacher-forced logits one position earlier (so prefill and positions line up)."""
    model, params, _ = converted
    feats = np.concatenate([features, features[:, ::-1]])
    prompt = jnp.array([[2, 7], [2, 9]], jnp.int32)  # two tokens: one prefill step
    steps = 8

    @jax.jit  # the set-up (the cross-attention cache) and the search as one program
    def search(params, encoded, mask, prompt):
        cache, step_fn = search_setup(model, params, encoded, mask, prompt.shape[1] + steps)
        return greedy_search(
            step_fn, cache, prompt, max_new_tokens=steps, eos_id=0, suppress_ids=[0]
        )

    out = search(params, *encoded, prompt)
    assert out.sequences.shape == (2, steps) and out.lengths.tolist() == [steps, steps]
    full = np.concatenate([np.asarray(prompt), np.asarray(out.sequences)], axis=1)  # [2, 10]
    logits = _jax_logits(converted, feats, full[:, :-1])[:, 1:]  # [2, 8, vocab]
    np.testing.assert_array_equal(logits[..., 1:].argmax(-1) + 1, full[:, 2:])  # 0 suppressed
    # Scores: log-softmax over the whole vocabulary (suppression does not renormalize).
    log_probs = np.asarray(jax.nn.log_softmax(jnp.asarray(logits), axis=-1))
    want_score = np.take_along_axis(log_probs, full[:, 2:, None], -1).sum((1, 2))
    np.testing.assert_allclose(np.asarray(out.scores), want_score, atol=1e-4)
    assert len(set(full[0, 2:].tolist())) > 1  # not one token repeated


def test_export_reloads_in_transformers(hf_folder, converted, features, tokens, tmp_path):
    _, params, dims = converted
    out = export_hf_whisper(jax.tree.map(np.asarray, params), dims, tmp_path / "export")
    reloaded = transformers.WhisperForConditionalGeneration.from_pretrained(out).eval()
    want = _torch_logits(hf_folder[1], features, tokens[:1])
    got = _torch_logits(reloaded, features, tokens[:1])
    assert np.abs(got - want).max() <= 1e-6
    # And the exported folder converts back to the same params.
    again, dims_again = load_hf_whisper(out)
    assert dims_again == dims
    jax.tree.map(np.testing.assert_array_equal, again, jax.tree.map(np.asarray, params))


@pytest.mark.parametrize("layout", ["sharded", "torch_bin"])
def test_other_checkpoint_layouts(hf_folder, converted, tmp_path, layout):
    """A sharded safetensors folder and a pytorch_model.bin load to the same params."""
    folder, model = hf_folder
    out = tmp_path / layout
    if layout == "sharded":
        model.save_pretrained(out, max_shard_size="100KB")
        assert (out / "model.safetensors.index.json").is_file()
    else:
        out.mkdir()
        shutil.copy(folder / "config.json", out)
        torch.save(model.state_dict(), out / "pytorch_model.bin")  # proj_out.weight included
    params, dims = load_hf_whisper(out)
    assert dims == converted[2]
    jax.tree.map(np.testing.assert_array_equal, params, jax.tree.map(np.asarray, converted[1]))


def test_untied_output_projection(hf_folder, tmp_path):
    folder = tmp_path / "untied"
    folder.mkdir()
    shutil.copy(hf_folder[0] / "config.json", folder)
    state = {k: v.clone() for k, v in hf_folder[1].state_dict().items()}
    state["proj_out.weight"] += 1.0
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(ConversionError, match="untied: proj_out.weight differs"):
        load_hf_whisper(folder)


def _copy_folder(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_model_file(hf_folder, tmp_path):
    folder = tmp_path / "no_weights"
    folder.mkdir()
    shutil.copy(hf_folder[0] / "config.json", folder)
    with pytest.raises(ConversionError, match=r"no_weights: no model file.*model\.safetensors"):
        load_hf_whisper(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match=r"empty: no config\.json"):
        load_hf_whisper(tmp_path / "empty")


def test_wrong_architecture(hf_folder, tmp_path):
    folder = _copy_folder(hf_folder[0], tmp_path / "bert")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "bert"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match=r"bert: unsupported architecture.*'bert'"):
        load_hf_whisper(folder)
    config.update(model_type="whisper", architectures=["WhisperForAudioClassification"])
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match="WhisperForAudioClassification"):
        load_hf_whisper(folder)


def test_tampered_shape(hf_folder, tmp_path):
    folder = _copy_folder(hf_folder[0], tmp_path / "tampered")
    tensors = load_file(folder / "model.safetensors")
    name = "model.decoder.layers.1.fc1.weight"
    tensors[name] = tensors[name][:-1]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        ConversionError, match=rf"tampered: tensor {name} .*\(127, 64\).*\(128, 64\)"
    ):
        load_hf_whisper(folder)
    del tensors[name]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConversionError, match=rf"lacks 1 tensors: {name}"):
        load_hf_whisper(folder)


def test_every_parameter_has_logical_axes(converted):
    model, params, dims = converted
    frames = dims.num_frames
    boxed = jax.eval_shape(
        lambda: model.init(
            jax.random.key(0),
            jnp.zeros((1, frames, dims.n_mels)),
            jnp.array([frames]),
            jnp.zeros((1, 4), jnp.int32),
        )
    )["params"]
    leaves = jax.tree_util.tree_flatten_with_path(
        boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
    )[0]
    ruled = dict(LOGICAL_RULES)
    for path, leaf in leaves:
        where = jax.tree_util.keystr(path)
        assert isinstance(leaf, nn.LogicallyPartitioned), where
        names = tuple(leaf.names)
        assert len(names) == leaf.value.ndim and len(set(names)) == len(names), where
        assert set(names) <= AXIS_NAMES and set(names) <= set(ruled), where
    # The converter fills exactly the model's parameters, in the model's shapes.
    shapes = jax.tree.map(lambda x: x.shape, nn.unbox(boxed))
    assert jax.tree.map(lambda x: x.shape, params) == shapes
    assert len(leaves) > 60
