"""Which family reads which config keys: a config may set only the keys its `model.family`
reads (a key of another family is a ConfigError naming the key and the families that read it)."""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxseq.errors import ConfigError

# The config sections only one family reads: a config of another family may not set them.
# (The wav2vec2 section sizes the waveform encoder of ctc, of ssl, its pre-training, and of
# classify with classify.encoder=wav2vec2.)
FAMILY_SECTIONS = {
    "tts": ("tts",),
    "classify": ("classify",),
    "rnn": ("rnn",),
    "wav2vec2": ("ctc", "ssl", "classify"),
    "ssl": ("ssl",),
}
# The model keys that the wav2vec2 section replaces when model.frontend=waveform (its sizes,
# dropouts and conv stack are transformers'); such a config may not set them.
WAVEFORM_REPLACED_KEYS = (
    "d_model",
    "num_heads",
    "num_layers",
    "mlp_dim",
    "dropout",
    "subsample_strides",
    "conv_kernel",
    "scan_layers",
)

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
    "frontend": ("ctc", "ssl", "classify"),
}
_BUILT_IN_FAMILIES = frozenset(_TRANSFORMERS) | {"rnn", "ssl"}


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
    for section, owners in FAMILY_SECTIONS.items():
        if family not in owners and (keys := _set_keys(getattr(cfg, section))):
            owner = "|".join(owners)
            raise ConfigError(
                f"config key '{section}.{keys[0]}' is set, but the {section} section is read "
                f"only by model.family={owner} and this config trains model.family={family}; "
                f"remove it (or set model.family={owner})"
            )
    check_frontend_keys(cfg)
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


def check_frontend_keys(cfg: Any) -> None:
    """For a ctc, ssl or classify `cfg`: with model.frontend=waveform, a ConfigError naming the
    first model key of `WAVEFORM_REPLACED_KEYS` it sets; with model.frontend=logmel, one naming
    the first wav2vec2 key it sets (that section sizes the waveform encoder only)."""
    if cfg.model.family not in ("ctc", "ssl", "classify"):
        return
    if cfg.model.frontend == "waveform":
        for key in _set_keys(cfg.model):
            if key in WAVEFORM_REPLACED_KEYS:
                raise ConfigError(
                    f"config key 'model.{key}' is set, but with model.frontend=waveform the "
                    "wav2vec2 section sizes the encoder (e.g. wav2vec2.hidden_size, "
                    "wav2vec2.num_hidden_layers, wav2vec2.hidden_dropout); remove it"
                )
    elif keys := _set_keys(cfg.wav2vec2):
        raise ConfigError(
            f"config key 'wav2vec2.{keys[0]}' is set, but the wav2vec2 section is read only "
            "with model.frontend=waveform and this config has model.frontend=logmel; remove "
            "it (or set model.frontend=waveform)"
        )
