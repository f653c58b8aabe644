"""espeak-ng synthesis and the built-in corpora: digits (with labels) and diarization."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf

from jaxseq.audio import espeak
from jaxseq.config import PrepareConfig, SynthConfig
from jaxseq.data.prepare import prepare_corpus
from jaxseq.data.records import decode_record
from jaxseq.data.sources import ManifestSource
from jaxseq.data.synth import DIGIT_WORDS, VOICES, split_voices, synthesize_corpus

SPLITS = ("train", "valid", "test")
TINY = SynthConfig(num_train=40, num_valid=4, num_test=4, seed=0)  # train: 2 chunks


def _median_f0(wave: np.ndarray, sr: int) -> float:
    """Median F0 (Hz) of the voiced frames, by autocorrelation in NumPy: the peak lag within
    50-500 Hz of each 1,024-sample frame loud enough to be speech. (Not `librosa.yin`, whose
    numba-compiled cache once crashed a test worker.)"""
    frames = librosa.util.frame(wave.astype(np.float64), frame_length=1024, hop_length=512).T
    frames = frames[np.sqrt(np.mean(frames**2, axis=1)) > 0.02]  # skip silence and noise
    spectrum = np.fft.rfft(frames - frames.mean(axis=1, keepdims=True), n=2048, axis=1)
    autocorr = np.fft.irfft(np.abs(spectrum) ** 2, axis=1)  # [frames, 2048]
    lo, hi = sr // 500, sr // 50
    lags = lo + np.argmax(autocorr[:, lo : hi + 1], axis=1)
    return float(np.median(sr / lags))


def test_synthesize_speaks_plausibly():
    wave, sr = espeak.synthesize("one two three")
    assert sr == 22050 and wave.dtype == np.float32 and wave.ndim == 1
    assert 0.6 < wave.size / sr < 3.0
    assert np.abs(wave).max() <= 1.0
    assert np.sqrt(np.mean(wave**2)) > 0.01  # not silence
    short, _ = espeak.synthesize("one")
    long, _ = espeak.synthesize("one two three four five six seven", rate=175)
    assert long.size > 3 * short.size


def test_voices_differ_and_variants_set_pitch():
    male, sr = espeak.synthesize("one two three", voice="en-us+m3")
    female, _ = espeak.synthesize("one two three", voice="en-gb-scotland+f2")
    assert male.size != female.size or not np.allclose(male, female)
    assert _median_f0(female, sr) > 1.3 * _median_f0(male, sr)
    low, _ = espeak.synthesize("one two three", voice="en-us+m3", pitch=10)
    high, _ = espeak.synthesize("one two three", voice="en-us+m3", pitch=90)
    assert _median_f0(high, sr) > 1.2 * _median_f0(low, sr)


def test_rate_changes_duration():
    slow, _ = espeak.synthesize("three oh five nine", rate=120)
    fast, _ = espeak.synthesize("three oh five nine", rate=240)
    assert slow.size > 1.5 * fast.size


@pytest.mark.parametrize("voice", ["xx-yy", "en-us+nope", "mb-en1"])
def test_unknown_voice_raises(voice):
    with pytest.raises(ValueError, match="unknown espeak-ng"):
        espeak.synthesize("one", voice=voice)


_ISOLATED = """
import hashlib, json, sys
from jaxseq.audio import espeak
requests = [("four two", "en-us+m3", 150, 40), ("nine", "en+klatt2", 200, 70)]
if sys.argv[1] == "other-first":
    espeak.synthesize_isolated([("one two three", "en-029+f1", 130, 30)], seed=1)
waves, sr = espeak.synthesize_isolated(requests, seed=7)
again, _ = espeak.synthesize_isolated(requests, seed=7)
assert sr == 22050 and all((a == b).all() for a, b in zip(waves, again, strict=True))
print(hashlib.sha256(b"".join(w.tobytes() for w in waves)).hexdigest(), [w.size for w in waves])
timed, words, _ = espeak.synthesize_isolated_words(requests, seed=7)  # the same samples
assert all((a == b).all() for a, b in zip(waves, timed, strict=True))
print(json.dumps([[[w.text, w.offset, w.start, w.end] for w in ws] for ws in words]))
espeak.synthesize("five six")
try:
    espeak.synthesize_isolated(requests)
except RuntimeError:
    print("refused after synthesize")
"""


def _run_isolated(mode: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", _ISOLATED, mode], capture_output=True, text=True, check=True
    )
    return out.stdout.splitlines()


def test_synthesize_isolated_is_reproducible_across_processes():
    first = _run_isolated("fresh")
    second = _run_isolated("other-first")  # another history in the parent: same samples
    assert first == second and len(first) == 3
    assert first[2] == "refused after synthesize"
    sizes = json.loads(first[0].split(" ", 1)[1])
    assert sizes[0] > 0 and sizes[1] > 0
    words = json.loads(first[1])  # per request [text, offset, start, end] per word
    assert [[w[:2] for w in ws] for ws in words] == [[["four", 0], ["two", 5]], [["nine", 0]]]
    for ws, size in zip(words, sizes, strict=True):
        assert all(0 <= start < end <= size for _, _, start, end in ws)


def test_voice_inventory_and_splits():
    assert len(VOICES) >= 60 and len(set(VOICES)) == len(VOICES)
    bases, variants = set(espeak.list_voices()), set(espeak.list_variants())
    for voice in VOICES:
        base, _, variant = voice.partition("+")
        assert base.startswith("en") and base in bases and variant in variants, voice
    splits = split_voices(0)
    sets = {s: set(v) for s, v in splits.items()}
    assert set().union(*sets.values()) == set(VOICES)
    assert sum(len(v) for v in sets.values()) == len(VOICES)  # disjoint
    assert 0.6 < len(sets["train"]) / len(VOICES) < 0.8
    assert len(sets["valid"]) >= 5 and len(sets["test"]) >= 10
    assert split_voices(0) == splits and split_voices(1) != splits


def _read_manifest(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _snapshot(out_dir: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out_dir)): p.read_bytes()
        for p in sorted(out_dir.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    out_dir = tmp_path_factory.mktemp("digits")
    return out_dir, synthesize_corpus(out_dir, TINY, num_workers=2, progress=False)


def test_corpus_layout_and_contents(corpus):
    out_dir, manifests = corpus
    assert set(manifests) == set(SPLITS)
    voices = split_voices(TINY.seed)
    counts = {"train": TINY.num_train, "valid": TINY.num_valid, "test": TINY.num_test}
    words, seconds, speakers = [], [], {}
    for split, manifest in manifests.items():
        assert manifest == out_dir / split / "manifest.jsonl"
        records = _read_manifest(manifest)
        assert len(records) == counts[split]
        assert len({r["id"] for r in records}) == len(records)
        speakers[split] = {r["speaker"] for r in records}
        assert speakers[split] <= set(voices[split])
        for r in records:
            assert set(r) == {"id", "audio", "text", "speaker", "words"}
            assert r["audio"] == f"wav/{r['id']}.wav"
            tokens = r["text"].split(" ")
            assert 1 <= len(tokens) <= 7 and set(tokens) <= set(DIGIT_WORDS)
            info = sf.info(manifest.parent / r["audio"])
            assert info.samplerate == 16000 and info.channels == 1 and info.subtype == "PCM_16"
            wave, _ = sf.read(manifest.parent / r["audio"], dtype="float32")
            pad = int(0.1 * 16000)
            assert np.all(wave[:pad] == 0) and np.all(wave[-pad:] == 0)  # trimmed, then padded
            assert np.sqrt(np.mean(wave[pad:-pad] ** 2)) > 0.01
            words.append(len(tokens))
            seconds.append(wave.size / 16000)
    assert not speakers["train"] & speakers["test"] and not speakers["train"] & speakers["valid"]
    # Real speech: duration tracks the number of spoken words (about 0.3 s per digit).
    assert np.corrcoef(words, seconds)[0, 1] > 0.8
    per_word = (np.array(seconds) - 0.2) / np.array(words)
    assert 0.15 < np.median(per_word) < 0.8
    settings = json.loads((out_dir / "corpus.json").read_text())
    assert settings["splits"] == counts and settings["voices"] == voices


def test_corpus_word_times(corpus):
    """The manifest's words, read back against the wavs: in the text's order, within the speech
    (not the 0.1 s pads), each holding speech, and every burst of energy that
    librosa.effects.split finds on its own (35 dB, its own framing) within the words, none in a
    pause between two words, to half its frame and a hop (its frames straddle an edge) and 2 ms;
    the first and last words start and end with the speech (to 0.15 s: a word's weak edges,
    such as an "s", can be 35-40 dB down)."""
    _, manifests = corpus
    sr = 16000
    tol = (256 // 2 + 64) / sr + 0.002
    for manifest in manifests.values():
        for r in _read_manifest(manifest):
            assert [w["word"] for w in r["words"]] == r["text"].split(" ")
            wave, _ = sf.read(manifest.parent / r["audio"], dtype="float32")
            starts = np.array([w["start"] for w in r["words"]])
            ends = np.array([w["end"] for w in r["words"]])
            assert np.all(starts < ends) and np.all(ends[:-1] <= starts[1:])
            assert starts[0] >= 0.1 and ends[-1] <= wave.size / sr - 0.1 + 1e-4
            for start, end in zip(starts, ends, strict=True):
                assert np.sqrt(np.mean(wave[round(start * sr) : round(end * sr)] ** 2)) > 0.01
            pauses = [
                (a + tol, b - tol)
                for a, b in zip(ends[:-1], starts[1:], strict=True)
                if b - a > 2 * tol
            ]
            bursts = librosa.effects.split(wave, top_db=35, frame_length=256, hop_length=64) / sr
            for lo, hi in bursts:
                assert starts[0] - tol <= lo and hi <= ends[-1] + tol, (r["id"], lo, hi)
                assert not any(lo < b and a < hi for a, b in pauses), (r["id"], lo, hi)
            assert abs(bursts[0][0] - starts[0]) < 0.15 and abs(bursts[-1][1] - ends[-1]) < 0.15


def test_digits_manifest_with_words_parses(corpus):
    """`prepare` reads manifests with ManifestSource, which takes the words as an extra key."""
    _, manifests = corpus
    source = ManifestSource(manifests["test"])
    records = _read_manifest(manifests["test"])
    assert [item["text"] for item in source] == [r["text"] for r in records]


def test_corpus_is_deterministic(corpus, tmp_path):
    out_dir, _ = corpus
    again = tmp_path / "again"
    synthesize_corpus(again, TINY, num_workers=1, progress=False)  # other worker count too
    assert _snapshot(again) == _snapshot(out_dir)
    other = tmp_path / "other"
    small = dataclasses.replace(TINY, seed=1, num_train=2, num_valid=1, num_test=1)
    manifests = synthesize_corpus(other, small, num_workers=1, progress=False)
    first = _read_manifest(out_dir / "train" / "manifest.jsonl")[:2]
    assert _read_manifest(manifests["train"]) != first


def test_corpus_rerun_skips_finished_splits(corpus):
    out_dir, manifests = corpus
    mtimes = {s: m.stat().st_mtime_ns for s, m in manifests.items()}
    wav = out_dir / "valid" / "wav" / "valid-000000.wav"
    before = wav.read_bytes()
    assert synthesize_corpus(out_dir, TINY, num_workers=2, progress=False) == manifests
    assert {s: m.stat().st_mtime_ns for s, m in manifests.items()} == mtimes
    # More valid utterances: only valid is rewritten, and its first utterances are unchanged.
    bigger = dataclasses.replace(TINY, num_valid=6)
    synthesize_corpus(out_dir, bigger, num_workers=1, progress=False)
    assert len(_read_manifest(manifests["valid"])) == 6
    assert manifests["train"].stat().st_mtime_ns == mtimes["train"]
    assert manifests["valid"].stat().st_mtime_ns != mtimes["valid"]
    assert wav.read_bytes() == before


def test_unknown_preset_raises(tmp_path):
    with pytest.raises(ValueError, match="preset"):
        synthesize_corpus(tmp_path, dataclasses.replace(TINY, preset="words"), progress=False)


def test_single_voice_corpus(corpus, tmp_path):
    cfg = dataclasses.replace(
        TINY,
        num_train=3,
        num_valid=1,
        num_test=1,
        voices=("en-us+m3",),
        rate=(170, 170),
        pitch=(50, 50),
    )
    manifests = synthesize_corpus(tmp_path, cfg, num_workers=1, progress=False)
    for manifest in manifests.values():
        assert {r["speaker"] for r in _read_manifest(manifest)} == {"en-us+m3"}
    state = json.loads((tmp_path / "corpus.json").read_text())
    assert state["voices"] == {s: ["en-us+m3"] for s in SPLITS}
    assert state["settings"]["rate"] == [170, 170] and state["settings"]["pitch"] == [50, 50]
    # The texts are those of the multi-voice corpus: only voice, rate and pitch change.
    default = _read_manifest(corpus[1]["train"])[:3]
    assert [r["text"] for r in _read_manifest(manifests["train"])] == [r["text"] for r in default]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"voices": ("en-us+m3", "xx+m1")}, r"unknown voices \['xx\+m1'\]"),
        ({"rate": (200, 100)}, r"synth.rate is \[200, 100\]"),
        ({"pitch": (0, 120)}, r"synth.pitch is \[0, 120\]"),
        ({"words": (0, 3)}, r"synth.words is \[0, 3\]"),
        ({"label": "voice"}, r"unknown synth label 'voice'"),
        (
            {"preset": "diarization", "voices": ("en-us+m3", "en+f2"), "turns": (2, 3)},
            r"synth.turns is \[2, 3\], but split 'train' has only 2 voices",
        ),
    ],
)
def test_bad_voice_settings_raise(tmp_path, change, match):
    with pytest.raises(ValueError, match=match):
        synthesize_corpus(tmp_path, dataclasses.replace(TINY, **change), progress=False)
    assert not (tmp_path / "corpus.json").exists()


def test_labels(corpus, tmp_path):
    small = dataclasses.replace(TINY, num_train=3, num_valid=1, num_test=1)
    speaker = synthesize_corpus(
        tmp_path / "speaker", dataclasses.replace(small, label="speaker"), progress=False
    )
    default = _read_manifest(corpus[1]["train"])[:3]
    records = _read_manifest(speaker["train"])
    # Only the label is new: same draws, same audio.
    assert records == [{**r, "label": r["speaker"]} for r in default]
    for r in records:
        wav = (speaker["train"].parent / r["audio"]).read_bytes()
        assert wav == (corpus[1]["train"].parent / r["audio"]).read_bytes()
    words = dataclasses.replace(small, label="text", words=(1, 1))
    manifests = synthesize_corpus(tmp_path / "words", words, num_workers=1, progress=False)
    records = [r for m in manifests.values() for r in _read_manifest(m)]
    assert len(records) == 5
    for r in records:
        assert r["label"] == r["text"] and r["text"] in DIGIT_WORDS


FOUR_VOICES = ("en-us+m3", "en+f2", "en-029+m1", "en-gb-scotland+f1")
DIARIZATION = dataclasses.replace(
    TINY,
    preset="diarization",
    num_train=3,
    num_valid=1,
    num_test=1,
    voices=FOUR_VOICES,
    turns=(2, 3),
    words=(1, 2),
)


@pytest.fixture(scope="module")
def diarization(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    out_dir = tmp_path_factory.mktemp("diarization")
    return out_dir, synthesize_corpus(out_dir, DIARIZATION, num_workers=2, progress=False)


def test_diarization_corpus(diarization):
    _, manifests = diarization
    turns = []
    for manifest in manifests.values():
        for r in _read_manifest(manifest):
            assert set(r) == {"id", "audio", "text", "speaker", "segments"}
            segments = r["segments"]
            voices = [s["label"] for s in segments]
            turns.append(len(segments))
            assert len(set(voices)) == len(voices) and set(voices) <= set(FOUR_VOICES)
            assert r["speaker"] == ",".join(voices)
            words = r["text"].split(" ")
            assert len(segments) <= len(words) <= 2 * len(segments)
            assert set(words) <= set(DIGIT_WORDS)
            wave, sr = sf.read(manifest.parent / r["audio"], dtype="float32")
            seconds = wave.size / sr
            # 0.1 s of silence before, between and after the turns; speech inside each.
            edges = [0.0] + [t for s in segments for t in (s["start"], s["end"])] + [seconds]
            for start, end in zip(edges[::2], edges[1::2], strict=True):
                assert end - start == pytest.approx(0.1, abs=2e-4)
                gap = wave[math.ceil(start * sr) + 1 : math.floor(end * sr) - 1]  # 1e-4 s rounding
                assert gap.size > 0.09 * sr and np.all(gap == 0)
            for s in segments:
                assert 0 < s["start"] < s["end"] < seconds
                speech = wave[round(s["start"] * sr) : round(s["end"] * sr)]
                assert speech.size > 0.1 * sr and np.sqrt(np.mean(speech**2)) > 0.01
    assert set(turns) == {2, 3}


def test_diarization_corpus_is_deterministic(diarization, tmp_path):
    out_dir, _ = diarization
    synthesize_corpus(tmp_path, DIARIZATION, num_workers=1, progress=False)
    assert _snapshot(tmp_path) == _snapshot(out_dir)
    settings = json.loads((out_dir / "corpus.json").read_text())["settings"]
    assert (settings["preset"], settings["turns"], settings["words"]) == (
        "diarization",
        [2, 3],
        [1, 2],
    )


def test_prepared_diarization_corpus_has_frame_labels(diarization, tmp_path):
    import grain

    out_dir, manifests = diarization
    summaries = prepare_corpus(
        out_dir, tmp_path, PrepareConfig(num_shards=1), num_workers=1, progress=False
    )
    manifest = {r["id"]: r for m in manifests.values() for r in _read_manifest(m)}
    frames = {}
    for split, summary in summaries.items():
        assert summary["num_utterances"] == {"train": 3, "valid": 1, "test": 1}[split]
        assert summary["labels"] == {}
        source = grain.sources.ArrayRecordDataSource([str(tmp_path / summary["shards"][0])])
        for i in range(len(source)):
            record = decode_record(source[i])
            expected = [
                [round(s["start"] * 100), round(s["end"] * 100), s["label"]]  # 100 frames/s
                for s in manifest[record["id"]]["segments"]
            ]
            assert record["segments"] == expected and record["label"] == ""
            for start, end, voice in expected:
                frames[(split, voice)] = frames.get((split, voice), 0) + end - start
        inventory = {v: e["frames"] for v, e in summary["segment_labels"].items()}
        assert inventory == {v: n for (s, v), n in frames.items() if s == split}
