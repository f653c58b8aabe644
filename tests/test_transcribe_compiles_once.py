"""`Model.transcribe` compiles its decoding step once per batch shape and reuses it."""

from __future__ import annotations

from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import monitoring

from jaxseq.api import Model
from jaxseq.audio.frontend import log_mel_numpy
from jaxseq.config import load_config
from jaxseq.data.waveforms import feature_batch
from jaxseq.parallel.mesh import make_mesh
from jaxseq.tasks.registry import task_class
from jaxseq.train.trained import Trained
from tests.conftest import REPO

LOWERING = "/jax/core/compile/jaxpr_to_mlir_module_duration"  # every compilation lowers first


class Lowerings:
    """Counts the programs JAX lowers (also those the persistent compilation cache serves)."""

    def __init__(self):
        self.count = 0

    def __call__(self, event: str, duration: float, **kwargs) -> None:
        self.count += event == LOWERING

    def __enter__(self) -> Lowerings:
        monitoring.register_event_duration_secs_listener(self)
        return self

    def __exit__(self, *exc) -> None:
        monitoring.unregister_event_duration_listener(self)


def random_trained(config: str, *overrides: str) -> Trained:
    """A recognizer of configs/`config` with random parameters (no training, no dataset)."""
    cfg = load_config(REPO / "configs" / config, overrides)
    task = task_class(cfg.model.family).from_config(cfg)
    batch = task.dummy_batch(1, cfg.data.buckets[0])
    # Jitted: eagerly, every primitive of the initialization would compile on its own.
    init = jax.jit(lambda rng, b: nn.meta.unbox(task.init_variables(rng, b))["params"])
    params = init(jax.random.PRNGKey(0), batch)
    mesh = make_mesh(cfg.mesh)
    return Trained(cfg, task, mesh, params, 0, cfg.prepare.frontend, cfg.prepare.text)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Model:
    """Only the compiles matter here, not what the model says."""
    trained = random_trained("seq2seq_tiny.yaml", "data.max_label_length=6", "eval.beam_size=2")
    return Model(trained, Path(tmp_path_factory.mktemp("unused")))


def waves(seconds: list[float], seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0.0, 0.1, int(16000 * s)).astype(np.float32) for s in seconds]


def direct_transcripts(model: Model, audio: list[np.ndarray], rows: int, frames: int, **options):
    """The reference: a freshly jitted `predict_fn` on the host batch of `audio` → texts."""
    trained = model.trained
    options = trained.task.eval_options(**options)
    features = [log_mel_numpy(w, trained.frontend) for w in audio]
    batch = feature_batch(features, rows, frames, trained.frontend.n_mels)
    predict = jax.jit(lambda p, b: trained.task.predict_fn(p, b, **options))
    outputs = jax.device_get(predict(trained.params, jax.tree.map(jnp.asarray, batch)))
    return trained.task.decode(jax.tree.map(lambda x: x[: len(audio)], outputs), **options)


@pytest.mark.parametrize("decoder", ["greedy", "beam"])
def test_a_second_call_with_audio_of_the_same_bucket_does_not_compile(model, decoder):
    first, second = waves([0.5, 0.9, 1.1], seed=1), waves([0.4, 1.2, 0.7, 0.6], seed=2)
    with Lowerings() as lowered:
        model.transcribe(first, decoder=decoder)
    assert lowered.count >= 1  # the counter sees compilations
    with Lowerings() as lowered:
        got = model.transcribe(second, decoder=decoder)  # 3 and 4 rows both pad to 4
    assert lowered.count == 0
    assert got == direct_transcripts(model, second, rows=4, frames=128, decoder=decoder)
    with Lowerings() as lowered:  # a longer bucket is another shape: it compiles
        model.transcribe(waves([2.0, 1.5, 1.8], seed=3), decoder=decoder)
    assert lowered.count >= 1
