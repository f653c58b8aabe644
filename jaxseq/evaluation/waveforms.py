"""Predictions for in-memory waveforms, batched in lockstep over the processes."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from jaxseq.audio.frontend import log_mel_numpy
from jaxseq.data.pipeline import bucket_length
from jaxseq.data.waveform_batch import normalize_waveform
from jaxseq.data.waveforms import feature_batch
from jaxseq.parallel.batch import to_global
from jaxseq.parallel.mesh import data_parallel_size
from jaxseq.parallel.sharding import replicated, sharding_context
from jaxseq.tasks.base import Task
from jaxseq.train.trained import Trained


def features_of(trained: Trained, audio: np.ndarray) -> np.ndarray:
    """What the model reads of float audio [samples] at its sample rate, as it read its
    training batches: log-mel float32 [frames, n_mels] (`log_mel_numpy`), or with a waveform
    frontend (Wav2Vec2/HuBERT) the samples float32 [samples], scaled to zero mean and unit
    variance when `data.normalize_waveform` (a converted checkpoint's do_normalize) says so."""
    if trained.frontend.kind == "waveform":
        if trained.cfg.data.normalize_waveform:
            return normalize_waveform(audio)
        return np.asarray(audio, np.float32)
    return log_mel_numpy(audio, trained.frontend)


@functools.cache
def _predict_step(task: Task, mesh: Mesh, options: tuple[tuple[str, Any], ...]):
    """`task.predict_fn` alone, jitted once per (task, mesh, options): later calls reuse its
    compilations, one per batch shape."""
    return jax.jit(
        functools.partial(task.predict_fn, **dict(options)), out_shardings=replicated(mesh)
    )


def predicted_batches(
    trained: Trained,
    items: list[Any],
    featurize: Callable[[Any], np.ndarray],
    *,
    batch_size: int = 32,
    options: dict[str, Any],
) -> Iterator[Any]:
    """`task.predict_fn` outputs (NumPy, this process's real rows) for each batch of `items`,
    each turned into the model's features by `featurize` when its batch comes (`features_of`:
    log-mel [frames, n_mels], or samples [samples] for a waveform frontend, whose
    `data.buckets` count samples).

    Each process passes its own items (any number, also none); all processes run the same
    number of batches of the same shape (sizes agreed by collectives), so that a recognizer
    can run inside a multi-process evaluation. A collective with several processes. Each batch
    is padded to a bucket of `data.buckets` and to a power-of-two number of rows (or
    `batch_size`), so that calls with similar audio reuse one compiled step; `options` as
    `Task.eval_options` returns them.
    """
    task, mesh, count = trained.task, trained.mesh, jax.process_count()
    step = _predict_step(task, mesh, tuple(sorted(options.items())))
    share = max(data_parallel_size(mesh) // count, 1)  # this process's data-parallel rows
    most = len(items)
    if count > 1:
        most = int(multihost_utils.process_allgather(np.array([most])).max())
    rows = min(batch_size, max(most, 1))
    rows = min(1 << (rows - 1).bit_length(), batch_size)  # few distinct shapes: few compiles
    rows = -(-rows // share) * share  # per process, every batch
    p = jax.process_index()
    trailing = () if trained.frontend.kind == "waveform" else (trained.frontend.n_mels,)
    width = math.prod(trailing)  # waveforms pad as [samples, 1]
    for start in range(0, most, rows):
        chunk = [featurize(item) for item in items[start : start + rows]]
        frames = max((len(f) for f in chunk), default=1)
        if count > 1:
            frames = int(multihost_utils.process_allgather(np.array([frames])).max())
        frames = bucket_length(frames, trained.cfg.data.buckets)
        host_batch = feature_batch(
            [f.reshape(len(f), width) for f in chunk], rows, frames, width
        )  # features [rows, frames, width]
        host_batch["features"] = host_batch["features"].reshape(rows, frames, *trailing)
        with sharding_context(mesh):
            outputs = jax.device_get(step(trained.params, to_global(host_batch, mesh)))
        mine = slice(p * rows, p * rows + len(chunk))  # this process's real rows
        yield jax.tree.map(lambda x, mine=mine: np.asarray(x)[mine], outputs)


def predict_waveforms(
    trained: Trained, waves: list[np.ndarray], *, batch_size: int = 32, **options: Any
) -> list[Any]:
    """`task.decode` predictions for float waveforms [samples] at the model's sample rate,
    batched in lockstep over the processes (see `predicted_batches`; a collective with several
    processes); `options` as `Task.eval_options`."""
    task = trained.task
    options = task.eval_options(**options)
    out = []
    for outputs in predicted_batches(
        trained,
        waves,
        lambda w: features_of(trained, w),
        batch_size=batch_size,
        options=options,
    ):
        out += task.decode(outputs, **options)
    return out
