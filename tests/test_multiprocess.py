"""Multi-process training: `jax.distributed` set-up, and 2 processes x 4 CPU devices training,
saving and resuming exactly like 1 process x 8 devices."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxseq import cli
from jaxseq.errors import JaxseqError
from jaxseq.parallel import distributed
from tests.conftest import REPO, TINY_CONFIG
from tests.test_train import _metrics

_DIST_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


@pytest.fixture
def no_cluster(monkeypatch):
    """A plain machine: no distributed variables, no cluster; records initialize() calls."""
    for name in _DIST_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(distributed, "detect_cluster", lambda: None)
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    return calls


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"process_id": 1}, r"--coordinator, --num-processes missing"),
        ({"num_processes": 2, "coordinator": "localhost:1234"}, r"--process-id missing"),
        ({"coordinator": "localhost"}, r"'localhost' is not HOST:PORT"),
        ({"coordinator": "h:1", "num_processes": 2, "process_id": 2}, r"2 is not below .* 2"),
        ({"num_processes": 0}, r"at least 1"),
    ],
)
def test_inconsistent_settings_are_errors(no_cluster, kwargs, message):
    with pytest.raises(JaxseqError, match=message):
        distributed.initialize(**kwargs)
    assert no_cluster == []


def test_settings_from_flags_and_environment(no_cluster, monkeypatch):
    distributed.initialize()  # nothing given, no cluster: single process
    distributed.initialize(num_processes=1)  # explicitly one process
    assert no_cluster == []
    distributed.initialize("10.0.0.1:1234", 4, 3)
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.2:99")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    distributed.initialize()
    distributed.initialize(process_id=0)  # a flag wins over its variable
    assert no_cluster == [
        {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3},
        {"coordinator_address": "10.0.0.2:99", "num_processes": 2, "process_id": 1},
        {"coordinator_address": "10.0.0.2:99", "num_processes": 2, "process_id": 0},
    ]
    monkeypatch.setenv("JAX_PROCESS_ID", "one")
    with pytest.raises(JaxseqError, match="JAX_PROCESS_ID='one' is not an integer"):
        distributed.initialize()


def test_a_detected_cluster_initializes_itself(no_cluster, monkeypatch):
    class FakeCluster:
        processes = 4

        @classmethod
        def get_process_count(cls):
            return cls.processes

    monkeypatch.setattr(distributed, "detect_cluster", lambda: FakeCluster)
    distributed.initialize()  # jax reads everything from the cluster
    FakeCluster.processes = 1
    distributed.initialize()  # a one-process cluster job stays single-process
    assert no_cluster == [{"coordinator_address": None, "num_processes": None, "process_id": None}]


def test_no_cluster_is_detected_here(monkeypatch):
    """Without a scheduler's variables this machine is no cluster: detection says so quietly
    (even when the suite itself runs inside a SLURM or MPI job)."""
    for name in list(os.environ):
        if name.startswith(("SLURM_", "OMPI_", "PMI_", "TPU_")):
            monkeypatch.delenv(name)
    assert distributed.detect_cluster() is None


def test_cli_reports_inconsistent_flags(no_cluster, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(
            ["train", "--workdir", str(tmp_path), "--config", str(TINY_CONFIG), "--process-id", "1"]
        )
    err = capsys.readouterr().err
    assert "jaxseq train: error: multi-process set-up is incomplete" in err
    assert "--num-processes" in err


# --- 2 processes x 4 devices == 1 process x 8 devices -------------------------------------------
#
# Nearly all of a launch's time is starting Python and compiling, so the launches share what
# they can: one 2-process run of 4 steps (`two_process_run`) is copied by every test that
# resumes or evaluates it, one 1-process run of 6 steps (`one_process_run`, started at the same
# time) is the reference, and one 2-process resume of it (`resumed_run`) both checks the resume
# (steps 5-6 and the evaluation at step 6) and is the run that SIGTERM preempts. Every batch is
# padded to one bucket (one train-step compile per launch, not one per bucket), a persistent
# compilation cache lets a launch load what an earlier one compiled (the same program on the
# same processes), and every launch compiles with tests/conftest.py's fast XLA flags (LLVM's
# optimizations off, the classic fusion emitters: `_env`; the programs are tiny, and the 1- and
# 2-process runs are compiled alike).

TIMEOUT = 900  # seconds per launch; compiling on a busy 2-core machine is slow
FAST_COMPILE = "--xla_backend_optimization_level=0"  # tiny programs: about half the compile time
LONG = 400  # train.num_steps of the runs that SIGTERM stops (far more steps than they take)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict[str, str]:
    """This environment for a subprocess with `devices` CPU devices: no distributed variables;
    XLA_FLAGS keeps this run's compile-time flags (tests/conftest.py: backend optimizations off,
    the classic fusion emitters) and adds the device count and optimization level 0, so every
    subprocess compiles as fast as the tests do; JAX_COMPILATION_CACHE_DIR, the run's persistent
    cache, is inherited."""
    env = {k: v for k, v in os.environ.items() if k not in _DIST_ENV}
    flags = [
        f
        for f in env.get("XLA_FLAGS", "").split()
        if not f.startswith(("--xla_force_host_platform_device_count=", FAST_COMPILE))
    ]
    flags += [f"--xla_force_host_platform_device_count={devices}", FAST_COMPILE]
    env.update(XLA_FLAGS=" ".join(dict.fromkeys(flags)), JAX_PLATFORMS="cpu")  # each flag once
    return env


def _common(tiny_dataset, num_steps, *extra) -> list[str]:
    # Warmup of 2 steps and a constant rate after it (end ratio 1): the schedule is the same
    # whatever train.num_steps, so 4 steps + a resume to 6 (or on, to a preemption) must equal
    # 6 straight steps. One bucket as large as the config's largest: the same batches, one
    # compile.
    return [
        "--config",
        str(TINY_CONFIG),
        f"data.dataset={tiny_dataset}",
        "data.buckets=[512]",
        "mesh.data=8",
        f"train.num_steps={num_steps}",
        "train.log_every=1",
        "train.checkpoint_every=2",
        "optim.warmup_steps=2",
        "optim.end_learning_rate_ratio=1.0",
        *extra,
    ]


def _start(verb: str, args: list[str], num_processes: int, logs: Path):
    """Starts `jaxseq VERB ARGS` as `num_processes` processes (4 CPU devices each; one process:
    8 devices and no multi-process flags), with stdout and stderr in LOGS-p<i>.out/.err.
    Returns (processes, [(out, err) files])."""
    port = _free_port()
    env = _env(8 // num_processes)
    procs, files = [], []
    for i in range(num_processes):
        flags = []
        if num_processes > 1:
            flags = ["--coordinator", f"127.0.0.1:{port}", "--num-processes"]
            flags += [str(num_processes), "--process-id", str(i)]
        out, err = (logs.parent / f"{logs.name}-p{i}{ext}" for ext in (".out", ".err"))
        files.append((out, err))
        with out.open("w") as stdout, err.open("w") as stderr:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "jaxseq.cli", verb, *flags, *args],
                    cwd=REPO,
                    env=env,
                    stdout=stdout,
                    stderr=stderr,
                )
            )
    return procs, files


def _wait(verb: str, procs, files, logs: Path, *, check: bool = True) -> list[dict]:
    """Waits for `_start`'s processes. Returns each one's {"returncode", "stdout", "stderr"}.
    A process that fails (with `check`) or a timeout kills all of them and fails the test
    with every stderr tail."""
    deadline = time.time() + TIMEOUT
    try:  # until all exit, one fails (the others would wait for it), or the time is up
        while any(p.poll() is None for p in procs) and time.time() < deadline:
            if any(p.returncode not in (None, 0) for p in procs):
                break
            time.sleep(0.5)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait(timeout=60)
    results = [
        {"returncode": p.returncode, "stdout": out.read_text(), "stderr": err.read_text()}
        for p, (out, err) in zip(procs, files, strict=True)
    ]
    timed_out = time.time() >= deadline
    if timed_out or (check and any(r["returncode"] != 0 for r in results)):
        tails = "\n".join(
            f"--- process {i} (exit {r['returncode']}) stderr tail:\n{r['stderr'][-3000:]}"
            for i, r in enumerate(results)
        )
        what = f"timed out after {TIMEOUT} s" if timed_out else "a process failed"
        pytest.fail(f"jaxseq {verb} ({logs.name}): {what}\n{tails}")
    return results


def _launch(
    verb: str, args: list[str], num_processes: int, logs: Path, *, check: bool = True
) -> list[dict]:
    """`_start` then `_wait`."""
    procs, files = _start(verb, args, num_processes, logs)
    return _wait(verb, procs, files, logs, check=check)


def _with_summaries(results: list[dict]) -> list[dict]:
    return [{**r, "summary": _summary(r["stdout"])} for r in results]


def _summary(stdout: str) -> dict:
    """The JSON summary `jaxseq train` prints last (gloo prints "[Gloo] Rank ..." lines to
    stdout from C++ before it)."""
    start = stdout.rindex("\n{\n") + 1 if not stdout.startswith("{") else 0
    return json.loads(stdout[start:])


def _preempted(args: list[str], workdir: Path, logs: Path, after_step: int) -> list[dict]:
    """Starts `jaxseq train ARGS` as 2 processes and, once a train step past AFTER_STEP is
    logged, sends SIGTERM to process 1 only. Returns each process's result with its summary."""
    procs, files = _start("train", args, 2, logs)
    deadline = time.time() + TIMEOUT
    while time.time() < deadline and all(p.poll() is None for p in procs):
        logged = (workdir / "metrics.jsonl").exists() and _metrics(workdir)
        if logged and logged[-1]["step"] > after_step:
            procs[1].send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    return _with_summaries(_wait("train", procs, files, logs))


@pytest.fixture(scope="module")
def common(tiny_dataset, tmp_path_factory):
    """`_common` for the tiny dataset with this module's compilation cache:
    common(num_steps, *extra) -> args."""
    cache = tmp_path_factory.mktemp("xla_cache")
    return lambda num_steps, *extra: _common(
        tiny_dataset, num_steps, f"train.compilation_cache_dir={cache}", *extra
    )


@pytest.fixture(scope="module")
def first_runs(common, tmp_path_factory) -> dict:
    """Started together (they share nothing): 2 processes x 4 devices train 4 steps from scratch
    (checkpoints 2 and 4) without evaluation, and 1 process x 8 devices trains 6 steps straight
    and evaluates (checkpointed at the end only: nothing resumes it).
    {"two": (workdir, each process's result), "one": (workdir, result), "seconds": both}."""
    two = tmp_path_factory.mktemp("two") / "multi"
    one = tmp_path_factory.mktemp("one") / "single"
    t = time.time()
    launches = [
        (two, common(4, "data.eval_split=''"), 2, "first"),
        (one, common(6, "train.checkpoint_every=1000"), 1, "straight"),
    ]
    started = []
    for workdir, args, processes, tag in launches:
        logs = workdir.parent / f"{workdir.name}-{tag}"
        started.append((_start("train", ["--workdir", str(workdir), *args], processes, logs), logs))
    try:
        two_results, (one_result,) = (
            _with_summaries(_wait("train", procs, files, logs)) for (procs, files), logs in started
        )
    finally:  # a failed launch leaves no process of the other running
        for (procs, _), _ in started:
            for p in procs:
                if p.poll() is None:
                    p.kill()
    return {"two": (two, two_results), "one": (one, one_result), "seconds": time.time() - t}


@pytest.fixture(scope="module")
def two_process_run(first_runs) -> tuple[Path, list[dict]]:
    """2 processes x 4 devices, 4 steps from scratch: (workdir, each process's result). Tests
    copy the workdir to change it."""
    return first_runs["two"]


@pytest.fixture(scope="module")
def one_process_run(first_runs) -> tuple[Path, dict]:
    """1 process x 8 devices, 6 steps straight and an evaluation: (workdir, result)."""
    return first_runs["one"]


@pytest.fixture(scope="module")
def resumed_run(two_process_run, common, tmp_path_factory) -> tuple[Path, list[dict], list[str]]:
    """Both processes restart the step-4 checkpoint of `two_process_run` with a long command
    (the same schedule: warmup 2, then constant) that evaluates at step 6 (a checkpoint), and
    train on until SIGTERM, sent to process 1 only once step 7 is logged, preempts them:
    (workdir, each process's result, the command's arguments)."""
    workdir = tmp_path_factory.mktemp("resumed") / "multi"
    shutil.copytree(two_process_run[0], workdir)
    args = ["--workdir", str(workdir), *common(LONG, "train.eval_every=6")]
    args += ["train.checkpoint_every=1000"]
    results = _preempted(args, workdir, workdir.parent / "resume", 6)
    return workdir, results, args


def test_two_processes_train_save_and_resume_like_one(
    first_runs, two_process_run, one_process_run, resumed_run
):
    """2 processes x 4 devices: 4 steps (saves at 2 and 4), then both restart, evaluate at step
    6 and go on; the losses of steps 1-6 and the validation result at step 6 equal 1 process x
    8 devices training 6 steps straight (≤ 1e-5)."""
    first_run, first = two_process_run
    assert [r["summary"]["start_step"] for r in first] == [0, 0]
    assert [r["summary"]["step"] for r in first] == [4, 4]
    # Only process 0 writes logs: one line per step, one TensorBoard file.
    assert [m["step"] for m in _metrics(first_run)] == [1, 2, 3, 4]
    assert len(list((first_run / "tensorboard").glob("events.*"))) == 1
    # Both processes took part in the saves: each wrote its part of every checkpoint.
    ckpts = first_run / "checkpoints"
    steps = sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    assert steps == [2, 4]
    for step in steps:
        written = [p.name for p in (ckpts / str(step)).rglob("*")]
        for i in range(2):
            assert any(f"process_{i}" in name for name in written), (step, i, written)

    multi, second, _ = resumed_run
    assert [r["summary"]["start_step"] for r in second] == [4, 4]
    assert all("resumed from step 4" in r["stderr"] for r in second)
    assert all(r["summary"]["preempted_at"] > 6 for r in second)  # past the evaluation

    single, one = one_process_run
    assert one["summary"]["start_step"] == 0
    assert one["summary"]["step"] == 6

    got, want = _metrics(multi)[:6], _metrics(single)
    assert [m["step"] for m in got] == [m["step"] for m in want] == [1, 2, 3, 4, 5, 6]
    losses = np.array([[m["loss"] for m in got], [m["loss"] for m in want]])
    rates = np.array([[m["learning_rate"] for m in got], [m["learning_rate"] for m in want]])
    print(f"\nlosses, 2 processes x 4 devices (4 steps, then resumed): {losses[0].tolist()}")
    print(f"losses, 1 process x 8 devices (6 steps straight):       {losses[1].tolist()}")
    print(f"max |difference| {np.abs(losses[0] - losses[1]).max():.3g}")
    print(f"seconds: first runs {first_runs['seconds']:.0f}")
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(rates[0], rates[1])
    assert losses[1, -1] < losses[1, 0]

    # Evaluation at step 6: each process decoded its half; the counts were summed.
    got_eval, (want_eval,) = _metrics(multi, "valid")[0], _metrics(single, "valid")
    assert got_eval["step"] == want_eval["step"] == 6
    assert got_eval["num_utterances"] == want_eval["num_utterances"] == 8
    assert got_eval["wer"] == want_eval["wer"] and got_eval["cer"] == want_eval["cer"]
    assert got_eval["loss"] == pytest.approx(want_eval["loss"], rel=1e-5, abs=1e-5)
    assert second[0]["summary"]["eval"]["wer"] == second[1]["summary"]["eval"]["wer"]


# --- Gaps outside this module's reach, each with the change that closes it --------------------


def test_a_two_process_evaluation_reports_every_utterance(two_process_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(two_process_run[0], workdir)
    report = tmp_path / "report.json"
    args = ["--workdir", str(workdir), "--split", "test", "--report", str(report)]
    results = _launch("evaluate", args, 2, tmp_path / "evaluate")
    assert all("on 8 utterances" in r["stdout"] for r in results)  # counts summed: correct
    out = json.loads(report.read_text())
    assert out["num_utterances"] == 8
    ids = [u["id"] for u in out["utterances"]]
    assert ids == sorted(ids) and len(ids) == 8  # every process's utterances


def test_a_two_process_checkpoint_resumes_in_one_process(
    two_process_run, one_process_run, common, tmp_path
):
    """The 2-process checkpoint of step 4, resumed by 1 process x 8 devices to step 6: the
    losses of steps 5 and 6 are those of the 1-process run (the same batches, ≤ 1e-5)."""
    workdir = tmp_path / "run"
    shutil.copytree(two_process_run[0], workdir)
    args = ["--workdir", str(workdir), *common(6, "data.eval_split=''")]
    (one,) = _launch("train", args, 1, tmp_path / "resume", check=False)
    assert one["returncode"] == 0, one["stderr"][-1500:]  # fails: process_0-of-1.json missing
    assert _summary(one["stdout"])["start_step"] == 4
    got, want = _metrics(workdir)[4:], _metrics(one_process_run[0])[4:]
    assert [m["step"] for m in got] == [m["step"] for m in want] == [5, 6]
    np.testing.assert_allclose(
        [m["loss"] for m in got], [m["loss"] for m in want], rtol=1e-5, atol=1e-5
    )


def test_sigterm_saves_every_process_at_one_step(resumed_run, tmp_path):
    """Preemption of a multi-process run: SIGTERM reaches one process only (process 1); jax's
    preemption sync point makes both save the same step and exit 0; both resume there when
    the same command is rerun (and are preempted alike again). The first preemption is that
    of `resumed_run` (itself resumed from step 4); the rerun works on a copy of its workdir."""
    first_dir, first, args = resumed_run
    stop = first[0]["summary"]["preempted_at"]
    assert [r["summary"]["preempted_at"] for r in first] == [stop, stop] and 6 < stop < LONG
    assert (first_dir / "checkpoints" / str(stop)).is_dir()
    workdir = tmp_path / "run"
    shutil.copytree(first_dir, workdir)
    args = [str(workdir) if a == str(first_dir) else a for a in args]
    # The same command again (the same program: loaded from the compilation cache).
    resumed = [r["summary"] for r in _preempted(args, workdir, tmp_path / "resumed", stop)]
    assert [s["start_step"] for s in resumed] == [stop, stop]
    again = resumed[0]["preempted_at"]
    assert [s["preempted_at"] for s in resumed] == [again, again] and stop < again < LONG
    assert (workdir / "checkpoints" / str(again)).is_dir()
