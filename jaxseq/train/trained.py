"""A trained model read back from its workdir: config, task, mesh, parameters, features."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jax.sharding import Mesh

from jaxseq.config import FRONTEND_FILE, Config, FrontendConfig, TextConfig, load_config
from jaxseq.parallel.mesh import data_parallel_size, make_mesh
from jaxseq.tasks.base import Task
from jaxseq.tasks.registry import load_task
from jaxseq.train.checkpoint import restore_workdir_params
from jaxseq.train.optimizer import make_optimizer
from jaxseq.train.state import abstract_train_state


@dataclass
class Trained:
    """A trained model loaded from a workdir."""

    cfg: Config
    task: Task
    mesh: Mesh
    params: Any
    step: int
    frontend: FrontendConfig  # the features it was trained on
    text: TextConfig  # the transcripts' text policy


def load_trained(
    workdir: str | Path, *, step: int | None = None, overrides: tuple[str, ...] = ()
) -> Trained:
    """Restores the params of `step` (default: the best validation score, else the latest)
    on the mesh of the workdir's config (`overrides`, e.g. "mesh.data=1", change it).
    A collective: call on every process."""
    workdir = Path(workdir)
    if not (workdir / "config.yaml").exists():
        raise FileNotFoundError(f"{workdir} is not a jaxseq workdir (no config.yaml); train first")
    cfg = load_config(workdir / "config.yaml", overrides)
    saved = json.loads((workdir / FRONTEND_FILE).read_text())
    frontend, text = FrontendConfig(**saved["frontend"]), TextConfig(**saved["text"])
    task = load_task(cfg, workdir, frontend.n_mels)
    mesh = make_mesh(cfg.mesh)
    tx = make_optimizer(cfg.optim, cfg.train.num_steps)
    dp = data_parallel_size(mesh)
    abstract, _ = abstract_train_state(task, tx, task.dummy_batch(dp, cfg.data.buckets[0]), mesh)
    params, step = restore_workdir_params(workdir, abstract.params, step)
    return Trained(cfg, task, mesh, params, step, frontend, text)
