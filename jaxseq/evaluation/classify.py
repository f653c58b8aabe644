"""Classification evaluation: classify a prepared split, score it, report.

Sequence level: accuracy and macro-F1 (scikit-learn) over single labels; for multi-label
models, exact-match accuracy and macro-F1 over the label indicators (a label is predicted
when its sigmoid is at least 0.5). Frame level: frame accuracy over the frames a segment
covers, and the diarization error rate (pyannote.metrics) of the predicted segments with
oracle speech activity: frames no segment covers (pauses) are not scored, and speakers are
mapped one-to-one per item as DER does, so DER counts confusions only.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from jaxseq.config import TextConfig, frontend_settings, seconds_per_frame
from jaxseq.evaluation.scorer import Scorer
from jaxseq.tasks.base import Task
from jaxseq.tasks.classify import ClassifyTask, frame_targets

WORST_IN_REPORT = 20


def runs(ids: np.ndarray, names: tuple[str, ...], seconds: float) -> list[list]:
    """Frame label ids [frames] (-1: unlabeled) → [[start_s, end_s, name], ...] of the
    maximal runs of one label (unlabeled runs left out)."""
    out: list[list] = []
    start = 0
    for t in range(1, len(ids) + 1):
        if t == len(ids) or ids[t] != ids[start]:
            if ids[start] >= 0:
                out.append([round(start * seconds, 4), round(t * seconds, 4), names[ids[start]]])
            start = t
    return out


def _records(task: ClassifyTask, logits, enc_lengths, batch, ids, frame_seconds) -> list[dict]:
    """One record per row of a batch (host side; logits [rows, ...], enc_lengths [rows])."""
    names = task.tokenizer.names
    out = []
    if task.level == "frame":
        targets = np.asarray(
            frame_targets(batch["labels"], task.stride, logits.shape[1], task.frame_offset)
        )  # [rows, enc_frames]
        for r, item in enumerate(ids):
            n = int(enc_lengths[r])
            ref, hyp = targets[r, :n], np.argmax(logits[r, :n], axis=-1)
            scored = ref >= 0
            out.append(
                {
                    "id": item,
                    "frames": int(scored.sum()),
                    "correct": int((hyp[scored] == ref[scored]).sum()),
                    "reference": runs(ref, names, frame_seconds),
                    "predicted": runs(hyp, names, frame_seconds),
                }
            )
    elif task.multi_label:
        probs = 1.0 / (1.0 + np.exp(-logits))  # [b, labels]
        for r, item in enumerate(ids):
            ref = batch["labels"][r, : batch["label_lengths"][r]]
            out.append(
                {
                    "id": item,
                    "label": sorted(names[i] for i in ref),
                    "predicted": [names[i] for i in np.flatnonzero(probs[r] >= 0.5)],
                }
            )
    else:
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)  # [b, labels]
        for r, item in enumerate(ids):
            best = int(np.argmax(probs[r]))
            out.append(
                {
                    "id": item,
                    "label": names[int(batch["labels"][r, 0])],
                    "predicted": names[best],
                    "confidence": round(float(probs[r, best]), 4),
                }
            )
    return out


def score(task: ClassifyTask, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The split's metrics from its records (see the module docstring)."""
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import MultiLabelBinarizer

    if task.level == "frame":
        frames = sum(r["frames"] for r in records)
        der = diarization_error_rate(records)
        accuracy = sum(r["correct"] for r in records) / max(frames, 1)
        return {"frame_accuracy": accuracy, "der": der, "error_rate": der, "frames": frames}
    refs = [r["label"] for r in records]
    hyps = [r["predicted"] for r in records]
    if task.multi_label:
        binarizer = MultiLabelBinarizer(classes=list(task.tokenizer.names))
        refs, hyps = binarizer.fit_transform(refs), binarizer.transform(hyps)
        accuracy = float(np.mean(np.all(refs == hyps, axis=1)))
        # Macro over the labels the split has or predicts (an absent label is not a 0 F1).
        present = np.flatnonzero(refs.any(0) | hyps.any(0))
        f1 = f1_score(refs, hyps, average="macro", labels=present, zero_division=0)
    else:
        accuracy = float(np.mean([a == b for a, b in zip(refs, hyps, strict=True)]))
        f1 = f1_score(refs, hyps, average="macro", labels=sorted(set(refs) | set(hyps)))
    return {"accuracy": accuracy, "macro_f1": float(f1), "error_rate": 1.0 - accuracy}


def diarization_error_rate(records: list[dict[str, Any]]) -> float:
    """Total DER over the items (pyannote.metrics, no collar, the hypothesis cropped to the
    reference's speech): (missed + false alarm + confusion) / reference speech."""
    from pyannote.core import Annotation, Segment
    from pyannote.metrics.diarization import DiarizationErrorRate

    metric = DiarizationErrorRate(collar=0.0, skip_overlap=False)
    for r in records:
        ref, hyp = Annotation(uri=r["id"]), Annotation(uri=r["id"])
        for i, (start, end, name) in enumerate(r["reference"]):
            ref[Segment(start, end), i] = name
        for i, (start, end, name) in enumerate(r["predicted"]):
            hyp[Segment(start, end), i] = name
        metric(ref, hyp.crop(ref.get_timeline().support()), uem=ref.get_timeline().extent())
    return float(abs(metric))


def _turns(segments: list[list]) -> str:
    return ", ".join(f"{name} {start:.2f}-{end:.2f}s" for start, end, name in segments)


class ClassifyScorer(Scorer):
    """Records per item: label and prediction (with confidence), or frame runs; metrics as the
    module docstring says."""

    def records(self, task, context, predictions, batch, ids, texts) -> list[dict[str, Any]]:
        if not predictions:
            return []
        logits = np.stack([p[0] for p in predictions])  # [rows, labels] or [rows, frames, labels]
        enc_lengths = np.stack([p[1] for p in predictions])  # [rows]
        frame_seconds = seconds_per_frame(frontend_settings(context.frontend)) * task.stride
        return _records(task, logits, enc_lengths, batch, ids, frame_seconds)

    def score(self, task, records, context, *, seconds, input_seconds) -> dict[str, Any]:
        return score(task, records)

    def headline(self, task: Task, metrics: dict[str, Any]) -> str:
        if "der" in metrics:
            return f"frame accuracy {metrics['frame_accuracy']:.2%}  DER {metrics['der']:.2%}"
        return f"accuracy {metrics['accuracy']:.2%}  macro-F1 {metrics['macro_f1']:.2%}"

    def write_report(
        self, metrics: dict, records: list[dict], text: TextConfig, path: Path
    ) -> None:
        """The JSON report (metrics + every item) and a markdown one: the headline figures, the
        most frequent confusions and the worst items."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**metrics, "items": records}, indent=2))
        lines = [
            f"# Classification: {metrics['headline']}",
            "",
            f"{metrics['num_utterances']} items of {metrics['dataset']}:{metrics['split']} scored, "
            f"{metrics['num_skipped']} skipped by prepare (listed in {path.name}); step "
            f"{metrics['step']}.",
            "",
        ]
        if "der" in metrics:
            worst = sorted(records, key=lambda r: r["correct"] / max(r["frames"], 1))
            lines += [f"## Worst {min(WORST_IN_REPORT, len(worst))} items (frame accuracy)", ""]
            for r in worst[:WORST_IN_REPORT]:
                acc = r["correct"] / max(r["frames"], 1)
                lines += [
                    f"- {r['id']}: {acc:.1%}; reference {_turns(r['reference'])}; "
                    f"predicted {_turns(r['predicted'])}"
                ]
        else:
            wrong = [r for r in records if r["label"] != r["predicted"]]
            pairs = Counter((str(r["label"]), str(r["predicted"])) for r in wrong)
            lines += ["## Most frequent confusions", ""]
            lines += [f"- {a} → {b}: {n}" for (a, b), n in pairs.most_common(10)] or ["- none"]
            lines += ["", f"## Misclassified items ({len(wrong)})", ""]
            lines += [
                f"- {r['id']}: {r['label']} → {r['predicted']}" for r in wrong[:WORST_IN_REPORT]
            ]
        path.with_suffix(".md").write_text("\n".join(lines) + "\n")
