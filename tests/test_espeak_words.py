"""Word times from espeak-ng's word events, and scoring long-form word times against them."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf

from jaxseq.audio import espeak

REPO = Path(__file__).resolve().parents[1]


def test_word_events_follow_the_text():
    text = "  one two   three café four\nfive six seven eight nine zero"
    wave, words, sr = espeak.synthesize_words(text, voice="en-us+m3", rate=190)
    tokens = [(m.group(), m.start()) for m in re.finditer(r"\S+", text)]
    # Positions count characters (not UTF-8 bytes: "café" is 5 bytes), whatever the spacing.
    assert [(w.text, w.offset) for w in words] == tokens
    starts, ends = np.array([w.start for w in words]), np.array([w.end for w in words])
    assert np.all(starts < ends) and np.all(ends[:-1] <= starts[1:])  # in order, disjoint
    assert starts[0] >= 0 and ends[-1] <= wave.size and sr == 22050
    for w in words:  # each holds speech: at 190 wpm a word lasts 0.1-0.6 s
        assert 0.1 < (w.end - w.start) / sr < 0.6
        assert np.sqrt(np.mean(wave[w.start : w.end] ** 2)) > 0.02


@pytest.mark.parametrize("voice", ["en-us", "en+f2", "en-029+klatt", "en-gb-scotland+m3"])
def test_words_bound_their_energy_bursts(voice):
    """Sentences pause between words, so each word's speech is one or a few bursts that
    librosa.effects.split finds on its own (35 dB: clearly speech; its own framing). Every
    burst lies in its word, to half a frame and a hop of split's (its frames straddle an edge)
    and 2 ms, and words hold no pause: their edges go past their bursts only by weak sounds
    (fricatives) that are 35-40 dB down."""
    text = "Seven. Three. Nine. Oh. Six. Four. Eight. Zero. Two. One. Five."
    wave, words, sr = espeak.synthesize_words(text, voice=voice, rate=150)
    assert [w.text for w in words] == text.replace(".", "").split()
    bursts = librosa.effects.split(wave, top_db=35, frame_length=256, hop_length=64)
    tol = 256 // 2 + 64 + round(0.002 * sr)
    owners = []
    for lo, hi in bursts:
        (owner,) = [i for i, w in enumerate(words) if w.start - tol <= lo and hi <= w.end + tol]
        owners.append(owner)
    assert sorted(set(owners)) == list(range(len(words)))  # every word has speech
    beyond = []
    for i, w in enumerate(words):
        mine = bursts[np.array(owners) == i]
        beyond += [mine[0][0] - w.start, w.end - mine[-1][1]]
    beyond = np.array(beyond) / sr
    assert beyond.max() < 0.15 and np.median(beyond) < 0.01
    gaps = [(b.start - a.end) / sr for a, b in zip(words, words[1:], strict=False)]
    assert min(gaps) > 0.1  # the sentence pauses are left out of the words


def test_word_extents_rule():
    """A hand-made waveform: word events at samples 0, 1000 and 3000 of 5000, speech (a
    tone) at [200, 700), [1000, 2500) and [3500, 3600), one frame of -50 dB noise in the last
    span. Extents snap to 128-sample frames counted from each span's start."""
    wave = np.zeros(5000, np.float32)
    t = np.arange(5000)
    for lo, hi in [(200, 700), (1000, 2500), (3500, 3600)]:
        wave[lo:hi] = 0.5 * np.sin(0.3 * t[lo:hi])
    wave[4500:4600] = 0.5 * 10 ** (-50 / 20)
    marks = [(0, 1, 3), (1000, 5, 3), (3000, 9, 5)]
    words = espeak.word_extents(wave, "one two three", marks, top_db=40)
    assert words == [
        espeak.Word("one", 0, 128, 768),  # frames [128, 256) .. [640, 768)
        espeak.Word("two", 4, 1000, 2536),
        espeak.Word("three", 8, 3384, 3640),  # [3384, 3512) .. [3512, 3640); not the noise
    ]
    silent = espeak.word_extents(np.zeros(100, np.float32), "one", [(10, 1, 3)])
    assert silent == [espeak.Word("one", 0, 10, 100)]  # no speech: the span is kept whole
    assert espeak.word_extents(wave, "", []) == []


def _long_recording_script():
    spec = importlib.util.spec_from_file_location(
        "long_recording", REPO / "scripts/long_recording.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_long_recording_carries_and_scores_word_times(tmp_path, monkeypatch, capsys):
    script = _long_recording_script()
    rows = [
        {
            "audio": "a.wav",
            "text": "one two",
            "words": [
                {"word": "one", "start": 0.1, "end": 0.4},
                {"word": "two", "start": 0.5, "end": 0.8},
            ],
        },
        {"audio": "b.wav", "text": "three", "words": [{"word": "three", "start": 0.1, "end": 0.5}]},
    ]
    for row in rows:
        sf.write(tmp_path / row["audio"], np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "long.wav"
    argv = ["x", "build", "--manifest", str(manifest), "--out", str(out), "--pause", "0.5", "0.5"]
    monkeypatch.setattr(sys, "argv", argv)
    script.main()
    truth = json.loads(out.with_suffix(".truth.json").read_text())
    assert [s["start"] for s in truth["segments"]] == [0.5, 2.0]  # 0.5 s pause, 1 s, pause
    assert [w for s in truth["segments"] for w in s["words"]] == [
        {"word": "one", "start": 0.6, "end": 0.9},
        {"word": "two", "start": 1.0, "end": 1.3},
        {"word": "three", "start": 2.1, "end": 2.5},
    ]

    # Predicted: "one" 0.1 s late (within 0.2 s), an inserted "oh", "two" wrongly "too",
    # "three" starting 0.3 s early: two matched words.
    predicted = [
        {"word": " one", "start": 0.7, "end": 1.0},
        {"word": " oh", "start": 1.1, "end": 1.2},
        {"word": " too", "start": 1.2, "end": 1.3},
        {"word": " three", "start": 1.8, "end": 2.45},
    ]
    result = {"text": "one oh too three", "segments": [{"start": 0.7, "words": predicted}]}
    (tmp_path / "long.json").write_text(json.dumps(result))
    capsys.readouterr()
    monkeypatch.setattr(
        sys,
        "argv",
        ["x", "score", str(out.with_suffix(".truth.json")), str(tmp_path / "long.json")],
    )
    script.main()
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == (
        "word times of 2 matched words (of 3): start within 0.2 s 50.0%, end within 0.2 s "
        "100.0%, both 50.0%; |start error| median 0.200 s, worst 0.300 s; |end error| median "
        "0.075 s, worst 0.100 s"
    )
