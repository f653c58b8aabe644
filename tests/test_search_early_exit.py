"""Early exit of greedy and beam search: the outputs of running every step, in fewer steps.

The reference is the fixed-length search jaxseq had before (one ``lax.scan`` over all
``max_new_tokens`` steps), kept here as it was, except that the reference beam search also
returns, per step, which items may still add finished hypotheses (``open_``): the step after
which no item is open is where an early exit may stop.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseq.decoding.beam_search import (
    BeamSearchOutput,
    GreedySearchOutput,
    LengthPenalty,
    beam_search,
    greedy_search,
)

VOCAB, EOS, HIDDEN, MAX_POS = 7, 0, 3, 16
BATCH, STEPS = 4, 10
SEEDS = range(4)

# ------------------------------------------------------------ the fixed-length reference search


def ref_prefill(step_fn, cache, prompt):
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


def ref_log_probs(step_fn, tokens, cache, position, first, suppress_ids, begin_suppress_ids):
    log_probs, cache = step_fn(tokens, cache, position)
    log_probs = log_probs.astype(jnp.float32)
    if suppress_ids:
        log_probs = log_probs.at[:, jnp.asarray(suppress_ids, jnp.int32)].set(-jnp.inf)
    if begin_suppress_ids:
        begin = log_probs.at[:, jnp.asarray(begin_suppress_ids, jnp.int32)].set(-jnp.inf)
        log_probs = jnp.where(first, begin, log_probs)
    return log_probs, cache


def ref_greedy_search(
    step_fn,
    init_cache: Any,
    prompt: jax.Array,
    *,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int | None = None,
    suppress_ids: Sequence[int] = (),
    begin_suppress_ids: Sequence[int] = (),
) -> GreedySearchOutput:
    pad_id = eos_id if pad_id is None else pad_id
    prompt = jnp.asarray(prompt, jnp.int32)
    batch, prompt_len = prompt.shape
    cache = ref_prefill(step_fn, init_cache, prompt)

    def body(carry, position):
        tokens, cache, done, score = carry  # [batch], pytree, bool [batch], float32 [batch]
        first = position == prompt_len - 1
        log_probs, cache = ref_log_probs(
            step_fn, tokens, cache, position, first, suppress_ids, begin_suppress_ids
        )
        best = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)  # [batch]
        best_lp = jnp.take_along_axis(log_probs, best[:, None], axis=-1)[:, 0]
        out = jnp.where(done, pad_id, best)
        score = score + jnp.where(done, 0.0, best_lp)
        new_done = done | (best == eos_id)
        fed = jnp.where(done, eos_id, best)  # finished rows are fed EOS (a valid id)
        return (fed, cache, new_done, score), (out, ~done)

    positions = prompt_len - 1 + jnp.arange(max_new_tokens, dtype=jnp.int32)
    carry = (prompt[:, -1], cache, jnp.zeros(batch, bool), jnp.zeros(batch, jnp.float32))
    (_, _, _, score), (tokens, alive) = jax.lax.scan(body, carry, positions)  # [steps, batch]
    return GreedySearchOutput(tokens.T, score, alive.sum(0).astype(jnp.int32))


def ref_beam_search(
    step_fn,
    init_cache: Any,
    prompt: jax.Array,
    *,
    beam_size: int,
    max_new_tokens: int,
    eos_id: int,
    length_penalty: LengthPenalty | float = 1.0,
    early_stopping: bool | str = False,
    pad_id: int | None = None,
    suppress_ids: Sequence[int] = (),
    begin_suppress_ids: Sequence[int] = (),
) -> tuple[BeamSearchOutput, jax.Array]:
    """The previous beam search; also returns open_ after each step, bool [steps, batch]."""
    k, steps = beam_size, max_new_tokens
    pad_id = eos_id if pad_id is None else pad_id
    penalty = length_penalty
    if not isinstance(penalty, LengthPenalty):
        penalty = LengthPenalty.transformers(float(penalty))
    prompt = jnp.asarray(prompt, jnp.int32)
    batch, prompt_len = prompt.shape
    cache = ref_prefill(step_fn, init_cache, prompt)
    cache = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), cache)  # leaves [batch * k, ...]
    batch_offset = (jnp.arange(batch, dtype=jnp.int32) * k)[:, None]  # [batch, 1]
    first_k = jnp.arange(2 * k) < k  # [2k]: only these may finish (transformers)

    def gather(x, index):  # x [batch, m, ...], index [batch, j] -> [batch, j, ...]
        index = index.reshape(index.shape + (1,) * (x.ndim - 2))
        return jnp.take_along_axis(x, index, axis=1)

    def body(carry, t):
        tokens, cache, live_seqs, live_scores, fin_seqs, fin_scores, fin_lens, fin_mask, open_ = (
            carry
        )
        log_probs, cache = ref_log_probs(
            step_fn, tokens, cache, prompt_len - 1 + t, t == 0, suppress_ids, begin_suppress_ids
        )
        vocab = log_probs.shape[-1]
        cand = live_scores[:, :, None] + log_probs.reshape(batch, k, vocab)
        top_scores, top_idx = jax.lax.top_k(cand.reshape(batch, k * vocab), 2 * k)  # [batch, 2k]
        parent, token = top_idx // vocab, (top_idx % vocab).astype(jnp.int32)
        top_seqs = gather(live_seqs, parent).at[:, :, t].set(token)  # [batch, 2k, steps]
        is_eos = token == eos_id
        stops = is_eos | (t == steps - 1)  # [batch, 2k]

        length = jnp.full_like(token, t + 1)  # generated tokens including this one
        pen_length = length - (is_eos & (not penalty.count_eos))
        full = jnp.all(fin_mask, axis=-1) & (early_stopping is True)  # [batch]
        add = stops & first_k & (open_ & ~full)[:, None]
        new_scores = jnp.where(add, top_scores / penalty(pen_length), -jnp.inf)
        merged = jnp.concatenate([fin_scores, new_scores], axis=1)  # [batch, 3k]
        fin_scores, keep = jax.lax.top_k(merged, k)  # ties keep older hypotheses
        fin_seqs = gather(jnp.concatenate([fin_seqs, top_seqs], axis=1), keep)
        fin_lens = gather(jnp.concatenate([fin_lens, length], axis=1), keep)
        fin_mask = gather(jnp.concatenate([fin_mask, add], axis=1), keep)

        live_scores, pick = jax.lax.top_k(jnp.where(stops, -jnp.inf, top_scores), k)
        live_seqs = gather(top_seqs, pick)
        parents = (gather(parent, pick) + batch_offset).reshape(-1)  # [batch*k] rows of the cache
        cache = jax.tree.map(lambda x: jnp.take(x, parents, axis=0), cache)
        tokens = gather(token, pick).reshape(-1)

        if early_stopping != "never":  # transformers' heuristic, evaluated at the current length
            best_possible = live_scores[:, 0] / penalty(jnp.asarray(t + 1))  # [batch]
            worst = jnp.where(fin_mask, jnp.min(fin_scores, axis=-1, keepdims=True), -jnp.inf)
            open_ = open_ & jnp.any(best_possible[:, None] > worst, axis=-1)
        carry = (tokens, cache, live_seqs, live_scores, fin_seqs, fin_scores, fin_lens, fin_mask)
        # what may still change after this step (the early-exit test's addition)
        return carry + (open_,), open_ & ~(jnp.all(fin_mask, axis=-1) & (early_stopping is True))

    live_scores = jnp.full((batch, k), -jnp.inf, jnp.float32).at[:, 0].set(0.0)
    seqs = jnp.full((batch, k, steps), pad_id, jnp.int32)
    carry = (
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
    carry, still_open = jax.lax.scan(body, carry, jnp.arange(steps, dtype=jnp.int32))
    _, _, _, _, fin_seqs, fin_scores, fin_lens, _, _ = carry
    return BeamSearchOutput(fin_seqs, fin_scores, fin_lens), still_open


# ------------------------------------------------------------------------ a random toy model

POSITIONS: list[int] = []  # every position a step_fn was called at (host callback)


def random_model(seed: int) -> dict:
    """A toy decoder whose next token depends on its whole history; its EOS logit grows with
    the position, so that hypotheses end after different numbers of steps (or, in a loop of
    likelier tokens, not at all)."""
    rng = np.random.default_rng(seed)
    params = {
        "last": rng.normal(size=(VOCAB, VOCAB)),  # logits by last token
        "pos": rng.normal(size=(MAX_POS, VOCAB)),  # logits by position
        "embed": rng.normal(size=(VOCAB, HIDDEN)),  # running-history features
        "out": rng.normal(size=(HIDDEN, VOCAB)),
    }
    params["pos"][:, EOS] = np.arange(MAX_POS) - 5.0 + rng.normal(size=MAX_POS)
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)


def counted_step(params, tokens, cache, position):
    """tokens int32 [n], cache float32 [n, hidden] -> (log_probs [n, vocab], cache); records
    `position` on the host."""
    jax.debug.callback(lambda p: POSITIONS.append(int(p)), position)
    logits = params["last"][tokens] + params["pos"][position] + cache @ params["out"]
    return jax.nn.log_softmax(logits, axis=-1), 0.5 * cache + params["embed"][tokens]


SEARCHES = {
    "greedy": greedy_search,
    "beam": beam_search,
    "ref_greedy": ref_greedy_search,
    "ref_beam": ref_beam_search,
}


@functools.partial(jax.jit, static_argnames=("search", "options"))
def _run(params, cache, prompt, search, options):
    step = functools.partial(counted_step, params)
    return SEARCHES[search](step, cache, prompt, **dict(options))


def run(search: str, params, prompt_len: int, seed: int, **options):
    """(search output, the number of search steps run): a random cache and prompt of `seed`."""
    rng = np.random.default_rng(100 + seed)
    cache = jnp.asarray(rng.normal(size=(BATCH, HIDDEN)), jnp.float32)
    prompt = jnp.asarray(rng.integers(1, VOCAB, (BATCH, prompt_len)), jnp.int32)
    POSITIONS.clear()
    out = jax.block_until_ready(_run(params, cache, prompt, search, tuple(options.items())))
    jax.effects_barrier()
    search_steps = [p for p in POSITIONS if p >= prompt_len - 1]  # not the prefill's
    assert search_steps == list(range(prompt_len - 1, prompt_len - 1 + len(search_steps)))
    return out, len(search_steps)


def assert_same(out, ref):
    for name in ref._fields:  # token ids (with the padding), lengths and scores, bit for bit
        np.testing.assert_array_equal(getattr(out, name), getattr(ref, name), err_msg=name)


# ------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"pad_id": 5, "begin_suppress_ids": (EOS,)},
        {"suppress_ids": (EOS,)},  # nothing ends before max_new_tokens
    ],
)
@pytest.mark.parametrize("prompt_len", [1, 2])
def test_greedy_early_exit_matches_fixed_length_search(options, prompt_len):
    never_ends = EOS in options.get("suppress_ids", ())
    ended_at = []
    for seed in SEEDS:  # one compilation per search, several random models
        params = random_model(seed)
        opts = dict(max_new_tokens=STEPS, eos_id=EOS, **options)
        ref, ref_steps = run("ref_greedy", params, prompt_len, seed, **opts)
        out, steps = run("greedy", params, prompt_len, seed, **opts)
        assert ref_steps == STEPS
        assert_same(out, ref)
        # it stops right after the step at which the last item emitted EOS
        assert steps == int(np.max(ref.lengths))
        ended_at.append(ref.lengths.tolist())
    lengths = np.array(ended_at)  # [seeds, batch]
    if never_ends:
        assert (lengths == STEPS).all()
    else:  # items end at different steps, and some searches stop early
        assert any(len(set(row)) > 1 for row in ended_at)
        assert lengths.max(axis=1).min() < STEPS


BEAM_CASES = [  # (beam_size, early_stopping, length_penalty, suppress EOS)
    (3, False, LengthPenalty.transformers(1.0), False),
    (3, False, LengthPenalty.whisper(None), False),
    (3, False, LengthPenalty("none"), False),
    (3, False, LengthPenalty.transformers(1.0), True),  # nothing ends before the limit
    (1, False, LengthPenalty.transformers(1.0), False),
    (3, True, LengthPenalty.transformers(1.0), False),
    (2, True, LengthPenalty.whisper(0.6), True),
    (3, "never", LengthPenalty.transformers(1.0), False),
]


@pytest.mark.parametrize(("beam_size", "early_stopping", "lp", "no_eos"), BEAM_CASES)
def test_beam_early_exit_matches_fixed_length_search(beam_size, early_stopping, lp, no_eos):
    opts = dict(
        beam_size=beam_size,
        max_new_tokens=STEPS,
        eos_id=EOS,
        length_penalty=lp,
        early_stopping=early_stopping,
        suppress_ids=(EOS,) if no_eos else (),
    )
    early, lengths = [], []
    for seed in SEEDS:
        params = random_model(seed)
        (ref, still_open), ref_steps = run("ref_beam", params, 2, seed, **opts)
        out, steps = run("beam", params, 2, seed, **opts)
        assert ref_steps == STEPS
        assert_same(out, ref)
        closed = np.flatnonzero(~np.asarray(still_open).any(axis=1))  # steps after which none
        assert steps == (closed[0] + 1 if len(closed) else STEPS)  # stops at the first of them
        early.append(steps < STEPS)
        lengths += np.asarray(ref.lengths).ravel().tolist()
    # With EOS, hypotheses of different lengths, and most searches stop early; without EOS
    # every hypothesis runs to the length limit, and "never" runs every step.
    if no_eos:
        assert set(lengths) == {STEPS}
    else:
        assert len(set(lengths)) > 1
    if no_eos or early_stopping == "never":
        assert not any(early)
    else:
        assert sum(early) >= 2
