"""The Dataflow recipe: the dry run prints the `jaxseq prepare --runner beam` command that
launch/examples/dataflow-prepare.sh holds, jaxseq's own parser reads it back, URLs are refused
where jaxseq opens a path, and without --dry-run the command runs as printed."""

import json
import os
import shlex
import subprocess
import sys

import pytest

from jaxseq import launch
from jaxseq.cli import build_parser
from tests.conftest import REPO
from tests.launch_helpers import fake_jaxseq

EXAMPLE = [
    "dataflow", "--name", "prep-libri", "--project", "my-project", "--region", "us-central1",
    "--temp-location", "gs://my-bucket/tmp",
    "--image", "us-docker.pkg.dev/my-project/jaxseq/jaxseq-beam:latest",
    "--source", "manifest:/mnt/data/libri/train.jsonl", "--out", "/mnt/data/prepared",
    "--split", "train", "--config", "configs/ctc_base.yaml", "prepare.num_shards=1024",
]  # fmt: skip


def _command(text: str) -> list[str]:
    (line,) = [x for x in text.splitlines() if not x.startswith("#")]
    return shlex.split(line)


def test_example_is_current_and_parses(capsys):
    launch.main([*EXAMPLE, "--dry-run"])
    out = capsys.readouterr().out
    regenerate = f"python -m jaxseq.launch {shlex.join(EXAMPLE)} --dry-run"
    expected = (REPO / "launch/examples/dataflow-prepare.sh").read_text()
    assert out == expected, f"regenerate: {regenerate} > launch/examples/dataflow-prepare.sh"
    argv = _command(out)
    assert argv[0] == "jaxseq"
    args = build_parser().parse_args(argv[1:])
    assert (args.source, str(args.out), args.split) == (
        "manifest:/mnt/data/libri/train.jsonl",
        "/mnt/data/prepared",
        "train",
    )
    assert (args.runner, args.eval, args.overrides) == ("beam", False, ["prepare.num_shards=1024"])
    assert shlex.split(args.beam_options) == [
        "--runner=DataflowRunner",
        "--project=my-project",
        "--region=us-central1",
        "--job_name=prep-libri",
        "--temp_location=gs://my-bucket/tmp",
        "--sdk_container_image=us-docker.pkg.dev/my-project/jaxseq/jaxseq-beam:latest",
        "--max_num_workers=100",
        "--machine_type=n2-standard-8",
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--out": "gs://my-bucket/prepared"}, "--out holds 'gs://my-bucket/prepared'"),
        ({"--source": "manifest:gs://b/m.jsonl"}, "--source holds 'gs://b/m.jsonl'"),
        ({"--temp-location": "/tmp/beam"}, "--temp-location must be gs://BUCKET/PATH"),
    ],
)
def test_urls_only_where_they_work(change, message, capsys):
    argv = list(EXAMPLE)
    for option, value in change.items():
        argv[argv.index(option) + 1] = value
    with pytest.raises(SystemExit):
        launch.main([*argv, "--dry-run"])
    assert message in capsys.readouterr().err


def test_without_dry_run_the_command_runs(tmp_path):
    fake_jaxseq(tmp_path / "bin" / "jaxseq")
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    env.update(FAKE_OUT=str(tmp_path), PYTHONPATH=str(REPO))
    argv = [sys.executable, "-m", "jaxseq.launch", *EXAMPLE, "--eval", "--beam-option=--a=b c"]
    subprocess.run(argv, env=env, check=True, capture_output=True)
    got = json.loads((tmp_path / "run.json").read_text())["argv"]
    assert got[:2] == ["prepare", "--config"] and "--eval" in got
    (options,) = [x for x in got if x.startswith("--beam-options=")]
    assert shlex.split(options.removeprefix("--beam-options="))[-1] == "--a=b c"
