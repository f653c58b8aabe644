"""Text-to-speech scoring: what a machine can measure without listeners.

For every item of a split the model generates a spectrogram from the transcript (free
running, from an all-zero frame, until its stop token; `TTSTask.predict_fn`), scored on:
  * spectrogram distortion against the recorded utterance, aligned by DTW: mel cepstral
    distortion (dB) and the mean absolute log-mel difference (jaxseq.audio.distortion);
  * intelligibility, with `tts.asr_workdir`: the vocoder's audio transcribed by that jaxseq
    recognizer (in lockstep over the processes), scored by CER/WER against the transcript;
  * the teacher-forced loss, and how many generations never predicted stop.
The report holds every item and, for the first `tts.plots` items, PNGs of the generated and
reference spectrograms and of the cross-attention alignment.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

from jaxseq.audio.distortion import dtw_l1, mel_cepstral_distortion
from jaxseq.audio.vocoder import load_vocoder
from jaxseq.config import FrontendConfig, TextConfig
from jaxseq.errors import JaxseqError
from jaxseq.evaluation.plots import plot_alignment, plot_spectrograms
from jaxseq.evaluation.scorer import Scorer
from jaxseq.evaluation.scoring import error_counts, error_rates
from jaxseq.evaluation.waveforms import predict_waveforms
from jaxseq.tasks.base import ASRTask, Task
from jaxseq.train.trained import Trained, load_trained

WORST_IN_REPORT = 10
MEL = "mel"  # a record's generated spectrogram until `finish` vocodes it (never reported)


@functools.cache
def load_recognizer(asr_workdir: str, frontend: FrontendConfig) -> Trained:
    """The jaxseq recognizer that scores intelligibility (loaded once per process); it must
    hear the TTS's features. A collective (a checkpoint restore): call on every process."""
    trained = load_trained(asr_workdir)
    if not isinstance(trained.task, ASRTask):
        raise JaxseqError(
            f"tts.asr_workdir={asr_workdir} holds a {trained.cfg.model.family} model; point it "
            "at a speech recognizer's workdir (e.g. the CTC demo's runs/demo-ctc)"
        )
    if trained.frontend != frontend:
        raise JaxseqError(
            f"tts.asr_workdir={asr_workdir} was trained on features {trained.frontend}, but "
            f"the TTS model generates {frontend}; use a recognizer trained on the same frontend"
        )
    return trained


class TTSScorer(Scorer):
    """Records per item: frames, stop, distortion, and with a recognizer the hypothesis."""

    def records(self, task, context, predictions, batch, ids, texts) -> list[dict[str, Any]]:
        out = []
        for i, (item, text, generated) in enumerate(zip(ids, texts, predictions, strict=True)):
            ref = batch["features"][i, : int(batch["feature_lengths"][i])]
            out.append(
                {
                    "id": item,
                    "text": text,
                    "frames": generated.lengths,
                    "reference_frames": len(ref),
                    "stopped": generated.stopped,
                    "mel_cepstral_distortion": mel_cepstral_distortion(generated.mel, ref),
                    "dtw_l1": dtw_l1(generated.mel, ref),
                    MEL: generated.mel,
                }
            )
        return out

    def plot(self, task, report_dir, context, records, predictions, batch, extras) -> None:
        for i, (record, generated) in enumerate(zip(records, predictions, strict=True)):
            chars = int(batch["label_lengths"][i])
            ref = batch["features"][i, : int(batch["feature_lengths"][i])]
            record["plots"] = _plot(
                report_dir,
                f"{context.split}-{record['id']}",
                record["text"],
                generated.mel,
                ref,
                generated.alignment[:, :chars],
            )

    def start(self, task, context) -> None:
        """Loads the vocoder and the recognizer first: a bad `tts.vocoder` or
        `tts.asr_workdir` fails before anything is generated."""
        if task.cfg.tts.asr_workdir:
            load_vocoder(task.cfg.tts.vocoder, context.frontend)
            load_recognizer(task.cfg.tts.asr_workdir, context.frontend)

    def finish(self, task, records, context) -> list[dict[str, Any]]:
        """Vocodes and transcribes this process's items with `tts.asr_workdir`'s recognizer
        (every process the same number of batches), and drops the spectrograms."""
        cfg = task.cfg
        if cfg.tts.asr_workdir:
            recognizer = load_recognizer(cfg.tts.asr_workdir, context.frontend)
            vocoder = load_vocoder(cfg.tts.vocoder, context.frontend)
            waves = [vocoder(r[MEL]) for r in records]
            hyps = predict_waveforms(recognizer, waves, **context.options)
            for record, hyp in zip(records, hyps, strict=True):
                record["hyp"] = hyp
        for record in records:
            del record[MEL]
        late = [r["id"] for r in records if not r["stopped"]]
        if late:
            logging.warning(
                "%s:%s: %d of %d generations reached tts.max_frames=%d without predicting stop "
                "(kept at that length), e.g. %s",
                context.dataset,
                context.split,
                len(late),
                len(records),
                cfg.tts.max_frames,
                late[:5],
            )
        return records

    def score(self, task, records, context, *, seconds, input_seconds) -> dict[str, Any]:
        cfg = task.cfg
        text = (
            load_recognizer(cfg.tts.asr_workdir, context.frontend).text
            if cfg.tts.asr_workdir
            else None
        )
        out = _metrics(records, text)
        hop_seconds = context.frontend.hop_length / context.frontend.sample_rate
        audio_seconds = sum(r["frames"] for r in records) * hop_seconds
        out.update(
            synthesis_seconds=seconds,  # generation, compilation excluded, over the processes
            audio_seconds=audio_seconds,
            real_time_factor=seconds / max(audio_seconds, 1e-9),
            vocoder=cfg.tts.vocoder,
            asr_workdir=cfg.tts.asr_workdir,
        )
        return out

    def headline(self, task: Task, metrics: dict[str, Any]) -> str:
        line = (
            f"MCD {metrics['mel_cepstral_distortion']:.2f} dB  "
            f"DTW-L1 {metrics['dtw_l1']:.3f}  not stopped {metrics['not_stopped']}"
        )
        if "cer" in metrics:
            line = f"intelligibility CER {metrics['cer']:.2%} WER {metrics['wer']:.2%}  " + line
        return line

    def write_report(
        self, metrics: dict[str, Any], records: list[dict], text: TextConfig, path: Path
    ) -> None:
        """The JSON report (metrics + every item) and a markdown one with the plots and the items
        the recognizer got most wrong (else the most distorted)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**metrics, "utterances": records}, indent=2))
        lines = [f"# TTS evaluation, step {metrics['step']}", ""]
        if "cer" in metrics:
            lines.append(
                f"Intelligibility: CER {metrics['cer']:.2%}, WER {metrics['wer']:.2%} "
                f"(audio from vocoder `{metrics['vocoder']}`, transcribed by "
                f"`{metrics['asr_workdir']}`)."
            )
        lines += [
            f"Spectrogram distortion against the recordings (DTW-aligned): MCD "
            f"{metrics['mel_cepstral_distortion']:.2f} dB, "
            f"mean |Δ log-mel| {metrics['dtw_l1']:.3f}; "
            f"teacher-forced loss {metrics['loss']:.4f}.",
            "",
            f"{metrics['num_utterances']} utterances of {metrics['dataset']}:{metrics['split']} "
            f"({metrics['num_skipped']} skipped by prepare, listed in {path.name}); "
            f"{metrics['not_stopped']} never predicted stop; generated/reference length "
            f"{metrics['length_ratio']:.2f}; real-time factor {metrics['real_time_factor']:.4f}.",
            "",
            "## Plots",
            "",
        ]
        for r in records:
            for kind, plot in r.get("plots", {}).items():  # relative to the report's folder
                lines += [f"### {r['id']} {kind}: {r['text']}", "", f"![{kind}]({plot})", ""]
        key = "hyp" if "cer" in metrics else None
        worst = sorted(records, key=lambda r: -r["mel_cepstral_distortion"])
        if key:
            worst = [r for r in records if r["hyp"] != r["text"]]
        lines += [f"## {'Misrecognized' if key else 'Most distorted'} utterances", ""]
        for r in worst[:WORST_IN_REPORT]:
            heard = f" → heard {r['hyp']!r}" if key else ""
            lines.append(
                f"- {r['id']}: {r['text']!r}{heard} (MCD {r['mel_cepstral_distortion']:.1f} dB, "
                f"{r['frames']} frames vs {r['reference_frames']}"
                f"{'' if r['stopped'] else ', never stopped'})"
            )
        path.with_suffix(".md").write_text("\n".join(lines) + "\n")


def _metrics(records: list[dict[str, Any]], text: TextConfig | None) -> dict[str, Any]:
    """Means over items; CER/WER (jiwer, under the recognizer's text policy) with one."""
    n = max(len(records), 1)
    out: dict[str, Any] = {
        "num_utterances": len(records),
        "mel_cepstral_distortion": sum(r["mel_cepstral_distortion"] for r in records) / n,
        "dtw_l1": sum(r["dtw_l1"] for r in records) / n,
        "not_stopped": sum(not r["stopped"] for r in records),
        "length_ratio": sum(r["frames"] / max(r["reference_frames"], 1) for r in records) / n,
    }
    if text is not None:
        refs, hyps = [r["text"] for r in records], [r["hyp"] for r in records]
        out.update(error_rates(error_counts(refs, hyps, text)))
    return out


def _plot(report_dir: Path, name: str, text: str, pred, ref, alignment) -> dict[str, str]:
    """PNGs in report_dir/plots/; returns their paths relative to report_dir."""
    spectrogram, attention = f"plots/{name}-spectrogram.png", f"plots/{name}-alignment.png"
    plot_spectrograms(
        report_dir / spectrogram, [("generated", pred), ("reference", ref)], title=text
    )
    plot_alignment(
        report_dir / attention,
        alignment,
        title=f"{text} (cross-attention, layers and heads averaged)",
        ylabel="character",
    )
    return {"spectrogram": spectrogram, "alignment": attention}
