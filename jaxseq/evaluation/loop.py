"""The one evaluation loop: every family, any mesh, any number of processes.

It batches a prepared split (or in-memory waveforms), runs the task's jitted `predict_fn`
and `loss_fn`, decodes on the host with the task's `decode`, and hands the predictions to the
scorer of the task's `metric_kind` (jaxseq.evaluation.scorers) for records, metrics, plots
and reports. Every process runs the same collectives the same number of times: a split's
batches are global batches split over the processes (fillers pad the last one), and
in-memory waveforms are batched in lockstep (jaxseq.evaluation.waveforms).
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from jaxseq.config import FrontendConfig, TextConfig, frontend_settings, seconds_per_frame
from jaxseq.data.eval_batches import too_long_items
from jaxseq.data.pipeline import load_dataset_info
from jaxseq.evaluation.asr import ASRScorer
from jaxseq.evaluation.classify import ClassifyScorer
from jaxseq.evaluation.scorer import Scorer, SplitContext
from jaxseq.evaluation.split import eval_batches, gather_records
from jaxseq.evaluation.ssl import SSLScorer
from jaxseq.evaluation.tts import TTSScorer
from jaxseq.parallel.batch import to_global
from jaxseq.parallel.sharding import replicated, sharding_context
from jaxseq.tasks.base import Task
from jaxseq.train.steps import eval_step

SCORERS: dict[str, type[Scorer]] = {
    "asr": ASRScorer,
    "tts": TTSScorer,
    "classify": ClassifyScorer,
    "ssl": SSLScorer,
}


def scorer_for(task: Task) -> Scorer:
    """The scorer of the task's `metric_kind`."""
    if task.metric_kind not in SCORERS:
        raise ValueError(
            f"{type(task).__name__}.metric_kind={task.metric_kind!r}: jaxseq.evaluation scores "
            f"one of {sorted(SCORERS)}"
        )
    return SCORERS[task.metric_kind]()


@functools.cache
def _plot_step(task: Task, mesh: Mesh):
    """`task.plot_batch`, jitted once per (task, mesh)."""
    return jax.jit(task.plot_batch, out_shardings=replicated(mesh))


def _summed(values: list[float]) -> list[float]:
    """`values` summed over the processes (a collective when there are several)."""
    if jax.process_count() == 1:
        return [float(v) for v in values]
    everyone = multihost_utils.process_allgather(np.asarray(values, np.float32))
    return [float(v) for v in np.sum(everyone, axis=0, dtype=np.float64)]


def _valid_rows(tree: Any, rows: slice, valid: np.ndarray) -> Any:
    """This process's `rows` of replicated outputs, then only its `valid` ones."""
    return jax.tree.map(lambda x: np.asarray(x)[rows][valid], tree)


def evaluate_split(
    task: Task,
    params: Any,
    mesh: Mesh,
    dataset_dir: str | Path,
    split: str,
    *,
    report_dir: Path | None = None,
    **options: Any,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Predicts and scores every item of a prepared split. A collective: call on every process.

    Args:
      options: the task's prediction options (`Task.eval_options`: decoder, beam_size), None
        values meaning the config's.
      report_dir: where plots go (`plots/` inside it) for a task with `num_plots`; None: none.
    Returns:
      (metrics: the scorer's (holding `task.best_metric`), plus loss, num_utterances and
      too_long: the items longer than the model's input (`task.max_input_frames`), not
      scored, as {"id", "num_frames"}; records: one per scored item, from all processes, in
      dataset order).
    """
    info = load_dataset_info(dataset_dir, split)
    task.check_split(dataset_dir, info, split)
    options = task.eval_options(**options)
    scorer = scorer_for(task)
    context = SplitContext(
        dataset=str(dataset_dir),
        split=split,
        frontend=FrontendConfig(**info["frontend"]),
        text=TextConfig(**info["text"]),
        options=options,
    )
    scorer.start(task, context)
    too_long = []
    if task.max_input_frames is not None:
        too_long = too_long_items(dataset_dir, split, task.max_input_frames)
    if too_long:
        logging.warning(
            "%s:%s: %d items are longer than the model's %d feature frames and are not "
            "scored (listed in the report as too_long), e.g. %s",
            dataset_dir,
            split,
            len(too_long),
            task.max_input_frames,
            [t["id"] for t in too_long[:5]],
        )
    step = eval_step(task, mesh, tuple(sorted(options.items())))
    batches = eval_batches(
        dataset_dir,
        split,
        task.cfg.data,
        task.tokenizer,
        "evaluate",
        task.label_lengths(dataset_dir, info, split),
        task.max_input_frames,
    )
    p = jax.process_index()
    hop = seconds_per_frame(frontend_settings(context.frontend))
    records: list[dict[str, Any]] = []
    rows_per_batch: list[int] = []  # this process's records from each batch
    loss_sum = tokens = seconds = input_seconds = 0.0
    warm: set[tuple] = set()
    for host_batch, ids, texts in batches:
        b = len(ids)
        batch = to_global(host_batch, mesh)
        shapes = tuple(v.shape for v in host_batch.values())
        with sharding_context(mesh):
            if shapes not in warm:  # compile outside the timed region
                jax.block_until_ready(step(params, batch))
                warm.add(shapes)
            start = time.perf_counter()
            outputs, (loss, metrics) = jax.device_get(step(params, batch))
        valid = np.asarray(host_batch["valid"], bool)
        mine = slice(p * b, (p + 1) * b)  # this process's rows of the replicated outputs
        predictions = task.decode(_valid_rows(outputs, mine, valid), **options)
        seconds += time.perf_counter() - start
        rows = {k: np.asarray(v)[valid] for k, v in host_batch.items()}
        kept = [(i, t) for i, t, ok in zip(ids, texts, valid, strict=True) if ok]
        new = scorer.records(
            task, context, predictions, rows, [i for i, _ in kept], [t for _, t in kept]
        )
        if report_dir is not None and task.num_plots > 0 and not rows_per_batch:
            with sharding_context(mesh):  # the first batch; a collective: every process
                extras = jax.device_get(_plot_step(task, mesh)(params, batch, outputs))
            if p == 0:
                n = task.num_plots
                extras = _valid_rows(extras, mine, valid)
                scorer.plot(
                    task,
                    Path(report_dir),
                    context,
                    new[:n],
                    predictions[:n],
                    {k: v[:n] for k, v in rows.items()},
                    jax.tree.map(lambda x, n=n: x[:n], extras),
                )
        records += new
        rows_per_batch.append(len(new))
        loss_sum += float(loss) * float(metrics["tokens"])  # the global batch's (replicated)
        tokens += float(metrics["tokens"])
        input_seconds += float(np.sum(rows["feature_lengths"])) * hop
    records = scorer.finish(task, records, context)  # before gathering: each its own items
    seconds, input_seconds = _summed([seconds, input_seconds])  # each process's own
    if jax.process_count() > 1:
        records = gather_records(records, rows_per_batch)
    out = scorer.score(task, records, context, seconds=seconds, input_seconds=input_seconds)
    out.update(num_utterances=len(records), too_long=too_long, loss=loss_sum / max(tokens, 1.0))
    return out, records
