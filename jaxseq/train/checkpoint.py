"""Checkpoints: orbax CheckpointManager holding train state + grain iterator state + metadata.

Layout: WORKDIR/checkpoints/<step>/{state, data_iter, meta}. Kept: the last `keep_last`
steps plus the `keep_best` steps with the lowest validation WER.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import grain
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from jaxseq.config import TrainConfig
from jaxseq.errors import JaxseqError

BEST_METRIC = "wer"


class CheckpointError(JaxseqError, RuntimeError):
    """A checkpoint is missing, corrupt, or does not match the model; the message says which."""


class Checkpointer:
    """Saves and restores (state, data iterator, metadata) with orbax."""

    def __init__(self, directory: str | Path, cfg: TrainConfig, *, read_only: bool = False):
        self.directory = Path(directory).absolute()
        preserve = [policies.LatestN(n=cfg.keep_last)]
        if cfg.keep_best > 0:
            preserve.append(
                policies.BestN(
                    get_metric_fn=lambda m: m[BEST_METRIC],
                    reverse=True,  # lowest WER is best
                    n=cfg.keep_best,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy(preserve),
            best_fn=lambda m: m[BEST_METRIC],
            best_mode="min",
            enable_async_checkpointing=not read_only,
            read_only=read_only,
            create=not read_only,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def best_step(self) -> int | None:
        """The kept step with the lowest validation WER, if any step has one."""
        return self.manager.best_step()

    def save(
        self,
        step: int,
        state: Any,
        data_iter: grain.DatasetIterator | None,
        meta: dict,
        metrics: dict[str, float] | None = None,
    ) -> None:
        """Starts an asynchronous save of `state` (and the iterator position) at `step`.

        `metrics`, when given, must hold "wer": it ranks the checkpoint for keep-best.
        """
        items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
        if data_iter is not None:
            items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
        self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)

    def restore(
        self, step: int, abstract_state: Any, data_iter: grain.DatasetIterator | None = None
    ) -> Any:
        """Restores `step` into the shardings of `abstract_state` (and `data_iter` in place).

        Raises:
          CheckpointError naming the step folder when it is missing, corrupt or mismatched.
        """
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iter is not None:
            items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
        path = self.directory / str(step)
        if step not in self.all_steps():
            raise CheckpointError(
                f"no checkpoint for step {step} in {self.directory}; available: {self.all_steps()}"
            )
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as err:  # orbax raises many types; name the folder and the cause
            raise CheckpointError(
                f"could not restore checkpoint {path}: {type(err).__name__}: {err}. "
                "The checkpoint is corrupt or was written by a different model config; "
                "restore another step (--step) or start a new workdir."
            ) from err
        logging.info("restored checkpoint %s", path)
        return restored["state"]

    def restore_meta(self, step: int) -> dict:
        """The JSON metadata saved with `step`."""
        try:
            return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
                "meta"
            ]
        except Exception as err:
            raise CheckpointError(
                f"could not read metadata of {self.directory / str(step)}: {err}"
            ) from err

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are durable."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
