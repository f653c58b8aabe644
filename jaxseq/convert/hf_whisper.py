"""Hugging Face Whisper checkpoints ⇄ jaxseq WhisperModel parameters.

`load_hf_whisper(folder)` reads a transformers `WhisperForConditionalGeneration` folder
(config.json + model.safetensors, a sharded model.safetensors.index.json, or
pytorch_model.bin) into float32 NumPy params for `jaxseq.models.whisper.WhisperModel`;
`export_hf_whisper(params, dims, folder)` writes a folder that transformers loads.

The mapping is one table (`_param_table`): every jaxseq parameter, the HF tensor it comes from,
the HF shape the config implies, and the layout change between them (torch Linear weights are
[out, in]; jaxseq's head projections are [embed, heads, head_dim] and [heads, head_dim, embed];
torch Conv1d weights are [out, in, window], flax's [window, in, out]).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from jaxseq.errors import JaxseqError
from jaxseq.models.whisper import WhisperDims

ARCHITECTURE = "WhisperForConditionalGeneration"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"

# WhisperDims field ← config.json key.
_CONFIG_KEYS = {
    "n_mels": "num_mel_bins",
    "d_model": "d_model",
    "encoder_layers": "encoder_layers",
    "encoder_heads": "encoder_attention_heads",
    "encoder_ffn_dim": "encoder_ffn_dim",
    "decoder_layers": "decoder_layers",
    "decoder_heads": "decoder_attention_heads",
    "decoder_ffn_dim": "decoder_ffn_dim",
    "vocab_size": "vocab_size",
    "max_source_positions": "max_source_positions",
    "max_target_positions": "max_target_positions",
    "pad_token_id": "pad_token_id",
    "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id",
    "decoder_start_token_id": "decoder_start_token_id",
}


class ConversionError(JaxseqError, ValueError):
    """A checkpoint folder cannot be converted; the message names the folder and the problem."""


class _Entry(NamedTuple):
    path: tuple[str, ...]  # jaxseq parameter path
    hf_name: str
    hf_shape: tuple[int, ...]
    to_jax: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]


def _same(x: np.ndarray) -> np.ndarray:
    return x


def _transpose(x: np.ndarray) -> np.ndarray:
    return x.T


def _conv_to_jax(w: np.ndarray) -> np.ndarray:
    return w.transpose(2, 1, 0)  # [out, in, window] → [window, in, out]


def _attention(
    prefix: str,
    path: tuple[str, ...],
    d: int,
    heads: int,
    bias: bool,
    out_name: str = "out_proj",
) -> list[_Entry]:
    """q/k/v/out projections of one HF attention block (k_proj has a bias iff `bias`; the
    output projection is `out_name`: Whisper's out_proj, AST's o_proj)."""
    hd = d // heads
    entries = []
    for hf, ours in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value")):
        entries.append(
            _Entry(
                (*path, ours, "kernel"),
                f"{prefix}.{hf}.weight",
                (d, d),
                lambda w: w.T.reshape(d, heads, hd),  # [out, in] → [embed, heads, head_dim]
                lambda k: k.reshape(d, d).T,
            )
        )
        if hf != "k_proj" or bias:
            entries.append(
                _Entry(
                    (*path, ours, "bias"),
                    f"{prefix}.{hf}.bias",
                    (d,),
                    lambda b: b.reshape(heads, hd),
                    lambda b: b.reshape(d),
                )
            )
    entries.append(
        _Entry(
            (*path, "out", "kernel"),
            f"{prefix}.{out_name}.weight",
            (d, d),
            lambda w: w.T.reshape(heads, hd, d),  # [out, in] → [heads, head_dim, embed]
            lambda k: k.reshape(d, d).T,
        )
    )
    entries.append(_Entry((*path, "out", "bias"), f"{prefix}.{out_name}.bias", (d,), _same, _same))
    return entries


def _norm(prefix: str, path: tuple[str, ...], d: int) -> list[_Entry]:
    return [
        _Entry((*path, "LayerNorm_0", "scale"), f"{prefix}.weight", (d,), _same, _same),
        _Entry((*path, "LayerNorm_0", "bias"), f"{prefix}.bias", (d,), _same, _same),
    ]


def _mlp(prefix: str, path: tuple[str, ...], d: int, ffn: int) -> list[_Entry]:
    return [
        _Entry((*path, "wi", "kernel"), f"{prefix}.fc1.weight", (ffn, d), _transpose, _transpose),
        _Entry((*path, "wi", "bias"), f"{prefix}.fc1.bias", (ffn,), _same, _same),
        _Entry((*path, "wo", "kernel"), f"{prefix}.fc2.weight", (d, ffn), _transpose, _transpose),
        _Entry((*path, "wo", "bias"), f"{prefix}.fc2.bias", (d,), _same, _same),
    ]


def _param_table(dims: WhisperDims) -> list[_Entry]:
    """Every WhisperModel parameter with its HF name, HF shape and layout conversions."""
    d = dims.d_model
    enc, dec = "model.encoder", "model.decoder"
    table = [
        _Entry(
            ("encoder", "stem", "conv0", "kernel"),
            f"{enc}.conv1.weight",
            (d, dims.n_mels, 3),
            _conv_to_jax,
            _conv_to_jax,
        ),
        _Entry(("encoder", "stem", "conv0", "bias"), f"{enc}.conv1.bias", (d,), _same, _same),
        _Entry(
            ("encoder", "stem", "conv1", "kernel"),
            f"{enc}.conv2.weight",
            (d, d, 3),
            _conv_to_jax,
            _conv_to_jax,
        ),
        _Entry(("encoder", "stem", "conv1", "bias"), f"{enc}.conv2.bias", (d,), _same, _same),
        _Entry(
            ("encoder", "pos_embedding"),
            f"{enc}.embed_positions.weight",
            (dims.max_source_positions, d),
            _same,
            _same,
        ),
    ]
    for i in range(dims.encoder_layers):
        hf, ours = f"{enc}.layers.{i}", ("encoder", f"layer{i}")
        table += _norm(f"{hf}.self_attn_layer_norm", (*ours, "attn_norm"), d)
        table += _attention(f"{hf}.self_attn", (*ours, "attn"), d, dims.encoder_heads, False)
        table += _norm(f"{hf}.final_layer_norm", (*ours, "mlp_norm"), d)
        table += _mlp(hf, (*ours, "mlp"), d, dims.encoder_ffn_dim)
    table += _norm(f"{enc}.layer_norm", ("encoder", "final_norm"), d)
    table += [
        _Entry(
            ("decoder", "embed", "embedding"),
            f"{dec}.embed_tokens.weight",
            (dims.vocab_size, d),
            _same,
            _same,
        ),
        _Entry(
            ("decoder", "pos_embedding"),
            f"{dec}.embed_positions.weight",
            (dims.max_target_positions, d),
            _same,
            _same,
        ),
    ]
    for i in range(dims.decoder_layers):
        hf, ours = f"{dec}.layers.{i}", ("decoder", f"layer{i}")
        heads = dims.decoder_heads
        table += _norm(f"{hf}.self_attn_layer_norm", (*ours, "self_attn_norm"), d)
        table += _attention(f"{hf}.self_attn", (*ours, "self_attn"), d, heads, False)
        table += _norm(f"{hf}.encoder_attn_layer_norm", (*ours, "cross_attn_norm"), d)
        table += _attention(f"{hf}.encoder_attn", (*ours, "cross_attn"), d, heads, False)
        table += _norm(f"{hf}.final_layer_norm", (*ours, "mlp_norm"), d)
        table += _mlp(hf, (*ours, "mlp"), d, dims.decoder_ffn_dim)
    table += _norm(f"{dec}.layer_norm", ("decoder", "final_norm"), d)
    return table


def read_hf_config(folder: str | Path) -> WhisperDims:
    """WhisperDims from `folder`/config.json, after checking it describes a Whisper model."""
    folder = Path(folder)
    path = folder / "config.json"
    if not path.is_file():
        raise ConversionError(f"{folder}: no config.json; expected a transformers Whisper folder")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConversionError(f"{path}: not valid JSON ({err})") from None
    model_type = config.get("model_type")
    architectures = config.get("architectures") or [ARCHITECTURE]
    if model_type != "whisper" or ARCHITECTURE not in architectures:
        raise ConversionError(
            f"{folder}: unsupported architecture (model_type={model_type!r}, "
            f"architectures={config.get('architectures')!r}); only model_type 'whisper' with "
            f"{ARCHITECTURE} can be converted"
        )
    if config.get("activation_function", "gelu") != "gelu":
        raise ConversionError(
            f"{folder}: unsupported activation_function {config['activation_function']!r}; "
            "jaxseq's Whisper uses exact GELU"
        )
    if not config.get("tie_word_embeddings", True):
        raise ConversionError(f"{folder}: tie_word_embeddings is false; jaxseq ties proj_out")
    defaults = WhisperDims()
    values = {}
    for field, key in _CONFIG_KEYS.items():
        value = config.get(key, getattr(defaults, field))
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConversionError(f"{path}: {key} must be an integer, got {value!r}")
        values[field] = value
    for heads, layers in (("encoder_heads", "encoder"), ("decoder_heads", "decoder")):
        if values["d_model"] % values[heads]:
            raise ConversionError(
                f"{path}: d_model {values['d_model']} is not divisible by the {layers}'s "
                f"{values[heads]} attention heads"
            )
    return WhisperDims(**values)


def _read_tensors(folder: Path) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint in `folder`, as NumPy arrays."""
    if (folder / SAFETENSORS).is_file():
        from safetensors.numpy import load_file

        return dict(load_file(folder / SAFETENSORS))
    if (folder / SAFETENSORS_INDEX).is_file():
        from safetensors.numpy import load_file

        index = json.loads((folder / SAFETENSORS_INDEX).read_text())
        tensors = {}
        for shard in sorted(set(index["weight_map"].values())):
            if not (folder / shard).is_file():
                raise ConversionError(
                    f"{folder}: shard {shard} named in {SAFETENSORS_INDEX} is missing"
                )
            tensors.update(load_file(folder / shard))
        return tensors
    if (folder / TORCH_BIN).is_file():
        import torch

        state = torch.load(folder / TORCH_BIN, map_location="cpu", weights_only=True)
        return {k: v.detach().float().numpy() for k, v in state.items()}
    raise ConversionError(
        f"{folder}: no model file; expected {SAFETENSORS}, {SAFETENSORS_INDEX} or {TORCH_BIN}"
    )


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def load_hf_whisper(folder: str | Path) -> tuple[dict, WhisperDims]:
    """Loads a transformers WhisperForConditionalGeneration folder.

    Returns:
      (params, dims): float32 NumPy params for `WhisperModel(dims)` (use as
      `model.apply({"params": params}, ...)`), and the model's hyperparameters.

    Raises:
      ConversionError: naming the folder when config.json or the model file is missing, the
        architecture is not Whisper, a tensor is missing, or a tensor's shape disagrees with
        config.json (naming the tensor and both shapes).
    """
    folder = Path(folder)
    dims = read_hf_config(folder)
    tensors = _read_tensors(folder)
    table = _param_table(dims)
    missing = [e.hf_name for e in table if e.hf_name not in tensors]
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise ConversionError(f"{folder}: the checkpoint lacks {len(missing)} tensors: {shown}")
    params: dict = {}
    for entry in table:
        value = np.asarray(tensors[entry.hf_name])
        if value.shape != entry.hf_shape:
            raise ConversionError(
                f"{folder}: tensor {entry.hf_name} has shape {value.shape}, but config.json "
                f"implies {entry.hf_shape}"
            )
        _set(params, entry.path, np.ascontiguousarray(entry.to_jax(value.astype(np.float32))))
    proj_out = tensors.get("proj_out.weight")
    if proj_out is not None and not np.array_equal(
        proj_out, tensors["model.decoder.embed_tokens.weight"]
    ):
        raise ConversionError(
            f"{folder}: proj_out.weight differs from model.decoder.embed_tokens.weight; jaxseq's "
            "Whisper ties its output projection to the token embedding"
        )
    return params, dims


def export_hf_whisper(params: Any, dims: WhisperDims, folder: str | Path) -> Path:
    """Writes `folder`/config.json and model.safetensors for transformers'
    `WhisperForConditionalGeneration.from_pretrained(folder)`; returns the folder.

    `params` is a WhisperModel params tree (JAX or NumPy arrays, unboxed).
    """
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for entry in _param_table(dims):
        value = np.asarray(_get(params, entry.path), dtype=np.float32)
        value = entry.to_hf(value)
        if value.shape != entry.hf_shape:
            raise ConversionError(
                f"parameter {'/'.join(entry.path)} gives {entry.hf_name} of shape {value.shape}, "
                f"but the dims imply {entry.hf_shape}"
            )
        tensors[entry.hf_name] = np.ascontiguousarray(value)
    save_file(tensors, folder / SAFETENSORS, metadata={"format": "pt"})
    config = {_CONFIG_KEYS[k]: v for k, v in asdict(dims).items()}
    config.update(
        model_type="whisper",
        architectures=[ARCHITECTURE],
        activation_function="gelu",
        tie_word_embeddings=True,
        scale_embedding=False,
        torch_dtype="float32",
    )
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return folder
