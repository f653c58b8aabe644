"""Mesh presets (data, fsdp, fsdp_tensor) on 8 CPU devices, for the CTC and seq2seq models:
the same loss and gradients as one device, the splits each preset promises, FSDP's memory, and
restoring a checkpoint under another mesh.

The work runs in one subprocess (`tests/sharding_presets_run.py`) started with 8 host devices.
Nearly all of its time is XLA compiling tiny programs, so it compiles with the tests' fast XLA
flags (tests/test_multiprocess.py's `_env`: LLVM's optimizations off, the classic fusion
emitters; every mesh and the one-device reference are compiled alike, and the equalities hold
to the same tolerances).
"""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.test_multiprocess import _env

# Splits per dimension of (attention query [embed, heads, kv], attention out [heads, kv, embed],
# MLP in [embed, mlp], MLP out [mlp, embed], LayerNorm scale [embed]) under each preset.
EXPECTED_SPLITS = {
    "data": {
        "attention query": [1, 1, 1],
        "attention out": [1, 1, 1],
        "mlp in": [1, 1],
        "mlp out": [1, 1],
        "norm scale": [1],
    },
    "fsdp": {
        "attention query": [8, 1, 1],
        "attention out": [1, 1, 8],
        "mlp in": [8, 1],
        "mlp out": [1, 8],
        "norm scale": [8],
    },
    "fsdp_tensor": {
        "attention query": [4, 2, 1],
        "attention out": [2, 1, 4],
        "mlp in": [4, 2],
        "mlp out": [2, 4],
        "norm scale": [4],
    },
}


@pytest.fixture(scope="module")
def results(tiny_dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("presets")
    out = folder / "results.json"
    env = _env(8)  # this run's fast-compile XLA flags and compilation cache, and 8 devices
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.sharding_presets_run",
            str(tiny_dataset),
            str(out),
            str(folder / "checkpoints"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("family", ["ctc_demo", "seq2seq_tiny"])
@pytest.mark.parametrize("preset", sorted(EXPECTED_SPLITS))
def test_preset_matches_one_device(results, family, preset):
    r = results[family][preset]
    assert abs(r["loss"] - results[family]["reference_loss"]) <= 1e-5 * max(1.0, r["loss"])
    assert r["max_grad_diff"] <= 1e-5 * max(1.0, r["max_grad"])
    assert r["splits"] == EXPECTED_SPLITS[preset]


def test_fsdp_holds_an_eighth_per_device(results):
    """Parameters + optimizer state on one device under FSDP over 8, measured from the arrays'
    shards: about 1/8 of the replicated size (biases over heads/MLP units stay whole)."""
    r = results["ctc_demo"]
    assert r["data"]["device0_bytes"] == r["data"]["total_bytes"]  # replicated
    ratio = r["fsdp"]["device0_bytes"] / r["fsdp"]["total_bytes"]
    print(f"FSDP on 8 devices: device 0 holds {ratio:.4f} of parameters + optimizer state")
    assert 0.125 <= ratio < 0.135


def test_restore_reshards_bitwise(results):
    """Saved under fsdp=8; restored under fsdp=4 x tensor=2 and on one device, with the target
    shardings and bitwise-equal values."""
    assert results["resharded_restore"] == {"fsdp_tensor": True, "one_device": True}


def test_preset_shapes_and_errors():
    from jaxseq.config import ConfigError, MeshConfig
    from jaxseq.parallel.mesh import mesh_shape

    assert mesh_shape(MeshConfig(preset="data"), 8) == (8, 1, 1)
    assert mesh_shape(MeshConfig(preset="fsdp"), 8) == (1, 8, 1)
    assert mesh_shape(MeshConfig(preset="fsdp_tensor", tensor=4), 8) == (1, 2, 4)
    assert mesh_shape(MeshConfig(data=2, fsdp=2, tensor=2), 8) == (2, 2, 2)  # custom
    with pytest.raises(ConfigError, match="mesh.preset=fsdp_tensor .* set mesh.tensor=2"):
        mesh_shape(MeshConfig(preset="fsdp_tensor"), 8)
    with pytest.raises(ConfigError, match="not divisible"):
        mesh_shape(MeshConfig(preset="fsdp_tensor", tensor=3), 8)
