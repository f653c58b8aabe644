"""jaxseq: sequence-to-sequence audio models in JAX/Flax, from one laptop CPU to a TPU pod.

The Python API (the `jaxseq` command is a layer over it):

    import jaxseq
    cfg = jaxseq.load_config("configs/ctc_demo.yaml", overrides=["train.num_steps=100"])
    summary = jaxseq.train(cfg, "runs/x")              # data=, callbacks= optional
    model = jaxseq.load("runs/x")                      # a workdir or WORKDIR/checkpoints/STEP
    model.transcribe(["a.wav"])                        # / .synthesize(texts) / .classify(waves)
    report = jaxseq.evaluate("runs/x", "data/test/manifest.jsonl")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jaxseq.config import Config, ConfigError
from jaxseq.errors import JaxseqError

if TYPE_CHECKING:
    from jaxseq.api import Model, evaluate, load, load_config, train

_API = ("Model", "evaluate", "load", "load_config", "train")

__all__ = [
    "Config",
    "ConfigError",
    "JaxseqError",
    "Model",
    "evaluate",
    "load",
    "load_config",
    "train",
]


def __getattr__(name: str):
    """The API's names, imported on first use: `import jaxseq.data.synth` in a worker process
    (prepare and synth spawn them) does not import training, evaluation and TensorBoard."""
    if name in _API:
        from jaxseq import api

        return getattr(api, name)
    raise AttributeError(f"module 'jaxseq' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
