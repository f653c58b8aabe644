"""`make_mesh` over many hosts: which devices each mesh axis groups together.

Multi-host device lists are stand-ins (the attributes jax's mesh_utils reads from a device:
id, process_index, platform, device_kind, slice_index, coords, core_on_chip) whose order
interleaves processes; the real 8-CPU-device case runs in a subprocess.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from jax.sharding import AxisType

from jaxseq.config import ConfigError, MeshConfig
from jaxseq.parallel.mesh import make_mesh
from tests.conftest import REPO


@dataclasses.dataclass(frozen=True)
class FakeDevice:
    id: int
    process_index: int
    platform: str = "gpu"
    device_kind: str = "NVIDIA H100 80GB HBM3"
    slice_index: int = 0
    coords: tuple[int, int, int] = (0, 0, 0)
    core_on_chip: int = 0


def gpu_hosts(processes: int, per_process: int, interleave_ids: bool) -> list[FakeDevice]:
    """Devices of `processes` hosts, listed round-robin over the hosts (local device 0 of every
    host, then local device 1, ...). Ids are process-major (host p holds ids p*n .. p*n+n-1)
    or, with `interleave_ids`, round-robin too (host p holds ids p, p+P, p+2P, ...)."""
    out = []
    for local in range(per_process):
        for p in range(processes):
            i = local * processes + p if interleave_ids else p * per_process + local
            out.append(FakeDevice(id=i, process_index=p))
    return out


def tpu_slices(num_slices: int) -> list[FakeDevice]:
    """`num_slices` TPU v4 slices of 2x2x2 chips (hosts of 2x2x1 chips, one core each), listed
    round-robin over the slices."""
    per_slice = []
    for s in range(num_slices):
        chips = [(x, y, z) for z in range(2) for y in range(2) for x in range(2)]
        per_slice.append(
            [
                FakeDevice(
                    id=s * 8 + k,
                    process_index=s * 2 + c[2],
                    platform="tpu",
                    device_kind="TPU v4",
                    slice_index=s,
                    coords=c,
                )
                for k, c in enumerate(chips)
            ]
        )
    return [d for group in zip(*per_slice, strict=True) for d in group]


def groups(grid: np.ndarray, axes: tuple[int, ...]) -> list[list[FakeDevice]]:
    """The device groups along mesh `axes` (0 data, 1 fsdp, 2 tensor): one list per index of
    the other axes."""
    rest = [a for a in range(3) if a not in axes]
    moved = np.moveaxis(grid, rest + list(axes), range(3))
    size = math.prod(grid.shape[a] for a in axes)
    return [list(g) for g in moved.reshape(-1, size)]


@pytest.mark.parametrize("interleave_ids", [False, True])
@pytest.mark.parametrize(
    "cfg, inside",  # inside: the mesh axes whose groups must lie on one process
    [
        (MeshConfig(preset="fsdp_tensor", tensor=4), (2,)),  # 4 hosts x 4: (1, 4, 4)
        (MeshConfig(data=-1, fsdp=2, tensor=2), (1, 2)),  # (4, 2, 2): fsdp x tensor per host
        (MeshConfig(data=-1, fsdp=1, tensor=2), (2,)),  # (8, 1, 2)
    ],
)
def test_tensor_groups_stay_on_one_process(cfg, inside, interleave_ids):
    devices = gpu_hosts(processes=4, per_process=4, interleave_ids=interleave_ids)
    mesh = make_mesh(cfg, devices)
    grid = mesh.devices
    assert sorted(d.id for d in grid.flat) == list(range(16))  # every device once
    assert mesh.axis_types == (AxisType.Auto,) * 3
    for group in groups(grid, inside):
        assert len({d.process_index for d in group}) == 1, [(d.id, d.process_index) for d in group]


def test_multislice_puts_slices_along_data():
    devices = tpu_slices(2)
    mesh = make_mesh(MeshConfig(data=2, fsdp=4, tensor=2), devices)
    grid = mesh.devices  # [2, 4, 2]
    assert grid.shape == (2, 4, 2)
    assert mesh.axis_types == (AxisType.Auto,) * 3
    assert sorted(d.id for d in grid.flat) == list(range(16))
    for d in range(2):  # each data index is one whole slice: fsdp and tensor stay inside it
        assert {dev.slice_index for dev in grid[d].flat} == {d}


def test_multislice_fsdp_preset_splits_fsdp_over_slices():
    devices = tpu_slices(2)
    mesh = make_mesh(MeshConfig(preset="fsdp"), devices)
    grid = mesh.devices  # [1, 16, 1]: data cannot take the 2 slices, so fsdp does
    assert grid.shape == (1, 16, 1)
    assert [{d.slice_index for d in grid[0, h * 8 : (h + 1) * 8, 0]} for h in range(2)] == [
        {0},
        {1},
    ]
    with pytest.raises(ConfigError, match="slices"):
        make_mesh(MeshConfig(data=1, fsdp=1, tensor=16), devices)


_CPU_SCRIPT = """
import json, flax.linen as nn, jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from jaxseq.config import MeshConfig
from jaxseq.parallel.mesh import make_mesh
from jaxseq.parallel.sharding import sharding_context
out = {}
for name, cfg in {"custom": MeshConfig(data=2, fsdp=2, tensor=2),
                  "fsdp_tensor": MeshConfig(preset="fsdp_tensor", tensor=2)}.items():
    mesh = make_mesh(cfg)
    x = jax.device_put(np.arange(64.0).reshape(8, 8), NamedSharding(mesh, P(("data", "fsdp"))))
    w = jax.device_put(np.eye(8), NamedSharding(mesh, P(None, "tensor")))
    with sharding_context(mesh):  # as the train step runs: logical constraints, Auto axes
        y = jax.jit(lambda a, b: nn.with_logical_constraint(a @ b, ("batch", "mlp")))(x, w)
    out[name] = {"shape": list(mesh.devices.shape), "types": [t.name for t in mesh.axis_types],
                 "ids": [d.id for d in mesh.devices.flat], "sum": float(y.sum()),
                 "spec": str(y.sharding.spec)}
print(json.dumps(out))
"""


def test_cpu_mesh_on_8_devices():
    """8 forced CPU devices, one process: the right shapes, Auto axes, devices in id order."""
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
    }
    proc = subprocess.run(
        [sys.executable, "-c", _CPU_SCRIPT],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["custom"]["shape"] == [2, 2, 2]
    assert got["fsdp_tensor"]["shape"] == [1, 4, 2]
    for mesh in got.values():
        assert mesh["types"] == ["Auto"] * 3
        assert mesh["ids"] == list(range(8))
        assert mesh["sum"] == sum(range(64))
        assert "tensor" in mesh["spec"]
