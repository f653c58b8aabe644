"""Merging the token sequences of overlapping windows: equal to transformers' chunked-Whisper
merge (`_find_longest_common_sequence`) on random and planted overlaps, and, on windows cut from
one known sequence, nothing lost and nothing twice at the boundaries."""

from __future__ import annotations

import numpy as np
import pytest
from transformers.models.whisper.tokenization_whisper import _find_longest_common_sequence

from jaxseq.inference.merge import merge_overlapping


@pytest.mark.parametrize("seed", range(60))
def test_equals_transformers_merge(seed):
    rng = np.random.default_rng(seed)
    vocab = int(rng.choice([3, 8, 50]))  # small vocabularies: many spurious matches and ties
    truth = rng.integers(0, vocab, int(rng.integers(0, 60))).tolist()
    sequences, start = [], 0
    for _ in range(int(rng.integers(1, 6))):
        length = int(rng.integers(0, 25))
        seq = truth[start : start + length]
        if rng.random() < 0.3 and seq:  # a window that got a token wrong
            seq[int(rng.integers(len(seq)))] = int(rng.integers(vocab))
        sequences.append(seq)
        start += max(length - int(rng.integers(0, 10)), 0)
    assert merge_overlapping(sequences) == _find_longest_common_sequence(sequences)


def test_windows_of_one_sequence_merge_back_to_it():
    rng = np.random.default_rng(0)
    truth = rng.integers(100, 50000, 400).tolist()  # a long transcript, distinct-ish tokens
    for overlap in (3, 8, 20):
        starts = list(range(0, 400, 40))
        windows = [truth[s : s + 40 + overlap] for s in starts]  # tokens straddle each cut
        assert merge_overlapping(windows) == truth


def test_without_overlap_the_windows_are_concatenated():
    assert merge_overlapping([[1, 2, 3], [4, 5], [], [6]]) == [1, 2, 3, 4, 5, 6]
    assert merge_overlapping([]) == [] and merge_overlapping([[7, 7]]) == [7, 7]
