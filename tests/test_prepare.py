"""`jaxseq prepare` from manifests: records, index, dataset.json, bad items, resume, merging,
labels and segments."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import grain
import librosa
import numpy as np
import pytest
import soundfile as sf
from flax import serialization

from jaxseq.audio.frontend import log_mel_numpy
from jaxseq.config import FrontendConfig, PrepareConfig, frontend_settings
from jaxseq.data import prepare as prepare_lib
from jaxseq.data.prepare import PrepareError, prepare_corpus, prepare_split
from jaxseq.data.records import decode_record, encode_record, index_name, read_index
from jaxseq.data.sources import SourceError, parse_source

SR = 16000
CFG = PrepareConfig(max_seconds=2.0, max_bad_fraction=1.0, num_shards=3)
KEPT_TRAIN = ["sweep", "noise", "stereo"]  # in manifest order
SKIPPED_TRAIN = {
    "missing": "bad_audio",
    "corrupt": "bad_audio",
    "blank": "empty_text",
    "accent": "unknown_characters",
    "long": "too_long",
}


def _sweep(seconds: float, sr: int, f0: float = 200.0, f1: float = 3000.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * (f0 + (f1 - f0) * t / seconds / 2) * t)).astype(np.float32)


def _write_manifest(path: Path, lines: list[dict | str]) -> Path:
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return path


def _make_corpus(root: Path) -> Path:
    """Wav clips plus a manifest with one item of each kind; returns the manifest."""
    rng = np.random.default_rng(0)
    (root / "clips").mkdir(parents=True)
    sf.write(root / "clips/sweep.wav", _sweep(1.0, SR), SR)
    sf.write(root / "clips/noise.wav", (0.1 * rng.standard_normal(12800)).astype(np.float32), SR)
    stereo = np.stack([_sweep(1.2, 44100), _sweep(1.2, 44100, 500.0, 900.0)], axis=1)
    sf.write(root / "clips/stereo.wav", stereo, 44100, subtype="PCM_16")  # [samples, 2]
    sf.write(root / "clips/long.wav", _sweep(3.0, SR), SR)
    (root / "clips/corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk that is not audio")
    return _write_manifest(
        root / "manifest.jsonl",
        [
            {"audio": "clips/sweep.wav", "text": "Hello  World", "speaker": "s1", "label": "x"},
            {"audio": "clips/noise.wav", "text": "noise it's", "id": "noise"},
            {"audio": str(root / "clips/stereo.wav"), "text": "two channels"},
            {"audio": "clips/missing.wav", "text": "gone", "id": "missing"},
            {"audio": "clips/corrupt.wav", "text": "broken", "id": "corrupt"},
            {"audio": "clips/sweep.wav", "text": "  \t ", "id": "blank"},
            {"audio": "clips/sweep.wav", "text": "héllo", "id": "accent"},
            {"audio": "clips/long.wav", "text": "a long one", "id": "long"},
        ],
    )


def _records(out: Path, split: str) -> list[dict]:
    dataset = json.loads((out / "dataset.json").read_text())
    paths = [str(out / s) for s in dataset["splits"][split]["shards"]]
    source = grain.sources.ArrayRecordDataSource(paths)
    return [decode_record(source[i]) for i in range(len(source))]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, Path]:
    """Valid (in-process) and train (two spawned workers) prepared into one folder. Valid goes
    first: its in-process run compiles librosa's numba functions into this process's numba
    cache (tests/conftest.py), which the spawned workers inherit and load instead of each
    compiling them again (about 20 s of CPU a process)."""
    root = tmp_path_factory.mktemp("corpus")
    manifest = _make_corpus(root)
    out = root / "prepared"
    prepare_split(
        f"manifest:{manifest}", out, "valid", CFG, evaluation=True, num_workers=1, progress=False
    )
    prepare_split(f"manifest:{manifest}", out, "train", CFG, num_workers=2, progress=False)
    return root, out


def test_records_and_index_agree(prepared):
    root, out = prepared
    records = _records(out, "train")
    assert [r["id"] for r in records] == ["clips/sweep", "noise", "clips/stereo"]
    index = read_index(out / index_name("train"))
    assert list(index["ids"]) == [r["id"] for r in records]
    assert list(index["num_frames"]) == [r["features"].shape[0] for r in records]
    assert list(index["text_lengths"]) == [len(r["text"]) for r in records]
    first = records[0]
    assert (first["text"], first["speaker"], first["label"]) == ("hello world", "s1", "x")
    assert [(r["label"], r["segments"]) for r in records[1:]] == [("", []), ("", [])]
    assert first["features"].dtype == np.float16 and first["features"].shape == (100, 80)
    audio, _ = sf.read(root / "clips/sweep.wav", dtype="float32")
    np.testing.assert_allclose(first["features"], log_mel_numpy(audio, CFG.frontend), atol=2e-3)


def test_stereo_44k_is_downmixed_and_resampled(prepared):
    root, out = prepared
    record = {r["id"]: r for r in _records(out, "train")}["clips/stereo"]
    audio, _ = librosa.load(root / "clips/stereo.wav", sr=SR, mono=True)
    expected = log_mel_numpy(audio, CFG.frontend)
    assert record["features"].shape == expected.shape == (120, 80)
    np.testing.assert_allclose(record["features"].astype(np.float32), expected, atol=2e-3)


def test_dataset_json_counts_and_reasons(prepared):
    _, out = prepared
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["frontend"] == frontend_settings(FrontendConfig())
    assert dataset["text"]["charset"] == CFG.text.charset
    train = dataset["splits"]["train"]
    assert train["evaluation"] is False and len(train["shards"]) == 3
    assert all((out / s).is_file() for s in train["shards"])
    assert train["num_utterances"] == 3 and train["num_skipped"] == 5
    assert train["hours"] == pytest.approx((1.0 + 0.8 + 1.2) / 3600, rel=1e-3)
    assert train["frames"]["min"] == 80 and train["frames"]["max"] == 120
    assert train["frames"]["mean"] == pytest.approx(100.0) and train["frames"]["p50"] == 100
    assert train["labels"] == {"x": {"items": 1, "example": "clips/sweep"}}
    assert train["segment_labels"] == {}
    assert train["skipped_by_reason"] == {
        "bad_audio": 2,
        "empty_text": 1,
        "unknown_characters": 1,
        "too_long": 1,
    }
    reasons = {s["id"]: s["reason"] for s in train["skipped"]}
    assert set(reasons) == set(SKIPPED_TRAIN)
    assert "'é'" in reasons["accent"] and "charset" in reasons["accent"]
    assert "not found" in reasons["missing"] and "missing.wav" in reasons["missing"]
    assert "corrupt.wav" in reasons["corrupt"]
    assert "max_seconds" in reasons["long"]
    skipped_file = [json.loads(ln) for ln in (out / "train.skipped.jsonl").read_text().splitlines()]
    assert {s["id"]: s["kind"] for s in skipped_file} == SKIPPED_TRAIN


def test_evaluation_split_keeps_long_audio_and_merges(prepared):
    _, out = prepared
    dataset = json.loads((out / "dataset.json").read_text())
    assert set(dataset["splits"]) == {"train", "valid"}
    valid = dataset["splits"]["valid"]
    assert valid["evaluation"] is True
    assert valid["num_utterances"] == 4 and "too_long" not in valid["skipped_by_reason"]
    records = _records(out, "valid")
    assert [r["id"] for r in records] == ["clips/sweep", "noise", "clips/stereo", "long"]
    assert records[-1]["features"].shape[0] == 300  # 3 s, kept whole
    assert list(read_index(out / index_name("valid"))["ids"]) == [r["id"] for r in records]


def test_too_many_bad_items_raise(tmp_path):
    manifest = _make_corpus(tmp_path)
    cfg = dataclasses.replace(CFG, max_bad_fraction=0.05)
    with pytest.raises(PrepareError) as err:
        prepare_split(f"manifest:{manifest}", tmp_path / "out", "train", cfg, num_workers=1)
    msg = str(err.value)
    assert "prepare.max_bad_fraction" in msg and "5 of 8" in msg
    assert "bad_audio: 2" in msg and "unknown_characters: 1" in msg
    assert str(tmp_path / "out" / "train.skipped.jsonl") in msg
    assert len((tmp_path / "out/train.skipped.jsonl").read_text().splitlines()) == 5
    assert not (tmp_path / "out/dataset.json").exists()


def test_rerun_skips_finished_shards(tmp_path, monkeypatch):
    manifest = _make_corpus(tmp_path)
    out = tmp_path / "out"
    spec = f"manifest:{manifest}"
    first = prepare_split(spec, out, "train", CFG, num_workers=1, progress=False)
    processed = []
    real = prepare_lib._process_chunk
    monkeypatch.setattr(
        prepare_lib, "_process_chunk", lambda items, *a: processed.extend(items) or real(items, *a)
    )
    mtimes = {s: (out / s).stat().st_mtime_ns for s in first["shards"]}
    assert prepare_split(spec, out, "train", CFG, num_workers=1, progress=False) == first
    assert processed == []
    assert {s: (out / s).stat().st_mtime_ns for s in first["shards"]} == mtimes

    # An interrupted run: shard 0 missing, a half-written temp file left behind.
    (out / first["shards"][0]).unlink()
    (out / (first["shards"][0] + ".tmp")).write_bytes(b"partial")
    assert prepare_split(spec, out, "train", CFG, num_workers=1, progress=False) == first
    assert [item["id"] for item in processed] == ["clips/sweep", "noise", "clips/stereo"]
    assert [(out / s).stat().st_mtime_ns == mtimes[s] for s in first["shards"]] == [0, 1, 1]
    assert not (out / (first["shards"][0] + ".tmp")).exists()
    assert [r["id"] for r in _records(out, "train")] == ["clips/sweep", "noise", "clips/stereo"]

    # Other settings invalidate the finished shards.
    processed.clear()
    prepare_split(spec, out, "train", dataclasses.replace(CFG, max_seconds=5.0), num_workers=1)
    assert len(processed) == 8


def test_every_core_means_a_worker_per_thousand_items(prepared, tmp_path, monkeypatch):
    """num_workers=0 (the default): a split of fewer than ITEMS_PER_WORKER items is prepared in
    this process, no pool started (a worker's start costs what ~1000 items do), with the same
    records as the two-worker run; a larger split gets a pool of one worker per 1000 items, at
    most one per core."""
    root, out = prepared
    pools = []

    def no_pool(n, **kwargs):
        pools.append(n)
        raise RuntimeError("no pool here")

    monkeypatch.setattr(prepare_lib, "ProcessPoolExecutor", no_pool)
    spec = f"manifest:{root / 'manifest.jsonl'}"
    prepare_split(spec, tmp_path / "out", "train", CFG, num_workers=0, progress=False)
    assert pools == []
    got, want = _records(tmp_path / "out", "train"), _records(out, "train")
    assert (
        [r["id"] for r in got]
        == [r["id"] for r in want]
        == ["clips/sweep", "noise", "clips/stereo"]
    )
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a["features"], b["features"])

    monkeypatch.setattr(prepare_lib, "ITEMS_PER_WORKER", 2)  # 8 items: 4 workers, capped
    monkeypatch.setattr(prepare_lib.os, "cpu_count", lambda: 3)
    with pytest.raises(RuntimeError, match="no pool here"):
        prepare_split(spec, tmp_path / "more", "train", CFG, num_workers=0, progress=False)
    assert pools == [3]


def test_frontend_mismatch_is_an_error(prepared, tmp_path):
    root, out = prepared
    cfg = dataclasses.replace(CFG, frontend=FrontendConfig(n_mels=40))
    with pytest.raises(PrepareError, match=r"'n_mels': 80.*'n_mels': 40"):
        prepare_split(f"manifest:{root / 'manifest.jsonl'}", out, "test", cfg, num_workers=1)


def test_malformed_manifest_line_names_file_and_line(tmp_path):
    manifest = _write_manifest(
        tmp_path / "m.jsonl", [{"audio": "a.wav", "text": "a"}, "", '{"audio": "b.wav", "text": }']
    )
    with pytest.raises(SourceError, match=rf"{manifest}:3: not valid JSON"):
        parse_source(f"manifest:{manifest}", CFG)
    _write_manifest(manifest, [{"audio": "a.wav", "text": "a"}, {"audio": "b.wav"}])
    with pytest.raises(SourceError, match=rf'{manifest}:2: "text" must be a string'):
        parse_source(f"manifest:{manifest}", CFG)
    _write_manifest(
        manifest, [{"audio": "x/a.wav", "text": "a"}, {"audio": "x/a.flac", "text": "b"}]
    )
    with pytest.raises(SourceError, match=r"m.jsonl:2: duplicate id 'x/a' \(first on line 1\)"):
        parse_source(f"manifest:{manifest}", CFG)


def test_unknown_source_lists_valid_forms():
    with pytest.raises(SourceError) as err:
        parse_source("hf:librispeech", CFG)
    assert "manifest:PATH.jsonl" in str(err.value) and "tfds:NAME[/CONFIG]:SPLIT" in str(err.value)


def test_prepare_corpus_marks_evaluation_splits(tmp_path):
    for split, seconds in (("train", 0.5), ("valid", 2.5), ("test", 0.6)):
        (tmp_path / "corpus" / split).mkdir(parents=True)
        sf.write(tmp_path / "corpus" / split / "a.wav", _sweep(seconds, SR), SR)
        _write_manifest(
            tmp_path / "corpus" / split / "manifest.jsonl", [{"audio": "a.wav", "text": "a"}]
        )
    summaries = prepare_corpus(
        tmp_path / "corpus", tmp_path / "out", CFG, num_workers=1, progress=False
    )
    dataset = json.loads((tmp_path / "out/dataset.json").read_text())
    assert dataset["splits"] == summaries
    evaluation = {s: summaries[s]["evaluation"] for s in summaries}
    assert evaluation == {"train": False, "valid": True, "test": True}
    assert summaries["valid"]["num_utterances"] == 1  # 2.5 s > max_seconds, kept for evaluation
    assert summaries["valid"]["frames"]["max"] == 250
    (tmp_path / "corpus/test/manifest.jsonl").unlink()
    with pytest.raises(PrepareError, match="test/manifest.jsonl; create it with `jaxseq synth`"):
        prepare_corpus(tmp_path / "corpus", tmp_path / "out", CFG)


def _labelled_manifest(root: Path) -> Path:
    """Clips of 1.0 s (100 frames), 0.8 s (80) and 1.2 s (120) with labels and segments."""
    rng = np.random.default_rng(1)
    (root / "clips").mkdir(parents=True)
    sf.write(root / "clips/a.wav", _sweep(1.0, SR), SR)
    sf.write(root / "clips/b.wav", (0.1 * rng.standard_normal(12800)).astype(np.float32), SR)
    sf.write(root / "clips/c.wav", _sweep(1.2, SR), SR)
    segments_a = [  # unsorted on purpose
        {"start": 0.9, "end": 1.05, "label": "spk1"},  # frames 90-105, clipped to 100
        {"start": 0.254, "end": 0.7449, "label": "spk2"},  # 25.4-74.49 -> 25-74
        {"start": 0, "end": 0.254, "label": "spk1"},  # 0-25.4 -> 0-25 (touching is fine)
        {"start": 0.8, "end": 0.804, "label": "tiny"},  # 80-80.4 -> empty, dropped
        {"start": 1.1, "end": 1.3, "label": "late"},  # past the end: empty, dropped
    ]
    return _write_manifest(
        root / "manifest.jsonl",
        [
            {"audio": "clips/a.wav", "text": "a", "label": "x", "segments": segments_a},
            {"audio": "clips/b.wav", "text": "b", "label": ["y", "x"]},
            {"audio": "clips/c.wav", "text": "c", "label": ["y"], "segments": []},
            {"audio": "clips/c.wav", "text": "d", "id": "d", "label": 7},
            {
                "audio": "clips/c.wav",
                "text": "e",
                "id": "e",
                "segments": [{"start": 0.5, "end": 1.0, "label": "spk2"}],
            },
            {
                "audio": "clips/missing.wav",
                "text": "f",
                "label": "z",
                "segments": [{"start": 0, "end": 1, "label": "spk3"}],
            },
        ],
    )


def test_labels_and_segments_reach_records_and_dataset_json(tmp_path):
    manifest = _labelled_manifest(tmp_path)
    out = tmp_path / "out"
    summary = prepare_split(f"manifest:{manifest}", out, "train", CFG, num_workers=1)
    records = {r["id"]: r for r in _records(out, "train")}
    assert list(records) == ["clips/a", "clips/b", "clips/c", "d", "e"]  # missing.wav skipped
    # frame = round(seconds * 16000 / 160), end exclusive, clipped to num_frames.
    assert records["clips/a"]["segments"] == [[0, 25, "spk1"], [25, 74, "spk2"], [90, 100, "spk1"]]
    assert records["e"]["segments"] == [[50, 100, "spk2"]]
    labels = {i: (r["label"], r["segments"]) for i, r in records.items() if i != "clips/a"}
    assert labels == {
        "clips/b": (["y", "x"], []),
        "clips/c": (["y"], []),
        "d": ("7", []),
        "e": ("", [[50, 100, "spk2"]]),
    }
    assert summary["skipped_by_reason"] == {"bad_audio": 1}
    assert summary["labels"] == {
        "7": {"items": 1, "example": "d"},
        "x": {"items": 2, "example": "clips/a"},
        "y": {"items": 2, "example": "clips/b"},
    }
    assert summary["segment_labels"] == {
        "spk1": {"frames": 25 + 10, "example": "clips/a"},
        "spk2": {"frames": 49 + 50, "example": "clips/a"},
    }
    dataset = json.loads((out / "dataset.json").read_text())
    assert list(dataset["splits"]["train"]["labels"]) == ["7", "x", "y"]  # sorted by name
    assert dataset["splits"]["train"] == summary


def test_records_without_segments_read_as_none():
    features = np.zeros((3, 80), np.float16)
    old = serialization.msgpack_serialize(
        {"id": "a", "text": "a", "features": features, "num_frames": 3, "label": "", "speaker": ""}
    )
    assert decode_record(old)["segments"] == []
    new = decode_record(encode_record("a", "a", features, label=["p", "q"], segments=[(0, 2, "s")]))
    assert (new["label"], new["segments"]) == (["p", "q"], [[0, 2, "s"]])


_SEG = {"start": 0.1, "end": 0.5, "label": "s"}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"label": ["x", ""]}, r'"label"\[1\] is \'\'; each label in the list must be a non-empty'),
        ({"label": ["x", 3]}, r'"label"\[1\] is 3'),
        ({"label": ["x", "x"]}, r'"label"\[1\] repeats \'x\''),
        ({"label": {"a": 1}}, r'"label" must be a string, or a list of strings'),
        ({"label": True}, r'"label" must be a string'),
        ({"segments": {"start": 0}}, r'"segments" must be a list like'),
        ({"segments": [_SEG, [0, 1, "s"]]}, r'"segments"\[1\] must be an object like'),
        ({"segments": [{**_SEG, "end": "1"}]}, r'"segments"\[0\]\["end"\] must be a number'),
        ({"segments": [{"end": 1, "label": "s"}]}, r'"segments"\[0\]\["start"\] must be a number'),
        (
            {"segments": [{**_SEG, "start": float("nan")}]},
            r'"segments"\[0\]\["start"\] must be a number of seconds \(got nan\)',
        ),
        ({"segments": [{**_SEG, "label": ""}]}, r'"segments"\[0\]\["label"\] must be a non-empty'),
        (
            {"segments": [{**_SEG, "label": 4}]},
            r'"segments"\[0\]\["label"\] must be a non-empty string \(got 4\)',
        ),
        (
            {"segments": [_SEG, {**_SEG, "start": 0.5}]},
            r'"segments"\[1\] has start 0.5 and end 0.5',
        ),
        (
            {"segments": [{**_SEG, "start": -0.1}]},
            r'"segments"\[0\] has start -0.1 and end 0.5; give 0 <= start < end',
        ),
        (
            {
                "segments": [
                    {**_SEG, "start": 0.6, "end": 0.9},
                    _SEG,
                    {**_SEG, "start": 0.4, "end": 0.6},
                ]
            },
            r'"segments"\[2\] \(start 0.4\) overlaps "segments"\[1\] \(end 0.5\); segments must',
        ),
    ],
)
def test_bad_labels_and_segments_name_file_line_and_field(tmp_path, change, match):
    manifest = _write_manifest(
        tmp_path / "m.jsonl",
        [{"audio": "a.wav", "text": "a"}, {"audio": "b.wav", "text": "b", **change}],
    )
    with pytest.raises(SourceError, match=rf"^{manifest}:2: {match}"):
        parse_source(f"manifest:{manifest}", CFG)
