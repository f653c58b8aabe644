"""Typed, frozen configuration: YAML files plus `a.b=c` overrides.

Parsing and type checking are OmegaConf structured configs; this module declares the schema
(its data-side sections in jaxseq.config_data, re-exported here) and turns OmegaConf's errors
into messages that name the key and the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf import errors as oc_errors

from jaxseq.config_checks import check_values
from jaxseq.config_data import AugmentSpec as AugmentSpec
from jaxseq.config_data import DataConfig, PrepareConfig, SpecAugmentConfig, SynthConfig
from jaxseq.config_data import FeatureAugmentConfig as FeatureAugmentConfig
from jaxseq.config_data import FrontendConfig as FrontendConfig
from jaxseq.config_data import TextConfig as TextConfig
from jaxseq.config_data import frontend_settings as frontend_settings
from jaxseq.config_data import seconds_per_frame as seconds_per_frame
from jaxseq.config_families import check_family_keys
from jaxseq.config_wav2vec2 import SSLConfig as SSLConfig
from jaxseq.config_wav2vec2 import Wav2Vec2Config as Wav2Vec2Config
from jaxseq.errors import ConfigError

FRONTEND_FILE = "frontend.json"  # in a workdir: the features the model was trained on


@dataclass(frozen=True)
class ModelConfig:
    """Model hyperparameters; `family` selects the task (see jaxseq.tasks). The keys above
    `remat` are read by every family; `config_families.MODEL_KEY_FAMILIES` names the families
    that read each of the others, and a config of another family may not set them."""

    family: str = "ctc"
    d_model: int = 144
    num_heads: int = 4
    num_layers: int = 4
    mlp_dim: int = 576
    dropout: float = 0.1
    subsample_strides: tuple[int, ...] = (2, 2)  # conv stem; 10 ms hop x 4 = 40 ms frames
    conv_kernel: int = 3
    # Rematerialization of each Transformer layer in the backward pass: "none", "full" (keep
    # only layer inputs) or "dots" (keep matmul outputs); same numerics, less activation memory.
    remat: str = "none"
    # Encoder and decoder layers each as one nn.scan (compiles one layer, not num_layers;
    # parameters stacked under encoder/layers and decoder/layers). Not for HF conversion.
    scan_layers: bool = False
    # seq2seq only (Whisper-style: stem strides (1, 2), pre-LN encoder and decoder)
    decoder_layers: int = 2
    max_source_positions: int = 1500  # encoder frames (20 ms each): 30 s, as Whisper
    bpe_vocab_size: int = 128  # BPE trained on the training transcripts
    label_smoothing: float = 0.1
    # Joint CTC/attention (seq2seq): loss = (1 - ctc_weight) * cross-entropy + ctc_weight * CTC
    # of a linear head on the encoder over the same tokens (blank = the pad id), both summed
    # over the batch and divided by its target tokens (end tokens included); 0 = no head.
    ctc_weight: float = 0.0
    # seq2seq: Whisper-style timed targets, `<|start|> text <|end|>` per utterance (timestamp
    # tokens of 20 ms after the BPE pieces), so the model can transcribe long recordings
    # sequentially and give segment and word times (jaxseq.text.timed_targets).
    timestamps: bool = False
    # whisper only (OpenAI's architecture, tokenizer and prompt; `jaxseq convert` writes these)
    vocab_size: int = 51865  # embedding rows: 51865 multilingual, 51864 English-only, 51866 v3
    max_target_positions: int = 448  # decoder positions: prompt + transcript + end token
    tokenizer: str = ""  # folder with Whisper's tokenizer.json; "" = train.init_from
    # The spoken language of multilingual checkpoints' prompt: a code (en, de, zh, ...) or
    # "auto", detected on each recording's first 30 s when transcribing (English-only
    # checkpoints: en, their prompt has no language token).
    language: str = "en"
    task: str = "transcribe"  # or "translate" (into English)
    # ctc only: the encoder's input. "logmel": the conv stem + Transformer above; "waveform":
    # Wav2Vec2/HuBERT on raw audio, sized by the wav2vec2 section (which then replaces d_model,
    # num_heads, num_layers, mlp_dim, dropout, subsample_strides and conv_kernel); its
    # dataset is prepared with prepare.frontend.kind=waveform.
    frontend: str = "logmel"


@dataclass(frozen=True)
class TTSConfig:
    """Text-to-speech (model.family=tts): the model's TTS parts, its losses, generation, and
    the vocoder and recognizer its evaluation uses. Sizes come from the model section:
    d_model, num_heads, num_layers (text encoder), decoder_layers, mlp_dim, dropout."""

    reduction_factor: int = 4  # mel frames predicted per decoder step
    prenet_dim: int = 256
    prenet_dropout: float = 0.5  # on at inference too (Tacotron 2)
    postnet_layers: int = 5
    postnet_channels: int = 256
    postnet_kernel: int = 5
    spectrogram_loss: str = "l1"  # l1 | mse | l1+mse, on the mel before and after the post-net
    stop_pos_weight: float = 5.0  # BCE weight of the (rare) positive stop frames
    guided_attention_weight: float = 1.0  # 0 = off; diagonal prior on cross-attention
    guided_attention_sigma: float = 0.4
    # Training only: each decoder step's input frame is, with this probability, the model's own
    # prediction from a first teacher-forced pass (no gradient through it) instead of the
    # recorded frame: the decoder learns to continue from its own output (exposure bias).
    scheduled_sampling: float = 0.0
    # Training only: each decoder step's input frame is zeroed with this probability, so that
    # the decoder cannot just continue its input and must read the text through attention.
    frame_dropout: float = 0.0
    # Training only, from step free_running_from on: each utterance is, with this probability,
    # fed the model's own free-running generation (pre-net dropout on, no gradient) as its
    # decoder inputs instead of the recording, so that the decoder learns to recover from the
    # errors that accumulate when it generates, not only from one step's error.
    free_running: float = 0.0
    free_running_from: int = 0
    stop_threshold: float = 0.5  # generation stops at the first frame with p(stop) >= this
    max_frames: int = 1000  # generation limit (mel frames); reaching it is warned about
    vocoder: str = "griffin_lim"  # griffin_lim | griffin_lim:N_ITER | package.module:factory
    # Evaluation: a jaxseq ASR workdir (e.g. the CTC demo's) that transcribes the synthesized
    # speech for the intelligibility CER/WER; "" = spectrogram distortion only.
    asr_workdir: str = ""
    plots: int = 4  # utterances plotted (spectrograms, alignment) in the evaluation report


@dataclass(frozen=True)
class ClassifyConfig:
    """Audio classification (model.family=classify): an encoder, pooling and a linear head.
    Sizes come from the model section (d_model, num_heads, num_layers, mlp_dim, dropout), or
    with encoder=wav2vec2 from the wav2vec2 section.

    Labels come from the prepared records: `label` per item (level=sequence), or the per-frame
    labels of the item's `segments` (level=frame). The label set is the training split's."""

    # "ast": the Audio Spectrogram Transformer (patches of the log-mel, a ViT encoder);
    # "transformer": jaxseq's audio encoder (the CTC family's: conv stem + Transformer), whose
    # weights train.init_from can take from a CTC workdir; "wav2vec2": Wav2Vec2/HuBERT on
    # waveform records (model.frontend=waveform, sized by the wav2vec2 section; pooling=mean:
    # transformers' Wav2Vec2ForSequenceClassification, or at level=frame its
    # Wav2Vec2ForAudioFrameClassification, one label per 20 ms frame).
    encoder: str = "ast"
    level: str = "sequence"  # sequence: one label per item | frame: one per encoder frame
    # sequence level: "cls" (ast only: the mean of the [CLS] and distillation tokens, as AST)
    # or "mean" (over the valid patches or frames).
    pooling: str = "cls"
    multi_label: bool = False  # sigmoid + binary cross-entropy per label, else softmax + CE
    # AST (Gong et al., 2021): 16x16 patches with strides 10 over (mel bins, frames); clips
    # are padded to max_frames (the position table's extent), longer ones are dropped.
    patch_size: int = 16
    frequency_stride: int = 10
    time_stride: int = 10
    max_frames: int = 1024
    layer_norm_eps: float = 1e-12
    # encoder=wav2vec2 (transformers' names): the projector's width before the mean pooling
    # (level=sequence only), and whether the head reads the softmax-weighted sum of every
    # layer's hidden states.
    classifier_proj_size: int = 256
    use_weighted_layer_sum: bool = False


@dataclass(frozen=True)
class RNNConfig:
    """RNN encoder–decoder with Luong attention (model.family=rnn), listen-attend-spell style.

    Sizes from the model section: d_model is the hidden size of every cell (per direction in
    the encoder), the token embedding and the attentional state; dropout (between encoder
    layers, on the decoder's embeddings), label_smoothing and bpe_vocab_size (tokenizer=bpe)
    as for seq2seq. num_heads, num_layers and mlp_dim are unused."""

    cell: str = "lstm"  # lstm | gru (PyTorch's gate equations and weight layout)
    encoder_layers: int = 2
    decoder_layers: int = 1
    bidirectional: bool = True
    # Time reduction at the input of each encoder layer (LAS's pyramid): factor f concatenates
    # f adjacent frames, so (2, 2) runs layer 0 at 20 ms and layer 1 at 40 ms; 1 or a missing
    # entry = none.
    pyramid: tuple[int, ...] = (2, 2)
    # Luong's input feeding: the previous attentional state joins the token embedding at the
    # decoder's input.
    input_feeding: bool = True
    tokenizer: str = "char"  # char (the dataset's charset) | bpe (model.bpe_vocab_size)
    # Training only: each decoder input token is, with probability p, the model's own argmax
    # from a first teacher-forced pass (no gradient through it). p grows linearly from 0 at
    # step 0 to scheduled_sampling at step scheduled_sampling_steps (0 = train.num_steps).
    scheduled_sampling: float = 0.0
    scheduled_sampling_steps: int = 0
    plots: int = 4  # utterances whose attention alignment the evaluation report plots


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with a learning-rate schedule and global-norm clipping."""

    learning_rate: float = 1e-3
    # "cosine": linear warmup from 0 over warmup_steps, then cosine decay to
    # end_learning_rate_ratio x learning_rate at train.num_steps. "tri_stage" (fairseq's, as
    # wav2vec 2.0 fine-tuning uses): linear warmup from init_learning_rate_ratio x
    # learning_rate, hold, then `decay` (exponential | linear) to end_learning_rate_ratio x
    # learning_rate, the three phases taking the phase_ratio fractions of train.num_steps
    # (warmup_steps is not read); the rate stays at its end value after them.
    schedule: str = "cosine"
    warmup_steps: int = 200
    end_learning_rate_ratio: float = 0.02
    phase_ratio: tuple[float, float, float] = (0.1, 0.4, 0.5)
    init_learning_rate_ratio: float = 0.01
    decay: str = "exponential"
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-8
    clip_norm: float = 1.0
    # Regexes over "/"-joined parameter paths (e.g. "encoder/.*"); matching parameters are not
    # trained: no update, no optimizer state, and no part in the gradient norm that is clipped.
    freeze: tuple[str, ...] = ()


@dataclass(frozen=True)
class MeshConfig:
    """Device mesh: a preset, or ("custom") the shape below; -1 takes the devices left over.

    Presets over all devices: "data" (parameters replicated, batch split), "fsdp" (parameters
    and optimizer state sharded over their embed axis, batch split), "fsdp_tensor" (FSDP over
    devices / mesh.tensor, plus attention heads and MLP units split mesh.tensor ways).
    """

    preset: str = "custom"
    data: int = -1
    fsdp: int = 1
    tensor: int = 1


@dataclass(frozen=True)
class TrainConfig:
    """The train loop."""

    num_steps: int = 2000
    log_every: int = 50
    eval_every: int = 500
    checkpoint_every: int = 500
    keep_last: int = 2  # most recent checkpoints kept
    keep_best: int = 1  # best checkpoints by validation WER kept in addition
    seed: int = 0
    compute_dtype: str = "float32"  # or "bfloat16" (parameters stay float32)
    microbatches: int = 1  # gradient accumulation: the batch runs as this many microbatches
    # A step whose loss or gradients are not finite leaves parameters and optimizer state
    # unchanged (counted as "skipped"); this many in a row stop training with an error.
    max_nonfinite_steps: int = 20
    compilation_cache_dir: str = ""  # persistent XLA compilation cache (shared by restarts)
    # A jaxseq workdir (e.g. written by `jaxseq convert`) whose weights start a fresh run and
    # whose model section is the default for this one (keys set here still win).
    init_from: str = ""
    # [a, b]: a jax.profiler trace of the steps a..b-1 (0-based: metrics.jsonl logs them as
    # a+1..b) in WORKDIR/profile/, for TensorBoard's profile tab or xprof; [] = none.
    profile_steps: tuple[int, ...] = ()


@dataclass(frozen=True)
class EvalConfig:
    """Decoding and scoring."""

    # ctc: greedy | prefix_beam; seq2seq, whisper: greedy | beam; rnn: greedy | beam | exhaustive
    # (every sequence, tiny vocabularies and lengths only)
    decoder: str = "greedy"
    beam_size: int = 8
    length_penalty: float = 1.0  # seq2seq beam search: score / length ** length_penalty
    # Text both sides go through before WER/CER: model (the training text policy: NFKC,
    # lowercase, spaces) | whisper_english | whisper_basic (openai-whisper's normalizers, as
    # the Open ASR Leaderboard scores) | none (spaces collapsed only)
    normalizer: str = "model"
    # Long recordings (transcribe): windows of chunk_seconds (0: the longest data.buckets
    # entry, what the model trained on) overlapping by stride_seconds on each side (0: a
    # sixth of the window; 30 s and 5 s for Whisper-sized buckets)
    chunk_seconds: float = 0.0
    stride_seconds: float = 0.0
    # Decode only the speech regions of long recordings, each on its own (energy-based,
    # jaxseq.audio.vad): for models trained on single utterances
    vad: bool = False
    # Whisper's long recordings: chunked (the windows above, merged on their tokens: the text
    # alone) | sequential (openai-whisper's and transformers' long-form algorithm: 30 s
    # windows one after another, each starting at the last timestamp the previous one wrote;
    # segments with times; jaxseq.inference.whisper_sequential). Sequential only: the
    # temperatures tried in turn while a window's decoding is too repetitive (its tokens'
    # zlib compression ratio) or improbable (average log-prob) by these thresholds (null: off), a
    # window skipped as silence where <|nospeech|> is likelier than no_speech_threshold and
    # the decoding improbable, and each window prompted with the earlier text.
    longform: str = "chunked"
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    compression_ratio_threshold: float | None = 2.4
    logprob_threshold: float | None = -1.0
    no_speech_threshold: float | None = 0.6
    condition_on_previous_text: bool = True


@dataclass(frozen=True)
class Config:
    """Everything one run needs; saved resolved in the workdir as config.yaml."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    spec_augment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    tts: TTSConfig = field(default_factory=TTSConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    rnn: RNNConfig = field(default_factory=RNNConfig)
    wav2vec2: Wav2Vec2Config = field(default_factory=Wav2Vec2Config)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)


def _valid_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(node):
        key = f"{prefix}{f.name}"
        keys.append(key)
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            keys.extend(_valid_keys(value, key + "."))
    return keys


def _explain(err: oc_errors.OmegaConfBaseException, where: str) -> ConfigError:
    key = getattr(err, "full_key", None) or "?"
    valid = _valid_keys(Config())
    msg = str(err).splitlines()[0]
    if isinstance(err, (oc_errors.ConfigAttributeError, oc_errors.ConfigKeyError)):
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return ConfigError(f"{where}: unknown config key '{key}'{hint}")
    return ConfigError(f"{where}: bad value for config key '{key}': {msg}")


# The architecture sections a run takes from its `train.init_from` workdir.
INHERITED_SECTIONS = ("model", "wav2vec2")
LOCAL_PATH_KEYS = ("data.dataset", "train.init_from", "model.tokenizer", "tts.asr_workdir")


def check_local_path(value: str | Path, what: str) -> None:
    """Raises ConfigError when `value` is a remote URL (gs://, s3://, ...): jaxseq reads and
    writes workdirs and datasets through the local filesystem."""
    if "://" in str(value):
        raise ConfigError(
            f"{what} is {str(value)!r}: remote URLs are not supported; mount the bucket "
            "(e.g. gcsfuse, the GKE Cloud Storage FUSE driver) and pass the mounted path"
        )


def load_config(
    path: str | Path | dict | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Loads `path` (a YAML file, or a dict of the same nesting) over the defaults, applies
    `a.b=c` overrides, returns a frozen Config.

    With `train.init_from` naming a workdir, that workdir's model and wav2vec2 sections replace
    the defaults (as `from_pretrained` takes the architecture from the checkpoint); the file
    and overrides still win for every key they set.

    Raises:
      ConfigError: naming the file or override and the offending key (with the closest valid
        key for a typo) when a key is unknown, a value has the wrong type, or a choice is invalid.
    """
    path, given = (None, path) if isinstance(path, dict) else (path, None)
    merged = _merge(_defaults(), path, overrides, given, "the config dict")
    init_from = merged.train.init_from
    if init_from and (Path(init_from) / "config.yaml").is_file():
        saved = OmegaConf.load(Path(init_from) / "config.yaml")
        inherited = {k: saved[k] for k in INHERITED_SECTIONS if k in saved}
        where = f"train.init_from={init_from}: {Path(init_from) / 'config.yaml'}"
        base = _merge(_defaults(), None, (), inherited, where)
        merged = _merge(base, path, overrides, given, "the config dict")
    cfg = OmegaConf.to_object(merged)
    cfg = _freeze(cfg)
    check_values(cfg)
    check_family_keys(cfg)
    for key in LOCAL_PATH_KEYS:
        section, name = key.split(".")
        check_local_path(getattr(getattr(cfg, section), name), f"config key '{key}'")
    return cfg


@functools.cache
def _defaults() -> Any:
    """The schema's defaults as an OmegaConf structured config, built once per process (most of
    the cost of a `load_config`): `OmegaConf.merge` copies it and never changes it."""
    return OmegaConf.structured(Config)


def _merge(
    merged: Any,
    path: str | Path | None,
    overrides: list[str] | tuple[str, ...],
    extra: dict | None = None,
    extra_name: str = "",
) -> Any:
    """`merged` ← `extra` ← the YAML file ← the overrides, with errors naming their source."""
    if extra is not None:
        try:
            merged = OmegaConf.merge(merged, extra)
        except oc_errors.OmegaConfBaseException as err:
            raise _explain(err, extra_name) from None
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            merged = OmegaConf.merge(merged, OmegaConf.load(path))
        except oc_errors.OmegaConfBaseException as err:
            raise _explain(err, str(path)) from None
    items = []
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override {override!r} is not of the form a.b=c")
        try:
            items.append(OmegaConf.from_dotlist([override]))
        except oc_errors.OmegaConfBaseException as err:
            raise _explain(err, f"override {override!r}") from None
    if not items:
        return merged
    try:  # all at once: one copy of the config, however many overrides
        return OmegaConf.merge(merged, *items)
    except oc_errors.OmegaConfBaseException:
        pass
    for override, item in zip(overrides, items, strict=True):  # again, to name the one at fault
        try:
            merged = OmegaConf.merge(merged, item)
        except oc_errors.OmegaConfBaseException as err:
            raise _explain(err, f"override {override!r}") from None
    return merged


def _freeze(node: Any) -> Any:
    """Turns the lists OmegaConf hands back into tuples, recursively, so configs are hashable."""
    if dataclasses.is_dataclass(node):
        return dataclasses.replace(
            node, **{f.name: _freeze(getattr(node, f.name)) for f in dataclasses.fields(node)}
        )
    if isinstance(node, list):
        return tuple(_freeze(v) for v in node)
    return node


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML (what `save_config` writes)."""
    # From plain containers: half the time of a structured config, the same YAML.
    return OmegaConf.to_yaml(OmegaConf.create(dataclasses.asdict(cfg)))


def save_config(cfg: Config, path: str | Path) -> None:
    """Writes the fully resolved config to `path`."""
    Path(path).write_text(to_yaml(cfg))
