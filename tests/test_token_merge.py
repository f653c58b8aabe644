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


# --- Windows decoded with timestamp tokens (Whisper), merged on them ---------------------------

TB = 50364  # <|0.00|> in Whisper's multilingual vocabulary
RATE = 100  # window positions in 10 ms steps


def _timestamped_windows(rng: np.random.Generator, words: list[int]):
    """Windows over a random 'recording' of timed segments, each window's tokens as Whisper
    writes them: <|t0|> text <|t1|> ... relative to the window, the last segment cut open
    (a start and its text, no end) where the window ends inside it, stray repeats and noise."""
    segments, t = [], float(rng.uniform(0, 1))
    while t < 40:
        length = float(rng.uniform(0.5, 4))
        segments.append((t, t + length, rng.choice(words, int(rng.integers(1, 6))).tolist()))
        t += length + float(rng.choice([0.0, rng.uniform(0.1, 1.5)]))
    chunk, stride = int(rng.choice([600, 1000])), int(rng.choice([100, 200]))
    total = int(t * RATE)
    windows, start = [], 0
    while True:
        end = min(start + chunk, total)
        last = start + chunk >= total
        left, right = (stride if start else 0), (0 if last else stride)
        ids, latest = [], 0  # timestamps never decrease within a window (the search's rules)
        for a, b, text in segments:
            a, b = a - start / RATE, b - start / RATE
            if b <= 0 or a >= (end - start) / RATE:
                continue
            step_a = max(latest, round(a / 0.02))
            ids.append(TB + step_a)
            ids += text if rng.random() > 0.15 else text[: max(1, len(text) - 1)]
            if b <= (end - start) / RATE:
                latest = max(step_a + 1, round(b / 0.02))
                ids.append(TB + latest)
        windows.append((start, end, left, right, ids))
        if last:
            break
        start += chunk - 2 * stride
    return windows


@pytest.mark.parametrize("seed", range(40))
def test_timestamp_merge_equals_transformers_pipeline(seed, whisper_folder):
    """`merge_timestamped_windows` against transformers' `_decode_asr` (the ASR pipeline's
    Whisper post-processing with `return_timestamps=True`) on windows of random timed text."""
    import transformers

    from jaxseq.inference.timestamp_merge import merge_timestamped_windows
    from jaxseq.inference.windows import Window
    from jaxseq.text.whisper_tokenizer import WhisperTokenizer

    hf = _hf_tokenizer(whisper_folder)
    ours_tok = WhisperTokenizer.from_folder(whisper_folder)
    rng = np.random.default_rng(seed)
    words = [int(i) for i in ours_tok.encode(" one two three four five six seven eight nine")]
    windows = _timestamped_windows(rng, words)
    outputs = [
        {"tokens": np.asarray([ids]), "stride": ((e - s) / RATE, left / RATE, right / RATE)}
        for s, e, left, right, ids in windows
    ]
    _, want = transformers.models.whisper.tokenization_whisper._decode_asr(
        hf, outputs, return_timestamps=True, return_language=False, time_precision=0.02
    )
    got = merge_timestamped_windows(
        [(Window(s, e, left, right), ids) for s, e, left, right, ids in windows],
        rate=RATE,
        timestamp_begin=TB,
        special_ids=ours_tok.special_ids,
        time_precision=0.02,
        decode=ours_tok.decode,
    )
    assert [(g["start"], g["end"], g["text"]) for g in got] == [
        (c["timestamp"][0], c["timestamp"][1], c["text"]) for c in want["chunks"]
    ]
    assert len(got) > 3


_HF_TOKENIZERS: dict = {}


def _hf_tokenizer(folder):
    import transformers

    if folder not in _HF_TOKENIZERS:
        _HF_TOKENIZERS[folder] = transformers.WhisperTokenizerFast.from_pretrained(folder)
    return _HF_TOKENIZERS[folder]
