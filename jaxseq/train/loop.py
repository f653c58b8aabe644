"""The one train loop every model family uses.

mesh → input → task + sharded state (fresh or restored) → jitted, donated train step (the
next batch read and sent to the devices while it runs) → callbacks → metrics at log steps →
validation (an injected evaluator) → asynchronous checkpoints (state + data iterator, at the
last batch a step consumed) → an optional profiler trace of train.profile_steps. The task,
the data, the evaluator and callbacks can all be passed in (jaxseq.api.train wires the
defaults).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from jaxseq.config import (
    FRONTEND_FILE,
    Config,
    ConfigError,
    check_local_path,
    save_config,
    seconds_per_frame,
    to_yaml,
)
from jaxseq.data.pipeline import load_dataset_info, make_train_iterator
from jaxseq.errors import JaxseqError
from jaxseq.parallel.batch import to_global
from jaxseq.parallel.mesh import data_parallel_size, make_mesh
from jaxseq.parallel.sharding import replicated, sharding_context
from jaxseq.tasks.base import Task
from jaxseq.tasks.registry import build_task
from jaxseq.train.checkpoint import Checkpointer, restore_workdir_params
from jaxseq.train.chips import peak_tflops
from jaxseq.train.optimizer import learning_rate_schedule, make_optimizer
from jaxseq.train.preemption import PreemptionWatch
from jaxseq.train.state import abstract_like, abstract_train_state, create_train_state
from jaxseq.train.steps import check_batch_sizes, jit_train_step
from jaxseq.train.throughput import Throughput, device_flops
from jaxseq.train.writers import MetricWriter


def _nonfinite_error(step: int, streak: int, limit: int) -> JaxseqError:
    return JaxseqError(
        f"step {step}: {streak} steps in a row had a non-finite loss or gradients "
        f"(train.max_nonfinite_steps={limit}); the parameters are those of the last good "
        "step. Lower optim.learning_rate, use train.compute_dtype=float32, or check the data"
    )


def _all_finite(tree: Any) -> jax.Array:
    return jax.tree.reduce(
        jnp.logical_and, jax.tree.map(lambda x: jnp.all(jnp.isfinite(x)), tree), jnp.array(True)
    )


def _write_workdir_files(cfg: Config, workdir: Path, task: Task, info: dict) -> None:
    previous = workdir / "config.yaml"
    if previous.exists() and previous.read_text() != to_yaml(cfg):
        logging.warning("config differs from the one saved in %s; saving the new one", previous)
    save_config(cfg, previous)
    frontend = {"frontend": info["frontend"], "text": info["text"]}
    (workdir / FRONTEND_FILE).write_text(json.dumps(frontend, indent=2))
    task.save_tokenizer(workdir)


def _pretrained_params(
    cfg: Config, info: dict, abstract_params: Any, groups: tuple[str, ...]
) -> Any:
    """The weights of `train.init_from` (best, else latest checkpoint) for a fresh run: its
    top-level parameter groups `groups` (all when empty)."""
    source = Path(cfg.train.init_from)
    frontend_file = source / FRONTEND_FILE
    if not frontend_file.is_file():
        raise JaxseqError(
            f"train.init_from={source} is not a jaxseq workdir (no {FRONTEND_FILE}); point it at "
            "a workdir written by `jaxseq convert` or `jaxseq train`"
        )
    pretrained = json.loads(frontend_file.read_text())["frontend"]
    if pretrained != info["frontend"]:
        raise JaxseqError(
            f"{cfg.data.dataset} was prepared with frontend {info['frontend']}, but the weights "
            f"in train.init_from={source} expect {pretrained}; prepare the data with "
            "prepare.frontend set to those values"
        )
    if groups:
        abstract_params = {k: v for k, v in abstract_params.items() if k in groups}
    params, step = restore_workdir_params(source, abstract_params)
    logging.info("initialized %s from %s, step %d", sorted(params), source, step)
    return params


def _summarize(acc: dict[str, Any], seconds: float) -> dict[str, float]:
    """Turns summed per-step metrics into logged values: loss and grad norm averaged over the
    steps, utterances per second, and every task metric as its sum over the steps."""
    host = {k: float(v) for k, v in jax.device_get(acc).items()}
    steps = max(host.pop("steps"), 1.0)  # the steps that updated (not skipped)
    out = {"loss": host.pop("loss") / steps, "grad_norm": host.pop("grad_norm") / steps}
    out["utterances_per_second"] = host["utterances"] / max(seconds, 1e-9)
    return {**host, **out}


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of an evaluation's metrics (for TensorBoard and metrics.jsonl)."""
    return {k: v for k, v in metrics.items() if isinstance(v, int | float)}


# Validation during training, injected by the caller (jaxseq.api passes the evaluation loop):
# (task, params, mesh) -> metrics holding task.best_metric and a one-line "headline".
Evaluator = Callable[[Task, Any, Mesh], dict[str, Any]]
# Called after every step with the step just taken and its metrics (device arrays: reading
# one on the host waits for the step to finish).
Callback = Callable[[int, dict[str, jax.Array]], None]


def _input(cfg: Config, task: Task, info: dict, workdir: Path, data: Any) -> Any:
    """The training batches: `data` (an iterable of host batches, or a grain dataset), else
    jaxseq's pipeline over cfg.data.dataset (whose dropped items go to dropped.jsonl)."""
    if data is not None:
        if hasattr(data, "__next__"):
            return data
        return iter(data)  # a grain MapDataset/IterDataset gives a checkpointable iterator
    data_iter = make_train_iterator(
        cfg.data.dataset,
        cfg.data.train_split,
        cfg.data,
        task.tokenizer,
        seed=cfg.data.shuffle_seed,
        label_lengths=task.label_lengths(cfg.data.dataset, info, cfg.data.train_split),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    if jax.process_index() == 0 and data_iter.dropped:
        with (workdir / "dropped.jsonl").open("w") as f:
            f.writelines(json.dumps(d) + "\n" for d in data_iter.dropped)
    return data_iter


def _check_host_batch(batch: Any, want: dict[str, np.ndarray], rows: int, step: int) -> None:
    """A clear error for a user batch without the training layout (`want`: the task's)."""
    if not isinstance(batch, dict):
        raise JaxseqError(
            f"train data: the batch of step {step} is a {type(batch).__name__}; each batch "
            f"must be a dict of NumPy arrays with the fields {sorted(want)}"
        )
    missing = sorted(set(want) - set(batch))
    if missing:
        raise JaxseqError(
            f"train data: the batch of step {step} lacks {missing} (it has {sorted(batch)}); "
            f"this family trains on {sorted(want)}"
        )
    for key in want:
        if np.shape(batch[key])[0] != rows:
            raise JaxseqError(
                f"train data: field {key!r} of the batch of step {step} has "
                f"{np.shape(batch[key])[0]} rows, but each process feeds "
                f"data.batch_size / processes = {rows}"
            )


@dataclasses.dataclass
class _Fetched:
    """A step's batch, fetched and sent to the devices while the step before it runs."""

    host: dict[str, np.ndarray] | None  # None: the data ran out
    batch: dict[str, jax.Array] | None  # the global arrays (None with `error`)
    waited: float  # seconds spent waiting for the host batch
    position: dict | None  # the iterator's state just after this batch (checkpointable data)
    error: JaxseqError | None = None  # a malformed user batch: raised at its own step


def _profile_window(cfg: Config) -> tuple[int, int] | None:
    """train.profile_steps as (first, stop) steps, or None; a ConfigError unless [a, b]
    with 0 <= a < b."""
    window = tuple(cfg.train.profile_steps)
    if not window:
        return None
    if len(window) != 2 or not 0 <= window[0] < window[1]:
        raise ConfigError(
            f"train.profile_steps={list(window)}: give [a, b] with 0 <= a < b (a trace of "
            "steps a..b-1), or [] for none"
        )
    return window[0], window[1]


def train(
    cfg: Config,
    workdir: str | Path,
    *,
    task: Task | None = None,
    data: Any = None,
    evaluator: Evaluator | None = None,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Trains `cfg` in `workdir`, resuming from its latest checkpoint if there is one.

    Args:
      task: the model family's task; default `build_task` (its tokenizer built from
        cfg.data.dataset on process 0).
      data: this process's training batches, an iterable of host batches (dicts of NumPy
        arrays in the task's training layout, data.batch_size / processes rows each) or a
        grain dataset; default jaxseq's pipeline over cfg.data.dataset. A grain iterator's
        position is checkpointed; a plain iterable restarts from its beginning on resume.
        Training ends early, with a final checkpoint, when the iterable runs out. The loop
        reads each batch while the step before it runs (never a batch past the last step);
        features may be float16 (as jaxseq's pipeline sends them) or float32.
      evaluator: validation every train.eval_every steps and at the end; None: none. An
        evaluation step is always checkpointed, so that keep-best sees every score.
      callbacks: each called as callback(step, metrics) after every step.
    Returns:
      A summary: start and final step, last logged train loss, last validation metrics, and
      the padded shapes the train step was compiled for.
    """
    check_local_path(workdir, "the workdir")
    profile = _profile_window(cfg)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if cfg.train.compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", cfg.train.compilation_cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    info = load_dataset_info(cfg.data.dataset, cfg.data.train_split)
    task = task or build_task(cfg, info, workdir)
    if jax.process_index() == 0:
        _write_workdir_files(cfg, workdir, task, info)

    # Mesh and input.
    mesh = make_mesh(cfg.mesh)
    dp = data_parallel_size(mesh)
    check_batch_sizes(cfg, dp)
    data_iter = _input(cfg, task, info, workdir, data)
    checkpointable = data is None or isinstance(data_iter, grain.DatasetIterator)

    # Model, optimizer and state: fresh, or restored with the iterator position.
    tx = make_optimizer(cfg.optim, cfg.train.num_steps)
    init_batch = task.dummy_batch(dp, cfg.data.buckets[0])
    ckpt = Checkpointer(workdir / "checkpoints", cfg.train)
    start = ckpt.latest_step()
    if start is not None or cfg.train.init_from:  # a restore needs the shapes and shardings
        abstract, _ = abstract_train_state(task, tx, init_batch, mesh)
    if start is not None:
        state, start = ckpt.restore_latest(abstract, data_iter if checkpointable else None)
        logging.info("resumed from step %d", start)
        if not checkpointable:
            logging.warning("train data is a plain iterable: it restarts from its first batch")
    else:
        params = None
        if cfg.train.init_from:
            params = _pretrained_params(cfg, info, abstract.params, task.pretrained_groups)
        state = create_train_state(task, tx, init_batch, mesh, cfg.train.seed, params)
        start = 0
    abstract = abstract_like(state)  # the step's shardings, and its input for the FLOP count
    shardings = jax.tree.map(lambda x: x.sharding, abstract)
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    logging.info(
        "model: %s, %.2fM parameters, mesh %s", cfg.model.family, num_params / 1e6, dict(mesh.shape)
    )

    step_fn = jit_train_step(task, tx, mesh, shardings, cfg.train.microbatches)
    streak = jax.device_put(jnp.zeros((), jnp.int32), replicated(mesh))
    check_finite = jax.jit(_all_finite, out_shardings=replicated(mesh))
    preemption = PreemptionWatch()
    schedule = learning_rate_schedule(cfg.optim, cfg.train.num_steps)
    writer = MetricWriter(workdir)
    rows = cfg.data.batch_size // jax.process_count()
    # Model FLOPs of a step (all devices) by padded length, in the order the shapes compiled.
    flops: dict[int, float] = {}
    hop_seconds = seconds_per_frame(info["frontend"])
    throughput = Throughput(mesh.size, peak_tflops(mesh.devices.flat[0]), hop_seconds)
    summary: dict[str, Any] = {"start_step": start}
    acc, tick, saved = None, time.time(), start
    bar = tqdm(
        range(start, cfg.train.num_steps),
        initial=start,
        total=cfg.train.num_steps,
        desc="train",
        disable=jax.process_index() != 0,
        dynamic_ncols=True,
    )

    config_yaml = to_yaml(cfg)  # saved with every checkpoint

    def save(done: int, best: dict | None, position: dict | None) -> None:
        if not bool(check_finite(state)):  # never write non-finite values
            raise JaxseqError(f"step {done}: the train state holds non-finite values")
        ckpt.save(done, state, position, {"step": done, "config": config_yaml}, best)

    def fetch(step: int) -> _Fetched:
        """Step `step`'s batch: the host batch (timed) and its global arrays. Called right
        after the previous step is dispatched, so that both overlap its device work."""
        waited = time.time()
        host = next(data_iter, None)
        waited = time.time() - waited
        position = data_iter.get_state() if checkpointable else None
        if host is not None and data is not None:
            try:
                _check_host_batch(host, init_batch, rows, step)
            except JaxseqError as err:
                return _Fetched(host, None, waited, position, err)
        batch = None if host is None else to_global(host, mesh)
        return _Fetched(host, batch, waited, position)

    tracing = False  # a train.profile_steps trace is running
    try:
        # One batch ahead: step n + 1's batch is read and transferred while step n runs.
        pending = fetch(start) if start < cfg.train.num_steps else None
        waited = 0.0 if pending is None else pending.waited
        for step in bar:
            current = pending
            if current.host is None:
                logging.warning("train data ran out after %d steps; stopping there", step)
                summary["data_exhausted_at"] = step
                if step > saved:
                    save(step, None, current.position)
                break
            if current.error is not None:
                raise current.error
            if profile is not None and not tracing and profile[0] <= step < profile[1]:
                jax.profiler.start_trace(workdir / "profile")
                tracing = True
            global_batch = current.batch
            frames = int(current.host["features"].shape[1])
            new_shape = frames not in flops
            if new_shape:
                logging.info(
                    "compiling the train step for %d frames (%d of at most %d shapes)",
                    frames,
                    len(flops) + 1,
                    len(cfg.data.buckets),
                )
            with sharding_context(mesh):
                state, metrics, streak = step_fn(state, global_batch, streak)
                if new_shape:  # compiled by the call: the analysis is cached
                    flops[frames] = mesh.size * device_flops(
                        step_fn, abstract, global_batch, streak
                    )
            done = step + 1
            if done < cfg.train.num_steps:  # not past the last step: the data stays unread
                pending = fetch(done)
                waited += pending.waited
            if tracing and done == profile[1]:
                jax.block_until_ready((state, metrics))  # the trace holds the whole step
                jax.profiler.stop_trace()
                tracing = False
            throughput.add(flops[frames], waited)  # this iteration's waits for data
            waited = 0.0
            for callback in callbacks:
                callback(done, metrics)
            acc = metrics if acc is None else jax.tree.map(jnp.add, acc, metrics)

            if done % cfg.train.log_every == 0 or done == cfg.train.num_steps:
                seconds = time.time() - tick
                scalars = _summarize(acc, seconds)
                scalars.update(throughput.scalars(scalars, seconds))
                scalars["learning_rate"] = float(schedule(done))
                writer.write(done, "train", scalars)
                bar.set_postfix(
                    loss=f"{scalars['loss']:.3f}", utt_s=f"{scalars['utterances_per_second']:.0f}"
                )
                summary["train_loss"] = scalars["loss"]
                acc, tick = None, time.time()
                throughput.reset()
                if int(streak) >= cfg.train.max_nonfinite_steps:
                    raise _nonfinite_error(done, int(streak), cfg.train.max_nonfinite_steps)

            eval_metrics = None
            if evaluator is not None and (
                done % cfg.train.eval_every == 0 or done == cfg.train.num_steps
            ):
                eval_metrics = evaluator(task, state.params, mesh)
                writer.write(done, cfg.data.eval_split, _scalars(eval_metrics))
                if jax.process_index() == 0:
                    bar.write(
                        f"step {done}: {cfg.data.eval_split} {eval_metrics['headline']}  "
                        f"loss {eval_metrics['loss']:.4f}",
                        file=sys.stderr,  # stdout carries only the final summary
                    )
                summary["eval"] = eval_metrics
                tick = time.time()
                throughput.reset()

            preempted = preemption.should_stop(done)
            periodic = done % cfg.train.checkpoint_every == 0 or done == cfg.train.num_steps
            if preempted or periodic or eval_metrics is not None:
                best = None
                if eval_metrics is not None:
                    best = {"metric": task.best_metric, "value": eval_metrics[task.best_metric]}
                save(done, best, current.position)
                saved = done
            if preempted:
                logging.warning("preempted: saved step %d; rerun the same command to resume", done)
                summary["preempted_at"] = done
                break
    finally:  # pending saves become durable even when a step raises
        if tracing:
            jax.profiler.stop_trace()
        ckpt.wait()
        ckpt.close()
        writer.close()
        preemption.close()
    summary.update(
        step=int(state.step),
        compiled_shapes=list(flops),
        compiled_variants=step_fn._cache_size(),  # one per padded length used
    )
    return summary
