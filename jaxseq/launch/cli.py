"""The command line: its options, and what runs without --dry-run (the TPU VM steps, or writing
the manifest or script)."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import subprocess
import sys
from pathlib import Path

from jaxseq import launch
from jaxseq.launch.dataflow import add_parser as add_dataflow_parser
from jaxseq.launch.dataflow import run_dataflow
from jaxseq.launch.gke import Gke, gke_commands, render_gke
from jaxseq.launch.slurm import Slurm, slurm_script
from jaxseq.launch.tpu_vm import TPU_STEPS, TpuVm, render_tpu_vm, tpu_vm_steps
from jaxseq.launch.train_command import MOUNT_ROOT, REPO, LaunchError, TrainCommand


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

    p = argparse.ArgumentParser(
        prog="python -m jaxseq.launch", description=launch.__doc__.split("\n")[0]
    )
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
    add_dataflow_parser(sub)
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
    """`python -m jaxseq.launch {tpu-vm,gke,slurm,dataflow} [--dry-run] ...`."""
    p = _parser()
    a = p.parse_args(argv)
    if a.recipe == "dataflow":
        try:
            return run_dataflow(a)
        except LaunchError as err:
            p.error(str(err))
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
