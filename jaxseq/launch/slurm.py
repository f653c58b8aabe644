"""The SLURM recipe: an sbatch script that runs one process per GPU (or per node) from a
shared checkout, with the jax.distributed coordinator taken from the allocation."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from jaxseq.launch.train_command import REPO, TrainCommand


@dataclass(frozen=True)
class Slurm:
    """An sbatch job: one process per GPU (default) or per node, from a shared checkout.

    `repo_dir` is the checkout, with its .venv, on the filesystem every node mounts; so must
    the workdir and the dataset be (relative paths are taken from `repo_dir`).
    """

    name: str
    nodes: int
    gpus_per_node: int
    per_node: bool = False
    partition: str | None = None
    time: str | None = None
    sbatch_options: tuple[str, ...] = ()  # more `#SBATCH` options, e.g. "--account=abc"
    repo_dir: str = str(REPO)
    jax_package: str = "jax[cuda12]"

    @property
    def tasks_per_node(self) -> int:
        """Processes on each node."""
        return 1 if self.per_node else self.gpus_per_node


def slurm_script(slurm: Slurm, train: TrainCommand, script: str = "job.sbatch") -> str:
    """The sbatch script (submitted as `sbatch <script>`)."""
    train.check_local("pass paths on the filesystem every node mounts")
    options = [
        f"--job-name={slurm.name}",
        f"--nodes={slurm.nodes}",
        f"--ntasks-per-node={slurm.tasks_per_node}",
        f"--gpus-per-node={slurm.gpus_per_node}",
        *([f"--partition={slurm.partition}"] if slurm.partition else []),
        *([f"--time={slurm.time}"] if slurm.time else []),
        *slurm.sbatch_options,
        "--output=%x-%j.out",
    ]
    processes = slurm.nodes * slurm.tasks_per_node
    if slurm.per_node:
        unit, devices = "node", ",".join(str(i) for i in range(slurm.gpus_per_node))
    else:
        unit, devices = "GPU", "$SLURM_LOCALID"
    pip = shlex.join([".venv/bin/pip", "install", "-e", ".", slurm.jax_package])
    lines = [
        "#!/bin/bash",
        *(f"#SBATCH {o}" for o in options),
        "#",
        f"# jaxseq train on {slurm.nodes} nodes x {slurm.gpus_per_node} GPUs, "
        f"one process per {unit} ({processes} processes).",
        "# The checkout, the workdir and the dataset must be on storage every node sees.",
        f"# Once, on a login node, in {slurm.repo_dir} (on the filesystem every node",
        "# mounts), with a python3 >= 3.11:",
        f"#   python3 -m venv .venv && {pip}",
        f"# Submit: sbatch {script}",
        "set -euo pipefail",
        f"cd {shlex.quote(slurm.repo_dir)}",
        "# Process 0 runs on the allocation's first host, which serves as the coordinator;",
        "# the port comes from the job id (as in jax's own SLURM detection).",
        'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)',
        'export JAX_COORDINATOR_ADDRESS="$head_node:$((SLURM_JOB_ID % 4096 + 61440))"',
        f"export JAX_NUM_PROCESSES={processes}",
        "run_task() {",
        f"  export JAX_PROCESS_ID=$SLURM_PROCID JAX_LOCAL_DEVICE_IDS={devices}",
        f"  exec {train.shell('.venv/bin/jaxseq')}",
        "}",
        "export -f run_task  # srun passes the environment, functions included, to every task",
        "srun --label --kill-on-bad-exit=1 bash -c run_task",
    ]
    return "\n".join(lines) + "\n"
