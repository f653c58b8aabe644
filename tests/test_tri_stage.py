"""optim.schedule=tri_stage against a float64 NumPy transcription of fairseq's
TriStageLRScheduler (warmup from init_lr_scale, hold, exponential decay to final_lr_scale, then
constant), and its linear-decay variant; an optimizer step takes the rate of its count."""

import math

import numpy as np
import optax
import pytest

from jaxseq.config import load_config
from jaxseq.train.optimizer import learning_rate_schedule, make_optimizer


def fairseq_tri_stage(step, peak, phase_ratio, max_update, init_scale, final_scale, decay):
    """fairseq/optim/lr_scheduler/tri_stage_lr_scheduler.py, `step_update(step)`."""
    warmup, hold, decay_steps = (int(max_update * r) for r in phase_ratio)
    init_lr, final_lr = init_scale * peak, final_scale * peak
    rate = (peak - init_lr) / warmup if warmup else 0.0
    if step < warmup:
        return init_lr + rate * step
    if step < warmup + hold:
        return peak
    s = step - warmup - hold
    if s <= decay_steps:
        if decay == "exponential":
            return peak * math.exp(-(-math.log(final_scale) / decay_steps) * s)
        return peak - (peak - final_lr) * s / decay_steps
    return final_lr


@pytest.mark.parametrize(
    "decay,ratio,steps",
    [("exponential", (0.1, 0.4, 0.5), 200), ("linear", (0.25, 0.0, 0.75), 103)],
)
def test_tri_stage_matches_fairseq(decay, ratio, steps):
    cfg = load_config(
        None,
        [
            "optim.schedule=tri_stage",
            f"optim.decay={decay}",
            f"optim.phase_ratio=[{ratio[0]},{ratio[1]},{ratio[2]}]",
            "optim.learning_rate=3e-4",
            "optim.init_learning_rate_ratio=0.01",
            "optim.end_learning_rate_ratio=0.05",
        ],
    )
    schedule = learning_rate_schedule(cfg.optim, steps)
    counts = np.arange(steps + 10)
    ours = np.asarray([schedule(c) for c in counts], np.float64)
    ref = np.array([fairseq_tri_stage(c, 3e-4, ratio, steps, 0.01, 0.05, decay) for c in counts])
    np.testing.assert_allclose(ours, ref, rtol=2e-6, atol=0)
    assert ours[0] == pytest.approx(3e-6) and ours[-1] == pytest.approx(1.5e-5)


def test_optimizer_steps_at_the_schedule_rate():
    """SGD-like check: with AdamW's first step (|update| = lr for a nonzero gradient, no decay),
    the update of step k is the schedule at count k."""
    cfg = load_config(
        None,
        ["optim.schedule=tri_stage", "optim.weight_decay=0", "optim.clip_norm=1e9"],
    )
    tx = make_optimizer(cfg.optim, 100)
    params = {"w": np.ones(3, np.float32)}
    state = tx.init(params)
    schedule = learning_rate_schedule(cfg.optim, 100)
    for k in range(3):
        updates, state = tx.update({"w": np.full(3, 0.5, np.float32)}, state, params)
        np.testing.assert_allclose(np.abs(updates["w"]), float(schedule(k)), rtol=1e-4)
        params = optax.apply_updates(params, updates)
