"""transformers Wav2Vec2ForCTC / HubertForCTC folders ⇄ jaxseq CTC workdirs, and the
Wav2Vec2ForPreTraining folders `jaxseq export` writes from ssl workdirs and the
Wav2Vec2ForSequenceClassification / HubertForSequenceClassification /
Wav2Vec2ForAudioFrameClassification ones from classify workdirs (classify.encoder=wav2vec2):
the processor's vocabulary as jaxseq's characters (the blank first), and the folder `jaxseq
export` writes (config.json, model.safetensors, vocab.json, tokenizer_config.json,
preprocessor_config.json).
The parameter mapping itself is `jaxseq.convert.hf_wav2vec2`'s.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxseq.convert.hf_wav2vec2 import (
    PAD_TOKEN,
    WORD_DELIMITER,
    classifier_architecture,
    wav2vec2_params_to_hf,
)
from jaxseq.convert.hf_whisper import ConversionError
from jaxseq.models.wav2vec2 import Wav2Vec2Dims
from jaxseq.models.wav2vec2_pretraining import Wav2Vec2PreTrainingDims

TOKENIZER_CONFIG = "tokenizer_config.json"
PREPROCESSOR_CONFIG = "preprocessor_config.json"


def blank_first_order(vocab_size: int, blank: int) -> list[int]:
    """HF token ids in jaxseq's order, whose blank is id 0: [blank, then the others in their
    order]. jaxseq id i is HF id order[i] (the CTC head's output columns are taken so)."""
    if not 0 <= blank < vocab_size:
        raise ConversionError(f"pad_token_id {blank} (the CTC blank) is not a token id")
    return [blank] + [i for i in range(vocab_size) if i != blank]


def ctc_characters(
    tokens: Sequence[str], blank: int, word_delimiter: str = WORD_DELIMITER
) -> tuple[str, ...]:
    """A Wav2Vec2CTCTokenizer's tokens (id order) as jaxseq's CTC characters (blank-first order
    without the blank, `blank_first_order`): the word delimiter becomes " ", and a vocabulary
    without lowercase letters (wav2vec2-base-960h's capitals) is lowercased, as jaxseq's text
    policy lowercases transcripts; special tokens such as "<unk>" stay as they are (the model
    may emit them, and their text is theirs).

    Raises:
      ConversionError: when two tokens become one character.
    """
    kept = [tokens[i] for i in blank_first_order(len(tokens), blank)[1:]]
    letters = "".join(t for t in kept if len(t) == 1)
    lower = not any(c.islower() for c in letters)
    chars = tuple(
        " " if t == word_delimiter else (t.lower() if lower and len(t) == 1 else t) for t in kept
    )
    if len(set(chars)) != len(chars):
        raise ConversionError(f"tokens {kept} repeat a character once mapped to jaxseq's text")
    return chars


def export_hf_wav2vec2_ctc(
    params: Any,
    dims: Wav2Vec2Dims,
    model_type: str,
    chars: Sequence[str],
    folder: str | Path,
    *,
    do_normalize: bool = True,
) -> Path:
    """Writes a transformers Wav2Vec2ForCTC (or HubertForCTC) folder from a `Wav2Vec2CTC`'s
    params and its jaxseq characters (blank = id 0): config.json, model.safetensors, and the
    processor's vocab.json ("<pad>" = the blank, " " as "|"), tokenizer_config.json and
    preprocessor_config.json; `from_pretrained(folder)` loads each. Returns the folder."""
    tokens = [PAD_TOKEN] + [WORD_DELIMITER if c == " " else c for c in chars]
    architecture = "HubertForCTC" if model_type == "hubert" else "Wav2Vec2ForCTC"
    config = _hf_config(dims, model_type, architecture)
    config["pad_token_id"] = 0
    for key, token in (("bos_token_id", "<s>"), ("eos_token_id", "</s>")):
        if token in tokens:
            config[key] = tokens.index(token)
    folder = _write_folder(
        folder,
        wav2vec2_params_to_hf(params, dims, "ctc", model_type),
        {
            "config.json": config,
            "vocab.json": {token: i for i, token in enumerate(tokens)},
            TOKENIZER_CONFIG: {
                "tokenizer_class": "Wav2Vec2CTCTokenizer",
                "pad_token": PAD_TOKEN,
                "word_delimiter_token": WORD_DELIMITER,
                **{
                    k: t
                    for k, t in (
                        ("unk_token", "<unk>"),
                        ("bos_token", "<s>"),
                        ("eos_token", "</s>"),
                    )
                    if t in tokens
                },
            },
            PREPROCESSOR_CONFIG: _preprocessor_config(dims, do_normalize, "Wav2Vec2Processor"),
        },
    )
    return folder


def export_hf_wav2vec2_pretraining(
    params: Any,
    dims: Wav2Vec2Dims,
    objective: Wav2Vec2PreTrainingDims,
    folder: str | Path,
    *,
    do_normalize: bool = True,
) -> Path:
    """Writes a transformers Wav2Vec2ForPreTraining folder from a `Wav2Vec2PreTraining`'s
    params (encoder, quantizer and contrastive projections): config.json (with the quantizer's
    and the loss's fields), model.safetensors and the feature extractor's
    preprocessor_config.json. Returns the folder."""
    config = _hf_config(dims, "wav2vec2", "Wav2Vec2ForPreTraining")
    del config["vocab_size"]  # no CTC head (a fine-tuning script sets its own)
    config.update(dataclasses.asdict(objective))
    tensors = wav2vec2_params_to_hf(params, dims, "contrastive", pretraining_dims=objective)
    return _write_folder(
        folder,
        tensors,
        {
            "config.json": config,
            PREPROCESSOR_CONFIG: _preprocessor_config(dims, do_normalize, None),
        },
    )


def export_hf_wav2vec2_classifier(
    params: Any,
    dims: Wav2Vec2Dims,
    model_type: str,
    labels: Sequence[str],
    folder: str | Path,
    *,
    do_normalize: bool = True,
    head: str = "sequence",
) -> Path:
    """Writes a transformers Wav2Vec2ForSequenceClassification (or
    HubertForSequenceClassification) folder from a `Wav2Vec2SequenceClassifier`'s params, or
    with head "frame" a Wav2Vec2ForAudioFrameClassification folder from a
    `Wav2Vec2FrameClassifier`'s, and its class names (id order): config.json (id2label,
    label2id, classifier_proj_size, use_weighted_layer_sum), model.safetensors and the feature
    extractor's preprocessor_config.json. Returns the folder.

    Raises:
      ConversionError: when the names do not fit the head, or for a HuBERT frame classifier
        (`classifier_architecture`).
    """
    if len(labels) != dims.num_labels:
        raise ConversionError(f"{len(labels)} class names for a {dims.num_labels}-label head")
    config = _hf_config(dims, model_type, classifier_architecture(model_type, head))
    del config["vocab_size"]  # no CTC head
    config["id2label"] = {str(i): name for i, name in enumerate(labels)}
    config["label2id"] = {name: i for i, name in enumerate(labels)}
    return _write_folder(
        folder,
        wav2vec2_params_to_hf(params, dims, head, model_type),
        {
            "config.json": config,
            PREPROCESSOR_CONFIG: _preprocessor_config(dims, do_normalize, None),
        },
    )


def _hf_config(dims: Wav2Vec2Dims, model_type: str, architecture: str) -> dict:
    """config.json of `dims` for `model_type`'s `architecture`."""
    jaxseq_only = ("remat", "num_labels", "feature_grad_mult")
    config = {k: v for k, v in dataclasses.asdict(dims).items() if k not in jaxseq_only}
    config.update(
        model_type=model_type,
        architectures=[architecture],
        hidden_act="gelu",
        feat_extract_activation="gelu",
        torch_dtype="float32",
    )
    return config


def _preprocessor_config(dims: Wav2Vec2Dims, do_normalize: bool, processor: str | None) -> dict:
    """The Wav2Vec2FeatureExtractor's preprocessor_config.json (16 kHz)."""
    config = {
        "feature_extractor_type": "Wav2Vec2FeatureExtractor",
        "feature_size": 1,
        "sampling_rate": 16000,
        "padding_value": 0.0,
        "padding_side": "right",
        "do_normalize": do_normalize,
        # transformers' base (group norm) processors send no attention mask
        "return_attention_mask": dims.feat_extract_norm == "layer",
    }
    if processor:
        config["processor_class"] = processor
    return config


def _write_folder(folder: str | Path, tensors: dict, files: dict[str, dict]) -> Path:
    """model.safetensors of `tensors` and each JSON file of `files` in `folder`."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    for name, value in files.items():
        (folder / name).write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    return folder
