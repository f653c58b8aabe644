"""The Cloud TPU VM recipe: every gcloud step, and the remote train command in a real bash."""

import dataclasses
import json
import os
import shlex
import subprocess
import sys

import pytest

from jaxseq import launch
from jaxseq.launch import TpuVm, TrainCommand
from tests.launch_helpers import MOUNTED, TRAIN, fake_jaxseq, write_executable

TPU = TpuVm("asr", "us-central2-b", "v4-16", project="proj", repo="https://x.org/jaxseq.git")
ZP = "--zone us-central2-b --project proj"
MOUNT = (
    '(mountpoint -q /mnt/gcs/bkt || (sudo mkdir -p /mnt/gcs/bkt && sudo chown "$USER" '
    "/mnt/gcs/bkt && gcsfuse --implicit-dirs --rename-dir-limit=200000 bkt /mnt/gcs/bkt))"
)


@pytest.mark.parametrize(
    "accelerator, hosts",
    [("v4-8", 1), ("v4-16", 2), ("v5p-16", 2), ("v3-32", 4), ("v5litepod-8", 1)]
    + [("v5litepod-16", 4), ("v6e-16", 4), ("v6e-256", 64)],
)
def test_tpu_hosts(accelerator, hosts):
    assert launch.tpu_hosts(accelerator) == hosts


def test_tpu_hosts_unknown_type():
    with pytest.raises(launch.LaunchError, match="--num-hosts"):
        launch.tpu_hosts("tpu9-64")
    assert TpuVm("n", "z", "tpu9-64", num_hosts=3).hosts == 3


def test_tpu_vm_two_hosts():
    plan = launch.tpu_vm_steps(TPU, TRAIN)
    assert list(plan) == list(launch.TPU_STEPS)
    assert plan["create"] == [
        "gcloud compute tpus tpu-vm create asr --accelerator-type v4-16 "
        f"--version tpu-ubuntu2204-base {ZP}"
    ]
    (install,) = plan["install"]
    assert install.startswith("gcloud compute tpus tpu-vm ssh asr --worker=all --command ")
    setup = shlex.split(install)[8]
    assert setup.startswith(
        'echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] '
        'https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -c -s) main" '
        "| sudo tee /etc/apt/sources.list.d/gcsfuse.list > /dev/null && "
        "curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg "
        "| sudo tee /usr/share/keyrings/cloud.google.asc > /dev/null && "
        "sudo apt-get update -q && sudo apt-get install -y -q python3.11-venv gcsfuse && "
        f"{MOUNT} && rm -rf jaxseq && "
    )
    assert "git clone --depth 1 https://x.org/jaxseq.git jaxseq && cd jaxseq" in setup
    assert "python3.11 -m venv .venv" in setup
    assert '.venv/bin/pip install -q -e . "jax[tpu]"' in setup

    (train,) = plan["train"]
    argv = shlex.split(train)
    assert shlex.join(argv[:8]) == "gcloud compute tpus tpu-vm ssh asr --worker=all --command"
    assert argv[9:] == ZP.split()
    remote = argv[8]
    assert remote.startswith(f"{MOUNT} && cd jaxseq && set -o pipefail && .venv/bin/jaxseq train ")
    assert remote.endswith(" 2>&1 | tee ~/jaxseq-train.log")
    words = shlex.split(remote)
    start = words.index(".venv/bin/jaxseq")
    assert words[start : words.index("2>&1")] == MOUNTED.argv(".venv/bin/jaxseq")

    assert plan["logs"] == [
        "mkdir -p runs/asr-logs",
        f"gcloud compute tpus tpu-vm scp asr:jaxseq-train.log runs/asr-logs/worker-0.log "
        f"--worker=0 {ZP}",
        f"gcloud compute tpus tpu-vm scp asr:jaxseq-train.log runs/asr-logs/worker-1.log "
        f"--worker=1 {ZP}",
    ]
    assert plan["delete"] == [f"gcloud compute tpus tpu-vm delete asr --quiet {ZP}"]


def test_tpu_vm_copies_the_checkout_and_stages_the_dataset():
    tpu = TpuVm("asr", "z", "v5p-16", source="/src/my jaxseq", dataset="gs://bkt/data/libri/")
    upload, scp, ssh = launch.tpu_vm_steps(tpu, TRAIN)["install"]
    assert upload == (
        "rev=$(git -C '/src/my jaxseq' stash create) && git -C '/src/my jaxseq' archive "
        '--format=tar.gz -o /tmp/jaxseq-asr.tar.gz "${rev:-HEAD}"'
    )
    assert scp == (
        "gcloud compute tpus tpu-vm scp /tmp/jaxseq-asr.tar.gz asr:jaxseq.tar.gz "
        "--worker=all --zone z"
    )
    setup = shlex.split(ssh)[8]
    assert "rm -rf jaxseq && mkdir jaxseq && tar -xzf jaxseq.tar.gz -C jaxseq" in setup
    assert setup.endswith("gcloud storage rsync -r gs://bkt/data/libri/ data/libri")
    remote = shlex.split(launch.tpu_vm_steps(tpu, TRAIN)["train"][0])[8]
    words = shlex.split(remote)
    assert words[words.index(".venv/bin/jaxseq") : words.index("2>&1")] == MOUNTED.with_dataset(
        "data/libri"
    ).argv(".venv/bin/jaxseq")
    assert "--version v2-alpha-tpuv5 " in launch.tpu_vm_steps(tpu, TRAIN)["create"][0]


def test_tpu_vm_rejects_what_jaxseq_would():
    with pytest.raises(launch.LaunchError, match="--workdir must be gs://BUCKET/PATH"):
        launch.tpu_vm_steps(TPU, TrainCommand("c.yaml", "runs/asr"))
    with pytest.raises(launch.LaunchError, match="data.dataset is 'gs://b/d'.*--dataset gs://"):
        launch.tpu_vm_steps(TPU, TrainCommand("c.yaml", "gs://b/w", ("data.dataset=gs://b/d",)))
    with pytest.raises(launch.LaunchError, match="--dataset must be gs://"):
        launch.tpu_vm_steps(dataclasses.replace(TPU, dataset="/data/libri"), TRAIN)


def test_tpu_remote_train_command_in_bash(tmp_path):
    """The remote command, run by a real bash in a fake worker home, with stand-ins for sudo,
    mountpoint and gcsfuse: the bucket is mounted once (a second run finds it mounted), then
    jaxseq gets the exact argv with the mounted workdir; a log, and the training's exit status
    (not tee's)."""
    bin_dir, mnt = tmp_path / "bin", tmp_path / "mnt"
    bin_dir.mkdir()
    fake_jaxseq(tmp_path / "jaxseq" / ".venv" / "bin" / "jaxseq")
    write_executable(bin_dir / "sudo", '#!/bin/sh\nexec "$@"\n')
    write_executable(bin_dir / "mountpoint", '#!/bin/sh\n[ -e "$2/.mounted" ]\n')
    write_executable(
        bin_dir / "gcsfuse",
        f"#!{sys.executable}\nimport json, pathlib, sys\n"
        "point = pathlib.Path(sys.argv[-1])\n"
        "(point / '.mounted').write_text(json.dumps(sys.argv[1:]))\n",
    )
    tpu = dataclasses.replace(TPU, mount_root=str(mnt))
    remote = shlex.split(launch.tpu_vm_steps(tpu, TRAIN)["train"][0])[8]
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "USER": str(os.getuid()),
        "HOME": str(tmp_path),
        "FAKE_OUT": str(tmp_path),
        "FAKE_EXIT": "3",
    }
    marker = mnt / "bkt" / ".mounted"
    result = subprocess.run(["bash", "-c", remote], cwd=tmp_path, env=env)
    assert result.returncode == 3
    flags = ["--implicit-dirs", "--rename-dir-limit=200000"]
    assert json.loads(marker.read_text()) == [*flags, "bkt", str(mnt / "bkt")]
    marker.write_text("[]")
    result = subprocess.run(["bash", "-c", remote], cwd=tmp_path, env=env)
    assert result.returncode == 3
    assert marker.read_text() == "[]"  # already mounted: gcsfuse did not run again
    got = json.loads((tmp_path / "run.json").read_text())["argv"]
    assert got == dataclasses.replace(MOUNTED, workdir=f"{mnt}/bkt/runs/asr").argv()[1:]
    assert (tmp_path / "jaxseq-train.log").read_text() == "training\n"
