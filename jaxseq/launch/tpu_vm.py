"""The Cloud TPU VM recipe: gcloud commands that create a slice, install jaxseq and mount the
workdir's bucket (gcsfuse) on every worker, train, collect the logs and delete the slice."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import PurePosixPath

from jaxseq.launch.train_command import (
    GCSFUSE_OPTIONS,
    MOUNT_ROOT,
    REPO,
    GcsPath,
    LaunchError,
    TrainCommand,
    mounted_workdir,
)

TPU_STEPS = ("create", "install", "train", "logs", "delete")
TPU_LOG = "jaxseq-train.log"  # each TPU worker's training output, in its home folder
# TPU software versions by generation (Cloud TPU docs); other generations use the Ubuntu base.
TPU_VERSIONS = {
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}


def tpu_hosts(accelerator_type: str) -> int:
    """Hosts (TPU VMs, gcloud's workers) of a Cloud TPU slice, e.g. v4-16 -> 2.

    v2, v3, v4 and v5p types count TensorCores (8 per host); v5e (`v5litepod`) and v6e types
    count chips (up to 8 on one host, 4 per host in larger slices).

    Raises:
      LaunchError: for another accelerator type (pass the host count explicitly).
    """
    generation, _, size = accelerator_type.rpartition("-")
    if size.isdigit():
        n = int(size)
        if generation in ("v2", "v3", "v4", "v5p"):
            return max(1, n // 8)
        if generation in ("v5litepod", "v6e"):
            return 1 if n <= 8 else n // 4
    raise LaunchError(
        f"cannot tell the host count of accelerator type {accelerator_type!r}; pass --num-hosts"
    )


@dataclass(frozen=True)
class TpuVm:
    """A Cloud TPU VM slice and how jaxseq gets onto its workers.

    With `repo`, every worker clones it (at `ref`, a branch or tag); without, the tracked files
    of the local checkout `source` (uncommitted edits included) are copied to every worker.
    Every worker mounts the workdir's bucket at `mount_root`/BUCKET with gcsfuse. `dataset`
    (gs://...) is a prepared dataset copied to every worker's disk and trained on.
    """

    name: str
    zone: str
    accelerator_type: str
    project: str | None = None
    version: str | None = None  # default: TPU_VERSIONS by generation
    num_hosts: int | None = None  # default: tpu_hosts(accelerator_type)
    repo: str | None = None
    ref: str | None = None
    source: str = str(REPO)
    dataset: str | None = None
    python: str = "python3.11"  # installed on the workers with apt (Ubuntu 22.04 has 3.10)
    logs_dir: str | None = None  # default: runs/<name>-logs
    mount_root: str = MOUNT_ROOT  # where the workers mount buckets

    @property
    def hosts(self) -> int:
        """Number of workers."""
        return self.num_hosts or tpu_hosts(self.accelerator_type)

    @property
    def runtime_version(self) -> str:
        """The TPU software version the VMs are created with."""
        generation = self.accelerator_type.rpartition("-")[0]
        return self.version or TPU_VERSIONS.get(generation, "tpu-ubuntu2204-base")

    @property
    def local_logs(self) -> str:
        """The local folder the workers' logs are copied into."""
        return self.logs_dir or f"runs/{self.name}-logs"

    def gcloud(self, verb: str, *args: str) -> str:
        """One `gcloud compute tpus tpu-vm VERB` command line for this slice."""
        argv = ["gcloud", "compute", "tpus", "tpu-vm", verb, *args, "--zone", self.zone]
        if self.project:
            argv += ["--project", self.project]
        return shlex.join(argv)


def _staged_dataset(dataset: str) -> str:
    """Where a gs:// dataset lands on each worker, relative to the checkout."""
    gcs = GcsPath.parse(dataset, "--dataset")
    if not gcs.path:
        raise LaunchError(f"--dataset must name a folder in the bucket, got {dataset!r}")
    return f"data/{PurePosixPath(gcs.path).name}"


def gcsfuse_install() -> list[str]:
    """Shell commands that add Google's gcsfuse apt repository (installed with apt-get next)."""
    repo = "https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -c -s) main"
    return [
        f'echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] {repo}" '
        "| sudo tee /etc/apt/sources.list.d/gcsfuse.list > /dev/null",
        "curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg "
        "| sudo tee /usr/share/keyrings/cloud.google.asc > /dev/null",
    ]


def gcsfuse_mount(gcs: GcsPath, root: str = MOUNT_ROOT) -> str:
    """A shell command that mounts the bucket read-write at ROOT/BUCKET unless it is mounted."""
    point = shlex.quote(gcs.mount_point(root))
    flags = " ".join(f"--{option}" for option in GCSFUSE_OPTIONS)
    return (
        f"(mountpoint -q {point} || (sudo mkdir -p {point} && "
        f'sudo chown "$USER" {point} && gcsfuse {flags} {gcs.bucket} {point}))'
    )


def tpu_vm_steps(tpu: TpuVm, train: TrainCommand) -> dict[str, list[str]]:
    """The shell commands of each step (TPU_STEPS, in order), run from the local machine."""
    gcs, train = mounted_workdir(train, tpu.mount_root)
    mount = gcsfuse_mount(gcs, tpu.mount_root)
    archive = f"/tmp/jaxseq-{tpu.name}.tar.gz"
    if tpu.repo:
        branch = ["--branch", tpu.ref] if tpu.ref else []
        fetch = shlex.join(["git", "clone", "--depth", "1", *branch, tpu.repo, "jaxseq"])
        upload = []
    else:
        src = shlex.quote(tpu.source)
        fetch = "mkdir jaxseq && tar -xzf jaxseq.tar.gz -C jaxseq"
        upload = [
            f"rev=$(git -C {src} stash create) && "
            f'git -C {src} archive --format=tar.gz -o {shlex.quote(archive)} "${{rev:-HEAD}}"',
            tpu.gcloud("scp", archive, f"{tpu.name}:jaxseq.tar.gz", "--worker=all"),
        ]
    setup = [
        *gcsfuse_install(),
        f"sudo apt-get update -q && sudo apt-get install -y -q {tpu.python}-venv gcsfuse",
        mount,
        "rm -rf jaxseq",
        fetch,
        "cd jaxseq",
        f"{tpu.python} -m venv .venv",
        ".venv/bin/pip install -q -U pip",
        '.venv/bin/pip install -q -e . "jax[tpu]"',
    ]
    staged = None
    if tpu.dataset:
        staged = _staged_dataset(tpu.dataset)
        setup.append(
            f"mkdir -p data && gcloud storage rsync -r {shlex.quote(tpu.dataset)} {staged}"
        )
    run = (
        f"{mount} && cd jaxseq && set -o pipefail && "
        f"{train.with_dataset(staged).shell('.venv/bin/jaxseq')} 2>&1 | tee ~/{TPU_LOG}"
    )
    logs = tpu.local_logs
    return {
        "create": [
            tpu.gcloud(
                "create",
                tpu.name,
                "--accelerator-type",
                tpu.accelerator_type,
                "--version",
                tpu.runtime_version,
            )
        ],
        "install": upload
        + [tpu.gcloud("ssh", tpu.name, "--worker=all", "--command", " && ".join(setup))],
        "train": [tpu.gcloud("ssh", tpu.name, "--worker=all", "--command", run)],
        "logs": [shlex.join(["mkdir", "-p", logs])]
        + [
            tpu.gcloud("scp", f"{tpu.name}:{TPU_LOG}", f"{logs}/worker-{i}.log", f"--worker={i}")
            for i in range(tpu.hosts)
        ],
        "delete": [tpu.gcloud("delete", tpu.name, "--quiet")],
    }


def render_tpu_vm(tpu: TpuVm, train: TrainCommand, steps: tuple[str, ...] = TPU_STEPS) -> str:
    """The chosen steps as a commented shell script."""
    plan = tpu_vm_steps(tpu, train)
    gcs, mounted = mounted_workdir(train, tpu.mount_root)
    lines = [
        f"# jaxseq train on the Cloud TPU VM slice {tpu.name} ({tpu.accelerator_type}, "
        f"{tpu.hosts} hosts) in {tpu.zone}; JAX finds the other hosts by itself.",
        f"# Every worker mounts gs://{gcs.bucket} at {gcs.mount_point(tpu.mount_root)} "
        f"(gcsfuse); the workdir is {mounted.workdir}.",
    ]
    for step in steps:
        lines += ["", f"# {step}", *plan[step]]
    return "\n".join(lines) + "\n"
