"""The stress split (`synth.preset=stress`): held-out voices at extreme rates and pitches, heard
clean and in each listening condition, for `jaxseq evaluate --robustness`.

Which voices: the test voices of `split_voices(synth.seed, synth.voice_space)`. The "all" space
keeps every demo voice in its demo split, so these voices are in no training split of either
space for that seed: a model trained on a `jaxseq synth` corpus never heard them, whichever
space its corpus used (unless `synth.voices` chose its voices by hand).

How they speak: at the extremes of espeak-ng's ranges, whatever the training config: each
utterance's rate is drawn from the slowest or the fastest sixth of 80-450 words per minute
(`STRESS_RATES`) and its pitch from the lowest or the highest fifth of 0-100 (`STRESS_PITCHES`),
a fair coin for the side, then uniformly within it. The split is therefore the same for every
model of a `synth.seed` (only `synth.num_test` and the voice space choose how many and whose).

Conditions (`CONDITIONS`): each utterance's clean wav, transformed by jaxseq.audio.augment with
a generator seeded by (seed, utterance, condition):

  clean                       as synthesized
  noise20, noise10, noise5    pink noise at 20, 10 and 5 dB SNR
  reverb0.3 ... reverb0.9     reverberation with an RT60 of 0.3, 0.6 and 0.9 s
  telephone                   telephone band

Layout under the corpus folder: `{condition}/manifest.jsonl` and `{condition}/wav/{id}.wav`,
one line per utterance with the digits manifest's "id", "audio", "text" and "speaker" plus
"voice", "rate", "pitch", "pitch_range", "word_gap" and "condition"; ids and texts are the
same in every condition. `jaxseq prepare --source synth:DIR`
(`jaxseq.data.prepare.prepare_corpus`) prepares each condition as an evaluation split of that
name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

RATE_LIMITS = (80, 450)  # espeak-ng's speaking rates, words per minute
PITCH_LIMITS = (0, 100)  # espeak-ng's base pitch
STRESS_RATES = ((80, 141), (389, 450))  # the slowest and fastest sixth of RATE_LIMITS
STRESS_PITCHES = ((0, 20), (80, 100))  # the lowest and highest fifth of PITCH_LIMITS
NOISE_SNR_DB = (20, 10, 5)
REVERB_RT60 = (0.3, 0.6, 0.9)  # seconds
CONDITIONS = (
    "clean",
    *(f"noise{snr}" for snr in NOISE_SNR_DB),
    *(f"reverb{rt60}" for rt60 in REVERB_RT60),
    "telephone",
)


def draw_extreme(rng: np.random.Generator, sides: tuple[tuple[int, int], ...]) -> int:
    """A value of one of `sides` ([lo, hi] ranges, inclusive): the side by a fair coin, then
    uniformly within it."""
    lo, hi = sides[int(rng.integers(len(sides)))]
    return int(rng.integers(lo, hi + 1))


def apply_condition(
    condition: str, clean: np.ndarray, sample_rate: int, rng: np.random.Generator
) -> np.ndarray:
    """`clean` (float32 [samples]) heard in `condition` (one of `CONDITIONS`), float32
    [samples]; noise may scale it down as a whole where it would clip (jaxseq.audio.augment)."""
    # Here, not at the top: audiomentations and pyroomacoustics take seconds to import, and
    # only the workers writing a stress corpus need them.
    from jaxseq.audio.augment import add_noise, reverberate, telephone

    if condition == "clean":
        return clean
    if condition == "telephone":
        return telephone(clean, sample_rate)
    if condition.startswith("noise"):
        return add_noise(clean, sample_rate, float(condition[len("noise") :]), "pink", rng)
    return reverberate(clean, sample_rate, float(condition[len("reverb") :]), rng)


def in_conditions(clean: np.ndarray, sample_rate: int, key: list[int]) -> dict[str, np.ndarray]:
    """{condition: `clean` heard in it} for every one of `CONDITIONS`, the i-th transformed
    with a generator seeded by `key + [i]` (float32 [samples] each)."""
    return {
        condition: apply_condition(condition, clean, sample_rate, np.random.default_rng([*key, i]))
        for i, condition in enumerate(CONDITIONS)
    }


def is_stress_corpus(corpus_dir: str | os.PathLike) -> bool:
    """Whether `corpus_dir` holds a corpus `jaxseq synth` wrote with synth.preset=stress."""
    corpus_json = Path(corpus_dir) / "corpus.json"
    if not corpus_json.is_file():
        return False
    return json.loads(corpus_json.read_text())["settings"]["preset"] == "stress"
