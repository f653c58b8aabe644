"""The device mesh and multi-process set-up."""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh

from jaxseq.config import ConfigError, MeshConfig
from jaxseq.parallel.sharding import MESH_AXES


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


def make_mesh(cfg: MeshConfig) -> Mesh:
    """A ("data", "fsdp", "tensor") mesh over all devices of all processes."""
    devices = jax.devices()
    shape = mesh_shape(cfg, len(devices))
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def data_parallel_size(mesh: Mesh) -> int:
    """How many ways the batch axis is split."""
    return mesh.shape["data"] * mesh.shape["fsdp"]
