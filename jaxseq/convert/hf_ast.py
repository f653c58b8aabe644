"""Hugging Face `ASTForAudioClassification` checkpoints → jaxseq AST parameters.

`ast_config_from_hf(config)` turns a transformers ASTConfig (or its config.json dict) into
jaxseq config overrides, the mel-bin count and the label names; `ast_params_from_hf(tensors,
...)` turns its state dict into the params of `jaxseq.models.ast.AST` (the tree
`AST(...).init(...)["params"]` has after `nn.unbox`).

Both of transformers' tensor namings are read: the current one (`...layers.0.attention.q_proj`,
what `model.state_dict()` gives) and the legacy one that checkpoints on the Hub and
`save_pretrained` files use (`...encoder.layer.0.attention.attention.query`).

The mapping is one table (`_param_table`), in the style of `hf_whisper`: every jaxseq parameter,
the HF tensor it comes from, the HF shape the config implies, and the layout change between them
(torch Linear weights are [out, in]; jaxseq's head projections are [embed, heads, head_dim] and
[heads, head_dim, embed]; the torch Conv2d patch weight [d_model, 1, freq, time] becomes
[freq, time, d_model]).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxseq.config import ClassifyConfig, ModelConfig
from jaxseq.convert.hf_whisper import (
    ConversionError,
    _attention,
    _Entry,
    _mlp,
    _norm,
    _same,
    _set,
)
from jaxseq.models.ast import NUM_EXTRA_TOKENS, patch_grid

ARCHITECTURE = "ASTForAudioClassification"
MODEL_TYPE = "audio-spectrogram-transformer"
_BASE = "audio_spectrogram_transformer"

# Legacy (Hub checkpoint) tensor names → current ones: transformers' own renaming of ViT-style
# checkpoints (conversion_mapping "ViTModel"), applied in this order.
_LEGACY_RENAMES = (
    (r"\.encoder\.layer\.(\d+)\.", r".layers.\1."),
    (r"\.attention\.attention\.query\.", ".attention.q_proj."),
    (r"\.attention\.attention\.key\.", ".attention.k_proj."),
    (r"\.attention\.attention\.value\.", ".attention.v_proj."),
    (r"\.attention\.output\.dense\.", ".attention.o_proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
)


def _current_name(name: str) -> str:
    for pattern, replacement in _LEGACY_RENAMES:
        name = re.sub(pattern, replacement, name)
    return name


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch.Tensor
        value = value.detach().cpu().float().numpy()
    return np.asarray(value, dtype=np.float32)


# transformers' ASTConfig defaults (a config.json may leave them out).
_HF_DEFAULTS = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0,
    "layer_norm_eps": 1e-12,
    "patch_size": 16,
    "qkv_bias": True,
    "frequency_stride": 10,
    "time_stride": 10,
    "max_length": 1024,
    "num_mel_bins": 128,
}


def _config_dict(hf_config: Any) -> dict:
    config = hf_config.to_dict() if hasattr(hf_config, "to_dict") else hf_config
    return {**_HF_DEFAULTS, **config}


def ast_config_from_hf(hf_config: Any) -> tuple[dict, dict, int, list[str]]:
    """jaxseq settings of a transformers ASTConfig (or the dict of its config.json).

    Returns:
      (model_overrides, classify_overrides, n_mels, labels): keyword values for
      `dataclasses.replace(cfg.model, **model_overrides)` (d_model, num_heads, num_layers,
      mlp_dim, dropout) and for `cfg.classify` (encoder "ast", level "sequence", pooling "cls",
      patch_size, frequency_stride, time_stride, max_frames, layer_norm_eps, and multi_label
      when the config names a problem_type); the mel bins (num_mel_bins); the label names in
      id order (id2label).

    Raises:
      ConversionError: when the config is not an AST one, or uses what jaxseq's AST lacks
        (an activation other than exact GELU, no q/k/v biases, non-square patches, a head
        size other than hidden_size / num_attention_heads) or has malformed labels.
    """
    config = _config_dict(hf_config)
    model_type = config.get("model_type")
    if model_type != MODEL_TYPE:
        raise ConversionError(
            f"model_type is {model_type!r}; expected {MODEL_TYPE!r} (transformers' AST)"
        )
    act = config["hidden_act"]
    if act != "gelu":
        raise ConversionError(
            f"unsupported hidden_act {act!r}; jaxseq's AST uses exact GELU ('gelu')"
        )
    if not config["qkv_bias"]:
        raise ConversionError("qkv_bias is false; jaxseq's AST has query/key/value biases")
    patch = config["patch_size"]
    if isinstance(patch, list | tuple):
        if len(set(patch)) != 1:
            raise ConversionError(f"patch_size {patch} is not square; jaxseq's AST needs p x p")
        patch = patch[0]
    d, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or d // heads
    if d % heads or head_dim != d // heads:
        raise ConversionError(
            f"hidden_size {d} with {heads} heads and head_dim {head_dim}: jaxseq's attention "
            "needs head_dim = hidden_size / num_attention_heads"
        )
    id2label = {int(k): str(v) for k, v in (config.get("id2label") or {}).items()}
    if sorted(id2label) != list(range(len(id2label))) or not id2label:
        raise ConversionError(f"id2label must name labels 0..n-1, got ids {sorted(id2label)}")
    model = {
        "d_model": d,
        "num_heads": heads,
        "num_layers": config["num_hidden_layers"],
        "mlp_dim": config["intermediate_size"],
        "dropout": float(config["hidden_dropout_prob"]),
    }
    classify = {
        "encoder": "ast",
        "level": "sequence",
        "pooling": "cls",
        "patch_size": patch,
        "frequency_stride": config["frequency_stride"],
        "time_stride": config["time_stride"],
        "max_frames": config["max_length"],
        "layer_norm_eps": float(config["layer_norm_eps"]),
    }
    problem = config.get("problem_type")
    if problem in ("multi_label_classification", "single_label_classification"):
        classify["multi_label"] = problem == "multi_label_classification"
    labels = [id2label[i] for i in range(len(id2label))]
    return model, classify, config["num_mel_bins"], labels


def _param_table(
    cfg: ModelConfig, classify: ClassifyConfig, n_mels: int, num_labels: int
) -> list[_Entry]:
    """Every AST parameter (layers unstacked) with its HF name, HF shape and conversions."""
    d, p = cfg.d_model, classify.patch_size
    freq_patches, time_patches = patch_grid(n_mels, classify)
    positions = NUM_EXTRA_TOKENS + freq_patches * time_patches
    emb, enc = f"{_BASE}.embeddings", ("encoder",)
    table = [
        _Entry(
            (*enc, "patch_embed", "kernel"),
            f"{emb}.patch_embeddings.projection.weight",
            (d, 1, p, p),
            lambda w: w[:, 0].transpose(1, 2, 0),  # [d, 1, freq, time] → [freq, time, d]
            lambda k: k.transpose(2, 0, 1)[:, None],
        ),
        _Entry(
            (*enc, "patch_embed", "bias"),
            f"{emb}.patch_embeddings.projection.bias",
            (d,),
            _same,
            _same,
        ),
    ]
    for name in ("cls_token", "distillation_token"):
        table.append(
            _Entry(
                (*enc, name),
                f"{emb}.{name}",
                (1, 1, d),
                lambda t: t.reshape(d),
                lambda t: t.reshape(1, 1, d),
            )
        )
    table.append(
        _Entry(
            (*enc, "pos_embedding"),
            f"{emb}.position_embeddings",
            (1, positions, d),
            lambda t: t[0],
            lambda t: t[None],
        )
    )
    for i in range(cfg.num_layers):
        hf, ours = f"{_BASE}.layers.{i}", (*enc, f"layer{i}")
        table += _norm(f"{hf}.layernorm_before", (*ours, "attn_norm"), d)
        table += _attention(f"{hf}.attention", (*ours, "attn"), d, cfg.num_heads, True, "o_proj")
        table += _norm(f"{hf}.layernorm_after", (*ours, "mlp_norm"), d)
        table += _mlp(f"{hf}.mlp", (*ours, "mlp"), d, cfg.mlp_dim)
    table += _norm(f"{_BASE}.layernorm", (*enc, "final_norm"), d)
    table += _norm("classifier.layernorm", ("head_norm",), d)
    table += [
        _Entry(
            ("head", "kernel"),
            "classifier.dense.weight",
            (num_labels, d),
            lambda w: w.T,
            lambda k: k.T,
        ),
        _Entry(("head", "bias"), "classifier.dense.bias", (num_labels,), _same, _same),
    ]
    return table


def ast_params_from_hf(
    state_dict: Mapping[str, Any],
    cfg: ModelConfig,
    classify: ClassifyConfig,
    *,
    n_mels: int,
    num_labels: int,
) -> dict:
    """float32 NumPy params for `AST(cfg, classify, num_labels, n_mels)` from the state dict of
    a transformers `ASTForAudioClassification` (NumPy arrays or torch tensors, current or
    legacy names). With `cfg.scan_layers` the layers are stacked under encoder/layers/layer.

    Raises:
      ConversionError: naming the tensors the state dict lacks, or a tensor whose shape
        disagrees with the configs (naming both shapes).
    """
    tensors = {_current_name(k): v for k, v in state_dict.items()}
    table = _param_table(cfg, classify, n_mels, num_labels)
    missing = [e.hf_name for e in table if e.hf_name not in tensors]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ConversionError(
            f"the AST state dict lacks {len(missing)} tensors: {', '.join(missing[:5])}{more}"
        )
    params: dict = {}
    for entry in table:
        value = _to_numpy(tensors[entry.hf_name])
        if value.shape != entry.hf_shape:
            raise ConversionError(
                f"tensor {entry.hf_name} has shape {value.shape}, but the config implies "
                f"{entry.hf_shape}"
            )
        _set(params, entry.path, np.ascontiguousarray(entry.to_jax(value)))
    if cfg.scan_layers:  # [num_layers, ...] leaves under encoder/layers/layer
        encoder = params["encoder"]
        layers = [encoder.pop(f"layer{i}") for i in range(cfg.num_layers)]
        encoder["layers"] = {"layer": _stack(layers)}
    return params


def _stack(trees: list[Any]) -> Any:
    if isinstance(trees[0], dict):
        return {k: _stack([t[k] for t in trees]) for k in trees[0]}
    return np.stack(trees)
