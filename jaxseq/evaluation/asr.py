"""Speech-recognition evaluation: decode a prepared split, score it by WER/CER, report.

Nothing is dropped silently: every utterance of the split is decoded (evaluation batches pad
rather than filter), and `jaxseq evaluate` adds the items `prepare` skipped to the report.

An optional hook plots attention: a task with `alignment_plots` (int) > 0 and
`alignment_fn(params, batch, outputs) -> (weights [batch, steps, frames], steps [batch],
frames [batch])` (`outputs`: its `predict_fn`'s) gets PNGs of the alignment of the first
`alignment_plots` utterances of the first batch, in the report's `plots/` folder, listed in
their records ("plots") and shown in the markdown report. Other tasks' reports are unchanged.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from jaxseq.config import Config, TextConfig
from jaxseq.data.pipeline import load_dataset_info
from jaxseq.evaluation.split import eval_batches, gather_records
from jaxseq.parallel.batch import to_global
from jaxseq.parallel.sharding import replicated, sharding_context
from jaxseq.plots import plot_alignment
from jaxseq.scoring import error_counts, error_rates, utterance_alignment

if TYPE_CHECKING:
    from jaxseq.tasks.base import ASRTask

WORST_IN_REPORT = 20


@functools.cache
def _eval_step(task: ASRTask, mesh: Mesh, decoder: str, beam_size: int):
    """One jitted function per (task, mesh, decoder), cached: a batch's predictions and loss."""

    def step(params, batch):
        predictions = task.predict_fn(params, batch, decoder, beam_size)
        return predictions, task.loss_fn(params, batch, jax.random.PRNGKey(0), train=False)

    return jax.jit(step, out_shardings=replicated(mesh))


@functools.cache
def _alignment_step(task: ASRTask, mesh: Mesh):
    """The task's `alignment_fn`, jitted once per (task, mesh)."""
    return jax.jit(task.alignment_fn, out_shardings=replicated(mesh))


def _plot_alignments(
    report_dir: Path, split: str, records: list[dict], weights, steps, frames
) -> None:
    """One PNG per record (row i of the [rows, steps, frames] weights, cropped to its
    hypothesis and its valid encoder frames); adds "plots" to each record."""
    for i, record in enumerate(records):
        rel = f"plots/{split}-{record['id']}-alignment.png"
        plot_alignment(
            report_dir / rel,
            np.asarray(weights[i, : max(int(steps[i]), 1), : max(int(frames[i]), 1)]),
            title=f"{record['id']}: {record['hyp']}",
            xlabel="output token",
            ylabel="encoder frame",
        )
        record["plots"] = {"alignment": rel}


def evaluate_split(
    task: ASRTask,
    params: Any,
    mesh: Mesh,
    cfg: Config,
    dataset_dir: str | Path,
    split: str,
    *,
    decoder: str | None = None,
    beam_size: int | None = None,
    report_dir: Path | None = None,
) -> tuple[dict[str, float], list[dict[str, str]]]:
    """Decodes and scores every utterance of a prepared split.

    Returns:
      (metrics: wer, cer, loss, num_utterances, edit counts, audio_seconds, decode_seconds,
      real_time_factor, decoder and beam_size; records: {"id", "ref", "hyp"} of every
      utterance, from all processes, in dataset order). `report_dir` receives the alignment
      plots of a task with the hook (module docstring); None: no plots.
    """
    plots = getattr(task, "alignment_plots", 0) if report_dir is not None else 0
    decoder = decoder or cfg.eval.decoder
    beam_size = beam_size or cfg.eval.beam_size
    text = TextConfig(**load_dataset_info(dataset_dir)["text"])
    eval_step = _eval_step(task, mesh, decoder, beam_size)
    p = jax.process_index()
    records: list[dict[str, str]] = []
    loss_sum = tokens = 0.0
    batches = eval_batches(dataset_dir, split, cfg.data, task.tokenizer, "evaluate")
    info = load_dataset_info(dataset_dir)
    seconds_per_frame = info["frontend"]["hop_length"] / info["frontend"]["sample_rate"]
    warm: set[tuple[int, ...]] = set()
    audio_seconds = decode_seconds = 0.0
    rows_per_batch: list[int] = []  # this process's records from each batch
    for host_batch, ids, refs in batches:
        b = len(ids)
        batch = to_global(host_batch, mesh)
        with sharding_context(mesh):
            if batch["features"].shape not in warm:  # compile outside the timed region
                jax.block_until_ready(eval_step(params, batch))
                warm.add(batch["features"].shape)
            start = time.perf_counter()
            outputs, (loss, metrics) = jax.device_get(eval_step(params, batch))
        rows = slice(p * b, (p + 1) * b)  # this process's rows of the replicated outputs
        mine = jax.tree.map(lambda x, rows=rows: np.asarray(x)[rows], outputs)
        hyps = task.decode(mine, decoder, beam_size)
        decode_seconds += time.perf_counter() - start
        audio_seconds += float(np.sum(host_batch["feature_lengths"])) * seconds_per_frame
        loss_sum += float(loss) * float(metrics["tokens"])
        tokens += float(metrics["tokens"])
        records += [
            {"id": i, "ref": r, "hyp": h}
            for i, r, h, ok in zip(ids, refs, hyps, host_batch["valid"], strict=True)
            if ok
        ]
        if plots > 0 and not rows_per_batch:  # the first batch (a collective: every process)
            with sharding_context(mesh):
                weights, steps, frames = jax.device_get(
                    _alignment_step(task, mesh)(params, batch, outputs)
                )
            rows = p * b + np.flatnonzero(host_batch["valid"])[:plots]  # records' rows
            if p == 0:
                plotted = (weights[rows], steps[rows], frames[rows])
                _plot_alignments(Path(report_dir), split, records[: len(rows)], *plotted)
        rows_per_batch.append(sum(bool(ok) for ok in host_batch["valid"]))
    counts = error_counts([r["ref"] for r in records], [r["hyp"] for r in records], text)
    totals = np.array([*counts, len(records)], np.int64)
    if jax.process_count() > 1:
        totals = multihost_utils.process_allgather(totals).sum(axis=0)
        records = gather_records(records, rows_per_batch)
    metrics = error_rates(totals[:-1])
    metrics.update(
        num_utterances=int(totals[-1]),
        loss=loss_sum / max(tokens, 1.0),
        audio_seconds=audio_seconds,
        decode_seconds=decode_seconds,
        # This process's decoding time (prediction + loss + host decoding, compilation
        # excluded) per second of its audio; below 1 is faster than real time.
        real_time_factor=decode_seconds / max(audio_seconds, 1e-9),
        decoder=decoder,
        beam_size=beam_size,
    )
    return metrics, records


def write_report(metrics: dict, records: list[dict], text: TextConfig, path: Path) -> None:
    """The JSON report (metrics + every utterance) and a markdown one listing the worst."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**metrics, "utterances": records}, indent=2))
    scored = [(utterance_alignment(r["ref"], r["hyp"], text), r) for r in records]
    scored.sort(key=lambda x: -x[0][0])
    lines = [
        f"# Evaluation: WER {metrics['wer']:.2%}, CER {metrics['cer']:.2%}",
        "",
        f"{metrics['num_utterances']} utterances scored, {metrics['num_skipped']} skipped "
        f"(listed in {path.name}); decoder {metrics['decoder']}, step {metrics['step']}; "
        f"real-time factor {metrics['real_time_factor']:.4f} "
        f"({metrics['decode_seconds']:.1f} s for {metrics['audio_seconds']:.1f} s of audio).",
        "",
        f"## Worst {min(WORST_IN_REPORT, len(scored))} utterances",
        "",
    ]
    for (wer, alignment), r in scored[:WORST_IN_REPORT]:
        lines += [f"### {r['id']} (WER {wer:.2%})", "", "```", alignment.strip(), "```", ""]
    plotted = [r for r in records if "plots" in r]
    if plotted:
        lines += ["## Attention alignments", ""]
        for r in plotted:
            for kind, plot in r["plots"].items():  # relative to the report's folder
                lines += [f"### {r['id']} {kind}: {r['hyp']}", "", f"![{kind}]({plot})", ""]
    path.with_suffix(".md").write_text("\n".join(lines))
