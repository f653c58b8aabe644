"""Checkpoints: orbax CheckpointManager holding train state + grain iterator state + metadata.

Layout: WORKDIR/checkpoints/<step>/{state, iterator, meta}. Kept: the last `keep_last`
steps plus the `keep_best` steps with the lowest validation score (the task's `best_metric`,
e.g. WER; saved as metrics {"metric": name, "value": v}).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from jaxseq.config import TrainConfig
from jaxseq.errors import JaxseqError

ITERATOR = "iterator"  # the data iterator's state, one JSON file


def _score(metrics: dict[str, Any]) -> float:
    """A checkpoint's validation score, lower is better (older checkpoints saved {"wer": v})."""
    return metrics["value"] if "value" in metrics else metrics["wer"]


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
                    get_metric_fn=_score,
                    reverse=True,  # lowest is best
                    n=cfg.keep_best,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy(preserve),
            best_fn=_score,
            best_mode="min",
            enable_async_checkpointing=not read_only,
            read_only=read_only,
            create=not read_only,
            cleanup_tmp_directories=not read_only,  # saves a crash left unfinished
        )
        try:
            self.manager = ocp.CheckpointManager(self.directory, options=options)
        except Exception as err:
            raise CheckpointError(
                f"cannot open the checkpoint directory {self.directory}: "
                f"{type(err).__name__}: {err}"
            ) from err

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def best_step(self) -> int | None:
        """The kept step with the lowest validation score, if any step has one."""
        return self.manager.best_step()

    def save(
        self,
        step: int,
        state: Any,
        position: dict | None,
        meta: dict,
        metrics: dict[str, float] | None = None,
    ) -> None:
        """Starts an asynchronous save of `state` (and the data iterator's `position`, its
        `get_state()` after the last batch the saved state consumed) at `step`.

        `metrics`, when given, ({"metric", "value"}) ranks the checkpoint for keep-best.
        """
        items = {"state": ocp.args.PyTreeSave(state), "meta": ocp.args.JsonSave(meta)}
        if position is not None:
            # One JSON file (written by process 0), not grain's file per process: the iterator's
            # state ({"step": n}) is the same on every process, and a checkpoint then restores
            # with any process count.
            items[ITERATOR] = ocp.args.JsonSave(position)
        self._save(step, items, metrics)

    def restore(
        self, step: int, abstract_state: Any, data_iter: grain.DatasetIterator | None = None
    ) -> Any:
        """Restores `step` into the shardings of `abstract_state` (and `data_iter` in place).

        Raises:
          CheckpointError naming the step folder when it is missing, corrupt or mismatched.
        """
        items = {"state": _pytree_restore(abstract_state)}
        legacy = (self.directory / str(step) / "data_iter").is_dir()  # grain's per-process files
        if data_iter is not None and legacy:
            items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
        elif data_iter is not None:
            items[ITERATOR] = ocp.args.JsonRestore()
        restored = self._restore(step, items, abstract_state)
        if data_iter is not None and not legacy:
            data_iter.set_state(restored[ITERATOR])
        return restored["state"]

    def restore_latest(
        self, abstract_state: Any, data_iter: grain.DatasetIterator | None = None
    ) -> tuple[Any, int]:
        """(state, step) of the newest checkpoint that restores.

        A newer checkpoint that fails (a deleted shard, missing metadata) is renamed
        `corrupt-<step>` beside the others, with a warning, and the next older one is tried.
        With several processes this is a collective: a checkpoint that fails on one process
        fails on all (so all resume from one step), and process 0 alone renames.

        Raises:
          CheckpointError: of the newest checkpoint, when none restores (e.g. all were written
            by another model config; the message names the mismatching parameters).
        """
        errors: dict[int, CheckpointError] = {}  # newest first
        for step in sorted(self.all_steps(), reverse=True):
            error = None
            try:
                state = self.restore(step, abstract_state, data_iter)
            except CheckpointError as err:
                error = err
            if not _on_every_process(error is None):
                errors[step] = error or CheckpointError(
                    f"checkpoint {step} restored here but not on another process"
                )
                continue
            if errors:
                self._set_aside(errors)
                logging.warning("resuming from step %d, the newest checkpoint that restores", step)
            return state, step
        if errors:
            raise next(iter(errors.values()))
        raise CheckpointError(f"no checkpoint in {self.directory}")

    def _set_aside(self, errors: dict[int, CheckpointError]) -> None:
        """Renames the unreadable steps to corrupt-<step>. Process 0 renames (the folder is
        shared: several renaming processes would race), the others wait for it at a barrier;
        then every process sees the same steps."""
        if jax.process_index() == 0:
            for step, error in errors.items():
                target = self.directory / f"corrupt-{step}"
                (self.directory / str(step)).rename(target)
                logging.warning(
                    "checkpoint %d is unreadable (%s); moved to %s", step, error, target
                )
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("jaxseq: corrupt checkpoints set aside")
        self.manager.reload()

    def restore_params(self, step: int, abstract_params: Any) -> Any:
        """Only the parameters of `step` (no optimizer state is read), in the shardings of
        `abstract_params`; works on full train states and on `save_params` checkpoints."""
        abstract = {"params": abstract_params}
        items = {"state": _pytree_restore(abstract, partial=True)}
        return self._restore(step, items, abstract)["state"]["params"]

    def save_params(self, step: int, params: Any, meta: dict) -> None:
        """Saves parameters alone (e.g. imported weights), readable by `restore_params`."""
        items = {"state": ocp.args.PyTreeSave({"params": params}), "meta": ocp.args.JsonSave(meta)}
        self._save(step, items, None)

    def _save(self, step: int, items: dict, metrics: dict | None) -> None:
        try:
            self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)
        except Exception as err:  # also a failure of the previous asynchronous save
            raise _save_error(self.directory, step, err) from err

    def _restore(self, step: int, items: dict, abstract: Any) -> dict:
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
        for (key, want), got in zip(
            jax.tree_util.tree_leaves_with_path(abstract),
            jax.tree.leaves(restored["state"]),
            strict=True,
        ):
            if tuple(want.shape) != tuple(got.shape):
                raise CheckpointError(
                    f"checkpoint {path} holds {jax.tree_util.keystr(key)} with shape {got.shape}, "
                    f"but the model config gives {want.shape}: it was written by a different "
                    "model config; use that config, or start a new workdir"
                )
        logging.info("restored checkpoint %s", path)
        return restored

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
        """Blocks until pending asynchronous saves are durable; raises CheckpointError if one
        failed."""
        try:
            self.manager.wait_until_finished()
        except Exception as err:
            raise _save_error(self.directory, None, err) from err

    def close(self) -> None:
        self.manager.close()


def _on_every_process(ok: bool) -> bool:
    """Whether `ok` holds on every process (a collective when there are several)."""
    if jax.process_count() == 1:
        return ok
    return bool(multihost_utils.process_allgather(np.array([ok], np.int32)).all())


def _save_error(directory: Path, step: int | None, err: Exception) -> CheckpointError:
    which = f"checkpoint {step}" if step is not None else "an asynchronous checkpoint save"
    return CheckpointError(
        f"saving {which} to {directory} failed: {type(err).__name__}: {err}. Check that the "
        "directory is writable and has free space; the last complete checkpoint is kept."
    )


def _pytree_restore(abstract: Any, partial: bool = False) -> ocp.args.PyTreeRestore:
    """Restore arguments placing every array with the sharding of its ShapeDtypeStruct."""
    return ocp.args.PyTreeRestore(
        item=abstract,
        restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
        partial_restore=partial,
    )


def restore_workdir_params(
    workdir: str | Path, abstract_params: Any, step: int | None = None
) -> tuple[Any, int]:
    """(params, step) of a workdir's checkpoint `step`: by default the best by validation score,
    else the latest. Only parameters are read.

    Raises:
      CheckpointError naming the workdir when it has no checkpoint (or not `step`).
    """
    directory = Path(workdir) / "checkpoints"
    if not directory.is_dir():
        raise CheckpointError(
            f"{workdir} has no checkpoints/ folder: train there first, or import weights with "
            "`jaxseq convert`"
        )
    ckpt = Checkpointer(directory, TrainConfig(), read_only=True)
    try:
        if step is None:
            step = ckpt.best_step() or ckpt.latest_step()
        if step is None:
            raise CheckpointError(f"no checkpoint in {directory}; train first")
        return ckpt.restore_params(step, abstract_params), step
    finally:
        ckpt.close()
