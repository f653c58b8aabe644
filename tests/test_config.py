"""Every config file parses and builds; bad keys and values are clear errors."""

import functools

import jax
import pytest
from omegaconf import OmegaConf

from jaxseq.config import (
    ConfigError,
    FrontendConfig,
    frontend_settings,
    load_config,
    save_config,
    seconds_per_frame,
)
from jaxseq.parallel.mesh import make_mesh
from jaxseq.tasks import build_task
from jaxseq.train.optimizer import make_optimizer
from jaxseq.train.state import abstract_train_state
from tests.conftest import REPO

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
# Parameter counts the README and config comments state, as (low, high) bounds.
EXPECTED_PARAMS = {
    "ctc_tiny": (0.01e6, 0.1e6),
    "ctc_demo": (1.0e6, 1.2e6),
    "ctc_base": (35e6, 45e6),
    "ctc_robust": (0.9e6, 1.2e6),
    # transformers' Wav2Vec2ForCTC / HubertForCTC base: 94,394,013 (tests/test_wav2vec2_ctc.py)
    "wav2vec2_base_ctc": (94e6, 95e6),
    "hubert_base_ctc": (94e6, 95e6),
    "wav2vec2_tiny_ctc": (0.01e6, 0.1e6),
    "wav2vec2_tiny_classify": (0.01e6, 0.1e6),
    # transformers' Wav2Vec2ForPreTraining base: 95,044,608 (tests/test_ssl_pretrain.py), and
    # HubertModel base (94,371,712) + fairseq's final_proj and 100 label embeddings: 94,594,176.
    "wav2vec2_pretrain_base": (95.0e6, 95.1e6),
    "hubert_pretrain_base": (94.5e6, 94.7e6),
    "wav2vec2_pretrain_tiny": (0.01e6, 0.1e6),
    "hubert_digits_pretrain": (1.1e6, 1.2e6),
    "hubert_digits_ctc": (1.1e6, 1.2e6),
    "wav2vec2_tiny_frame_classify": (0.01e6, 0.1e6),
    "seq2seq_tiny": (0.01e6, 0.1e6),
    "seq2seq_digits": (1.5e6, 2.5e6),
    "seq2seq_timestamps": (1.5e6, 2.5e6),
    "tts_tiny": (0.01e6, 0.2e6),
    "tts_digits": (3.9e6, 4.0e6),
    "rnn_tiny": (0.01e6, 0.1e6),
    "rnn_digits": (1.2e6, 1.4e6),
    # On their own (no train.init_from workdir) the encoder heads have the CTC demo's sizes.
    "classify_speakers": (1.0e6, 1.2e6),
    "classify_diarization": (1.0e6, 1.2e6),
    "classify_words": (0.5e6, 0.8e6),
    "classify_tiny": (0.01e6, 0.1e6),
    # OpenAI's published sizes; test_whisper_sizes_match_transformers checks them exactly.
    "whisper_tiny": (37e6, 39e6),
    "whisper_base": (72e6, 74e6),
    "whisper_small": (241e6, 245e6),
    "whisper_medium": (763e6, 770e6),
    "whisper_large_v3": (1540e6, 1551e6),
    # The model section comes from train.init_from (tests/test_whisper_finetune.py runs it);
    # on its own it has the default dimensions with Whisper's vocabulary.
    "whisper_finetune": (9e6, 10e6),
}
# openai/whisper-* config.json: d_model, heads, layers, ffn, vocab, mel bins.
OPENAI_DIMS = {
    "whisper_tiny": (384, 6, 4, 1536, 51865, 80),
    "whisper_base": (512, 8, 6, 2048, 51865, 80),
    "whisper_small": (768, 12, 12, 3072, 51865, 80),
    "whisper_medium": (1024, 16, 24, 4096, 51865, 80),
    "whisper_large_v3": (1280, 20, 32, 5120, 51866, 128),
}


def _task(cfg, whisper_folder):
    """The config's task, its tokenizer built from the config alone (no dataset needed)."""
    if cfg.model.family == "whisper":
        from jaxseq.tasks.whisper import WhisperTask
        from jaxseq.text.whisper_tokenizer import WhisperTokenizer

        tokenizer = WhisperTokenizer.from_folder(whisper_folder)
        return WhisperTask(cfg, tokenizer, cfg.prepare.frontend.n_mels, whisper_folder)
    if cfg.model.family == "seq2seq":
        from jaxseq.tasks.seq2seq import Seq2SeqTask
        from jaxseq.text.bpe import train_bpe

        tokenizer = train_bpe(["one two three", "four five six seven"], cfg.model.bpe_vocab_size)
        return Seq2SeqTask(cfg, tokenizer, n_mels=80)
    if cfg.model.family == "classify":
        from jaxseq.data.labels import LabelSet
        from jaxseq.tasks.classify import ClassifyTask

        labels = LabelSet([f"class{i}" for i in range(20)], cfg.classify.level)
        return ClassifyTask(cfg, labels, n_mels=80)
    info = {
        "frontend": frontend_settings(cfg.prepare.frontend),
        "text": {"charset": cfg.prepare.text.charset},
    }
    return build_task(cfg, info)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_parses_and_builds(path, tmp_path, whisper_folder):
    cfg = load_config(path)
    num_params = _num_params(cfg, whisper_folder)
    low, high = EXPECTED_PARAMS[path.stem]
    assert low <= num_params <= high, num_params
    # The saved, resolved config is OmegaConf's own YAML of it, and loads back to the same.
    save_config(cfg, tmp_path / "config.yaml")
    assert (tmp_path / "config.yaml").read_text() == OmegaConf.to_yaml(OmegaConf.structured(cfg))
    assert load_config(tmp_path / "config.yaml") == cfg


def test_a_loads_overrides_never_reach_the_next_load():
    """load_config starts every load from one structured copy of the defaults, built once."""
    before = load_config(None)
    changed = load_config(None, ["train.num_steps=7", "data.buckets=[16]", "model.d_model=8"])
    assert (changed.train.num_steps, changed.data.buckets, changed.model.d_model) == (7, (16,), 8)
    assert load_config(None) == load_config({}) == before != changed


@functools.cache  # a Whisper size's count serves both tests below (tracing it takes seconds)
def _num_params(cfg, whisper_folder) -> int:
    task = _task(cfg, whisper_folder)
    mesh = make_mesh(cfg.mesh.__class__(data=1, fsdp=1, tensor=1))
    tx = make_optimizer(cfg.optim, cfg.train.num_steps)
    abstract, _ = abstract_train_state(task, tx, task.dummy_batch(1, cfg.data.buckets[0]), mesh)
    return sum(x.size for x in jax.tree.leaves(abstract.params))


@pytest.mark.parametrize("name", sorted(OPENAI_DIMS))
def test_whisper_sizes_match_transformers(name, whisper_folder):
    """Each size config has exactly the parameters of transformers' Whisper with OpenAI's
    dimensions for that size (built on the meta device: no memory, no download)."""
    import torch
    import transformers

    d, heads, layers, ffn, vocab, mels = OPENAI_DIMS[name]
    config = transformers.WhisperConfig(
        d_model=d,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_ffn_dim=ffn,
        decoder_ffn_dim=ffn,
        vocab_size=vocab,
        num_mel_bins=mels,
    )
    with torch.device("meta"):
        model = transformers.WhisperForConditionalGeneration(config)
    expected = sum(p.numel() for p in model.parameters())  # proj_out is tied: counted once
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    assert cfg.prepare.frontend.n_mels == mels
    assert _num_params(cfg, whisper_folder) == expected


def test_overrides_are_typed():
    cfg = load_config(None, ["model.d_model=64", "data.buckets=[100,200]", "optim.b1=0.8"])
    assert cfg.model.d_model == 64 and cfg.data.buckets == (100, 200) and cfg.optim.b1 == 0.8
    hash(cfg)  # frozen and hashable: usable as a static argument


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.d_modle=3", "unknown config key 'model.d_modle'; did you mean 'model.d_model'?"),
        ("trian.num_steps=3", "unknown config key 'trian'; did you mean 'train'?"),
        ("model.d_model=wide", "bad value for config key 'model.d_model'"),
        ("train.compute_dtype=fp8", "'train.compute_dtype' is 'fp8'; choose one of"),
        ("eval.decoder=viterbi", "'eval.decoder' is 'viterbi'"),
        ("model.d_model", "not of the form a.b=c"),
        ("data.dataset=gs://bucket/digits", "'data.dataset' is 'gs://bucket/digits': remote URLs"),
        ("tts.plots=3", "'tts.plots' is set, but the tts section is read only by model.family=tts"),
        ("rnn.cell=gru", "'rnn.cell' is set, but the rnn section is read only by model.family=rnn"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("?", r"\?")):
        load_config(None, [override])


def test_bad_key_in_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  num_step: 5\n")
    with pytest.raises(ConfigError, match=rf"{path}.*'train.num_step'.*'train.num_steps'"):
        load_config(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_a_family_section_needs_its_family():
    assert load_config(None, ["model.family=tts", "tts.plots=3"]).tts.plots == 3
    with pytest.raises(ConfigError, match="'classify.level' is set.*model.family=rnn"):
        load_config(None, ["model.family=rnn", "classify.level=frame"])
    with pytest.raises(ConfigError, match="config dict.*'train.num_step'.*'train.num_steps'"):
        load_config({"train": {"num_step": 3}})
    assert load_config({"model": {"family": "rnn"}, "rnn": {"cell": "gru"}}).rnn.cell == "gru"


@pytest.mark.parametrize(
    "family, key, value, readers",
    [
        ("ctc", "vocab_size", 51864, "whisper"),
        ("ctc", "decoder_layers", 4, "seq2seq|whisper|tts"),
        ("tts", "ctc_weight", 0.3, "seq2seq"),
        ("rnn", "num_heads", 8, "ctc|seq2seq|whisper|tts|classify"),
        ("whisper", "scan_layers", True, "ctc|seq2seq|classify"),
        ("classify", "bpe_vocab_size", 64, "seq2seq|rnn"),
    ],
)
def test_a_model_key_needs_a_family_that_reads_it(family, key, value, readers):
    message = rf"'model.{key}' is set, but only model.family={readers.replace('|', '[|]')} read"
    with pytest.raises(ConfigError, match=message):
        load_config({"model": {"family": family, key: value}})
    assert load_config({"model": {"family": readers.split("|")[0], key: value}})


def test_logmel_frontend_settings_are_those_recorded_before_waveform_records():
    """Datasets, shard fingerprints and workdirs made before `prepare.frontend.kind` existed
    record four log-mel settings; a log-mel frontend must still record exactly those, so that
    they keep matching (no re-preparation, no frontend mismatch on evaluate)."""
    recorded = {"sample_rate": 16000, "n_fft": 400, "hop_length": 160, "n_mels": 80}
    assert frontend_settings(FrontendConfig()) == recorded
    assert seconds_per_frame(recorded) == 0.01
    waveform = frontend_settings(FrontendConfig(kind="waveform", waveform_dtype="float16"))
    assert waveform == {**recorded, "kind": "waveform", "waveform_dtype": "float16"}
    assert seconds_per_frame(waveform) == 1 / 16000
