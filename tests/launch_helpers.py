"""Launch recipes for a 2-host example: exact commands, manifest, sbatch script; nothing is run
on a cloud or cluster (fake gcloud / gcsfuse / scontrol / srun / jaxseq stand in where a shell
runs). jaxseq takes local paths only, so `gs://` must never reach a `jaxseq train` command line:
buckets are mounted (gcsfuse on TPU VMs, the Cloud Storage FUSE CSI driver on GKE)."""

import stat
import sys

from jaxseq.launch import TrainCommand

# Overrides that only survive correct shell quoting.
TRICKY = ("data.buckets=[256,512]", "train.note=two words", "eval.x=it's")
TRAIN = TrainCommand("configs/ctc_base.yaml", "gs://bkt/runs/asr", ("mesh.data=-1", *TRICKY))
# What every host runs: the workdir is the bucket's mount.
MOUNTED = TrainCommand("configs/ctc_base.yaml", "/mnt/gcs/bkt/runs/asr", TRAIN.overrides)


def no_url(argv):
    """The `jaxseq train` argv holds local paths only."""
    assert argv[1] == "train"
    assert not [word for word in argv if "://" in word], argv


def write_executable(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def fake_jaxseq(path):
    """A stand-in `jaxseq` that writes its argv, cwd and JAX_* variables to $FAKE_OUT/<id>.json."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_executable(
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
