"""jaxseq: sequence-to-sequence audio models in JAX/Flax, from one laptop CPU to a TPU pod.

The Python API (the `jaxseq` command is a layer over it):

    import jaxseq
    cfg = jaxseq.load_config("configs/ctc_demo.yaml", overrides=["train.num_steps=100"])
    summary = jaxseq.train(cfg, "runs/x")              # data=, callbacks= optional
    model = jaxseq.load("runs/x")                      # a workdir or WORKDIR/checkpoints/STEP
    model.transcribe(["a.wav"])                        # / .synthesize(texts) / .classify(waves)
    report = jaxseq.evaluate("runs/x", "data/test/manifest.jsonl")
    plan = jaxseq.compile(cfg, "v5p:2x2x2")            # fits? memory per device, FLOPs, step time
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jaxseq.api import Model, compile, evaluate, load, load_config, train
    from jaxseq.config import Config, ConfigError
    from jaxseq.errors import JaxseqError

# Where each public name lives: imported on first use (PEP 562), so that a process that needs
# one module of the package (a synthesis or feature-extraction worker) does not import jax,
# flax and optax with the API.
_HOMES = {
    "Config": "jaxseq.config",
    "ConfigError": "jaxseq.config",
    "JaxseqError": "jaxseq.errors",
    "Model": "jaxseq.api",
    "compile": "jaxseq.api",
    "evaluate": "jaxseq.api",
    "load": "jaxseq.api",
    "load_config": "jaxseq.api",
    "train": "jaxseq.api",
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


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'jaxseq' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
