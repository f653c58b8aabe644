"""jaxseq: sequence-to-sequence audio models in JAX/Flax, from one laptop CPU to a TPU pod.

The Python API (the `jaxseq` command is a layer over it):

    import jaxseq
    cfg = jaxseq.load_config("configs/ctc_demo.yaml", overrides=["train.num_steps=100"])
    summary = jaxseq.train(cfg, "runs/x")              # data=, callbacks= optional
    model = jaxseq.load("runs/x")                      # a workdir or WORKDIR/checkpoints/STEP
    model.transcribe(["a.wav"])                        # / .synthesize(texts) / .classify(waves)
    report = jaxseq.evaluate("runs/x", "data/test/manifest.jsonl")
    plan = jaxseq.compile(cfg, "v5p:2x2x2")            # fits? memory per device, FLOPs, step time

The names are imported on first use: a process that needs one part of the package (a
`prepare` or `synth` worker, which never touches JAX) imports only that part.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jaxseq.api import Model, compile, evaluate, load, load_config, train
    from jaxseq.config import Config, ConfigError
    from jaxseq.errors import JaxseqError

_HOMES = {
    "Model": "jaxseq.api",
    "compile": "jaxseq.api",
    "evaluate": "jaxseq.api",
    "load": "jaxseq.api",
    "load_config": "jaxseq.api",
    "train": "jaxseq.api",
    "Config": "jaxseq.config",
    "ConfigError": "jaxseq.errors",
    "JaxseqError": "jaxseq.errors",
}
__all__ = [
    "Config",
    "ConfigError",
    "JaxseqError",
    "Model",
    "compile",
    "evaluate",
    "load",
    "load_config",
    "train",
]


class _Package(types.ModuleType):
    """The package's module type. `jaxseq.train` is the API function, although `train` is
    also the name of a subpackage, which the import system would bind here when it loads it;
    the subpackage stays reachable by import (`from jaxseq.train import loop`)."""

    @property
    def train(self):
        return importlib.import_module("jaxseq.api").train

    @train.setter
    def train(self, subpackage: types.ModuleType) -> None:
        pass  # the import system binding the subpackage: the name stays the function


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'jaxseq' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


sys.modules[__name__].__class__ = _Package
