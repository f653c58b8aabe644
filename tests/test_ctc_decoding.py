"""CTC greedy decoding and prefix beam search against an exhaustive float64 oracle."""

from __future__ import annotations

import itertools
from collections import defaultdict

import numpy as np
import pytest

from jaxseq.decoding.ctc import (
    ctc_batch_prefix_beam_search,
    ctc_collapse,
    ctc_greedy_decode,
    ctc_greedy_path,
    ctc_prefix_beam_search,
    ctc_prefix_beam_search_nbest,
    ctc_token_spans,
)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return (
        x
        - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - x.max(-1, keepdims=True)
    )


def one_hot_logits(path: list[int], vocab: int) -> np.ndarray:
    """[frames, vocab] logits whose argmax at frame t is path[t]."""
    logits = np.zeros((len(path), vocab), np.float32)
    logits[np.arange(len(path)), path] = 5.0
    return logits


def oracle(log_probs: np.ndarray, blank_id: int = 0) -> dict[tuple[int, ...], float]:
    """log p(labeling) for every labeling, by enumerating all vocab**frames alignments."""
    frames, vocab = log_probs.shape
    probs: dict[tuple[int, ...], float] = defaultdict(float)
    for path in itertools.product(range(vocab), repeat=frames):
        merged = [k for i, k in enumerate(path) if i == 0 or k != path[i - 1]]
        labeling = tuple(k for k in merged if k != blank_id)
        probs[labeling] += np.exp(log_probs[np.arange(frames), path].sum())
    return {labeling: float(np.log(p)) for labeling, p in probs.items()}


def test_collapse_keeps_repeats_separated_by_blank_and_merges_others():
    assert ctc_collapse(np.array([0, 1, 1, 0, 1, 2, 2, 2, 0, 0, 3]), 11) == [1, 1, 2, 3]
    assert ctc_collapse(np.array([1, 1, 1, 2, 0, 9, 9]), 5) == [1, 2]  # length cuts at frame 5
    assert ctc_collapse(np.array([0, 0, 0]), 3) == []
    assert ctc_collapse(np.array([4, 4]), 0) == []
    assert ctc_collapse(np.array([3, 0, 0, 3, 1]), 5, blank_id=3) == [0, 1]


def test_greedy_decode_on_hand_made_logits():
    paths = [[0, 1, 1, 0, 1, 2, 2, 0], [2, 2, 2, 2, 0, 0, 1, 1], [0] * 8]
    logits = np.stack([one_hot_logits(p, 3) for p in paths])
    np.testing.assert_array_equal(np.asarray(ctc_greedy_path(logits)[0]), paths)
    ids = ctc_greedy_path(logits)[0]
    assert ctc_greedy_decode(ids, [8, 6, 8]) == [[1, 1, 2], [2], []]
    assert ctc_greedy_decode(ids, [8, 8, 8], blank_id=2) == [[0, 1, 0, 1, 0], [0, 1], [0]]


@pytest.mark.parametrize("seed", range(40))
def test_wide_beam_equals_exhaustive_oracle(seed):
    rng = np.random.default_rng(seed)
    frames, vocab = int(rng.integers(1, 6)), int(rng.integers(2, 4))
    blank_id = int(rng.integers(vocab))
    log_probs = log_softmax(rng.normal(scale=1.5, size=(frames, vocab)))
    exact = oracle(log_probs, blank_id)
    nbest = ctc_prefix_beam_search_nbest(log_probs, frames, beam_size=64, blank_id=blank_id)
    # Every labeling is reachable with a 64-wide beam (at most 2**5 - 1 prefixes per frame).
    assert len(nbest) == len(exact)
    best = max(exact, key=exact.get)
    assert nbest[0][0] == list(best)
    assert ctc_prefix_beam_search(log_probs, frames, 64, blank_id) == list(best)
    for labeling, score in nbest:
        assert abs(score - exact[tuple(labeling)]) <= 1e-6
    scores = [s for _, s in nbest]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("seed", range(10))
def test_narrow_beam_scores_are_exact_for_the_prefixes_it_keeps(seed):
    rng = np.random.default_rng(100 + seed)
    log_probs = log_softmax(rng.normal(size=(5, 3)))
    exact = oracle(log_probs)
    nbest = ctc_prefix_beam_search_nbest(log_probs, 5, beam_size=3)
    assert len(nbest) == 3
    # A pruned search can only lose probability mass, never invent it.
    for labeling, score in nbest:
        assert score <= exact[tuple(labeling)] + 1e-9


def test_beam_search_beats_greedy_by_summing_alignments():
    # Two frames, p(blank) = 0.6, p(a) = 0.4: best path "--" -> "" (0.36), but
    # p("a") = p(aa) + p(a-) + p(-a) = 0.16 + 0.24 + 0.24 = 0.64.
    log_probs = np.log(np.array([[0.6, 0.4], [0.6, 0.4]]))
    assert ctc_greedy_decode(ctc_greedy_path(log_probs[None])[0], [2]) == [[]]
    assert ctc_prefix_beam_search(log_probs, 2, beam_size=2) == [1]
    (best, score), *_ = ctc_prefix_beam_search_nbest(log_probs, 2, beam_size=2)
    assert best == [1] and abs(score - np.log(0.64)) < 1e-12
    assert oracle(log_probs)[(1,)] == pytest.approx(np.log(0.64), abs=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_beam_one_matches_greedy_when_frames_are_peaked(seed):
    # Documented: beam 1 is a greedy search over prefixes; when each frame has one dominant
    # symbol (here p >= ~0.99) that is the best-path labeling.
    rng = np.random.default_rng(200 + seed)
    path = rng.integers(0, 4, size=12)
    logits = rng.normal(size=(12, 4)).astype(np.float32)
    logits[np.arange(12), path] += 8.0
    log_probs = log_softmax(logits)
    assert ctc_prefix_beam_search(log_probs, 12, beam_size=1) == ctc_collapse(path, 12)


def test_batch_search_uses_lengths():
    rng = np.random.default_rng(5)
    log_probs = np.stack([log_softmax(rng.normal(size=(5, 3))) for _ in range(3)])
    lengths = [5, 3, 0]
    decoded = ctc_batch_prefix_beam_search(log_probs, lengths, beam_size=64)
    for lp, n, labels in zip(log_probs, lengths, decoded, strict=True):
        exact = oracle(lp[:n])
        assert labels == list(max(exact, key=exact.get))
    assert decoded[2] == []


def test_the_task_decodes_greedily_from_device_ids():
    """CTCTask: greedy predict_fn returns int32 best-path ids and their log-probabilities (no
    [batch, frames, vocab] array leaves the device), and decoding them gives the texts of the
    log-probs' best paths."""
    import jax

    from jaxseq.config import load_config
    from jaxseq.tasks.ctc import CTCTask
    from tests.conftest import TINY_CONFIG

    cfg = load_config(TINY_CONFIG)
    task = CTCTask.from_dataset(cfg, {"frontend": {"n_mels": 80}, "text": {"charset": "abc '"}})
    batch = task.dummy_batch(3, 64)
    batch["features"] = np.random.default_rng(0).normal(size=batch["features"].shape)
    batch["feature_lengths"] = np.array([64, 40, 9], np.int32)
    params = task.init_variables(jax.random.PRNGKey(0), batch)["params"]
    ids, best, lengths = task.predict_fn(params, batch, "greedy", 1)
    log_probs, same = task.predict_fn(params, batch, "prefix_beam", 1)
    assert ids.dtype == np.int32 and ids.shape == log_probs.shape[:2]
    np.testing.assert_array_equal(lengths, same)
    paths = np.argmax(np.asarray(log_probs), -1)
    np.testing.assert_allclose(best, np.max(np.asarray(log_probs), -1), rtol=1e-6, atol=1e-6)
    blank = task.tokenizer.blank_id
    rows = zip(paths, lengths, strict=True)
    expected = [task.tokenizer.decode(ctc_collapse(p, n, blank)) for p, n in rows]
    assert task.decode((ids, best, lengths), "greedy", 1) == expected
    assert any(expected), "an all-blank output would not test the collapse"


@pytest.mark.parametrize("seed", range(20))
def test_token_spans_are_the_collapsed_tokens_at_their_runs(seed):
    """ctc_token_spans: the tokens of ctc_collapse, each at the frames of its run, with the
    run's highest log-probability; checked against a frame-by-frame loop."""
    rng = np.random.default_rng(seed)
    frames, blank = int(rng.integers(0, 30)), int(rng.integers(3))
    ids = rng.integers(0, 3, frames)
    scores = rng.normal(size=frames)
    length = int(rng.integers(0, frames + 1))
    spans = ctc_token_spans(ids, scores, length, blank)
    assert [s.token for s in spans] == ctc_collapse(ids, length, blank)
    expected, t = [], 0
    while t < length:
        end = t
        while end < length and ids[end] == ids[t]:
            end += 1
        if ids[t] != blank:
            expected.append((int(ids[t]), t, end, float(scores[t:end].max())))
        t = end
    assert [tuple(s) for s in spans] == expected
