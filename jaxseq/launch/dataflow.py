"""The Dataflow recipe: `jaxseq prepare --runner beam` as a Dataflow job, for feature
preparation that outgrows one machine (jaxseq.data.prepare_beam; docs/data.md).

    python -m jaxseq.launch dataflow --dry-run --name prep-libri --project my-project \\
        --region us-central1 --temp-location gs://my-bucket/tmp \\
        --image us-docker.pkg.dev/my-project/jaxseq/jaxseq-beam:latest \\
        --source manifest:/mnt/data/libri/train.jsonl --out /mnt/data/prepared --split train \\
        --config configs/ctc_base.yaml prepare.num_shards=1024

prints the `jaxseq prepare` command, which runs on the launching machine: it scans the
manifest, plans the shards and submits the pipeline; Dataflow's workers compute the features
and write the shards; the launching machine then writes the index and dataset.json. Without
--dry-run the command is run.

Storage: jaxseq reads and writes local or mounted paths only (no gs:// URLs). The manifest,
its audio and --out must be at the same paths on the launching machine and on every worker
(the worker image mounts them); the recipe refuses URLs there. Only --temp-location, Beam's
own staging area, is a gs:// URL.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
from dataclasses import dataclass

from jaxseq.launch.train_command import GcsPath, LaunchError


@dataclass(frozen=True)
class Dataflow:
    """A Dataflow job of `jaxseq prepare --runner beam`."""

    name: str  # the job name: lowercase letters, digits and '-'
    project: str
    region: str
    temp_location: str  # gs://BUCKET/PATH: Beam's staging and temp files
    image: str  # worker image: a Beam Python SDK image with jaxseq[beam] installed
    max_workers: int = 100
    machine_type: str = "n2-standard-8"
    service_account: str | None = None
    beam_options: tuple[str, ...] = ()  # more Beam options, e.g. "--disk_size_gb=100"

    def options(self) -> list[str]:
        """The Beam pipeline options of the job."""
        GcsPath.parse(self.temp_location, "--temp-location")
        return [
            "--runner=DataflowRunner",
            f"--project={self.project}",
            f"--region={self.region}",
            f"--job_name={self.name}",
            f"--temp_location={self.temp_location}",
            f"--sdk_container_image={self.image}",
            f"--max_num_workers={self.max_workers}",
            f"--machine_type={self.machine_type}",
            *([f"--service_account_email={self.service_account}"] if self.service_account else []),
            *self.beam_options,
        ]


@dataclass(frozen=True)
class PrepareCommand:
    """`jaxseq prepare` of one split (or a synthesized corpus, `synth:DIR`, with no split)."""

    source: str  # manifest:PATH.jsonl | tfds:NAME[/CONFIG]:SPLIT | synth:DIR
    out: str
    split: str | None = None
    evaluation: bool = False
    config: str | None = None
    overrides: tuple[str, ...] = ()

    def argv(self, options: list[str], program: str = "jaxseq") -> list[str]:
        """The argument vector with the Beam pipeline `options`; raises LaunchError for a URL
        where jaxseq opens a local path."""
        path = self.source.partition(":")[2]
        for what, value in (("--source", path), ("--out", self.out)):
            if "://" in value:
                raise LaunchError(
                    f"{what} holds {value!r}, but jaxseq reads and writes only local or mounted "
                    "paths: mount it at the same path on this machine and in the worker image"
                )
        return [
            program,
            "prepare",
            *(["--config", self.config] if self.config else []),
            "--source",
            self.source,
            "--out",
            self.out,
            *(["--split", self.split] if self.split else []),
            *(["--eval"] if self.evaluation else []),
            "--runner",
            "beam",
            f"--beam-options={shlex.join(options)}",  # `=`: the value starts with "--runner="
            *self.overrides,
        ]


def render_dataflow(job: Dataflow, prepare: PrepareCommand) -> str:
    """The dry run's text: what the job needs, then the command."""
    return (
        f"# Dataflow job {job.name}: jaxseq prepare --runner beam, up to {job.max_workers} "
        f"workers ({job.machine_type}).\n"
        f"# Workers run {job.image}\n"
        "# (a Beam Python SDK image with jaxseq[beam] installed), and must see the manifest,\n"
        f"# its audio and {prepare.out} at the paths below, as this machine does.\n"
        f"{shlex.join(prepare.argv(job.options()))}\n"
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The `dataflow` recipe's options."""
    d = sub.add_parser("dataflow", help="jaxseq prepare --runner beam as a Dataflow job")
    d.add_argument("--name", required=True, help="Dataflow job name")
    d.add_argument("--project", required=True)
    d.add_argument("--region", required=True)
    d.add_argument("--temp-location", required=True, help="gs://BUCKET/PATH for Beam's files")
    d.add_argument("--image", required=True, help="worker image with jaxseq[beam] installed")
    d.add_argument("--max-workers", type=int, default=100)
    d.add_argument("--machine-type", default="n2-standard-8")
    d.add_argument("--service-account", help="the workers' service account email")
    d.add_argument(
        "--beam-option", dest="beam_options", action="append", default=[], help="more, repeated"
    )
    d.add_argument("--source", required=True, help="manifest:PATH.jsonl | tfds:... | synth:DIR")
    d.add_argument("--out", required=True, help="prepared dataset folder (a mounted path)")
    d.add_argument("--split", help="split name (not for synth:)")
    d.add_argument("--eval", dest="evaluation", action="store_true", help="an evaluation split")
    d.add_argument("--config", help="config path")
    d.add_argument("--dry-run", action="store_true", help="print; execute nothing")
    d.add_argument("overrides", nargs="*", help="config overrides, e.g. prepare.num_shards=1024")


def run_dataflow(a: argparse.Namespace) -> None:
    """Prints the command (--dry-run) or runs it."""
    job = Dataflow(
        a.name,
        a.project,
        a.region,
        a.temp_location,
        a.image,
        a.max_workers,
        a.machine_type,
        a.service_account,
        tuple(a.beam_options),
    )
    prepare = PrepareCommand(a.source, a.out, a.split, a.evaluation, a.config, tuple(a.overrides))
    text = render_dataflow(job, prepare)
    if a.dry_run:
        print(text, end="")
        return
    code = subprocess.run(prepare.argv(job.options())).returncode
    if code:
        raise SystemExit(f"jaxseq prepare failed (exit {code}); rerun it to resume")
