"""Preemption: SIGTERM → every process saves at the same step, then training returns.

With several processes (`jax.distributed` initialized) jax's preemption sync manager receives
the notice and agrees on a step all processes reach (`reached_preemption_sync_point`, called at
every step). A single process watches SIGTERM itself.
"""

from __future__ import annotations

import logging
import signal

from jax._src import distributed
from jax.experimental import multihost_utils


class PreemptionWatch:
    """`should_stop(step)` turns True at the step where a preempted run saves and stops."""

    def __init__(self):
        self._signalled = False
        self._previous = None
        self._multi = distributed.global_state.client is not None
        if not self._multi:
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        del signum, frame
        logging.warning("SIGTERM: saving a checkpoint after the current step, then stopping")
        self._signalled = True

    def should_stop(self, step: int) -> bool:
        """Call once per step on every process, with the step just completed."""
        if self._multi:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._signalled

    def close(self) -> None:
        """Restores the previous SIGTERM handler."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
