"""The robustness report (`jaxseq evaluate --robustness`): one recognizer on every condition
split of a prepared stress dataset (`synth.preset=stress`, jaxseq.data.stress).

Each condition split is scored by the one evaluation loop (`evaluate_split`: WER/CER with jiwer
after `eval.normalizer`). Its utterances are then grouped by speaking rate (`RATE_BIN` words per
minute: 80-129, 130-179, ..., 380-450) and by pitch (`PITCH_BIN`: 0-24, 25-49, 50-74, 75-100;
the last bin of each takes the remainder of espeak-ng's range) and each group is scored alike.
Prepared records keep no rate or pitch: they come from the synthesized manifest that
`dataset.json` names as each split's source (`manifest:PATH`).

Written by process 0 to WORKDIR/eval/robustness.json (every number with its utterance count,
and each utterance's reference, hypothesis, rate and pitch) and robustness.md (WER and CER per
condition, then WER per rate bin and per pitch bin, a column per condition).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from jaxseq.config import TextConfig
from jaxseq.data.stress import CONDITIONS, PITCH_LIMITS, RATE_LIMITS
from jaxseq.errors import JaxseqError
from jaxseq.evaluation.loop import evaluate_split
from jaxseq.evaluation.scoring import error_counts, error_rates
from jaxseq.evaluation.workdir import checked_dataset_info
from jaxseq.train.trained import Trained

RATE_BIN = 50  # words per minute
PITCH_BIN = 25
REPORT_NAME = "robustness"


def bin_name(value: int, limits: tuple[int, int], width: int) -> str:
    """The bin "lo-hi" of `value`: `width` wide from limits[0], the last one to limits[1]."""
    last = max((limits[1] - limits[0] + 1) // width - 1, 0)
    index = min((value - limits[0]) // width, last)
    lo = limits[0] + index * width
    return f"{lo}-{limits[1] if index == last else lo + width - 1}"


def _utterance_settings(info: dict[str, Any], split: str) -> dict[str, dict[str, Any]]:
    """{id: its line of the split's synthesized manifest} (voice, rate, pitch, ...)."""
    source = info["splits"][split]["source"]
    path = Path(source.removeprefix("manifest:"))
    if not source.startswith("manifest:") or not path.is_file():
        raise JaxseqError(
            f"split {split!r} was prepared from {source!r}, not a stress manifest that exists "
            "here; prepare the corpus of `jaxseq synth ... synth.preset=stress` with "
            "`jaxseq prepare --source synth:DIR`"
        )
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    if any("rate" not in line or "pitch" not in line for line in lines):
        raise JaxseqError(f"{path} gives no rate and pitch: it is not a stress manifest")
    return {line["id"]: line for line in lines}


def _score(records: list[dict[str, Any]], text: TextConfig, normalizer: str) -> dict[str, Any]:
    rates = error_rates(
        error_counts([r["ref"] for r in records], [r["hyp"] for r in records], text, normalizer)
    )
    return {"num_utterances": len(records), "wer": rates["wer"], "cer": rates["cer"]}


def _binned(
    records: list[dict[str, Any]], key: Callable[[dict], str], text: TextConfig, normalizer: str
) -> dict[str, dict[str, Any]]:
    """{bin: scores} over the records grouped by `key`, in increasing order of the bins."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(key(record), []).append(record)
    ordered = sorted(groups, key=lambda name: int(name.split("-")[0]))
    return {name: _score(groups[name], text, normalizer) for name in ordered}


def robustness_report(
    scored: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]],
    text: TextConfig,
    normalizer: str,
) -> dict[str, dict[str, Any]]:
    """Per condition: its loop metrics' WER/CER and counts, and scores per rate and pitch bin.

    Args:
      scored: {condition: (its `evaluate_split` metrics, its records, each with the "rate"
        and "pitch" of its utterance)}.
      text, normalizer: the scoring's text policy and `eval.normalizer`.
    Returns:
      {condition: {"num_utterances", "num_skipped", "too_long" (the items longer than the
      model's input, not scored), "wer", "cer", "by_rate": {bin: {
      "num_utterances", "wer", "cer"}}, "by_pitch": {...}, "utterances": the records}}.
    """
    return {
        condition: {
            "num_utterances": metrics["num_utterances"],
            "num_skipped": metrics["num_skipped"],
            "too_long": metrics["too_long"],
            "wer": metrics["wer"],
            "cer": metrics["cer"],
            "by_rate": _binned(
                records, lambda r: bin_name(r["rate"], RATE_LIMITS, RATE_BIN), text, normalizer
            ),
            "by_pitch": _binned(
                records, lambda r: bin_name(r["pitch"], PITCH_LIMITS, PITCH_BIN), text, normalizer
            ),
            "utterances": records,
        }
        for condition, (metrics, records) in scored.items()
    }


def _markdown(report: dict[str, Any]) -> str:
    conditions = report["conditions"]
    lines = [
        f"# Robustness: step {report['step']}, decoder {report['decoder']}",
        "",
        f"Stress dataset {report['dataset']}: voices held out of training, at the extremes of "
        f"espeak-ng's rates and pitches; text normalizer {report['normalizer']}.",
        "",
        "| condition | utterances | skipped by prepare | too long, not scored | WER | CER |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in conditions.items():
        lines.append(
            f"| {name} | {c['num_utterances']} | {c['num_skipped']} | {len(c['too_long'])} | "
            f"{c['wer']:.2%} | {c['cer']:.2%} |"
        )
    too_long = {t["id"] for c in conditions.values() for t in c["too_long"]}
    if too_long:
        lines += [
            "",
            f"{len(too_long)} utterances are longer than the model's input and are not scored "
            f"(listed in {REPORT_NAME}.json): {', '.join(sorted(too_long)[:10])}"
            + (", ..." if len(too_long) > 10 else ""),
        ]
    for key, title in (("by_rate", "speaking rate (words per minute)"), ("by_pitch", "pitch")):
        first = next(iter(conditions.values()))[key]
        lines += [
            "",
            f"## WER by {title}",
            "",
            f"| {key[3:]} | utterances | " + " | ".join(conditions) + " |",
            "|---|---|" + "---|" * len(conditions),
        ]
        for name, scores in first.items():
            cells = [
                f"{c[key][name]['wer']:.2%}" if name in c[key] else "-" for c in conditions.values()
            ]
            lines.append(f"| {name} | {scores['num_utterances']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def evaluate_robustness(
    trained: Trained, workdir: str | Path, dataset: str | Path | None = None, **options: Any
) -> dict[str, Any]:
    """Scores a recognizer on every condition split of a prepared stress dataset and writes
    WORKDIR/eval/robustness.json and .md (process 0). A collective: call on every process.

    Args:
      trained: the loaded model (`load_trained(workdir)`).
      dataset: the prepared stress dataset (default: the training one, cfg.data.dataset).
      options: prediction options (decoder, beam_size), None meaning the config's.
    Returns:
      the JSON report: dataset, step, decoder, normalizer, bin widths, "conditions" (see
      `robustness_report`) and a one-line "headline".
    """
    if trained.task.metric_kind != "asr":
        raise JaxseqError(
            f"--robustness scores recognizers (WER/CER); {workdir} holds a "
            f"{trained.cfg.model.family} model"
        )
    workdir = Path(workdir)
    dataset = dataset or trained.cfg.data.dataset
    info = checked_dataset_info(dataset, None, workdir)
    conditions = [c for c in CONDITIONS if c in info["splits"]]
    if not conditions:
        raise JaxseqError(
            f"{dataset} has none of the stress splits {list(CONDITIONS)}; prepare a "
            "`synth.preset=stress` corpus with `jaxseq prepare --source synth:DIR`"
        )
    scored = {}
    for condition in conditions:
        settings = _utterance_settings(info, condition)
        metrics, records = evaluate_split(
            trained.task, trained.params, trained.mesh, dataset, condition, **options
        )
        metrics["num_skipped"] = int(info["splits"][condition].get("num_skipped", 0))
        records = [{**r, **{k: settings[r["id"]][k] for k in ("rate", "pitch")}} for r in records]
        scored[condition] = (metrics, records)
    normalizer = metrics["normalizer"]
    report = {
        "dataset": str(dataset),
        "step": trained.step,
        "decoder": metrics["decoder"],
        "normalizer": normalizer,
        "rate_bin": RATE_BIN,
        "pitch_bin": PITCH_BIN,
        "conditions": robustness_report(scored, TextConfig(**info["text"]), normalizer),
    }
    report["headline"] = "WER " + "  ".join(
        f"{name} {c['wer']:.2%}" for name, c in report["conditions"].items()
    )
    if jax.process_index() == 0:
        path = workdir / "eval" / f"{REPORT_NAME}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
        path.with_suffix(".md").write_text(_markdown(report))
        logging.info("wrote %s and %s", path, path.with_suffix(".md"))
    return report
