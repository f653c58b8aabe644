"""`jaxseq prepare --runner beam`: the Beam engine (DirectRunner, 2 worker processes) gives the
local engine's shards byte for byte, its index, skipped list and dataset.json; a failed
pipeline leaves no half shard and its rerun matches; grain reads the shards; the manifest is
read in byte ranges with ManifestSource's items, ids, lines and errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import apache_beam  # noqa: F401  (a dev dependency: these tests must never be skipped)
import grain
import numpy as np
import pytest
import soundfile as sf

from jaxseq import cli
from jaxseq.config import AugmentSpec, DataConfig, PrepareConfig
from jaxseq.data import manifest_ranges, prepare_shards
from jaxseq.data.eval_batches import make_eval_batches
from jaxseq.data.manifest_ranges import scan_manifest
from jaxseq.data.pipeline import make_train_iterator
from jaxseq.data.prepare import PrepareError, prepare_corpus, prepare_split
from jaxseq.data.records import decode_record, index_name, read_index
from jaxseq.data.sources import ManifestSource, SourceError
from jaxseq.text.vocab import CharVocab
from tests.test_tfds_source import JaxseqToySpeech

SR = 16000
CFG = PrepareConfig(
    max_seconds=2.0,
    max_bad_fraction=1.0,
    num_shards=3,
    augment=(
        AugmentSpec("gain", low=-6.0, high=6.0),
        AugmentSpec("noise", copies=2, low=5.0, high=15.0, colors=("pink", "babble")),
    ),
    augment_seed=7,
)
SKIPPED = {  # id: kind, in the train split
    "missing": "bad_audio",
    "corrupt": "bad_audio",
    "blank": "empty_text",
    "accent": "unknown_characters",
    "long": "too_long",
}
SEGMENTS = [{"start": 0.1, "end": 0.4, "label": "speech"}]


def _tone(seconds: float, sr: int, hz: float) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * hz * t) * np.sin(np.pi * t / t[-1])).astype(np.float32)


def _manifest(root: Path) -> Path:
    """12 items: 7 good (16, 8, 22.05 and 44.1 kHz stereo), 1 too long for training, and a
    missing file, a corrupt file, an empty transcript and one outside the charset."""
    (root / "clips").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, seconds, sr, hz in [
        ("a", 1.0, SR, 220),
        ("b", 0.6, SR, 330),
        ("c8k", 0.9, 8000, 440),
        ("d22k", 0.7, 22050, 550),
        ("g", 0.5, SR, 660),
        ("long", 3.0, SR, 200),
    ]:
        sf.write(root / f"clips/{name}.wav", _tone(seconds, sr, hz), sr)
    sf.write(root / "clips/noise.wav", (0.1 * rng.standard_normal(12800)).astype(np.float32), SR)
    stereo = np.stack([_tone(1.2, 44100, 300), _tone(1.2, 44100, 900)], axis=1)
    sf.write(root / "clips/stereo.wav", stereo, 44100, subtype="PCM_16")  # [samples, 2]
    (root / "clips/corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk that is not audio")
    lines = [
        {"audio": "clips/a.wav", "text": "Hello World", "label": "x", "segments": SEGMENTS},
        {"audio": "clips/missing.wav", "text": "gone", "id": "missing"},
        {"audio": "clips/b.wav", "text": "bee", "speaker": "s2"},
        {"audio": "clips/c8k.wav", "text": "eight k", "label": ["x", "y"]},
        {"audio": "clips/corrupt.wav", "text": "broken", "id": "corrupt"},
        {"audio": "clips/stereo.wav", "text": "two channels"},
        {"audio": "clips/a.wav", "text": "  \t ", "id": "blank"},
        {"audio": "clips/d22k.wav", "text": "twenty two"},
        {"audio": "clips/long.wav", "text": "a long one", "id": "long"},
        {"audio": "clips/a.wav", "text": "héllo", "id": "accent"},
        {"audio": "clips/noise.wav", "text": "noise it's", "id": "noise"},
        {"audio": "clips/g.wav", "text": "gee"},
    ]
    path = root / "manifest.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


# The DirectRunner in this process: it sees the tests' monkeypatches, and starts in well under
# a second, where each of multi_processing's workers first imports jaxseq (~5 s on a busy
# 2-core machine). One pipeline per module runs multi_processing: the fixture's train split.
IN_PROCESS = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


def _beam_cli(manifest: Path, out: Path) -> None:
    """The valid split through `jaxseq prepare --runner beam --beam-options ...`."""
    cli.main(
        ["prepare", "--source", f"manifest:{manifest}", "--out", str(out), "--split", "valid"]
        + ["--eval", "--runner", "beam", f"--beam-options={' '.join(IN_PROCESS)}"]
        + [f"prepare.{k}={getattr(CFG, k)}" for k in ("max_seconds", "max_bad_fraction")]
        + [f"prepare.num_shards={CFG.num_shards}"]
    )


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, Path]:
    """The corpus prepared by both engines: train (augmented; Beam: the DirectRunner with 2
    worker processes) and valid (an evaluation split; Beam: through the CLI, in-process).
    The local runs go first, in this process: they compile librosa's numba functions into the
    test's numba cache (tests/conftest.py), which the Beam workers load instead of compiling.
    The manifest is cut in ranges of 5 items, so shards span ranges and babble talkers come
    from ranges a worker has not read."""
    root = tmp_path_factory.mktemp("beam")
    manifest = _manifest(root)
    spec = f"manifest:{manifest}"
    for split, evaluation in (("train", False), ("valid", True)):
        prepare_split(
            spec, root / "local", split, CFG, evaluation=evaluation, num_workers=1, progress=False
        )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(manifest_ranges, "ITEMS_PER_RANGE", 5)
        prepare_split(spec, root / "beam", "train", CFG, num_workers=2, runner="beam")
        _beam_cli(manifest, root / "beam")
    return root, manifest


def _shards(out: Path, split: str) -> dict[str, bytes]:
    """{shard name: its bytes}, the shards named in dataset.json."""
    summary = json.loads((out / "dataset.json").read_text())["splits"][split]
    return {name: (out / name).read_bytes() for name in summary["shards"]}


def _records(out: Path, split: str) -> list[bytes]:
    shards = json.loads((out / "dataset.json").read_text())["splits"][split]["shards"]
    source = grain.sources.ArrayRecordDataSource([str(out / s) for s in shards])
    return [source[i] for i in range(len(source))]


def _same_output(a: Path, b: Path, split: str) -> None:
    """Two prepared folders hold the same split: shard files byte for byte, index, skipped
    list, summary."""
    assert _shards(a, split) == _shards(b, split)
    index_a, index_b = read_index(a / index_name(split)), read_index(b / index_name(split))
    assert {k: v.tolist() for k, v in index_a.items()} == {
        k: v.tolist() for k, v in index_b.items()
    }
    skipped = f"{split}.skipped.jsonl"
    assert (a / skipped).read_text() == (b / skipped).read_text()
    summaries = [json.loads((d / "dataset.json").read_text())["splits"][split] for d in (a, b)]
    assert summaries[0] == summaries[1]


def test_beam_gives_the_local_engines_output(prepared):
    root, _ = prepared
    for split in ("train", "valid"):
        _same_output(root / "local", root / "beam", split)
    assert not list((root / "beam").glob("*.tmp"))
    train = json.loads((root / "beam/dataset.json").read_text())["splits"]["train"]
    kept = ["clips/a", "clips/b", "clips/c8k", "clips/stereo", "clips/d22k", "noise", "clips/g"]
    ids = [decode_record(r)["id"] for r in _records(root / "beam", "train")]
    assert [i for i in ids if "~" not in i] == kept
    assert ids[:4] == ["clips/a", "clips/a~gain0", "clips/a~noise0", "clips/a~noise1"]
    assert train["num_utterances"] == 4 * len(kept) and train["augmentation"]["num_records"] == 21
    skipped = [json.loads(s) for s in (root / "beam/train.skipped.jsonl").read_text().splitlines()]
    assert {s["id"]: s["kind"] for s in skipped} == SKIPPED
    reasons = {s["id"]: s["reason"] for s in train["skipped"]}
    assert "missing.wav" in reasons["missing"] and "max_seconds" in reasons["long"]
    assert train["labels"] == {
        "x": {"items": 8, "example": "clips/a"},  # a and c8k, each with its 3 copies
        "y": {"items": 4, "example": "clips/c8k"},
    }
    valid = json.loads((root / "beam/dataset.json").read_text())["splits"]["valid"]
    assert valid["num_utterances"] == 8 and valid["augmentation"] is None  # long is kept
    assert valid["skipped_by_reason"] == {"bad_audio": 2, "empty_text": 1, "unknown_characters": 1}


def test_a_failed_pipeline_leaves_no_half_shard_and_its_rerun_matches(prepared, monkeypatch):
    root, manifest = prepared
    out = root / "failed"
    real = prepare_shards.ShardWriter.add

    def add(self, result):
        if self.shard == "train-00001-of-00003.array_record" and len(self.rows) == 2:
            raise OSError("disk full (injected)")
        real(self, result)

    monkeypatch.setattr(prepare_shards.ShardWriter, "add", add)
    with pytest.raises(Exception, match="disk full"):
        prepare_split(
            f"manifest:{manifest}", out, "train", CFG, runner="beam", beam_options=IN_PROCESS
        )
    assert not list(out.glob("*.tmp")) and not (out / "train-00001-of-00003.array_record").exists()
    for shard in out.glob("*.array_record"):  # any finished shard is whole
        assert len(grain.sources.ArrayRecordDataSource([str(shard)])) > 0
    assert not (out / "dataset.json").exists()

    monkeypatch.setattr(prepare_shards.ShardWriter, "add", real)
    (out / "train-00002-of-00003.array_record.tmp").write_bytes(b"a killed worker's half shard")
    prepare_split(f"manifest:{manifest}", out, "train", CFG, runner="beam", beam_options=IN_PROCESS)
    _same_output(root / "local", out, "train")
    assert not list(out.glob("*.tmp"))


def test_grain_reads_beam_shards(prepared):
    root, _ = prepared
    out = root / "beam"
    vocab = CharVocab.from_charset(CFG.text.charset)
    cfg = DataConfig(dataset=str(out), batch_size=4, eval_batch_size=4, buckets=(128, 256))
    batch = next(iter(make_train_iterator(out, "train", cfg, vocab, seed=0)))
    assert batch["features"].shape[0] == 4 and batch["features"].shape[2] == 80
    assert batch["labels"].shape == (4, cfg.max_label_length)
    ids = [i for _, batch_ids, _ in make_eval_batches(out, "valid", cfg, vocab) for i in batch_ids]
    local = [decode_record(r)["id"] for r in _records(root / "local", "valid")]
    assert [i for i in ids if i] == local


ENGINES = {  # in this process: the local engine's run in-process, the Beam engine's in_memory
    "local": {"num_workers": 1},
    "beam": {"runner": "beam", "beam_options": IN_PROCESS},
}


def test_tfds_and_synthesized_corpus_sources(prepared, tmp_path):
    """A TFDS split, and a `jaxseq synth`-style corpus (three manifests, `synth:DIR`)."""
    JaxseqToySpeech(data_dir=tmp_path / "tfds", file_format="array_record").download_and_prepare()
    cfg = PrepareConfig(tfds_data_dir=str(tmp_path / "tfds"), num_shards=2, max_bad_fraction=0.5)
    for engine, options in ENGINES.items():
        prepare_split("tfds:jaxseq_toy_speech:train", tmp_path / engine, "train", cfg, **options)
    _same_output(tmp_path / "local", tmp_path / "beam", "train")

    root, manifest = prepared
    for split in ("train", "valid", "test"):
        (tmp_path / "corpus" / split).mkdir(parents=True)
        lines = manifest.read_text().splitlines()[:4]  # the clips' paths made absolute:
        lines = [line.replace('"clips/', f'"{root}/clips/') for line in lines]
        (tmp_path / "corpus" / split / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    summaries = [
        prepare_corpus(tmp_path / "corpus", tmp_path / f"synth-{engine}", CFG, **options)
        for engine, options in ENGINES.items()
    ]
    assert summaries[0] == summaries[1] and summaries[0]["train"]["num_utterances"] == 12
    for split in ("train", "valid", "test"):
        _same_output(tmp_path / "synth-local", tmp_path / "synth-beam", split)


@pytest.mark.parametrize("items_per_range", [1, 2, 5, 64])
def test_ranged_manifest_gives_the_manifest_sources_items(prepared, items_per_range):
    _, manifest = prepared
    ranges, whole = scan_manifest(manifest, items_per_range), ManifestSource(manifest)
    assert (len(ranges), ranges.fingerprint) == (len(whole), whole.fingerprint)
    assert len(ranges.ranges) == -(-len(whole) // items_per_range)
    assert list(ranges.items(3, 10)) == [(i, whole[i]) for i in range(3, 10)]
    assert [ranges[i] for i in (11, 0, 6)] == [whole[i] for i in (11, 0, 6)]


def test_ranged_manifest_errors_name_the_line(tmp_path):
    manifest = tmp_path / "m.jsonl"
    lines = ['{"audio": "a.wav", "text": "a"}', "", "\r", '{"audio": "b.wav", "text": "b"}']
    manifest.write_text("\n".join([*lines, '{"audio": "x/a.wav", "text": "c", "id": "a"}']))
    with pytest.raises(SourceError, match=r"m.jsonl:5: duplicate id 'a' \(first on line 1\)"):
        scan_manifest(manifest, 2)
    manifest.write_text("\n".join([*lines, '{"audio": "c.wav", "text": }']))
    with pytest.raises(SourceError, match=r"m.jsonl:5: not valid JSON"):
        scan_manifest(manifest)
    with pytest.raises(SourceError, match="manifest not found"):
        scan_manifest(tmp_path / "none.jsonl")


def test_without_beam_the_error_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "apache_beam", None)  # `import apache_beam` fails
    with pytest.raises(PrepareError, match=r"pip install 'jaxseq\[beam\]'"):
        prepare_split("manifest:none.jsonl", tmp_path, "train", CFG, runner="beam")
    with pytest.raises(PrepareError, match="add --runner beam"):
        prepare_split("manifest:none.jsonl", tmp_path, "train", CFG, beam_options=["--x=1"])
    with pytest.raises(PrepareError, match="unknown runner 'spark'"):
        prepare_split("manifest:none.jsonl", tmp_path, "train", CFG, runner="spark")
