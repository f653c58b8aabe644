"""The real entry points end to end, and the same losses on every mesh."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import jiwer
import numpy as np
import pytest
import soundfile as sf
from whisper.normalizers import EnglishTextNormalizer

from jaxseq import cli
from jaxseq.config import load_config
from jaxseq.data.pipeline import load_dataset_info, make_train_iterator
from jaxseq.inference.formats import FORMATS
from jaxseq.tasks.base import STEP_KEY
from jaxseq.train.checkpoint import Checkpointer
from jaxseq.train.loop import train
from jaxseq.train.optimizer import make_optimizer
from jaxseq.train.state import abstract_train_state
from jaxseq.train.trained import load_trained
from tests.conftest import REPO, TINY_CONFIG


def _metrics(workdir, split="train"):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [m for m in map(json.loads, lines) if m["split"] == split]


def _hops_of_audio(dataset, split, frontend) -> float:
    """Seconds of a split's recordings, each cut to whole hops (what a centered STFT without
    its last frame covers), read from the wav files themselves."""
    total = 0
    for wav in sorted((dataset.parent / "audio" / split / "wav").glob("*.wav")):
        info = sf.info(wav)
        assert info.samplerate == frontend["sample_rate"]
        total += info.frames // frontend["hop_length"] * frontend["hop_length"]
    return total / frontend["sample_rate"]


def recomputed_train_metrics(workdir, step: int) -> dict[str, float]:
    """The train loss and task metrics of step `step` + 1, recomputed outside the loop: the
    task's train-mode loss on checkpoint `step`'s parameters, with its rng folded with the
    step, on the next batch of its restored data iterator. With train.log_every=1 they are
    what metrics.jsonl logs for step `step` + 1."""
    trained = load_trained(workdir, step=step)
    cfg, task = trained.cfg, trained.task
    tx = make_optimizer(cfg.optim, cfg.train.num_steps)
    abstract, _ = abstract_train_state(
        task, tx, task.dummy_batch(1, cfg.data.buckets[0]), trained.mesh
    )
    info = load_dataset_info(cfg.data.dataset, cfg.data.train_split)
    data = make_train_iterator(
        cfg.data.dataset,
        cfg.data.train_split,
        cfg.data,
        task.tokenizer,
        seed=cfg.data.shuffle_seed,
        label_lengths=task.label_lengths(cfg.data.dataset, info, cfg.data.train_split),
    )
    ckpt = Checkpointer(workdir / "checkpoints", cfg.train, read_only=True)
    state = ckpt.restore(step, abstract, data)
    assert int(state.step) == step
    host = next(data)
    rows = len(host["features"])
    batch = {**jax.tree.map(jnp.asarray, host), STEP_KEY: jnp.full((rows,), step, jnp.int32)}
    loss_fn = jax.jit(task.loss_fn, static_argnums=3)
    loss, metrics = loss_fn(state.params, batch, jax.random.fold_in(state.rng, step), True)
    return {"loss": float(loss), **{k: float(v) for k, v in metrics.items()}}


def assert_logged_like_recomputed(workdir, step: int, rtol: float = 1e-5) -> None:
    """metrics.jsonl's train line for `step` + 1 (train.log_every=1) holds the loss and every
    task metric that `recomputed_train_metrics` gives."""
    logged = next(m for m in _metrics(workdir) if m["step"] == step + 1)
    for name, value in recomputed_train_metrics(workdir, step).items():
        assert logged[name] == pytest.approx(value, rel=rtol, abs=1e-6), name


def test_cli_train_evaluate_transcribe_resume(tiny_dataset, tmp_path, capsys):
    workdir = tmp_path / "run"
    common = ["--config", str(TINY_CONFIG), f"data.dataset={tiny_dataset}", "train.log_every=1"]
    # 4 steps (checkpoints 2 and 4, an evaluation at 4), then a resume to 6.
    common += ["train.checkpoint_every=2", "train.eval_every=4"]
    cli.main(["train", "--workdir", str(workdir), *common, "train.num_steps=4"])
    # The train step was compiled once per bucket used, never for any other padded length.
    summary = json.loads(capsys.readouterr().out)
    buckets = load_config(TINY_CONFIG).data.buckets
    assert summary["compiled_shapes"] and set(summary["compiled_shapes"]) <= set(buckets)
    for name in ("config.yaml", "frontend.json", "vocab.json", "metrics.jsonl"):
        assert (workdir / name).is_file(), name
    ckpts = workdir / "checkpoints"
    assert sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) == [2, 4]
    assert [m["step"] for m in _metrics(workdir)] == list(range(1, 5))
    assert_logged_like_recomputed(workdir, 2)  # step 3: checkpoint 2's state, next batch
    assert _metrics(workdir, "valid")[-1]["step"] == 4

    # Resume: the loop continues from step 4, not from scratch, on the batch that followed.
    cli.main(["train", "--workdir", str(workdir), *common, "train.num_steps=6"])
    assert [m["step"] for m in _metrics(workdir)] == list(range(1, 7))
    assert_logged_like_recomputed(workdir, 4)

    report = tmp_path / "report.json"
    cli.main(
        [
            "evaluate",
            "--workdir",
            str(workdir),
            "--split",
            "test",
            "--report",
            str(report),
            "--decoder",
            "prefix_beam",
            "--beam-size",
            "4",
        ]
    )
    out = json.loads(report.read_text())
    assert {"wer", "cer", "num_utterances", "num_skipped"} <= out.keys()
    # Real-time factor: decode time per second of the scored audio, which is the split's
    # frames x hop, and also what the test recordings hold, cut to whole hops.
    frontend = json.loads((workdir / "frontend.json").read_text())["frontend"]
    hop_seconds = frontend["hop_length"] / frontend["sample_rate"]
    index = np.load(tiny_dataset / "test.index.npz")
    assert out["audio_seconds"] == pytest.approx(index["num_frames"].sum() * hop_seconds)
    assert out["audio_seconds"] == pytest.approx(_hops_of_audio(tiny_dataset, "test", frontend))
    assert out["real_time_factor"] == pytest.approx(out["decode_seconds"] / out["audio_seconds"])
    assert out["num_utterances"] == 8 and out["step"] == 6
    # The report's WER is the corpus WER of its own per-utterance hypotheses (jiwer, directly).
    refs = [u["ref"] for u in out["utterances"]]
    hyps = [u["hyp"] for u in out["utterances"]]
    assert out["wer"] == pytest.approx(jiwer.wer(refs, hyps))
    assert out["cer"] == pytest.approx(jiwer.cer(refs, hyps))
    assert report.with_suffix(".md").read_text().startswith("# Evaluation")

    # Evaluation straight from a manifest of audio files, from an earlier checkpoint.
    manifest = tiny_dataset.parent / "audio" / "test" / "manifest.jsonl"
    by_manifest = tmp_path / "by_manifest.json"
    cli.main(
        [
            "evaluate",
            "--workdir",
            str(workdir),
            "--manifest",
            str(manifest),
            "--report",
            str(by_manifest),
            "--step",
            "4",
            "eval.normalizer=whisper_english",
        ]
    )
    got = json.loads(by_manifest.read_text())
    assert got["num_utterances"] == 8 and got["num_skipped"] == 0 and got["step"] == 4
    assert got["audio_seconds"] == pytest.approx(out["audio_seconds"])  # the same recordings
    # Scored as published WERs are: openai-whisper's own English normalizer on both sides.
    assert out["normalizer"] == "model" and got["normalizer"] == "whisper_english"
    english = EnglishTextNormalizer()
    refs = [english(u["ref"]) for u in got["utterances"]]
    hyps = [english(u["hyp"]) for u in got["utterances"]]
    assert got["wer"] == pytest.approx(jiwer.wer(refs, hyps))

    wav = sorted((tiny_dataset.parent / "audio" / "test" / "wav").glob("*.wav"))[:2]
    capsys.readouterr()
    cli.main(["transcribe", "--workdir", str(workdir), *map(str, wav)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(w) for w in wav]
    texts = [line.split("\t")[1] for line in lines]
    cli.main(
        ["transcribe", "--workdir", str(workdir), "--output-dir", str(tmp_path / "out")]
        + [str(w) for w in wav]
    )
    for w, text in zip(wav, texts, strict=True):
        result = json.loads((tmp_path / "out" / f"{w.stem}.json").read_text())
        assert result["text"] == text.strip()
        assert {f"{w.stem}.{f}" for f in FORMATS} <= {p.name for p in (tmp_path / "out").iterdir()}


def test_bad_config_key_names_the_closest(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(
            ["train", "--workdir", str(tmp_path), "--config", str(TINY_CONFIG), "train.num_step=3"]
        )
    assert "did you mean 'train.num_steps'" in capsys.readouterr().err


_MESH_RUN = """
import json, sys
from jaxseq.config import load_config
from jaxseq.train.loop import train
cfg = load_config(sys.argv[1], sys.argv[3:])
train(cfg, sys.argv[2])
"""


def _train_on_mesh(tiny_dataset, workdir, devices, mesh):
    """The losses of 4 steps on `devices` CPU devices: one device in this process (a test
    process has one), more in a subprocess that asks for them."""
    overrides = [
        f"data.dataset={tiny_dataset}",
        "train.num_steps=4",
        "train.log_every=1",
        "train.eval_every=1000",
        "train.checkpoint_every=1000",
        "data.buckets=[512]",  # one train step program per mesh
        "data.eval_split=''",
        *mesh,
    ]
    if devices == 1:
        assert jax.device_count() == 1
        train(load_config(TINY_CONFIG, overrides), workdir)
        return np.array([m["loss"] for m in _metrics(workdir)])
    flags = os.environ.get("XLA_FLAGS", "")
    env = {
        **os.environ,
        "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
    }
    subprocess.run(
        [sys.executable, "-c", _MESH_RUN, str(TINY_CONFIG), str(workdir), *overrides],
        check=True,
        cwd=REPO,
        env=env,
        capture_output=True,
    )
    return np.array([m["loss"] for m in _metrics(workdir)])


def test_same_losses_on_every_mesh(tiny_dataset, tmp_path):
    """1 device and data=2 x fsdp=2 x tensor=2 train to the same losses (≤ 1e-5); each preset
    alone (data=8 among them) is checked against one device in tests/test_sharding_presets.py."""
    one = _train_on_mesh(tiny_dataset, tmp_path / "one", 1, [])
    mixed = _train_on_mesh(
        tiny_dataset, tmp_path / "mixed", 8, ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]
    )
    assert len(one) == 4 and one[-1] < one[0]
    np.testing.assert_allclose(mixed, one, rtol=1e-5, atol=1e-5)
