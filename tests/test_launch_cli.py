"""The command line: dry runs execute nothing, the TPU VM steps run as printed, the GKE
manifest and sbatch script are written as printed, bad parameters are usage errors."""

import json
import os
import shlex
import subprocess
import sys

import pytest
import yaml

from jaxseq import launch
from jaxseq.launch import TrainCommand
from tests.conftest import REPO
from tests.launch_helpers import TRICKY, no_url, write_executable


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
        write_executable(traps / tool, f"#!{sys.executable}\nopen({str(tmp_path / tool)!r}, 'w')\n")
    argv = [recipe, "--dry-run", *COMMON, *DRY_RUNS[recipe], *TRICKY]
    result = _cli(argv, cwd=cwd, env={"PATH": str(traps), "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "cwd"]
    assert not list(cwd.iterdir())
    train = DRY_RUN_TRAIN[recipe]
    no_url(train.argv())
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
    write_executable(
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

    write_executable(bin_dir / "gcloud", "#!/bin/sh\nexit 7\n")
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
