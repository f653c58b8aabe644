"""Model families by name: a family is a `Task` subclass that joins with `@register`.

`model.family: NAME` selects the task registered under NAME. The built-in families live in
`jaxseq.tasks.<NAME>` and are imported when first asked for; a package outside jaxseq adds a
family through the `jaxseq.tasks` entry-point group (`NAME = "package.module:TaskClass"`),
so a new family is one module plus a config (docs/adding_a_family.md).
"""

from __future__ import annotations

import difflib
import importlib
from importlib import metadata
from pathlib import Path

from jaxseq.config import Config, ConfigError
from jaxseq.tasks.base import Task

BUILT_IN = ("ctc", "seq2seq", "whisper", "tts", "rnn", "classify", "ssl")
ENTRY_POINTS = "jaxseq.tasks"
_FAMILIES: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    """Class decorator: makes `cls` the task of `model.family: cls.family`."""
    name = cls.family
    if name in _FAMILIES and _FAMILIES[name] is not cls:
        raise ValueError(f"model.family {name!r} is registered twice: {_FAMILIES[name]}, {cls}")
    _FAMILIES[name] = cls
    return cls


def families() -> tuple[str, ...]:
    """Every family that can be asked for: the built-in ones and the entry points'."""
    plugins = tuple(ep.name for ep in metadata.entry_points(group=ENTRY_POINTS))
    return tuple(dict.fromkeys((*BUILT_IN, *plugins, *_FAMILIES)))


def task_class(family: str) -> type[Task]:
    """The Task subclass of `family`, importing its module if need be.

    Raises:
      ConfigError naming model.family and the closest known family.
    """
    if family not in _FAMILIES:
        if family in BUILT_IN:
            importlib.import_module(f"jaxseq.tasks.{family}")
        else:
            for ep in metadata.entry_points(group=ENTRY_POINTS, name=family):
                register(ep.load())
    if family not in _FAMILIES:
        known = families()
        close = difflib.get_close_matches(family, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"model.family={family!r} is not a known family {known}{hint}")
    return _FAMILIES[family]


def build_task(cfg: Config, dataset_info: dict, workdir: str | Path | None = None) -> Task:
    """A fresh task for training on a prepared dataset (its tokenizer built from the data on
    process 0 and shared through `workdir`)."""
    cls = task_class(cfg.model.family)
    return cls.from_dataset(cfg, dataset_info, None if workdir is None else Path(workdir))


def load_task(cfg: Config, workdir: str | Path, n_mels: int) -> Task:
    """The task of a trained workdir (tokenizer read back from the workdir)."""
    return task_class(cfg.model.family).from_workdir(cfg, Path(workdir), n_mels)
