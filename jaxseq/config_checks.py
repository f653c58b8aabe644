"""The values a config's keys may take: choices, and checks across keys (`check_values`)."""

from __future__ import annotations

import re
from typing import Any

from jaxseq.errors import ConfigError

CHOICES = {
    "rnn.cell": ("lstm", "gru"),
    "rnn.tokenizer": ("char", "bpe"),
    "classify.encoder": ("ast", "transformer", "wav2vec2"),
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
    "synth.preset": ("digits", "diarization", "stress"),
    "synth.voice_space": ("demo", "all"),
    "synth.label": ("", "speaker", "text"),
    "model.frontend": ("logmel", "waveform"),
    "optim.schedule": ("cosine", "tri_stage"),
    "optim.decay": ("exponential", "linear"),
    "wav2vec2.model_type": ("wav2vec2", "hubert"),
    "wav2vec2.feat_extract_norm": ("group", "layer"),
}
# Choices of keys nested one level deeper (section.subsection.name).
FRONTEND_CHOICES = {"kind": ("logmel", "waveform"), "waveform_dtype": ("int16", "float16")}

# `prepare.augment` kinds: (default low, default high, least, most) of the value each copy draws.
AUGMENT_RANGES = {
    "speed": (0.9, 1.1, 0.5, 2.0),  # factor (duration x 1/factor, pitch x factor)
    "tempo": (0.9, 1.1, 0.5, 2.0),  # factor (duration x 1/factor)
    "pitch": (-2.0, 2.0, -12.0, 12.0),  # semitones
    "gain": (-6.0, 6.0, -40.0, 40.0),  # dB
    "noise": (5.0, 20.0, -10.0, 60.0),  # SNR in dB
    "reverb": (0.2, 0.8, 0.1, 2.0),  # RT60 in seconds
    "telephone": (0.0, 0.0, 0.0, 0.0),  # no value
    "eq": (-6.0, 6.0, -24.0, 24.0),  # gain range of each band in dB
    "mulaw": (8, 8, 2, 16),  # bits
}
NOISE_COLORS = ("white", "pink", "brown", "babble")


def check_values(cfg: Any) -> None:
    """For `cfg` (a jaxseq.config.Config; that module imports this one): a ConfigError naming
    the first key whose value is not one of its choices or does not fit the other keys."""
    for key, choices in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in choices:
            raise ConfigError(f"config key '{key}' is {value!r}; choose one of {list(choices)}")
    for name, choices in FRONTEND_CHOICES.items():
        if (value := getattr(cfg.prepare.frontend, name)) not in choices:
            raise ConfigError(
                f"config key 'prepare.frontend.{name}' is {value!r}; choose one of {list(choices)}"
            )
    check_prepare_augment(cfg.prepare)
    _check_schedule(cfg.optim)
    if cfg.model.family == "classify":
        _check_classify_encoder(cfg)
    waveform_model = cfg.model.family in ("ctc", "ssl", "classify") and (
        cfg.model.frontend == "waveform"
    )
    if waveform_model:
        _check_waveform(cfg)
    elif cfg.prepare.frontend.kind == "waveform":
        raise ConfigError(
            "config key 'prepare.frontend.kind' is 'waveform', but only model.frontend=waveform "
            "(a Wav2Vec2/HuBERT encoder: model.family=ctc, ssl, or classify with "
            "classify.encoder=wav2vec2) reads waveform records and this config has "
            f"model.family={cfg.model.family}, model.frontend={cfg.model.frontend}: set those, "
            "or prepare.frontend.kind=logmel"
        )
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
    _check_augment(cfg.data.augment, cfg.model.family)
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


def _check_schedule(optim: Any) -> None:
    """`optim.phase_ratio` (tri_stage): three fractions >= 0 of train.num_steps summing to 1;
    an exponential decay needs an end rate above 0."""
    if optim.schedule != "tri_stage":
        return
    ratio = tuple(optim.phase_ratio)
    if len(ratio) != 3 or min(ratio) < 0 or abs(sum(ratio) - 1.0) > 1e-6:
        raise ConfigError(
            f"config key 'optim.phase_ratio' is {list(ratio)}; give the warmup, hold and decay "
            "fractions of train.num_steps, three numbers >= 0 that sum to 1, e.g. [0.1, 0.4, 0.5]"
        )
    if optim.decay == "exponential" and optim.end_learning_rate_ratio <= 0:
        raise ConfigError(
            f"config key 'optim.end_learning_rate_ratio' is {optim.end_learning_rate_ratio}; an "
            "exponential tri_stage decay needs an end rate above 0 (e.g. 0.05), or use "
            "optim.decay=linear"
        )


def _check_classify_encoder(cfg: Any) -> None:
    """model.family=classify: classify.encoder=wav2vec2 goes with model.frontend=waveform (and
    the other encoders with log-mel), with mean pooling at the sequence level."""
    c = cfg.classify
    if (c.encoder == "wav2vec2") != (cfg.model.frontend == "waveform"):
        raise ConfigError(
            f"config key 'classify.encoder' is {c.encoder!r} with model.frontend="
            f"{cfg.model.frontend}; the Wav2Vec2/HuBERT encoder reads waveforms and the others "
            "log-mel: use classify.encoder=wav2vec2 with model.frontend=waveform (and "
            "prepare.frontend.kind=waveform), or ast|transformer with model.frontend=logmel"
        )
    if c.encoder != "wav2vec2":
        return
    if c.pooling != "mean":
        raise ConfigError(
            f"config key 'classify.pooling' is {c.pooling!r}, but classify.encoder=wav2vec2 "
            "mean-pools the projected frames (as Wav2Vec2ForSequenceClassification): set "
            "classify.pooling=mean"
        )


def _check_waveform(cfg: Any) -> None:
    """model.frontend=waveform: waveform records to read, and no log-mel augmentation."""
    if cfg.prepare.frontend.kind != "waveform":
        raise ConfigError(
            f"config key 'prepare.frontend.kind' is {cfg.prepare.frontend.kind!r}, but "
            "model.frontend=waveform reads waveform records: set prepare.frontend.kind=waveform"
        )
    if cfg.spec_augment.enabled:
        raise ConfigError(
            "config key 'spec_augment.enabled' is true, but SpecAugment masks log-mel features "
            "and model.frontend=waveform has none: mask the encoder's frames with "
            "wav2vec2.mask_time_prob and wav2vec2.mask_time_length instead"
        )
    for name in ("vtlp", "time_stretch"):
        if tuple(getattr(cfg.data.augment, name)) != (1.0, 1.0):
            raise ConfigError(
                f"config key 'data.augment.{name}' is set, but it warps log-mel features and "
                "model.frontend=waveform reads waveforms: augment the audio with "
                "prepare.augment (speed, tempo, noise, ...) instead"
            )
    w = cfg.wav2vec2
    for key in ("mask_time_length", "mask_feature_length"):
        if getattr(w, key) < 1:
            raise ConfigError(f"config key 'wav2vec2.{key}' is {getattr(w, key)}; give 1 or more")


def _check_augment(augment: Any, family: str) -> None:
    """`data.augment` (a FeatureAugmentConfig): each range `[low, high]` with 0 < low <= high,
    and no augmentation for model.family=tts, whose log-mel features are the targets."""
    for name in ("vtlp", "time_stretch"):
        value = tuple(getattr(augment, name))
        if len(value) != 2 or not 0 < value[0] <= value[1]:
            raise ConfigError(
                f"config key 'data.augment.{name}' is {list(value)}; give a range [low, high] "
                "with 0 < low <= high, e.g. [0.9, 1.1] ([1.0, 1.0]: off)"
            )
        if family == "tts" and value != (1.0, 1.0):
            raise ConfigError(
                f"config key 'data.augment.{name}' is {list(value)}, but model.family=tts "
                "predicts the log-mel features (they are its targets, not its input): leave "
                "it at [1.0, 1.0]"
            )


def check_prepare_augment(prepare: Any) -> None:
    """`prepare.augment` (a jaxseq.config.PrepareConfig's): a ConfigError naming the first
    spec key whose kind, copies, range or colors are not valid."""
    for i, spec in enumerate(prepare.augment):
        key = f"prepare.augment[{i}]"
        if spec.kind not in AUGMENT_RANGES:
            raise ConfigError(
                f"config key '{key}.kind' is {spec.kind!r}; choose one of {list(AUGMENT_RANGES)}"
            )
        if spec.copies < 1:
            raise ConfigError(f"config key '{key}.copies' is {spec.copies}; give 1 or more")
        least, most = AUGMENT_RANGES[spec.kind][2:]
        low, high = spec.span()
        if not least <= low <= high <= most or (spec.kind == "mulaw" and low % 1 + high % 1):
            whole = "whole numbers " if spec.kind == "mulaw" else ""
            raise ConfigError(
                f"config keys '{key}.low' and '{key}.high' make the range [{low}, {high}]; "
                f"{spec.kind} needs {whole}{least} <= low <= high <= {most}"
                + (" (it takes no value: leave out low and high)" if most == least else "")
            )
        if spec.kind == "noise" and not (spec.colors and set(spec.colors) <= set(NOISE_COLORS)):
            raise ConfigError(
                f"config key '{key}.colors' is {list(spec.colors)}; give one or more of "
                f"{list(NOISE_COLORS)}"
            )
