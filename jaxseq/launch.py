"""Multi-host launch recipes: Cloud TPU VM slices, GKE (a JobSet), SLURM GPU clusters.

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
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import yaml

REPO = Path(__file__).resolve().parents[1]
TPU_STEPS = ("create", "install", "train", "logs", "delete")
TPU_LOG = "jaxseq-train.log"  # each TPU worker's training output, in its home folder
# TPU software versions by generation (Cloud TPU docs); other generations use the Ubuntu base.
TPU_VERSIONS = {
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}
# Where every TPU worker and GKE pod mounts a bucket: gs://BUCKET/PATH is MOUNT_ROOT/BUCKET/PATH.
MOUNT_ROOT = "/mnt/gcs"
# gcsfuse options of the workdir mount. An orbax checkpoint is committed by renaming its
# temporary directory; gcsfuse renames a directory object by object, and refuses one of more
# than rename-dir-limit objects (by default 0: every directory rename fails).
GCSFUSE_OPTIONS = ("implicit-dirs", "rename-dir-limit=200000")
# Config keys jaxseq opens as local paths (as jaxseq.config.LOCAL_PATH_KEYS): no URL there.
LOCAL_PATH_KEYS = ("data.dataset", "train.init_from", "model.tokenizer")
_BUCKET = re.compile(r"[a-z0-9]([a-z0-9._-]*[a-z0-9])?")  # what a bucket name may hold


class LaunchError(ValueError):
    """A recipe parameter that cannot work (the message says which and why)."""


def _is_url(value: str) -> bool:
    return "://" in value


@dataclass(frozen=True)
class GcsPath:
    """gs://BUCKET/PATH, and where it appears once the bucket is mounted."""

    bucket: str
    path: str = ""  # inside the bucket, no leading or trailing "/"; "" = the bucket's root

    @classmethod
    def parse(cls, url: str, what: str) -> GcsPath:
        """Raises LaunchError (naming the option `what`) unless `url` is gs://BUCKET[/PATH]."""
        if not url.startswith("gs://"):
            raise LaunchError(f"{what} must be gs://BUCKET/PATH, got {url!r}")
        bucket, _, path = url.removeprefix("gs://").partition("/")
        if not _BUCKET.fullmatch(bucket):
            raise LaunchError(f"{what}: {bucket!r} in {url!r} is not a bucket name")
        return cls(bucket, path.strip("/"))

    @property
    def url(self) -> str:
        return f"gs://{self.bucket}/{self.path}".rstrip("/")

    def mount_point(self, root: str = MOUNT_ROOT) -> str:
        """Where the bucket is mounted."""
        return f"{root}/{self.bucket}"

    def mounted(self, root: str = MOUNT_ROOT) -> str:
        """The local path of gs://BUCKET/PATH under the bucket's mount point."""
        return f"{self.mount_point(root)}/{self.path}".rstrip("/")


@dataclass(frozen=True)
class TrainCommand:
    """`jaxseq train` exactly as every process runs it."""

    config: str
    workdir: str
    overrides: tuple[str, ...] = ()

    def argv(self, program: str = "jaxseq") -> list[str]:
        """The argument vector, `program` being the jaxseq executable."""
        return [
            program,
            "train",
            "--config",
            self.config,
            "--workdir",
            self.workdir,
            *self.overrides,
        ]

    def shell(self, program: str = "jaxseq") -> str:
        """The command as one shell-quoted line."""
        return shlex.join(self.argv(program))

    def with_dataset(self, path: str | None) -> TrainCommand:
        """The same command reading the prepared dataset at `path` (first, so that an explicit
        `data.dataset=` override still wins)."""
        if path is None:
            return self
        return dataclasses.replace(self, overrides=(f"data.dataset={path}", *self.overrides))

    def check_local(self, hint: str) -> TrainCommand:
        """Returns self; raises LaunchError when the config, the workdir or a path-valued
        override is a URL, which `jaxseq train` rejects (`hint` says what to pass instead)."""
        named = [("--config", self.config), ("--workdir", self.workdir)]
        for override in self.overrides:
            key, _, value = override.partition("=")
            if key.strip() in LOCAL_PATH_KEYS:
                named.append((key.strip(), value))
        for what, value in named:
            if _is_url(value):
                raise LaunchError(
                    f"{what} is {value!r}, but jaxseq reads and writes only local or mounted "
                    f"paths; {hint}"
                )
        return self


# --- Cloud TPU VM ----------------------------------------------------------------------------


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


def mounted_workdir(train: TrainCommand, root: str = MOUNT_ROOT) -> tuple[GcsPath, TrainCommand]:
    """The workdir's bucket (from `--workdir gs://BUCKET/PATH`), and `train` with that workdir
    replaced by its mounted path, ROOT/BUCKET/PATH, every path in it checked to be local."""
    try:
        gcs = GcsPath.parse(train.workdir, "--workdir")
    except LaunchError as err:
        raise LaunchError(
            f"{err}: every host mounts the bucket at {root}/BUCKET and trains in {root}/BUCKET/PATH"
        ) from None
    train = dataclasses.replace(train, workdir=gcs.mounted(root))
    hint = "pass the workdir as --workdir gs://BUCKET/PATH and the dataset as --dataset gs://..."
    return gcs, train.check_local(hint)


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


# --- GKE -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gke:
    """A JobSet of one pod per host of a multi-host TPU slice node pool.

    The image either has jaxseq installed with its checkout as the working directory
    (launch/Dockerfile), or, with `repo`, each pod clones and installs it first. The Cloud
    Storage FUSE CSI driver mounts the workdir's bucket read-write at /mnt/gcs/BUCKET in every
    pod, and the bucket of `dataset` (gs://BUCKET/PATH, read in place) read-only when it is
    another bucket.
    """

    name: str
    image: str
    repo: str | None = None
    ref: str | None = None
    tpu_accelerator: str = "tpu-v5p-slice"  # node label cloud.google.com/gke-tpu-accelerator
    topology: str = "2x2x2"  # node label cloud.google.com/gke-tpu-topology
    chips_per_host: int = 4
    dataset: str | None = None
    service_account: str | None = None  # Kubernetes service account allowed to use the buckets
    max_restarts: int = 3  # whole-JobSet restarts (training resumes from the workdir)

    @property
    def hosts(self) -> int:
        """Pods: the topology's chips over the chips per host."""
        chips = math.prod(int(d) for d in self.topology.split("x"))
        if chips % self.chips_per_host:
            raise LaunchError(
                f"topology {self.topology} has {chips} chips, not a multiple of "
                f"--chips-per-host {self.chips_per_host}"
            )
        return chips // self.chips_per_host


def gke_volumes(gke: Gke, train: TrainCommand) -> tuple[list[dict], list[dict], TrainCommand]:
    """The pod's Cloud Storage FUSE CSI volumes, the container's mounts of them, and `train`
    with the workdir and dataset replaced by their mounted paths."""
    gcs, train = mounted_workdir(train)
    buckets = {gcs.bucket: ("workdir", ",".join(GCSFUSE_OPTIONS), False)}
    if gke.dataset:
        data = GcsPath.parse(gke.dataset, "--dataset")
        buckets.setdefault(data.bucket, ("dataset", "implicit-dirs", True))
        train = train.with_dataset(data.mounted())
    volumes, mounts = [], []
    for bucket, (name, options, read_only) in buckets.items():
        attributes = {"bucketName": bucket, "mountOptions": options}
        csi = {"driver": "gcsfuse.csi.storage.gke.io", "readOnly": read_only}
        volumes.append({"name": name, "csi": {**csi, "volumeAttributes": attributes}})
        mount = {"name": name, "mountPath": GcsPath(bucket).mount_point()}
        mounts.append({**mount, "readOnly": True} if read_only else mount)
    return volumes, mounts, train


def gke_jobset(gke: Gke, train: TrainCommand) -> dict:
    """The JobSet manifest as a dict (apiVersion jobset.x-k8s.io/v1alpha2)."""
    volumes, mounts, train = gke_volumes(gke, train)
    if gke.repo:
        branch = ["--branch", gke.ref] if gke.ref else []
        clone = shlex.join(["git", "clone", "--depth", "1", *branch, gke.repo, "/jaxseq"])
        script = f'{clone} && cd /jaxseq && pip install -q -e . "jax[tpu]" && exec {train.shell()}'
        command = ["bash", "-c", script]
    else:
        command = train.argv()
    container = {
        "name": "jaxseq",
        "image": gke.image,
        "command": command,
        "resources": {"limits": {"google.com/tpu": gke.chips_per_host}},
        "volumeMounts": mounts,
    }
    pod = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 300,  # SIGTERM makes jaxseq save a checkpoint
        "nodeSelector": {
            "cloud.google.com/gke-tpu-accelerator": gke.tpu_accelerator,
            "cloud.google.com/gke-tpu-topology": gke.topology,
        },
        "containers": [container],
        "volumes": volumes,
    }
    if gke.service_account:
        pod["serviceAccountName"] = gke.service_account
    # The annotation makes GKE add the Cloud Storage FUSE sidecar that serves the volumes.
    annotations = {"gke-gcsfuse/volumes": "true"}
    hosts = gke.hosts
    return {
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": {
            "name": gke.name,
            "annotations": {
                "alpha.jobset.sigs.k8s.io/exclusive-topology": "cloud.google.com/gke-nodepool"
            },
        },
        "spec": {
            "failurePolicy": {"maxRestarts": gke.max_restarts},
            "replicatedJobs": [
                {
                    "name": "workers",
                    "replicas": 1,
                    "template": {
                        "spec": {
                            "parallelism": hosts,
                            "completions": hosts,
                            "backoffLimit": 0,
                            "template": {"metadata": {"annotations": annotations}, "spec": pod},
                        }
                    },
                }
            ],
        },
    }


def gke_commands(gke: Gke, manifest: str) -> list[str]:
    """kubectl commands that submit the manifest file, follow every pod's log, delete it."""
    selector = f"jobset.sigs.k8s.io/jobset-name={gke.name}"
    return [
        shlex.join(["kubectl", "apply", "-f", manifest]),
        shlex.join(
            ["kubectl", "logs", "-f", "-l", selector, "--prefix", "--tail=-1"]
            + [f"--max-log-requests={gke.hosts}"]
        ),
        shlex.join(["kubectl", "delete", "jobset", gke.name]),
    ]


def render_gke(gke: Gke, train: TrainCommand, manifest: str) -> str:
    """The manifest as YAML, headed by comments with the kubectl commands."""
    volumes, mounts, _ = gke_volumes(gke, train)
    buckets = [
        f"gs://{v['csi']['volumeAttributes']['bucketName']} at {m['mountPath']} "
        + ("read-only" if m.get("readOnly") else "read-write")
        for v, m in zip(volumes, mounts, strict=True)
    ]
    header = [
        f"# jaxseq train on GKE: JobSet {gke.name}, {gke.hosts} TPU hosts "
        f"({gke.tpu_accelerator}, {gke.topology}); JAX finds the other hosts by itself.",
        *(f"#   {c}" for c in gke_commands(gke, manifest)),
        f"# Every pod mounts {' and '.join(buckets)} (Cloud Storage FUSE CSI driver).",
    ]
    body = yaml.safe_dump(gke_jobset(gke, train), sort_keys=False, width=1000)
    return "\n".join(header) + "\n" + body


# --- SLURM -----------------------------------------------------------------------------------


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


# --- command line ----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--name", required=True, help="TPU VM, JobSet or SLURM job name")
    common.add_argument("--config", required=True, help="config path, relative to the checkout")
    common.add_argument(
        "--workdir",
        required=True,
        help="tpu-vm, gke: gs://BUCKET/PATH (every host mounts the bucket at "
        f"{MOUNT_ROOT}/BUCKET); slurm: a path on the filesystem every node mounts",
    )
    common.add_argument("--dry-run", action="store_true", help="print; execute nothing")
    common.add_argument("overrides", nargs="*", help="config overrides, e.g. train.num_steps=100")

    p = argparse.ArgumentParser(prog="python -m jaxseq.launch", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="recipe", required=True)

    t = sub.add_parser("tpu-vm", parents=[common], help="a Cloud TPU VM slice via gcloud")
    t.add_argument("--zone", required=True)
    t.add_argument("--accelerator-type", required=True, help="e.g. v4-16, v5p-16, v5litepod-16")
    t.add_argument("--project", help="default: gcloud's configured project")
    t.add_argument("--version", help="TPU software version (default by TPU generation)")
    t.add_argument("--num-hosts", type=int, help="default: from the accelerator type")
    t.add_argument("--repo", help="git URL each worker clones (default: copy --source)")
    t.add_argument("--ref", help="branch or tag of --repo")
    t.add_argument(
        "--source", default=str(REPO), help="local checkout to copy (default: %(default)s)"
    )
    t.add_argument(
        "--dataset", help="gs://BUCKET/PATH of a prepared dataset, copied to every worker"
    )
    t.add_argument("--python", default="python3.11", help="python on the workers")
    t.add_argument("--logs-dir", help="local folder for the logs (default: runs/NAME-logs)")
    t.add_argument(
        "--steps", default=",".join(TPU_STEPS), help="comma-separated subset of %(default)s"
    )

    g = sub.add_parser("gke", parents=[common], help="a JobSet on a GKE TPU node pool")
    g.add_argument(
        "--image", required=True, help="with jaxseq installed, or e.g. python:3.11 with --repo"
    )
    g.add_argument("--repo", help="git URL each pod clones and installs")
    g.add_argument("--ref", help="branch or tag of --repo")
    g.add_argument("--tpu-accelerator", default="tpu-v5p-slice")
    g.add_argument("--topology", default="2x2x2")
    g.add_argument("--chips-per-host", type=int, default=4)
    g.add_argument(
        "--dataset",
        help=f"gs://BUCKET/PATH of a prepared dataset, read at {MOUNT_ROOT}/BUCKET/PATH",
    )
    g.add_argument("--service-account", help="Kubernetes service account of the pods")
    g.add_argument("--max-restarts", type=int, default=3)
    g.add_argument("--out", help="manifest file to write (default: NAME.yaml)")

    s = sub.add_parser("slurm", parents=[common], help="an sbatch script for a GPU cluster")
    s.add_argument("--nodes", type=int, required=True)
    s.add_argument("--gpus-per-node", type=int, required=True)
    s.add_argument("--per-node", action="store_true", help="one process per node, not per GPU")
    s.add_argument("--partition")
    s.add_argument("--time", help="time limit, e.g. 24:00:00")
    s.add_argument(
        "--sbatch", dest="sbatch_options", action="append", default=[], help="an #SBATCH option"
    )
    s.add_argument("--repo-dir", default=str(REPO), help="shared checkout (default: %(default)s)")
    s.add_argument("--jax-package", default="jax[cuda12]")
    s.add_argument("--out", help="script file to write (default: NAME.sbatch)")
    return p


def _run_tpu_vm(plan: dict[str, list[str]], steps: tuple[str, ...]) -> None:
    for step in steps:
        for command in plan[step]:
            print(f"+ {command}", file=sys.stderr, flush=True)
            code = subprocess.run(["bash", "-c", command]).returncode
            if code:
                raise SystemExit(
                    f"step {step!r} failed (exit {code}); the TPU VM may still be up: "
                    "rerun with --steps logs,delete to collect the logs and delete it"
                )


def _from_args(cls, a: argparse.Namespace):
    """An instance of the dataclass `cls` from the options of the same names (the fields no
    option sets keep their defaults)."""
    return cls(**{f.name: getattr(a, f.name) for f in dataclasses.fields(cls) if f.name in a})


def _write(path: str, text: str, submit: str) -> None:
    Path(path).write_text(text)
    print(f"wrote {path}; submit it with: {submit}")


def main(argv: list[str] | None = None) -> None:
    """`python -m jaxseq.launch {tpu-vm,gke,slurm} [--dry-run] ...`."""
    p = _parser()
    a = p.parse_args(argv)
    train = TrainCommand(a.config, a.workdir, tuple(a.overrides))
    try:
        if a.recipe == "tpu-vm":
            tpu = _from_args(TpuVm, a)
            steps = tuple(a.steps.split(","))
            if unknown := set(steps) - set(TPU_STEPS):
                p.error(f"unknown --steps {sorted(unknown)}; choose from {','.join(TPU_STEPS)}")
            if a.dry_run:
                print(render_tpu_vm(tpu, train, steps), end="")
            else:
                _run_tpu_vm(tpu_vm_steps(tpu, train), steps)
        elif a.recipe == "gke":
            gke = _from_args(Gke, a)
            out = a.out or f"{a.name}.yaml"
            text = render_gke(gke, train, out)
            if a.dry_run:
                print(text, end="")
            else:
                _write(out, text, gke_commands(gke, out)[0])
        else:
            a.sbatch_options = tuple(a.sbatch_options)
            slurm = _from_args(Slurm, a)
            out = a.out or f"{a.name}.sbatch"
            text = slurm_script(slurm, train, out)
            if a.dry_run:
                print(text, end="")
            else:
                _write(out, text, shlex.join(["sbatch", out]))
    except LaunchError as err:
        p.error(str(err))


if __name__ == "__main__":
    main()
