"""`jaxseq convert` and `jaxseq export` of transformers Wav2Vec2ForCTC / HubertForCTC folders:
a tiny random checkpoint saved with save_pretrained (+ its processor's vocab.json) becomes a
workdir whose model gives transformers' logits and greedy transcript, and exports back into a
folder that transformers loads with the same logits and tokenizer."""

import json

import jax
import numpy as np
import pytest
import torch
from transformers import (
    HubertConfig,
    HubertForCTC,
    Wav2Vec2Config,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC,
    Wav2Vec2ForPreTraining,
    Wav2Vec2Processor,
)

from jaxseq import cli
from jaxseq.convert.hf_wav2vec2 import (
    wav2vec2_config_from_hf,
    wav2vec2_params_from_hf,
    wav2vec2_pretraining_config_from_hf,
)
from jaxseq.convert.hf_whisper import ConversionError
from jaxseq.convert.workdir import convert_to_workdir
from jaxseq.models.wav2vec2 import Wav2Vec2Dims
from jaxseq.models.wav2vec2_pretraining import Wav2Vec2PreTrainingDims
from jaxseq.train.trained import load_trained
from tests.wav2vec2_tiny import TINY

LETTERS = ["|", "a", "e", "f", "i", "n", "o", "r", "t", "u", "v", "w", "x", "'"]
# name: (config class, model class, tokens in id order, config changes). HuBERT's vocabulary
# has HF's fine-tuning-blog layout, the blank "[PAD]" last: jaxseq puts it first.
VARIANTS = {
    "wav2vec2": (Wav2Vec2Config, Wav2Vec2ForCTC, ["<pad>", "<s>", "</s>", "<unk>", *LETTERS], {}),
    "hubert": (
        HubertConfig,
        HubertForCTC,
        [*LETTERS, "[UNK]", "[PAD]"],
        dict(feat_proj_layer_norm=False, conv_bias=True),
    ),
}


def _hf_folder(folder, name):
    config_cls, model_cls, tokens, changes = VARIANTS[name]
    pad = tokens.index("<pad>" if "<pad>" in tokens else "[PAD]")
    torch.manual_seed(0)
    config = config_cls(**TINY, **changes, vocab_size=len(tokens), pad_token_id=pad)
    model = model_cls(config).eval()
    with torch.no_grad():  # every parameter off its initial value, so a swapped one shows
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    unk, pad_token = ("<unk>", "<pad>") if "<pad>" in tokens else ("[UNK]", "[PAD]")
    tokenizer = Wav2Vec2CTCTokenizer(folder / "vocab.json", unk_token=unk, pad_token=pad_token)
    Wav2Vec2Processor(Wav2Vec2FeatureExtractor(), tokenizer).save_pretrained(folder)
    return model, tokens, pad


def _speechlike(seed: int = 0, samples: int = 3200) -> np.ndarray:
    """A normalized waveform [1, samples] (what the feature extractor hands the model)."""
    wave = np.random.default_rng(seed).standard_normal(samples).astype(np.float32)
    return Wav2Vec2FeatureExtractor()(wave, sampling_rate=16000, return_tensors="np").input_values


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_convert_and_export_round_trip(name, tmp_path, capsys):
    hf, tokens, pad = _hf_folder(tmp_path / "hf", name)
    cli.main(["convert", "--hf", str(tmp_path / "hf"), "--workdir", str(tmp_path / "wd")])
    trained = load_trained(tmp_path / "wd")
    cfg, task = trained.cfg, trained.task
    assert (cfg.model.frontend, cfg.wav2vec2.model_type) == ("waveform", name)
    assert cfg.data.normalize_waveform and cfg.prepare.frontend.kind == "waveform"
    x = _speechlike()
    with torch.no_grad():
        theirs = hf(torch.from_numpy(x)).logits.numpy()  # [1, frames, vocab], HF's id order
    batch = {"features": x, "feature_lengths": np.array([x.shape[1]], np.int32)}
    ours, lengths = task.logits(trained.params, batch, None, train=False)
    order = [pad] + [i for i in range(len(tokens)) if i != pad]  # jaxseq id i = HF id order[i]
    np.testing.assert_allclose(np.asarray(ours), theirs[:, :, order], atol=1e-4, rtol=1e-4)
    assert int(lengths[0]) == theirs.shape[1]

    # The greedy transcript, through the task's decoding, is the HF tokenizer's.
    processor = Wav2Vec2Processor.from_pretrained(tmp_path / "hf")
    reference = processor.batch_decode(theirs.argmax(-1))[0]
    outputs = task.predict_fn(trained.params, batch, decoder="greedy", beam_size=1)
    ours_text = task.decode([np.asarray(o) for o in outputs], decoder="greedy", beam_size=1)[0]
    assert reference.strip() and ours_text == reference

    cli.main(["export", "--workdir", str(tmp_path / "wd"), "--out", str(tmp_path / "out")])
    assert "exported" in capsys.readouterr().out
    model_cls = VARIANTS[name][1]
    again = model_cls.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        exported = again(torch.from_numpy(x)).logits.numpy()
    np.testing.assert_allclose(exported, theirs[:, :, order], atol=1e-4, rtol=1e-4)
    processor = Wav2Vec2Processor.from_pretrained(tmp_path / "out")
    assert processor.batch_decode(exported.argmax(-1))[0] == reference
    assert processor.feature_extractor.do_normalize


def test_convert_refuses_other_heads(tmp_path):
    """An x-vector head is not supported: the error names the folder and what is."""
    folder = tmp_path / "cls"
    config = Wav2Vec2Config(**TINY, architectures=["Wav2Vec2ForXVector"])
    folder.mkdir()
    (folder / "config.json").write_text(config.to_json_string())
    with pytest.raises(
        ConversionError, match=r"cls/config.json: .*Wav2Vec2ForCTC, HubertForCTC and Wav2Vec2ForPre"
    ):
        convert_to_workdir(folder, tmp_path / "wd")


def test_pretraining_folder_converts_to_an_ssl_workdir_and_back(tmp_path, capsys):
    """A Wav2Vec2ForPreTraining folder becomes an ssl workdir (ssl.objective=wav2vec2, the
    config's quantizer and loss fields as its ssl section) holding exactly the mapped weights;
    `jaxseq export` gives back a folder that transformers loads with every tensor equal and
    the same projected and quantized states."""
    quantizer = dict(
        num_codevector_groups=2,
        num_codevectors_per_group=4,
        codevector_dim=12,
        proj_codevector_dim=10,
        num_negatives=6,
        contrastive_logits_temperature=0.2,
        diversity_loss_weight=0.3,
    )
    torch.manual_seed(0)
    config = Wav2Vec2Config(**TINY, **quantizer, architectures=["Wav2Vec2ForPreTraining"])
    hf = Wav2Vec2ForPreTraining(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    hf.save_pretrained(tmp_path / "hf")
    Wav2Vec2FeatureExtractor(do_normalize=False).save_pretrained(tmp_path / "hf")
    cli.main(["convert", "--hf", str(tmp_path / "hf"), "--workdir", str(tmp_path / "wd")])
    trained = load_trained(tmp_path / "wd")
    cfg = trained.cfg
    assert (cfg.model.family, cfg.ssl.objective) == ("ssl", "wav2vec2")
    assert {k: getattr(cfg.ssl, k) for k in quantizer} == quantizer
    assert not cfg.data.normalize_waveform  # the feature extractor's do_normalize
    dims = Wav2Vec2Dims(**wav2vec2_config_from_hf(config))
    objective = Wav2Vec2PreTrainingDims(**wav2vec2_pretraining_config_from_hf(config))
    mapped = wav2vec2_params_from_hf(hf.state_dict(), dims, "contrastive", "wav2vec2", objective)
    ours = jax.tree_util.tree_leaves_with_path(jax.device_get(trained.params))
    assert len(ours) == len(jax.tree.leaves(mapped))
    for (path, a), b in zip(ours, jax.tree.leaves(mapped), strict=True):
        assert np.array_equal(a, b), jax.tree_util.keystr(path)

    cli.main(["export", "--workdir", str(tmp_path / "wd"), "--out", str(tmp_path / "out")])
    assert "exported" in capsys.readouterr().out
    again = Wav2Vec2ForPreTraining.from_pretrained(tmp_path / "out").eval()
    assert {k: getattr(again.config, k) for k in quantizer} == quantizer
    theirs, back = hf.state_dict(), again.state_dict()
    assert sorted(back) == sorted(theirs)
    for name, tensor in theirs.items():
        assert torch.equal(back[name], tensor), name
    x = torch.from_numpy(_speechlike())
    with torch.no_grad():
        a, b = hf(x), again(x)
    assert torch.equal(a.projected_states, b.projected_states)
    assert torch.equal(a.projected_quantized_states, b.projected_quantized_states)
    assert not Wav2Vec2FeatureExtractor.from_pretrained(tmp_path / "out").do_normalize
