"""The seq2seq family through the one train loop and evaluation path."""

import json

import numpy as np
import pytest

from jaxseq import cli
from jaxseq.tasks.seq2seq import teacher_forcing
from tests.conftest import REPO

CONFIG = REPO / "configs" / "seq2seq_tiny.yaml"


def test_teacher_forcing_shifts_and_masks():
    labels = np.array([[7, 8, 9, 0], [5, 0, 0, 0], [0, 0, 0, 0]])
    inputs, targets, weights = teacher_forcing(labels, np.array([3, 1, 0]), prompt=[1], end_id=2)
    np.testing.assert_array_equal(inputs, [[1, 7, 8, 9, 2], [1, 5, 2, 0, 0], [1, 2, 0, 0, 0]])
    np.testing.assert_array_equal(targets, [[7, 8, 9, 2, 0], [5, 2, 0, 0, 0], [2, 0, 0, 0, 0]])
    np.testing.assert_array_equal(weights, [[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])


def test_teacher_forcing_with_a_prompt_weights_only_the_transcript():
    labels = np.array([[7, 8, 0], [5, 0, 0]])
    inputs, targets, weights = teacher_forcing(labels, np.array([2, 1]), prompt=[1, 3, 4], end_id=2)
    np.testing.assert_array_equal(inputs, [[1, 3, 4, 7, 8, 2], [1, 3, 4, 5, 2, 0]])
    np.testing.assert_array_equal(targets, [[3, 4, 7, 8, 2, 0], [3, 4, 5, 2, 0, 0]])
    np.testing.assert_array_equal(weights, [[0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 0, 0]])


def test_train_evaluate_transcribe(tiny_dataset, tmp_path, capsys):
    workdir = tmp_path / "run"
    cli.main(
        [
            "train",
            "--workdir",
            str(workdir),
            "--config",
            str(CONFIG),
            f"data.dataset={tiny_dataset}",
        ]
    )
    assert (workdir / "tokenizer.json").is_file()
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in lines if m["split"] == "train"]
    assert [m["step"] for m in train] == [5, 10] and train[1]["loss"] < train[0]["loss"]
    capsys.readouterr()

    reports = {}
    for decoder in ("greedy", "beam"):
        report = tmp_path / f"{decoder}.json"
        cli.main(
            [
                "evaluate",
                "--workdir",
                str(workdir),
                "--decoder",
                decoder,
                "--beam-size",
                "2",
                "--report",
                str(report),
            ]
        )
        reports[decoder] = json.loads(report.read_text())
        assert reports[decoder]["num_utterances"] == 8
        assert np.isfinite(reports[decoder]["wer"])
    # The loss does not depend on the decoder; both searches decode every utterance.
    assert reports["greedy"]["loss"] == pytest.approx(reports["beam"]["loss"])
    assert len(reports["beam"]["utterances"]) == 8

    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--workdir", str(workdir), "--decoder", "prefix_beam"])
    assert "seq2seq decodes with one of" in capsys.readouterr().err

    wav = sorted((tiny_dataset.parent / "audio" / "test" / "wav").glob("*.wav"))[:2]
    cli.main(["transcribe", "--workdir", str(workdir), *map(str, wav)])
    out = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in out] == [str(w) for w in wav]


def test_input_longer_than_the_context_is_a_clear_error(tiny_dataset, tmp_path, capsys):
    """No silent truncation: a batch longer than the encoder's positions stops training."""
    with pytest.raises(SystemExit):
        cli.main(
            [
                "train",
                "--workdir",
                str(tmp_path),
                "--config",
                str(CONFIG),
                f"data.dataset={tiny_dataset}",
                "model.max_source_positions=32",
            ]
        )
    err = capsys.readouterr().err
    assert "model's context is 64" in err and "model.max_source_positions=32" in err
    assert "data.buckets go up to 512 frames" in err
