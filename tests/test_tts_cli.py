"""TTS end to end through the CLI: train (with intelligibility in the loop), evaluate with
plots, synthesize, and every bad input."""

import json
import logging

import jiwer
import numpy as np
import pytest
import soundfile as sf

from jaxseq import cli
from tests.conftest import REPO, TINY_CONFIG, built_once
from tests.test_train import assert_logged_like_recomputed

CONFIG = REPO / "configs" / "tts_tiny.yaml"
# Four steps, each logged, checkpoints at 2 and 4, one validation at 4 and one compiled shape.
FAST = [
    "data.buckets=[384]",
    "train.num_steps=4",
    "train.log_every=1",
    "train.checkpoint_every=2",
    "train.eval_every=4",
]


def shared_recognizer(tiny_dataset, tmp_path_factory, worker_id):
    """A (barely trained) CTC workdir on the digits corpus, trained once per test run (read
    only): the intelligibility scorer here, and the encoder test_classify_cli.py starts from."""

    def build(root):
        cli.main(
            [
                "train",
                "--workdir",
                str(root / "ctc"),
                "--config",
                str(TINY_CONFIG),
                f"data.dataset={tiny_dataset}",
                "data.buckets=[384]",  # one compiled shape for every utterance
                "train.num_steps=2",
                "train.eval_every=100",
            ]
        )

    return built_once(tmp_path_factory, worker_id, "ctc-recognizer", build) / "ctc"


@pytest.fixture(scope="module")
def recognizer(tiny_dataset, tmp_path_factory, worker_id):
    """A (barely trained) CTC workdir on the same features: the intelligibility scorer."""
    return shared_recognizer(tiny_dataset, tmp_path_factory, worker_id)


@pytest.fixture(scope="module")
def tts_workdir(tiny_dataset, recognizer, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tts") / "run"
    cli.main(
        [
            "train",
            "--workdir",
            str(workdir),
            "--config",
            str(CONFIG),
            f"data.dataset={tiny_dataset}",
            f"tts.asr_workdir={recognizer}",
            *FAST,
        ]
    )
    return workdir


def _lines(workdir, split):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [m for m in map(json.loads, lines) if m["split"] == split]


def test_train_logs_every_loss_and_ranks_checkpoints_by_intelligibility(tts_workdir):
    train = _lines(tts_workdir, "train")
    assert [m["step"] for m in train] == [1, 2, 3, 4]
    for m in train:  # per target frame: spectrogram + stop + guided_attention_weight (1) x guided
        parts = m["spectrogram"] + m["stop_bce"] + m["guided_attention"]
        assert m["loss"] == pytest.approx(parts / m["tokens"], rel=1e-5)
    # Step 3's loss and its parts are those of checkpoint 2's state on the batch that followed.
    assert_logged_like_recomputed(tts_workdir, 2)
    valid = _lines(tts_workdir, "valid")[-1]
    assert valid["step"] == 4 and valid["num_utterances"] == 8
    ranked = tts_workdir / "checkpoints" / "4" / "metrics" / "metrics"
    assert json.loads(ranked.read_text()) == {"metric": "cer", "value": valid["cer"]}
    assert (tts_workdir / "vocab.json").is_file()


def test_evaluate_reports_distortion_intelligibility_and_plots(tts_workdir, capsys):
    """The validation split at the last step: the report's CER is jiwer's on its own
    transcripts, and the one training logged (and ranked the checkpoint by)."""
    report = tts_workdir / "eval" / "valid.json"
    cli.main(
        ["evaluate", "--workdir", str(tts_workdir), "--split", "valid", "--report", str(report)]
    )
    assert "intelligibility CER" in capsys.readouterr().out
    out = json.loads(report.read_text())
    items = out["utterances"]
    assert out["num_utterances"] == len(items) == 8 and out["num_skipped"] == 0
    # The intelligibility figures are jiwer's on the recognizer's transcripts of the audio.
    refs, hyps = [r["text"] for r in items], [r["hyp"] or "" for r in items]
    assert out["cer"] == pytest.approx(jiwer.cer(refs, hyps))
    assert out["step"] == 4 and out["cer"] == pytest.approx(_lines(tts_workdir, "valid")[-1]["cer"])
    assert out["mel_cepstral_distortion"] == pytest.approx(
        np.mean([r["mel_cepstral_distortion"] for r in items])
    )
    assert out["mel_cepstral_distortion"] > 0 and out["dtw_l1"] > 0
    # An untrained model never predicts stop: every generation is cut at tts.max_frames.
    assert out["not_stopped"] == sum(not r["stopped"] for r in items)
    assert all(r["frames"] <= 40 for r in items)
    plotted = [r for r in items if "plots" in r]
    assert len(plotted) == 2
    for r in plotted:
        for rel in r["plots"].values():
            assert (report.parent / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = report.with_suffix(".md").read_text()
    assert "Intelligibility: CER" in markdown and "plots/" in markdown


def test_synthesize_writes_audio_and_warns_when_stop_never_comes(
    tts_workdir, tmp_path, capsys, caplog
):
    """With tts.stop_threshold=1 (a float32 sigmoid reaches 1 only above a logit of ~17, far
    from what four steps of training give) every generation runs to tts.max_frames."""
    wav, never = tmp_path / "nine.wav", ["--set", "tts.stop_threshold=1.0"]
    with caplog.at_level(logging.WARNING):
        cli.main(["synthesize", "--workdir", str(tts_workdir), "nine one", "-o", str(wav), *never])
    audio, rate = sf.read(wav)
    assert rate == 16000 and len(audio) == 40 * 160  # cut at tts.max_frames
    assert (
        "never predicted stop" in caplog.text and "never predicted stop" in capsys.readouterr().out
    )
    # Several texts go to a folder; the same seed gives the same audio whatever else is in the
    # batch (the pre-net dropout is drawn per row).
    cli.main(
        [
            "synthesize",
            "--workdir",
            str(tts_workdir),
            "nine one",
            "two",
            "-o",
            str(tmp_path / "many"),
            *never,
        ]
    )
    again, _ = sf.read(tmp_path / "many" / "000.wav")
    np.testing.assert_allclose(again, audio, atol=2 / 32768)  # 16-bit PCM, batch-size rounding
    assert (tmp_path / "many" / "001.wav").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["   "], "empty after normalization"),
        (["room 42"], "outside the model's vocabulary: ['2', '4']"),
        (["one " * 20], "data.max_label_length=64"),
        (["one", "two"], "need a folder"),
    ],
)
def test_bad_text_is_a_clear_error(tts_workdir, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as err:
        cli.main(
            ["synthesize", "--workdir", str(tts_workdir), *args, "-o", str(tmp_path / "a.wav")]
        )
    assert err.value.code == 2
    assert message in capsys.readouterr().err


def test_synthesize_needs_a_tts_workdir(recognizer, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["synthesize", "--workdir", str(recognizer), "one", "-o", str(tmp_path / "a.wav")])
    assert "needs a TTS workdir" in capsys.readouterr().err


def test_transcribe_needs_a_recognizer(tts_workdir, tmp_path, capsys):
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(8000, np.float32), 16000)
    with pytest.raises(SystemExit):
        cli.main(["transcribe", "--workdir", str(tts_workdir), str(wav)])
    assert "transcribe needs a speech recognizer" in capsys.readouterr().err


def test_bad_vocoder_and_recognizer_are_named(tts_workdir, recognizer, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(
            [
                "synthesize",
                "--workdir",
                str(tts_workdir),
                "one",
                "-o",
                str(tmp_path / "a.wav"),
                "--vocoder",
                "nowhere.module:make",
            ]
        )
    assert "nowhere.module:make" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(
            [
                "evaluate",
                "--workdir",
                str(tts_workdir),
                "--split",
                "test",
                f"tts.asr_workdir={tts_workdir}",
            ]
        )
    assert "speech recognizer" in capsys.readouterr().err
