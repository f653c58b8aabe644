"""Hugging Face SpeechT5 text-to-speech folders → jaxseq variables.

  * `load_hf_speecht5(folder)`: a `SpeechT5ForTextToSpeech` folder (config.json +
    model.safetensors, as `save_pretrained` writes; or pytorch_model.bin) → (SpeechT5Dims,
    {"params", "batch_stats"}) for `jaxseq.models.speecht5.SpeechT5TTS`.
  * `load_hf_hifigan(folder)`: a `SpeechT5HifiGan` folder → (HifiGanDims, {"params", "stats"})
    for `jaxseq.models.hifigan.HifiGan`. Weight-normed convolutions (weight_g/weight_v or
    parametrizations.weight.original0/1) are folded into plain kernels.
  * `SpeechT5Text(folder)`: text → ids with the processor's character-level sentencepiece model
    (spm_char.model), as transformers' SpeechT5Tokenizer (ids, then </s>).

Every expected parameter is looked up by its transformers name; a missing tensor, a wrong shape
or a folder of another model type is a `ConversionError` naming the file and the key.
Layouts: torch Linear [out, in] → [in, out] (attention: [embed, heads, head_dim] and [heads,
head_dim, embed]); Conv1d [out, in, window] → [window, in, out]; ConvTranspose1d [in, out,
window] → [window, in, out].
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.core import meta
from flax.traverse_util import flatten_dict, unflatten_dict

from jaxseq.convert.hf_whisper import ConversionError
from jaxseq.models.hifigan import HifiGan, HifiGanDims
from jaxseq.models.speecht5 import SpeechT5Dims, SpeechT5TTS

SAFETENSORS = "model.safetensors"
TORCH_BIN = "pytorch_model.bin"
SPM_MODEL = "spm_char.model"

Rule = tuple[str, Callable[[np.ndarray], np.ndarray]]  # (HF tensor name, HF → jaxseq layout)


def _read_config(folder: Path, model_type: str, architecture: str | None) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise ConversionError(
            f"{folder}: no config.json; expected a transformers {model_type} folder"
        )
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConversionError(f"{path}: not valid JSON ({err})") from None
    if cfg.get("model_type") != model_type:
        raise ConversionError(
            f"{path}: model_type is {cfg.get('model_type')!r}; expected {model_type!r}"
        )
    archs = cfg.get("architectures") or []
    if architecture and archs and architecture not in archs:
        raise ConversionError(f"{path}: architectures are {archs}; expected {architecture}")
    return cfg


def _read_tensors(folder: Path) -> tuple[dict[str, np.ndarray], Path]:
    """The folder's tensors as float32 NumPy arrays, and the file they came from."""
    path = folder / SAFETENSORS
    if path.is_file():
        from safetensors.numpy import load_file

        try:
            return {k: np.asarray(v, np.float32) for k, v in load_file(path).items()}, path
        except Exception as err:  # a truncated or foreign file
            raise ConversionError(f"{path}: cannot read ({err})") from None
    path = folder / TORCH_BIN
    if path.is_file():
        try:
            import torch
        except ImportError:
            raise ConversionError(
                f"{path}: reading a torch checkpoint needs torch; save the model with "
                f"save_pretrained(..., safe_serialization=True) for a {SAFETENSORS}"
            ) from None
        state = torch.load(path, map_location="cpu", weights_only=True)
        return {k: v.float().numpy() for k, v in state.items()}, path
    raise ConversionError(f"{folder}: no {SAFETENSORS} or {TORCH_BIN} (the model's weights)")


def _fields(cls: type, cfg: dict[str, Any]) -> dict[str, Any]:
    """The dataclass `cls`'s fields present in `cfg`, lists made tuples."""
    out = {}
    for name in cls.__dataclass_fields__:
        if name in cfg and cfg[name] is not None:
            value = cfg[name]
            if isinstance(value, list):
                value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
            out[name] = value
    return out


def _same(x: np.ndarray) -> np.ndarray:
    return x


def _linear(x: np.ndarray) -> np.ndarray:
    return x.T


def _conv(x: np.ndarray) -> np.ndarray:
    return x.transpose(2, 1, 0)  # [out, in, window] → [window, in, out]


def _conv_transpose(x: np.ndarray) -> np.ndarray:
    return x.transpose(2, 0, 1)  # [in, out, window] → [window, in, out]


def _dense(rules: dict, path: tuple[str, ...], hf: str) -> None:
    rules[(*path, "kernel")] = (f"{hf}.weight", _linear)
    rules[(*path, "bias")] = (f"{hf}.bias", _same)


def _norm(rules: dict, path: tuple[str, ...], hf: str) -> None:
    rules[(*path, "LayerNorm_0", "scale")] = (f"{hf}.weight", _same)
    rules[(*path, "LayerNorm_0", "bias")] = (f"{hf}.bias", _same)


def _attention(rules: dict, path: tuple[str, ...], hf: str, heads: int) -> None:
    def split(x: np.ndarray) -> np.ndarray:  # [out, in] → [in, heads, head_dim]
        return x.T.reshape(x.shape[1], heads, -1)

    def split_bias(x: np.ndarray) -> np.ndarray:
        return x.reshape(heads, -1)

    for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        rules[(*path, ours, "kernel")] = (f"{hf}.{theirs}.weight", split)
        rules[(*path, ours, "bias")] = (f"{hf}.{theirs}.bias", split_bias)

    def merge(x: np.ndarray) -> np.ndarray:  # [out, in] → [heads, head_dim, out]
        return x.T.reshape(heads, -1, x.shape[0])

    rules[(*path, "out", "kernel")] = (f"{hf}.out_proj.weight", merge)
    rules[(*path, "out", "bias")] = (f"{hf}.out_proj.bias", _same)


def _speecht5_rules(d: SpeechT5Dims) -> dict[tuple[str, ...], Rule]:
    """jaxseq variable path (collection first) → (HF name, layout change)."""
    r: dict[tuple[str, ...], Rule] = {}
    enc, dec = "speecht5.encoder", "speecht5.decoder"
    p = ("params",)
    r[(*p, "embed", "embedding")] = (f"{enc}.prenet.embed_tokens.weight", _same)
    r[(*p, "text_positions", "alpha")] = (f"{enc}.prenet.encode_positions.alpha", _same)
    _norm(r, (*p, "encoder_norm"), f"{enc}.wrapped_encoder.layer_norm")
    r[(*p, "rel_pos")] = (f"{enc}.wrapped_encoder.embed_positions.pe_k.weight", _same)
    for i in range(d.encoder_layers):
        hf, ours = f"{enc}.wrapped_encoder.layers.{i}", (*p, f"encoder_layer{i}")
        _attention(r, (*ours, "attn"), f"{hf}.attention", d.encoder_attention_heads)
        _norm(r, (*ours, "attn_norm"), f"{hf}.layer_norm")
        _dense(r, (*ours, "mlp", "wi"), f"{hf}.feed_forward.intermediate_dense")
        _dense(r, (*ours, "mlp", "wo"), f"{hf}.feed_forward.output_dense")
        _norm(r, (*ours, "mlp_norm"), f"{hf}.final_layer_norm")
    for i in range(d.speech_decoder_prenet_layers):
        _dense(r, (*p, "prenet", f"dense{i}"), f"{dec}.prenet.layers.{i}")
    _dense(r, (*p, "prenet", "out"), f"{dec}.prenet.final_layer")
    r[(*p, "prenet", "positions", "alpha")] = (f"{dec}.prenet.encode_positions.alpha", _same)
    _dense(r, (*p, "prenet", "speaker"), f"{dec}.prenet.speaker_embeds_layer")
    for i in range(d.decoder_layers):
        hf, ours = f"{dec}.wrapped_decoder.layers.{i}", (*p, f"decoder_layer{i}")
        _attention(r, (*ours, "self_attn"), f"{hf}.self_attn", d.decoder_attention_heads)
        _norm(r, (*ours, "self_attn_norm"), f"{hf}.self_attn_layer_norm")
        _attention(r, (*ours, "cross_attn"), f"{hf}.encoder_attn", d.decoder_attention_heads)
        _norm(r, (*ours, "cross_attn_norm"), f"{hf}.encoder_attn_layer_norm")
        _dense(r, (*ours, "mlp", "wi"), f"{hf}.feed_forward.intermediate_dense")
        _dense(r, (*ours, "mlp", "wo"), f"{hf}.feed_forward.output_dense")
        _norm(r, (*ours, "mlp_norm"), f"{hf}.final_layer_norm")
    post = "speech_decoder_postnet"
    _dense(r, (*p, "feat_out"), f"{post}.feat_out")
    _dense(r, (*p, "prob_out"), f"{post}.prob_out")
    for i in range(d.speech_decoder_postnet_layers):
        hf = f"{post}.layers.{i}"
        r[(*p, "post", f"conv{i}", "kernel")] = (f"{hf}.conv.weight", _conv)
        r[(*p, "post", f"norm{i}", "scale")] = (f"{hf}.batch_norm.weight", _same)
        r[(*p, "post", f"norm{i}", "bias")] = (f"{hf}.batch_norm.bias", _same)
        r[("batch_stats", "post", f"norm{i}", "mean")] = (f"{hf}.batch_norm.running_mean", _same)
        r[("batch_stats", "post", f"norm{i}", "var")] = (f"{hf}.batch_norm.running_var", _same)
    return r


def _hifigan_rules(d: HifiGanDims) -> dict[tuple[str, ...], Rule]:
    """As `_speecht5_rules`, for the vocoder."""
    r: dict[tuple[str, ...], Rule] = {
        ("stats", "mean"): ("mean", _same),
        ("stats", "scale"): ("scale", _same),
    }

    def conv(path: tuple[str, ...], hf: str, layout=_conv) -> None:
        r[("params", *path, "kernel")] = (f"{hf}.weight", layout)
        r[("params", *path, "bias")] = (f"{hf}.bias", _same)

    conv(("conv_pre",), "conv_pre")
    conv(("conv_post",), "conv_post")
    kernels = len(d.resblock_kernel_sizes)
    for i in range(len(d.upsample_rates)):
        conv((f"upsample{i}",), f"upsampler.{i}", _conv_transpose)
        for j, dilations in enumerate(d.resblock_dilation_sizes):
            n = i * kernels + j
            for k in range(len(dilations)):
                conv((f"resblock{n}", f"convs1_{k}"), f"resblocks.{n}.convs1.{k}")
                conv((f"resblock{n}", f"convs2_{k}"), f"resblocks.{n}.convs2.{k}")
    return r


def _fold_weight_norm(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`X.weight` = g · v / ‖v‖ (norm over every axis but the first, weight norm's dim=0) for
    each weight-normed `X` (old-style X.weight_g/X.weight_v or X.parametrizations.weight.
    original0/original1); other tensors unchanged."""
    out = dict(tensors)
    for name in list(tensors):
        for g_suffix, v_suffix in (
            (".weight_g", ".weight_v"),
            (".parametrizations.weight.original0", ".parametrizations.weight.original1"),
        ):
            if name.endswith(g_suffix):
                base = name[: -len(g_suffix)]
                v = tensors.get(base + v_suffix)
                if v is None:
                    continue
                g = tensors[name]
                norm = np.sqrt(np.sum(v * v, axis=tuple(range(1, v.ndim)), keepdims=True))
                out[base + ".weight"] = (g * v / norm).astype(np.float32)
                del out[name], out[base + v_suffix]
    return out


def _convert(
    module: Any, rules: dict, tensors: dict[str, np.ndarray], source: Path, init_args: tuple
) -> dict[str, Any]:
    """The variables of `module` (shapes from its init) filled from `tensors` by `rules`."""
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *init_args))
    expected = flatten_dict(meta.unbox(shapes))
    if set(expected) != set(rules):  # a bug here, not in the checkpoint
        raise AssertionError(f"conversion table mismatch: {set(expected) ^ set(rules)}")
    missing = sorted({rules[k][0] for k in expected if rules[k][0] not in tensors})
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ConversionError(f"{source}: lacks {len(missing)} tensors: {shown}")
    flat = {}
    for path, spec in expected.items():
        name, layout = rules[path]
        value = np.array(layout(tensors[name]), np.float32)  # a contiguous copy
        if value.shape != tuple(spec.shape):
            raise ConversionError(
                f"{source}: {name} has shape {tensors[name].shape}, which does not fit the "
                f"config (jaxseq {'/'.join(path)} needs {tuple(spec.shape)})"
            )
        flat[path] = value
    return unflatten_dict(flat)


def read_speecht5_config(folder: str | Path) -> SpeechT5Dims:
    """SpeechT5Dims from a SpeechT5ForTextToSpeech folder's config.json."""
    folder = Path(folder)
    cfg = _read_config(folder, "speecht5", "SpeechT5ForTextToSpeech")
    act = cfg.get("hidden_act", "gelu")
    if act != "gelu":
        raise ConversionError(
            f"{folder / 'config.json'}: hidden_act {act!r}; only 'gelu' is supported"
        )
    return SpeechT5Dims(**_fields(SpeechT5Dims, cfg))


def read_hifigan_config(folder: str | Path) -> HifiGanDims:
    """HifiGanDims from a SpeechT5HifiGan folder's config.json."""
    folder = Path(folder)
    cfg = _read_config(folder, "speecht5_hifigan", "SpeechT5HifiGan")
    return HifiGanDims(**_fields(HifiGanDims, cfg))


def load_hf_speecht5(folder: str | Path) -> tuple[SpeechT5Dims, dict[str, Any]]:
    """(dims, {"params", "batch_stats"}) of a transformers SpeechT5ForTextToSpeech folder."""
    folder = Path(folder)
    dims = read_speecht5_config(folder)
    tensors, source = _read_tensors(folder)
    ids = jnp.zeros((1, 2), jnp.int32)
    frames = jnp.zeros((1, 1, dims.num_mel_bins), jnp.float32)
    speaker = jnp.ones((1, dims.speaker_embedding_dim), jnp.float32)
    args = (ids, jnp.array([2]), frames, speaker)
    return dims, _convert(SpeechT5TTS(dims), _speecht5_rules(dims), tensors, source, args)


def load_hf_hifigan(folder: str | Path) -> tuple[HifiGanDims, dict[str, Any]]:
    """(dims, {"params", "stats"}) of a transformers SpeechT5HifiGan folder."""
    folder = Path(folder)
    dims = read_hifigan_config(folder)
    tensors, source = _read_tensors(folder)
    tensors = _fold_weight_norm(tensors)
    args = (jnp.zeros((1, 2, dims.model_in_dim), jnp.float32),)
    return dims, _convert(HifiGan(dims), _hifigan_rules(dims), tensors, source, args)


class SpeechT5Text:
    """Text → ids as transformers' SpeechT5Tokenizer (no number normalization): the
    character-level sentencepiece pieces of the text, then </s>.

    Needs the `sentencepiece` package and the processor folder's spm_char.model."""

    def __init__(self, folder: str | Path):
        path = Path(folder) / SPM_MODEL
        if not path.is_file():
            raise ConversionError(f"{folder}: no {SPM_MODEL} (SpeechT5's tokenizer model)")
        try:
            import sentencepiece
        except ImportError:
            raise ConversionError(
                f"{path}: reading it needs the sentencepiece package (pip install sentencepiece)"
            ) from None
        self._sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        self.eos_id = self._sp.piece_to_id("</s>")
        self.unk_id = self._sp.piece_to_id("<unk>")

    def encode(self, text: str) -> list[int]:
        """Ids of `text`, ending with </s>."""
        pieces = self._sp.encode(text, out_type=str)
        return [self._sp.piece_to_id(p) for p in pieces] + [self.eos_id]
