"""Frame-level audio classification with Wav2Vec2 (classify.encoder=wav2vec2,
classify.level=frame): tiny random Wav2Vec2ForAudioFrameClassification folders become classify
workdirs (`jaxseq convert`) whose task gives transformers' logits on every valid frame of a
padded batch and the masked frame loss recomputed from them, and export back (`jaxseq
export`); a waveform diarization corpus trains through the one train loop (the first logged
loss recomputed independently) and evaluates to frame accuracy and DER recomputed from the
report's own turns; the bad inputs are named."""

import json
import math

import jax
import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import (
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForAudioFrameClassification,
)

from jaxseq import cli
from jaxseq.config import ConfigError, load_config
from jaxseq.convert.hf_wav2vec2_folder import export_hf_wav2vec2_classifier
from jaxseq.convert.hf_whisper import ConversionError
from jaxseq.convert.workdir import convert_to_workdir
from jaxseq.data.labels import LabelSet
from jaxseq.data.pipeline import make_train_iterator
from jaxseq.data.reading import load_dataset_info
from jaxseq.inference.classify import classify
from jaxseq.models.wav2vec2 import Wav2Vec2Dims
from jaxseq.parallel.mesh import make_mesh
from jaxseq.tasks import build_task
from jaxseq.tasks.classify import ClassifyTask
from jaxseq.tasks.ctc import wav2vec2_span_masks
from jaxseq.train.optimizer import make_optimizer
from jaxseq.train.state import create_train_state
from jaxseq.train.trained import load_trained
from tests.conftest import REPO
from tests.test_classify_cli import _reference_der
from tests.wav2vec2_tiny import TINY, assert_close

CONFIG = REPO / "configs" / "wav2vec2_tiny_frame_classify.yaml"
LABELS = {0: "dog", 1: "cat", 2: "bird"}
SAMPLES, SHORT = 1600, 1100  # 79 and 54 frames of TINY's conv stack
# Turns of the padded batch's two items, in samples ([start, end), label); the gaps (500-600,
# and before 100) are unlabeled frames.
TURNS = (
    [[0, 500, "dog"], [600, 1300, "cat"], [1300, 1600, "bird"]],
    [[100, 700, "bird"], [700, 1100, "dog"]],
)
# name: config changes. The base layout (group norm, post-LN, the last hidden state), and the
# large one (layer norm, pre-LN) reading the weighted sum of its layers.
VARIANTS = {
    "base": {},
    "weighted": dict(
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        conv_bias=True,
        use_weighted_layer_sum=True,
    ),
}


def _geometry(conv_kernel, conv_stride) -> tuple[int, int]:
    """(samples per encoder frame, samples one frame sees) of a conv stack: the strides'
    product, and 1 + sum of (kernel_i - 1) times the strides before layer i."""
    field = 1 + sum((k - 1) * math.prod(conv_stride[:i]) for i, k in enumerate(conv_kernel))
    return math.prod(conv_stride), field


def _hf_folder(folder, changes):
    torch.manual_seed(0)
    config = Wav2Vec2Config(
        **TINY, **changes, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}
    )
    model = Wav2Vec2ForAudioFrameClassification(config).eval()
    with torch.no_grad():  # every parameter off its initial value, so a swapped one shows
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        model.classifier.weight.mul_(10.0)  # logits of order 1
    model.save_pretrained(folder)
    Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(folder)
    return model


def _hf_logits(hf, x, lengths):
    """transformers' logits of each item's valid frames, [frames_i, labels]: with layer norm,
    of the padded batch with its attention mask; with group norm (no attention mask in
    transformers' base processors, and GroupNorm statistics over the padding) of each item
    alone."""
    with torch.no_grad():
        if hf.config.feat_extract_norm == "layer":
            mask = (np.arange(x.shape[1])[None, :] < lengths[:, None]).astype(np.int64)
            out = hf(torch.from_numpy(x), attention_mask=torch.from_numpy(mask)).logits.numpy()
            return [out[i, : hf._get_feat_extract_output_lengths(n)] for i, n in enumerate(lengths)]
        return [
            hf(torch.from_numpy(x[i : i + 1, :n])).logits[0].numpy() for i, n in enumerate(lengths)
        ]


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _frame_loss(logits, per_sample, lengths, stride, field):
    """Mean cross-entropy over the labeled valid frames, by hand: frame k of an item of n
    samples exists when k * stride + field <= n and takes the label of the sample at its
    receptive field's centre, k * stride + field // 2 (-1: unlabeled, not scored).
    Returns (loss, frames scored)."""
    nll, count = 0.0, 0
    for i, n in enumerate(lengths):
        frames = (int(n) - field) // stride + 1
        y = per_sample[i, np.arange(frames) * stride + field // 2]  # [frames]
        keep = y >= 0
        logp = _log_softmax(logits[i][:frames])
        nll -= logp[keep, y[keep]].sum()
        count += int(keep.sum())
    return nll / count, count


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_convert_and_export_match_transformers(name, tmp_path):
    hf = _hf_folder(tmp_path / "hf", VARIANTS[name])
    cli.main(["convert", "--hf", str(tmp_path / "hf"), "--workdir", str(tmp_path / "wd")])
    trained = load_trained(tmp_path / "wd")
    cfg, task = trained.cfg, trained.task
    assert (cfg.classify.encoder, cfg.classify.level, cfg.model.frontend) == (
        "wav2vec2",
        "frame",
        "waveform",
    )
    assert task.tokenizer.names == ("dog", "cat", "bird") and task.tokenizer.level == "frame"
    assert cfg.data.max_label_length >= max(cfg.data.buckets)  # one label per sample
    stride, field = _geometry(TINY["conv_kernel"], TINY["conv_stride"])
    assert (task.stride, task.frame_offset) == (stride, field // 2) == (20, 20)

    # Logits of every valid frame of a padded batch, and the masked frame loss.
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, SAMPLES)).astype(np.float32)
    x[1, SHORT:] = 0.0
    lengths = np.array([SAMPLES, SHORT], np.int32)
    per_sample = np.zeros((2, SAMPLES), np.int32)  # the pipeline's zero label padding
    for i, (n, turns) in enumerate(zip(lengths, TURNS, strict=True)):
        record = {"id": f"item{i}", "num_frames": int(n), "segments": turns}
        per_sample[i, :n] = task.tokenizer.encode_record(record)
    batch = {
        "features": x,
        "feature_lengths": lengths,
        "labels": per_sample,
        "label_lengths": lengths,
    }
    theirs = _hf_logits(hf, x, lengths)
    ours, frames = task.logits(trained.params, batch)
    assert np.asarray(frames).tolist() == [79, 54] and ours.shape == (2, 79, 3)
    assert_close(ours[0], theirs[0], f"{name} logits, full item", tol=1e-4)
    assert_close(ours[1, :54], theirs[1], f"{name} logits, padded item", tol=1e-4)
    loss, metrics = task.loss_fn(trained.params, batch, jax.random.PRNGKey(0), train=False)
    expected, scored = _frame_loss(theirs, per_sample, lengths, stride, field)
    assert scored == 79 + 54 - 5 - 4  # the gap's 5 frames and the 4 before item 1's first turn
    assert float(metrics["tokens"]) == scored
    assert_close(loss, expected, f"{name} masked frame loss", tol=1e-4)

    # `jaxseq export`: a folder transformers loads, with the same logits and labels.
    cli.main(["export", "--workdir", str(tmp_path / "wd"), "--out", str(tmp_path / "out")])
    again = Wav2Vec2ForAudioFrameClassification.from_pretrained(tmp_path / "out").eval()
    assert again.config.id2label == LABELS
    assert again.config.architectures == ["Wav2Vec2ForAudioFrameClassification"]
    assert again.config.use_weighted_layer_sum == hf.config.use_weighted_layer_sum
    for i, logits in enumerate(_hf_logits(again, x, lengths)):
        assert_close(logits, theirs[i], f"{name} exported logits, item {i}", tol=1e-4)


@pytest.fixture(scope="module")
def waveform_turns(diarization_corpus, tmp_path_factory):
    """The diarization corpus's recordings prepared as waveform records by the config."""
    data = tmp_path_factory.mktemp("w2v-turns") / "wave"
    source = f"synth:{diarization_corpus / 'audio'}"
    cli.main(
        ["prepare", "--config", str(CONFIG), "--source", source, "--out", str(data)]
        + ["--workers", "1"]
    )
    return data


def test_trains_on_turns_and_scores_frames(diarization_corpus, waveform_turns, tmp_path):
    data, run = waveform_turns, tmp_path / "run"
    config = ["--config", str(CONFIG)]
    # One bucket as long as the longest recording (2.5 s): one train and one eval step.
    overrides = [f"data.dataset={data}", "data.buckets=[40000]", "data.eval_split=''"]
    overrides += ["train.num_steps=2", "train.log_every=1", "train.checkpoint_every=2"]
    cli.main(["train", *config, "--workdir", str(run), *overrides])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = next(r for r in rows if r["split"] == "train" and r["step"] == 1)

    # The first loss, recomputed: the seed's fresh model on the pipeline's first batch, with
    # the step's time mask, dropout and LayerDrop; the targets by hand from the samples'.
    cfg = load_config(CONFIG, overrides)
    stride, field = _geometry(cfg.wav2vec2.conv_kernel, cfg.wav2vec2.conv_stride)
    info = load_dataset_info(data, "train")
    task = build_task(cfg, info)
    tx = make_optimizer(cfg.optim, cfg.train.num_steps)
    state = create_train_state(
        task, tx, task.dummy_batch(1, cfg.data.buckets[0]), make_mesh(cfg.mesh), cfg.train.seed
    )
    labels = task.label_lengths(data, info, "train")
    it = make_train_iterator(
        data, "train", cfg.data, task.tokenizer, seed=cfg.data.shuffle_seed, label_lengths=labels
    )
    batch = next(it)
    rng = jax.random.fold_in(state.rng, 0)
    time_mask, feature_mask = wav2vec2_span_masks(
        task.dims, rng, batch["features"], batch["feature_lengths"]
    )
    logits, out = task.model.apply(
        {"params": jax.device_get(state.params)},
        batch["features"],
        batch["feature_lengths"],
        deterministic=False,
        time_mask=time_mask,
        feature_mask=feature_mask,
        rngs={"dropout": jax.random.fold_in(rng, 2)},
    )
    lengths = batch["feature_lengths"]
    assert np.asarray(out.lengths).tolist() == ((lengths - field) // stride + 1).tolist()
    expected, scored = _frame_loss(np.asarray(logits), batch["labels"], lengths, stride, field)
    assert logged["utterances"] == 8.0 and logged["tokens"] == scored
    np.testing.assert_allclose(logged["loss"], expected, rtol=2e-5)

    # Evaluation: each item's reference turns are the manifest's, sampled at the frames'
    # centres; frame accuracy and DER recomputed from the report's own turns.
    path = run / "eval" / "test.json"
    cli.main(["evaluate", "--workdir", str(run), "--split", "test", "--report", str(path)])
    report = json.loads(path.read_text())
    items = report["items"]
    test_dir = diarization_corpus / "audio" / "test"
    manifest = [json.loads(x) for x in (test_dir / "manifest.jsonl").open()]
    assert len(items) == len(manifest) == 8
    seconds = stride / 16000  # per encoder frame
    correct = frames = 0
    for r, m in zip(items, manifest, strict=True):
        audio = sf.info(test_dir / m["audio"])
        assert audio.samplerate == 16000
        centres = np.arange((audio.frames - field) // stride + 1) * stride + field // 2
        ref = np.full(len(centres), -1)
        for i, s in enumerate(m["segments"]):
            ref[(round(s["start"] * 16000) <= centres) & (centres < round(s["end"] * 16000))] = i
        hyp = [
            next((name for a, b, name in r["predicted"] if a < (k + 0.5) * seconds < b), None)
            for k in range(len(centres))
        ]
        names = [s["label"] for s in m["segments"]]
        assert [name for *_, name in r["reference"]] == names
        assert hyp[-1] is not None and r["predicted"][-1][1] == pytest.approx(len(hyp) * seconds)
        scored = ref >= 0
        assert r["frames"] == int(scored.sum())
        r_correct = sum(hyp[k] == names[ref[k]] for k in np.flatnonzero(scored))
        assert r["correct"] == r_correct
        correct, frames = correct + r_correct, frames + r["frames"]
    assert report["frame_accuracy"] == pytest.approx(correct / frames)
    assert report["der"] == pytest.approx(_reference_der(items))

    # `classify` (frames=True): turns on the 20 ms grid up to the last frame.
    wav = test_dir / manifest[0]["audio"]
    (result,) = classify(run, [wav], frames=True)
    n = sf.info(wav).frames
    assert result["segments"][0][0] == 0.0
    assert result["segments"][-1][1] == pytest.approx(((n - field) // stride + 1) * seconds)


def test_bad_inputs_are_named(tmp_path):
    # transformers has no HubertForAudioFrameClassification: neither the name nor a HuBERT
    # config under Wav2Vec2's frame head converts.
    hubert = {**Wav2Vec2Config(**TINY).to_dict(), "model_type": "hubert"}
    for i, architecture in enumerate(
        ["HubertForAudioFrameClassification", "Wav2Vec2ForAudioFrameClassification"]
    ):
        folder = tmp_path / f"hf{i}"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({**hubert, "architectures": [architecture]}))
        with pytest.raises(
            ConversionError, match=rf"hf{i}/config.json: .*transformers has no Hubert"
        ):
            convert_to_workdir(folder, tmp_path / f"wd{i}")
    # ... nor exports (a HuBERT encoder trained with a frame head).
    dims = Wav2Vec2Dims(**TINY, num_labels=2)
    with pytest.raises(ConversionError, match="no HubertForAudioFrameClassification"):
        export_hf_wav2vec2_classifier({}, dims, "hubert", ["a", "b"], tmp_path / "o", head="frame")
    # Frame labels are single-label, one per sample of the largest bucket.
    names = LabelSet(["a", "b"], "frame")
    for overrides, key in [
        (["classify.multi_label=true"], "classify.multi_label"),
        (["data.max_label_length=100"], "data.max_label_length"),
    ]:
        with pytest.raises(ConfigError, match=key):
            ClassifyTask(load_config(CONFIG, overrides), names, 0)
