"""The shared parts: `jaxseq train` quoting, gs:// paths, the local-path checks."""

import shlex

import pytest

from jaxseq import launch
from jaxseq.config import LOCAL_PATH_KEYS
from jaxseq.launch import GcsPath, TrainCommand
from tests.launch_helpers import MOUNTED, TRAIN, TRICKY


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
