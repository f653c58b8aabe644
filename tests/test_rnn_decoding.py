"""Exhaustive search as the oracle: a hand-built Markov chain with a known answer, a brute-force
enumeration scored by teacher forcing, and beam search with a wide enough beam on the RNN."""

from __future__ import annotations

import itertools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseq.decoding.beam_search import LengthPenalty, beam_search, greedy_search
from jaxseq.decoding.exhaustive import exhaustive_search
from jaxseq.models.rnn import RNNDims, RNNModel

EOS, A, B, START, START2 = 0, 1, 2, 3, 4
# Next-token probabilities by the last token (rows) over EOS, a, b, and the two start tokens.
CHAIN = np.array(
    [
        [1.0, 0.0, 0.0, 0.0, 0.0],  # after EOS: EOS
        [0.4, 0.3, 0.3, 0.0, 0.0],  # after a
        [0.9, 0.05, 0.05, 0.0, 0.0],  # after b
        [0.0, 0.6, 0.4, 0.0, 0.0],  # after START: greedy takes a, but b EOS is likelier
        [0.0, 0.3, 0.7, 0.0, 0.0],  # after START2
    ]
)


def chain_step(tokens, cache, position):
    del cache, position
    with np.errstate(divide="ignore"):
        table = jnp.asarray(np.log(CHAIN), jnp.float32)
    return table[tokens], {}


def test_exhaustive_finds_the_hand_computed_argmax():
    prompt = jnp.array([[START], [START2]])
    out = exhaustive_search(chain_step, {}, prompt, max_new_tokens=3, eos_id=EOS)
    # Item 0: P(b EOS) = 0.4 · 0.9 = 0.36 beats P(a EOS) = 0.24 and every longer sequence
    # (a b EOS = 0.162, the likeliest of them). Item 1: P(b EOS) = 0.7 · 0.9 = 0.63.
    np.testing.assert_array_equal(out.sequences, [[B, EOS, EOS], [B, EOS, EOS]])
    np.testing.assert_allclose(out.scores, np.log([0.36, 0.63]), rtol=1e-6)
    np.testing.assert_array_equal(out.lengths, [2, 2])
    greedy = greedy_search(chain_step, {}, prompt, max_new_tokens=3, eos_id=EOS)
    np.testing.assert_array_equal(greedy.sequences[0], [A, EOS, EOS])  # greedy misses it
    wide = beam_search(
        chain_step,
        {},
        prompt,
        beam_size=9,
        max_new_tokens=3,
        eos_id=EOS,
        early_stopping="never",
        length_penalty=LengthPenalty("none"),
    )
    np.testing.assert_array_equal(wide.sequences[:, 0], out.sequences)


def test_exhaustive_without_an_end_takes_the_likeliest_full_length_sequence():
    """A chain that never ends: the best of the vocab ** 3 sequences, cut at the length."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 4))
    logits[:, EOS] = -np.inf
    table = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), -1)
    step = lambda tokens, cache, position: (table[tokens], cache)  # noqa: E731
    out = exhaustive_search(step, {}, jnp.array([[3]]), max_new_tokens=3, eos_id=EOS)
    best = max(
        itertools.product(range(1, 4), repeat=3),
        key=lambda s: float(table[3, s[0]] + table[s[0], s[1]] + table[s[1], s[2]]),
    )
    np.testing.assert_array_equal(out.sequences[0], best)
    assert int(out.lengths[0]) == 3


# ----------------------------------------------------------------------------- the RNN

VOCAB, STEPS, START_ID = 5, 4, 1  # EOS = 0


@pytest.fixture(scope="module")
def rnn():
    dims = RNNDims(
        n_mels=6,
        vocab_size=VOCAB,
        cell="gru",
        hidden=8,
        encoder_layers=1,
        decoder_layers=1,
        pyramid=(2,),
    )
    model = RNNModel(dims)
    rng = np.random.default_rng(1)
    features = rng.normal(size=(3, 10, 6)).astype(np.float32)
    lengths = np.array([10, 7, 4])
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), features, lengths, np.zeros((3, 2), np.int32))
    )
    leaves, treedef = jax.tree.flatten(nn.unbox(shapes["params"]))
    params = jax.tree.unflatten(  # wide weights: peaked, varied next-token distributions
        treedef, [jnp.asarray(rng.normal(0, 1.0, x.shape), jnp.float32) for x in leaves]
    )
    memory, carry = model.apply({"params": params}, features, lengths, method=RNNModel.encode)

    def step_fn(tokens, cache, position):
        cache, (logits, _) = model.apply(
            {"params": params}, cache, tokens, memory, method=RNNModel.decode_step
        )
        return jax.nn.log_softmax(logits, -1), cache

    return model, params, features, lengths, carry, step_fn


def _scores(model, params, features, lengths, item: int, seqs: list) -> list[float]:
    """log P(seq) of each sequence by teacher forcing (a path independent of the step
    function): all of them as one batch, inputs padded after each sequence (causal)."""
    inputs = np.zeros((len(seqs), STEPS), np.int32)
    for row, seq in enumerate(seqs):
        inputs[row, : len(seq)] = (START_ID, *seq[:-1])
    n = len(seqs)
    logits, _ = model.apply(
        {"params": params},
        np.repeat(features[item : item + 1], n, 0),
        np.repeat(lengths[item : item + 1], n, 0),
        inputs,
    )
    log_probs = np.asarray(jax.nn.log_softmax(logits, -1), np.float64)  # [n, STEPS, vocab]
    return [
        sum(log_probs[row, t, tok] for t, tok in enumerate(seq)) for row, seq in enumerate(seqs)
    ]


def test_exhaustive_equals_brute_force_enumeration(rnn):
    model, params, features, lengths, carry, step_fn = rnn
    prompt = jnp.full((3, 1), START_ID, jnp.int32)
    out = exhaustive_search(step_fn, carry, prompt, max_new_tokens=STEPS, eos_id=0)
    # Every candidate once: cut at its first EOS, or full length without one.
    candidates = {
        s[: s.index(0) + 1] if 0 in s else s for s in itertools.product(range(VOCAB), repeat=STEPS)
    }
    assert len(candidates) == sum(4**k for k in range(STEPS)) + 4**STEPS
    for item in range(3):
        seqs = sorted(candidates)
        scored = dict(zip(seqs, _scores(model, params, features, lengths, item, seqs), strict=True))
        best = max(scored, key=scored.get)
        got = tuple(int(t) for t in out.sequences[item][: int(out.lengths[item])])
        assert got == best
        assert float(out.scores[item]) == pytest.approx(scored[best], abs=1e-4)
    assert len({tuple(np.asarray(s)) for s in out.sequences}) > 1  # not one trivial answer


def test_wide_beam_search_matches_exhaustive_search(rnn):
    _, _, _, _, carry, step_fn = rnn
    prompt = jnp.full((3, 1), START_ID, jnp.int32)
    oracle = exhaustive_search(step_fn, carry, prompt, max_new_tokens=STEPS, eos_id=0)
    # (vocab - 1) ** (STEPS - 1) live prefixes at most: a beam that wide drops nothing.
    beam = (VOCAB - 1) ** (STEPS - 1)
    out = beam_search(
        step_fn,
        carry,
        prompt,
        beam_size=beam,
        max_new_tokens=STEPS,
        eos_id=0,
        length_penalty=LengthPenalty("none"),
        early_stopping="never",
    )
    np.testing.assert_array_equal(out.sequences[:, 0], oracle.sequences)
    np.testing.assert_array_equal(out.lengths[:, 0], oracle.lengths)
    np.testing.assert_allclose(out.scores[:, 0], oracle.scores, atol=1e-5)
    assert math.isfinite(float(oracle.scores.min()))


def test_exhaustive_refuses_a_big_search():
    with pytest.raises(ValueError, match="tiny problems only"):
        exhaustive_search(
            chain_step, {}, jnp.array([[START]]), max_new_tokens=9, eos_id=EOS, max_rows=100
        )
