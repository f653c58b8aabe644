"""Speech-recognition scoring: WER/CER of decoded text (jiwer, the dataset's text policy),
reports listing the worst utterances, and attention-alignment plots for tasks with
`plot_batch` (weights [batch, steps, frames], hypothesis lengths, valid encoder frames).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from jaxseq.config import TextConfig
from jaxseq.evaluation.plots import plot_alignment
from jaxseq.evaluation.scorer import Scorer, SplitContext
from jaxseq.evaluation.scoring import error_counts, error_rates, utterance_alignment
from jaxseq.tasks.base import Task

WORST_IN_REPORT = 20


class ASRScorer(Scorer):
    """Records {"id", "ref", "hyp"}; metrics wer, cer, their edit counts and timing."""

    def records(self, task, context, predictions, batch, ids, texts) -> list[dict[str, Any]]:
        return [
            {"id": i, "ref": r, "hyp": h} for i, r, h in zip(ids, texts, predictions, strict=True)
        ]

    def plot(self, task, report_dir, context, records, predictions, batch, extras) -> None:
        """One PNG per record: row i of the [rows, steps, frames] attention weights, cropped to
        its hypothesis and its valid encoder frames."""
        weights, steps, frames = extras
        for i, record in enumerate(records):
            rel = f"plots/{context.split}-{record['id']}-alignment.png"
            plot_alignment(
                report_dir / rel,
                np.asarray(weights[i, : max(int(steps[i]), 1), : max(int(frames[i]), 1)]),
                title=f"{record['id']}: {record['hyp']}",
                xlabel="output token",
                ylabel="encoder frame",
            )
            record["plots"] = {"alignment": rel}

    def score(
        self,
        task: Task,
        records: list[dict[str, Any]],
        context: SplitContext,
        *,
        seconds: float,
        input_seconds: float,
    ) -> dict[str, Any]:
        refs, hyps = [r["ref"] for r in records], [r["hyp"] for r in records]
        normalizer = task.cfg.eval.normalizer
        metrics = error_rates(error_counts(refs, hyps, context.text, normalizer))
        metrics.update(
            normalizer=normalizer,
            audio_seconds=input_seconds,
            decode_seconds=seconds,
            # Decoding time (prediction + loss + host decoding, compilation excluded, summed
            # over the processes) per second of audio; below 1 is faster than real time.
            real_time_factor=seconds / max(input_seconds, 1e-9),
            **context.options,
        )
        return metrics

    def headline(self, task: Task, metrics: dict[str, Any]) -> str:
        return (
            f"WER {metrics['wer']:.2%}  CER {metrics['cer']:.2%}  "
            f"real-time factor {metrics['real_time_factor']:.4f}"
        )

    def write_report(
        self, metrics: dict, records: list[dict], text: TextConfig, path: Path
    ) -> None:
        """The JSON report (metrics + every utterance) and a markdown one listing the worst."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**metrics, "utterances": records}, indent=2))
        normalizer = metrics.get("normalizer", "model")
        scored = [(utterance_alignment(r["ref"], r["hyp"], text, normalizer), r) for r in records]
        scored.sort(key=lambda x: -x[0][0])
        lines = [
            f"# Evaluation: WER {metrics['wer']:.2%}, CER {metrics['cer']:.2%}",
            "",
            f"{metrics['num_utterances']} utterances scored, {metrics['num_skipped']} skipped "
            f"by prepare and {len(metrics['too_long'])} longer than the model's input, not "
            f"scored (both listed in {path.name}); decoder {metrics['decoder']}, "
            f"step {metrics['step']}; "
            f"text normalizer {normalizer}; "
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
