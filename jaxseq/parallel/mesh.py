"""The device mesh and multi-process set-up."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils, multihost_utils
from jax.sharding import AxisType, Mesh

from jaxseq.config import ConfigError, MeshConfig
from jaxseq.parallel.sharding import MESH_AXES

_AUTO = (AxisType.Auto,) * len(MESH_AXES)


def _preset_shape(cfg: MeshConfig) -> list[int]:
    """(data, fsdp, tensor) of `cfg.preset`, -1 for "all the remaining devices"."""
    if cfg.preset == "data":
        return [-1, 1, 1]
    if cfg.preset == "fsdp":
        return [1, -1, 1]
    if cfg.preset == "fsdp_tensor":
        if cfg.tensor < 2:
            raise ConfigError(
                f"mesh.preset=fsdp_tensor splits heads and MLP units mesh.tensor ways, but "
                f"mesh.tensor is {cfg.tensor}; set mesh.tensor=2 (or more), or use preset fsdp"
            )
        return [1, -1, cfg.tensor]
    return [cfg.data, cfg.fsdp, cfg.tensor]


def mesh_shape(cfg: MeshConfig, num_devices: int) -> tuple[int, int, int]:
    """The preset's (data, fsdp, tensor), -1 entries resolved so the product is `num_devices`."""
    shape = _preset_shape(cfg)
    unknown = [i for i, s in enumerate(shape) if s == -1]
    if len(unknown) > 1:
        raise ConfigError("at most one of mesh.data / mesh.fsdp / mesh.tensor may be -1")
    known = math.prod(s for s in shape if s != -1)
    if unknown:
        if num_devices % known:
            raise ConfigError(
                f"mesh: {num_devices} devices are not divisible by the fixed axes ({known}); "
                "change mesh.fsdp / mesh.tensor"
            )
        shape[unknown[0]] = num_devices // known
    if math.prod(shape) != num_devices:
        raise ConfigError(
            f"mesh data={shape[0]} x fsdp={shape[1]} x tensor={shape[2]} needs "
            f"{math.prod(shape)} devices but {num_devices} are available; set mesh.data=-1"
        )
    return tuple(shape)


def make_mesh(cfg: MeshConfig, devices: Sequence[Any] | None = None) -> Mesh:
    """A ("data", "fsdp", "tensor") mesh over `devices` (default: every device of every process).

    The axes run from the least to the most talkative: "tensor" all-reduces inside every layer,
    "fsdp" gathers each layer's parameters, "data" reduces the gradients once a step. The inner
    axes therefore go on the fastest links, and only the outer ones cross the slow network:
      - several TPU slices (more than one `slice_index`): jax's hybrid mesh, the slices laid
        along "data" (along "fsdp" only for the factor of the slice count that "data" cannot
        take); "tensor" never crosses slices. Inside a slice, as for one slice.
      - one TPU slice: `jax.make_mesh`, which follows the chips' ICI torus (ICI links the chips
        of every host of a slice).
      - GPUs, CPUs: the devices in process-major order (process_index, then id), so that each
        process's devices are consecutive: every "tensor" group lies inside one process (when
        mesh.tensor divides its device count), every fsdp x tensor block too when that product
        divides it, and only the outer axes cross hosts.
    The axis types are Auto (sharding by `with_sharding_constraint` and the logical rules), not
    the Explicit types that `jax.make_mesh` defaults to.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(cfg, len(devices))
    slices = sorted({getattr(d, "slice_index", 0) for d in devices})
    if len(slices) > 1:
        dcn = _dcn_shape(shape, len(slices))
        ici = tuple(s // n for s, n in zip(shape, dcn, strict=True))
        grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
    elif devices[0].platform == "tpu":
        return jax.make_mesh(shape, MESH_AXES, _AUTO, devices=devices)
    else:
        ordered = sorted(devices, key=lambda d: (d.process_index, d.id))
        grid = np.asarray(ordered).reshape(shape)  # [data, fsdp, tensor]
    return Mesh(grid, MESH_AXES, axis_types=_AUTO)


def _dcn_shape(shape: tuple[int, int, int], num_slices: int) -> tuple[int, int, int]:
    """How many slices each of (data, fsdp, tensor) spans: "data" first, then "fsdp"."""
    data, fsdp, _ = shape
    over_data = math.gcd(data, num_slices)
    over_fsdp = num_slices // over_data
    if fsdp % over_fsdp:
        raise ConfigError(
            f"mesh data={data} x fsdp={fsdp} cannot be split over {num_slices} slices (only "
            "data and fsdp may cross slices); make mesh.data a multiple of the slice count"
        )
    return (over_data, over_fsdp, 1)


def data_parallel_size(mesh: Mesh) -> int:
    """How many ways the batch axis is split."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


def rows_per_process(count: int, batch_size: int, mesh: Mesh) -> int:
    """Rows each process runs per round of a collective loop over items: its `count` items up
    to `batch_size` (agreed over the processes, a power of two for few compilations), a whole
    number of its data-parallel share of the mesh."""
    most = count
    if jax.process_count() > 1:
        most = int(multihost_utils.process_allgather(np.array([count])).max())
    rows = min(batch_size, max(most, 1))
    rows = min(1 << (rows - 1).bit_length(), batch_size)
    share = max(data_parallel_size(mesh) // jax.process_count(), 1)
    return -(-rows // share) * share
