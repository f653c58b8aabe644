"""The wider voice space and the stress split (`synth.preset=stress`): held-out voices, extreme
rates and pitches, and condition sub-splits that are the clean audio transformed."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from jaxseq.audio import augment, espeak
from jaxseq.config import SynthConfig
from jaxseq.data.stress import CONDITIONS
from jaxseq.data.synth import VOICES, corpus_voices, split_voices, synthesize_corpus
from tests.conftest import built_once

STRESS = SynthConfig(
    preset="stress",
    num_test=2,
    words=(1, 2),
    voice_space="all",
    pitch_range=(30, 70),
    word_gap=(0, 20),
)


def shared_stress_corpus(tmp_path_factory, worker_id) -> Path:
    """`STRESS` synthesized once per test run (read only): the folder of its conditions."""

    def build(root: Path) -> None:
        synthesize_corpus(root, STRESS, num_workers=1, progress=False)

    return built_once(tmp_path_factory, worker_id, "stress-corpus", build)


@pytest.fixture(scope="module")
def stress(tmp_path_factory, worker_id) -> Path:
    return shared_stress_corpus(tmp_path_factory, worker_id)


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _english_voices() -> set[str]:
    bases = [b for b in espeak.list_voices() if b == "en" or b.startswith("en-")]
    return {f"{b}+{v}" for b in bases for v in espeak.list_variants()}


@pytest.mark.parametrize("seed", [0, 1])
def test_all_voice_space_keeps_splits_disjoint_and_extends_demo(seed):
    demo, wide = split_voices(seed), split_voices(seed, "all")
    assert split_voices(seed, "demo") == demo
    sets = {s: set(v) for s, v in wide.items()}
    assert sum(map(len, sets.values())) == len(set().union(*sets.values()))  # disjoint
    assert set().union(*sets.values()) == _english_voices() | set(VOICES)
    assert len(sets["train"]) > 5 * len(VOICES)
    assert {"en-us+whisper", "en-gb-x-rp+croak", "en-029+klatt4"} <= set().union(*sets.values())
    for split, voices in demo.items():
        assert set(voices) <= sets[split]  # each demo voice keeps its split


def test_hand_picked_voices_come_from_the_voice_space():
    picked = SynthConfig(voices=("en-us+whisper", "en-shaw+croak"), voice_space="all")
    assert corpus_voices(picked)["test"] == ["en-shaw+croak", "en-us+whisper"]
    with pytest.raises(ValueError, match=r"unknown voices \['en-shaw\+croak', 'en-us\+whisper'\]"):
        corpus_voices(dataclasses.replace(picked, voice_space="demo"))


@pytest.mark.parametrize(("seed", "space"), [(0, "demo"), (0, "all"), (7, "all")])
def test_stress_voices_are_held_out_of_every_training_split(seed, space):
    cfg = dataclasses.replace(STRESS, seed=seed, voice_space=space)
    voices = set(corpus_voices(cfg)["stress"])
    trained = set(split_voices(seed)["train"]) | set(split_voices(seed, "all")["train"])
    assert len(voices) >= 10 and not voices & trained


def test_stress_corpus_speaks_held_out_voices_at_extremes(stress):
    manifests = {c: stress / c / "manifest.jsonl" for c in CONDITIONS}
    clean = _read(manifests["clean"])
    assert len(clean) == STRESS.num_test
    trained = set(split_voices(0)["train"]) | set(split_voices(0, "all")["train"])
    held_out = set(corpus_voices(STRESS)["stress"])
    for r in clean:
        assert r["voice"] == r["speaker"] and r["voice"] in held_out - trained
        # The extremes of espeak-ng's ranges, whatever the corpus's synth.rate and synth.pitch.
        assert 80 <= r["rate"] <= 141 or 389 <= r["rate"] <= 450
        assert 0 <= r["pitch"] <= 20 or 80 <= r["pitch"] <= 100
        assert 30 <= r["pitch_range"] <= 70 and 0 <= r["word_gap"] <= 20
    for condition, manifest in manifests.items():
        records = _read(manifest)
        assert records == [{**r, "condition": condition} for r in clean]
    state = json.loads((stress / "corpus.json").read_text())
    assert state["splits"] == {"stress": STRESS.num_test}
    settings = state["settings"]
    assert (settings["preset"], settings["voice_space"]) == ("stress", "all")
    assert (settings["pitch_range"], settings["word_gap"]) == ([30, 70], [0, 20])


def test_conditions_are_the_clean_audio_transformed(stress):
    """Noise at its SNR to 0.5 dB (the noise being noisy - clean, after undoing the scale-down
    that keeps it from clipping); reverberation and the telephone band are augment's functions
    of the clean wav, seeded by (seed, 3 = the stress split, utterance, condition)."""
    for index, r in enumerate(_read(stress / "clean" / "manifest.jsonl")):
        clean, sr = sf.read(stress / "clean" / r["audio"], dtype="int16")
        clean = clean.astype(np.float64) / 32767.0
        for i, condition in enumerate(CONDITIONS):
            heard, _ = sf.read(stress / condition / r["audio"], dtype="int16")
            assert heard.shape == clean.shape
            heard = heard.astype(np.float64) / 32767.0
            rng = np.random.default_rng([STRESS.seed, 3, index, i])
            if condition.startswith("noise"):
                scale = heard @ clean / (clean @ clean)  # 1 unless scaled down
                noise = heard / scale - clean
                snr = 10 * np.log10(np.sum(clean**2) / np.sum(noise**2))
                assert abs(snr - float(condition[len("noise") :])) < 0.5, (condition, snr)
                continue
            if condition == "clean":
                expected = clean
            elif condition == "telephone":
                expected = augment.telephone(clean.astype(np.float32), sr)
            else:
                rt60 = float(condition[len("reverb") :])
                expected = augment.reverberate(clean.astype(np.float32), sr, rt60, rng)
            np.testing.assert_allclose(heard, expected, atol=1.5 / 32767)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"voices": ("en-us+m3",)}, "leave synth.voices empty"),
        ({"voice_space": "every"}, "unknown synth voice_space 'every'"),
        ({"pitch_range": (20, 120)}, r"synth.pitch_range is \[20, 120\]"),
    ],
)
def test_bad_stress_settings_raise(tmp_path, change, match):
    with pytest.raises(ValueError, match=match):
        synthesize_corpus(tmp_path, dataclasses.replace(STRESS, **change), progress=False)
    assert not (tmp_path / "corpus.json").exists()
