"""CTC decoding: greedy (best path) and prefix beam search.

The device part is ``ctc_greedy_path`` (an argmax that jits, so that only the ids and their
log-probabilities reach the host); collapsing, the token spans that give timestamps, and beam
search run on the host in NumPy, one utterance at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


@jax.jit
def ctc_greedy_path(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The best path: logits float [batch, frames, vocab] -> (ids int32 [batch, frames], each
    frame's log-probability of its id float32 [batch, frames])."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.argmax(log_probs, axis=-1).astype(jnp.int32), jnp.max(log_probs, axis=-1)


class TokenSpan(NamedTuple):
    """One emitted token of a best path: frames [start, end) of its run, and the highest
    log-probability among them (its spike's)."""

    token: int
    start: int
    end: int
    log_prob: float


def ctc_token_spans(
    ids: np.ndarray, log_probs: np.ndarray, length: int, blank_id: int = 0
) -> list[TokenSpan]:
    """The tokens of a best path with where they sit: ids int [frames] and log_probs float
    [frames] (from ``ctc_greedy_path``; first ``length`` used). The tokens are exactly
    ``ctc_collapse(ids, length, blank_id)``: a run of one id is one token, blanks none."""
    ids, log_probs = np.asarray(ids)[:length], np.asarray(log_probs)[:length]
    if ids.size == 0:
        return []
    starts = np.flatnonzero(np.concatenate([[True], ids[1:] != ids[:-1]]))  # run starts
    ends = np.append(starts[1:], ids.size)
    best = np.maximum.reduceat(log_probs, starts)  # [runs]
    return [
        TokenSpan(int(ids[a]), int(a), int(b), float(p))
        for a, b, p in zip(starts, ends, best, strict=True)
        if ids[a] != blank_id
    ]


def ctc_collapse(ids: np.ndarray, length: int, blank_id: int = 0) -> list[int]:
    """Merge repeated ids, then drop blanks: ids int [frames] (first ``length`` used)."""
    ids = np.asarray(ids)[:length]
    if ids.size == 0:
        return []
    keep = np.concatenate([[True], ids[1:] != ids[:-1]]) & (ids != blank_id)
    return ids[keep].tolist()


def ctc_greedy_decode(
    ids: np.ndarray, lengths: Sequence[int] | np.ndarray, blank_id: int = 0
) -> list[list[int]]:
    """Greedy CTC decoding of a batch of best paths: `ids` int [batch, frames] (from
    ``ctc_greedy_path``, on the device), lengths [batch]."""
    ids = np.asarray(ids)
    return [ctc_collapse(row, int(n), blank_id) for row, n in zip(ids, lengths, strict=True)]


def ctc_prefix_beam_search_nbest(
    log_probs: np.ndarray, length: int, beam_size: int, blank_id: int = 0
) -> list[tuple[list[int], float]]:
    """CTC prefix beam search for one utterance (Graves 2012; Hannun et al. 2014).

    Each kept prefix carries two log-probabilities: of all alignments of the frames so far that
    collapse to it and end in a blank (``blank``) or in its last label (``label``). Per frame a
    prefix may stay (a blank, or its last label again) or grow by one label ``v`` (from both
    endings, except that repeating the last label needs the blank ending). The ``beam_size``
    prefixes of highest total probability are kept. With ``beam_size`` at least the number of
    distinct prefixes the search is exact: scores are the true log p(labeling | frames).

    With ``beam_size=1`` it is a greedy search over prefixes, not over frames: where each frame
    has one dominant symbol it returns the best-path (greedy) labeling; otherwise it may differ,
    since it sums over alignments.

    Args:
      log_probs: float [frames, vocab], normalized log-probabilities (log_softmax output).
      length: number of valid frames.
      beam_size: prefixes kept per frame.
      blank_id: vocabulary index of the blank.

    Returns:
      Up to ``beam_size`` (labeling, log-probability) pairs, best first.
    """
    log_probs = np.asarray(log_probs, np.float64)[:length]
    vocab = log_probs.shape[1]
    prefixes: list[tuple[int, ...]] = [()]
    blank = np.array([0.0])  # [beams], log p(prefix, last frame blank)
    label = np.array([-np.inf])  # [beams], log p(prefix, last frame its last label)
    for frame in log_probs:  # [vocab]
        total = np.logaddexp(blank, label)  # [beams]
        last = np.array([p[-1] if p else -1 for p in prefixes])  # [beams]
        # Staying on the same prefix.
        stay_blank = total + frame[blank_id]
        stay_label = np.where(last >= 0, label + frame[np.maximum(last, 0)], -np.inf)
        # Growing by one label: [beams, vocab].
        grow = total[:, None] + frame[None, :]
        is_last = np.arange(vocab)[None, :] == last[:, None]
        grow = np.where(is_last, blank[:, None] + frame[None, :], grow)
        grow[:, blank_id] = -np.inf
        # A grown prefix that is already a beam merges into that beam's label ending.
        index = {p: i for i, p in enumerate(prefixes)}
        for j, p in enumerate(prefixes):
            i = index.get(p[:-1]) if p else None
            if i is not None:
                stay_label[j] = np.logaddexp(stay_label[j], grow[i, p[-1]])
                grow[i, p[-1]] = -np.inf
        # Other grown prefixes are new and distinct: only the best beam_size can survive.
        flat = grow.ravel()
        top = np.argpartition(-flat, min(beam_size, flat.size) - 1)[:beam_size]
        top = top[np.isfinite(flat[top])]
        parents, labels = np.divmod(top, vocab)
        candidates = prefixes + [
            prefixes[i] + (int(v),) for i, v in zip(parents, labels, strict=True)
        ]
        cand_blank = np.concatenate([stay_blank, np.full(top.size, -np.inf)])
        cand_label = np.concatenate([stay_label, flat[top]])
        keep = np.argsort(-np.logaddexp(cand_blank, cand_label), kind="stable")[:beam_size]
        prefixes = [candidates[k] for k in keep]
        blank, label = cand_blank[keep], cand_label[keep]
    scores = np.logaddexp(blank, label)
    order = np.argsort(-scores, kind="stable")
    return [(list(prefixes[k]), float(scores[k])) for k in order]


def ctc_prefix_beam_search(
    log_probs: np.ndarray, length: int, beam_size: int, blank_id: int = 0
) -> list[int]:
    """Best labeling of one utterance by prefix beam search; see ``ctc_prefix_beam_search_nbest``.

    Args:
      log_probs: float [frames, vocab], normalized log-probabilities.
    """
    return ctc_prefix_beam_search_nbest(log_probs, length, beam_size, blank_id)[0][0]


def ctc_batch_prefix_beam_search(
    log_probs: np.ndarray,
    lengths: Sequence[int] | np.ndarray,
    beam_size: int,
    blank_id: int = 0,
) -> list[list[int]]:
    """Prefix beam search over a batch: log_probs [batch, frames, vocab], lengths [batch]."""
    log_probs = np.asarray(log_probs)
    return [
        ctc_prefix_beam_search(lp, int(n), beam_size, blank_id)
        for lp, n in zip(log_probs, lengths, strict=True)
    ]
