"""`prepare.augment`: augmented copies in `jaxseq prepare` (ids, skipping, dataset.json, seeds
that give the same bytes with any number of workers) and the config's checks."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import grain
import numpy as np
import pytest
import soundfile as sf

from jaxseq.audio.augment import speed
from jaxseq.audio.frontend import log_mel_numpy
from jaxseq.config import AugmentSpec, ConfigError, PrepareConfig, load_config
from jaxseq.data.prepare import prepare_split
from jaxseq.data.records import decode_record, index_name

SR = 16000
SECONDS = {"a": 0.5, "b": 0.6, "c": 0.7, "d": 0.75}  # a 0.8x speed copy of c or d is too long
SEGMENT = {"start": 0.11, "end": 0.33, "label": "speech"}
CFG = PrepareConfig(
    max_seconds=0.85,
    num_shards=2,
    augment=(
        AugmentSpec("speed", low=0.8, high=0.8),
        AugmentSpec("noise", copies=2, low=5.0, high=15.0, colors=("pink", "babble")),
    ),
    augment_seed=3,
)


def _manifest(root: Path, ids: list[str], name: str) -> str:
    rng = np.random.default_rng(sum(map(ord, name)))
    lines = []
    for item_id in ids:
        t = np.arange(int(SECONDS[item_id] * SR)) / SR
        audio = 0.2 * np.sin(2 * np.pi * rng.uniform(150, 400) * t) * np.sin(np.pi * t / t[-1])
        sf.write(root / f"{item_id}.wav", audio.astype(np.float32), SR)
        line = {"id": item_id, "audio": f"{item_id}.wav", "text": "one two"}
        lines.append(line | ({"segments": [SEGMENT]} if item_id == "a" else {}))
    path = root / f"{name}.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return f"manifest:{path}"


def _records(out: Path, split: str) -> list[dict]:
    shards = json.loads((out / "dataset.json").read_text())["splits"][split]["shards"]
    source = grain.sources.ArrayRecordDataSource([str(out / s) for s in shards])
    return [decode_record(source[i]) for i in range(len(source))]


def _shard_bytes(out: Path, split: str) -> dict[str, bytes]:
    shards = json.loads((out / "dataset.json").read_text())["splits"][split]["shards"]
    return {s: (out / s).read_bytes() for s in [*shards, index_name(split)]}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """train (augmented) and valid (an evaluation split, not) prepared in-process."""
    root = tmp_path_factory.mktemp("augment")
    sources = {
        "train": _manifest(root, list("abcd"), "train"),
        "valid": _manifest(root, ["a"], "v"),
    }
    prepare_split(sources["train"], root / "out", "train", CFG, num_workers=1, progress=False)
    prepare_split(
        sources["valid"], root / "out", "valid", CFG, evaluation=True, num_workers=1, progress=False
    )
    return root, sources


def test_each_item_is_followed_by_its_copies(prepared):
    root, _ = prepared
    ids = [r["id"] for r in _records(root / "out", "train")]
    copies = ["~speed0", "~noise0", "~noise1"]
    expected = [f"{i}{c}" for i in "abcd" for c in ["", *copies]]
    assert ids == [i for i in expected if i not in ("c~speed0", "d~speed0")]
    split = json.loads((root / "out/dataset.json").read_text())["splits"]["train"]
    assert split["num_utterances"] == 14 and split["skipped_by_reason"] == {"too_long": 2}
    reasons = {s["id"]: s["reason"] for s in split["skipped"]}
    assert reasons["d~speed0"] == (
        "augmented copy (speed): 0.94 s is longer than prepare.max_seconds=0.85"
    )
    assert split["augmentation"] == {
        "seed": 3,
        "specs": [
            {"kind": "speed", "copies": 1, "low": 0.8, "high": 0.8, "colors": ["white"]},
            {"kind": "noise", "copies": 2, "low": 5.0, "high": 15.0, "colors": ["pink", "babble"]},
        ],
        "num_records": 10,
    }
    skipped = [json.loads(s) for s in (root / "out/train.skipped.jsonl").read_text().splitlines()]
    assert [(s["id"], s["copy_of"]) for s in skipped] == [("c~speed0", "c"), ("d~speed0", "d")]


def test_speed_copy_is_the_resampled_audio_with_scaled_segments(prepared):
    root, _ = prepared
    records = {r["id"]: r for r in _records(root / "out", "train")}
    audio, _ = sf.read(root / "a.wav", dtype="float32")
    expected = log_mel_numpy(speed(audio, SR, 0.8), CFG.frontend)  # [num_frames, n_mels]
    copy = records["a~speed0"]
    assert copy["features"].shape == expected.shape == (62, 80)  # 0.625 s
    np.testing.assert_allclose(copy["features"].astype(np.float32), expected, atol=2e-3)
    assert records["a"]["segments"] == [[11, 33, "speech"]]  # 100 frames a second
    assert copy["segments"] == [[14, 41, "speech"]]  # 0.11 / 0.8 = 0.1375 s, 0.33 / 0.8 = 0.4125 s
    noisy = records["a~noise0"]["features"].astype(np.float32)
    assert noisy.shape == records["a"]["features"].shape
    assert not np.allclose(noisy, records["a"]["features"].astype(np.float32), atol=0.05)


def test_evaluation_splits_are_augmented_only_when_asked(prepared):
    root, sources = prepared
    split = json.loads((root / "out/dataset.json").read_text())["splits"]["valid"]
    assert split["augmentation"] is None and [r["id"] for r in _records(root / "out", "valid")] == [
        "a"
    ]
    cfg = dataclasses.replace(CFG, augment_evaluation=True)
    out = root / "augmented-valid"
    prepare_split(sources["valid"], out, "valid", cfg, evaluation=True, num_workers=1)
    split = json.loads((out / "dataset.json").read_text())["splits"]["valid"]
    kept = [r["id"] for r in _records(out, "valid")]
    # A babble copy of a split's only item has no other utterance to mix: skipped.
    failed = [s["id"] for s in split["skipped"]]
    assert sorted(kept + failed) == ["a", "a~noise0", "a~noise1", "a~speed0"]
    assert split["skipped_by_reason"] in ({}, {"augment_failed": 1}, {"augment_failed": 2})
    assert split["augmentation"]["num_records"] == len(kept) - 1


def test_same_seed_same_bytes_with_any_number_of_workers(prepared):
    root, sources = prepared
    out = root / "two-workers"
    prepare_split(sources["train"], out, "train", CFG, num_workers=2, progress=False)
    assert _shard_bytes(out, "train") == _shard_bytes(root / "out", "train")

    # Another seed is another fingerprint: the shards are rebuilt, with other noise.
    reseeded = dataclasses.replace(CFG, augment_seed=4)
    prepare_split(sources["train"], out, "train", reseeded, num_workers=1, progress=False)
    before, after = _records(root / "out", "train"), _records(out, "train")
    assert [r["id"] for r in before] == [r["id"] for r in after]
    same = {
        b["id"]
        for b, a in zip(before, after, strict=True)
        if b["features"].tobytes() == a["features"].tobytes()
    }
    assert same == {"a", "a~speed0", "b", "b~speed0", "c", "d"}  # all but the noise copies


@pytest.mark.parametrize(
    "spec, message",
    [
        ("{kind: sped}", "'prepare.augment[0].kind' is 'sped'; choose one of"),
        ("{kind: speed, low: 0.3}", "'prepare.augment[0].low' and 'prepare.augment[0].high'"),
        ("{kind: speed, low: 1.2, high: 1.1}", "range [1.2, 1.1]; speed needs 0.5 <= low"),
        ("{kind: mulaw, low: 6.5}", "mulaw needs whole numbers 2 <= low"),
        ("{kind: telephone, high: 3}", "it takes no value"),
        ("{kind: noise, colors: [blue]}", "'prepare.augment[0].colors' is ['blue']"),
        ("{kind: gain, copies: 0}", "'prepare.augment[0].copies' is 0"),
    ],
)
def test_bad_spec_names_its_key(spec, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(None, [f"prepare.augment=[{spec}]"])


def test_specs_parse_with_their_default_ranges():
    cfg = load_config(
        {"prepare": {"augment": [{"kind": "reverb", "copies": 2}, {"kind": "noise"}]}}
    )
    reverb, noise = cfg.prepare.augment
    assert reverb == AugmentSpec("reverb", copies=2) and reverb.span() == (0.2, 0.8)
    assert noise.colors == ("white",) and noise.span() == (5.0, 20.0)
    with pytest.raises(ConfigError, match="'prepare.augment\\[0\\].kind' is 'echo'"):
        prepare_split(
            "manifest:none.jsonl", "unused", "train", PrepareConfig(augment=(AugmentSpec("echo"),))
        )
