"""train.profile_steps: a jax.profiler trace of the chosen steps in WORKDIR/profile/ (what
TensorBoard's profile tab and xprof open), with the run's losses unchanged."""

from __future__ import annotations

import json

import pytest

from jaxseq.config import ConfigError, load_config
from jaxseq.train.loop import train
from tests.conftest import TINY_CONFIG


def _cfg(tiny_dataset, *extra):
    return load_config(
        TINY_CONFIG,
        [
            f"data.dataset={tiny_dataset}",
            "data.eval_split=''",
            "data.buckets=[512]",
            "train.num_steps=4",
            "train.log_every=1",
            "train.checkpoint_every=1000",
            *extra,
        ],
    )


def _losses(workdir) -> list[float]:
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [m["loss"] for m in lines if m["split"] == "train"]


def test_profile_steps_write_a_trace_and_change_no_loss(tiny_dataset, tmp_path):
    plain = tmp_path / "plain"
    train(_cfg(tiny_dataset), plain)
    assert not (plain / "profile").exists()
    traced = tmp_path / "traced"
    train(_cfg(tiny_dataset, "train.profile_steps=[1,3]"), traced)
    traces = list((traced / "profile" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
    assert _losses(traced) == _losses(plain) and len(_losses(plain)) == 4


@pytest.mark.parametrize("steps", ["[3,1]", "[2]", "[-1,2]"])
def test_a_bad_profile_window_names_the_key(tiny_dataset, tmp_path, steps):
    with pytest.raises(ConfigError, match=r"train.profile_steps=\[.*\]: give \[a, b\]"):
        train(_cfg(tiny_dataset, f"train.profile_steps={steps}"), tmp_path)
