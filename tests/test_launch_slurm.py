"""The SLURM recipe: the sbatch script, shared paths only, a run under a fake SLURM."""

import dataclasses
import json
import os
import subprocess

import pytest

from jaxseq import launch
from jaxseq.launch import Slurm, TrainCommand
from tests.launch_helpers import TRICKY, fake_jaxseq, write_executable

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
    fake_jaxseq(repo / ".venv" / "bin" / "jaxseq")
    write_executable(bin_dir / "scontrol", "#!/bin/sh\nprintf 'gpu-a\\ngpu-b\\n'\n")
    write_executable(
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
