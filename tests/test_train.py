"""The real entry points end to end, and the same losses on every mesh."""

import json
import os
import subprocess
import sys

import jiwer
import numpy as np
import pytest

from jaxseq import cli
from jaxseq.config import load_config
from tests.conftest import REPO, TINY_CONFIG


def _metrics(workdir, split="train"):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [m for m in map(json.loads, lines) if m["split"] == split]


def test_cli_train_evaluate_transcribe_resume(tiny_dataset, tmp_path, capsys):
    workdir = tmp_path / "run"
    common = ["--config", str(TINY_CONFIG), f"data.dataset={tiny_dataset}"]
    cli.main(["train", "--workdir", str(workdir), *common])
    # The train step was compiled once per bucket used, never for any other padded length.
    summary = json.loads(capsys.readouterr().out)
    buckets = load_config(TINY_CONFIG).data.buckets
    assert summary["compiled_shapes"] and set(summary["compiled_shapes"]) <= set(buckets)
    for name in ("config.yaml", "frontend.json", "vocab.json", "metrics.jsonl"):
        assert (workdir / name).is_file(), name
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [
        5,
        10,
    ]
    train_lines = _metrics(workdir)
    assert [m["step"] for m in train_lines] == [5, 10]
    assert all(np.isfinite(m["loss"]) and m["loss"] > 0 for m in train_lines)
    assert _metrics(workdir, "valid")[-1]["step"] == 10

    # Resume: the loop continues from step 10, not from scratch.
    cli.main(["train", "--workdir", str(workdir), *common, "train.num_steps=15"])
    assert [m["step"] for m in _metrics(workdir)] == [5, 10, 15]

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
    # Real-time factor: decode time per second of the scored audio (index frames x hop).
    index = np.load(tiny_dataset / "test.index.npz")
    assert out["audio_seconds"] == pytest.approx(index["num_frames"].sum() * 160 / 16000)
    assert out["real_time_factor"] == pytest.approx(out["decode_seconds"] / out["audio_seconds"])
    assert 0 < out["real_time_factor"] < 10
    assert out["num_utterances"] == 8 and out["step"] == 15
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
            "10",
        ]
    )
    got = json.loads(by_manifest.read_text())
    assert got["num_utterances"] == 8 and got["num_skipped"] == 0 and got["step"] == 10

    wav = sorted((tiny_dataset.parent / "audio" / "test" / "wav").glob("*.wav"))[:2]
    capsys.readouterr()
    cli.main(["transcribe", "--workdir", str(workdir), *map(str, wav)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(w) for w in wav]


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
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
    }
    overrides = [
        f"data.dataset={tiny_dataset}",
        "train.num_steps=4",
        "train.log_every=1",
        "train.eval_every=1000",
        "train.checkpoint_every=1000",
        *mesh,
    ]
    subprocess.run(
        [sys.executable, "-c", _MESH_RUN, str(TINY_CONFIG), str(workdir), *overrides],
        check=True,
        cwd=REPO,
        env=env,
        capture_output=True,
    )
    return np.array([m["loss"] for m in _metrics(workdir)])


def test_same_losses_on_every_mesh(tiny_dataset, tmp_path):
    """1 device, data=8, and data=2 x fsdp=2 x tensor=2 train to the same losses (≤ 1e-5)."""
    one = _train_on_mesh(tiny_dataset, tmp_path / "one", 1, [])
    dp8 = _train_on_mesh(tiny_dataset, tmp_path / "dp8", 8, ["mesh.data=8"])
    mixed = _train_on_mesh(
        tiny_dataset, tmp_path / "mixed", 8, ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]
    )
    assert len(one) == 4 and one[-1] < one[0]
    np.testing.assert_allclose(dp8, one, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mixed, one, rtol=1e-5, atol=1e-5)
