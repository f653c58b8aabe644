"""Offline evaluation and transcription from a workdir, on any mesh, from any checkpoint.

A workdir holds everything needed: config.yaml, frontend.json (the dataset's frontend and
text policy), the tokenizer and checkpoints/. Evaluation never drops an utterance silently:
items `prepare` could not use are counted and listed in the report.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

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
from jaxseq.data.pipeline import bucket_length, load_dataset_info
from jaxseq.errors import JaxseqError
from jaxseq.parallel.batch import to_global
from jaxseq.parallel.mesh import data_parallel_size, make_mesh
from jaxseq.parallel.sharding import replicated, sharding_context
from jaxseq.tasks import load_task
from jaxseq.tasks.base import ASRTask, Task
from jaxseq.train.checkpoint import restore_workdir_params
from jaxseq.train.optimizer import make_optimizer
from jaxseq.train.state import abstract_train_state


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


def evaluate(
    workdir: str | Path,
    *,
    split: str = "test",
    dataset: str | Path | None = None,
    manifest: str | Path | None = None,
    report: str | Path | None = None,
    step: int | None = None,
    overrides: tuple[str, ...] = (),
    **options: Any,
) -> dict[str, Any]:
    """Scores a trained workdir on a prepared split or on a manifest of audio files.

    What is scored is the family's (`Task.evaluate_split`): WER/CER for recognizers (options
    decoder, beam_size), spectrogram distortion and intelligibility for TTS. Writes a JSON
    report (`report`, default WORKDIR/eval/<split>-step<N>.json) with the metrics,
    num_utterances, num_skipped, skipped and the per-item results, plus a markdown report
    beside it.
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
    path = Path(report) if report else workdir / "eval" / f"{split}-step{trained.step}.json"
    options = {k: v for k, v in options.items() if v is not None}
    metrics, records = trained.task.evaluate_split(
        trained.params, trained.mesh, dataset, split, report_dir=path.parent, **options
    )
    split_info = info["splits"][split]
    metrics.update(
        num_skipped=int(split_info.get("num_skipped", 0)),
        skipped=split_info.get("skipped", []),
        dataset=str(dataset),
        split=split,
        step=trained.step,
    )
    metrics["headline"] = trained.task.headline(metrics)
    if jax.process_index() == 0:
        trained.task.write_report(metrics, records, trained.text, path)
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
    if not isinstance(trained.task, ASRTask):
        raise JaxseqError(
            f"{workdir} holds a {trained.cfg.model.family} model; transcribe needs a speech "
            "recognizer's workdir (ctc, seq2seq or whisper)"
        )
    waves = [load_audio(p, trained.frontend.sample_rate) for p in audio_paths]
    return transcribe_waveforms(trained, waves, decoder=decoder, beam_size=beam_size)


def transcribe_waveforms(
    trained: Trained,
    waves: list[np.ndarray],
    *,
    decoder: str | None = None,
    beam_size: int | None = None,
    batch_size: int = 32,
) -> list[str]:
    """Transcripts of float waveforms [samples] at the model's sample rate, `batch_size` at a
    time (each batch padded to a bucket and to a multiple of the data-parallel size)."""
    cfg, mesh, task = trained.cfg, trained.mesh, trained.task
    decoder, beam_size = decoder or cfg.eval.decoder, beam_size or cfg.eval.beam_size
    predict = jax.jit(
        functools.partial(task.predict_fn, decoder=decoder, beam_size=beam_size),
        out_shardings=replicated(mesh),
    )
    hyps: list[str] = []
    for batch, n in feature_batches(trained, waves, batch_size):
        with sharding_context(mesh):
            outputs = jax.device_get(predict(trained.params, to_global(batch, mesh)))
        hyps += task.decode(outputs, decoder, beam_size)[:n]
    return hyps


def feature_batches(
    trained: Trained, waves: list[np.ndarray], batch_size: int
) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """Log-mel batches of float waveforms [samples] at the model's sample rate, `batch_size`
    at a time: (host batch, its number of real rows). Each batch is padded to a bucket of
    `data.buckets` and its rows to a multiple of the data-parallel size."""
    dp = data_parallel_size(trained.mesh)
    for start in range(0, len(waves), batch_size):
        feats = [log_mel_numpy(w, trained.frontend) for w in waves[start : start + batch_size]]
        rows = -(-len(feats) // dp) * dp  # a multiple of the data-parallel size
        frames = bucket_length(max(len(f) for f in feats), trained.cfg.data.buckets)
        batch = {
            "features": np.zeros((rows, frames, trained.frontend.n_mels), np.float32),
            "feature_lengths": np.zeros((rows,), np.int32),
        }  # features [rows, frames, n_mels]
        for i, f in enumerate(feats):
            batch["features"][i, : len(f)] = f
            batch["feature_lengths"][i] = len(f)
        yield batch, len(feats)
