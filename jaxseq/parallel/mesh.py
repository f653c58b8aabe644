"""The device mesh and multi-process set-up."""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh

from jaxseq.config import ConfigError, MeshConfig
from jaxseq.parallel.sharding import MESH_AXES


def mesh_shape(cfg: MeshConfig, num_devices: int) -> tuple[int, int, int]:
    """Resolves -1 entries of (data, fsdp, tensor) so that the product is `num_devices`."""
    shape = [cfg.data, cfg.fsdp, cfg.tensor]
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
