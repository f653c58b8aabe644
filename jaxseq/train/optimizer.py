"""optax AdamW with linear warmup, cosine decay and global-norm clipping; optional frozen params."""

from __future__ import annotations

import re

import jax
import optax

from jaxseq.config import ConfigError, OptimConfig


def learning_rate_schedule(cfg: OptimConfig, num_steps: int) -> optax.Schedule:
    """Linear warmup to cfg.learning_rate, then cosine decay to end_learning_rate_ratio of it."""
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
