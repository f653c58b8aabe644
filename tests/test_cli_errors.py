"""Bad input through the real command: exit code 2, a message naming the culprit, no traceback."""

import json

import pytest

from jaxseq import cli


def _fails(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_missing_manifest(tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    err = _fails(
        [
            "prepare",
            "--source",
            f"manifest:{missing}",
            "--split",
            "train",
            "--out",
            str(tmp_path / "out"),
        ],
        capsys,
    )
    assert str(missing) in err


def test_unknown_source_scheme(tmp_path, capsys):
    err = _fails(
        ["prepare", "--source", "s3:bucket/x", "--split", "train", "--out", str(tmp_path / "out")],
        capsys,
    )
    assert "manifest:" in err and "tfds:" in err


def test_too_many_bad_items(tmp_path, capsys):
    manifest = tmp_path / "m.jsonl"
    lines = [{"audio": f"missing{i}.wav", "text": "one"} for i in range(3)]
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    err = _fails(
        [
            "prepare",
            "--source",
            f"manifest:{manifest}",
            "--split",
            "train",
            "--out",
            str(tmp_path / "out"),
            "--workers",
            "1",
        ],
        capsys,
    )
    assert "prepare.max_bad_fraction" in err and "missing0.wav" in err


def test_not_a_workdir(tmp_path, capsys):
    err = _fails(["evaluate", "--workdir", str(tmp_path)], capsys)
    assert str(tmp_path) in err and "not a jaxseq workdir" in err


def test_missing_split(tiny_dataset, tmp_path, capsys):
    err = _fails(
        [
            "train",
            "--workdir",
            str(tmp_path),
            f"data.dataset={tiny_dataset}",
            "data.train_split=nosuch",
        ],
        capsys,
    )
    assert "no split 'nosuch'" in err
