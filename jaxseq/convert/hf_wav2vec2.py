"""Hugging Face Wav2Vec2 / HuBERT checkpoints ⇄ jaxseq `jaxseq.models.wav2vec2` parameters, and
their character vocabularies.

`wav2vec2_config_from_hf(config)` turns a transformers Wav2Vec2Config or HubertConfig (or the
dict of its config.json) into `Wav2Vec2Dims` fields; `wav2vec2_params_from_hf(state_dict,
dims, head)` turns a state dict into the params of the jaxseq module of that head, and
`wav2vec2_params_to_hf(params, dims, head)` gives back a state dict that transformers'
`load_state_dict(strict=True)` accepts. Heads (`ARCHITECTURES`): "ctc" (`Wav2Vec2ForCTC`,
`HubertForCTC` → `Wav2Vec2CTC`), "sequence" (`Wav2Vec2ForSequenceClassification`,
`HubertForSequenceClassification` → `Wav2Vec2SequenceClassifier`), "frame"
(`Wav2Vec2ForAudioFrameClassification` → `Wav2Vec2FrameClassifier`), "pretraining"
(`Wav2Vec2ForPreTraining`, import only: its `Wav2Vec2Encoder`; the quantizer and the
contrastive projections are left out), and "contrastive" (`Wav2Vec2ForPreTraining` in full, both
ways: `jaxseq.models.wav2vec2_pretraining.Wav2Vec2PreTraining`, quantizer and projections
included; its sizes come from `wav2vec2_pretraining_config_from_hf`).

The mapping is one table (`_param_table`), as in `hf_whisper`: every jaxseq parameter, its HF
tensor, the HF shape the dims imply, and the layout change (torch Linear [out, in] → [in, out];
Conv1d [out, in, window] → [window, in, out]; the q/k/v/out projections → jaxseq's head
layout). The position conv's weight normalization is kept as its two parameters, g [1, 1,
window] → [window] and v [out, in / groups, window] → [window, in / groups, out], under
torch's current names (`parametrizations.weight.original0/1`); older checkpoints' `weight_g` /
`weight_v` are read too.

The vocabulary of a Wav2Vec2CTCTokenizer (`vocab.json`: token → id) becomes a list of tokens
in id order (`read_ctc_vocab`); `ctc_text` decodes a best path as the tokenizer does.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxseq.convert.hf_whisper import (
    ConversionError,
    _attention,
    _conv_to_jax,
    _Entry,
    _get,
    _norm,
    _same,
    _set,
    _transpose,
)
from jaxseq.decoding.ctc import ctc_collapse
from jaxseq.models.wav2vec2 import Wav2Vec2Dims
from jaxseq.models.wav2vec2_pretraining import Wav2Vec2PreTrainingDims

# transformers architecture → jaxseq head (see the module docstring); "contrastive" is the
# other head of Wav2Vec2ForPreTraining checkpoints (the whole pre-training model).
ARCHITECTURES = {
    "Wav2Vec2ForCTC": "ctc",
    "HubertForCTC": "ctc",
    "Wav2Vec2ForSequenceClassification": "sequence",
    "HubertForSequenceClassification": "sequence",
    "Wav2Vec2ForAudioFrameClassification": "frame",
    "Wav2Vec2ForPreTraining": "pretraining",
}
HEADS = (*dict.fromkeys(ARCHITECTURES.values()), "contrastive")
MODEL_TYPES = ("wav2vec2", "hubert")  # also the prefix of the base model's tensors
# Tensors of Wav2Vec2ForPreTraining that jaxseq leaves out (quantizer, contrastive projections).
_PRETRAINING_ONLY = ("quantizer.", "project_hid.", "project_q.")
# Old torch weight-norm names → current ones.
_WEIGHT_NORM_RENAMES = (
    (".weight_g", ".parametrizations.weight.original0"),
    (".weight_v", ".parametrizations.weight.original1"),
)
PAD_TOKEN = "<pad>"  # Wav2Vec2CTCTokenizer's pad token: the CTC blank
WORD_DELIMITER = "|"  # ... and its word delimiter, decoded as a space

# Wav2Vec2Dims fields a transformers config has (remat and feature_grad_mult are jaxseq's).
_DIMS_FIELDS = {f.name for f in dataclasses.fields(Wav2Vec2Dims)} - {
    "remat",
    "num_labels",
    "feature_grad_mult",
}
_PRETRAINING_FIELDS = [f.name for f in dataclasses.fields(Wav2Vec2PreTrainingDims)]


def classifier_architecture(model_type: str, head: str) -> str:
    """transformers' class of a `model_type` ("wav2vec2" or "hubert") classifier with `head`
    ("sequence" or "frame"): its entry of ARCHITECTURES.

    Raises:
      ConversionError: for a HuBERT frame classifier (transformers has no
        HubertForAudioFrameClassification).
    """
    prefix = "Hubert" if model_type == "hubert" else "Wav2Vec2"
    names = [name for name, named in ARCHITECTURES.items() if named == head]
    for name in names:
        if name.startswith(prefix):
            return name
    missing = names[0].replace("Wav2Vec2", prefix, 1)
    raise ConversionError(
        f"model_type {model_type!r} with a {head}-classification head: transformers has no "
        f"{missing} (only {names[0]}); jaxseq converts HuBERT with HubertForCTC or "
        "HubertForSequenceClassification heads"
    )


def label_names(hf_config: dict) -> list[str]:
    """config.json's id2label as class names in id order (ids 0..n-1, each once); without
    one, transformers' default names LABEL_0.. of num_labels (2 by default).

    Raises:
      ConversionError: when id2label's keys are not the ids 0..n-1.
    """
    id2label = hf_config.get("id2label") or {
        str(i): f"LABEL_{i}" for i in range(int(hf_config.get("num_labels", 2)))
    }
    try:
        ids = sorted(int(i) for i in id2label)
    except ValueError:
        raise ConversionError(f"id2label has keys that are not ids: {list(id2label)}") from None
    if not ids or ids != list(range(len(ids))):
        raise ConversionError(
            f"id2label has ids {ids}; a classifier needs the ids 0..num_labels-1, each once"
        )
    return [str(id2label.get(str(i), id2label.get(i))) for i in ids]


def _config_dict(hf_config: Any) -> dict:
    return hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config)


def wav2vec2_config_from_hf(hf_config: Any) -> dict:
    """`Wav2Vec2Dims` fields of a transformers Wav2Vec2Config or HubertConfig (or the dict of
    its config.json; missing keys take transformers' defaults, which are Wav2Vec2Dims').

    Returns:
      {field: value} for `Wav2Vec2Dims(**fields)`: every field but jaxseq's own `remat`;
      num_labels is the size of id2label when the config has one.
    Raises:
      ConversionError: when the config is not a Wav2Vec2/HuBERT one, or uses what jaxseq's
        model lacks (an activation other than exact GELU, adapters, HuBERT's batch-normed
        position conv), or sizes that do not fit together (conv lists of different lengths, a
        hidden_size that the attention heads or the position-conv groups do not divide).
    """
    config = _config_dict(hf_config)
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ConversionError(
            f"model_type is {model_type!r}; expected one of {MODEL_TYPES} (transformers' "
            "Wav2Vec2 or HuBERT)"
        )
    for key in ("hidden_act", "feat_extract_activation"):
        if config.get(key, "gelu") != "gelu":
            raise ConversionError(f"unsupported {key} {config[key]!r}; jaxseq uses exact GELU")
    for key in ("add_adapter", "conv_pos_batch_norm"):
        if config.get(key):
            raise ConversionError(f"{key} is set; jaxseq's Wav2Vec2 has no such layers")
    if config.get("adapter_attn_dim") is not None:
        raise ConversionError(
            "adapter_attn_dim is set; jaxseq's Wav2Vec2 has no attention adapters"
        )
    defaults = dataclasses.asdict(Wav2Vec2Dims())
    fields = {k: config.get(k, defaults[k]) for k in sorted(_DIMS_FIELDS)}
    for key in ("conv_dim", "conv_kernel", "conv_stride"):
        fields[key] = tuple(int(v) for v in fields[key])
    if not len(fields["conv_dim"]) == len(fields["conv_kernel"]) == len(fields["conv_stride"]):
        raise ConversionError(
            f"conv_dim, conv_kernel and conv_stride differ in length: {fields['conv_dim']}, "
            f"{fields['conv_kernel']}, {fields['conv_stride']}"
        )
    d, heads = fields["hidden_size"], fields["num_attention_heads"]
    if d % heads or d % fields["num_conv_pos_embedding_groups"]:
        raise ConversionError(
            f"hidden_size {d} is not divisible by {heads} attention heads and "
            f"{fields['num_conv_pos_embedding_groups']} position-conv groups"
        )
    id2label = config.get("id2label")
    fields["num_labels"] = len(id2label) if id2label else defaults["num_labels"]
    return fields


def wav2vec2_pretraining_config_from_hf(hf_config: Any) -> dict:
    """`Wav2Vec2PreTrainingDims` fields (quantizer sizes and loss settings) of a transformers
    Wav2Vec2Config (or the dict of its config.json; missing keys take transformers' defaults,
    which are Wav2Vec2PreTrainingDims').

    Raises:
      ConversionError: when the config is not a Wav2Vec2 one, or its codevector_dim is not
        divisible by num_codevector_groups.
    """
    config = _config_dict(hf_config)
    if config.get("model_type") != "wav2vec2":
        raise ConversionError(
            f"model_type is {config.get('model_type')!r}; wav2vec 2.0 pre-training needs a "
            "'wav2vec2' config (Wav2Vec2ForPreTraining)"
        )
    defaults = dataclasses.asdict(Wav2Vec2PreTrainingDims())
    fields = {k: config.get(k, defaults[k]) for k in _PRETRAINING_FIELDS}
    if fields["codevector_dim"] % fields["num_codevector_groups"]:
        raise ConversionError(
            f"codevector_dim {fields['codevector_dim']} is not divisible by "
            f"num_codevector_groups {fields['num_codevector_groups']}"
        )
    return fields


def _dense(path: tuple[str, ...], name: str, out: int, inp: int) -> list[_Entry]:
    return [
        _Entry((*path, "kernel"), f"{name}.weight", (out, inp), _transpose, _transpose),
        _Entry((*path, "bias"), f"{name}.bias", (out,), _same, _same),
    ]


def _quantizer_table(dims: Wav2Vec2Dims, pretraining: Wav2Vec2PreTrainingDims) -> list[_Entry]:
    """Wav2Vec2ForPreTraining's quantizer and projections (`Wav2Vec2PreTraining`'s
    "quantizer", "project_hid", "project_q"): HF codevectors [1, G · V, codevector_dim / G] →
    [G · V, codevector_dim / G]."""
    p = pretraining
    entries = p.num_codevectors
    shape = (1, entries, p.codevector_dim // p.num_codevector_groups)
    return [
        _Entry(
            ("quantizer", "codevectors"),
            "quantizer.codevectors",
            shape,
            lambda c: c.reshape(shape[1:]),
            lambda c: c.reshape(shape),
        ),
        *_dense(("quantizer", "weight_proj"), "quantizer.weight_proj", entries, dims.conv_dim[-1]),
        *_dense(("project_hid",), "project_hid", p.proj_codevector_dim, dims.hidden_size),
        *_dense(("project_q",), "project_q", p.proj_codevector_dim, p.codevector_dim),
    ]


def _param_table(
    dims: Wav2Vec2Dims,
    head: str,
    model_type: str,
    pretraining: Wav2Vec2PreTrainingDims | None = None,
) -> list[_Entry]:
    """Every parameter of the jaxseq module for `head` with its HF name, HF shape and layout
    conversions (`pretraining`: the "contrastive" head's quantizer sizes)."""
    if head not in HEADS:
        raise ConversionError(f"unknown head {head!r}; expected one of {HEADS}")
    if model_type not in MODEL_TYPES:
        raise ConversionError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
    if (head == "contrastive") != (pretraining is not None):
        raise ConversionError(
            "pretraining_dims (wav2vec2_pretraining_config_from_hf) go with the 'contrastive' "
            f"head and only with it; got head {head!r} and pretraining_dims {pretraining}"
        )
    d, p, h = dims, model_type, dims.hidden_size
    enc = () if head == "pretraining" else ("encoder",)
    fe = (*enc, "feature_encoder")
    table = []
    channels_in = 1
    for i, (channels, kernel) in enumerate(zip(d.conv_dim, d.conv_kernel, strict=True)):
        hf = f"{p}.feature_extractor.conv_layers.{i}"
        table.append(
            _Entry(
                (*fe, f"conv{i}", "kernel"),
                f"{hf}.conv.weight",
                (channels, channels_in, kernel),
                _conv_to_jax,
                _conv_to_jax,
            )
        )
        if d.conv_bias:
            table.append(
                _Entry((*fe, f"conv{i}", "bias"), f"{hf}.conv.bias", (channels,), _same, _same)
            )
        if d.feat_extract_norm == "layer":
            table += _norm(f"{hf}.layer_norm", (*fe, f"norm{i}"), channels)
        elif i == 0:  # a bare flax GroupNorm: no LayerNorm_0 level
            table += [
                _Entry((*fe, "norm0", ours), f"{hf}.layer_norm.{theirs}", (channels,), _same, _same)
                for ours, theirs in (("scale", "weight"), ("bias", "bias"))
            ]
        channels_in = channels
    if d.feat_proj_layer_norm:
        table += _norm(f"{p}.feature_projection.layer_norm", (*enc, "feature_norm"), channels_in)
    table += _dense(
        (*enc, "feature_projection"), f"{p}.feature_projection.projection", h, channels_in
    )
    if d.has_mask_embedding:
        table.append(
            _Entry((*enc, "masked_spec_embed"), f"{p}.masked_spec_embed", (h,), _same, _same)
        )
    size, groups = d.num_conv_pos_embeddings, d.num_conv_pos_embedding_groups
    pos = f"{p}.encoder.pos_conv_embed.conv"
    table += [
        _Entry(
            (*enc, "pos_conv", "weight_g"),
            f"{pos}.parametrizations.weight.original0",
            (1, 1, size),
            lambda g: g.reshape(size),
            lambda g: g.reshape(1, 1, size),
        ),
        _Entry(
            (*enc, "pos_conv", "weight_v"),
            f"{pos}.parametrizations.weight.original1",
            (h, h // groups, size),
            _conv_to_jax,
            _conv_to_jax,
        ),
        _Entry((*enc, "pos_conv", "bias"), f"{pos}.bias", (h,), _same, _same),
    ]
    table += _norm(f"{p}.encoder.layer_norm", (*enc, "encoder_norm"), h)
    for i in range(d.num_hidden_layers):
        hf, ours = f"{p}.encoder.layers.{i}", (*enc, f"layer{i}")
        table += _attention(f"{hf}.attention", (*ours, "attn"), h, d.num_attention_heads, True)
        table += _norm(f"{hf}.layer_norm", (*ours, "attn_norm"), h)
        ff = f"{hf}.feed_forward"
        table += _dense((*ours, "mlp", "wi"), f"{ff}.intermediate_dense", d.intermediate_size, h)
        table += _dense((*ours, "mlp", "wo"), f"{ff}.output_dense", h, d.intermediate_size)
        table += _norm(f"{hf}.final_layer_norm", (*ours, "mlp_norm"), h)
    if head in ("sequence", "frame") and d.use_weighted_layer_sum:
        layers = d.num_hidden_layers + 1
        table.append(_Entry(("layer_weights",), "layer_weights", (layers,), _same, _same))
    if head == "ctc":
        table += _dense(("head",), "lm_head", d.vocab_size, h)
    elif head == "sequence":
        table += _dense(("projector",), "projector", d.classifier_proj_size, h)
        table += _dense(("classifier",), "classifier", d.num_labels, d.classifier_proj_size)
    elif head == "frame":
        table += _dense(("classifier",), "classifier", d.num_labels, h)
    elif head == "contrastive":
        table += _quantizer_table(d, pretraining)
    return table


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch.Tensor
        value = value.detach().cpu().float().numpy()
    return np.asarray(value, dtype=np.float32)


def _current_name(name: str) -> str:
    for old, new in _WEIGHT_NORM_RENAMES:
        if name.endswith(old):
            return name[: -len(old)] + new
    return name


def wav2vec2_params_from_hf(
    state_dict: Mapping[str, Any],
    dims: Wav2Vec2Dims,
    head: str,
    model_type: str = "wav2vec2",
    pretraining_dims: Wav2Vec2PreTrainingDims | None = None,
) -> dict:
    """float32 NumPy params of the jaxseq module for `head` (`Wav2Vec2CTC`,
    `Wav2Vec2SequenceClassifier`, `Wav2Vec2FrameClassifier`; `Wav2Vec2Encoder` for
    "pretraining"; `Wav2Vec2PreTraining` for "contrastive", which needs `pretraining_dims`)
    from a transformers state dict (NumPy arrays or torch tensors; weight-norm names old or
    new). `model_type` ("wav2vec2" or "hubert") names the base model's prefix.

    Raises:
      ConversionError: naming the tensors the state dict lacks or has beyond the head's, or a
        tensor whose shape disagrees with the dims (naming both shapes).
    """
    tensors = {_current_name(k): v for k, v in state_dict.items()}
    table = _param_table(dims, head, model_type, pretraining_dims)
    missing = [e.hf_name for e in table if e.hf_name not in tensors]
    known = {e.hf_name for e in table}
    extra = [
        k
        for k in tensors
        if k not in known and not (head == "pretraining" and k.startswith(_PRETRAINING_ONLY))
    ]
    for what, names in (("lacks", missing), ("has unexpected", extra)):
        if names:
            more = f" and {len(names) - 5} more" if len(names) > 5 else ""
            raise ConversionError(
                f"the {model_type} state dict for head {head!r} {what} {len(names)} tensors: "
                f"{', '.join(names[:5])}{more} (do the dims match the checkpoint's config?)"
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
    return params


def wav2vec2_params_to_hf(
    params: Any,
    dims: Wav2Vec2Dims,
    head: str,
    model_type: str = "wav2vec2",
    pretraining_dims: Wav2Vec2PreTrainingDims | None = None,
) -> dict[str, np.ndarray]:
    """The transformers state dict (float32 NumPy arrays, current weight-norm names) of the
    params of the jaxseq module for `head` ("ctc", "sequence", "frame", or "contrastive" with
    `pretraining_dims` for a whole `Wav2Vec2ForPreTraining`): load it with
    `model.load_state_dict({k: torch.from_numpy(v) ...}, strict=True)`.

    Raises:
      ConversionError: for the "pretraining" head (a bare encoder: export the "contrastive"
        head's params instead), or a parameter whose shape disagrees with the dims.
    """
    if head == "pretraining":
        raise ConversionError(
            "export needs a head ('ctc', 'sequence', 'frame', or 'contrastive' for a whole "
            "Wav2Vec2ForPreTraining)"
        )
    state = {}
    for entry in _param_table(dims, head, model_type, pretraining_dims):
        value = entry.to_hf(np.asarray(_get(params, entry.path), dtype=np.float32))
        if value.shape != entry.hf_shape:
            raise ConversionError(
                f"parameter {'/'.join(entry.path)} gives {entry.hf_name} of shape "
                f"{value.shape}, but the dims imply {entry.hf_shape}"
            )
        state[entry.hf_name] = np.ascontiguousarray(value)
    return state


def read_ctc_vocab(path: str | Path, target_lang: str | None = None) -> list[str]:
    """The tokens of a Wav2Vec2CTCTokenizer's `vocab.json` (or of the processor folder holding
    it) in id order: `tokens[i]` is id i. `target_lang` picks one language of a multilingual
    (nested, MMS-style) vocabulary.

    Raises:
      ConversionError: when the file is missing or not a token → id map, the language is
        missing, or the ids are not exactly 0..n-1.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "vocab.json"
    if not path.is_file():
        raise ConversionError(f"{path}: no such vocabulary file (a Wav2Vec2 vocab.json)")
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConversionError(f"{path}: not valid JSON ({err})") from None
    if target_lang is not None:
        if target_lang not in vocab:
            raise ConversionError(f"{path}: no language {target_lang!r} in the vocabulary")
        vocab = vocab[target_lang]
    if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
        raise ConversionError(
            f"{path}: expected a token → id map (a nested, multilingual one needs target_lang)"
        )
    by_id = {i: token for token, i in vocab.items()}
    if sorted(by_id) != list(range(len(vocab))):
        raise ConversionError(f"{path}: ids must be exactly 0..{len(vocab) - 1}, each once")
    return [by_id[i] for i in range(len(vocab))]


def ctc_text(
    ids: Sequence[int] | np.ndarray,
    tokens: Sequence[str],
    length: int | None = None,
    pad_token: str = PAD_TOKEN,
    word_delimiter_token: str = WORD_DELIMITER,
) -> str:
    """The text of a best path, as `Wav2Vec2CTCTokenizer.decode` gives it (its defaults): runs
    of one id collapse to one token, the pad token (the CTC blank) is dropped, the word
    delimiter becomes a space, and the ends are stripped; other special tokens stay as text.

    Args:
      ids: int [frames], e.g. argmax of the logits (`jaxseq.decoding.ctc.ctc_greedy_path`).
      tokens: the vocabulary in id order (`read_ctc_vocab`).
      length: valid frames (default: all).
    """
    ids = np.asarray(ids)
    blank = list(tokens).index(pad_token)
    kept = ctc_collapse(ids, ids.shape[0] if length is None else length, blank_id=blank)
    text = "".join(" " if tokens[i] == word_delimiter_token else tokens[i] for i in kept)
    return text.strip()
