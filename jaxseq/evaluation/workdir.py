"""Offline evaluation of a trained workdir, on any mesh, from any checkpoint.

A workdir holds everything needed: config.yaml, frontend.json (the dataset's frontend and
text policy), the tokenizer and checkpoints/. Evaluation never drops an item silently: items
`prepare` could not use are counted and listed in the report.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import jax

from jaxseq.config import FRONTEND_FILE, PrepareConfig
from jaxseq.data.pipeline import load_dataset_info
from jaxseq.errors import JaxseqError
from jaxseq.evaluation.loop import evaluate_split, scorer_for
from jaxseq.train.trained import Trained, load_trained


def _prepare_manifest(trained: Trained, manifest: Path, workdir: Path) -> Path:
    """Computes features for a manifest with the workdir's frontend (cached in eval/)."""
    from jaxseq.data.prepare import prepare_split

    out = workdir / "eval" / f"manifest-{manifest.stem}"
    cfg = PrepareConfig(frontend=trained.frontend, text=trained.text, max_bad_fraction=1.0)
    prepare_split(f"manifest:{manifest}", out, "eval", cfg, evaluation=True)
    return out


def checked_dataset_info(dataset: str | Path, split: str | None, workdir: Path) -> dict[str, Any]:
    """The prepared dataset's info (`load_dataset_info`), once its frontend is the one the
    model in `workdir` was trained on (else a JaxseqError)."""
    info = load_dataset_info(dataset, split)
    if info["frontend"] != json.loads((workdir / FRONTEND_FILE).read_text())["frontend"]:
        raise JaxseqError(
            f"{dataset} was prepared with frontend {info['frontend']}, but the model in {workdir} "
            "was trained on different features; prepare the data with the model's settings"
        )
    return info


def evaluate_trained(
    trained: Trained,
    workdir: str | Path,
    *,
    split: str = "test",
    dataset: str | Path | None = None,
    manifest: str | Path | None = None,
    report: str | Path | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Scores a loaded model (`load_trained(workdir)`) on a prepared split or a manifest of
    audio files, and writes the reports (see `evaluate`). A collective: every process."""
    workdir = Path(workdir)
    if manifest is not None:
        dataset, split = _prepare_manifest(trained, Path(manifest), workdir), "eval"
    dataset = dataset or trained.cfg.data.dataset
    info = checked_dataset_info(dataset, split, workdir)
    path = Path(report) if report else workdir / "eval" / f"{split}-step{trained.step}.json"
    metrics, records = evaluate_split(
        trained.task,
        trained.params,
        trained.mesh,
        dataset,
        split,
        report_dir=path.parent,
        **options,
    )
    split_info = info["splits"][split]
    metrics.update(
        num_skipped=int(split_info.get("num_skipped", 0)),
        skipped=split_info.get("skipped", []),
        dataset=str(dataset),
        split=split,
        step=trained.step,
    )
    scorer = scorer_for(trained.task)
    metrics["headline"] = scorer.headline(trained.task, metrics)
    if jax.process_index() == 0:
        scorer.write_report(metrics, records, trained.text, path)
        logging.info("wrote %s and %s", path, path.with_suffix(".md"))
    return metrics


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

    What is scored is the family's metric kind: WER/CER for recognizers (options decoder,
    beam_size), spectrogram distortion and intelligibility for TTS, accuracy/F1/DER for
    classifiers. Writes a JSON report (`report`, default WORKDIR/eval/<split>-step<N>.json)
    with the metrics, num_utterances, num_skipped, skipped and the per-item results, plus a
    markdown report beside it. A collective: call on every process.
    """
    trained = load_trained(workdir, step=step, overrides=overrides)
    options = {k: v for k, v in options.items() if v is not None}
    return evaluate_trained(
        trained, workdir, split=split, dataset=dataset, manifest=manifest, report=report, **options
    )
