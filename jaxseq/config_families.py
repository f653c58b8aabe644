"""Which family reads which config keys: a config may set only the keys its `model.family`
reads (a key of another family is a ConfigError naming the key and the families that read it)."""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxseq.errors import ConfigError

# The config sections only one family reads: a config of another family may not set them.
FAMILY_SECTIONS = {"tts": "tts", "classify": "classify", "rnn": "rnn"}

# The built-in families that read each model key not read by all of them. A config of another
# built-in family may not set the key (a family from outside jaxseq may set any model key).
_TRANSFORMERS = ("ctc", "seq2seq", "whisper", "tts", "classify")
MODEL_KEY_FAMILIES = {
    "num_heads": _TRANSFORMERS,
    "num_layers": _TRANSFORMERS,
    "mlp_dim": _TRANSFORMERS,
    "remat": _TRANSFORMERS,
    "subsample_strides": ("ctc", "classify"),
    "conv_kernel": ("ctc", "classify"),
    "scan_layers": ("ctc", "seq2seq", "classify"),
    "decoder_layers": ("seq2seq", "whisper", "tts"),
    "max_source_positions": ("seq2seq", "whisper"),
    "bpe_vocab_size": ("seq2seq", "rnn"),
    "label_smoothing": ("seq2seq", "whisper", "rnn"),
    "ctc_weight": ("seq2seq",),
    "timestamps": ("seq2seq",),
    "vocab_size": ("whisper",),
    "max_target_positions": ("whisper",),
    "tokenizer": ("whisper",),
    "language": ("whisper",),
    "task": ("whisper",),
}
_BUILT_IN_FAMILIES = frozenset(_TRANSFORMERS) | {"rnn"}


def _set_keys(value: Any) -> list[str]:
    """The fields of the dataclass `value` that differ from its type's defaults."""
    default = type(value)()
    return [
        f.name
        for f in dataclasses.fields(value)
        if getattr(value, f.name) != getattr(default, f.name)
    ]


def check_family_keys(cfg: Any) -> None:
    """For `cfg` (a jaxseq.config.Config; that module imports this one): a ConfigError naming
    the first key that `model.family` does not read but the config sets (a value other than
    the default), a key of another family's section or a model key of other built-in families.
    """
    family = cfg.model.family
    for section, owner in FAMILY_SECTIONS.items():
        if family != owner and (keys := _set_keys(getattr(cfg, section))):
            raise ConfigError(
                f"config key '{section}.{keys[0]}' is set, but the {section} section is read "
                f"only by model.family={owner} and this config trains model.family={family}; "
                f"remove it (or set model.family={owner})"
            )
    if family not in _BUILT_IN_FAMILIES:
        return
    for key in _set_keys(cfg.model):
        readers = MODEL_KEY_FAMILIES.get(key)
        if readers is not None and family not in readers:
            raise ConfigError(
                f"config key 'model.{key}' is set, but only model.family="
                f"{'|'.join(readers)} read it and this config trains model.family={family}; "
                "remove it"
            )
