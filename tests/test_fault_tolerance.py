"""The train loop under faults: non-finite steps, corrupt checkpoints (one process and two),
kill -9 during saves and preemption (SIGTERM) with a bit-exact resume, a failed save, the
compilation cache and the number of compiled train-step variants.

Cost: every in-process run here (and the single step of the first test, built by the loop's
own `jit_train_step`) is the quick config's 6-step schedule on one bucket: one train-step
program, compiled once and then served by the persistent compilation cache. The `jaxseq
train` subprocesses (one bucket too) share one compilation cache of their own, so only the
first compiles; their uninterrupted reference runs in this process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseq.config import load_config
from jaxseq.data.pipeline import load_dataset_info, make_train_iterator
from jaxseq.errors import JaxseqError
from jaxseq.parallel.batch import to_global
from jaxseq.parallel.mesh import make_mesh
from jaxseq.parallel.sharding import sharding_context
from jaxseq.tasks import build_task
from jaxseq.train.checkpoint import Checkpointer
from jaxseq.train.loop import train
from jaxseq.train.optimizer import make_optimizer
from jaxseq.train.state import abstract_train_state, create_train_state
from jaxseq.train.steps import jit_train_step
from tests.conftest import REPO, TINY_CONFIG, quick_config
from tests.test_multiprocess import _common, _launch, _summary


def _setup(tiny_dataset, overrides=()):
    cfg = load_config(TINY_CONFIG, [f"data.dataset={tiny_dataset}", "mesh.data=1", *overrides])
    task = build_task(cfg, load_dataset_info(tiny_dataset, "train"))
    return cfg, task, make_optimizer(cfg.optim, cfg.train.num_steps), make_mesh(cfg.mesh)


def _quick(tiny_dataset, *extra):
    """`quick_config` on a 6-step schedule: the train step of every in-process run here."""
    return quick_config(tiny_dataset, "train.num_steps=6", *extra)


def _pipeline_batches(cfg, task, n: int) -> list[dict[str, np.ndarray]]:
    """The first `n` batches of jaxseq's pipeline under `cfg` (float16 features)."""
    info = load_dataset_info(cfg.data.dataset, "train")
    it = make_train_iterator(
        cfg.data.dataset,
        "train",
        cfg.data,
        task.tokenizer,
        seed=cfg.data.shuffle_seed,
        label_lengths=task.label_lengths(cfg.data.dataset, info, "train"),
    )
    out = [next(it) for _ in range(n)]
    it.close()
    return out


def _poisoned(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`batch` with one NaN in row 1's features (inside its length)."""
    features = batch["features"].copy()
    assert batch["feature_lengths"][1] > 7
    features[1, 7, 3] = np.nan
    return {**batch, "features": features}


def test_a_nonfinite_step_changes_nothing(tiny_dataset):
    """The loop's own jitted step (state sharded and donated, the batch sent by `to_global`)."""
    cfg = _quick(tiny_dataset)
    task = build_task(cfg, load_dataset_info(tiny_dataset, "train"))
    tx, mesh = make_optimizer(cfg.optim, cfg.train.num_steps), make_mesh(cfg.mesh)
    init = task.dummy_batch(1, cfg.data.buckets[0])
    state = create_train_state(task, tx, init, mesh, seed=0)
    step_fn = jit_train_step(task, tx, mesh, abstract_train_state(task, tx, init, mesh)[1])
    (batch,) = _pipeline_batches(cfg, task, 1)

    def step(state, host, streak):
        with sharding_context(mesh):
            return step_fn(state, to_global(host, mesh), streak)

    streak = jnp.zeros((), jnp.int32)
    state, metrics, streak = step(state, batch, streak)
    assert float(metrics["skipped"]) == 0 and int(streak) == 0
    before = jax.device_get(state)  # before the step that donates `state`
    state, metrics, streak = step(state, _poisoned(batch), streak)
    after = jax.device_get(state)
    assert float(metrics["skipped"]) == 1 and int(streak) == 1 and int(after.step) == 2
    assert float(metrics["loss"]) == 0 and float(metrics["steps"]) == 0  # not averaged in
    old = jax.tree.leaves((before.params, before.opt_state))
    for a, b in zip(old, jax.tree.leaves((after.params, after.opt_state)), strict=True):
        np.testing.assert_array_equal(a, b)
    state, metrics, streak = step(state, batch, streak)
    assert float(metrics["skipped"]) == 0 and int(streak) == 0


def test_consecutive_nonfinite_steps_stop_training(tiny_dataset, tmp_path):
    """Every batch gives a non-finite loss (a NaN in its features)."""
    cfg = _quick(tiny_dataset, "train.max_nonfinite_steps=3")
    task = build_task(cfg, load_dataset_info(tiny_dataset, "train"))
    batches = [_poisoned(b) for b in _pipeline_batches(cfg, task, 6)]
    with pytest.raises(JaxseqError, match="step 3: 3 steps in a row had a non-finite loss"):
        train(cfg, tmp_path, data=batches)
    assert not list((tmp_path / "checkpoints").glob("[0-9]*"))  # nothing non-finite was saved


def test_a_failed_save_is_an_error(tiny_dataset, tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    def full_disk(self, step, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
    cfg = _quick(tiny_dataset, "train.checkpoint_every=1")
    with pytest.raises(JaxseqError, match=r"saving checkpoint 1 to .*checkpoints failed.*space"):
        train(cfg, tmp_path)


# --- Corrupt checkpoints ------------------------------------------------------------------------


def _every_second_step(tiny_dataset):
    return _quick(tiny_dataset, "train.checkpoint_every=2", "train.keep_last=3")


@pytest.fixture(scope="module")
def six_steps(tiny_dataset, tmp_path_factory) -> Path:
    """A workdir trained 6 steps in this process: checkpoints 2, 4 and 6."""
    workdir = tmp_path_factory.mktemp("six") / "run"
    train(_every_second_step(tiny_dataset), workdir)
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4", "6"]
    return workdir


def _damaged_copy(six_steps: Path, workdir: Path) -> Path:
    """A copy of `six_steps` in which checkpoint 6 lost its metadata and checkpoint 4 its
    array data (a deleted shard): only 2 restores. Returns its checkpoints folder."""
    shutil.copytree(six_steps, workdir)
    ckpts = workdir / "checkpoints"
    shards = [p for p in (ckpts / "4" / "state").rglob("*") if p.is_file() and "ocdbt" in str(p)]
    shards = [p for p in shards if p.parent.name == "d"] or shards
    victims = [*shards, ckpts / "6" / "state" / "_METADATA"]
    assert shards and all(p.exists() for p in victims)
    for p in victims:
        p.unlink()
    return ckpts


def test_corrupt_newest_checkpoints_fall_back_to_the_last_good_one(
    six_steps, tiny_dataset, tmp_path
):
    """6 without metadata, then 4 with a deleted shard: each fails to restore (else training
    would resume there), is set aside as corrupt-<step>, and training goes on from 2 (saving
    4 and 6 anew)."""
    ckpts = _damaged_copy(six_steps, tmp_path / "run")
    summary = train(_every_second_step(tiny_dataset), tmp_path / "run")
    assert summary["start_step"] == 2 and summary["step"] == 6
    assert (ckpts / "corrupt-4").is_dir() and (ckpts / "corrupt-6").is_dir()
    assert sorted(p.name for p in ckpts.iterdir() if p.name.isdigit()) == ["2", "4", "6"]


def test_two_processes_set_corrupt_checkpoints_aside_once(six_steps, tiny_dataset, tmp_path):
    """A 2-process restart over the same damaged checkpoints: both processes agree on step 2,
    and only process 0 renames (the folder is shared; the others wait for it), so neither
    fails on a folder the other moved and there is one renamed copy of each."""
    ckpts = _damaged_copy(six_steps, tmp_path / "run")
    # num_steps 2: restored at 2, nothing left to train (nothing to compile).
    args = ["--workdir", str(tmp_path / "run"), *_common(tiny_dataset, 2, "data.eval_split=''")]
    results = _launch("train", args, 2, tmp_path / "restart")
    summaries = [_summary(r["stdout"]) for r in results]
    assert [(s["start_step"], s["step"]) for s in summaries] == [(2, 2), (2, 2)]
    assert sorted(p.name for p in ckpts.iterdir()) == ["2", "corrupt-4", "corrupt-6"]


# --- Preemption and kill -9: `jaxseq train` subprocesses ----------------------------------------

STEPS = 60  # a SIGTERM or kill after a few logged steps lands well before the end


def _train_cmd(tiny_dataset, workdir, cache, *extra):
    return [
        sys.executable,
        "-m",
        "jaxseq.cli",
        "train",
        "--config",
        str(TINY_CONFIG),
        "--workdir",
        str(workdir),
        f"data.dataset={tiny_dataset}",
        f"train.num_steps={STEPS}",
        "train.log_every=1",
        "train.checkpoint_every=1000",
        "data.eval_split=''",
        f"train.compilation_cache_dir={cache}",
        "data.buckets=[512]",  # one compiled step, as in the reference run (quick_config)
        *extra,
    ]


def _env():
    return {**os.environ, "JAX_PLATFORMS": "cpu"}


def _run(cmd) -> dict:
    """Runs a `jaxseq train` command to completion; its JSON summary."""
    run = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout)


def _train_lines(workdir) -> dict[int, dict]:
    """Logged train metrics by step (a step logged again after a restart: its last line),
    without the wall-clock ones."""
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    clock = ("time", "utterances_per_second", "tokens_per_second", "audio_seconds_per_second")
    clock += ("tflops_per_second", "mfu", "data_wait")
    return {
        m["step"]: {k: v for k, v in m.items() if k not in clock}
        for m in lines
        if m["split"] == "train"
    }


def _logged_steps(workdir) -> int:
    """Complete lines of a running `jaxseq train`'s metrics.jsonl (one per step; no eval)."""
    path = workdir / "metrics.jsonl"
    return path.read_text().count("\n") if path.exists() else 0


def _signal_after(proc: subprocess.Popen, workdir: Path, lines: int, signum: int) -> None:
    """Sends `signum` to `proc` once `workdir`'s metrics.jsonl holds `lines` lines."""
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if _logged_steps(workdir) >= lines:
            proc.send_signal(signum)
            return
        time.sleep(0.01)


def _restore(workdir, tiny_dataset, step):
    cfg, task, tx, mesh = _setup(tiny_dataset, [f"train.num_steps={STEPS}", "data.buckets=[512]"])
    abstract, _ = abstract_train_state(task, tx, task.dummy_batch(1, cfg.data.buckets[0]), mesh)
    ckpt = Checkpointer(workdir / "checkpoints", cfg.train, read_only=True)
    state = jax.device_get(ckpt.restore(step, abstract))
    ckpt.close()
    return state


@pytest.fixture(scope="module")
def straight(tiny_dataset, tmp_path_factory) -> tuple[Path, dict]:
    """(workdir, summary) of STEPS steps straight, the reference run of this section: in this
    process (no fault to survive), with the subprocesses' config."""
    workdir = tmp_path_factory.mktemp("straight") / "run"
    cfg = quick_config(tiny_dataset, f"train.num_steps={STEPS}", "train.checkpoint_every=1000")
    return workdir, train(cfg, workdir)


def test_kill9_during_saves_then_sigterm_each_resume_bit_exact(straight, tiny_dataset, tmp_path):
    """One workdir through both faults, each in its own `jaxseq train` process:

    1. kill -9 while saving every step: the restart ignores and removes the unfinished save
       and resumes from the last complete checkpoint;
    2. that restart (no periodic saves) gets SIGTERM after k more steps: it saves step k and
       exits 0, and a new process trains the N - k steps left from there.

    Every step's logged loss, gradient norm, utterance and token counts (the restored
    iterator yields the same batches) and every array of the final state (parameters,
    optimizer state, RNG, step) are bitwise those of N steps straight."""
    reference, summary = straight
    assert summary["compiled_variants"] == len(summary["compiled_shapes"]) >= 1

    # 1. kill -9 during saves; the first run with a fresh compilation cache.
    cache = tmp_path.parent / f"{tmp_path.name}-xla_cache"
    cmd = _train_cmd(tiny_dataset, tmp_path, cache)
    saving = [*cmd, "train.checkpoint_every=1", "train.keep_last=3"]
    proc = subprocess.Popen(saving, cwd=REPO, env=_env(), stdout=subprocess.PIPE, text=True)
    _signal_after(proc, tmp_path, 8, signal.SIGKILL)  # no handler, no cleanup
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "kill -9 landed after the run's end"
    assert any(cache.iterdir())  # the persistent compilation cache was written
    ckpts = tmp_path / "checkpoints"
    complete = sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    # An unfinished save is named "<step>.orbax-checkpoint-tmp" until its atomic rename. If the
    # kill did not catch one in flight, leave one behind as it would have.
    unfinished = ckpts / f"{complete[-1] + 1}.orbax-checkpoint-tmp"
    if not unfinished.exists():
        shutil.copytree(ckpts / str(complete[-1]), unfinished)

    # 2. The restart (the same compiled step: the cache serves it) saves at the end only, and
    # is preempted after 5 steps of its own.
    logged = _logged_steps(tmp_path)
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _signal_after(proc, tmp_path, logged + 5, signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    restart = json.loads(out)
    assert restart["start_step"] == complete[-1], "the restart after kill -9"
    leftovers = [p.name for p in ckpts.iterdir() if "tmp" in p.name]
    assert not leftovers, "the unfinished save is removed"
    stopped = restart["preempted_at"]
    assert complete[-1] + 5 <= stopped < STEPS
    assert _run(cmd)["start_step"] == stopped, "the SIGTERM saved the step it stopped at"

    assert _train_lines(tmp_path) == _train_lines(reference)
    a, b = _restore(reference, tiny_dataset, STEPS), _restore(tmp_path, tiny_dataset, STEPS)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
