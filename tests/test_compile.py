"""`jaxseq compile`: the real train and evaluation steps compiled for a TPU topology (libtpu, no
TPU), with memory per device against the chip's HBM, FLOPs against an analytic count, and the
fit check's error."""

import json

import numpy as np
import pytest
import whisper.tokenizer

from jaxseq import api
from jaxseq.cli import main
from jaxseq.config import load_config
from jaxseq.errors import JaxseqError
from jaxseq.tasks.registry import task_class
from jaxseq.text.whisper_tokenizer import WhisperTokenizer
from jaxseq.train.compile import _out_of_memory, compile_config, fit_error, topology_devices
from tests.conftest import REPO, TINY_CONFIG

# A CTC encoder wide enough that matmuls are nearly all of its FLOPs.
D, MLP, HEADS, LAYERS, N_MELS, FRAMES, BATCH = 256, 1024, 4, 2, 80, 512, 8
WIDE = [
    f"model.d_model={D}",
    f"model.mlp_dim={MLP}",
    f"model.num_heads={HEADS}",
    f"model.num_layers={LAYERS}",
    f"data.buckets=[{FRAMES}]",
    f"data.batch_size={BATCH}",
    f"data.eval_batch_size={BATCH}",
    "data.dataset=/nonexistent",  # compile needs no data
]


@pytest.fixture(scope="module")
def fsdp_report(tmp_path_factory):
    """The CLI's compile of the wide CTC model, FSDP over a v5e:2x2 slice, with its files."""
    workdir = tmp_path_factory.mktemp("compile")
    argv = ["compile", "--config", str(TINY_CONFIG), "--topology", "v5e:2x2"]
    main([*argv, "--workdir", str(workdir), *WIDE, "mesh.preset=fsdp"])
    return workdir, json.loads((workdir / "compile" / "v5e-2x2.json").read_text())


def test_the_report_describes_the_topology_and_writes_the_hlo(fsdp_report, capsys):
    workdir, report = fsdp_report
    assert report["devices"] == 4 and report["device_kind"] == "TPU v5 lite"
    assert report["hbm_bytes"] == 16 * 2**30
    assert report["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    assert report["train"]["fits"] and report["eval"]["fits"]
    for step in ("train", "eval"):
        hlo = (workdir / "compile" / f"v5e-2x2.{step}.hlo.txt").read_text()
        assert "HloModule" in hlo
    # The step time follows from the FLOPs, the chips' peak and the MFU (v5e: 197 TFLOP/s).
    at = report["at_mfu"]
    assert at["step_seconds"] == pytest.approx(
        report["train"]["flops_per_step"] / (4 * 197e12 * 0.4)
    )
    audio_hours = BATCH * FRAMES * 0.01 / 3600
    assert at["audio_hours_per_second"] == pytest.approx(audio_hours / at["step_seconds"])


def _dense_params(d: int = D, mlp: int = MLP, layers: int = LAYERS) -> int:
    """Parameters of a CTC model of these sizes, counted from its architecture."""
    vocab = len(load_config(TINY_CONFIG).prepare.text.charset) + 1  # + blank
    stem = 3 * N_MELS * d + d + 3 * d * d + d  # two kernel-3 convs with biases
    layer = 4 * (d * d + d) + (d * mlp + mlp) + (mlp * d + d) + 2 * 2 * d  # attn, mlp, 2 LNs
    return stem + layers * layer + 2 * d + d * vocab + vocab  # final LN, head


def test_fsdp_shards_parameters_and_adam_state_over_four_chips(fsdp_report):
    _, report = fsdp_report
    params = _dense_params()
    assert report["parameters"] == params
    train = report["train"]
    # Every matrix has an embed axis that FSDP splits 4 ways; vectors without one (the MLP's
    # and the head's biases) stay whole.
    vocab = len(load_config(TINY_CONFIG).prepare.text.charset) + 1
    whole = LAYERS * (3 * D + MLP) + vocab  # + the q, k, v biases [heads, head_dim]
    assert train["parameter_bytes"] == 4 * ((params - whole) // 4 + whole)
    # Adam's two moments per parameter plus its step counts (int32 scalars).
    assert 2 * train["parameter_bytes"] <= train["optimizer_bytes"]
    assert train["optimizer_bytes"] <= 2 * train["parameter_bytes"] + 64


def test_train_flops_match_an_analytic_matmul_count(fsdp_report):
    """Forward matmuls counted from the architecture; the backward pass costs twice the
    forward (input and weight gradients) except the first conv's, which has no input
    gradient. Elementwise work, softmax and the CTC loss are the small rest."""
    _, report = fsdp_report
    vocab = len(load_config(TINY_CONFIG).prepare.text.charset) + 1
    t1, t2 = FRAMES // 2, FRAMES // 4
    conv0 = 2 * BATCH * t1 * 3 * N_MELS * D
    conv1 = 2 * BATCH * t2 * 3 * D * D
    per_layer = 2 * BATCH * t2 * (4 * D * D + 2 * D * MLP) + 2 * 2 * BATCH * t2 * t2 * D
    head = 2 * BATCH * t2 * D * vocab
    forward = conv0 + conv1 + LAYERS * per_layer + head
    analytic = 3 * forward - conv0
    assert report["train"]["flops_per_step"] == pytest.approx(analytic, rel=0.1)
    assert report["eval"]["flops_per_step"] == pytest.approx(forward, rel=0.1)


def test_a_config_that_cannot_fit_fails_naming_the_chip_and_the_levers(capsys):
    # 1.8B parameters, replicated (the default data-parallel mesh): with Adam's two moments
    # 20 GiB per chip before any activation, so the train step is not even compiled.
    big = ["model.d_model=8192", "model.mlp_dim=32768", "model.num_heads=8", "model.num_layers=2"]
    big += ["data.batch_size=4", "data.buckets=[128]", "data.dataset=/nonexistent"]
    argv = ["compile", "--config", str(TINY_CONFIG), "--topology", "v5e:2x2", "--train-only"]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, *big])
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert "DOES NOT FIT" in out
    assert "the train step does not fit TPU v5 lite (v5e:2x2, 16.0 GiB of HBM per chip)" in err
    state = 3 * _dense_params(8192, 32768, 2) * 4 / 2**30  # float32 parameters, mu and nu
    assert f"its state alone needs {state:.2f} GiB per device, {state - 16:.2f} GiB more" in err
    assert f"parameters {state / 3:.2f} GiB, optimizer state {2 * state / 3:.2f} GiB" in err
    for lever in ("mesh.preset=fsdp", "model.remat=full", "data.batch_size=4"):
        assert lever in err


# What XLA for TPUs raised compiling the train step of the model above for v5e:2x2 (jax
# 0.10.2, libtpu 0.0.42.1), before jaxseq checked the state's size first.
XLA_OUT_OF_MEMORY = (
    "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
    "temporaries (27.53G) exceeds available HBM (15.75G)."
)


def test_xla_running_out_of_memory_is_a_fit_failure_with_its_figures():
    part = {**_out_of_memory("jax.errors.JaxRuntimeError: " + XLA_OUT_OF_MEMORY), "fits": False}
    assert part["temp_bytes"] == int(27.53 * 2**30)
    assert part["xla_available_bytes"] == int(15.75 * 2**30)
    part.update(parameter_bytes=2**30, optimizer_bytes=2 * 2**30)
    report = {
        "train": part,
        "eval": None,
        "hbm_bytes": 16 * 2**30,
        "device_kind": "TPU v5 lite",
        "topology": "v5e:2x2",
        "mesh": {"data": 4, "fsdp": 1, "tensor": 1},
    }
    message = str(fit_error(report, load_config(TINY_CONFIG)))
    assert "XLA could not place it: it needs 27.53 GiB per device, 11.78 GiB more than" in message
    assert "the 15.75 GiB it may use (parameters 1.00 GiB, optimizer state 2.00 GiB)" in message


def test_a_waveform_models_audio_hours_count_samples():
    """A Wav2Vec2 config's frames are samples: its audio hours per second are batch x samples
    / 16 kHz per step (not 10 ms per frame, which would make them 160 times too many)."""
    cfg = load_config(
        REPO / "configs" / "wav2vec2_tiny_ctc.yaml",
        ["data.dataset=/nonexistent", "data.buckets=[16000]", "data.batch_size=4"],
    )
    report = api.compile(cfg, "v5e:2x2", evaluation=False)
    at = report["at_mfu"]
    assert report["train"]["fits"] and report["frames"] == 16000
    assert at["audio_hours_per_second"] == pytest.approx(4 * 1.0 / 3600 / at["step_seconds"])


def test_several_slices_put_the_data_axis_across_them():
    cfg = load_config(TINY_CONFIG, ["data.dataset=/nonexistent", "data.batch_size=16"])
    report = api.compile(cfg, "v5e:2x2", num_slices=2)
    assert report["devices"] == 8 and report["num_slices"] == 2
    assert report["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1}
    assert report["train"]["fits"] and report["eval"]["fits"]


def test_an_unknown_topology_is_a_clear_error():
    with pytest.raises(JaxseqError, match="not a TPU topology libtpu knows.*v5p:2x2x2"):
        topology_devices("v9z:2x2")


def test_a_local_compile_has_no_memory_limit_on_the_cpu():
    cfg = load_config(TINY_CONFIG, ["data.dataset=/nonexistent", "data.buckets=[128]"])
    report = compile_config(cfg)
    assert report["topology"] == "local" and report["hbm_bytes"] is None
    assert report["train"]["fits"] is None and "at_mfu" not in report
    assert report["train"]["flops_per_step"] > 0


@pytest.mark.parametrize(
    "vocab_size, multilingual, languages",
    [(51864, False, 99), (51865, True, 99), (51866, True, 100)],
)
def test_the_placeholder_whisper_tokenizer_has_openai_whispers_special_ids(
    vocab_size, multilingual, languages
):
    ref = whisper.tokenizer.get_tokenizer(multilingual, num_languages=languages)
    ours = WhisperTokenizer.placeholder(vocab_size)
    assert ours.size == vocab_size
    assert (ours.eot_id, ours.sot_id) == (ref.eot, ref.sot)
    assert (ours.transcribe_id, ours.translate_id) == (ref.transcribe, ref.translate)
    assert (ours.no_timestamps_id, ours.timestamp_begin) == (ref.no_timestamps, ref.timestamp_begin)
    assert (ours.sot_prev_id, ours.sot_lm_id, ours.no_speech_id) == (
        ref.sot_prev,
        ref.sot_lm,
        ref.no_speech,
    )
    assert ours.language_id("en") == ref.to_language_token("en")


@pytest.mark.parametrize(
    "config, vocab",
    [
        ("whisper_large_v3.yaml", 51866),
        ("seq2seq_digits.yaml", None),
        ("rnn_digits.yaml", None),
        ("tts_digits.yaml", None),
        ("ctc_base.yaml", None),
    ],
)
def test_every_family_but_classify_builds_from_its_config_alone(config, vocab):
    cfg = load_config(REPO / "configs" / config, ["data.dataset=/nonexistent"])
    task = task_class(cfg.model.family).from_config(cfg)
    assert task.n_mels == cfg.prepare.frontend.n_mels
    if vocab is not None:
        assert task.dims.vocab_size == vocab and len(task.prompt) == 4
    elif cfg.model.family in ("seq2seq",) or cfg.rnn.tokenizer == "bpe":
        assert task.tokenizer.size == cfg.model.bpe_vocab_size
    else:
        assert task.tokenizer.size in (
            len(cfg.prepare.text.charset) + 1,
            len(cfg.prepare.text.charset) + 4,
        )
    assert np.all(task.dummy_batch(2, 16)["feature_lengths"] == 16)


def test_a_classifier_needs_its_dataset_to_compile():
    cfg = load_config(REPO / "configs" / "classify_tiny.yaml", ["data.dataset=/nonexistent"])
    with pytest.raises(JaxseqError, match="data.dataset to a prepared dataset"):
        task_class("classify").from_config(cfg)
