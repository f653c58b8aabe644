"""Multi-host launch recipes: Cloud TPU VM slices, GKE (a JobSet), SLURM GPU clusters; and
`jaxseq prepare --runner beam` as a Dataflow job (`dataflow`).

Each recipe is rendered from a few parameters into the exact shell commands, Kubernetes
manifest or sbatch script that run `jaxseq train` once per host (or per GPU):

    python -m jaxseq.launch tpu-vm --dry-run --name asr --zone us-central2-b \\
        --accelerator-type v4-16 --config configs/ctc_base.yaml --workdir gs://b/runs/asr
    python -m jaxseq.launch gke --dry-run --name asr --image IMAGE ...
    python -m jaxseq.launch slurm --dry-run --name asr --nodes 2 --gpus-per-node 8 ...

`--dry-run` only prints. Without it, `tpu-vm` runs its steps' commands one after the other
(`gcloud` must be installed and logged in), stopping at the first that fails; `gke` and
`slurm` write the manifest or script to --out and print the command that submits it.
Nothing else is ever executed. launch/README.md describes each recipe.

Storage: jaxseq reads and writes workdirs and datasets through the local filesystem only (it
rejects `gs://` and other URLs). On Cloud TPU VMs and GKE, `--workdir gs://BUCKET/PATH` names
the bucket that every host mounts at /mnt/gcs/BUCKET (gcsfuse, or GKE's Cloud Storage FUSE CSI
driver), and `jaxseq train` gets `--workdir /mnt/gcs/BUCKET/PATH`; under SLURM the workdir is
a path on the filesystem every node mounts. The `jaxseq train` command line never holds a URL.

How the processes find each other (`jax.distributed`): on Cloud TPU VMs and GKE TPU pods JAX
detects the slice by itself; the SLURM script sets JAX_COORDINATOR_ADDRESS (the first host of
the allocation), JAX_NUM_PROCESSES and, per task, JAX_PROCESS_ID and JAX_LOCAL_DEVICE_IDS.

Modules: `train_command` (the train command, gs:// paths and mounts, the local-path checks),
`tpu_vm`, `gke` and `slurm` (one recipe each), `cli` (the command line; `__main__` runs it).
"""

from jaxseq.launch.cli import main
from jaxseq.launch.dataflow import Dataflow, PrepareCommand, render_dataflow
from jaxseq.launch.gke import Gke, gke_commands, gke_jobset, gke_volumes, render_gke
from jaxseq.launch.slurm import Slurm, slurm_script
from jaxseq.launch.tpu_vm import (
    TPU_LOG,
    TPU_STEPS,
    TPU_VERSIONS,
    TpuVm,
    gcsfuse_install,
    gcsfuse_mount,
    render_tpu_vm,
    tpu_hosts,
    tpu_vm_steps,
)
from jaxseq.launch.train_command import (
    GCSFUSE_OPTIONS,
    LOCAL_PATH_KEYS,
    MOUNT_ROOT,
    REPO,
    GcsPath,
    LaunchError,
    TrainCommand,
    mounted_workdir,
)

__all__ = [
    "GCSFUSE_OPTIONS",
    "LOCAL_PATH_KEYS",
    "MOUNT_ROOT",
    "REPO",
    "TPU_LOG",
    "TPU_STEPS",
    "TPU_VERSIONS",
    "Dataflow",
    "GcsPath",
    "Gke",
    "LaunchError",
    "PrepareCommand",
    "Slurm",
    "TpuVm",
    "TrainCommand",
    "gcsfuse_install",
    "gcsfuse_mount",
    "gke_commands",
    "gke_jobset",
    "gke_volumes",
    "main",
    "mounted_workdir",
    "render_dataflow",
    "render_gke",
    "render_tpu_vm",
    "slurm_script",
    "tpu_hosts",
    "tpu_vm_steps",
]
