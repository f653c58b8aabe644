"""The train loop under faults: non-finite steps, preemption (SIGTERM) with a bit-exact resume,
the compilation cache and the number of compiled train-step variants."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseq.config import load_config
from jaxseq.data.pipeline import load_dataset_info
from jaxseq.errors import JaxseqError
from jaxseq.parallel.mesh import make_mesh
from jaxseq.tasks import build_task
from jaxseq.tasks.ctc import CTCTask
from jaxseq.train.checkpoint import Checkpointer
from jaxseq.train.loop import make_train_step, train
from jaxseq.train.optimizer import make_optimizer
from jaxseq.train.state import abstract_train_state, create_train_state
from tests.conftest import REPO, TINY_CONFIG


def _setup(tiny_dataset, overrides=()):
    cfg = load_config(TINY_CONFIG, [f"data.dataset={tiny_dataset}", "mesh.data=1", *overrides])
    task = build_task(cfg, load_dataset_info(tiny_dataset, "train"))
    return cfg, task, make_optimizer(cfg.optim, cfg.train.num_steps), make_mesh(cfg.mesh)


def test_a_nonfinite_step_changes_nothing(tiny_dataset):
    cfg, task, tx, mesh = _setup(tiny_dataset)
    batch = task.dummy_batch(4, 128)
    batch["features"] = np.random.default_rng(0).normal(size=batch["features"].shape)
    batch["labels"][:, :3], batch["label_lengths"][:] = 5, 3
    state = create_train_state(task, tx, batch, mesh, seed=0)
    step = jax.jit(make_train_step(task, tx))
    streak = jnp.zeros((), jnp.int32)
    state, metrics, streak = step(state, batch, streak)
    assert float(metrics["skipped"]) == 0 and int(streak) == 0
    before = jax.device_get(state)
    poisoned = {**batch, "features": batch["features"].copy()}
    poisoned["features"][1, 7, 3] = np.nan
    state, metrics, streak = step(state, poisoned, streak)
    after = jax.device_get(state)
    assert float(metrics["skipped"]) == 1 and int(streak) == 1 and int(after.step) == 2
    assert float(metrics["loss"]) == 0 and float(metrics["steps"]) == 0  # not averaged in
    old = jax.tree.leaves((before.params, before.opt_state))
    for a, b in zip(old, jax.tree.leaves((after.params, after.opt_state)), strict=True):
        np.testing.assert_array_equal(a, b)
    state, metrics, streak = step(state, batch, streak)
    assert float(metrics["skipped"]) == 0 and int(streak) == 0


def test_consecutive_nonfinite_steps_stop_training(tiny_dataset, tmp_path, monkeypatch):
    original = CTCTask.loss_fn

    def nan_loss(self, params, batch, rng, train):
        loss, metrics = original(self, params, batch, rng, train)
        return loss * jnp.nan, metrics

    monkeypatch.setattr(CTCTask, "loss_fn", nan_loss)
    cfg = load_config(
        TINY_CONFIG,
        [f"data.dataset={tiny_dataset}", "train.max_nonfinite_steps=3", "train.log_every=1"],
    )
    with pytest.raises(JaxseqError, match="step 3: 3 steps in a row had a non-finite loss"):
        train(cfg, tmp_path)
    assert not list((tmp_path / "checkpoints").glob("[0-9]*"))  # nothing non-finite was saved


STEPS = 60


def _train_cmd(tiny_dataset, workdir, *extra):
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
    """Logged train metrics by step, without the wall-clock ones."""
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    clock = ("time", "utterances_per_second")
    return {
        m["step"]: {k: v for k, v in m.items() if k not in clock}
        for m in lines
        if m["split"] == "train"
    }


def _losses(workdir):
    return {step: m["loss"] for step, m in _train_lines(workdir).items()}


def _restore(workdir, tiny_dataset, step):
    cfg, task, tx, mesh = _setup(tiny_dataset, [f"train.num_steps={STEPS}"])
    abstract, _ = abstract_train_state(task, tx, task.dummy_batch(1, cfg.data.buckets[0]), mesh)
    ckpt = Checkpointer(workdir / "checkpoints", cfg.train, read_only=True)
    state = jax.device_get(ckpt.restore(step, abstract))
    ckpt.close()
    return state


def test_sigterm_saves_and_the_restart_is_bit_exact(tiny_dataset, tmp_path):
    """N steps straight == k steps, SIGTERM (save, exit 0), new process, N - k steps: every
    per-step loss and every array of the final state (parameters, optimizer state, RNG, step)
    is bitwise equal."""
    straight, preempted = tmp_path / "straight", tmp_path / "preempted"
    cache = tmp_path / "xla_cache"
    summary = _run(_train_cmd(tiny_dataset, straight, f"train.compilation_cache_dir={cache}"))
    assert summary["compiled_variants"] == len(summary["compiled_shapes"]) >= 1
    assert any(cache.iterdir())  # the persistent compilation cache was written

    proc = subprocess.Popen(
        _train_cmd(tiny_dataset, preempted),
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (preempted / "metrics.jsonl").exists() and len(_losses(preempted)) >= 5:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.02)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    stopped = json.loads(out)["preempted_at"]
    assert 5 <= stopped < STEPS
    assert _run(_train_cmd(tiny_dataset, preempted))["start_step"] == stopped

    # Every step's loss, gradient norm, and its batch's utterance and token counts, exactly:
    # the restored iterator yields the same batches.
    assert _train_lines(preempted) == _train_lines(straight)
    a, b = _restore(straight, tiny_dataset, STEPS), _restore(preempted, tiny_dataset, STEPS)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def _quick(tiny_dataset, *extra):
    return load_config(
        TINY_CONFIG,
        [f"data.dataset={tiny_dataset}", "data.eval_split=''", "train.log_every=1", *extra],
    )


@pytest.mark.parametrize("damage", ["deleted shard", "missing metadata"])
def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous(tiny_dataset, tmp_path, damage):
    cfg = _quick(tiny_dataset, "train.num_steps=4", "train.checkpoint_every=2")
    train(cfg, tmp_path)
    state_dir = tmp_path / "checkpoints" / "4" / "state"
    if damage == "deleted shard":
        victims = [p for p in state_dir.rglob("*") if p.is_file() and "ocdbt" in str(p)]
        victims = [p for p in victims if p.parent.name == "d"] or victims
    else:
        victims = [state_dir / "_METADATA"]
    assert victims and all(p.exists() for p in victims)
    for p in victims:
        p.unlink()
    summary = train(_quick(tiny_dataset, "train.num_steps=6", "train.checkpoint_every=2"), tmp_path)
    assert summary["start_step"] == 2 and summary["step"] == 6
    assert (tmp_path / "checkpoints" / "corrupt-4").is_dir()


def test_kill9_during_saves_resumes_from_the_last_complete_checkpoint(tiny_dataset, tmp_path):
    """Killed while saving every step: the restart ignores and removes the unfinished save."""
    cmd = _train_cmd(tiny_dataset, tmp_path, "train.checkpoint_every=1", "train.keep_last=3")
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (tmp_path / "metrics.jsonl").exists() and len(_losses(tmp_path)) >= 8:
            proc.kill()  # SIGKILL: no handler, no cleanup
            break
        time.sleep(0.01)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    ckpts = tmp_path / "checkpoints"
    complete = sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    # An unfinished save is named "<step>.orbax-checkpoint-tmp" until its atomic rename. If the
    # kill did not catch one in flight, leave one behind as it would have.
    unfinished = ckpts / f"{complete[-1] + 1}.orbax-checkpoint-tmp"
    if not unfinished.exists():
        shutil.copytree(ckpts / str(complete[-1]), unfinished)
    assert _run(cmd)["start_step"] == complete[-1]
    leftovers = [p.name for p in ckpts.iterdir() if "tmp" in p.name]
    assert not leftovers


def test_a_failed_save_is_an_error(tiny_dataset, tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    def full_disk(self, step, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
    cfg = _quick(tiny_dataset, "train.num_steps=2", "train.checkpoint_every=1")
    with pytest.raises(JaxseqError, match=r"saving checkpoint 1 to .*checkpoints failed.*space"):
        train(cfg, tmp_path)
