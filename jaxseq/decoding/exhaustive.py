"""Exhaustive search: the most probable sequence over every sequence a step model can emit.

An oracle for tiny vocabularies and lengths (the rnn family's ``eval.decoder=exhaustive``, and
the tests): it scores all ``vocab ** max_new_tokens`` continuations, so it is exact where greedy
and beam search are heuristics. The model is the
``step_fn(tokens, cache, position) -> (log_probs, cache)`` of ``jaxseq.decoding.beam_search``,
and the candidates are the ones beam search chooses among: sequences that end at their first
EOS (kept), or that reach ``max_new_tokens`` without one. Scores are summed log-probs (EOS
included), with no length penalty.

The search expands the full tree, one level per step: at step t each item has ``vocab ** t``
rows, batch major (item i's rows are contiguous), so ``step_fn`` sees ``n = batch * vocab ** t``
rows, grouped per item as in beam search. A finished row keeps one child (EOS, score unchanged)
and its other children score -inf.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxseq.decoding.beam_search import StepFn


class ExhaustiveOutput(NamedTuple):
    sequences: jax.Array  # int32 [batch, max_new_tokens], padded with pad_id after EOS
    scores: jax.Array  # float32 [batch], the summed log-probs of the best sequence
    lengths: jax.Array  # int32 [batch], generated tokens including EOS


def exhaustive_search(
    step_fn: StepFn,
    init_cache: Any,
    prompt: jax.Array,
    *,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int | None = None,
    max_rows: int = 1 << 20,
) -> ExhaustiveOutput:
    """The argmax-probability sequence per item, by enumerating every sequence.

    Args:
      step_fn: the model step (``jaxseq.decoding.beam_search``).
      init_cache: pytree, leading axis ``batch`` on every leaf.
      prompt: int32 [batch, prompt_len >= 1]; all but its last token are fed first.
      max_new_tokens: the longest sequence (EOS included).
      eos_id, pad_id: the end id, and the filler after it (default ``eos_id``).
      max_rows: refuse a search that would need more rows than this (the tree grows as
        ``batch * vocab ** max_new_tokens``).
    Returns:
      ExhaustiveOutput with the best sequence of each item (ties: the lowest token ids).
    """
    pad_id = eos_id if pad_id is None else pad_id
    prompt = jnp.asarray(prompt, jnp.int32)
    batch, prompt_len = prompt.shape
    cache = init_cache
    for position in range(prompt_len - 1):
        _, cache = step_fn(prompt[:, position], cache, jnp.int32(position))
    tokens = prompt[:, -1]  # [batch · rows]
    seqs = jnp.zeros((batch, 1, 0), jnp.int32)  # [batch, rows, t]
    scores = jnp.zeros((batch, 1), jnp.float32)
    done = jnp.zeros((batch, 1), bool)
    lengths = jnp.zeros((batch, 1), jnp.int32)
    for t in range(max_new_tokens):
        log_probs, cache = step_fn(tokens, cache, jnp.int32(prompt_len - 1 + t))
        rows = seqs.shape[1]
        vocab = log_probs.shape[-1]
        if batch * rows * vocab > max_rows:
            raise ValueError(
                f"exhaustive search would need {batch * rows * vocab} rows at step {t + 1} "
                f"(vocabulary {vocab}, {max_new_tokens} steps); it is for tiny problems only"
            )
        log_probs = log_probs.astype(jnp.float32).reshape(batch, rows, vocab)
        token = jnp.arange(vocab, dtype=jnp.int32)[None, None, :]  # [1, 1, vocab]
        # A finished row has one child: EOS again, its score unchanged; the others are -inf.
        kept = jnp.where(token == eos_id, scores[..., None], -jnp.inf)
        scores = jnp.where(done[..., None], kept, scores[..., None] + log_probs)
        emitted = jnp.where(done[..., None], pad_id, token)  # [batch, rows, vocab]
        lengths = jnp.where(done[..., None], lengths[..., None], jnp.full_like(token, t + 1))
        done = done[..., None] | (token == eos_id)
        seqs = jnp.concatenate(
            [jnp.repeat(seqs, vocab, axis=1), emitted.reshape(batch, rows * vocab, 1)], axis=2
        )  # child r·vocab + v of parent r
        scores, done, lengths = (x.reshape(batch, rows * vocab) for x in (scores, done, lengths))
        tokens = jnp.where(done, eos_id, jnp.tile(jnp.arange(vocab), rows)[None]).reshape(-1)
        if t + 1 < max_new_tokens:
            cache = jax.tree.map(functools.partial(jnp.repeat, repeats=vocab, axis=0), cache)
    best = jnp.argmax(scores, axis=1)  # [batch]
    pick = lambda x: jnp.take_along_axis(x, best[:, None], axis=1)[:, 0]  # noqa: E731
    sequences = jnp.take_along_axis(seqs, best[:, None, None], axis=1)[:, 0]
    return ExhaustiveOutput(sequences, pick(scores), pick(lengths))
