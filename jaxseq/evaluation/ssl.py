"""Self-supervised pre-training evaluation (metric kind "ssl", jaxseq.tasks.ssl): the
objective on a prepared split under fixed masks (and distractors), scored.

The loop adds the objective's loss per masked frame (`loss`, the task's best_metric). The
scorer adds `masked_accuracy`: the fraction of the masked frames whose prediction ranks first
(wav2vec2: the positive's logit highest among its distractors, fairseq's "correct"; hubert:
the target cluster's logit highest), `masked_frames` (how many were scored) and, for wav2vec2,
`codevector_perplexity`: the quantizer's perplexity of each batch's masked frames, averaged
over the batches weighted by their masked frames.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jaxseq.config import TextConfig
from jaxseq.evaluation.scorer import Scorer
from jaxseq.tasks.base import Task

WORST_IN_REPORT = 20


def score(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The split's metrics from its records (see the module docstring)."""
    masked = sum(r["masked"] for r in records)
    correct = sum(r["correct"] for r in records)
    out: dict[str, Any] = {
        "masked_accuracy": correct / max(masked, 1),
        "masked_frames": masked,
    }
    if any("perplexity" in r for r in records):
        weighted = sum(r["perplexity"] * r["masked"] for r in records)
        out["codevector_perplexity"] = weighted / max(masked, 1)
    return out


class SSLScorer(Scorer):
    """Records per item: its masked frames, those predicted right, and (wav2vec2) its batch's
    codevector perplexity; metrics as the module docstring says."""

    def records(self, task, context, predictions, batch, ids, texts) -> list[dict[str, Any]]:
        out = []
        for item, p in zip(ids, predictions, strict=True):
            record = {"id": item, "masked": int(p["masked"]), "correct": int(p["correct"])}
            if "perplexity" in p:
                record["perplexity"] = float(p["perplexity"])
            out.append(record)
        return out

    def score(self, task, records, context, *, seconds, input_seconds) -> dict[str, Any]:
        return score(records)

    def headline(self, task: Task, metrics: dict[str, Any]) -> str:
        return f"loss {metrics['loss']:.4f}  masked accuracy {metrics['masked_accuracy']:.2%}"

    def write_report(
        self, metrics: dict, records: list[dict], text: TextConfig, path: Path
    ) -> None:
        """The JSON report (metrics + every item) and a markdown one: the headline figures and
        the items of lowest masked accuracy."""
        del text
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**metrics, "items": records}, indent=2))
        lines = [
            f"# Self-supervised objective: {metrics['headline']}",
            "",
            f"{metrics['num_utterances']} items of {metrics['dataset']}:{metrics['split']} scored, "
            f"{metrics['num_skipped']} skipped by prepare (listed in {path.name}); step "
            f"{metrics['step']}; {metrics['masked_frames']} masked frames.",
        ]
        if "codevector_perplexity" in metrics:
            lines += ["", f"Codevector perplexity {metrics['codevector_perplexity']:.2f}."]
        worst = sorted(
            (r for r in records if r["masked"] > 0), key=lambda r: r["correct"] / r["masked"]
        )
        lines += ["", f"## Lowest masked accuracy ({min(WORST_IN_REPORT, len(worst))} items)", ""]
        lines += [
            f"- {r['id']}: {r['correct'] / r['masked']:.1%} of {r['masked']} masked frames"
            for r in worst[:WORST_IN_REPORT]
        ] or ["- none"]
        path.with_suffix(".md").write_text("\n".join(lines) + "\n")
