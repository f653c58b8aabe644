"""Text-to-speech evaluation: what a machine can measure without listeners.

For every item of a prepared split the model generates a spectrogram from the transcript
(free running, from an all-zero frame, until its stop token) and is scored on:
  * spectrogram distortion against the recorded utterance, aligned by DTW: mel cepstral
    distortion (dB) and the mean absolute log-mel difference (jaxseq.audio.distortion);
  * intelligibility, with `tts.asr_workdir`: the vocoder's audio transcribed by that jaxseq
    recognizer, scored by CER/WER against the transcript;
  * the teacher-forced loss, and how many generations never predicted stop.
The report holds every item and, for the first `tts.plots` items, PNGs of the generated and
reference spectrograms and of the cross-attention alignment.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from jax.sharding import Mesh

from jaxseq.audio.distortion import dtw_l1, mel_cepstral_distortion
from jaxseq.audio.vocoder import load_vocoder
from jaxseq.config import FrontendConfig, TextConfig
from jaxseq.data.pipeline import load_dataset_info
from jaxseq.errors import JaxseqError
from jaxseq.evaluation.split import eval_batches, gather_records
from jaxseq.parallel.batch import to_global
from jaxseq.parallel.sharding import replicated, sharding_context
from jaxseq.plots import plot_alignment, plot_spectrograms
from jaxseq.scoring import error_counts, error_rates

if TYPE_CHECKING:
    from jaxseq.evaluate import Trained
    from jaxseq.tasks.tts import TTSTask

WORST_IN_REPORT = 10


@functools.cache
def _eval_step(task: TTSTask, mesh: Mesh):
    """One jitted function per (task, mesh): a batch's generated spectrograms and its
    teacher-forced loss (the pre-net dropout drawn from a fixed key, so evaluations repeat)."""

    def step(params, batch):
        rng = jax.random.PRNGKey(0)
        generated = task.synthesize_fn(params, batch["labels"], batch["label_lengths"], rng)
        return generated, task.loss_fn(params, batch, rng, train=False)

    return jax.jit(step, out_shardings=replicated(mesh))


def load_recognizer(asr_workdir: str | Path, frontend: FrontendConfig) -> Trained:
    """The jaxseq recognizer that scores intelligibility; it must hear the TTS's features."""
    from jaxseq.evaluate import load_trained
    from jaxseq.tasks.base import ASRTask

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


def evaluate_split(
    task: TTSTask,
    params: Any,
    mesh: Mesh,
    dataset_dir: str | Path,
    split: str,
    *,
    report_dir: Path | None = None,
    decoder: str | None = None,
    beam_size: int | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Generates and scores every item of a prepared split (see the module docstring).

    Args:
      report_dir: where the plots go (`plots/` inside); None: no plots.
      decoder, beam_size: the recognizer's decoding (default: its workdir's config).
    Returns:
      (metrics: mel_cepstral_distortion, dtw_l1, loss, not_stopped, length_ratio,
      num_utterances, synthesis timing, and with a recognizer cer, wer and their edit counts;
      records: one per item, from all processes, in dataset order).
    """
    cfg = task.cfg
    info = load_dataset_info(dataset_dir, split)
    frontend = FrontendConfig(**info["frontend"])
    recognizer = None
    if cfg.tts.asr_workdir:
        if task._asr is None:
            task._asr = load_recognizer(cfg.tts.asr_workdir, frontend)
        recognizer = task._asr
    vocoder = load_vocoder(cfg.tts.vocoder, frontend) if recognizer else None
    eval_step = _eval_step(task, mesh)
    p, count = jax.process_index(), jax.process_count()
    records: list[dict[str, Any]] = []
    rows_per_batch: list[int] = []
    waves: list[np.ndarray] = []
    loss_sum = frames_total = synthesis_seconds = 0.0
    warm: set[tuple[int, ...]] = set()
    batches = eval_batches(dataset_dir, split, cfg.data, task.tokenizer, "synthesize")
    for host_batch, ids, texts in batches:
        b = len(ids)
        batch = to_global(host_batch, mesh)
        with sharding_context(mesh):
            if batch["labels"].shape not in warm:  # compile outside the timed region
                jax.block_until_ready(eval_step(params, batch))
                warm.add(batch["labels"].shape)
            start = time.perf_counter()
            generated, (loss, metrics) = jax.block_until_ready(eval_step(params, batch))
            synthesis_seconds += time.perf_counter() - start
        generated = jax.tree.map(lambda x, p=p, b=b: np.asarray(x)[p * b : (p + 1) * b], generated)
        loss_sum += float(loss) * float(metrics["tokens"])
        frames_total += float(metrics["tokens"])
        mine = 0
        for i, (item, text) in enumerate(zip(ids, texts, strict=True)):
            if not host_batch["valid"][i]:
                continue
            n, n_ref = int(generated.lengths[i]), int(host_batch["feature_lengths"][i])
            pred, ref = generated.mel[i, :n], host_batch["features"][i, :n_ref]
            records.append(
                {
                    "id": item,
                    "text": text,
                    "frames": n,
                    "reference_frames": n_ref,
                    "stopped": bool(generated.stopped[i]),
                    "mel_cepstral_distortion": mel_cepstral_distortion(pred, ref),
                    "dtw_l1": dtw_l1(pred, ref),
                }
            )
            if vocoder is not None:
                waves.append(vocoder(pred))
            if report_dir is not None and p == 0 and len(records) <= cfg.tts.plots:
                steps = -(-n // task.dims.reduction_factor)
                chars = int(host_batch["label_lengths"][i])
                records[-1]["plots"] = _plot(
                    Path(report_dir),
                    f"{split}-{item}",
                    text,
                    pred,
                    ref,
                    generated.alignment[i, :steps, :chars],
                )
            mine += 1
        rows_per_batch.append(mine)
    if recognizer is not None:
        hyps = _transcribe(recognizer, waves, decoder, beam_size)
        for record, hyp in zip(records, hyps, strict=True):
            record["hyp"] = hyp
    if count > 1:
        records = gather_records(records, rows_per_batch)
    out = _metrics(records, recognizer.text if recognizer else None)
    hop_seconds = frontend.hop_length / frontend.sample_rate
    audio_seconds = sum(r["frames"] for r in records) * hop_seconds
    out.update(
        loss=loss_sum / max(frames_total, 1.0),
        synthesis_seconds=synthesis_seconds,  # this process's generation, compilation excluded
        audio_seconds=audio_seconds,
        real_time_factor=synthesis_seconds / max(audio_seconds, 1e-9),
        vocoder=cfg.tts.vocoder,
        asr_workdir=cfg.tts.asr_workdir,
    )
    late = [r["id"] for r in records if not r["stopped"]]
    if late:
        logging.warning(
            "%s:%s: %d of %d generations reached tts.max_frames=%d without predicting stop "
            "(kept at that length), e.g. %s",
            dataset_dir,
            split,
            len(late),
            len(records),
            cfg.tts.max_frames,
            late[:5],
        )
    return out, records


def _transcribe(recognizer: Trained, waves, decoder, beam_size) -> list[str]:
    from jaxseq.evaluate import transcribe_waveforms

    return transcribe_waveforms(recognizer, waves, decoder=decoder, beam_size=beam_size)


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


def write_report(metrics: dict[str, Any], records: list[dict], path: Path) -> None:
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
        f"{metrics['mel_cepstral_distortion']:.2f} dB, mean |Δ log-mel| {metrics['dtw_l1']:.3f}; "
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
