"""Self-supervised pre-training (model.family=ssl) through the one train loop: the tiny config's
wav2vec 2.0 and HuBERT objectives on a waveform dataset, whose first logged loss is the
objective's loss function on that batch (masks, distractors and Gumbel noise drawn from the
step's rng); a bit-exact resume; 2 processes taking the 1-process steps; HuBERT's targets
script (MFCCs, and a pre-trained layer); the base configs' parameter counts; and a CTC
fine-tune whose `train.init_from` takes the pre-trained encoder exactly.

Cost: every in-process run is 4 steps or fewer on one bucket, sharing the test run's
persistent compilation cache; one wav2vec 2.0 run (`pretrained`) serves the loss, resume,
evaluation, fine-tuning and iteration-2 tests, one HuBERT run (`hubert`, in this process) the
HuBERT loss test and, as the 1-process reference, the 2-process test (2 processes compiling at
once)."""

from __future__ import annotations

import json
import runpy
import shutil
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxseq import api, cli
from jaxseq.config import ConfigError, load_config
from jaxseq.data.cluster_targets import load_kmeans
from jaxseq.data.pipeline import load_dataset_info, make_train_iterator
from jaxseq.data.records import index_name, read_index
from jaxseq.data.ssl_targets import read_targets, targets_path, write_dataset_targets
from jaxseq.data.waveform_batch import is_waveform_dataset
from jaxseq.losses.hubert import hubert_loss
from jaxseq.losses.wav2vec2 import gumbel_temperature, sample_negative_indices, wav2vec2_loss
from jaxseq.models.wav2vec2_features import conv_output_lengths, sample_span_mask
from jaxseq.parallel.mesh import make_mesh
from jaxseq.tasks import build_task
from jaxseq.train.checkpoint import restore_workdir_params
from jaxseq.train.optimizer import make_optimizer
from jaxseq.train.state import create_train_state
from tests.conftest import REPO, built_once

TINY = REPO / "configs" / "wav2vec2_pretrain_tiny.yaml"
CTC_TINY = REPO / "configs" / "wav2vec2_tiny_ctc.yaml"
KERNEL, STRIDE = (10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)


@pytest.fixture(scope="module")
def wave_dataset(tiny_dataset, tmp_path_factory, worker_id) -> Path:
    """The tiny corpus prepared as waveform records, with HuBERT targets (10 clusters)."""

    def build(root: Path) -> None:
        audio = tiny_dataset.parent / "audio"
        cli.main(
            ["prepare", "--config", str(TINY), "--source", f"synth:{audio}", "--out", str(root)]
            + ["--workers", "1"]
        )
        write_dataset_targets(root, ("train", "valid", "test"), 10, seed=0, max_frames=20_000)

    return built_once(tmp_path_factory, worker_id, "ssl-wave-dataset", build)


def _overrides(dataset: Path, *extra: str) -> list[str]:
    """4 steps on one bucket, a loss per logged step, a warmup of 1 step and a constant rate
    after it (the same schedule whatever train.num_steps: a resume to 4 equals 4 straight)."""
    return [
        f"data.dataset={dataset}",
        "data.buckets=[96000]",
        "train.num_steps=4",
        "train.log_every=1",
        "train.checkpoint_every=2",
        "optim.schedule=cosine",
        "optim.warmup_steps=1",
        "optim.end_learning_rate_ratio=1.0",
        *extra,
    ]


def _config(dataset: Path, *extra: str):
    return load_config(TINY, _overrides(dataset, *extra))


# The pre-training run validates at steps 2 and 4, in batches of 3 (the last one holds a filler
# row), for test_evaluation_scores_the_objective.
PRETRAINED = ("train.eval_every=2", "data.eval_batch_size=3")


@pytest.fixture(scope="module")
def pretrained(wave_dataset, tmp_path_factory) -> Path:
    """A workdir of 4 straight wav2vec 2.0 steps, validated at steps 2 and 4."""
    workdir = tmp_path_factory.mktemp("ssl-w2v") / "run"
    api.train(_config(wave_dataset, *PRETRAINED), workdir)
    return workdir


HUBERT = ("ssl.objective=hubert", "train.num_steps=2")


@pytest.fixture(scope="module")
def hubert(wave_dataset, tmp_path_factory) -> Path:
    """A workdir of 2 HuBERT steps, trained in this process (1 device): the 1-process run that
    the 2-process run must equal, step by step."""
    workdir = tmp_path_factory.mktemp("ssl-hubert") / "run"
    api.train(_config(wave_dataset, *HUBERT), workdir)
    return workdir


def _first_step(cfg, workdir: Path):
    """(task, initial params, the step's rng, the first pipeline batch + "step", the logged
    metrics of step 1), as the loop had them."""
    info = load_dataset_info(cfg.data.dataset, "train")
    task = build_task(cfg, info)
    mesh = make_mesh(cfg.mesh)
    tx = make_optimizer(cfg.optim, cfg.train.num_steps)
    state = create_train_state(
        task, tx, task.dummy_batch(1, cfg.data.buckets[0]), mesh, cfg.train.seed
    )
    it = make_train_iterator(
        cfg.data.dataset,
        "train",
        cfg.data,
        task.tokenizer,
        seed=cfg.data.shuffle_seed,
        label_lengths=task.label_lengths(cfg.data.dataset, info, "train"),
    )
    batch = {**next(it), "step": np.zeros((cfg.data.batch_size,), np.int32)}
    it.close()
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    logged = next(r for r in rows if r["split"] == "train" and r["step"] == 1)
    params = jax.device_get(state.params)
    return task, params, jax.random.fold_in(state.rng, 0), batch, logged


def _mask(cfg, key, batch) -> jax.Array:
    """The wav2vec2 section's span mask over each item's frames, bool [batch, frames]."""
    w = cfg.wav2vec2
    frames = int(conv_output_lengths(np.int32(batch["features"].shape[1]), KERNEL, STRIDE))
    lengths = conv_output_lengths(batch["feature_lengths"], KERNEL, STRIDE)
    return sample_span_mask(
        key, lengths, frames, w.mask_time_prob, w.mask_time_length, w.mask_time_min_masks
    )


def test_wav2vec2_loss_is_the_objectives(pretrained, wave_dataset):
    """The loop's first loss = wav2vec2_loss / masked frames on the first batch, with the mask,
    distractors, dropout and Gumbel noise of the step's rng and the step-0 temperature."""
    cfg = _config(wave_dataset, *PRETRAINED)
    task, params, rng, batch, logged = _first_step(cfg, pretrained)
    keys = task.step_keys(rng, train=True)
    mask = _mask(cfg, keys["mask"], batch)
    out = task.model.apply(
        {"params": params},
        batch["features"],
        batch["feature_lengths"],
        mask,
        deterministic=False,
        temperature=gumbel_temperature(0, 2.0, 0.5, 0.999995),
        rngs={"dropout": keys["dropout"], "gumbel": keys["gumbel"]},
    )
    s = cfg.ssl
    negatives = sample_negative_indices(keys["negatives"], mask, s.num_negatives)
    losses = wav2vec2_loss(
        out.projected_states,
        out.projected_quantized_states,
        out.codevector_perplexity,
        negatives,
        mask,
        s.num_codevector_groups * s.num_codevectors_per_group,
        s.contrastive_logits_temperature,
        s.diversity_loss_weight,
    )
    assert np.isfinite(logged["loss"]) and logged["tokens"] == float(losses.num_masked) > 0
    np.testing.assert_allclose(logged["loss"], losses.loss / losses.num_masked, rtol=2e-5)
    np.testing.assert_allclose(logged["contrastive_loss"], losses.contrastive_loss, rtol=2e-5)
    summary = json.loads((pretrained / "metrics.jsonl").read_text().splitlines()[-1])
    assert summary["step"] == 4 and np.isfinite(summary["loss"])


def test_resume_is_bit_exact(pretrained, wave_dataset, tmp_path):
    """2 steps, then a restart to 4: the parameters of 4 straight steps, bit for bit (without
    validation here: the straight run's validations change nothing either)."""
    workdir = tmp_path / "resumed"
    api.train(_config(wave_dataset, "train.num_steps=2", "data.eval_split=''"), workdir)
    summary = api.train(_config(wave_dataset, "data.eval_split=''"), workdir)
    assert summary["start_step"] == 2
    cfg = _config(wave_dataset)
    task = build_task(cfg, load_dataset_info(wave_dataset, "train"))
    tx = make_optimizer(cfg.optim, cfg.train.num_steps)
    init = create_train_state(task, tx, task.dummy_batch(1, 96000), make_mesh(cfg.mesh), 0)
    like = jax.tree.map(np.asarray, init.params)
    straight, _ = restore_workdir_params(pretrained, like, 4)
    resumed, _ = restore_workdir_params(workdir, like, 4)
    flat = jax.tree_util.tree_leaves_with_path(straight)
    for (path, a), b in zip(flat, jax.tree.leaves(resumed), strict=True):
        assert np.array_equal(a, b), jax.tree_util.keystr(path)


def test_hubert_loss_is_the_objectives(hubert, wave_dataset):
    """HuBERT: the batch's labels are each item's cluster targets (one per frame, from
    DATASET/train.targets.npz) and the loop's first loss is hubert_loss / masked frames."""
    cfg = _config(wave_dataset, *HUBERT)
    task, params, rng, batch, logged = _first_step(cfg, hubert)
    frames = conv_output_lengths(batch["feature_lengths"], KERNEL, STRIDE)
    assert np.array_equal(batch["label_lengths"], frames)
    stored = [t.tolist() for t in read_targets(targets_path(wave_dataset, "train")).values()]
    for row, n in zip(batch["labels"], frames, strict=True):
        assert row[:n].tolist() in stored
    keys = task.step_keys(rng, train=True)
    mask = _mask(cfg, keys["mask"], batch)
    out = task.model.apply(
        {"params": params},
        batch["features"],
        batch["feature_lengths"],
        mask,
        deterministic=False,
        rngs={"dropout": keys["dropout"]},
    )
    targets = batch["labels"][:, : mask.shape[1]]
    s = cfg.ssl
    losses = hubert_loss(
        out.logits,
        targets,
        mask,
        frames,
        s.pred_masked_weight,
        s.pred_nomask_weight,
        out.features_pen,
        s.features_pen_weight,
    )
    assert np.isfinite(logged["loss"]) and logged["tokens"] == float(losses.sample_size) > 0
    np.testing.assert_allclose(logged["loss"], losses.loss / losses.sample_size, rtol=2e-5)
    assert logged["correct"] == float(losses.masked_correct)


def test_ctc_init_from_takes_the_pretrained_encoder(pretrained, wave_dataset, tmp_path):
    """A model.frontend=waveform CTC config with train.init_from=the pre-training workdir
    starts from its encoder (of the best checkpoint), bit for bit (learning rate 0: the step
    changes nothing)."""
    workdir = tmp_path / "finetune"
    overrides = [f"data.dataset={wave_dataset}", f"train.init_from={pretrained}"]
    overrides += ["data.buckets=[96000]", "data.eval_split=''", "train.num_steps=1"]
    overrides += ["optim.learning_rate=0.0"]
    cfg = load_config(CTC_TINY, overrides)
    api.train(cfg, workdir)
    task = build_task(cfg, load_dataset_info(wave_dataset, "train"))
    tx = make_optimizer(cfg.optim, cfg.train.num_steps)
    init = create_train_state(task, tx, task.dummy_batch(1, 96000), make_mesh(cfg.mesh), 0)
    encoder = jax.tree.map(np.asarray, init.params["encoder"])
    source, step = restore_workdir_params(pretrained, {"encoder": encoder})  # the best
    rows = [json.loads(line) for line in (pretrained / "metrics.jsonl").read_text().splitlines()]
    validated = {r["step"]: r["loss"] for r in rows if r["split"] == "valid"}
    assert step == min(validated, key=validated.get)
    tuned, _ = restore_workdir_params(workdir, {"encoder": encoder}, 1)
    flat = jax.tree_util.tree_leaves_with_path(source["encoder"])
    for (path, a), b in zip(flat, jax.tree.leaves(tuned["encoder"]), strict=True):
        assert np.array_equal(a, b), jax.tree_util.keystr(path)
    # ... and not the CTC model's own initialization.
    assert not np.array_equal(
        source["encoder"]["layer0"]["mlp"]["wi"]["kernel"],
        encoder["layer0"]["mlp"]["wi"]["kernel"],
    )


def test_hubert_targets_one_per_frame_and_seeded(wave_dataset, tmp_path):
    """scripts/hubert_targets.py's function: conv_output_lengths(samples) targets per item, in
    [0, clusters), the same files for the same seed."""
    copy = tmp_path / "copy"
    shutil.copytree(wave_dataset, copy)
    assert is_waveform_dataset(copy)
    write_dataset_targets(copy, ("valid",), 10, seed=0, fit_split="train", max_frames=20_000)
    first = read_targets(targets_path(copy, "valid"))
    write_dataset_targets(copy, ("valid",), 10, seed=0, fit_split="train", max_frames=20_000)
    again = read_targets(targets_path(copy, "valid"))
    index = read_index(copy / index_name("valid"))
    samples = dict(zip(index["ids"].tolist(), index["num_frames"].tolist(), strict=True))
    assert sorted(first) == sorted(samples)
    for item, targets in first.items():
        assert len(targets) == int(conv_output_lengths(samples[item], KERNEL, STRIDE))
        assert targets.min() >= 0 and targets.max() < 10
        assert np.array_equal(targets, again[item])


def test_ssl_keys_belong_to_ssl():
    with pytest.raises(ConfigError, match="'ssl.num_negatives'.*model.family=ssl"):
        load_config(CTC_TINY, ["ssl.num_negatives=5"])
    with pytest.raises(ConfigError, match="model.num_layers"):
        load_config(TINY, ["model.num_layers=3"])


def test_base_configs_have_the_reference_parameters():
    """wav2vec2_pretrain_base is transformers' Wav2Vec2ForPreTraining (wav2vec2-base) parameter
    for parameter count; hubert_pretrain_base is HubertModel plus fairseq's head (final_proj
    768 → 256 and 100 label embeddings of 256)."""
    import torch
    import transformers

    counts = {}
    for name in ("wav2vec2_pretrain_base", "hubert_pretrain_base"):
        cfg = load_config(REPO / "configs" / f"{name}.yaml")
        task = build_task(cfg, {"frontend": {"kind": "waveform"}})
        shapes = jax.eval_shape(
            task.init_variables, jax.random.PRNGKey(0), task.dummy_batch(1, 16000)
        )
        counts[name] = sum(x.size for x in jax.tree.leaves(shapes["params"]))
    with torch.device("meta"):
        wav2vec2 = transformers.Wav2Vec2ForPreTraining(transformers.Wav2Vec2Config())
        hubert = transformers.HubertModel(transformers.HubertConfig())
    assert counts["wav2vec2_pretrain_base"] == sum(p.numel() for p in wav2vec2.parameters())
    head = 768 * 256 + 256 + 100 * 256
    assert counts["hubert_pretrain_base"] == sum(p.numel() for p in hubert.parameters()) + head


def test_two_processes_take_the_one_process_steps(hubert, wave_dataset, tmp_path):
    """HuBERT pre-training as 2 processes x 4 devices (each reading its own rows and their
    targets, `jaxseq train` with the multi-process flags) and as 1 process (`hubert`, trained
    in this process on its 1 device: a batch of 8 rows there is split 8 ways here): the same
    masked frames, correct predictions and losses, step by step."""
    import tests.test_multiprocess as multiprocess

    workdir = tmp_path / "run2"
    args = ["--config", str(TINY), "--workdir", str(workdir), "mesh.data=8"]
    args += _overrides(wave_dataset, *HUBERT)
    procs, files = multiprocess._start("train", args, 2, tmp_path / "p2")
    multiprocess._wait("train", procs, files, tmp_path / "p2")
    logged = {}
    for n, run in ((1, hubert), (2, workdir)):
        rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
        logged[n] = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in logged[1]] == [r["step"] for r in logged[2]] == [1, 2]
    for one, two in zip(logged[1], logged[2], strict=True):
        assert one["tokens"] == two["tokens"] > 0 and one["correct"] == two["correct"]
        np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-5)


def test_iteration_2_targets_from_a_pretrained_layer(
    pretrained, wave_dataset, tmp_path, monkeypatch
):
    """scripts/hubert_targets.py --workdir --layer: k-means of a pre-trained encoder layer's
    hidden states, still one target per conv-encoder frame of each item."""
    copy = tmp_path / "copy"
    shutil.copytree(wave_dataset, copy)
    script = REPO / "scripts" / "hubert_targets.py"
    args = ["--dataset", str(copy), "--splits", "valid", "--fit-split", "train"]
    args += ["--clusters", "5", "--max-frames", "5000", "--workdir", str(pretrained)]
    monkeypatch.setattr(sys, "argv", [str(script), *args, "--layer", "1"])
    runpy.run_path(str(script), run_name="__main__")  # in this process: no start-up, no imports
    targets = read_targets(targets_path(copy, "valid"))
    index = read_index(copy / index_name("valid"))
    for item, samples in zip(index["ids"].tolist(), index["num_frames"], strict=True):
        assert len(targets[item]) == int(conv_output_lengths(samples, KERNEL, STRIDE))
    assert len(np.unique(np.concatenate(list(targets.values())))) > 1
    assert load_kmeans(copy / "kmeans.npz").feature_settings["layer"] == 1


def test_evaluation_scores_the_objective(pretrained, wave_dataset, tmp_path, capsys):
    """Training with train.eval_every=2 validates on the valid split at steps 2 and 4 (loss,
    masked accuracy, codevector perplexity in metrics.jsonl) and keeps the lower loss as the
    best checkpoint; `jaxseq evaluate --split valid` scores that checkpoint, giving what NumPy
    recomputes from the task's own predict_fn and loss_fn on the split's batches (3 items a
    batch: the last one holds a filler row)."""
    from jaxseq.data.eval_batches import make_eval_batches
    from jaxseq.train.trained import load_trained

    workdir = tmp_path / "evaluated"  # a copy: `jaxseq evaluate` writes into the workdir
    shutil.copytree(pretrained, workdir)
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    validated = {r["step"]: r for r in rows if r["split"] == "valid"}
    assert sorted(validated) == [2, 4]
    best = min(validated, key=lambda s: validated[s]["loss"])

    cli.main(["evaluate", "--workdir", str(workdir), "--split", "valid"])
    assert "masked accuracy" in capsys.readouterr().out
    report = json.loads((workdir / "eval" / f"valid-step{best}.json").read_text())
    assert report["step"] == best and (workdir / "eval" / f"valid-step{best}.md").is_file()

    trained = load_trained(workdir, step=best)
    task, params, cfg = trained.task, jax.device_get(trained.params), trained.cfg
    info = load_dataset_info(wave_dataset, "valid")
    predict = jax.jit(task.predict_fn)
    loss_fn = jax.jit(lambda p, b: task.loss_fn(p, b, None, False))
    ids, masked, correct, weighted, loss_sum = [], 0.0, 0.0, 0.0, 0.0
    batches = make_eval_batches(
        wave_dataset,
        "valid",
        cfg.data,
        task.tokenizer,
        label_lengths=task.label_lengths(wave_dataset, info, "valid"),
    )
    for batch, batch_ids, _ in batches:
        valid = np.asarray(batch["valid"], bool)
        out = jax.tree.map(np.asarray, predict(params, batch))
        loss, metrics = loss_fn(params, batch)
        assert np.all(out["masked"][~valid] == 0)
        ids += [i for i, ok in zip(batch_ids, valid, strict=True) if ok]
        masked += np.sum(out["masked"][valid], dtype=np.float64)
        correct += np.sum(out["correct"][valid], dtype=np.float64)
        weighted += np.sum(out["perplexity"][valid] * out["masked"][valid], dtype=np.float64)
        assert float(metrics["tokens"]) == np.sum(out["masked"])
        loss_sum += float(loss) * float(metrics["tokens"])
    assert (~valid).sum() == 1  # the last batch: 2 items and a filler
    every = read_index(wave_dataset / index_name("valid"))["ids"].tolist()
    assert [r["id"] for r in report["items"]] == ids == every
    assert report["masked_frames"] == masked > 0 and report["num_utterances"] == len(ids)
    assert report["masked_accuracy"] == correct / masked
    np.testing.assert_allclose(report["codevector_perplexity"], weighted / masked, rtol=1e-6)
    np.testing.assert_allclose(report["loss"], loss_sum / masked, rtol=1e-5)
    # ... and the train loop's validation of that step scored the same.
    assert validated[best]["masked_accuracy"] == report["masked_accuracy"]
    np.testing.assert_allclose(validated[best]["loss"], report["loss"], rtol=1e-6)
