"""Files every process needs that only process 0 may write (shared storage, no races)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import jax
from jax.experimental import multihost_utils

T = TypeVar("T")


def built_on_process_zero(
    path: Path | None,
    build: Callable[[], T],
    save: Callable[[T, Path], None],
    load: Callable[[Path], T],
) -> T:
    """`build()` on process 0, saved at `path`; every other process waits at a barrier and
    then `load`s that file, so that all processes hold the same object (e.g. a tokenizer
    trained from data, whose training is not guaranteed to be deterministic across hosts).

    With one process, or `path` None (nothing shared to write to), it is just `build()`.
    A collective when there are several processes: call it on every process.
    """
    if path is None or jax.process_count() == 1:
        return build()
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        built = build()
        save(built, path)
    multihost_utils.sync_global_devices(f"jaxseq: {path.name} written")
    return built if jax.process_index() == 0 else load(path)
