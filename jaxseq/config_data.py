"""The data side of jaxseq's configuration schema: features (`frontend`), text policy,
`prepare` (with its augmented copies), the built-in corpora (`synth`), the grain pipeline
(`data`, with on-the-fly feature augmentation) and SpecAugment. `jaxseq.config` assembles them
into `Config` and re-exports them, so `from jaxseq.config import PrepareConfig` keeps working.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from jaxseq.config_checks import AUGMENT_RANGES


@dataclass(frozen=True)
class FrontendConfig:
    """Whisper-compatible log-mel settings (saved in every prepared dataset)."""

    sample_rate: int = 16000
    n_fft: int = 400
    hop_length: int = 160
    n_mels: int = 80
    # What the records hold: "logmel" (float16 [frames, n_mels], the settings above) or
    # "waveform" (the samples at sample_rate, for waveform encoders such as Wav2Vec2 and
    # HuBERT: a record's num_frames is then its number of samples, and data.buckets count
    # samples too), stored as waveform_dtype: int16 (x 32768, as 16-bit PCM) or float16.
    kind: str = "logmel"
    waveform_dtype: str = "int16"


def frontend_settings(frontend: FrontendConfig) -> dict:
    """The frontend as recorded in dataset.json, shard fingerprints and a workdir's
    frontend.json: every field, except that a log-mel frontend leaves out `kind` and
    `waveform_dtype`, so datasets and workdirs made before waveform records existed match."""
    settings = dataclasses.asdict(frontend)
    if frontend.kind == "logmel":
        del settings["kind"], settings["waveform_dtype"]
    return settings


def seconds_per_frame(frontend: dict) -> float:
    """Seconds of audio per feature frame of a recorded frontend (`frontend_settings`): the
    hop of log-mel records, one sample of waveform records."""
    step = 1 if frontend.get("kind", "logmel") == "waveform" else frontend["hop_length"]
    return step / frontend["sample_rate"]


@dataclass(frozen=True)
class TextConfig:
    """Text policy: transcripts are normalized, then must only use `charset`."""

    charset: str = "abcdefghijklmnopqrstuvwxyz' "
    lowercase: bool = True


@dataclass(frozen=True)
class AugmentSpec:
    """One waveform augmentation of `prepare.augment` (jaxseq.audio.augment): each kept item of
    an augmented split gets `copies` augmented records, each with its own value drawn uniformly
    from [low, high]; null takes the kind's default range (config_checks.AUGMENT_RANGES)."""

    kind: str = "speed"  # speed|tempo|pitch|gain|noise|reverb|telephone|eq|mulaw
    copies: int = 1
    low: float | None = None
    high: float | None = None
    colors: tuple[str, ...] = ("white",)  # noise: drawn per copy from white|pink|brown|babble

    def span(self) -> tuple[float, float]:
        """[low, high] with the kind's defaults filled in."""
        default_low, default_high = AUGMENT_RANGES[self.kind][:2]
        low = default_low if self.low is None else self.low
        return low, default_high if self.high is None else self.high


@dataclass(frozen=True)
class PrepareConfig:
    """Offline feature extraction (`jaxseq prepare`)."""

    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    text: TextConfig = field(default_factory=TextConfig)
    max_seconds: float = 30.0  # longer training audio is skipped (and listed)
    max_bad_fraction: float = 0.05  # prepare fails if more of a split is bad
    num_shards: int = 4  # ArrayRecord shards per split
    num_workers: int = 0  # processes; 0 = all CPU cores, at most one per 1000 items
    tfds_data_dir: str | None = None
    tfds_audio_key: str = "audio"
    tfds_text_key: str = "text"
    tfds_sample_rate: int = 16000  # sample rate of float/int audio stored in TFDS
    # Augmented copies of training items (jaxseq.data.prepare_augment; README, "Waveform
    # augmentation"). A list: OmegaConf types the specs of a list only; loaded, it is a tuple.
    augment: list[AugmentSpec] = field(default_factory=list)
    augment_seed: int = 0
    augment_evaluation: bool = False  # also augment evaluation splits


@dataclass(frozen=True)
class SynthConfig:
    """The built-in espeak-ng corpus (`jaxseq synth`)."""

    # digits | diarization | stress (num_test utterances by held-out voices at rates and
    # pitches outside `rate` and `pitch`, in every condition of jaxseq.data.stress)
    preset: str = "digits"
    num_train: int = 4000
    num_valid: int = 200
    num_test: int = 400
    seed: int = 0
    sample_rate: int = 16000
    # Voices every split speaks with; empty = the preset's disjoint train/valid/test voice sets,
    # so that the test split measures voices never heard in training. One voice with a fixed
    # rate and pitch makes a single-speaker corpus, as TTS training wants (tts_digits.yaml).
    voices: tuple[str, ...] = ()
    # Where those voice sets come from: "demo" (8 English base voices x 16 variants) or "all"
    # (every English base voice x every variant espeak-ng ships; each demo voice keeps its
    # demo split, so voices held out of one space's training are held out of the other's).
    voice_space: str = "demo"
    rate: tuple[int, int] = (130, 210)  # words per minute (80-450), drawn uniformly per utterance
    pitch: tuple[int, int] = (25, 75)  # espeak-ng base pitch (0-100), drawn per utterance
    # espeak-ng's pitch range (espeakRANGE, 0-100; 50: the voice's own intonation) and extra
    # pause between words (espeakWORDGAP, 10 ms units at the normal rate), drawn per turn
    pitch_range: tuple[int, int] = (50, 50)
    word_gap: tuple[int, int] = (0, 0)
    words: tuple[int, int] = (1, 7)  # digit words per utterance (per turn for diarization)
    # The manifest's `label` for classification: "" (none), "speaker" (the voice) or "text".
    label: str = ""
    # preset=diarization: each item is this many turns (drawn per item) by different voices,
    # concatenated; the manifest gives each turn's voice as a segment (per-frame labels).
    turns: tuple[int, int] = (2, 4)


@dataclass(frozen=True)
class FeatureAugmentConfig:
    """Per-item log-mel augmentation of training batches on the host
    (jaxseq.data.feature_augment); each factor is drawn uniformly from its [low, high] per item
    and epoch; (1, 1) = off."""

    vtlp: tuple[float, float] = (1.0, 1.0)  # mel-axis warp factor (vocal tract length)
    time_stretch: tuple[float, float] = (1.0, 1.0)  # frames become round(frames * factor)
    seed: int = 0


@dataclass(frozen=True)
class DataConfig:
    """The grain input pipeline over a prepared dataset."""

    dataset: str = "data/digits"  # folder written by `jaxseq prepare`
    train_split: str = "train"
    eval_split: str = "valid"
    batch_size: int = 32  # global, over all processes
    eval_batch_size: int = 32
    buckets: tuple[int, ...] = (256, 512, 1024)  # padded frame lengths (one compile each)
    max_label_length: int = 128  # labels are padded to this; longer training items are dropped
    sort_pool_batches: int = 8  # sort this many batches' worth of items by length, then batch
    shuffle_seed: int = 0
    worker_count: int = 0  # grain worker processes (0 = in the main process)
    worker_buffer_size: int = 2
    # Threads reading and collating batches in each reading process (the main one, or each
    # worker); 0 = os.cpu_count() shared among the workers, at most 8.
    read_threads: int = 0
    # Training windows that join up to this many consecutive utterances, cut at the largest
    # bucket (seq2seq with model.timestamps: how a model learns long-form; jaxseq.data.packing).
    pack_utterances: int = 1
    augment: FeatureAugmentConfig = field(default_factory=FeatureAugmentConfig)
    # Waveform datasets only: each utterance scaled to zero mean and unit variance over its
    # valid samples (padding stays 0), as transformers' Wav2Vec2FeatureExtractor(do_normalize=
    # True) does; false: the samples as recorded, in [-1, 1].
    normalize_waveform: bool = True


@dataclass(frozen=True)
class SpecAugmentConfig:
    """SpecAugment time and frequency masks, applied on device during training."""

    enabled: bool = False
    num_freq_masks: int = 2
    max_freq_width: int = 10
    num_time_masks: int = 2
    max_time_width: int = 20
