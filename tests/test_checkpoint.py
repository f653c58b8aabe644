"""Checkpoint retention (last N + best by validation score), exact round trip, clear errors."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseq.config import TrainConfig
from jaxseq.train.checkpoint import Checkpointer, CheckpointError


def _state(step):
    return {"w": jnp.full((4, 3), float(step)), "step": jnp.asarray(step, jnp.int32)}


def _abstract():
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _state(0))


@pytest.mark.parametrize(
    "metrics",
    [
        lambda v: {"metric": "wer", "value": v},  # what the train loop saves
        lambda v: {"wer": v},  # checkpoints saved before the metric was named
    ],
    ids=["current", "legacy"],
)
def test_keeps_last_and_best_by_validation_score(tmp_path, metrics):
    """keep_last=1, keep_best=2: the two lowest scores (steps 2 and 4) and the latest (6)
    stay; a step without a score (5) and the worse ones go. A new read-only Checkpointer
    (as `jaxseq evaluate` opens a workdir) reads the same best step from disk."""
    ckpt = Checkpointer(tmp_path, TrainConfig(keep_last=1, keep_best=2))
    scores = {1: 0.5, 2: 0.2, 3: 0.4, 4: 0.3, 5: None, 6: 0.6}
    for step, score in scores.items():
        ckpt.save(
            step, _state(step), None, {"step": step}, None if score is None else metrics(score)
        )
        ckpt.wait()
    assert ckpt.all_steps() == [2, 4, 6]
    assert ckpt.best_step() == 2 and ckpt.latest_step() == 6
    restored = ckpt.restore(2, _abstract())
    np.testing.assert_array_equal(restored["w"], np.full((4, 3), 2.0))
    assert ckpt.restore_meta(6) == {"step": 6}
    ckpt.close()
    reopened = Checkpointer(tmp_path, TrainConfig(), read_only=True)
    assert reopened.all_steps() == [2, 4, 6] and reopened.best_step() == 2
    reopened.close()


def test_missing_and_corrupt_checkpoints_are_clear_errors(tmp_path):
    ckpt = Checkpointer(tmp_path, TrainConfig(keep_last=2, keep_best=0))
    ckpt.save(1, _state(1), None, {"step": 1})
    ckpt.wait()
    with pytest.raises(CheckpointError, match=r"no checkpoint for step 7 .* available: \[1\]"):
        ckpt.restore(7, _abstract())
    # Another model's shapes.
    wrong = {"w": jax.ShapeDtypeStruct((5, 3), jnp.float32), "step": _abstract()["step"]}
    with pytest.raises(CheckpointError, match=rf"{tmp_path / '1'}.*different model config"):
        ckpt.restore(1, wrong)
    # Data files deleted from the checkpoint.
    data = [p for p in (tmp_path / "1" / "state").iterdir() if p.name.startswith("ocdbt.process")]
    data += [p for p in (tmp_path / "1" / "state").iterdir() if p.name == "d"]
    assert data, "expected orbax data folders to delete"
    for path in data:
        shutil.rmtree(path)
    with pytest.raises(CheckpointError, match=str(tmp_path / "1")):
        ckpt.restore(1, _abstract())
    ckpt.close()
