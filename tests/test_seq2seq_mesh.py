"""The seq2seq family trains to the same losses and grad norms on every mesh.

The seq2seq counterpart of `test_train.test_same_losses_on_every_mesh`. Its `_train_on_mesh`
is fixed to the CTC config (and 4 steps), so the subprocess run is set up here, reusing that
module's run script and metrics reader.
"""

import os
import subprocess
import sys

import numpy as np

from tests.conftest import REPO
from tests.test_train import _MESH_RUN, _metrics

CONFIG = REPO / "configs" / "seq2seq_tiny.yaml"
NUM_STEPS = 6


def _train_on_mesh(tiny_dataset, workdir, devices, mesh) -> dict[str, np.ndarray]:
    """Trains the seq2seq tiny config in a subprocess with `devices` host devices on `mesh`;
    returns the per-step train loss and grad norm (logged every step, no evaluation)."""
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
    }
    overrides = [
        f"data.dataset={tiny_dataset}",
        "data.eval_split=''",
        f"train.num_steps={NUM_STEPS}",
        "train.log_every=1",
        "train.checkpoint_every=1000",
        *mesh,
    ]
    run = subprocess.run(
        [sys.executable, "-c", _MESH_RUN, str(CONFIG), str(workdir), *overrides],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    rows = _metrics(workdir)
    assert [m["step"] for m in rows] == list(range(1, NUM_STEPS + 1))
    return {key: np.array([m[key] for m in rows]) for key in ("loss", "grad_norm")}


def test_seq2seq_same_losses_on_every_mesh(tiny_dataset, tmp_path):
    """1 device, data=8, and data=2 x fsdp=2 x tensor=2 give the same seq2seq losses and grad
    norms at every step (≤ 1e-5)."""
    one = _train_on_mesh(tiny_dataset, tmp_path / "one", 1, [])
    dp8 = _train_on_mesh(tiny_dataset, tmp_path / "dp8", 8, ["mesh.data=8"])
    mixed = _train_on_mesh(
        tiny_dataset, tmp_path / "mixed", 8, ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]
    )
    assert one["loss"][-1] < one["loss"][0]
    assert np.all(np.isfinite(one["grad_norm"])) and np.all(one["grad_norm"] > 0)
    for other in (dp8, mixed):
        for key in ("loss", "grad_norm"):
            np.testing.assert_allclose(other[key], one[key], rtol=1e-5, atol=1e-5, err_msg=key)
