"""Model families behind one interface (jaxseq.tasks.base.Task)."""

from __future__ import annotations

from pathlib import Path

from jaxseq.config import Config
from jaxseq.tasks.base import Task


def build_task(cfg: Config, dataset_info: dict) -> Task:
    """A fresh task for training on a prepared dataset (its tokenizer built from the data)."""
    if cfg.model.family == "ctc":
        from jaxseq.tasks.ctc import CTCTask
        from jaxseq.text.vocab import CharVocab

        vocab = CharVocab.from_charset(dataset_info["text"]["charset"])
        return CTCTask(cfg, vocab, int(dataset_info["frontend"]["n_mels"]))
    if cfg.model.family == "seq2seq":
        from jaxseq.tasks.seq2seq import Seq2SeqTask

        return Seq2SeqTask.from_dataset(cfg, dataset_info)
    if cfg.model.family == "whisper":
        from jaxseq.tasks.whisper import WhisperTask

        return WhisperTask.from_config(cfg, dataset_info)
    if cfg.model.family == "tts":
        from jaxseq.tasks.tts import TTSTask

        return TTSTask.from_dataset(cfg, dataset_info)
    if cfg.model.family == "rnn":
        from jaxseq.tasks.rnn import RNNTask

        return RNNTask.from_dataset(cfg, dataset_info)
    if cfg.model.family == "classify":
        from jaxseq.tasks.classify import ClassifyTask

        return ClassifyTask.from_dataset(cfg, dataset_info)
    raise ValueError(f"unknown model.family {cfg.model.family!r}")


def load_task(cfg: Config, workdir: str | Path, n_mels: int) -> Task:
    """The task of a trained workdir (tokenizer read back from the workdir)."""
    if cfg.model.family == "ctc":
        from jaxseq.tasks.ctc import CTCTask

        return CTCTask.from_workdir(cfg, Path(workdir), n_mels)
    if cfg.model.family == "seq2seq":
        from jaxseq.tasks.seq2seq import Seq2SeqTask

        return Seq2SeqTask.from_workdir(cfg, Path(workdir), n_mels)
    if cfg.model.family == "whisper":
        from jaxseq.tasks.whisper import WhisperTask

        return WhisperTask.from_workdir(cfg, Path(workdir), n_mels)
    if cfg.model.family == "tts":
        from jaxseq.tasks.tts import TTSTask

        return TTSTask.from_workdir(cfg, Path(workdir), n_mels)
    if cfg.model.family == "rnn":
        from jaxseq.tasks.rnn import RNNTask

        return RNNTask.from_workdir(cfg, Path(workdir), n_mels)
    if cfg.model.family == "classify":
        from jaxseq.tasks.classify import ClassifyTask

        return ClassifyTask.from_workdir(cfg, Path(workdir), n_mels)
    raise ValueError(f"unknown model.family {cfg.model.family!r}")
