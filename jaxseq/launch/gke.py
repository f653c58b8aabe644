"""The GKE recipe: a JobSet manifest of one pod per TPU host, the buckets mounted by the Cloud
Storage FUSE CSI driver, and the kubectl commands that submit it."""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass

import yaml

from jaxseq.launch.train_command import (
    GCSFUSE_OPTIONS,
    GcsPath,
    LaunchError,
    TrainCommand,
    mounted_workdir,
)


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
