"""Speech from text with a trained TTS workdir: `jaxseq synthesize --workdir DIR "text" -o a.wav`.

The model generates log-mel spectrograms; the vocoder (`tts.vocoder`, Griffin-Lim by default,
see jaxseq.audio.vocoder) turns them into audio at the workdir's sample rate.

transformers' SpeechT5 with its HiFi-GAN (`jaxseq synthesize --hf`) is
jaxseq.convert.speecht5_synthesizer's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxseq.audio.vocoder import load_vocoder, write_wav
from jaxseq.errors import JaxseqError
from jaxseq.parallel.batch import to_global
from jaxseq.parallel.mesh import data_parallel_size
from jaxseq.parallel.sharding import replicated, sharding_context
from jaxseq.tasks.tts import TTSTask
from jaxseq.train.trained import Trained, load_trained


def output_paths(out: str | Path, count: int) -> list[Path]:
    """`out` itself for one text ending in .wav; otherwise `out` is a folder of 000.wav, ..."""
    out = Path(out)
    if count == 1 and out.suffix.lower() == ".wav":
        return [out]
    if out.suffix:
        raise JaxseqError(
            f"-o {out}: {count} texts need a folder (they are written as 000.wav, 001.wav, ...)"
        )
    return [out / f"{i:03d}.wav" for i in range(count)]


def synthesize_audio(
    trained: Trained, texts: list[str], *, seed: int = 0, vocoder: str | None = None
) -> list[dict[str, Any]]:
    """Speech for each text: {"text", "audio" (float32 [samples]), "sample_rate", "frames",
    "seconds", "stopped"}.

    Texts are normalized under the workdir's text policy; an empty text, one with characters
    outside the vocabulary or one over data.max_label_length characters is an error naming it,
    before anything is generated. A generation that never predicts stop is cut at
    tts.max_frames and warned about. `seed` drives the pre-net dropout (same seed, same audio).
    """
    task, mesh = trained.task, trained.mesh
    if not isinstance(task, TTSTask):
        raise JaxseqError(
            f"the workdir holds a {trained.cfg.model.family} model; synthesize needs a TTS "
            "workdir (model.family=tts)"
        )
    if not texts:
        raise JaxseqError("no text to synthesize")
    ids = [task.encode_text(t, trained.text) for t in texts]
    dp = data_parallel_size(mesh)
    rows = -(-len(ids) // dp) * dp  # a multiple of the data-parallel size
    width = max(len(x) for x in ids)
    labels = np.zeros((rows, width), np.int32)  # [rows, chars]
    lengths = np.zeros((rows,), np.int32)
    for i, x in enumerate(ids):
        labels[i, : len(x)], lengths[i] = x, len(x)
    generate = jax.jit(task.synthesize_fn, out_shardings=replicated(mesh))
    batch = to_global({"labels": labels, "label_lengths": lengths}, mesh)
    with sharding_context(mesh):
        generated = jax.device_get(
            generate(
                trained.params,
                batch["labels"],
                batch["label_lengths"],
                jax.random.PRNGKey(seed),
            )
        )
    voc = load_vocoder(vocoder or trained.cfg.tts.vocoder, trained.frontend)
    results = []
    for i, text in enumerate(texts):
        n = int(generated.lengths[i])
        if not generated.stopped[i]:
            logging.warning(
                "%r never predicted stop: cut at tts.max_frames=%d frames",
                text,
                trained.cfg.tts.max_frames,
            )
        audio = voc(np.asarray(generated.mel[i, :n]))
        results.append(
            {
                "text": text,
                "audio": audio,
                "sample_rate": voc.sample_rate,
                "frames": n,
                "seconds": len(audio) / voc.sample_rate,
                "stopped": bool(generated.stopped[i]),
            }
        )
    return results


def synthesize(
    workdir: str | Path,
    texts: list[str],
    out: str | Path,
    *,
    step: int | None = None,
    seed: int = 0,
    vocoder: str | None = None,
    overrides: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """Writes one WAV per text (`output_paths`) and returns {"text", "path", "frames",
    "seconds", "stopped"} for each (see `synthesize_audio`)."""
    if not texts:
        raise JaxseqError("no text to synthesize")
    paths = output_paths(out, len(texts))
    trained = load_trained(workdir, step=step, overrides=overrides)
    results = synthesize_audio(trained, texts, seed=seed, vocoder=vocoder)
    for r, path in zip(results, paths, strict=True):
        write_wav(path, r.pop("audio"), r.pop("sample_rate"))
        r["path"] = str(path)
    return results
