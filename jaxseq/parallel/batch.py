"""Host batches → global jax.Arrays: the one place this happens."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh

from jaxseq.parallel.sharding import batch_sharding


def to_global(host_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each process's rows into one global array per field, batch-sharded.

    Every process passes its own rows ([per_process_batch, ...]); the global array has
    per_process_batch * process_count rows, split over the ("data", "fsdp") mesh axes. Each
    field keeps its host dtype: float16 features cross to the devices at half the bytes.
    """
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in host_batch.items()
    }
