"""Class labels of audio with a classification workdir (`jaxseq classify`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jaxseq.audio.io import load_audio
from jaxseq.config import frontend_settings, seconds_per_frame
from jaxseq.errors import JaxseqError
from jaxseq.evaluation.classify import runs
from jaxseq.evaluation.waveforms import predict_waveforms
from jaxseq.tasks.classify import ClassifyTask
from jaxseq.train.trained import Trained, load_trained


def classify_waveforms(
    trained: Trained,
    waves: list[np.ndarray],
    *,
    names: list[str] | None = None,
    frames: bool = False,
    top_k: int = 3,
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    """Classifies float waveforms [samples] at the model's sample rate.

    Returns one dict per waveform: {"label", "confidence", "top": [[name, p], ...]} from a
    single-label model, {"labels": [names with p >= 0.5], "top"} from a multi-label one, and
    with `frames` (a frame-level model) {"segments": [[start_s, end_s, name], ...]}, one per
    run of equal frame labels. `names` (e.g. the files' paths) name the waveforms in errors
    and are returned as "path".

    Raises:
      JaxseqError: the workdir is not a classifier, `frames` does not match its level, or a
        waveform is shorter or longer than the model can classify (naming it).
    """
    task = trained.task
    if not isinstance(task, ClassifyTask):
        raise JaxseqError(
            f"the workdir holds a {trained.cfg.model.family} model; classify needs a "
            "classification workdir (model.family=classify)"
        )
    if frames != (task.level == "frame"):
        raise JaxseqError(
            f"the workdir classifies {'frames' if task.level == 'frame' else 'whole clips'}: "
            f"{'add' if task.level == 'frame' else 'drop'} --frames (frames=True)"
        )
    frontend = trained.frontend
    names = names or [f"waveform {i}" for i in range(len(waves))]
    waveform = frontend.kind == "waveform"  # the model's frames are samples
    unit = "samples" if waveform else "frames"
    for name, wave in zip(names, waves, strict=True):
        n = len(wave) if waveform else 1 + len(wave) // frontend.hop_length
        if not task.min_frames <= n <= task.max_frames:
            raise JaxseqError(
                f"{name} is {len(wave) / frontend.sample_rate:.3f} s ({n} {unit}); the model "
                f"classifies clips of {task.min_frames} to {task.max_frames} {unit}: "
                f"{'pad' if n < task.min_frames else 'cut'} it"
            )
    labels = task.tokenizer.names
    seconds = seconds_per_frame(frontend_settings(frontend)) * task.stride  # per encoder frame
    results: list[dict[str, Any]] = []
    for name, (logits, length) in zip(
        names, predict_waveforms(trained, waves, batch_size=batch_size), strict=True
    ):
        if frames:
            hyp = np.argmax(logits[: int(length)], axis=-1)  # [enc_frames]
            results.append({"path": name, "segments": runs(hyp, labels, seconds)})
            continue
        if task.multi_label:
            probs = 1.0 / (1.0 + np.exp(-logits))
        else:
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
        order = np.argsort(-probs)[:top_k]
        top = [[labels[i], round(float(probs[i]), 4)] for i in order]
        if task.multi_label:
            chosen = [labels[i] for i in np.flatnonzero(probs >= 0.5)]
            results.append({"path": name, "labels": chosen, "top": top})
        else:
            results.append({"path": name, "label": top[0][0], "confidence": top[0][1], "top": top})
    return results


def classify(
    workdir: str | Path,
    audio_paths: list[str | Path],
    *,
    frames: bool = False,
    step: int | None = None,
    top_k: int = 3,
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    """Classifies audio files (any format librosa reads; resampled to the model's rate); see
    `classify_waveforms`, each result's "path" being its file."""
    trained = load_trained(workdir, step=step)
    waves = [load_audio(p, trained.frontend.sample_rate) for p in audio_paths]
    return classify_waveforms(
        trained,
        waves,
        names=[str(p) for p in audio_paths],
        frames=frames,
        top_k=top_k,
        batch_size=batch_size,
    )
