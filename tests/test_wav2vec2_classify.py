"""Audio classification with Wav2Vec2/HuBERT (model.family=classify, classify.encoder=wav2vec2):
tiny random Wav2Vec2ForSequenceClassification / HubertForSequenceClassification folders become
classify workdirs (`jaxseq convert`) whose task gives transformers' logits and loss on padded
batches and whose `jaxseq classify` gives its label, and export back (`jaxseq export`); a waveform
speaker corpus trains through the one train loop from a converted Wav2Vec2ForPreTraining
encoder (the first logged loss recomputed independently) and evaluates; the config refuses the
combinations it does not support."""

import json

import jax
import numpy as np
import optax
import pytest
import soundfile as sf
import torch
from transformers import (
    HubertConfig,
    HubertForSequenceClassification,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForPreTraining,
    Wav2Vec2ForSequenceClassification,
)

from jaxseq import cli
from jaxseq.config import load_config
from jaxseq.convert.workdir import convert_to_workdir
from jaxseq.data.pipeline import make_train_iterator
from jaxseq.data.reading import load_dataset_info
from jaxseq.errors import ConfigError
from jaxseq.models.wav2vec2_features import sample_span_mask
from jaxseq.parallel.mesh import make_mesh
from jaxseq.tasks import build_task
from jaxseq.train.optimizer import make_optimizer
from jaxseq.train.state import create_train_state
from jaxseq.train.trained import load_trained
from tests.conftest import REPO
from tests.wav2vec2_tiny import TINY, assert_close

CONFIG = REPO / "configs" / "wav2vec2_tiny_classify.yaml"
LABELS = {0: "dog", 1: "cat", 2: "bird"}
SAMPLES, SHORT = 1600, 1100  # 79 and 54 frames of TINY's conv stack
# name: (config class, model class, config changes). The wav2vec2 base layout (group norm:
# transformers' base processors send no attention mask) and a large-layout HuBERT (layer norm,
# pre-LN) reading the weighted sum of its layers.
VARIANTS = {
    "wav2vec2": (Wav2Vec2Config, Wav2Vec2ForSequenceClassification, dict(classifier_proj_size=16)),
    "hubert": (
        HubertConfig,
        HubertForSequenceClassification,
        dict(
            feat_extract_norm="layer",
            do_stable_layer_norm=True,
            conv_bias=True,
            use_weighted_layer_sum=True,
            classifier_proj_size=24,
        ),
    ),
}


def _hf_folder(folder, name):
    config_cls, model_cls, changes = VARIANTS[name]
    torch.manual_seed(0)
    config = config_cls(
        **TINY, **changes, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}
    )
    model = model_cls(config).eval()
    with torch.no_grad():  # every parameter off its initial value, so a swapped one shows
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        model.classifier.weight.mul_(10.0)  # logits of order 1: a clear argmax
    model.save_pretrained(folder)
    Wav2Vec2FeatureExtractor(
        return_attention_mask=changes.get("feat_extract_norm") == "layer"
    ).save_pretrained(folder)
    return model


def _padded_batch(seed: int):
    """Two normalized waveforms, the second zero-padded: (features [2, SAMPLES], lengths)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, SAMPLES)).astype(np.float32)
    x[1, SHORT:] = 0.0
    return x, np.array([SAMPLES, SHORT], np.int32)


def _reference(hf, x, lengths, labels, layer_norm: bool):
    """transformers' logits [2, labels] and mean cross-entropy of the padded batch: with layer
    norm the batch with its attention mask; with group norm (no attention mask in
    transformers' base processors, and GroupNorm statistics over the padding) each item alone."""
    with torch.no_grad():
        if layer_norm:
            mask = (np.arange(SAMPLES)[None, :] < lengths[:, None]).astype(np.int64)
            out = hf(
                torch.from_numpy(x),
                attention_mask=torch.from_numpy(mask),
                labels=torch.from_numpy(labels),
            )
            return out.logits.numpy(), float(out.loss)
        items = [
            hf(torch.from_numpy(x[i : i + 1, :n]), labels=torch.from_numpy(labels[i : i + 1]))
            for i, n in enumerate(lengths)
        ]
        logits = np.concatenate([o.logits.numpy() for o in items])
        return logits, float(np.mean([float(o.loss) for o in items]))


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_convert_classify_and_export_match_transformers(name, tmp_path, capsys):
    hf = _hf_folder(tmp_path / "hf", name)
    cli.main(["convert", "--hf", str(tmp_path / "hf"), "--workdir", str(tmp_path / "wd")])
    trained = load_trained(tmp_path / "wd")
    cfg, task = trained.cfg, trained.task
    assert (cfg.model.family, cfg.classify.encoder, cfg.model.frontend) == (
        "classify",
        "wav2vec2",
        "waveform",
    )
    assert cfg.wav2vec2.model_type == name and task.tokenizer.names == ("dog", "cat", "bird")
    assert task.min_frames == 40  # TINY's receptive field: kernels (10, 3, 3), strides (5, 2, 2)

    # Logits and the evaluation loss on a padded batch.
    x, lengths = _padded_batch(1)
    labels = np.array([2, 0], np.int64)
    layer_norm = name == "hubert"
    theirs, hf_loss = _reference(hf, x, lengths, labels, layer_norm)
    batch = {
        "features": x,
        "feature_lengths": lengths,
        "labels": labels[:, None].astype(np.int32),
        "label_lengths": np.ones(2, np.int32),
    }
    ours, frames = task.logits(trained.params, batch)
    assert np.asarray(frames).tolist() == [79, 54]
    assert_close(ours, theirs, f"{name} padded logits", tol=1e-4)
    loss, metrics = task.loss_fn(trained.params, batch, jax.random.PRNGKey(0), train=False)
    assert_close(loss, hf_loss, f"{name} cross-entropy loss", tol=1e-4)
    assert float(metrics["tokens"]) == 2.0

    # `jaxseq classify` on a WAV file: transformers' label (through its feature extractor).
    wav = tmp_path / "clip.wav"
    sf.write(wav, 0.1 * np.random.default_rng(2).standard_normal(8000), 16000)
    audio, _ = sf.read(wav, dtype="float32")
    inputs = Wav2Vec2FeatureExtractor.from_pretrained(tmp_path / "hf")(
        audio, sampling_rate=16000, return_tensors="pt"
    )
    with torch.no_grad():
        probs = torch.softmax(hf(**inputs).logits[0], -1).numpy()
    capsys.readouterr()
    cli.main(["classify", "--workdir", str(tmp_path / "wd"), str(wav)])
    path, label, confidence = capsys.readouterr().out.strip().split("\t")
    assert (path, label) == (str(wav), LABELS[int(probs.argmax())])
    assert float(confidence) == pytest.approx(probs.max(), abs=2e-4)

    # `jaxseq export`: a folder transformers loads, with the same logits and labels.
    cli.main(["export", "--workdir", str(tmp_path / "wd"), "--out", str(tmp_path / "out")])
    again = VARIANTS[name][1].from_pretrained(tmp_path / "out").eval()
    assert type(again) is type(hf) and again.config.id2label == LABELS
    assert again.config.use_weighted_layer_sum == hf.config.use_weighted_layer_sum
    exported, _ = _reference(again, x, lengths, labels, layer_norm)
    assert_close(exported, theirs, f"{name} exported logits", tol=1e-4)
    extractor = Wav2Vec2FeatureExtractor.from_pretrained(tmp_path / "out")
    assert extractor.do_normalize and extractor.return_attention_mask == layer_norm


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["model.frontend=logmel", "prepare.frontend.kind=logmel"], "classify.encoder"),
        (["classify.encoder=transformer"], "classify.encoder"),
        (["classify.pooling=cls"], "classify.pooling"),
        (["prepare.frontend.kind=logmel"], "prepare.frontend.kind"),
    ],
)
def test_config_refuses_unsupported_combinations(overrides, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        load_config(CONFIG, overrides)


# The encoder of configs/wav2vec2_tiny_classify.yaml, as transformers names it: a
# Wav2Vec2ForPreTraining of these sizes converts into the ssl workdir `train.init_from` reads.
ENCODER = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(16,) * 7,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
    hidden_dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    final_dropout=0.0,
    layerdrop=0.1,
    mask_time_prob=0.05,
    mask_time_length=5,
)
QUANTIZER = dict(num_codevector_groups=2, num_codevectors_per_group=4, codevector_dim=8)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """An ssl workdir converted from a random Wav2Vec2ForPreTraining of the config's sizes."""
    root = tmp_path_factory.mktemp("w2v-ssl")
    torch.manual_seed(1)
    hf = Wav2Vec2ForPreTraining(Wav2Vec2Config(**ENCODER, **QUANTIZER))
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    hf.save_pretrained(root / "hf")
    Wav2Vec2FeatureExtractor().save_pretrained(root / "hf")
    return convert_to_workdir(root / "hf", root / "wd")


def test_trains_from_a_pretrained_encoder_and_evaluates(
    speaker_corpus, pretrained, tmp_path, capsys
):
    data, run = tmp_path / "wave", tmp_path / "run"
    config = ["--config", str(CONFIG)]
    source = f"synth:{speaker_corpus / 'audio'}"
    cli.main(["prepare", *config, "--source", source, "--out", str(data), "--workers", "1"])
    assert json.loads((data / "dataset.json").read_text())["frontend"]["kind"] == "waveform"
    # One bucket as long as the longest clip (1.1 s): one train and one eval step to compile.
    overrides = [f"data.dataset={data}", f"train.init_from={pretrained}", "data.buckets=[24000]"]
    overrides += ["train.num_steps=2", "train.log_every=1", "data.eval_split=''"]
    overrides += ["train.checkpoint_every=2"]
    cli.main(["train", *config, "--workdir", str(run), *overrides])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = next(r for r in rows if r["split"] == "train" and r["step"] == 1)

    # The first loss, recomputed: the ssl workdir's encoder and the seed's fresh head, on the
    # pipeline's first batch, with the step's time mask, dropout and LayerDrop.
    cfg = load_config(CONFIG, overrides)
    info = load_dataset_info(data, "train")
    task = build_task(cfg, info)
    tx = make_optimizer(cfg.optim, cfg.train.num_steps)
    state = create_train_state(
        task, tx, task.dummy_batch(1, cfg.data.buckets[0]), make_mesh(cfg.mesh), cfg.train.seed
    )
    params = dict(jax.device_get(state.params))
    assert set(params) == {"encoder", "projector", "classifier"}
    params["encoder"] = load_trained(pretrained).params["encoder"]
    labels = task.label_lengths(data, info, "train")
    it = make_train_iterator(
        data, "train", cfg.data, task.tokenizer, seed=cfg.data.shuffle_seed, label_lengths=labels
    )
    batch = next(it)
    rng = jax.random.fold_in(state.rng, 0)
    d = task.dims
    time_mask = sample_span_mask(
        jax.random.fold_in(rng, 1),
        d.output_lengths(batch["feature_lengths"]),
        int(d.output_lengths(np.int32(batch["features"].shape[1]))),
        d.mask_time_prob,
        d.mask_time_length,
        d.mask_time_min_masks,
    )
    logits, _ = task.model.apply(
        {"params": params},
        batch["features"],
        batch["feature_lengths"],
        deterministic=False,
        time_mask=time_mask,
        rngs={"dropout": jax.random.fold_in(rng, 2)},
    )
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"][:, 0])
    assert logged["tokens"] == logged["utterances"] == 8.0
    np.testing.assert_allclose(logged["loss"], float(np.mean(ce)), rtol=2e-5)

    capsys.readouterr()
    path = run / "eval" / "test.json"
    cli.main(["evaluate", "--workdir", str(run), "--split", "test", "--report", str(path)])
    report = json.loads(path.read_text())
    assert report["num_utterances"] == 8 and 0.0 <= report["accuracy"] <= 1.0
    assert "accuracy" in capsys.readouterr().out
