"""Classification heads, losses, label sets and metrics against independent references:
float64 NumPy (pooling), torch (cross-entropies), brute-force speaker mapping (DER)."""

from __future__ import annotations

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxseq.config import Config, ConfigError, load_config
from jaxseq.data.labels import LabelSet
from jaxseq.errors import JaxseqError
from jaxseq.evaluation.classify import diarization_error_rate, runs, score
from jaxseq.models.classifier import EncoderClassifier
from jaxseq.tasks.classify import ClassifyTask, frame_targets

N_MELS = 16
NAMES = ("alto", "bass", "tenor")


def _cfg(**classify) -> Config:
    base = {
        "encoder": "transformer",
        "pooling": "mean",
        **classify,
    }
    overrides = [f"classify.{k}={v}" for k, v in base.items()]
    model = ["model.family=classify", "model.d_model=16", "model.num_heads=2"]
    model += ["model.num_layers=1", "model.mlp_dim=32", "model.dropout=0.0"]
    data = ["data.buckets=[32]", "data.max_label_length=32"]
    return load_config(None, model + data + overrides)


def _batch(rng: np.random.Generator, lengths, label_rows):
    b, frames = len(lengths), 32
    features = rng.normal(size=(b, frames, N_MELS)).astype(np.float32)
    labels = np.zeros((b, 32), np.int32)
    label_lengths = np.zeros((b,), np.int32)
    for r, row in enumerate(label_rows):
        labels[r, : len(row)] = row
        label_lengths[r] = len(row)
    return {
        "features": features,
        "feature_lengths": np.asarray(lengths, np.int32),
        "labels": labels,
        "label_lengths": label_lengths,
    }


@functools.cache
def _task(**classify) -> tuple[ClassifyTask, dict]:
    """The task of `_cfg(**classify)` and its initial parameters (one per configuration: the
    tests only read them)."""
    cfg = _cfg(**classify)
    task = ClassifyTask(cfg, LabelSet(NAMES, cfg.classify.level), N_MELS)
    batch = _batch(np.random.default_rng(0), [32, 20, 9], [[0], [2], [1]])
    params = jax.jit(lambda: task.init_variables(jax.random.PRNGKey(1), batch))()
    return task, jax.tree.map(np.asarray, nn_unbox(params)["params"])


@functools.cache
def _logits(task: ClassifyTask):
    """`task.logits` (evaluation), compiled once per task and batch shape."""
    return jax.jit(task.logits)


@functools.cache
def _loss_and_logits(task: ClassifyTask):
    """(`task.loss_fn` with train=False, `task.logits`) as one program: one compile per task
    and batch shape."""

    @jax.jit
    def run(params, batch, rng):
        return task.loss_fn(params, batch, rng, train=False), task.logits(params, batch)

    return run


def nn_unbox(tree):
    import flax.linen as nn

    return nn.meta.unbox(tree)


def test_sequence_head_mean_pools_valid_frames_only():
    task, params = _task()
    rng = np.random.default_rng(2)
    batch = _batch(rng, [32, 20, 9], [[0], [2], [1]])
    logits, enc_lengths = _logits(task)(params, batch)
    # Garbage in the padded frames changes nothing.
    noisy = {**batch, "features": batch["features"].copy()}
    for r, n in enumerate(batch["feature_lengths"]):
        noisy["features"][r, n:] = 1e3 * rng.normal(size=(32 - n, N_MELS))
    np.testing.assert_allclose(_logits(task)(params, noisy)[0], logits, atol=1e-5)
    # The head is linear, so mean-then-linear equals the float64 mean of the frame head's
    # logits (same parameters) over the valid encoder frames.
    model = EncoderClassifier(task.cfg.model, len(NAMES), "frame")
    frames, _ = jax.jit(model.apply)(
        {"params": params}, batch["features"], batch["feature_lengths"]
    )
    frames = np.asarray(frames, np.float64)  # [b, enc_frames, labels]
    for r, n in enumerate(np.asarray(enc_lengths)):
        np.testing.assert_allclose(logits[r], frames[r, :n].mean(axis=0), atol=1e-5)
    assert list(enc_lengths) == [8, 5, 3]  # ceil(n / 4)


def test_sequence_loss_matches_torch_and_skips_filler_rows():
    task, params = _task()
    batch = _batch(np.random.default_rng(3), [32, 20, 9], [[0], [2], [1]])
    batch["valid"] = np.array([True, True, False])
    (loss, metrics), (logits, _) = _loss_and_logits(task)(params, batch, jax.random.PRNGKey(0))
    want = torch.nn.functional.cross_entropy(
        torch.tensor(np.asarray(logits)[:2], dtype=torch.float64), torch.tensor([0, 2])
    )
    assert abs(float(loss) - float(want)) < 1e-5
    assert float(metrics["tokens"]) == 2 and float(metrics["utterances"]) == 2
    correct = np.argmax(np.asarray(logits)[:2], -1) == np.array([0, 2])
    assert float(metrics["correct"]) == float(np.sum(correct))


def test_multi_label_loss_matches_torch_bce():
    task, params = _task(multi_label=True)
    batch = _batch(np.random.default_rng(4), [32, 20, 9], [[0, 2], [1], [2, 1, 0]])
    (loss, metrics), (logits, _) = _loss_and_logits(task)(params, batch, jax.random.PRNGKey(0))
    hot = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 1]], dtype=torch.float64)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor(np.asarray(logits), dtype=torch.float64), hot, reduction="sum"
    )
    assert abs(float(loss) - float(bce) / 3) < 1e-5
    assert float(metrics["tokens"]) == 3


def test_frame_loss_skips_padded_and_unlabeled_frames():
    task, params = _task(level="frame")
    rng = np.random.default_rng(5)
    rows = [rng.integers(-1, 3, size=32), rng.integers(-1, 3, size=20), rng.integers(0, 3, size=9)]
    batch = _batch(rng, [32, 20, 9], rows)
    run = _loss_and_logits(task)
    (loss, metrics), (logits, enc_lengths) = run(params, batch, jax.random.PRNGKey(0))
    picked_logits, picked_targets = [], []
    for r, n in enumerate(np.asarray(enc_lengths)):
        for k in range(n):
            target = rows[r][4 * k]  # encoder frame k is centred on input frame 4k
            if target >= 0:
                picked_logits.append(np.asarray(logits)[r, k])
                picked_targets.append(target)
    want = torch.nn.functional.cross_entropy(
        torch.tensor(np.array(picked_logits), dtype=torch.float64), torch.tensor(picked_targets)
    )
    assert float(metrics["tokens"]) == len(picked_targets)
    assert abs(float(loss) - float(want)) < 1e-5
    # Garbage beyond each item's frames changes neither the loss nor its frame count.
    noisy = {**batch, "features": batch["features"].copy(), "labels": batch["labels"].copy()}
    for r, n in enumerate(batch["feature_lengths"]):
        noisy["features"][r, n:] = 50.0
        noisy["labels"][r, n:] = 2
    (loss2, metrics2), _ = run(params, noisy, jax.random.PRNGKey(0))
    assert abs(float(loss2) - float(loss)) < 1e-5 and metrics2["tokens"] == metrics["tokens"]


def test_frame_targets_pad_with_unlabeled():
    labels = jnp.arange(10)[None]  # [1, 10]
    np.testing.assert_array_equal(frame_targets(labels, 4, 3), [[0, 4, 8]])
    np.testing.assert_array_equal(frame_targets(labels, 4, 4), [[0, 4, 8, -1]])


def test_label_set_targets_and_errors(tmp_path):
    labels = LabelSet(NAMES)
    rec = {"id": "u1", "label": "tenor", "num_frames": 5}
    np.testing.assert_array_equal(labels.encode_record(rec), [2])
    np.testing.assert_array_equal(labels.encode_record({**rec, "label": ["bass", "alto"]}), [1, 0])
    with pytest.raises(JaxseqError, match=r"item 'u1' has label 'soprano'.*not one of"):
        labels.encode_record({**rec, "label": "soprano"})
    with pytest.raises(JaxseqError, match="item 'u1' has no label"):
        labels.encode_record({**rec, "label": ""})
    frames = LabelSet(NAMES, "frame")
    segs = {**rec, "segments": [[0, 2, "bass"], [3, 5, "alto"]]}
    np.testing.assert_array_equal(frames.encode_record(segs), [1, 1, -1, 0, 0])
    with pytest.raises(JaxseqError, match="item 'u1' has no segments"):
        frames.encode_record(rec)
    frames.save(tmp_path / "labels.json")
    again = LabelSet.load(tmp_path / "labels.json")
    assert again.names == NAMES and again.level == "frame"
    split = {
        "labels": {"alto": {"items": 3, "example": "a1"}, "bari": {"items": 1, "example": "b7"}}
    }
    with pytest.raises(JaxseqError, match=r"\['bari'\] \(e.g. item \{'bari': 'b7'\}\)"):
        labels.check_split(split, "data:test")
    assert labels.check_split({"labels": {"alto": {"items": 1}}}, "data:test") == ["bass", "tenor"]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"encoder": "ast", "level": "frame"}, "level=frame needs classify.encoder=transformer"),
        ({"pooling": "cls"}, "set classify.pooling=mean"),
        ({"level": "frame", "multi_label": True}, "multi_label applies to level=sequence"),
    ],
)
def test_inconsistent_config_raises(change, match):
    cfg = _cfg()
    cfg = dataclasses.replace(cfg, classify=dataclasses.replace(cfg.classify, **change))
    with pytest.raises(ConfigError, match=match):
        ClassifyTask(cfg, LabelSet(NAMES), N_MELS)


def test_frame_level_needs_labels_for_every_frame():
    cfg = load_config(
        None,
        ["model.family=classify", "classify.encoder=transformer", "classify.pooling=mean"]
        + ["classify.level=frame", "data.buckets=[64]", "data.max_label_length=32"],
    )
    with pytest.raises(ConfigError, match=r"max_label_length \(32\) must be at least"):
        ClassifyTask(cfg, LabelSet(NAMES, "frame"), N_MELS)


def test_sequence_metrics_match_hand_counts():
    task = ClassifyTask(_cfg(), LabelSet(NAMES), N_MELS)
    refs = ["alto", "alto", "bass", "tenor", "tenor", "tenor"]
    hyps = ["alto", "bass", "bass", "tenor", "alto", "tenor"]
    records = [{"label": r, "predicted": h} for r, h in zip(refs, hyps, strict=True)]
    m = score(task, records)
    # F1 per class: alto p=1/2 r=1/2 → .5; bass p=1/2 r=1 → 2/3; tenor p=1 r=2/3 → .8.
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 0.8) / 3)
    assert m["error_rate"] == pytest.approx(2 / 6)


def _brute_force_der(ref: np.ndarray, hyp: np.ndarray) -> tuple[int, int]:
    """(errors under the best one-to-one speaker mapping, scored frames) of one item."""
    scored = ref >= 0
    speakers, guesses = sorted(set(ref[scored])), sorted(set(hyp[scored]))
    best = scored.sum()
    for perm in itertools.permutations(speakers + [None] * len(guesses), len(guesses)):
        mapping = dict(zip(guesses, perm, strict=True))
        mapped = np.array([mapping.get(h) for h in hyp])
        best = min(best, int(np.sum(mapped[scored] != ref[scored])))
    return best, int(scored.sum())


def test_der_matches_brute_force_mapping():
    rng = np.random.default_rng(6)
    records, errors, total = [], 0, 0
    for i in range(5):
        ref = np.repeat(rng.permutation(3)[:2], 10)  # two turns of 10 frames
        ref[9:11] = -1  # a pause nobody is scored on
        hyp = ref.copy()
        flip = rng.random(20) < 0.3
        hyp[flip] = rng.integers(0, 3, size=flip.sum())
        hyp[hyp < 0] = 0
        e, n = _brute_force_der(ref, hyp)
        errors, total = errors + e, total + n
        names = NAMES
        records.append(
            {
                "id": f"m{i}",
                "reference": runs(ref, names, 0.04),
                "predicted": runs(hyp, names, 0.04),
            }
        )
    assert diarization_error_rate(records) == pytest.approx(errors / total, abs=1e-9)


def test_runs_merge_equal_frames():
    ids = np.array([0, 0, 1, -1, -1, 1, 1])
    assert runs(ids, NAMES, 0.5) == [[0.0, 1.0, "alto"], [1.0, 1.5, "bass"], [2.5, 3.5, "bass"]]
