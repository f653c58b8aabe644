"""`jaxseq classify`: class labels of audio files with a classification workdir."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxseq.audio.io import load_audio
from jaxseq.errors import JaxseqError
from jaxseq.evaluate import feature_batches, load_trained
from jaxseq.parallel.batch import to_global
from jaxseq.parallel.sharding import replicated, sharding_context


def classify(
    workdir: str | Path,
    audio_paths: list[str | Path],
    *,
    frames: bool = False,
    step: int | None = None,
    top_k: int = 3,
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    """Classifies audio files (any format librosa reads; resampled to the model's rate).

    Returns one dict per file: {"path", "label", "confidence", "top": [[name, p], ...]} from a
    single-label model, {"path", "labels": [names with p >= 0.5], "top"} from a multi-label
    one, and with `frames` (a frame-level model) {"path", "segments": [[start_s, end_s,
    name], ...]}, one per run of equal frame labels.

    Raises:
      JaxseqError: the workdir is not a classifier, `frames` does not match its level, or a
        file is shorter than the model can classify (naming it).
    """
    from jaxseq.evaluation.classify import runs
    from jaxseq.tasks.classify import ClassifyTask

    trained = load_trained(workdir, step=step)
    task = trained.task
    if not isinstance(task, ClassifyTask):
        raise JaxseqError(
            f"{workdir} holds a {trained.cfg.model.family} model; classify needs a "
            "classification workdir (model.family=classify)"
        )
    if frames != (task.level == "frame"):
        raise JaxseqError(
            f"{workdir} classifies {'frames' if task.level == 'frame' else 'whole clips'}: "
            f"{'add' if task.level == 'frame' else 'drop'} --frames"
        )
    frontend = trained.frontend
    waves = [load_audio(p, frontend.sample_rate) for p in audio_paths]
    for path, wave in zip(audio_paths, waves, strict=True):
        n = 1 + len(wave) // frontend.hop_length
        if not task.min_frames <= n <= task.max_frames:
            raise JaxseqError(
                f"{path} is {len(wave) / frontend.sample_rate:.3f} s ({n} frames); the model "
                f"classifies clips of {task.min_frames} to {task.max_frames} frames: "
                f"{'pad' if n < task.min_frames else 'cut'} it"
            )
    logits_fn = jax.jit(task.logits, out_shardings=replicated(trained.mesh))
    names = task.tokenizer.names
    seconds = frontend.hop_length / frontend.sample_rate * task.stride
    results: list[dict[str, Any]] = []
    for batch, n in feature_batches(trained, waves, batch_size):
        with sharding_context(trained.mesh):
            logits, lengths = jax.device_get(
                logits_fn(trained.params, to_global(batch, trained.mesh))
            )
        for r in range(n):
            path = str(audio_paths[len(results)])
            if frames:
                hyp = np.argmax(logits[r, : int(lengths[r])], axis=-1)
                results.append({"path": path, "segments": runs(hyp, names, seconds)})
                continue
            if task.multi_label:
                probs = 1.0 / (1.0 + np.exp(-logits[r]))
            else:
                probs = np.exp(logits[r] - logits[r].max())
                probs /= probs.sum()
            order = np.argsort(-probs)[:top_k]
            top = [[names[i], round(float(probs[i]), 4)] for i in order]
            if task.multi_label:
                labels = [names[i] for i in np.flatnonzero(probs >= 0.5)]
                results.append({"path": path, "labels": labels, "top": top})
            else:
                results.append(
                    {"path": path, "label": top[0][0], "confidence": top[0][1], "top": top}
                )
    return results
