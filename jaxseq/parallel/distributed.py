"""Multi-process set-up: `jax.distributed` from flags, the environment, or the cluster.

One process per host (or per group of devices) runs the same `jaxseq train` / `jaxseq evaluate`
command. Where the processes find each other, in order:

1. flags: `--coordinator HOST:PORT --num-processes N --process-id I`;
2. the environment: `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID` (a flag
   wins over its variable);
3. a cluster jax recognizes by itself (Cloud TPU VMs, SLURM, Open MPI, Kubernetes with the
   `kubernetes` package): `jax.distributed.initialize()` reads everything from it. A cluster
   job of a single process is left single-process.

Otherwise nothing happens and the run is single-process. `--num-processes 1` also means "one
process" and turns the cluster detection off.
"""

from __future__ import annotations

import logging
import os
import warnings

import jax
from jax._src import clusters
from jax._src import distributed as jax_distributed

from jaxseq.errors import JaxseqError

COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"


def _int_from_env(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise JaxseqError(f"environment variable {name}={value!r} is not an integer") from None


def _check_coordinator(address: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise JaxseqError(
            f"coordinator address {address!r} is not HOST:PORT (e.g. 10.0.0.1:1234): process 0 "
            "listens on PORT and every process connects to HOST:PORT"
        )


def detect_cluster() -> type[clusters.ClusterEnv] | None:
    """The cluster environment `jax.distributed.initialize()` would bootstrap from, if any.

    Only jax's automatic detectors count (not the opt-in mpi4py one). A detector that fails
    (e.g. a Kubernetes pod that may not list pods) counts as no cluster.
    """
    for env in clusters.ClusterEnv._cluster_types:
        if env.opt_in_only_method:
            continue
        try:
            with warnings.catch_warnings():  # "kubernetes package not installed" and the like
                warnings.simplefilter("ignore")
                present = env.is_env_present()
        except Exception as err:  # noqa: BLE001  (a detector's own failure means "not here")
            logging.debug("cluster detection %s failed: %s", env.__name__, err)
            continue
        if present:
            return env
    return None


def _cluster_process_count(env: type[clusters.ClusterEnv]) -> int:
    try:
        return int(env.get_process_count())
    except Exception as err:
        raise JaxseqError(
            f"detected a {env.__name__} environment but could not read its process count "
            f"({type(err).__name__}: {err}); pass --coordinator, --num-processes and --process-id "
            "(or --num-processes 1 for a single process)"
        ) from err


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Initializes `jax.distributed` when this is one of several processes; else does nothing.

    Call before any JAX computation (also before `jax.devices()`). Calling it again after a
    successful initialization does nothing.

    Args:
      coordinator: "HOST:PORT" of process 0 (default: $JAX_COORDINATOR_ADDRESS, else the
        cluster's).
      num_processes: how many processes take part (default: $JAX_NUM_PROCESSES, else the
        cluster's). 1 means a single process: nothing is initialized.
      process_id: this process, in [0, num_processes) (default: $JAX_PROCESS_ID, else the
        cluster's).

    Raises:
      JaxseqError: for inconsistent or malformed settings (the message says which), or when
        jax's backends were already initialized.
    """
    if jax.distributed.is_initialized():
        return
    coordinator = coordinator or os.environ.get(COORDINATOR_ENV, "").strip() or None
    if num_processes is None:
        num_processes = _int_from_env(NUM_PROCESSES_ENV)
    if process_id is None:
        process_id = _int_from_env(PROCESS_ID_ENV)

    if num_processes is not None and num_processes < 1:
        raise JaxseqError(f"--num-processes must be at least 1, got {num_processes}")
    if process_id is not None and process_id < 0:
        raise JaxseqError(f"--process-id must be at least 0, got {process_id}")
    if num_processes is not None and process_id is not None and process_id >= num_processes:
        raise JaxseqError(
            f"--process-id {process_id} is not below --num-processes {num_processes} "
            f"(process ids are 0 .. {num_processes - 1})"
        )
    if coordinator is not None:
        _check_coordinator(coordinator)

    if num_processes == 1:
        return  # one process (its id can only be 0): no coordinator, no cluster detection

    explicit = (coordinator, num_processes, process_id)
    cluster = None if None not in explicit else detect_cluster()
    if cluster is None:
        if all(v is None for v in explicit):
            return  # a plain single machine
        flags = ("--coordinator", "--num-processes", "--process-id")
        missing = [flag for flag, v in zip(flags, explicit, strict=True) if v is None]
        if missing:
            missing_text = ", ".join(missing)
            raise JaxseqError(
                f"multi-process set-up is incomplete: {missing_text} missing (or their "
                f"environment variables {COORDINATOR_ENV}, {NUM_PROCESSES_ENV}, {PROCESS_ID_ENV}); "
                "outside a cluster jax detects (Cloud TPU, SLURM, Open MPI) all three are needed, "
                "the same coordinator and process count on every process and a distinct process id "
                "on each"
            )
    elif all(v is None for v in explicit) and _cluster_process_count(cluster) == 1:
        logging.info("%s environment with a single process: not distributed", cluster.__name__)
        return

    # CPU collectives across processes (gloo is jax's default; a config that turned them off
    # would make every cross-process computation on CPU fail). Only the CPU client reads it.
    if jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
        )
    except RuntimeError as err:
        if "before any JAX calls" in str(err):
            raise JaxseqError(
                "jax.distributed must be initialized before any JAX computation; call "
                "jaxseq.parallel.distributed.initialize() first"
            ) from err
        raise JaxseqError(
            f"could not join the processes at {coordinator or '(from the cluster)'}: "
            f"{type(err).__name__}: {err}"
        ) from err
    except ValueError as err:
        raise JaxseqError(f"jax.distributed.initialize: {err}") from err
    state = jax_distributed.global_state  # read without initializing the backends
    logging.info(
        "jax.distributed: process %d of %d, coordinator %s%s",
        state.process_id,
        state.num_processes,
        state.coordinator_address,
        f" (from {cluster.__name__})" if cluster is not None else "",
    )
