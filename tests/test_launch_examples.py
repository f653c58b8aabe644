"""launch/examples/ is current: each file is byte for byte a dry run's output, with local
paths only on its `jaxseq train` command line."""

import shlex

import pytest
import yaml

from jaxseq import launch
from tests.conftest import REPO
from tests.launch_helpers import no_url

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
        no_url(pod["template"]["spec"]["containers"][0]["command"])
    else:
        (line,) = [x for x in expected.splitlines() if "jaxseq train " in x and x[0] != "#"]
        words = shlex.split(line)
        if name.endswith(".sh"):  # the command that gcloud runs on every worker
            (remote,) = [word for word in words if "jaxseq train " in word]
            words = shlex.split(remote)
        start = words.index(".venv/bin/jaxseq")
        no_url(words[start : words.index("2>&1") if "2>&1" in words else None])
