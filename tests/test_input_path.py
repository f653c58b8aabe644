"""The input hot path: training batches keep the records' float16 features up to the device
(the step equals the float32 step, for a model that reads them and one that predicts them),
the read threads come from the config or the cores, and the loop prefetches the next batch
while a step runs without moving the saved data position (a preempted run resumes on the batch
a straight run takes), for jaxseq's pipeline and for user iterables (float32 batches too)."""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from grain.sources import ArrayRecordDataSource

from jaxseq.config import DataConfig, load_config
from jaxseq.data.eval_batches import make_eval_batches
from jaxseq.data.pipeline import (
    load_dataset_info,
    make_train_iterator,
    read_threads,
)
from jaxseq.data.records import decode_record
from jaxseq.errors import JaxseqError
from jaxseq.parallel.mesh import make_mesh
from jaxseq.tasks import build_task
from jaxseq.tasks.base import STEP_KEY
from jaxseq.train.checkpoint import Checkpointer
from jaxseq.train.loop import train
from jaxseq.train.optimizer import make_optimizer
from jaxseq.train.preemption import PreemptionWatch
from jaxseq.train.state import abstract_train_state, create_train_state
from jaxseq.train.steps import make_train_step
from tests.conftest import REPO, TINY_CONFIG, quick_config

# Wall-clock fields of a metrics.jsonl line (everything else must match between runs).
CLOCK = (
    "time",
    "utterances_per_second",
    "tokens_per_second",
    "audio_seconds_per_second",
    "tflops_per_second",
    "mfu",
    "data_wait",
)


def _train_lines(workdir) -> dict[int, dict]:
    """metrics.jsonl's train lines by step (a step logged twice: its last line), clock-free."""
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {
        m["step"]: {k: v for k, v in m.items() if k not in (*CLOCK, "split")}
        for m in lines
        if m["split"] == "train"
    }


def _first_batch(cfg, task, dataset) -> dict[str, np.ndarray]:
    info = load_dataset_info(dataset, "train")
    it = make_train_iterator(
        dataset,
        "train",
        cfg.data,
        task.tokenizer,
        seed=0,
        label_lengths=task.label_lengths(dataset, info, "train"),
    )
    batch = next(it)
    it.close()
    return batch


# --- float16 features ---------------------------------------------------------------------------


def _family(family: str, dataset) -> tuple:
    """(cfg, task, float16 host batch) of the tiny `family` model on its own pipeline's batch
    of the tiny corpus."""
    configs = {"ctc": "ctc_tiny", "tts": "tts_tiny"}
    common = [f"data.dataset={dataset}", "mesh.data=1"]
    extra = [] if family == "tts" else ["spec_augment.enabled=true"]
    cfg = load_config(REPO / "configs" / f"{configs[family]}.yaml", [*common, *extra])
    task = build_task(cfg, load_dataset_info(dataset, "train"))
    return cfg, task, _first_batch(cfg, task, dataset)


# The widening is one function of the step, the same for every family: the two families whose
# features play the two roles, the input (CTC, through SpecAugment) and the target (TTS).
@pytest.mark.parametrize("family", ["ctc", "tts"])
def test_float16_features_train_like_their_float32_widening(tiny_dataset, family):
    """The train step on a float16 batch equals the step on its float32 widening (loss,
    metrics, updated parameters), and both equal the task's loss on the float32 batch computed
    directly (the path before this change); the float16 dummy batch builds the same state."""
    cfg, task, half = _family(family, tiny_dataset)
    assert half["features"].dtype == np.float16
    full = {**half, "features": half["features"].astype(np.float32)}
    tx = make_optimizer(cfg.optim, cfg.train.num_steps)
    mesh = make_mesh(cfg.mesh)
    dummy = task.dummy_batch(2, 64)
    assert dummy["features"].dtype == np.float16
    wide = {**dummy, "features": dummy["features"].astype(np.float32)}
    shapes = [abstract_train_state(task, tx, b, mesh)[0] for b in (dummy, wide)]
    assert jax.tree.map(lambda x: (x.shape, x.dtype), shapes[0]) == jax.tree.map(
        lambda x: (x.shape, x.dtype), shapes[1]
    )

    state = create_train_state(task, tx, half, mesh, seed=0)
    step = jax.jit(make_train_step(task, tx))
    streak = jnp.zeros((), jnp.int32)
    new_half, m_half, _ = jax.device_get(step(state, half, streak))
    new_full, m_full, _ = jax.device_get(step(state, full, streak))
    assert float(m_half["skipped"]) == 0
    # Bit for bit: the step widens first, so both run the same float32 program. (Fed float16
    # as is, SpecAugment's mask value and other fills round to float16, and the metrics of
    # ctc, seq2seq, rnn and classify differ by ~1e-6.)
    for name in m_full:
        np.testing.assert_array_equal(m_half[name], m_full[name], err_msg=name)
    for a, b in zip(
        jax.tree.leaves(new_half.params), jax.tree.leaves(new_full.params), strict=True
    ):
        np.testing.assert_array_equal(a, b)

    rows = len(full["features"])
    direct = {**full, STEP_KEY: jnp.zeros((rows,), jnp.int32)}
    loss_fn = jax.jit(task.loss_fn, static_argnums=3)
    want, _ = loss_fn(state.params, direct, jax.random.fold_in(state.rng, 0), True)
    np.testing.assert_allclose(m_half["loss"], want, rtol=1e-6)


def test_train_batches_hold_the_stored_float16_and_eval_batches_float32(tiny_dataset):
    cfg = load_config(TINY_CONFIG, [f"data.dataset={tiny_dataset}"])
    task = build_task(cfg, load_dataset_info(tiny_dataset, "train"))
    batch = _first_batch(cfg, task, tiny_dataset)
    assert batch["features"].dtype == np.float16
    # Row 0 is a stored record, bit for bit: find it by its label ids.
    info = load_dataset_info(tiny_dataset, "train")
    shards = [str(tiny_dataset / s) for s in info["splits"]["train"]["shards"]]
    records = [decode_record(r) for r in ArrayRecordDataSource(shards)]
    n, m = int(batch["feature_lengths"][0]), int(batch["label_lengths"][0])
    ids = list(batch["labels"][0, :m])
    match = [r for r in records if list(task.tokenizer.encode(r["text"])) == ids]
    assert any(
        r["features"].dtype == np.float16
        and np.array_equal(r["features"], batch["features"][0, :n])
        for r in match
    )
    evaluation, _, _ = next(make_eval_batches(tiny_dataset, "test", cfg.data, task.tokenizer))
    assert evaluation["features"].dtype == np.float32


def test_read_threads_from_the_config_or_the_cores(tiny_dataset):
    cores = os.cpu_count() or 1
    assert read_threads(DataConfig(read_threads=3)) == 3
    assert read_threads(DataConfig()) == min(8, cores)
    assert read_threads(DataConfig(worker_count=4)) == min(8, max(1, cores // 4))
    with pytest.raises(ValueError, match="data.read_threads=-1"):
        read_threads(DataConfig(read_threads=-1))
    # The batches do not depend on the thread count.
    cfg = load_config(TINY_CONFIG, [f"data.dataset={tiny_dataset}"])
    task = build_task(cfg, load_dataset_info(tiny_dataset, "train"))
    got = []
    for threads in (1, 4):
        overrides = [f"data.dataset={tiny_dataset}", f"data.read_threads={threads}"]
        data = load_config(TINY_CONFIG, overrides).data
        it = make_train_iterator(tiny_dataset, "train", data, task.tokenizer, seed=0)
        got.append([next(it) for _ in range(4)])
        it.close()
    for a, b in zip(*got, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


# --- prefetching in the loop --------------------------------------------------------------------


def _quick(tiny_dataset, *extra):
    """`quick_config` with no checkpoint before the run's end, on a 3-step schedule: every run
    below trains one program for float16 batches and one for float32 ones (the persistent
    compilation cache serves each after its first compile)."""
    return quick_config(tiny_dataset, "train.checkpoint_every=1000", "train.num_steps=3", *extra)


@pytest.fixture(scope="module")
def straight(tiny_dataset, tmp_path_factory):
    """Three steps straight on jaxseq's pipeline."""
    workdir = tmp_path_factory.mktemp("straight") / "run"
    summary = train(_quick(tiny_dataset), workdir)
    assert summary["step"] == 3
    return workdir


def _saved_position(workdir, step: int, cfg) -> dict:
    """The data-iterator state checkpoint `step` holds."""

    class Probe:
        def set_state(self, state):
            self.state = state

    task = build_task(cfg, load_dataset_info(cfg.data.dataset, "train"))
    tx = make_optimizer(cfg.optim, cfg.train.num_steps)
    abstract, _ = abstract_train_state(
        task, tx, task.dummy_batch(1, cfg.data.buckets[0]), make_mesh(cfg.mesh)
    )
    probe = Probe()
    ckpt = Checkpointer(workdir / "checkpoints", cfg.train, read_only=True)
    ckpt.restore(step, abstract, probe)
    ckpt.close()
    return probe.state


def test_a_preempted_run_resumes_on_the_batch_it_had_not_consumed(
    straight, tiny_dataset, tmp_path, monkeypatch
):
    """Preempted after step 2 (batch 3 already prefetched): checkpoint 2 holds the position
    after batch 2, and the resumed run logs the straight run's steps exactly."""
    cfg = _quick(tiny_dataset)
    with monkeypatch.context() as patch:
        patch.setattr(PreemptionWatch, "should_stop", lambda self, step: step == 2)
        summary = train(cfg, tmp_path)
    assert summary["preempted_at"] == 2
    assert _saved_position(tmp_path, 2, cfg) == {"step": 2}
    assert train(cfg, tmp_path)["start_step"] == 2
    assert _saved_position(tmp_path, 3, cfg) == {"step": 3}
    assert _saved_position(straight, 3, cfg) == {"step": 3}
    assert _train_lines(tmp_path) == _train_lines(straight)


def _host_batches(tiny_dataset, n: int) -> list[dict[str, np.ndarray]]:
    """The straight run's first `n` batches, widened to float32 (a user's batches)."""
    cfg = _quick(tiny_dataset)
    task = build_task(cfg, load_dataset_info(tiny_dataset, "train"))
    it = make_train_iterator(tiny_dataset, "train", cfg.data, task.tokenizer, seed=0)
    out = [next(it) for _ in range(n)]
    it.close()
    return [{**b, "features": b["features"].astype(np.float32)} for b in out]


def test_user_float32_batches_are_read_once_each_and_train_alike(straight, tiny_dataset, tmp_path):
    """float32 user batches train to the float16 pipeline run's metrics; the loop reads one
    batch per step and none past the last; running out ends training with a checkpoint."""
    batches = _host_batches(tiny_dataset, 4)
    pulled = []

    def user_data(n):
        for i, b in enumerate(batches[:n]):
            pulled.append(i)
            yield b

    cfg = _quick(tiny_dataset)  # the straight run's schedule
    summary = train(cfg, tmp_path / "three", data=user_data(4))
    assert summary["step"] == 3 and pulled == list(range(3))  # batch 3 was never read
    got, want = _train_lines(tmp_path / "three"), _train_lines(straight)
    assert sorted(got) == sorted(want) == list(range(1, 4))
    for step, line in want.items():
        for name, value in line.items():
            if name == "flops_per_step":  # of another program: its float16 input is widened
                continue
            assert got[step][name] == pytest.approx(value, rel=1e-6, abs=1e-7), (step, name)

    pulled.clear()
    summary = train(cfg, tmp_path / "out", data=user_data(2))
    assert summary["data_exhausted_at"] == 2 and summary["step"] == 2 and pulled == [0, 1]
    ckpts = sorted(int(p.name) for p in (tmp_path / "out" / "checkpoints").iterdir())
    assert ckpts == [2]


def test_a_malformed_user_batch_fails_at_its_own_step(tiny_dataset, tmp_path):
    """The bad batch is prefetched during step 2, but steps 1 and 2 are logged and the error
    names step 2 (the 0-based step that would have used it)."""
    batches = _host_batches(tiny_dataset, 2)
    bad = {k: v for k, v in batches[0].items() if k != "labels"}
    cfg = _quick(tiny_dataset)
    with pytest.raises(JaxseqError, match=r"batch of step 2 lacks \['labels'\]"):
        train(cfg, tmp_path, data=[*batches, bad])
    assert sorted(_train_lines(tmp_path)) == [1, 2]


def test_data_wait_counts_the_time_spent_waiting_for_batches(tiny_dataset, tmp_path):
    """A source that takes 1 s a batch: most of each window is data wait."""
    batches = _host_batches(tiny_dataset, 3)

    def slow():
        for b in batches:
            time.sleep(1.0)
            yield b

    train(_quick(tiny_dataset), tmp_path, data=slow())
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    waits = [m["data_wait"] for m in lines if m["split"] == "train"]
    # Window 1 waits for batches 1 and 2 (and compiles), window 2 for batch 3 while its step
    # (a fraction of a second) runs; the last window reads nothing.
    assert len(waits) == 3 and waits[0] > 0 and waits[1] > 0.5 and waits[2] == 0
