"""The public Python API; the `jaxseq` command is argument parsing over these functions.

import jaxseq
cfg = jaxseq.load_config("configs/ctc_demo.yaml", overrides=["train.num_steps=100"])
summary = jaxseq.train(cfg, "runs/x")
model = jaxseq.load("runs/x")
model.transcribe(["a.wav"])
report = jaxseq.evaluate("runs/x", "data/test/manifest.jsonl")
plan = jaxseq.compile(cfg, "v5p:2x2x2")   # memory per device and FLOPs, compiled, not run
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxseq.audio.io import load_audio
from jaxseq.config import Config
from jaxseq.config import load_config as _load_config
from jaxseq.errors import JaxseqError
from jaxseq.evaluation.loop import evaluate_split, scorer_for
from jaxseq.evaluation.robustness import evaluate_robustness
from jaxseq.evaluation.workdir import evaluate_trained
from jaxseq.inference.classify import classify_waveforms
from jaxseq.inference.manifest_job import transcribe_manifest
from jaxseq.inference.synthesize import synthesize_audio
from jaxseq.inference.transcribe import transcribe_waveforms
from jaxseq.tasks.base import Task
from jaxseq.train import loop
from jaxseq.train.compile import compile_config
from jaxseq.train.trained import Trained, load_trained


def load_config(
    path_or_dict: str | Path | dict | None = None, overrides: Sequence[str] = ()
) -> Config:
    """A frozen, type-checked Config from a YAML file or a nested dict, with `a.b=c`
    overrides applied last. An unknown key, a wrong type or an invalid choice is a
    ConfigError naming the key and the closest valid one."""
    return _load_config(path_or_dict, tuple(overrides))


def compile(  # noqa: A001  (the `jaxseq compile` verb)
    cfg: Config | str | Path,
    topology: str | None = None,
    *,
    num_slices: int = 1,
    mfu: float = 0.4,
    workdir: str | Path | None = None,
    evaluation: bool = True,
) -> dict[str, Any]:
    """Compiles the config's train and evaluation steps for a TPU `topology` ("v5p:2x2x2",
    `num_slices` of them; needs `pip install jaxseq[tpu]`) or, by default, the local devices,
    without running them. Returns the report: per-device parameter, optimizer, temporary and
    peak bytes against the chip's HBM (`report["train"]["fits"]`), FLOPs per step and, at
    `mfu`, the step time. With `workdir`, also writes it and the HLO to `workdir/compile/`.
    `evaluation=False` compiles the train step alone."""
    cfg = cfg if isinstance(cfg, Config) else _load_config(cfg)
    return compile_config(cfg, topology, num_slices, mfu, workdir, evaluation)


def validation(cfg: Config):
    """The evaluator `train` runs every train.eval_every steps: the one evaluation loop over
    cfg.data.eval_split, its metrics with a one-line "headline"."""

    def evaluate(task: Task, params: Any, mesh: Any) -> dict[str, Any]:
        metrics, _ = evaluate_split(task, params, mesh, cfg.data.dataset, cfg.data.eval_split)
        metrics["headline"] = scorer_for(task).headline(task, metrics)
        return metrics

    return evaluate


def train(
    cfg: Config | str | Path,
    workdir: str | Path,
    *,
    data: Any = None,
    callbacks: Sequence[loop.Callback] = (),
) -> dict[str, Any]:
    """Trains (or resumes) `cfg` in `workdir` and returns a summary: start and final step,
    last train loss, last validation metrics ("eval"), the shapes compiled.

    Args:
      cfg: a Config (`load_config`), or a YAML path.
      data: this process's training batches instead of cfg.data.dataset's pipeline: any
        iterable of host batches (dicts of NumPy arrays in the family's training layout:
        features, feature_lengths, labels, label_lengths; data.batch_size / processes rows),
        or a grain dataset. The task (tokenizer, sizes) still comes from cfg.data.dataset.
      callbacks: each called as callback(step, metrics) after every step (metrics: device
        arrays of sums and counts, e.g. "loss", "tokens", "grad_norm").
    Validation runs on cfg.data.eval_split (empty: none) every train.eval_every steps.
    A collective: call on every process.
    """
    if not isinstance(cfg, Config):
        cfg = load_config(cfg)
    evaluator = validation(cfg) if cfg.data.eval_split else None
    return loop.train(cfg, workdir, data=data, evaluator=evaluator, callbacks=callbacks)


def _waveforms(model: Trained, items: Sequence[Any]) -> tuple[list[np.ndarray], list[str]]:
    """Audio paths (loaded and resampled) or float waveforms at the model's rate."""
    waves, names = [], []
    for i, item in enumerate(items):
        if isinstance(item, str | Path):
            waves.append(load_audio(item, model.frontend.sample_rate))
            names.append(str(item))
        else:
            waves.append(np.asarray(item, np.float32))
            names.append(f"waveform {i}")
    return waves, names


class Model:
    """A trained model from a workdir: what applies to its family of `transcribe`,
    `synthesize`, `classify`, and `evaluate` for every family."""

    def __init__(self, trained: Trained, workdir: Path):
        self.trained, self.workdir = trained, workdir

    @property
    def family(self) -> str:
        return self.trained.cfg.model.family

    @property
    def step(self) -> int:
        """The checkpoint step the parameters come from."""
        return self.trained.step

    @property
    def sample_rate(self) -> int:
        return self.trained.frontend.sample_rate

    def transcribe(
        self,
        audio: Sequence[str | Path | np.ndarray],
        *,
        decoder: str | None = None,
        beam_size: int | None = None,
        batch_size: int = 32,
        return_timestamps: bool | str = False,
        return_language: bool = False,
        language: str | None = None,
        task: str | None = None,
        chunk_seconds: float | None = None,
        stride_seconds: float | None = None,
        vad: bool | None = None,
    ) -> list[Any]:
        """Transcripts of audio files (any format librosa reads) or float waveforms
        [samples] at `sample_rate`, of any length; a speech recognizer's workdir only. With
        `return_timestamps` (True: segments; "word": also the words; CTC models, Whisper and
        seq2seq models trained with timestamps) or
        `return_language`, each is a dict in openai-whisper's layout, {"text", "language",
        "segments"} (see jaxseq.inference.transcribe.transcribe_waveforms).

        Whisper models: `language` is the spoken language's code, or "auto" to detect it on
        each recording's first 30 s (the dicts' "language" says which); `task` is
        "transcribe" or "translate" (into English); both default to the workdir's
        model.language and model.task."""
        waves, _ = _waveforms(self.trained, audio)
        return transcribe_waveforms(
            self.trained,
            waves,
            decoder=decoder,
            beam_size=beam_size,
            batch_size=batch_size,
            return_timestamps=return_timestamps,
            return_language=return_language,
            language=language,
            task=task,
            chunk_seconds=chunk_seconds,
            stride_seconds=stride_seconds,
            vad=vad,
        )

    def transcribe_manifest(
        self,
        manifest: str | Path,
        out_dir: str | Path,
        *,
        batch_size: int = 32,
        return_timestamps: bool | str = False,
        **options: Any,
    ) -> dict[str, Any]:
        """Transcribes a manifest's audio into OUT_DIR/results.jsonl (resumable: a rerun
        skips the ids already there) and returns OUT_DIR/report.json's contents: counts, the
        unreadable files with their reasons, WER/CER where the manifest has text. `options`:
        decoder, beam_size, language, task, chunk_seconds, stride_seconds, vad. A collective:
        call on every process (see jaxseq.inference.manifest_job)."""
        return transcribe_manifest(
            self.trained,
            manifest,
            out_dir,
            batch_size=batch_size,
            return_timestamps=return_timestamps,
            **options,
        )

    def synthesize(
        self, texts: Sequence[str], *, seed: int = 0, vocoder: str | None = None
    ) -> list[dict[str, Any]]:
        """Speech for each text: {"text", "audio" float32 [samples], "sample_rate", "frames",
        "seconds", "stopped"}; a TTS workdir only."""
        return synthesize_audio(self.trained, list(texts), seed=seed, vocoder=vocoder)

    def classify(
        self,
        audio: Sequence[str | Path | np.ndarray],
        *,
        frames: bool = False,
        top_k: int = 3,
        batch_size: int = 32,
    ) -> list[dict[str, Any]]:
        """Labels of audio files or float waveforms (see jaxseq.inference.classify); a
        classification workdir only."""
        waves, names = _waveforms(self.trained, audio)
        return classify_waveforms(
            self.trained, waves, names=names, frames=frames, top_k=top_k, batch_size=batch_size
        )

    def evaluate(self, data: str | Path, *, split: str = "test", **options: Any) -> dict:
        """See `jaxseq.evaluate`; this model's parameters, no reload."""
        return _evaluate(self, data, split=split, **options)

    def __repr__(self) -> str:
        return f"jaxseq.Model({self.family}, {self.workdir}, step {self.step})"


def load(workdir_or_checkpoint: str | Path, *, overrides: Sequence[str] = ()) -> Model:
    """A trained model: a workdir (its best checkpoint, else the latest) or one checkpoint
    folder WORKDIR/checkpoints/STEP. `overrides` change the loaded config (e.g. the mesh)."""
    path = Path(workdir_or_checkpoint)
    step = None
    if re.fullmatch(r"\d+", path.name) and path.parent.name == "checkpoints":
        path, step = path.parent.parent, int(path.name)
    return Model(load_trained(path, step=step, overrides=tuple(overrides)), path)


def _evaluate(
    model: Model, data: str | Path | None, *, split: str, robustness: bool = False, **options: Any
) -> dict[str, Any]:
    where: dict[str, Any] = {"split": split}
    if data is not None:
        data = Path(data)
        if data.suffix == ".jsonl":
            where = {"manifest": data}
        elif (data / "dataset.json").is_file():
            where["dataset"] = data
        else:
            raise JaxseqError(
                f"evaluate: {data} is neither a manifest (.jsonl) nor a prepared dataset folder "
                "(with dataset.json); give one of them"
            )
    options = {k: v for k, v in options.items() if v is not None}
    if robustness:
        if "manifest" in where or "report" in options:
            raise JaxseqError(
                "evaluate --robustness scores a prepared stress dataset (give its folder) and "
                "writes WORKDIR/eval/robustness.json and .md; leave out the manifest and report"
            )
        return evaluate_robustness(model.trained, model.workdir, where.get("dataset"), **options)
    return evaluate_trained(model.trained, model.workdir, **where, **options)


def evaluate(
    workdir: str | Path,
    manifest_or_dataset: str | Path | None = None,
    *,
    split: str = "test",
    step: int | None = None,
    report: str | Path | None = None,
    overrides: Sequence[str] = (),
    robustness: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Scores a workdir's model and returns the report's metrics (with "headline").

    Args:
      manifest_or_dataset: a manifest of audio files (.jsonl; its features computed with the
        model's frontend) or a prepared dataset folder; None: the training dataset.
      split: the prepared dataset's split.
      step: the checkpoint (default: the best, else the latest).
      report: the JSON report's path (default WORKDIR/eval/<split>-step<N>.json); a markdown
        report is written beside it.
      overrides: config overrides for loading (e.g. "mesh.data=1", "eval.length_penalty=0.6").
      robustness: score every condition split of a prepared stress dataset instead (see
        jaxseq.evaluation.robustness): WORKDIR/eval/robustness.json and .md, and that report.
      options: decoder, beam_size (recognizers; for TTS, its intelligibility recognizer's).
    A collective: call on every process.
    """
    trained = load_trained(workdir, step=step, overrides=tuple(overrides))
    model = Model(trained, Path(workdir))
    return _evaluate(
        model,
        manifest_or_dataset,
        split=split,
        report=report,
        robustness=robustness,
        **options,
    )
