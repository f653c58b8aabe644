"""Offline evaluation and transcription from a workdir, on any mesh, from any checkpoint.

A workdir holds everything needed: config.yaml, frontend.json (the dataset's frontend and
text policy), the tokenizer and checkpoints/. Evaluation never drops an utterance silently:
items `prepare` could not use are counted and listed in the report.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from tqdm import tqdm

from jaxseq.audio.frontend import log_mel_numpy
from jaxseq.audio.io import load_audio
from jaxseq.config import (
    FRONTEND_FILE,
    Config,
    FrontendConfig,
    PrepareConfig,
    TextConfig,
    load_config,
)
from jaxseq.data.pipeline import (
    bucket_length,
    load_dataset_info,
    make_eval_batches,
    num_eval_batches,
)
from jaxseq.parallel.batch import to_global
from jaxseq.parallel.mesh import data_parallel_size, make_mesh
from jaxseq.parallel.sharding import replicated, sharding_context
from jaxseq.scoring import error_counts, error_rates, utterance_alignment
from jaxseq.tasks import load_task
from jaxseq.tasks.base import Task
from jaxseq.train.checkpoint import restore_workdir_params
from jaxseq.train.optimizer import make_optimizer
from jaxseq.train.state import abstract_train_state

WORST_IN_REPORT = 20


@functools.cache
def _eval_step(task: Task, mesh: Mesh, decoder: str, beam_size: int):
    """One jitted function per (task, mesh, decoder), cached: a batch's predictions and loss."""

    def step(params, batch):
        predictions = task.predict_fn(params, batch, decoder, beam_size)
        return predictions, task.loss_fn(params, batch, jax.random.PRNGKey(0), train=False)

    return jax.jit(step, out_shardings=replicated(mesh))


def evaluate_split(
    task: Task,
    params: Any,
    mesh: Mesh,
    cfg: Config,
    dataset_dir: str | Path,
    split: str,
    *,
    decoder: str | None = None,
    beam_size: int | None = None,
) -> tuple[dict[str, float], list[dict[str, str]]]:
    """Decodes and scores every utterance of a prepared split.

    Returns:
      (metrics: wer, cer, loss, num_utterances, edit counts, audio_seconds, decode_seconds and
      real_time_factor; records: {"id", "ref", "hyp"} of every utterance, from all processes,
      in dataset order).
    """
    decoder = decoder or cfg.eval.decoder
    beam_size = beam_size or cfg.eval.beam_size
    text = TextConfig(**load_dataset_info(dataset_dir)["text"])
    eval_step = _eval_step(task, mesh, decoder, beam_size)
    p, count = jax.process_index(), jax.process_count()
    records: list[dict[str, str]] = []
    loss_sum = tokens = 0.0
    batches = tqdm(
        make_eval_batches(
            dataset_dir, split, cfg.data, task.tokenizer, process_index=p, process_count=count
        ),
        total=num_eval_batches(dataset_dir, split, cfg.data, process_count=count),
        desc=f"evaluate {split}",
        disable=p != 0,
        leave=False,
        dynamic_ncols=True,
    )
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
        rows_per_batch.append(sum(bool(ok) for ok in host_batch["valid"]))
    counts = error_counts([r["ref"] for r in records], [r["hyp"] for r in records], text)
    totals = np.array([*counts, len(records)], np.int64)
    if jax.process_count() > 1:
        totals = multihost_utils.process_allgather(totals).sum(axis=0)
        records = _all_records(records, rows_per_batch)
    metrics = error_rates(totals[:-1])
    metrics.update(
        num_utterances=int(totals[-1]),
        loss=loss_sum / max(tokens, 1.0),
        audio_seconds=audio_seconds,
        decode_seconds=decode_seconds,
        # This process's decoding time (prediction + loss + host decoding, compilation
        # excluded) per second of its audio; below 1 is faster than real time.
        real_time_factor=decode_seconds / max(audio_seconds, 1e-9),
    )
    return metrics, records


def _all_records(records: list[dict[str, str]], rows_per_batch: list[int]) -> list[dict]:
    """Every process's records in dataset order (process p holds the p-th slice of each global
    batch, `rows_per_batch[i]` records of batch i). A collective: call on every process."""
    mine = np.frombuffer(json.dumps([records, rows_per_batch]).encode(), np.uint8)
    sizes = multihost_utils.process_allgather(np.array([mine.size], np.int64))[:, 0]
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: mine.size] = mine
    everyone = multihost_utils.process_allgather(padded)  # uint8 [processes, max size]
    per_batch: list[list[dict]] = []  # batch i: process 0's records, then process 1's, ...
    for data, size in zip(everyone, sizes, strict=True):
        recs, rows = json.loads(data[:size].tobytes())
        per_batch += [[] for _ in range(len(rows) - len(per_batch))]
        starts = np.cumsum([0, *rows])
        for i, n in enumerate(rows):
            per_batch[i] += recs[starts[i] : starts[i] + n]
    return [r for batch in per_batch for r in batch]


@dataclass
class Trained:
    """A trained model loaded from a workdir."""

    cfg: Config
    task: Task
    mesh: Mesh
    params: Any
    step: int
    frontend: FrontendConfig
    text: TextConfig


def load_trained(
    workdir: str | Path, *, step: int | None = None, overrides: tuple[str, ...] = ()
) -> Trained:
    """Restores the params of `step` (default: best validation WER, else latest)."""
    workdir = Path(workdir)
    if not (workdir / "config.yaml").exists():
        raise FileNotFoundError(f"{workdir} is not a jaxseq workdir (no config.yaml); train first")
    cfg = load_config(workdir / "config.yaml", overrides)
    saved = json.loads((workdir / FRONTEND_FILE).read_text())
    frontend, text = FrontendConfig(**saved["frontend"]), TextConfig(**saved["text"])
    task = load_task(cfg, workdir, frontend.n_mels)
    mesh = make_mesh(cfg.mesh)
    tx = make_optimizer(cfg.optim, cfg.train.num_steps)
    dp = data_parallel_size(mesh)
    abstract, _ = abstract_train_state(task, tx, task.dummy_batch(dp, cfg.data.buckets[0]), mesh)
    params, step = restore_workdir_params(workdir, abstract.params, step)
    return Trained(cfg, task, mesh, params, step, frontend, text)


def _prepare_manifest(trained: Trained, manifest: Path, workdir: Path) -> Path:
    """Computes features for a manifest with the workdir's frontend (cached in eval/)."""
    from jaxseq.data.prepare import prepare_split

    out = workdir / "eval" / f"manifest-{manifest.stem}"
    cfg = PrepareConfig(frontend=trained.frontend, text=trained.text, max_bad_fraction=1.0)
    prepare_split(f"manifest:{manifest}", out, "eval", cfg, evaluation=True)
    return out


def _write_reports(metrics: dict, records: list[dict], text: TextConfig, path: Path) -> None:
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
    path.with_suffix(".md").write_text("\n".join(lines))


def evaluate(
    workdir: str | Path,
    *,
    split: str = "test",
    dataset: str | Path | None = None,
    manifest: str | Path | None = None,
    report: str | Path | None = None,
    step: int | None = None,
    decoder: str | None = None,
    beam_size: int | None = None,
    overrides: tuple[str, ...] = (),
) -> dict[str, Any]:
    """WER/CER of a trained workdir on a prepared split or on a manifest of audio files.

    Writes a JSON report (`report`, default WORKDIR/eval/<split>-step<N>.json) with top-level
    wer, cer, num_utterances, num_skipped, skipped and the per-utterance results, plus a
    markdown report next to it listing the worst utterances with their alignments.
    """
    workdir = Path(workdir)
    trained = load_trained(workdir, step=step, overrides=overrides)
    if manifest is not None:
        dataset, split = _prepare_manifest(trained, Path(manifest), workdir), "eval"
    dataset = dataset or trained.cfg.data.dataset
    info = load_dataset_info(dataset, split)
    if info["frontend"] != json.loads((workdir / FRONTEND_FILE).read_text())["frontend"]:
        raise ValueError(
            f"{dataset} was prepared with frontend {info['frontend']}, but the model in {workdir} "
            "was trained on different features; prepare the data with the model's settings"
        )
    metrics, records = evaluate_split(
        trained.task,
        trained.params,
        trained.mesh,
        trained.cfg,
        dataset,
        split,
        decoder=decoder,
        beam_size=beam_size,
    )
    split_info = info["splits"][split]
    metrics.update(
        num_skipped=int(split_info.get("num_skipped", 0)),
        skipped=split_info.get("skipped", []),
        dataset=str(dataset),
        split=split,
        step=trained.step,
        decoder=decoder or trained.cfg.eval.decoder,
        beam_size=beam_size or trained.cfg.eval.beam_size,
    )
    if jax.process_index() == 0:
        path = Path(report) if report else workdir / "eval" / f"{split}-step{trained.step}.json"
        _write_reports(metrics, records, trained.text, path)
        logging.info("wrote %s and %s", path, path.with_suffix(".md"))
    return metrics


def transcribe(
    workdir: str | Path,
    audio_paths: list[str | Path],
    *,
    step: int | None = None,
    decoder: str | None = None,
    beam_size: int | None = None,
) -> list[str]:
    """Transcripts of audio files (any format librosa reads; resampled to the model's rate)."""
    trained = load_trained(workdir, step=step)
    cfg, mesh = trained.cfg, trained.mesh
    feats = [
        log_mel_numpy(load_audio(p, trained.frontend.sample_rate), trained.frontend)
        for p in audio_paths
    ]
    dp = data_parallel_size(mesh)
    rows = -(-len(feats) // dp) * dp  # a multiple of the data-parallel size
    frames = bucket_length(max(len(f) for f in feats), cfg.data.buckets)
    batch = {
        "features": np.zeros((rows, frames, trained.frontend.n_mels), np.float32),
        "feature_lengths": np.zeros((rows,), np.int32),
    }
    for i, f in enumerate(feats):
        batch["features"][i, : len(f)] = f
        batch["feature_lengths"][i] = len(f)
    decoder, beam_size = decoder or cfg.eval.decoder, beam_size or cfg.eval.beam_size
    predict = jax.jit(
        functools.partial(trained.task.predict_fn, decoder=decoder, beam_size=beam_size),
        out_shardings=replicated(mesh),
    )
    with sharding_context(mesh):
        outputs = jax.device_get(predict(trained.params, to_global(batch, mesh)))
    hyps = trained.task.decode(outputs, decoder, beam_size)
    return hyps[: len(feats)]
