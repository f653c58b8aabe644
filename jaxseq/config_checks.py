"""The values a config's keys may take: choices, and checks across keys (`check_values`)."""

from __future__ import annotations

import re
from typing import Any

from jaxseq.errors import ConfigError

CHOICES = {
    "rnn.cell": ("lstm", "gru"),
    "rnn.tokenizer": ("char", "bpe"),
    "classify.encoder": ("ast", "transformer"),
    "classify.level": ("sequence", "frame"),
    "classify.pooling": ("cls", "mean"),
    "tts.spectrogram_loss": ("l1", "mse", "l1+mse"),
    "model.task": ("transcribe", "translate"),
    "mesh.preset": ("custom", "data", "fsdp", "fsdp_tensor"),
    "model.remat": ("none", "full", "dots"),
    "train.compute_dtype": ("float32", "bfloat16"),
    "eval.decoder": ("greedy", "prefix_beam", "beam", "exhaustive"),
    "eval.normalizer": ("model", "whisper_english", "whisper_basic", "none"),
    "eval.longform": ("chunked", "sequential"),
    "synth.preset": ("digits", "diarization"),
    "synth.label": ("", "speaker", "text"),
}


def check_values(cfg: Any) -> None:
    """For `cfg` (a jaxseq.config.Config; that module imports this one): a ConfigError naming
    the first key whose value is not one of its choices or does not fit the other keys."""
    for key, choices in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in choices:
            raise ConfigError(f"config key '{key}' is {value!r}; choose one of {list(choices)}")
    # The checkpoint's tokenizer says which codes exist (jaxseq.tasks.whisper); names like
    # "german" are not codes.
    if cfg.model.language != "auto" and not re.fullmatch(r"[a-z]{2,3}", cfg.model.language):
        raise ConfigError(
            f"config key 'model.language' is {cfg.model.language!r}; give a Whisper language "
            "code (en, de, zh, haw, ...) or auto (detected per recording)"
        )
    if cfg.eval.decoder == "exhaustive" and cfg.model.family != "rnn":
        raise ConfigError(
            f"config key 'eval.decoder' is 'exhaustive', which only model.family=rnn decodes "
            f"with (model.family={cfg.model.family}); choose greedy or the family's beam search"
        )
    ev = cfg.eval
    timed = cfg.model.family == "whisper" or (
        cfg.model.family == "seq2seq" and cfg.model.timestamps
    )
    if ev.longform == "sequential" and not timed:
        raise ConfigError(
            f"config key 'eval.longform' is 'sequential', which seeks by timestamp tokens; "
            f"model.family={cfg.model.family} has none (a Whisper checkpoint, or seq2seq with "
            "model.timestamps=true, has them): use eval.longform=chunked"
        )
    if cfg.data.pack_utterances < 1:
        raise ConfigError(
            f"config key 'data.pack_utterances' is {cfg.data.pack_utterances}; give 1 (one "
            "utterance per training item) or more"
        )
    if not ev.temperatures or min(ev.temperatures) < 0:
        raise ConfigError(
            f"config key 'eval.temperatures' is {list(ev.temperatures)}; give one or more "
            "temperatures >= 0 (0: greedy), e.g. [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]"
        )
    if ev.no_speech_threshold is not None and not 0 <= ev.no_speech_threshold <= 1:
        raise ConfigError(
            f"config key 'eval.no_speech_threshold' is {ev.no_speech_threshold}; give a "
            "probability in [0, 1], or null for no silence skipping"
        )
