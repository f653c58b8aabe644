"""optax AdamW with linear warmup, cosine decay and global-norm clipping."""

from __future__ import annotations

import jax
import optax

from jaxseq.config import OptimConfig


def learning_rate_schedule(cfg: OptimConfig, num_steps: int) -> optax.Schedule:
    """Linear warmup to cfg.learning_rate, then cosine decay to end_learning_rate_ratio of it."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.learning_rate,
        warmup_steps=min(cfg.warmup_steps, max(num_steps - 1, 1)),
        decay_steps=max(num_steps, cfg.warmup_steps + 1),
        end_value=cfg.learning_rate * cfg.end_learning_rate_ratio,
    )


def _decay_mask(params):
    """Weight decay on matrices and conv kernels only (not biases or norm scales)."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(cfg: OptimConfig, num_steps: int) -> optax.GradientTransformation:
    """The optimizer every family trains with."""
    return optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm),
        optax.adamw(
            learning_rate_schedule(cfg, num_steps),
            b1=cfg.b1,
            b2=cfg.b2,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            mask=_decay_mask,
        ),
    )
