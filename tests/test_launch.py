"""Launch recipes for a 2-host example: exact commands, manifest, sbatch script; nothing is run
on a cloud or cluster (fake gcloud / gcsfuse / scontrol / srun / jaxseq stand in where a shell
runs). jaxseq takes local paths only, so `gs://` must never reach a `jaxseq train` command line:
buckets are mounted (gcsfuse on TPU VMs, the Cloud Storage FUSE CSI driver on GKE)."""

import dataclasses
import json
import os
import shlex
import stat
import subprocess
import sys

import pytest
import yaml

from jaxseq import launch
from jaxseq.config import LOCAL_PATH_KEYS
from jaxseq.launch import GcsPath, Gke, Slurm, TpuVm, TrainCommand
from tests.conftest import REPO

# Overrides that only survive correct shell quoting.
TRICKY = ("data.buckets=[256,512]", "train.note=two words", "eval.x=it's")
TRAIN = TrainCommand("configs/ctc_base.yaml", "gs://bkt/runs/asr", ("mesh.data=-1", *TRICKY))
# What every host runs: the workdir is the bucket's mount.
MOUNTED = TrainCommand("configs/ctc_base.yaml", "/mnt/gcs/bkt/runs/asr", TRAIN.overrides)
TPU = TpuVm("asr", "us-central2-b", "v4-16", project="proj", repo="https://x.org/jaxseq.git")
ZP = "--zone us-central2-b --project proj"
MOUNT = (
    '(mountpoint -q /mnt/gcs/bkt || (sudo mkdir -p /mnt/gcs/bkt && sudo chown "$USER" '
    "/mnt/gcs/bkt && gcsfuse --implicit-dirs --rename-dir-limit=200000 bkt /mnt/gcs/bkt))"
)


def _no_url(argv):
    """The `jaxseq train` argv holds local paths only."""
    assert argv[1] == "train"
    assert not [word for word in argv if "://" in word], argv


def _executable(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _fake_jaxseq(path):
    """A stand-in `jaxseq` that writes its argv, cwd and JAX_* variables to $FAKE_OUT/<id>.json."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _executable(
        path,
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "keys = 'COORDINATOR_ADDRESS', 'NUM_PROCESSES', 'PROCESS_ID', 'LOCAL_DEVICE_IDS'\n"
        "env = {'JAX_' + k: os.environ['JAX_' + k] for k in keys if 'JAX_' + k in os.environ}\n"
        "name = os.environ.get('JAX_PROCESS_ID', 'run')\n"
        "with open(os.path.join(os.environ['FAKE_OUT'], name + '.json'), 'w') as f:\n"
        "    json.dump({'argv': sys.argv[1:], 'cwd': os.getcwd(), 'env': env}, f)\n"
        "print('training')\n"
        "sys.exit(int(os.environ.get('FAKE_EXIT', '0')))\n",
    )


def test_train_command_quoting():
    line = TRAIN.shell(".venv/bin/jaxseq")
    assert shlex.split(line) == [
        ".venv/bin/jaxseq",
        "train",
        "--config",
        "configs/ctc_base.yaml",
        "--workdir",
        "gs://bkt/runs/asr",
        "mesh.data=-1",
        *TRICKY,
    ]
    assert TRAIN.with_dataset("data/x").overrides[0] == "data.dataset=data/x"
    assert TRAIN.with_dataset(None) == TRAIN


def test_gcs_paths():
    gcs = GcsPath.parse("gs://my-bkt.eu/runs/asr/", "--workdir")
    assert (gcs.bucket, gcs.path, gcs.url) == ("my-bkt.eu", "runs/asr", "gs://my-bkt.eu/runs/asr")
    assert gcs.mount_point() == "/mnt/gcs/my-bkt.eu"
    assert gcs.mounted() == "/mnt/gcs/my-bkt.eu/runs/asr"
    assert GcsPath.parse("gs://bkt", "--workdir").mounted("/m") == "/m/bkt"
    for bad, message in [("/local/x", "must be gs://"), ("gs://A$/x", "not a bucket name")]:
        with pytest.raises(launch.LaunchError, match=message):
            GcsPath.parse(bad, "--workdir")


def test_local_path_checks():
    """The launcher refuses what `jaxseq train` would refuse: a URL as the config, the workdir
    or the value of a key jaxseq opens as a path."""
    assert launch.LOCAL_PATH_KEYS == LOCAL_PATH_KEYS
    assert MOUNTED.check_local("hint") is MOUNTED
    ok = TrainCommand("c.yaml", "/w", ("train.compilation_cache_dir=gs://b/cache",))
    assert ok.check_local("hint") is ok
    for bad in [
        TrainCommand("gs://b/c.yaml", "/w"),
        TrainCommand("c.yaml", "s3://b/w"),
        *(TrainCommand("c.yaml", "/w", (f"{key}=gs://b/x",)) for key in LOCAL_PATH_KEYS),
    ]:
        with pytest.raises(launch.LaunchError, match="only local or mounted paths; hint"):
            bad.check_local("hint")


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
    _fake_jaxseq(tmp_path / "jaxseq" / ".venv" / "bin" / "jaxseq")
    _executable(bin_dir / "sudo", '#!/bin/sh\nexec "$@"\n')
    _executable(bin_dir / "mountpoint", '#!/bin/sh\n[ -e "$2/.mounted" ]\n')
    _executable(
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
    _no_url(container["command"])
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
    _no_url(container["command"])


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
    _no_url(argv)
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


SLURM_TRAIN = TrainCommand("configs/ctc_base.yaml", "/shared/runs/asr", TRICKY)


def test_slurm_two_nodes():
    script = launch.slurm_script(Slurm("asr", 2, 8, partition="gpu"), SLURM_TRAIN, "asr.sbatch")
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    for option in ["--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--partition=gpu"]:
        assert f"#SBATCH {option}" in lines
    assert 'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)' in lines
    assert 'export JAX_COORDINATOR_ADDRESS="$head_node:$((SLURM_JOB_ID % 4096 + 61440))"' in lines
    assert "export JAX_NUM_PROCESSES=16" in lines
    assert "  export JAX_PROCESS_ID=$SLURM_PROCID JAX_LOCAL_DEVICE_IDS=$SLURM_LOCALID" in lines
    assert f"  exec {SLURM_TRAIN.shell('.venv/bin/jaxseq')}" in lines
    assert lines[-1] == "srun --label --kill-on-bad-exit=1 bash -c run_task"

    per_node = launch.slurm_script(Slurm("asr", 2, 4, per_node=True), SLURM_TRAIN).splitlines()
    assert "#SBATCH --ntasks-per-node=1" in per_node and "#SBATCH --gpus-per-node=4" in per_node
    assert "export JAX_NUM_PROCESSES=2" in per_node
    assert "  export JAX_PROCESS_ID=$SLURM_PROCID JAX_LOCAL_DEVICE_IDS=0,1,2,3" in per_node


def test_slurm_takes_shared_paths_only():
    script = launch.slurm_script(Slurm("asr", 2, 8), SLURM_TRAIN)
    assert "# The checkout, the workdir and the dataset must be on storage every node sees." in (
        script.splitlines()
    )
    for train in [
        dataclasses.replace(SLURM_TRAIN, workdir="gs://bkt/runs/asr"),
        dataclasses.replace(SLURM_TRAIN, overrides=("data.dataset=gs://bkt/data/libri",)),
    ]:
        with pytest.raises(launch.LaunchError, match="filesystem every node mounts"):
            launch.slurm_script(Slurm("asr", 2, 8), train)


def test_slurm_script_under_fake_slurm(tmp_path):
    """bash runs the script with stand-ins for scontrol, srun (2 nodes x 2 tasks) and jaxseq:
    every process gets the first host as coordinator, its own id and GPU, the exact argv."""
    bin_dir, repo, out = tmp_path / "bin", tmp_path / "repo", tmp_path / "out"
    for d in (bin_dir, out):
        d.mkdir()
    _fake_jaxseq(repo / ".venv" / "bin" / "jaxseq")
    _executable(bin_dir / "scontrol", "#!/bin/sh\nprintf 'gpu-a\\ngpu-b\\n'\n")
    _executable(
        bin_dir / "srun",
        "#!/bin/bash\nwhile [[ $1 == -* ]]; do shift; done\n"
        'for i in 0 1 2 3; do SLURM_PROCID=$i SLURM_LOCALID=$((i % 2)) "$@" || exit; done\n',
    )
    script = tmp_path / "asr.sbatch"
    script.write_text(launch.slurm_script(Slurm("asr", 2, 2, repo_dir=str(repo)), SLURM_TRAIN))
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "gpu-[a-b]",
        "SLURM_JOB_ID": "123456",
        "FAKE_OUT": str(out),
    }
    subprocess.run(["bash", str(script)], env=env, cwd=tmp_path, check=True)
    port = 123456 % 4096 + 61440
    for i in range(4):
        got = json.loads((out / f"{i}.json").read_text())
        assert got["argv"] == SLURM_TRAIN.argv()[1:]
        assert got["cwd"] == str(repo)
        assert got["env"] == {
            "JAX_COORDINATOR_ADDRESS": f"gpu-a:{port}",
            "JAX_NUM_PROCESSES": "4",
            "JAX_PROCESS_ID": str(i),
            "JAX_LOCAL_DEVICE_IDS": str(i % 2),
        }


def _cli(args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "jaxseq.launch", *args], capture_output=True, text=True, **kwargs
    )


COMMON = ["--name", "asr", "--config", "configs/ctc_base.yaml"]
GCS = ["--workdir", "gs://bkt/r", "--dataset", "gs://bkt/data/libri"]
DRY_RUNS = {
    "tpu-vm": [*GCS, "--zone", "z", "--accelerator-type", "v4-16", "--repo", "https://x.org/j.git"],
    "gke": [*GCS, "--image", "img"],
    "slurm": ["--workdir", "/shared/r", "--nodes", "2", "--gpus-per-node", "8"],
}
# What `jaxseq train` gets from those: local or mounted paths only.
DRY_RUN_TRAIN = {
    "tpu-vm": TrainCommand("configs/ctc_base.yaml", "/mnt/gcs/bkt/r", TRICKY).with_dataset(
        "data/libri"
    ),
    "gke": TrainCommand("configs/ctc_base.yaml", "/mnt/gcs/bkt/r", TRICKY).with_dataset(
        "/mnt/gcs/bkt/data/libri"
    ),
    "slurm": TrainCommand("configs/ctc_base.yaml", "/shared/r", TRICKY),
}


@pytest.mark.parametrize("recipe", DRY_RUNS)
def test_dry_run_prints_and_runs_nothing(recipe, tmp_path):
    """Every tool the recipes name is a trap on PATH, and nothing else is there."""
    traps, cwd = tmp_path / "bin", tmp_path / "cwd"
    traps.mkdir()
    cwd.mkdir()
    for tool in ["gcloud", "kubectl", "sbatch", "srun", "scontrol", "git", "bash", "sh"]:
        _executable(traps / tool, f"#!{sys.executable}\nopen({str(tmp_path / tool)!r}, 'w')\n")
    argv = [recipe, "--dry-run", *COMMON, *DRY_RUNS[recipe], *TRICKY]
    result = _cli(argv, cwd=cwd, env={"PATH": str(traps), "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "cwd"]
    assert not list(cwd.iterdir())
    train = DRY_RUN_TRAIN[recipe]
    _no_url(train.argv())
    if recipe == "gke":
        pod = yaml.safe_load(result.stdout)["spec"]["replicatedJobs"][0]["template"]["spec"]
        assert pod["template"]["spec"]["containers"][0]["command"] == train.argv()
    elif recipe == "tpu-vm":
        (ssh,) = [line for line in result.stdout.splitlines() if " train --config " in line]
        words = shlex.split(shlex.split(ssh)[8])
        assert words[words.index(".venv/bin/jaxseq") : words.index("2>&1")] == train.argv(
            ".venv/bin/jaxseq"
        )
    else:
        assert f"  exec {train.shell('.venv/bin/jaxseq')}" in result.stdout.splitlines()


def test_tpu_vm_runs_exactly_the_printed_commands(tmp_path, monkeypatch, capsys):
    """Without --dry-run the chosen steps run through bash; a fake gcloud records its argv."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.jsonl"
    _executable(
        bin_dir / "gcloud",
        f"#!{sys.executable}\nimport json, sys\n"
        f"open({str(calls)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n",
    )
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    args = ["tpu-vm", *COMMON, *DRY_RUNS["tpu-vm"], *TRICKY, "--steps", "create,train,logs"]
    launch.main([*args, "--dry-run"])
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("gcloud")]
    launch.main(args)
    recorded = [json.loads(line) for line in calls.read_text().splitlines()]
    assert recorded == [shlex.split(line)[1:] for line in printed]
    assert len(recorded) == 4 and (tmp_path / "runs" / "asr-logs").is_dir()

    _executable(bin_dir / "gcloud", "#!/bin/sh\nexit 7\n")
    with pytest.raises(SystemExit, match="exit 7.*--steps logs,delete"):
        launch.main([*args[:-1], "train"])


@pytest.mark.parametrize(
    "recipe, suffix, submit",
    [("gke", "yaml", "kubectl apply -f {}"), ("slurm", "sbatch", "sbatch {}")],
)
def test_writes_manifest_or_script(recipe, suffix, submit, tmp_path, capsys):
    out = tmp_path / f"asr.{suffix}"
    argv = [recipe, *COMMON, *DRY_RUNS[recipe], "--out", str(out)]
    launch.main([*argv, "--dry-run"])
    printed = capsys.readouterr().out
    launch.main(argv)
    assert out.read_text() == printed
    assert capsys.readouterr().out.strip().endswith(submit.format(out))


TPU_ARGS = ["tpu-vm", "--zone", "z", "--accelerator-type", "v4-16", "--dry-run"]
GKE_ARGS = ["gke", "--image", "i", "--dry-run"]
SLURM_ARGS = ["slurm", "--nodes", "2", "--gpus-per-node", "8", "--dry-run"]
W = ["--workdir", "gs://bkt/r"]


@pytest.mark.parametrize(
    "argv, message",
    [
        ([*TPU_ARGS[:-1], *W, "--steps", "boot"], "boot"),
        ([*TPU_ARGS, *W, "--accelerator-type", "tpu9-8"], "--num-hosts"),
        ([*GKE_ARGS, *W, "--chips-per-host", "3"], "8 chips"),
        ([*GKE_ARGS, *W, "--dataset", "/local"], "--dataset must be gs://BUCKET/PATH"),
        ([*TPU_ARGS, *W, "--dataset", "/local"], "--dataset must be gs://BUCKET/PATH"),
        ([*TPU_ARGS, "--workdir", "runs/x"], "--workdir must be gs://BUCKET/PATH"),
        ([*GKE_ARGS, "--workdir", "/mnt/x"], "--workdir must be gs://BUCKET/PATH"),
        ([*GKE_ARGS, "--workdir", "gs://Bad_Bucket!/x"], "not a bucket name"),
        ([*GKE_ARGS, *W, "data.dataset=gs://bkt/d"], "only local or mounted paths"),
        ([*SLURM_ARGS, "--workdir", "gs://bkt/r"], "only local or mounted paths"),
    ],
)
def test_bad_parameters(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        launch.main([*argv, *COMMON])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


# The worked examples in launch/examples/ are exactly what these dry runs print.
EXAMPLES = {
    "tpu-vm-v4-16.sh": [
        "tpu-vm", "--name", "asr", "--zone", "us-central2-b", "--accelerator-type", "v4-16",
        "--project", "my-project", "--repo", "https://github.com/YOUR_ORG/jaxseq.git",
        "--dataset", "gs://my-bucket/data/libri", "--config", "configs/ctc_base.yaml",
        "--workdir", "gs://my-bucket/runs/asr", "train.num_steps=100000",
        "data.buckets=[500,1000,2000]",
    ],
    "gke-v5p-16.yaml": [
        "gke", "--name", "asr", "--image", "us-docker.pkg.dev/my-project/jaxseq/jaxseq:latest",
        "--tpu-accelerator", "tpu-v5p-slice", "--topology", "2x2x2",
        "--dataset", "gs://my-bucket/data/libri", "--service-account", "jaxseq",
        "--config", "configs/ctc_base.yaml", "--workdir", "gs://my-bucket/runs/asr",
        "--out", "asr.yaml", "train.num_steps=100000",
    ],
    "slurm-2x8gpu.sbatch": [
        "slurm", "--name", "asr", "--nodes", "2", "--gpus-per-node", "8", "--partition", "gpu",
        "--time", "24:00:00", "--repo-dir", "/shared/jaxseq", "--out", "asr.sbatch",
        "--config", "configs/ctc_base.yaml", "--workdir", "/shared/runs/asr",
        "data.dataset=/shared/data/libri", "train.num_steps=100000",
    ],
}  # fmt: skip


@pytest.mark.parametrize("name", EXAMPLES)
def test_examples_are_current(name, capsys):
    launch.main([*EXAMPLES[name], "--dry-run"])
    regenerate = f"python -m jaxseq.launch {shlex.join(EXAMPLES[name])} --dry-run"
    expected = (REPO / "launch" / "examples" / name).read_text()
    assert capsys.readouterr().out == expected, f"regenerate: {regenerate} > launch/examples/{name}"
    if name.endswith(".yaml"):
        pod = yaml.safe_load(expected)["spec"]["replicatedJobs"][0]["template"]["spec"]
        _no_url(pod["template"]["spec"]["containers"][0]["command"])
    else:
        (line,) = [x for x in expected.splitlines() if "jaxseq train " in x and x[0] != "#"]
        words = shlex.split(line)
        if name.endswith(".sh"):  # the command that gcloud runs on every worker
            (remote,) = [word for word in words if "jaxseq train " in word]
            words = shlex.split(remote)
        start = words.index(".venv/bin/jaxseq")
        _no_url(words[start : words.index("2>&1") if "2>&1" in words else None])
