"""Spoken-language identification with a multilingual Whisper model (`--language auto`).

As openai-whisper's `detect_language` (whisper/decoding.py) and transformers'
`WhisperForConditionalGeneration.detect_language` do it: the encoder on one window (log-mel
padded with silence to 30 s, `pad_like_whisper`), one decoder step from
`<|startoftranscript|>`, every logit but the language tokens' masked to -inf, and a softmax:
the argmax is the language, the softmax its probability.

With `model.language=auto`, each recording's language is detected on its first 30 s, as
openai-whisper's `transcribe` does, and every window of the recording is decoded with that
language's prompt (`recording_languages`, then `WhisperTask.prompt_for`). An English-only
checkpoint has no language token to detect: its "auto" is English (transformers'
`generate(language=None)` puts no language token in its prompt, openai-whisper reports "en").
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from jaxseq.errors import JaxseqError
from jaxseq.evaluation.waveforms import predicted_batches
from jaxseq.inference.longform import window_features
from jaxseq.models.whisper import WhisperModel
from jaxseq.tasks.base import Batch
from jaxseq.tasks.whisper import AUTO, WhisperTask, pad_like_whisper
from jaxseq.train.trained import Trained

log = logging.getLogger(__name__)


def language_probs(task: WhisperTask, params: Any, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """Device side: the language of each row (jit it; its shapes are the batch's).

    Args:
      batch: features float [batch, frames, n_mels] (frames past the model's 30 s are cut, as
        transformers does) and feature_lengths int [batch].
    Returns:
      the most probable language's token id, int32 [batch], and the probabilities of the
      language tokens (a softmax over them alone), float32 [batch, languages] in the order of
      `task.language_ids`.
    """
    num_frames = task.dims.num_frames
    ids = jnp.asarray(list(task.language_ids.values()), jnp.int32)  # [languages]
    features = batch["features"][:, :num_frames].astype(jnp.float32)
    lengths = jnp.minimum(batch["feature_lengths"], num_frames)
    features, lengths = pad_like_whisper(features, lengths, num_frames)  # [batch, 2 * enc, mels]
    variables = {"params": params}
    encoded, mask = task.model.apply(variables, features, lengths, method=WhisperModel.encode)
    start = jnp.full((features.shape[0], 1), task.tokenizer.sot_id, jnp.int32)  # [batch, 1]
    logits = task.model.apply(variables, start, encoded, mask, method=WhisperModel.decode)
    logits = logits[:, 0]  # [batch, vocab]
    is_language = jnp.zeros(logits.shape[-1], bool).at[ids].set(True)  # [vocab]
    logits = jnp.where(is_language, logits, -jnp.inf)
    probs = jax.nn.softmax(logits, axis=-1)[:, ids]  # [batch, languages]
    return jnp.argmax(logits, axis=-1).astype(jnp.int32), probs


@dataclasses.dataclass(frozen=True)
class _Detector:
    """`language_probs` as the `predict_fn` that `predicted_batches` batches in lockstep over
    the processes and jits (once per detector, i.e. per task: equal detectors share it)."""

    task: WhisperTask

    def predict_fn(self, params: Any, batch: Batch) -> tuple[jax.Array, jax.Array]:
        return language_probs(self.task, params, batch)


def detect_languages(
    trained: Trained, waves: list[np.ndarray], *, batch_size: int = 32
) -> list[tuple[str, dict[str, float]]]:
    """Each float waveform's [samples] language from its first 30 s (the model's window):
    (code, {code: probability} over every language of the checkpoint).

    A collective with several processes: every process calls it, with its own waveforms (any
    number, also none), as `predicted_batches`.
    """
    task = trained.task
    if not task.language_ids:
        raise JaxseqError(
            f"the workdir's {trained.cfg.model.family} model has no language tokens to "
            "detect (a multilingual Whisper checkpoint has)"
        )
    context = task.dims.num_frames * trained.frontend.hop_length  # samples in 30 s
    codes = list(task.language_ids)
    code_of = {i: code for code, i in task.language_ids.items()}
    detected = []
    for ids, probs in predicted_batches(
        dataclasses.replace(trained, task=_Detector(task)),
        waves,
        lambda wave: window_features(trained, wave[:context]),
        batch_size=batch_size,
        options={},
    ):
        detected += [
            (code_of[int(i)], dict(zip(codes, p.tolist(), strict=True)))
            for i, p in zip(ids, probs, strict=True)
        ]
    return detected


def recording_languages(
    trained: Trained,
    waves: list[np.ndarray],
    language: str | None = None,
    *,
    batch_size: int = 32,
) -> tuple[list[str | None], list[str | None]]:
    """The language of each recording's prompt, and every language that some process's
    recordings have, in the one order all processes decode them (each a `decode_windows` call).

    Args:
      language: a code, "auto" (each recording's language detected on its first 30 s; an
        English-only checkpoint's is "en"), or None for the task's (`model.language`; None
        for a model trained here, whose prompt has no language).
    A collective with several processes: every process calls it, with its own waveforms.
    """
    task = trained.task
    language = language or task.language
    if language != AUTO:
        return [language] * len(waves), [language]
    if not task.language_ids:  # English-only Whisper: nothing to detect
        return ["en"] * len(waves), ["en"]
    detected = [code for code, _ in detect_languages(trained, waves, batch_size=batch_size)]
    if detected:
        counts = collections.Counter(detected).most_common()
        log.info("detected languages: %s", ", ".join(f"{c} ({n})" for c, n in counts))
    codes = list(task.language_ids)
    seen = np.isin(codes, detected).astype(np.int32)  # [languages]
    if jax.process_count() > 1:
        seen = np.asarray(multihost_utils.process_allgather(seen)).max(axis=0)
    return detected, [code for code, s in zip(codes, seen, strict=True) if s]
