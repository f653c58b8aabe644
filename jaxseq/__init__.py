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

from jaxseq.api import Model, compile, evaluate, load, load_config, train
from jaxseq.config import Config, ConfigError
from jaxseq.errors import JaxseqError

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
