"""examples/finetune_from_script.py, run as a user runs it: a converted (tiny, random) HF
Whisper fine-tuned on a manifest through the Python API, then evaluated."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from jaxseq.train.trained import load_trained
from tests.conftest import REPO
from tests.test_whisper_finetune import hf_dir  # noqa: F401  (the fixture)


def test_finetune_from_script(hf_dir, tiny_dataset, tmp_path):  # noqa: F811
    audio = tiny_dataset.parent / "audio"
    workdir = tmp_path / "ft"
    overrides = [
        "data.batch_size=4",
        "data.buckets=[600]",
        "data.max_label_length=16",
        "train.num_steps=3",
        "train.log_every=1",
        "train.checkpoint_every=3",
        "optim.learning_rate=3e-3",
        "optim.warmup_steps=1",
        "eval.decoder=greedy",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "examples" / "finetune_from_script.py"),
            "--hf",
            str(hf_dir[0]),
            "--train",
            str(audio / "train" / "manifest.jsonl"),
            "--test",
            str(audio / "test" / "manifest.jsonl"),
            "--workdir",
            str(workdir),
            *overrides,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    # The callback saw every step: its losses are the ones the loop logged at each step.
    logged = [
        json.loads(x)["loss"]
        for x in (workdir / "run" / "metrics.jsonl").read_text().splitlines()
        if json.loads(x)["split"] == "train"
    ]
    assert len(logged) == 3
    assert lines[0] == f"step 3: train loss {logged[0]:.4f} -> {logged[-1]:.4f}"
    # The evaluation scored every test utterance of the manifest with the trained step.
    report = json.loads((workdir / "run" / "eval" / "eval-step3.json").read_text())
    test_items = (audio / "test" / "manifest.jsonl").read_text().splitlines()
    assert report["num_utterances"] + report["num_skipped"] == len(test_items)
    assert lines[-1] == (
        f"jaxseq.Model(whisper, {workdir / 'run'}, step 3): {report['headline']} "
        f"on {report['num_utterances']} utterances"
    )
    assert load_trained(workdir / "run").step == 3
