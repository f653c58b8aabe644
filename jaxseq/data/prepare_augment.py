"""Augmented copies in `jaxseq prepare` (`prepare.augment`): which copies each item gets, and
how one is made (jaxseq.audio.augment on the item's waveform).

Which splits: training splits; evaluation splits too with `prepare.augment_evaluation: true`.
Each kept item of such a split gives its own record, then `copies` augmented records per spec,
in the order of the specs (a copy whose item is skipped is not made).

Ids: `{item id}~{kind}{n}`, n counting the item's copies of that kind from 0 across the specs:
two speed specs of one copy each give `utt7~speed0` and `utt7~speed1`, a noise spec of two
copies `utt7~noise0` and `utt7~noise1`.

Seeds: copy c of spec s of the split's item at index i (its position in the source) draws from
`np.random.default_rng([prepare.augment_seed, crc32(split), i, s, c, 0])`, and the parent plans
it (the noise color; for babble, which other items of the split talk) with the same key ending
in 1. So a seed gives byte-identical shards whatever the number of workers or chunk size.

Babble: `BABBLE_TALKERS` other items of the split (chosen by the seeded draw above, loaded by the
worker), each from a random offset, repeated to the item's length and summed; those whose audio
fails to load are left out. A speed or tempo copy's segments scale with its duration.

    prepare:
      augment_seed: 0
      augment:
        - {kind: speed, low: 0.9, high: 0.9}     # Kaldi-style: one slower and one faster copy
        - {kind: speed, low: 1.1, high: 1.1}
        - {kind: noise, copies: 2, low: 5, high: 20, colors: [white, pink, babble]}
        - {kind: reverb}                          # RT60 from the default range, 0.2-0.8 s
"""

from __future__ import annotations

import dataclasses
import zlib
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxseq.audio.augment import apply
from jaxseq.audio.io import AudioError
from jaxseq.config import AugmentSpec
from jaxseq.data.sources import load_item_audio

BABBLE_TALKERS = 3  # other utterances mixed into one babble noise


@dataclasses.dataclass(frozen=True)
class Copy:
    """One augmented copy of a source item, planned in the parent (`plan_copies`)."""

    id: str  # "{item id}~{kind}{n}"
    spec: AugmentSpec  # a noise spec holds the copy's one color
    seed: tuple[int, ...]  # of the copy's np.random.Generator
    babble: tuple[dict[str, Any], ...] = ()  # source items talking in babble noise


def plan_copies(
    source: Sequence[dict[str, Any]],
    index: int,
    item_id: str,
    split: str,
    specs: Sequence[AugmentSpec],
    seed: int,
) -> list[Copy]:
    """The copies of the item at `index` of `source` (see the module docstring)."""
    copies, per_kind = [], Counter()
    for s, spec in enumerate(specs):
        for c in range(spec.copies):
            key = (seed, zlib.crc32(split.encode()), index, s, c)
            planner = np.random.default_rng((*key, 1))
            planned, babble = spec, ()
            if spec.kind == "noise":
                color = spec.colors[int(planner.integers(len(spec.colors)))]
                planned = dataclasses.replace(spec, colors=(color,))
                talkers = min(BABBLE_TALKERS, len(source) - 1)
                if color == "babble" and talkers > 0:
                    others = planner.choice(len(source) - 1, size=talkers, replace=False)
                    babble = tuple(source[int(j) + int(j >= index)] for j in others)  # not itself
            copy_id = f"{item_id}~{spec.kind}{per_kind[spec.kind]}"
            per_kind[spec.kind] += 1
            copies.append(Copy(copy_id, planned, (*key, 0), babble))
    return copies


def augment_copy(
    audio: np.ndarray, item: dict[str, Any], copy: Copy, sample_rate: int
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The copy's audio and the item's segments scaled to it.

    Args:
      audio: the item's float32 [num_samples] at `sample_rate`.

    Returns:
      (float32 [copy_samples], segments in seconds x copy_samples / num_samples).

    Raises:
      ValueError: babble noise with no other utterance that loads.
    """
    babble = []
    for other in copy.babble:
        try:
            babble.append(load_item_audio(other, sample_rate))
        except (AudioError, ValueError):
            continue
    copied = apply(audio, sample_rate, copy.spec, np.random.default_rng(copy.seed), babble)
    scale = copied.shape[0] / audio.shape[0]
    segments = [
        {**seg, "start": seg["start"] * scale, "end": seg["end"] * scale}
        for seg in item.get("segments", ())
    ]
    return copied, segments


def augment_settings(specs: Sequence[AugmentSpec], seed: int) -> dict[str, Any]:
    """What the sidecar fingerprint and dataset.json record: the seed and each spec, its range
    filled in (JSON-ready)."""
    return {"seed": seed, "specs": [_spec_settings(spec) for spec in specs]}


def _spec_settings(spec: AugmentSpec) -> dict[str, Any]:
    low, high = spec.span()
    return {**dataclasses.asdict(spec), "low": low, "high": high, "colors": list(spec.colors)}
