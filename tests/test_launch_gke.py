"""The GKE recipe: the JobSet, its Cloud Storage FUSE CSI mounts, the cloned-repo variant."""

import shlex

import pytest
import yaml

from jaxseq import launch
from jaxseq.launch import Gke
from tests.launch_helpers import MOUNTED, TRAIN, no_url


def _gke_doc(gke, train=TRAIN):
    text = launch.render_gke(gke, train, "asr.yaml")
    assert text.startswith("# jaxseq train on GKE: JobSet asr, 2 TPU hosts")
    return yaml.safe_load(text)


def test_gke_jobset_two_hosts():
    doc = _gke_doc(Gke("asr", "img:1"))
    assert doc["apiVersion"] == "jobset.x-k8s.io/v1alpha2" and doc["kind"] == "JobSet"
    assert doc["metadata"]["name"] == "asr"
    (rjob,) = doc["spec"]["replicatedJobs"]
    job = rjob["template"]["spec"]
    assert rjob["replicas"] == 1
    assert job["parallelism"] == job["completions"] == 2
    pod = job["template"]["spec"]
    assert pod["nodeSelector"] == {
        "cloud.google.com/gke-tpu-accelerator": "tpu-v5p-slice",
        "cloud.google.com/gke-tpu-topology": "2x2x2",
    }
    (container,) = pod["containers"]
    assert container["image"] == "img:1"
    assert container["command"] == MOUNTED.argv()
    no_url(container["command"])
    assert container["resources"]["limits"] == {"google.com/tpu": 4}


WORKDIR_VOLUME = {
    "name": "workdir",
    "csi": {
        "driver": "gcsfuse.csi.storage.gke.io",
        "readOnly": False,
        "volumeAttributes": {
            "bucketName": "bkt",
            "mountOptions": "implicit-dirs,rename-dir-limit=200000",
        },
    },
}


def test_gke_mounts_the_workdir_bucket_read_write():
    """The Cloud Storage FUSE CSI driver mounts the workdir's bucket read-write at
    /mnt/gcs/bkt (a sidecar, which the pod annotation asks for); a dataset in the same bucket
    is read through the same volume."""
    text = launch.render_gke(Gke("asr", "img:1", dataset="gs://bkt/data/libri"), TRAIN, "a.yaml")
    assert "# Every pod mounts gs://bkt at /mnt/gcs/bkt read-write (Cloud" in text
    pod = yaml.safe_load(text)["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
    assert pod["metadata"]["annotations"] == {"gke-gcsfuse/volumes": "true"}
    assert pod["spec"]["volumes"] == [WORKDIR_VOLUME]
    (container,) = pod["spec"]["containers"]
    assert container["volumeMounts"] == [{"name": "workdir", "mountPath": "/mnt/gcs/bkt"}]
    assert container["command"] == MOUNTED.with_dataset("/mnt/gcs/bkt/data/libri").argv()
    no_url(container["command"])


def test_gke_clones_the_repo_and_mounts_the_dataset_bucket_read_only():
    gke = Gke("asr", "python:3.11", repo="https://x.org/j.git", ref="v1", dataset="gs://b/d/x")
    pod = _gke_doc(gke)["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
    assert pod["metadata"]["annotations"] == {"gke-gcsfuse/volumes": "true"}
    (container,) = pod["spec"]["containers"]
    bash, dash_c, script = container["command"]
    assert (bash, dash_c) == ("bash", "-c")
    assert script.startswith("git clone --depth 1 --branch v1 https://x.org/j.git /jaxseq && ")
    words = shlex.split(script)
    argv = words[words.index("exec") + 1 :]
    assert argv == MOUNTED.with_dataset("/mnt/gcs/b/d/x").argv()
    no_url(argv)
    assert container["volumeMounts"] == [
        {"name": "workdir", "mountPath": "/mnt/gcs/bkt"},
        {"name": "dataset", "mountPath": "/mnt/gcs/b", "readOnly": True},
    ]
    assert pod["spec"]["volumes"] == [
        WORKDIR_VOLUME,
        {
            "name": "dataset",
            "csi": {
                "driver": "gcsfuse.csi.storage.gke.io",
                "readOnly": True,
                "volumeAttributes": {"bucketName": "b", "mountOptions": "implicit-dirs"},
            },
        },
    ]


def test_gke_topology_must_fill_hosts():
    with pytest.raises(launch.LaunchError, match="2x2x2 has 8 chips"):
        launch.gke_jobset(Gke("asr", "img", chips_per_host=3), TRAIN)
    assert Gke("asr", "img", topology="4x4").hosts == 4
