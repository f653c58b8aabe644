"""Greedy and beam search vs a float64 NumPy oracle, a hand-built Markov chain and themselves."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseq.decoding.beam_search import LengthPenalty, beam_search, greedy_search

HIDDEN = 3
MAX_POS = 8


def random_model(seed: int, vocab: int, eos_id: int, eos_bias: float = 0.0) -> dict:
    """Parameters of a toy decoder whose next token depends on the whole history via its cache."""
    rng = np.random.default_rng(seed)
    params = {
        "last": rng.normal(size=(vocab, vocab)),  # logits by last token
        "prev": rng.normal(size=(vocab, vocab)),  # logits by the token before it (from the cache)
        "pos": rng.normal(size=(MAX_POS, vocab)),  # logits by position
        "embed": rng.normal(size=(vocab, HIDDEN)),  # running-history features
        "out": rng.normal(size=(HIDDEN, vocab)),
    }
    params["last"][:, eos_id] += eos_bias
    return params


def jax_step(params, tokens, cache, position):
    """tokens int32 [n], cache {"prev": int32 [n], "hist": float32 [n, hidden]} -> [n, vocab]."""
    p = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    logits = p["last"][tokens] + p["prev"][cache["prev"]] + p["pos"][position]
    logits = logits + cache["hist"] @ p["out"]
    new_cache = {"prev": tokens, "hist": 0.5 * cache["hist"] + p["embed"][tokens]}
    return jax.nn.log_softmax(logits, axis=-1), new_cache


def np_step(params, token, cache, position):
    """The same model for one hypothesis in float64 NumPy: -> (log_probs [vocab], cache)."""
    prev, hist = cache
    logits = params["last"][token] + params["prev"][prev] + params["pos"][position]
    logits = logits + hist @ params["out"]
    logits = logits - logits.max()
    log_probs = logits - np.log(np.exp(logits).sum())
    return log_probs, (token, 0.5 * hist + params["embed"][token])


def init_cache(batch: int, seed: int = 0) -> dict:
    hist = np.random.default_rng(seed).normal(size=(batch, HIDDEN))
    return {"prev": jnp.zeros(batch, jnp.int32), "hist": jnp.asarray(hist, jnp.float32)}


def np_penalty(score: float, n_with_eos: int, ended_eos: bool, lp: LengthPenalty) -> float:
    n = n_with_eos - (ended_eos and not lp.count_eos)
    if lp.kind == "none":
        return score
    if lp.kind == "power":
        return score / max(n, 1) ** lp.alpha
    return score / ((5 + n) / 6) ** lp.alpha


def exhaustive(params, cache_np, prompt, steps, eos_id, lp):
    """Every hypothesis (ended by EOS or by the length limit), best first: (score, tokens)."""
    cache = cache_np
    for pos, token in enumerate(prompt[:-1]):
        _, cache = np_step(params, token, cache, pos)
    results = []

    def expand(token, cache, prefix, total):
        t = len(prefix)
        log_probs, cache = np_step(params, token, cache, len(prompt) - 1 + t)
        for v, lp_v in enumerate(log_probs):
            seq, score = prefix + [v], total + lp_v
            if v == eos_id or t + 1 == steps:
                padded = seq + [eos_id] * (steps - len(seq))
                results.append((np_penalty(score, len(seq), v == eos_id, lp), padded))
            else:
                expand(v, cache, seq, score)

    expand(prompt[-1], cache, [], 0.0)
    return sorted(results, key=lambda r: -r[0])


@functools.partial(jax.jit, static_argnames=("search", "options"))
def run(params, cache, prompt, search, options):
    step = functools.partial(jax_step, params)
    fn = beam_search if search == "beam" else greedy_search
    return fn(step, cache, prompt, **dict(options))


def beam(params, cache, prompt, **options):
    return run(params, cache, jnp.asarray(prompt, jnp.int32), "beam", tuple(options.items()))


def greedy(params, cache, prompt, **options):
    return run(params, cache, jnp.asarray(prompt, jnp.int32), "greedy", tuple(options.items()))


@pytest.mark.parametrize("early_stopping", [False, True])
def test_beam_size_one_is_greedy(early_stopping):
    vocab, eos, steps = 6, 0, 6
    params = random_model(1, vocab, eos, eos_bias=1.0)
    cache, prompt = init_cache(5, seed=1), np.arange(1, 6)[:, None]
    opts = dict(max_new_tokens=steps, eos_id=eos)
    g = greedy(params, cache, prompt, **opts)
    b = beam(params, cache, prompt, beam_size=1, early_stopping=early_stopping, **opts)
    np.testing.assert_array_equal(b.sequences[:, 0], g.sequences)
    np.testing.assert_array_equal(b.lengths[:, 0], g.lengths)
    np.testing.assert_allclose(b.scores[:, 0] * g.lengths, g.scores, rtol=1e-5)
    assert 1 <= g.lengths.min() < steps  # some item did stop at EOS
    for i in range(5):  # greedy itself against the float64 oracle's argmax path
        state, token, want = (0, np.asarray(cache["hist"][i], np.float64)), prompt[i, 0], []
        for t in range(steps):
            log_probs, state = np_step(params, token, state, t)
            token = int(np.argmax(log_probs))
            want.append(token)
            if token == eos:
                break
        assert g.sequences[i].tolist() == want + [eos] * (steps - len(want))


PENALTIES = [
    LengthPenalty("none"),
    LengthPenalty.transformers(1.0),
    LengthPenalty.whisper(None),
    LengthPenalty.whisper(0.6),
]


@pytest.mark.parametrize("lp", PENALTIES, ids=lambda lp: f"{lp.kind}-{lp.alpha}-{lp.count_eos}")
def test_wide_beam_is_exhaustive_search(lp):
    vocab, eos, steps = 3, 2, 4
    k = (vocab - 1) ** (steps - 1) * vocab  # every candidate of every step fits in the top k
    prompt = [[1, 0]]  # a 2-token prompt also covers the prefill
    opts = dict(beam_size=k, max_new_tokens=steps, eos_id=eos, early_stopping="never")
    for seed in range(3):  # three random models, one compilation
        params, cache = random_model(seed, vocab, eos), init_cache(1, seed)
        out = beam(params, cache, prompt, length_penalty=lp, **opts)
        state = (0, np.asarray(cache["hist"][0], np.float64))
        want = exhaustive(params, state, prompt[0], steps, eos, lp)[:k]
        assert out.sequences[0].tolist() == [seq for _, seq in want]
        np.testing.assert_allclose(out.scores[0], [s for s, _ in want], rtol=1e-5)
        lengths = [seq.index(eos) + 1 if eos in seq else steps for _, seq in want]
        assert out.lengths[0].tolist() == lengths


# A Markov chain (t5x-style known answer): 0 EOS, 1 "a", 2 "b", 3 "c", 4 start.
CHAIN = np.array(
    [
        [1.0, 0.0, 0.0, 0.0, 0.0],  # after EOS
        [0.4, 0.0, 0.35, 0.25, 0.0],  # after a
        [0.9, 0.05, 0.0, 0.05, 0.0],  # after b
        [1.0, 0.0, 0.0, 0.0, 0.0],  # after c
        [0.0, 0.6, 0.4, 0.0, 0.0],  # after start
    ]
)


def chain_step(tokens, cache, position):
    del position
    return jnp.log(jnp.asarray(CHAIN, jnp.float32))[tokens], cache + 1


def chain(search, steps=3, **options):
    cache, prompt = jnp.zeros(1, jnp.int32), jnp.array([[4]], jnp.int32)
    fn = functools.partial(search, chain_step, max_new_tokens=steps, eos_id=0, **options)
    return jax.jit(fn)(cache, prompt)


def test_markov_chain_known_answer():
    g = chain(greedy_search)  # greedy takes "a" (0.6), then EOS: 0.6 * 0.4 = 0.24
    assert g.sequences.tolist() == [[1, 0, 0]] and g.lengths.tolist() == [2]
    np.testing.assert_allclose(g.scores, [math.log(0.24)], rtol=1e-6)
    # the beam finds "b" EOS: 0.4 * 0.9 = 0.36
    b = chain(beam_search, beam_size=2, length_penalty=LengthPenalty("none"))
    assert b.sequences.tolist() == [[[2, 0, 0], [1, 0, 0]]] and b.lengths.tolist() == [[2, 2]]
    np.testing.assert_allclose(b.scores, [[math.log(0.36), math.log(0.24)]], rtol=1e-6)


def test_finished_hypotheses_are_frozen_and_padded():
    none = LengthPenalty("none")
    short = chain(beam_search, steps=3, beam_size=2, length_penalty=none, early_stopping="never")
    long = chain(
        beam_search, steps=6, beam_size=2, length_penalty=none, early_stopping="never", pad_id=7
    )
    assert long.sequences.tolist() == [[[2, 0, 7, 7, 7, 7], [1, 0, 7, 7, 7, 7]]]
    np.testing.assert_array_equal(long.scores, short.scores)  # steps after EOS change nothing
    np.testing.assert_array_equal(long.lengths, short.lengths)


@pytest.mark.parametrize(
    ("lp", "early_stopping", "want_seqs", "want_scores"),
    [  # candidates: bE 0.36 (n=2), aE 0.24 (n=2), abE 0.189 (n=3), acE 0.15 (n=3)
        (1.0, "never", [[2, 0, 0], [1, 2, 0]], [math.log(0.36) / 2, math.log(0.189) / 3]),
        (
            LengthPenalty.whisper(),
            "never",
            [[1, 2, 0], [1, 3, 0]],
            [math.log(0.189) / 2, math.log(0.15) / 2],
        ),  # EOS not counted: favours longer ones
        # transformers' default heuristic stops after step 2: abE (0.21 / 2 so far) looked worse
        (1.0, False, [[2, 0, 0], [1, 0, 0]], [math.log(0.36) / 2, math.log(0.24) / 2]),
        (1.0, True, [[2, 0, 0], [1, 0, 0]], [math.log(0.36) / 2, math.log(0.24) / 2]),
    ],
)
def test_length_penalty_and_early_stopping_change_the_ranking(
    lp, early_stopping, want_seqs, want_scores
):
    b = chain(beam_search, beam_size=2, length_penalty=lp, early_stopping=early_stopping)
    assert b.sequences.tolist() == [want_seqs]
    np.testing.assert_allclose(b.scores, [want_scores], rtol=1e-6)


def test_batch_items_are_independent():
    vocab, eos, steps = 7, 0, 5
    params = random_model(3, vocab, eos, eos_bias=0.5)
    cache, prompt = init_cache(3, seed=3), np.array([[5, 1], [6, 2], [5, 3]])
    opts = dict(max_new_tokens=steps, eos_id=eos)
    b3 = beam(params, cache, prompt, beam_size=3, **opts)
    g3 = greedy(params, cache, prompt, **opts)
    assert len({tuple(s) for s in b3.sequences[:, 0].tolist()}) > 1  # items differ
    for i in range(3):
        one = jax.tree.map(lambda x, i=i: x[i : i + 1], cache)
        b1 = beam(params, one, prompt[i : i + 1], beam_size=3, **opts)
        g1 = greedy(params, one, prompt[i : i + 1], **opts)
        np.testing.assert_array_equal(b1.sequences[0], b3.sequences[i])
        np.testing.assert_array_equal(b1.lengths[0], b3.lengths[i])
        np.testing.assert_allclose(b1.scores[0], b3.scores[i], rtol=1e-6)
        np.testing.assert_array_equal(g1.sequences[0], g3.sequences[i])


def test_suppressed_ids_never_appear():
    vocab, eos, steps = 5, 0, 5
    params = random_model(4, vocab, eos)
    params["last"][:, 3] += 3.0  # token 3 would otherwise dominate
    cache, prompt = init_cache(2, seed=4), np.array([[1], [2]])
    opts = dict(max_new_tokens=steps, eos_id=eos, suppress_ids=(3,))
    b = beam(params, cache, prompt, beam_size=2, **opts)
    g = greedy(params, cache, prompt, **opts)
    assert 3 not in np.asarray(b.sequences) and 3 not in np.asarray(g.sequences)
    assert np.isfinite(b.scores).all()
    state = (0, np.asarray(cache["hist"][0], np.float64))
    assert np.argmax(np_step(params, 1, state, 0)[0]) == 3  # unsuppressed, 3 would come first


def test_one_loop_and_one_trace_under_jit():
    vocab, eos, steps = 5, 0, 4
    params = random_model(5, vocab, eos)
    traces = []

    def step(tokens, cache, position):
        traces.append(tokens.shape)
        return jax_step(params, tokens, cache, position)

    search = functools.partial(beam_search, step, beam_size=2, max_new_tokens=steps, eos_id=eos)
    cache, prompt = init_cache(2), jnp.array([[1], [2]], jnp.int32)
    jitted = jax.jit(search)
    first = jitted(cache, prompt)
    second = jitted(init_cache(2, seed=9), jnp.array([[3], [4]], jnp.int32))
    assert traces == [(4,)]  # traced once, at batch * beams, for both calls
    assert first.sequences.shape == second.sequences.shape == (2, 2, steps)
    assert not np.array_equal(first.sequences, second.sequences)
    jaxpr = jax.make_jaxpr(search)(cache, prompt)
    primitives = [e.primitive.name for e in jaxpr.eqns]
    assert primitives.count("while") == 1 and "scan" not in primitives  # no prefill scan either
