"""Wav2Vec2 and HuBERT (jaxseq.models.wav2vec2) against transformers' PyTorch models, through
the converter (jaxseq.convert.hf_wav2vec2): feature encoder, every hidden state and the logits
of base (group norm, post-LN), large (layer norm, pre-LN) and HuBERT models; padded batches;
the CTC loss; greedy transcripts against Wav2Vec2CTCTokenizer; the classification heads; the
masked_spec_embed path; export back into a fresh transformers model; span-mask sampling; the
feature mask, applied and sampled in training."""

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import (
    HubertConfig,
    HubertForCTC,
    HubertForSequenceClassification,
    Wav2Vec2Config,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2ForAudioFrameClassification,
    Wav2Vec2ForCTC,
    Wav2Vec2ForPreTraining,
    Wav2Vec2ForSequenceClassification,
)
from transformers.models.wav2vec2 import modeling_wav2vec2
from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices

from jaxseq.config import load_config
from jaxseq.convert.hf_wav2vec2 import (
    ctc_text,
    read_ctc_vocab,
    wav2vec2_config_from_hf,
    wav2vec2_params_from_hf,
    wav2vec2_params_to_hf,
)
from jaxseq.convert.hf_whisper import ConversionError
from jaxseq.losses.ctc import ctc_loss
from jaxseq.models.wav2vec2 import (
    Wav2Vec2CTC,
    Wav2Vec2Dims,
    Wav2Vec2Encoder,
    Wav2Vec2FrameClassifier,
    Wav2Vec2SequenceClassifier,
)
from jaxseq.models.wav2vec2_features import ConvPositionalEmbedding, sample_span_mask
from jaxseq.parallel.sharding import LOGICAL_RULES
from jaxseq.tasks.ctc import Wav2Vec2CTCTask
from jaxseq.text.vocab import CharVocab
from tests.conftest import REPO
from tests.wav2vec2_tiny import TINY, assert_close

SIZES = dict(
    **TINY,
    vocab_size=12,
    pad_token_id=0,
)
VARIANTS = {  # name: (config class, model class, config changes)
    "wav2vec2-base": (Wav2Vec2Config, Wav2Vec2ForCTC, {}),
    "wav2vec2-large": (
        Wav2Vec2Config,
        Wav2Vec2ForCTC,
        dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True),
    ),
    "hubert": (HubertConfig, HubertForCTC, dict(feat_proj_layer_norm=False, conv_bias=True)),
}
HEADS = {
    Wav2Vec2ForCTC: (Wav2Vec2CTC, "ctc"),
    HubertForCTC: (Wav2Vec2CTC, "ctc"),
    HubertForSequenceClassification: (Wav2Vec2SequenceClassifier, "sequence"),
    Wav2Vec2ForSequenceClassification: (Wav2Vec2SequenceClassifier, "sequence"),
    Wav2Vec2ForAudioFrameClassification: (Wav2Vec2FrameClassifier, "frame"),
}
SAMPLES = 1600  # 79 frames
SHORT = 1100  # 54 frames
VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", "a", "b", "c", "d", "e", "f", "g"]


def _hf(config_cls, model_cls, seed: int = 0, **changes):
    torch.manual_seed(seed)
    config = config_cls(**{**SIZES, **changes})
    model = model_cls(config).eval()
    # transformers starts biases at 0, LayerNorm scales at 1 and the weight-norm g at ‖v‖:
    # every parameter is perturbed so that a swapped or dropped one shows.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _convert(hf):
    model_cls, head = HEADS[type(hf)]
    dims = Wav2Vec2Dims(**wav2vec2_config_from_hf(hf.config))
    params = wav2vec2_params_from_hf(hf.state_dict(), dims, head, hf.config.model_type)
    return model_cls(dims), params, head


def _waves(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((2, SAMPLES)).astype(np.float32)


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request):
    config_cls, model_cls, changes = VARIANTS[request.param]
    hf = _hf(config_cls, model_cls, **changes)
    return request.param, hf, *_convert(hf)


def test_every_output_matches_transformers(variant):
    name, hf, model, params, _ = variant
    x = _waves()
    with torch.no_grad():
        theirs = hf(torch.from_numpy(x), output_hidden_states=True)
        conv = hf.base_model.feature_extractor(torch.from_numpy(x)).transpose(1, 2)
    logits, out = jax.jit(model.apply)({"params": params}, x)
    assert_close(out.conv_features, conv.numpy(), f"{name} feature encoder")
    assert len(out.hidden_states) == len(theirs.hidden_states) == 3
    for i, (a, b) in enumerate(zip(out.hidden_states, theirs.hidden_states, strict=True)):
        assert_close(a, b.numpy(), f"{name} hidden_states[{i}]")
    assert_close(logits, theirs.logits.numpy(), f"{name} logits")
    assert logits.dtype == jnp.float32 and logits.shape == (2, 79, 12)
    assert np.asarray(out.lengths).tolist() == [79, 79]


@pytest.mark.parametrize("norm", ["layer", "group"])
def test_padded_batches(norm):
    stable = norm == "layer"
    hf = _hf(Wav2Vec2Config, Wav2Vec2ForCTC, feat_extract_norm=norm, do_stable_layer_norm=stable)
    model, params, _ = _convert(hf)
    x = _waves(1)
    x[1, SHORT:] = 0.0
    mask = np.zeros((2, SAMPLES), np.int64)
    mask[0], mask[1, :SHORT] = 1, 1
    apply = jax.jit(model.apply)
    logits, out = apply({"params": params}, x, jnp.array([SAMPLES, SHORT]))
    assert np.asarray(out.lengths).tolist() == [79, 54]
    labels = torch.tensor([[5, 6, 6, 7, 4, 8, 9], [10, 11, 5, -100, -100, -100, -100]])
    with torch.no_grad():
        theirs = hf(
            torch.from_numpy(x),
            attention_mask=torch.from_numpy(mask),
            labels=labels,
            output_hidden_states=True,
        )
    with torch.no_grad():  # item 1 alone: what jaxseq's padded item 1 must equal
        alone_hf = hf(torch.from_numpy(x[1:, :SHORT]), output_hidden_states=True)
    # transformers' outputs on padded frames are not defined to match: compare valid frames.
    # Item 1 of transformers' padded batch matches only with layer norm: its GroupNorm takes
    # statistics over the padding too, jaxseq's over the valid frames (as on the item alone).
    reference_1 = theirs if norm == "layer" else alone_hf
    for i, (a, b) in enumerate(zip(out.hidden_states, theirs.hidden_states, strict=True)):
        assert_close(a[0], b[0].numpy(), f"{norm} padded hidden_states[{i}], item 0")
        b1 = reference_1.hidden_states[i][0 if norm == "group" else 1, :54].numpy()
        assert_close(a[1, :54], b1, f"{norm} padded hidden_states[{i}], item 1")
    assert_close(
        logits[1, :54], reference_1.logits[0 if norm == "group" else 1, :54].numpy(), "logits"
    )
    if norm == "group":  # ... whereas transformers' padded item 1 differs from it alone
        padded_hf = theirs.logits[1, :54].numpy()
        assert np.abs(padded_hf - alone_hf.logits[0].numpy()).max() > 1e-3

    # The CTC loss: jaxseq's per-utterance loss equals transformers' on each item alone, and
    # reduced as transformers reduces, its loss on the padded batch (layer norm).
    label_lengths = (labels >= 0).sum(-1).numpy()
    ours = np.asarray(
        ctc_loss(logits, out.lengths, np.maximum(labels.numpy(), 0), label_lengths, blank_id=0)
    )
    hf.config.ctc_loss_reduction = "sum"
    for item, (length, n) in enumerate(zip((SAMPLES, SHORT), label_lengths, strict=True)):
        with torch.no_grad():
            loss = hf(
                torch.from_numpy(x[item : item + 1, :length]), labels=labels[item : item + 1, :n]
            ).loss
        assert_close(ours[item], loss.numpy(), f"{norm} CTC loss of item {item} alone")
    for reduction, reduced in (("mean", np.mean(ours / label_lengths)), ("sum", ours.sum())):
        if norm == "group":
            break
        hf.config.ctc_loss_reduction = reduction
        with torch.no_grad():
            loss = hf(
                torch.from_numpy(x), attention_mask=torch.from_numpy(mask), labels=labels
            ).loss
        assert_close(reduced, loss.numpy(), f"{norm} CTC loss, reduction {reduction}")

    # The valid frames do not depend on the padding, with either norm.
    alone, _ = apply({"params": params}, x[1:, :SHORT], jnp.array([SHORT]))
    assert_close(alone[0], logits[1, :54], f"{norm} padded vs unpadded logits")


def test_greedy_transcripts_match_the_tokenizer(tmp_path):
    (tmp_path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(VOCAB)}))
    tokenizer = Wav2Vec2CTCTokenizer(str(tmp_path / "vocab.json"))
    tokens = read_ctc_vocab(tmp_path)
    assert tokens == VOCAB
    # Paths with repeats, blanks between repeats, word delimiters at the ends and in runs, and
    # special tokens.
    paths = np.random.default_rng(0).integers(0, len(VOCAB), size=(40, 30))
    paths[:20] = np.random.default_rng(1).choice([0, 0, 0, 4, 5, 6, 6], size=(20, 30))
    ours = [ctc_text(p, tokens) for p in paths]
    assert ours == tokenizer.batch_decode(paths.tolist())
    assert ctc_text([0, 5, 5, 0, 5, 4, 4, 6, 4, 0, 4, 1], tokens) == "aa b  <s>"
    assert ctc_text([5, 6, 7], tokens, length=2) == "ab"

    hf = _hf(Wav2Vec2Config, Wav2Vec2ForCTC, seed=3)
    model, params, _ = _convert(hf)
    x = _waves(2)
    logits, _ = jax.jit(model.apply)({"params": params}, x)
    with torch.no_grad():
        hf_ids = hf(torch.from_numpy(x)).logits.argmax(-1).numpy()
    ids = np.asarray(jnp.argmax(logits, -1))
    np.testing.assert_array_equal(ids, hf_ids)
    assert [ctc_text(i, tokens) for i in ids] == tokenizer.batch_decode(hf_ids.tolist())


def test_sequence_classification_with_weighted_layers_and_padding():
    hf = _hf(
        Wav2Vec2Config,
        Wav2Vec2ForSequenceClassification,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        use_weighted_layer_sum=True,
        classifier_proj_size=24,
        num_labels=5,
    )
    with torch.no_grad():  # not the uniform initial weights; logits of order 1
        hf.layer_weights.copy_(torch.tensor([0.5, -1.0, 2.0]))
        hf.classifier.weight.mul_(10.0)
    model, params, _ = _convert(hf)
    x = _waves(4)
    mask = np.ones((2, SAMPLES), np.int64)
    mask[1, SHORT:] = 0
    x[1, SHORT:] = 0.0
    logits, _ = jax.jit(model.apply)({"params": params}, x, jnp.array([SAMPLES, SHORT]))
    with torch.no_grad():
        theirs = hf(torch.from_numpy(x), attention_mask=torch.from_numpy(mask)).logits
    assert_close(logits, theirs.numpy(), "sequence classification logits")
    assert logits.shape == (2, 5)


def test_frame_classification():
    hf = _hf(Wav2Vec2Config, Wav2Vec2ForAudioFrameClassification, num_labels=3)
    model, params, _ = _convert(hf)
    x = _waves(5)
    logits, _ = jax.jit(model.apply)({"params": params}, x)
    with torch.no_grad():
        theirs = hf(torch.from_numpy(x)).logits
    assert_close(logits, theirs.numpy(), "frame classification logits")
    assert logits.shape == (2, 79, 3)


def test_masked_spec_embed(variant):
    name, hf, model, params, _ = variant
    x = _waves(6)
    time_mask = np.zeros((2, 79), bool)
    time_mask[0, 3:13] = time_mask[0, 40:50] = time_mask[1, 70:79] = True
    with torch.no_grad():
        theirs = hf.base_model(
            torch.from_numpy(x),
            mask_time_indices=torch.from_numpy(time_mask),
            output_hidden_states=True,
        )
    masked = jax.jit(lambda p, x, m: model.apply({"params": p}, x, None, True, m))
    _, out = masked(params, x, jnp.asarray(time_mask))
    for i, (a, b) in enumerate(zip(out.hidden_states, theirs.hidden_states, strict=True)):
        assert_close(a, b.numpy(), f"{name} masked hidden_states[{i}]")
    assert_close(out.last_hidden_state, theirs.last_hidden_state.numpy(), f"{name} masked last")
    _, unmasked = jax.jit(model.apply)({"params": params}, x)
    assert np.abs(np.asarray(unmasked.hidden_states[0] - out.hidden_states[0])).max() > 1e-2


@pytest.mark.parametrize(
    "model_cls, changes",
    [
        (Wav2Vec2ForCTC, {}),
        (HubertForCTC, dict(feat_proj_layer_norm=False, conv_bias=True)),
        (Wav2Vec2ForSequenceClassification, dict(use_weighted_layer_sum=True, num_labels=4)),
        (Wav2Vec2ForAudioFrameClassification, dict(feat_extract_norm="layer", num_labels=3)),
        (HubertForSequenceClassification, dict(do_stable_layer_norm=True, num_labels=3)),
    ],
)
def test_export_back_into_transformers(model_cls, changes):
    config_cls = HubertConfig if model_cls.__name__.startswith("Hubert") else Wav2Vec2Config
    hf = _hf(config_cls, model_cls, **changes)
    _, params, head = _convert(hf)
    dims = Wav2Vec2Dims(**wav2vec2_config_from_hf(hf.config))
    state = wav2vec2_params_to_hf(params, dims, head, hf.config.model_type)
    original = hf.state_dict()
    assert sorted(state) == sorted(original)
    for k, v in state.items():  # bit for bit
        np.testing.assert_array_equal(v, original[k].numpy(), err_msg=k)
    fresh = _hf(config_cls, model_cls, seed=1, **changes)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    x = torch.from_numpy(_waves(7))
    with torch.no_grad():
        np.testing.assert_array_equal(fresh(x).logits.numpy(), hf(x).logits.numpy())


def test_import_reads_old_weight_norm_names_and_pretraining_checkpoints():
    hf = _hf(Wav2Vec2Config, Wav2Vec2ForCTC)
    dims = Wav2Vec2Dims(**wav2vec2_config_from_hf(hf.config))
    state = hf.state_dict()
    old = {
        k.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v"
        ): v
        for k, v in state.items()
    }
    assert "wav2vec2.encoder.pos_conv_embed.conv.weight_g" in old
    jax.tree.map(
        np.testing.assert_array_equal,
        wav2vec2_params_from_hf(old, dims, "ctc"),
        wav2vec2_params_from_hf(state, dims, "ctc"),
    )
    # Wav2Vec2ForPreTraining: the encoder part, as a Wav2Vec2Encoder.
    torch.manual_seed(0)
    pretraining = Wav2Vec2ForPreTraining(
        Wav2Vec2Config(**SIZES, codevector_dim=8, proj_codevector_dim=8)
    ).eval()
    pre_params = wav2vec2_params_from_hf(pretraining.state_dict(), dims, "pretraining")
    x = _waves(8)
    out = jax.jit(Wav2Vec2Encoder(dims).apply)({"params": pre_params}, x)
    with torch.no_grad():
        theirs = pretraining.wav2vec2(torch.from_numpy(x)).last_hidden_state
    assert_close(out.last_hidden_state, theirs.numpy(), "pre-training encoder")
    with pytest.raises(ConversionError, match="has unexpected 1 tensors: quantizer.codevectors"):
        wav2vec2_params_from_hf(
            {**state, "quantizer.codevectors": pretraining.quantizer.codevectors}, dims, "ctc"
        )
    del state["lm_head.bias"]
    with pytest.raises(ConversionError, match="lacks 1 tensors: lm_head.bias"):
        wav2vec2_params_from_hf(state, dims, "ctc")


def test_config_from_hf():
    fields = wav2vec2_config_from_hf(Wav2Vec2Config())
    assert Wav2Vec2Dims(**fields) == Wav2Vec2Dims()  # transformers' defaults are jaxseq's
    assert wav2vec2_config_from_hf({"model_type": "wav2vec2"}) == fields
    hubert = Wav2Vec2Dims(**wav2vec2_config_from_hf(HubertConfig(feat_proj_layer_norm=False)))
    assert not hubert.feat_proj_layer_norm and hubert.hidden_size == 768
    with pytest.raises(ConversionError, match="hidden_act 'gelu_new'"):
        wav2vec2_config_from_hf(Wav2Vec2Config(hidden_act="gelu_new"))
    with pytest.raises(ConversionError, match="model_type"):
        wav2vec2_config_from_hf({"model_type": "whisper"})
    with pytest.raises(ConversionError, match="add_adapter"):
        wav2vec2_config_from_hf(Wav2Vec2Config(add_adapter=True))


def test_output_lengths_match_transformers():
    hf = _hf(Wav2Vec2Config, Wav2Vec2ForCTC)
    dims = Wav2Vec2Dims(**wav2vec2_config_from_hf(hf.config))
    lengths = np.arange(0, 3000, 7)
    theirs = hf._get_feat_extract_output_lengths(torch.from_numpy(lengths)).numpy()
    np.testing.assert_array_equal(
        np.asarray(dims.output_lengths(jnp.asarray(lengths))), np.maximum(theirs, 0)
    )


def test_layerdrop_only_in_training():
    hf = _hf(Wav2Vec2Config, Wav2Vec2ForCTC)
    model, params, _ = _convert(hf)
    dims = dataclasses.replace(
        model.dims,
        layerdrop=1.0,  # every layer dropped
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        final_dropout=0.0,
    )
    apply = jax.jit(Wav2Vec2CTC(dims).apply, static_argnums=3)
    x = _waves(9)
    _, train = apply({"params": params}, x, None, False, rngs={"dropout": jax.random.key(0)})
    _, evaluate = apply({"params": params}, x, None, True)
    reference_logits, reference = jax.jit(model.apply)({"params": params}, x)
    np.testing.assert_array_equal(train.last_hidden_state, train.hidden_states[0])
    np.testing.assert_array_equal(evaluate.last_hidden_state, reference.last_hidden_state)
    # Rematerialized layers keep the parameter names and the numbers.
    remat = Wav2Vec2CTC(dataclasses.replace(model.dims, remat="full"))
    logits, _ = jax.jit(remat.apply)({"params": params}, x)
    np.testing.assert_allclose(logits, reference_logits, atol=1e-6)


def test_span_masks():
    lengths = jnp.array([79, 50, 4])  # 4: shorter than a span
    sample = jax.jit(sample_span_mask, static_argnums=(2, 3, 4, 5))
    for seed in range(20):
        mask = np.asarray(sample(jax.random.key(seed), lengths, 79, 0.3, 5, 2))
        assert not mask[0, 79:].any() and not mask[1, 50:].any() and not mask[2].any()
        for row in mask[:2]:  # every run of masked frames is a union of whole spans
            edges = np.flatnonzero(np.diff(np.concatenate([[0], row.astype(int), [0]])))
            assert len(edges) and (np.diff(edges)[::2] >= 5).all()
            assert 5 <= row.sum() <= 5 * 6  # count = floor(0.3 · 79 / 5 + u) <= 5
    # The masked fraction is transformers' (their sampler is NumPy's; 400 draws each).
    np.random.seed(0)
    attention = torch.ones(2, 79, dtype=torch.long)
    attention[1, 50:] = 0
    theirs = np.mean(
        [_compute_mask_indices((2, 79), 0.3, 5, attention, 2).mean(0) for _ in range(400)], 0
    )
    keys = jax.random.split(jax.random.key(1), 400)
    ours = np.asarray(
        jax.vmap(lambda k: sample_span_mask(k, lengths[:2], 79, 0.3, 5, 2))(keys)
    ).mean((0, 1))
    assert np.abs(ours.sum() - theirs.sum()) / theirs.sum() < 0.05


def test_every_parameter_has_logical_axes():
    dims = Wav2Vec2Dims(**{**wav2vec2_config_from_hf(Wav2Vec2Config(**SIZES))})
    dims = dataclasses.replace(dims, use_weighted_layer_sum=True)
    boxed = jax.eval_shape(
        lambda: Wav2Vec2SequenceClassifier(dims).init(jax.random.key(0), jnp.zeros((1, SAMPLES)))
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
        assert set(names) <= set(ruled), where


def test_feature_mask_matches_transformers_in_training(monkeypatch):
    """A fixed feature mask zeroes its hidden channels of the encoder's input (the position
    conv's) at every frame, and the CTC logits are transformers' in training mode (dropout and
    LayerDrop off) when its `_compute_mask_indices` returns the same mask."""
    off = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    off |= dict(feat_proj_dropout=0.0, final_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0)
    hf = _hf(Wav2Vec2Config, Wav2Vec2ForCTC, **off, mask_feature_prob=0.3, mask_feature_length=4)
    model, params, _ = _convert(hf)
    feature_mask = np.zeros((2, 32), bool)  # [batch, hidden]
    feature_mask[0, 3:7] = feature_mask[0, 20:24] = feature_mask[1, 10:14] = True

    def fixed(shape, **kwargs):
        assert shape == (2, 32) and kwargs["mask_length"] == 4
        return feature_mask

    monkeypatch.setattr(modeling_wav2vec2, "_compute_mask_indices", fixed)
    x = _waves(7)
    with torch.no_grad():
        theirs = hf.train()(torch.from_numpy(x)).logits.numpy()
    hf.eval()

    inputs = []  # the position conv's input [batch, frames, hidden], unmasked then masked

    def keep_input(next_fun, args, kwargs, context):
        if isinstance(context.module, ConvPositionalEmbedding):
            inputs.append(np.asarray(args[0]))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(keep_input):
        model.apply({"params": params}, x)
        logits, _ = model.apply({"params": params}, x, None, False, None, feature_mask)
    expected = inputs[0].copy()
    expected[np.broadcast_to(feature_mask[:, None, :], expected.shape)] = 0.0
    np.testing.assert_array_equal(inputs[1], expected)
    assert np.abs(inputs[0][:, :, feature_mask[0]]).min() > 0  # what was zeroed was not zero
    assert_close(logits, theirs, "feature-masked logits in training")


def test_ctc_task_samples_feature_masks():
    """Wav2Vec2CTCTask's training step draws one feature mask [batch, hidden] per utterance,
    covering the fraction of channels that transformers' `_compute_mask_indices` does with the
    same settings (400 draws each)."""
    overrides = ["wav2vec2.mask_time_prob=0.0", "wav2vec2.mask_feature_prob=0.3"]
    overrides += ["wav2vec2.mask_feature_length=4", "wav2vec2.mask_feature_min_masks=1"]
    cfg = load_config(REPO / "configs" / "wav2vec2_tiny_ctc.yaml", overrides)
    task = Wav2Vec2CTCTask(cfg, CharVocab.from_charset("ab "), n_mels=80)
    batch = task.dummy_batch(2, 1600)
    params = nn.meta.unbox(task.init_variables(jax.random.key(0), batch)["params"])

    class Drawn(Exception):
        """Stops the step once its mask is drawn."""

    @jax.jit  # one trace, then 400 compiled draws (not 400 eager steps)
    def draw(key):
        """The encoder's feature_mask argument [batch, hidden] in the training step of `key`."""
        masks = []

        def grab(next_fun, args, kwargs, context):
            if isinstance(context.module, Wav2Vec2Encoder):
                masks.append(args[4])
                raise Drawn
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(grab), pytest.raises(Drawn):
            task.logits(params, batch, key, train=True)
        (mask,) = masks
        return mask

    ours = np.stack([np.asarray(draw(jax.random.key(seed))) for seed in range(400)])
    assert ours.shape == (400, 2, 32) and (ours[:, 0] != ours[:, 1]).any()
    np.random.seed(0)
    theirs = np.stack([_compute_mask_indices((2, 32), 0.3, 4, None, 1) for _ in range(400)])
    assert abs(ours.mean() - theirs.mean()) / theirs.mean() < 0.05
    print(f"masked channels: jaxseq {ours.mean():.3f}, transformers {theirs.mean():.3f}")
