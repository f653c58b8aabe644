"""Model-agnostic greedy and beam search, each one ``jax.lax.while_loop`` that stops early.

The model is a ``step_fn`` that reads one token per hypothesis and returns next-token log-probs:

    step_fn(tokens, cache, position) -> (log_probs, new_cache)
      tokens     int32 [n]        the last token of each hypothesis
      cache      pytree           every leaf has leading axis n (the self-attention KV cache, the
                                  encoder output, ... : it is just a pytree here)
      position   int32 []         the position of ``tokens`` in the decoder input (0-based)
      log_probs  float [n, vocab] normalized next-token log-probabilities

``n`` is ``batch`` in greedy search and in the prompt prefill, and ``batch * beam_size`` (batch
major) in beam search. Callers pass ``init_cache`` with leading axis ``batch``; beam search repeats
each item ``beam_size`` times and, after every step, reorders every leaf with the surviving beams'
parent indices (``jnp.take`` along axis 0).

Prompts (e.g. Whisper's start-of-transcript tokens) are int32 [batch, prompt_len], the same length
for every item. All but the last prompt token are fed first (a prefill scan, outputs dropped); the
last prompt token is the input of search step 0. Outputs hold only the generated tokens.

Beam search follows transformers' ``generate(num_beams=K)`` (the vectorized ``_beam_search``):
  * Each step takes the top ``2K`` of the ``K * vocab`` continuations by raw summed log-prob.
  * Those among the first ``K`` that end in EOS (all of the first ``K`` on the last step, where the
    length limit stops them) become finished: their score is divided by the length penalty once
    and frozen. A separate top-``K`` set of finished hypotheses (by penalized score) is kept.
  * The best ``K`` of the ``2K`` that did not finish live on; the cache follows their parents.
  * ``early_stopping`` as in transformers: ``True`` stops adding finished hypotheses to an item
    once it has ``K``; ``False`` (transformers' default) also stops when the best live raw score,
    penalized at the current length, cannot beat the worst finished one (a heuristic: with a
    length penalty that rewards length it may miss better hypotheses); ``"never"`` never stops,
    which is exact (transformers' ``"never"`` stops only when no improvement is possible).
  * The result is that finished set, best first. A stopped item just stops changing.
Beam size 1 with ``early_stopping`` ``True`` or ``False`` returns the greedy path. Scores are
float32 sums; the token buffers ([batch, 2 * beams, max_new_tokens]) are gathered every step.

Early exit: both searches run at most ``max_new_tokens`` steps and stop as soon as nothing can
change any more: greedy search once every item has emitted EOS, beam search once every item has
stopped adding finished hypotheses (by ``early_stopping`` ``True`` or ``False`` above; with
``"never"`` every step runs). The outputs are exactly those of running every step: the token
buffers start as ``pad_id``, which is what a stopped item would have written after its end.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

StepFn = Callable[[jax.Array, Any, jax.Array], tuple[jax.Array, Any]]
Rules = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]  # (log_probs, generated, t)
EarlyStopping = bool | Literal["never"]


@dataclasses.dataclass(frozen=True)
class LengthPenalty:
    """How a finished hypothesis' summed log-prob ``s`` (EOS log-prob included) is normalized.

    ``kind``: ``"none"`` -> ``s``; ``"power"`` -> ``s / max(n, 1) ** alpha``;
    ``"gnmt"`` -> ``s / ((5 + n) / 6) ** alpha`` (Wu et al. 2016). ``n`` counts the generated
    tokens, the EOS token included iff ``count_eos`` (a hypothesis cut by the length limit has no
    EOS, so ``n = max_new_tokens`` either way). The prompt never counts.
    """

    kind: Literal["none", "power", "gnmt"] = "power"
    alpha: float = 1.0
    count_eos: bool = True

    @classmethod
    def transformers(cls, alpha: float = 1.0) -> LengthPenalty:
        """transformers' ``length_penalty=alpha``: ``s / n ** alpha``, EOS counted."""
        return cls("power", alpha, count_eos=True)

    @classmethod
    def whisper(cls, alpha: float | None = None) -> LengthPenalty:
        """openai-whisper's ``MaximumLikelihoodRanker(alpha)``: EOS not counted in the length."""
        if alpha is None:
            return cls("power", 1.0, count_eos=False)
        return cls("gnmt", alpha, count_eos=False)

    def __call__(self, length: jax.Array) -> jax.Array:
        """Divisor for lengths int [...] -> float32 [...]."""
        n = length.astype(jnp.float32)
        if self.kind == "none":
            return jnp.ones_like(n)
        if self.kind == "power":
            return jnp.maximum(n, 1.0) ** self.alpha
        if self.kind == "gnmt":
            return ((5.0 + n) / 6.0) ** self.alpha
        raise ValueError(f"unknown length penalty kind {self.kind!r}")


class BeamSearchOutput(NamedTuple):
    sequences: jax.Array  # int32 [batch, beams, max_new_tokens], padded with pad_id after EOS
    scores: jax.Array  # float32 [batch, beams], length-penalized, best first (-inf: no hypothesis)
    lengths: jax.Array  # int32 [batch, beams], generated tokens including EOS


class GreedySearchOutput(NamedTuple):
    sequences: jax.Array  # int32 [batch, max_new_tokens], padded with pad_id after EOS
    scores: jax.Array  # float32 [batch], summed log-probs including EOS (no length penalty)
    lengths: jax.Array  # int32 [batch], generated tokens including EOS


def _prefill(step_fn: StepFn, cache: Any, prompt: jax.Array) -> Any:
    """Feed prompt[:, :-1] at positions 0..prompt_len-2 and return the cache ([batch] leaves)."""

    def body(cache, xs):
        token, position = xs  # [batch], []
        _, cache = step_fn(token, cache, position)
        return cache, None

    steps = prompt.shape[1] - 1
    if steps == 0:
        return cache
    positions = jnp.arange(steps, dtype=jnp.int32)
    cache, _ = jax.lax.scan(body, cache, (prompt[:, :-1].T, positions))
    return cache


def process_log_probs(
    log_probs: jax.Array,
    t: jax.Array,
    suppress_ids: Sequence[int],
    begin_suppress_ids: Sequence[int],
    rules: Rules | None,
    generated: jax.Array,
) -> jax.Array:
    """A step's log-probs float32 [n, vocab] with suppressed ids at -inf (`begin_suppress_ids`
    too at the first step, where the traced step index `t` is 0), then
    `rules(log_probs, generated, t)` if given (`generated`: int32 [n, steps], the tokens so
    far): transformers' order."""
    # One select against a [vocab] mask (a constant), fused into the consumers, rather than
    # scatters into [n, vocab] copies: the same values in fewer passes over the log-probs.
    vocab = log_probs.shape[-1]
    if suppress_ids or begin_suppress_ids:
        mask = jnp.asarray(_id_mask(suppress_ids, vocab))  # bool [vocab]
        if begin_suppress_ids:
            mask = mask | ((t == 0) & jnp.asarray(_id_mask(begin_suppress_ids, vocab)))
        log_probs = jnp.where(mask, -jnp.inf, log_probs)
    if rules is not None:
        log_probs = rules(log_probs, generated, t)
    return log_probs


def _id_mask(ids: Sequence[int], vocab: int) -> np.ndarray:
    """bool [vocab], True at `ids` (negative ids count from the end, ids out of range are
    ignored: where `.at[:, ids].set` would write)."""
    mask = np.zeros(vocab, bool)
    mask[[i for i in ids if -vocab <= i < vocab]] = True
    return mask


def first_argmax(x: jax.Array) -> jax.Array:
    """`jnp.argmax(x, axis=-1)` (int32 [...], the first index of the maximum; a NaN counts as
    the maximum) as a max and a min-index reduction, which XLA's CPU backend vectorizes, not
    as one variadic (value, index) reduction, which it does not."""
    top = jnp.max(x, axis=-1, keepdims=True)
    index = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    hit = (x == top) | jnp.isnan(x)
    return jnp.min(jnp.where(hit, index, x.shape[-1]), axis=-1)


def _log_probs(
    step_fn: StepFn, tokens, cache, position, t, suppress_ids, begin_suppress_ids, rules, generated
):
    """One model step, processed (`process_log_probs`): -> (float32 [n, vocab], cache)."""
    log_probs, cache = step_fn(tokens, cache, position)
    log_probs = process_log_probs(
        log_probs.astype(jnp.float32), t, suppress_ids, begin_suppress_ids, rules, generated
    )
    return log_probs, cache


def greedy_search(
    step_fn: StepFn,
    init_cache: Any,
    prompt: jax.Array,
    *,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int | None = None,
    suppress_ids: Sequence[int] = (),
    begin_suppress_ids: Sequence[int] = (),
    rules: Rules | None = None,
) -> GreedySearchOutput:
    """The argmax path; a hypothesis stops at its first EOS (kept) and is padded after it.

    Args:
      step_fn: the model step (module docstring), called with leading axis ``batch``.
      init_cache: pytree, leading axis ``batch`` on every leaf.
      prompt: int32 [batch, prompt_len >= 1].
      max_new_tokens: the most steps (static); the search stops earlier once every item has
        emitted EOS.
      eos_id: end-of-sequence id. pad_id: filler after EOS (default ``eos_id``).
      suppress_ids: ids whose log-prob is -inf at every step.
      begin_suppress_ids: ids whose log-prob is -inf at the first step (transformers'
        ``SuppressTokensAtBeginLogitsProcessor``, e.g. Whisper's blank and end-of-text).
      rules: a static, hashable callable (log_probs [n, vocab], generated int32 [n, steps], t)
        -> log_probs, applied after the suppression at every step (e.g. Whisper's
        `jaxseq.decoding.timestamp_rules.TimestampRules`).
    Returns:
      GreedySearchOutput (sequences [batch, max_new_tokens], scores [batch], lengths [batch]).
    """
    pad_id = eos_id if pad_id is None else pad_id
    prompt = jnp.asarray(prompt, jnp.int32)
    batch, prompt_len = prompt.shape
    cache = _prefill(step_fn, init_cache, prompt)

    def body(carry):
        # t int32 []; tokens [batch]; done bool [batch]; score float32 [batch];
        # lengths int32 [batch]; seqs int32 [batch, max_new_tokens]
        t, tokens, cache, done, score, lengths, seqs = carry
        log_probs, cache = _log_probs(
            step_fn,
            tokens,
            cache,
            prompt_len - 1 + t,
            t,
            suppress_ids,
            begin_suppress_ids,
            rules,
            seqs,
        )
        best = first_argmax(log_probs)  # [batch]
        best_lp = jnp.take_along_axis(log_probs, best[:, None], axis=-1)[:, 0]
        seqs = seqs.at[:, t].set(jnp.where(done, pad_id, best))
        score = score + jnp.where(done, 0.0, best_lp)
        lengths = lengths + (~done).astype(jnp.int32)
        fed = jnp.where(done, eos_id, best)  # finished rows are fed EOS (a valid id)
        return t + 1, fed, cache, done | (best == eos_id), score, lengths, seqs

    def cond(carry):  # stop at the length limit or once every item has emitted EOS
        t, done = carry[0], carry[3]
        return (t < max_new_tokens) & ~jnp.all(done)

    carry = (
        jnp.asarray(0, jnp.int32),
        prompt[:, -1],
        cache,
        jnp.zeros(batch, bool),
        jnp.zeros(batch, jnp.float32),
        jnp.zeros(batch, jnp.int32),
        jnp.full((batch, max_new_tokens), pad_id, jnp.int32),
    )
    *_, score, lengths, seqs = jax.lax.while_loop(cond, body, carry)
    return GreedySearchOutput(seqs, score, lengths)


def beam_search(
    step_fn: StepFn,
    init_cache: Any,
    prompt: jax.Array,
    *,
    beam_size: int,
    max_new_tokens: int,
    eos_id: int,
    length_penalty: LengthPenalty | float = 1.0,
    early_stopping: EarlyStopping = False,
    pad_id: int | None = None,
    suppress_ids: Sequence[int] = (),
    begin_suppress_ids: Sequence[int] = (),
    rules: Rules | None = None,
) -> BeamSearchOutput:
    """Beam search with transformers' semantics (module docstring); jit-able as a whole.

    Args:
      step_fn: the model step, called with leading axis ``batch * beam_size``.
      init_cache: pytree, leading axis ``batch`` on every leaf (repeated per beam here).
      prompt: int32 [batch, prompt_len >= 1], shared by all beams of an item.
      beam_size, max_new_tokens, eos_id, length_penalty, early_stopping, pad_id, suppress_ids,
        begin_suppress_ids, rules: static Python values, as in ``greedy_search`` (the rules see
        each beam's own tokens). A float
        ``length_penalty`` is ``LengthPenalty.transformers(alpha)``.
    Returns:
      BeamSearchOutput (sequences [batch, beam_size, max_new_tokens], scores and lengths
      [batch, beam_size]), best first.
    """
    if beam_size < 1 or max_new_tokens < 1 or early_stopping not in (True, False, "never"):
        raise ValueError(
            f"need beam_size >= 1, max_new_tokens >= 1, early_stopping in (True, False, 'never');"
            f" got {beam_size}, {max_new_tokens}, {early_stopping!r}"
        )
    k, steps = beam_size, max_new_tokens
    pad_id = eos_id if pad_id is None else pad_id
    penalty = length_penalty
    if not isinstance(penalty, LengthPenalty):
        penalty = LengthPenalty.transformers(float(penalty))
    prompt = jnp.asarray(prompt, jnp.int32)
    batch, prompt_len = prompt.shape
    if prompt_len < 1:
        raise ValueError("the prompt needs at least one token (e.g. a start token)")
    cache = _prefill(step_fn, init_cache, prompt)
    cache = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), cache)  # leaves [batch * k, ...]
    batch_offset = (jnp.arange(batch, dtype=jnp.int32) * k)[:, None]  # [batch, 1]
    first_k = jnp.arange(2 * k) < k  # [2k]: only these may finish (transformers)

    def gather(x, index):  # x [batch, m, ...], index [batch, j] -> [batch, j, ...]
        index = index.reshape(index.shape + (1,) * (x.ndim - 2))
        return jnp.take_along_axis(x, index, axis=1)

    def body(carry):
        t, tokens, cache, open_ = carry[0], carry[1], carry[2], carry[-1]
        live_seqs, live_scores, fin_seqs, fin_scores, fin_lens, fin_mask = carry[3:-1]
        # t int32 []; tokens [batch*k]; live_seqs, fin_seqs int32 [batch, k, steps]; live_scores
        # (raw sums), fin_scores (penalized) float32 [batch, k]; fin_lens int32 [batch, k];
        # fin_mask bool [batch, k] (slot holds a hypothesis); open_ bool [batch] (may add more)
        log_probs, cache = _log_probs(
            step_fn,
            tokens,
            cache,
            prompt_len - 1 + t,
            t,
            suppress_ids,
            begin_suppress_ids,
            rules,
            live_seqs.reshape(batch * k, steps),
        )
        vocab = log_probs.shape[-1]
        cand = live_scores[:, :, None] + log_probs.reshape(batch, k, vocab)
        top_scores, top_idx = jax.lax.top_k(cand.reshape(batch, k * vocab), 2 * k)  # [batch, 2k]
        parent, token = top_idx // vocab, (top_idx % vocab).astype(jnp.int32)
        top_seqs = gather(live_seqs, parent).at[:, :, t].set(token)  # [batch, 2k, steps]
        is_eos = token == eos_id
        stops = is_eos | (t == steps - 1)  # [batch, 2k]

        # Finished: the first k candidates that stop, penalized once, merged into the top-k set.
        length = jnp.full_like(token, t + 1)  # generated tokens including this one
        pen_length = length - (is_eos & (not penalty.count_eos))
        add = stops & first_k & open_[:, None]
        new_scores = jnp.where(add, top_scores / penalty(pen_length), -jnp.inf)
        merged = jnp.concatenate([fin_scores, new_scores], axis=1)  # [batch, 3k]
        fin_scores, keep = jax.lax.top_k(merged, k)  # ties keep older hypotheses
        fin_seqs = gather(jnp.concatenate([fin_seqs, top_seqs], axis=1), keep)
        fin_lens = gather(jnp.concatenate([fin_lens, length], axis=1), keep)
        fin_mask = gather(jnp.concatenate([fin_mask, add], axis=1), keep)

        # Live: the best k candidates that did not stop; the cache follows their parents.
        live_scores, pick = jax.lax.top_k(jnp.where(stops, -jnp.inf, top_scores), k)
        live_seqs = gather(top_seqs, pick)
        parents = (gather(parent, pick) + batch_offset).reshape(-1)  # [batch*k] rows of the cache
        cache = jax.tree.map(lambda x: jnp.take(x, parents, axis=0), cache)
        tokens = gather(token, pick).reshape(-1)

        if early_stopping != "never":  # transformers' heuristic, evaluated at the current length
            best_possible = live_scores[:, 0] / penalty(t + 1)  # [batch]
            worst = jnp.where(fin_mask, jnp.min(fin_scores, axis=-1, keepdims=True), -jnp.inf)
            open_ = open_ & jnp.any(best_possible[:, None] > worst, axis=-1)
        if early_stopping is True:  # an item with k finished hypotheses adds no more
            open_ = open_ & ~jnp.all(fin_mask, axis=-1)
        carry = (tokens, cache, live_seqs, live_scores, fin_seqs, fin_scores, fin_lens, fin_mask)
        return (t + 1, *carry, open_)

    def cond(carry):  # a closed item's finished set never changes again
        t, open_ = carry[0], carry[-1]
        return (t < steps) & jnp.any(open_)

    # Only beam 0 is live at the start, so the k beams do not all pick the same tokens.
    live_scores = jnp.full((batch, k), -jnp.inf, jnp.float32).at[:, 0].set(0.0)
    seqs = jnp.full((batch, k, steps), pad_id, jnp.int32)
    carry = (
        jnp.asarray(0, jnp.int32),
        jnp.repeat(prompt[:, -1], k),  # [batch*k]
        cache,
        seqs,
        live_scores,
        seqs,
        jnp.full((batch, k), -jnp.inf, jnp.float32),
        jnp.zeros((batch, k), jnp.int32),
        jnp.zeros((batch, k), bool),
        jnp.ones(batch, bool),
    )
    fin_seqs, fin_scores, fin_lens = jax.lax.while_loop(cond, body, carry)[5:8]
    return BeamSearchOutput(fin_seqs, fin_scores, fin_lens)


def best_sequences(
    decoder: str,
    step_fn: StepFn,
    init_cache: Any,
    prompt: jax.Array,
    *,
    beam_size: int,
    length_penalty: LengthPenalty | float = 1.0,
    **options: Any,
) -> tuple[jax.Array, jax.Array]:
    """The best hypothesis of each item by ``decoder`` ("greedy" or "beam"): (sequences int32
    [batch, max_new_tokens], lengths [batch]). ``options`` go to both searches (max_new_tokens,
    eos_id, suppress_ids, ...)."""
    if decoder == "greedy":
        out = greedy_search(step_fn, init_cache, prompt, **options)
        return out.sequences, out.lengths
    out = beam_search(
        step_fn,
        init_cache,
        prompt,
        beam_size=beam_size,
        length_penalty=length_penalty,
        **options,
    )
    return out.sequences[:, 0], out.lengths[:, 0]  # [batch, max_new_tokens], [batch]
