"""optax AdamW with a learning-rate schedule (warmup + cosine, or fairseq's tri-stage) and
global-norm clipping; optional frozen params."""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import optax

from jaxseq.config import ConfigError, OptimConfig


def tri_stage_schedule(
    peak: float,
    warmup_steps: int,
    hold_steps: int,
    decay_steps: int,
    init_ratio: float,
    end_ratio: float,
    decay: str = "exponential",
) -> optax.Schedule:
    """fairseq's `tri_stage` learning rate (wav2vec 2.0 fine-tuning) at update `count`:

      count < w:            peak * init_ratio + (peak - peak * init_ratio) * count / w
      w <= count < w + h:   peak
      w + h <= count <= w + h + d, s = count - w - h:
                            exponential: peak * exp(log(end_ratio) * s / d)
                            linear:      peak - (peak - peak * end_ratio) * s / d
      after:                peak * end_ratio

    (w, h, d: warmup, hold and decay steps; a phase of 0 steps is skipped.)
    """
    init, end = peak * init_ratio, peak * end_ratio
    hold_end = warmup_steps + hold_steps
    decay_end = hold_end + decay_steps

    def schedule(count):
        count = jnp.asarray(count, jnp.float32)
        warm = init + (peak - init) * count / max(warmup_steps, 1)
        frac = (count - hold_end) / max(decay_steps, 1)
        if decay == "exponential":
            decayed = peak * jnp.exp(math.log(end_ratio) * frac)
        else:
            decayed = peak - (peak - end) * frac
        lr = jnp.where(count <= decay_end, decayed, end)
        lr = jnp.where(count < hold_end, peak, lr)
        return jnp.where(count < warmup_steps, warm, lr)

    return schedule


def learning_rate_schedule(cfg: OptimConfig, num_steps: int) -> optax.Schedule:
    """`cfg.schedule`: "cosine", linear warmup to cfg.learning_rate, then cosine decay to
    end_learning_rate_ratio of it; "tri_stage", `tri_stage_schedule` with the phases
    `cfg.phase_ratio` of `num_steps` (each rounded down, as fairseq)."""
    if cfg.schedule == "tri_stage":
        warmup, hold, decay = (int(num_steps * r) for r in cfg.phase_ratio)
        return tri_stage_schedule(
            cfg.learning_rate,
            warmup,
            hold,
            decay,
            cfg.init_learning_rate_ratio,
            cfg.end_learning_rate_ratio,
            cfg.decay,
        )
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.learning_rate,
        warmup_steps=min(cfg.warmup_steps, max(num_steps - 1, 1)),
        decay_steps=max(num_steps, cfg.warmup_steps + 1),
        end_value=cfg.learning_rate * cfg.end_learning_rate_ratio,
    )


# Parameter names (a path's last part) that weight decay leaves alone, in every family: biases
# (of dense, attention [heads, head_dim], conv and RNN cells: "bias_ih", "bias_hh"), LayerNorm
# scales and offsets ("scale", "bias"), the TTS positional gain "alpha", and AST's
# "cls_token" and "distillation_token". Every other parameter decays: kernels, RNN weight
# matrices, token embeddings and position tables.
NO_DECAY = frozenset(
    {"bias", "bias_ih", "bias_hh", "scale", "alpha", "cls_token", "distillation_token"}
)


def decay_mask(params):
    """True where AdamW decays a parameter, by its name, not its rank: a scanned layer stack
    (model.scan_layers) gives every bias and scale a leading layer axis, and attention biases
    are [heads, head_dim] even unscanned."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: param_path(path).rsplit("/", 1)[-1] not in NO_DECAY, params
    )


def param_path(path: tuple) -> str:
    """ "encoder/layer0/attn/query/kernel" for a `tree_map_with_path` key path (dict keys only,
    so boxed and unboxed parameters have the same path)."""
    return "/".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def frozen_labels(patterns: tuple[str, ...]):
    """`param_labels` for optax.multi_transform: "frozen" where a pattern fully matches a
    parameter's path, else "train".

    Raises:
      ConfigError naming a pattern of `optim.freeze` that matches no parameter.
    """
    compiled = [re.compile(p) for p in patterns]

    def labels(params):
        paths = jax.tree_util.tree_leaves_with_path(params)
        names = [param_path(path) for path, _ in paths]
        for pattern in compiled:
            if not any(pattern.fullmatch(n) for n in names):
                raise ConfigError(
                    f"optim.freeze pattern {pattern.pattern!r} matches no parameter; paths look "
                    f"like {names[0]!r} (the pattern must match a whole path)"
                )
        return jax.tree_util.tree_map_with_path(
            lambda path, _: (
                "frozen" if any(p.fullmatch(param_path(path)) for p in compiled) else "train"
            ),
            params,
        )

    return labels


def make_optimizer(cfg: OptimConfig, num_steps: int) -> optax.GradientTransformation:
    """The optimizer every family trains with (parameters matching `cfg.freeze` stay fixed)."""
    tx = optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm),
        optax.adamw(
            learning_rate_schedule(cfg, num_steps),
            b1=cfg.b1,
            b2=cfg.b2,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            mask=decay_mask,
        ),
    )
    if not cfg.freeze:
        return tx
    return optax.multi_transform(
        {"train": tx, "frozen": optax.set_to_zero()}, frozen_labels(cfg.freeze)
    )
