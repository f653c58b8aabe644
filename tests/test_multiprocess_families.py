"""Every family evaluates an uneven split in 2 processes exactly as in 1, and 2 processes that
train a tokenizer from data end with byte-identical files (tests/multiprocess_families_run.py).

Process 1 holds no item of the split at all, so every collective of the evaluation (the
batches, the TTS intelligibility recognizer's batches, the gathering of records) must run on
both processes the same number of times, or the run hangs."""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys
import time

import pytest

import jaxseq
from tests.conftest import REPO, TINY_CONFIG
from tests.test_multiprocess import TIMEOUT, _env, _free_port

SCRIPT = REPO / "tests" / "multiprocess_families_run.py"


@pytest.fixture(scope="module")
def corpus(speaker_corpus):
    """A tiny corpus every family trains on: digit strings with their speakers as labels."""
    return speaker_corpus / "prepared"


@pytest.fixture(scope="module")
def asr_workdir(corpus, tmp_path_factory):
    """A recognizer for the TTS intelligibility (1 training step)."""
    workdir = tmp_path_factory.mktemp("asr") / "ctc"
    cfg = jaxseq.load_config(
        TINY_CONFIG, [f"data.dataset={corpus}", "train.num_steps=1", "data.eval_split=''"]
    )
    jaxseq.train(cfg, workdir)
    return workdir


def _run(out, corpus, asr_workdir, processes: int) -> dict:
    port = _free_port()
    env = {**_env(8 // processes), "PYTHONPATH": str(REPO)}
    args = [sys.executable, str(SCRIPT), str(out), str(corpus), str(asr_workdir)]
    procs = [
        subprocess.Popen(
            args + ([str(port), str(processes), str(i)] if processes > 1 else []),
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(processes)
    ]
    deadline = time.time() + TIMEOUT
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=max(deadline - time.time(), 1))[0])
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            pytest.fail(f"{processes} processes timed out (a collective run unevenly hangs)")
    for i, (proc, text) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, f"process {i} of {processes}:\n{text[-3000:]}"
    return json.loads((out / "result.json").read_text())


def test_every_family_evaluates_an_uneven_split_like_one_process(corpus, asr_workdir, tmp_path):
    one = _run(tmp_path / "one", corpus, asr_workdir, 1)
    two = _run(tmp_path / "two", corpus, asr_workdir, 2)
    assert set(two) == {"ctc", "seq2seq", "rnn", "tts", "classify"}
    for family, want in one.items():
        got = two[family]
        assert got["metrics"]["num_utterances"] == want["metrics"]["num_utterances"] == 8
        assert [r["id"] for r in got["records"]] == [r["id"] for r in want["records"]]
        for key, value in want["metrics"].items():
            if isinstance(value, float):
                assert got["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
            else:
                assert got["metrics"][key] == value, (family, key)
        if family != "tts":  # TTS records hold float distortions, compared in the metrics
            assert got["records"] == want["records"], family
    assert "cer" in two["tts"]["metrics"]  # the recognizer ran in both processes

    # The transcription job: every item in manifest order, the missing file listed, the same
    # transcripts and times (word probabilities to float32 rounding) as one process.
    rows = [
        [json.loads(line) for line in (tmp_path / run / "job" / "results.jsonl").open()]
        for run in ("one", "two")
    ]
    assert [r["id"] for r in rows[1]] == [r["id"] for r in rows[0]] and len(rows[0]) == 9
    assert [r["id"] for r in rows[1] if "error" in r] == ["gone"]
    for got, want in zip(*rows, strict=True):
        assert _without_probabilities(got) == _without_probabilities(want)
        words = [
            (w, v)
            for s, t in zip(got.get("segments", []), want.get("segments", []), strict=True)
            for w, v in zip(s["words"], t["words"], strict=True)
        ]
        for w, v in words:
            assert w["probability"] == pytest.approx(v["probability"], rel=1e-5, abs=1e-6)

    # Tokenizers learned from data (BPE: seq2seq, rnn) are process 0's, read back by process 1.
    for family in two:
        p0, p1 = (tmp_path / "two" / f"tokenizers-p{i}" / family for i in range(2))
        files = sorted(f.name for f in p0.iterdir())
        assert files and files == sorted(f.name for f in p1.iterdir())
        match, mismatch, errors = filecmp.cmpfiles(p0, p1, files, shallow=False)
        assert (mismatch, errors) == ([], []), family


def _without_probabilities(row: dict) -> dict:
    row = json.loads(json.dumps(row))
    for segment in row.get("segments", []):
        for word in segment["words"]:
            del word["probability"]
    return row


def test_only_process_zero_builds_a_shared_file(monkeypatch, tmp_path):
    """`built_on_process_zero`: process 0 builds and writes, the others only read it back."""
    from jax.experimental import multihost_utils

    from jaxseq.parallel import shared_files

    barriers = []
    monkeypatch.setattr(shared_files.jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "sync_global_devices", barriers.append)
    path = tmp_path / "tokenizer.json"

    def build():
        return "trained on process 0"

    def never():
        raise AssertionError("process 1 must not train its own tokenizer")

    monkeypatch.setattr(shared_files.jax, "process_index", lambda: 0)
    assert shared_files.built_on_process_zero(path, build, lambda x, p: p.write_text(x), None)
    monkeypatch.setattr(shared_files.jax, "process_index", lambda: 1)
    got = shared_files.built_on_process_zero(path, never, None, lambda p: p.read_text())
    assert got == "trained on process 0" and len(barriers) == 2
