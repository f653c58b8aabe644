"""Exhaustive search as the oracle: a hand-built Markov chain with a known answer, a brute-force
enumeration scored by teacher forcing, and beam search with a wide enough beam on the RNN."""

from __future__ import annotations

import functools
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


def _jitted(search, step_fn, **options):
    """`search(step_fn, cache, prompt, **options)` as one compiled program (run eagerly, every
    operation of the Python-level loop would compile on its own)."""
    return jax.jit(functools.partial(search, step_fn, **options))


def test_exhaustive_finds_the_hand_computed_argmax():
    prompt = jnp.array([[START], [START2]])
    out = _jitted(exhaustive_search, chain_step, max_new_tokens=3, eos_id=EOS)({}, prompt)
    # Item 0: P(b EOS) = 0.4 · 0.9 = 0.36 beats P(a EOS) = 0.24 and every longer sequence
    # (a b EOS = 0.162, the likeliest of them). Item 1: P(b EOS) = 0.7 · 0.9 = 0.63.
    np.testing.assert_array_equal(out.sequences, [[B, EOS, EOS], [B, EOS, EOS]])
    np.testing.assert_allclose(out.scores, np.log([0.36, 0.63]), rtol=1e-6)
    np.testing.assert_array_equal(out.lengths, [2, 2])
    greedy = _jitted(greedy_search, chain_step, max_new_tokens=3, eos_id=EOS)({}, prompt)
    np.testing.assert_array_equal(greedy.sequences[0], [A, EOS, EOS])  # greedy misses it
    wide = _jitted(
        beam_search,
        chain_step,
        beam_size=9,
        max_new_tokens=3,
        eos_id=EOS,
        early_stopping="never",
        length_penalty=LengthPenalty("none"),
    )({}, prompt)
    np.testing.assert_array_equal(wide.sequences[:, 0], out.sequences)


def test_exhaustive_without_an_end_takes_the_likeliest_full_length_sequence():
    """A chain that never ends: the best of the vocab ** 3 sequences, cut at the length."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 4))
    logits[:, EOS] = -np.inf
    table = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), -1)
    step = lambda tokens, cache, position: (table[tokens], cache)  # noqa: E731
    out = _jitted(exhaustive_search, step, max_new_tokens=3, eos_id=EOS)({}, jnp.array([[3]]))
    host = np.asarray(table)  # float32, summed in float32 as on the device
    best = max(
        itertools.product(range(1, 4), repeat=3),
        key=lambda s: float(host[3, s[0]] + host[s[0], s[1]] + host[s[1], s[2]]),
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
    encode = jax.jit(functools.partial(model.apply, method=RNNModel.encode))
    memory, carry = encode({"params": params}, features, lengths)

    def step_fn(tokens, cache, position):
        cache, (logits, _) = model.apply(
            {"params": params}, cache, tokens, memory, method=RNNModel.decode_step
        )
        return jax.nn.log_softmax(logits, -1), cache

    return model, params, features, lengths, carry, step_fn


@pytest.fixture(scope="module")
def rnn_oracle(rnn):
    """Exhaustive search on the fixture's RNN from START_ID (one compiled program)."""
    _, _, _, _, carry, step_fn = rnn
    prompt = jnp.full((3, 1), START_ID, jnp.int32)
    return _jitted(exhaustive_search, step_fn, max_new_tokens=STEPS, eos_id=0)(carry, prompt)


def _scores(apply, params, features, lengths, item: int, seqs: list) -> list[float]:
    """log P(seq) of each sequence by teacher forcing (a path independent of the step
    function): all of them as one batch, inputs padded after each sequence (causal).
    `apply`: the model's (jitted) `apply`."""
    inputs = np.zeros((len(seqs), STEPS), np.int32)
    for row, seq in enumerate(seqs):
        inputs[row, : len(seq)] = (START_ID, *seq[:-1])
    n = len(seqs)
    logits, _ = apply(
        {"params": params},
        np.repeat(features[item : item + 1], n, 0),
        np.repeat(lengths[item : item + 1], n, 0),
        inputs,
    )
    log_probs = np.asarray(jax.nn.log_softmax(logits, -1), np.float64)  # [n, STEPS, vocab]
    return [
        sum(log_probs[row, t, tok] for t, tok in enumerate(seq)) for row, seq in enumerate(seqs)
    ]


def test_exhaustive_equals_brute_force_enumeration(rnn, rnn_oracle):
    model, params, features, lengths, _, _ = rnn
    out = rnn_oracle
    apply = jax.jit(model.apply)  # one compile serves the three items (the same shapes)
    # Every candidate once: cut at its first EOS, or full length without one.
    candidates = {
        s[: s.index(0) + 1] if 0 in s else s for s in itertools.product(range(VOCAB), repeat=STEPS)
    }
    assert len(candidates) == sum(4**k for k in range(STEPS)) + 4**STEPS
    for item in range(3):
        seqs = sorted(candidates)
        scored = dict(zip(seqs, _scores(apply, params, features, lengths, item, seqs), strict=True))
        best = max(scored, key=scored.get)
        got = tuple(int(t) for t in out.sequences[item][: int(out.lengths[item])])
        assert got == best
        assert float(out.scores[item]) == pytest.approx(scored[best], abs=1e-4)
    assert len({tuple(np.asarray(s)) for s in out.sequences}) > 1  # not one trivial answer


def test_wide_beam_search_matches_exhaustive_search(rnn, rnn_oracle):
    _, _, _, _, carry, step_fn = rnn
    prompt = jnp.full((3, 1), START_ID, jnp.int32)
    oracle = rnn_oracle
    # (vocab - 1) ** (STEPS - 1) live prefixes at most: a beam that wide drops nothing.
    beam = (VOCAB - 1) ** (STEPS - 1)
    out = _jitted(
        beam_search,
        step_fn,
        beam_size=beam,
        max_new_tokens=STEPS,
        eos_id=0,
        length_penalty=LengthPenalty("none"),
        early_stopping="never",
    )(carry, prompt)
    np.testing.assert_array_equal(out.sequences[:, 0], oracle.sequences)
    np.testing.assert_array_equal(out.lengths[:, 0], oracle.lengths)
    np.testing.assert_allclose(out.scores[:, 0], oracle.scores, atol=1e-5)
    assert math.isfinite(float(oracle.scores.min()))


def test_exhaustive_refuses_a_big_search():
    with pytest.raises(ValueError, match="tiny problems only"):
        _jitted(exhaustive_search, chain_step, max_new_tokens=9, eos_id=EOS, max_rows=100)(
            {}, jnp.array([[START]])
        )


# ------------------------------------------------- eval.decoder=exhaustive through the task


def _tiny_recognizer(*overrides: str):
    """An untrained rnn model of 6 tokens (4 specials + "ab") with labels of 3 characters, as
    a workdir loads it, and 4 noise waveforms: 6 ** 4 = 1,296 sequences per utterance."""
    from jaxseq.config import FrontendConfig, TextConfig, load_config
    from jaxseq.parallel.mesh import make_mesh
    from jaxseq.tasks.rnn import RNNTask, char_tokenizer
    from jaxseq.train.trained import Trained
    from tests.conftest import REPO

    cfg = load_config(
        REPO / "configs" / "rnn_tiny.yaml",
        [
            "data.max_label_length=3",
            "data.buckets=[32]",
            "model.d_model=8",
            "rnn.encoder_layers=1",
            "rnn.pyramid=[2]",
            "rnn.plots=0",
            "eval.length_penalty=0.0",  # beam search ranks by the summed log-prob, as exhaustive
            *overrides,
        ],
    )
    frontend = FrontendConfig()
    task = RNNTask(cfg, char_tokenizer("ab"), frontend.n_mels)
    batch = {
        "features": np.zeros((1, 32, frontend.n_mels), np.float32),
        "feature_lengths": np.array([32], np.int32),
        "labels": np.zeros((1, 3), np.int32),
        "label_lengths": np.array([3], np.int32),
    }
    shapes = jax.eval_shape(lambda: task.init_variables(jax.random.PRNGKey(0), batch))
    leaves, treedef = jax.tree.flatten(nn.unbox(shapes["params"]))
    rng = np.random.default_rng(6)
    params = jax.tree.unflatten(  # wide weights: peaked, varied next-token distributions
        treedef, [jnp.asarray(rng.normal(0, 1.0, x.shape), jnp.float32) for x in leaves]
    )
    trained = Trained(cfg, task, make_mesh(cfg.mesh), params, 0, frontend, TextConfig())
    waves = [rng.normal(0, 0.1, n).astype(np.float32) for n in (1600, 2400, 3200, 2000)]
    return trained, waves


def test_exhaustive_decoder_equals_a_wide_beam_through_transcription():
    from jaxseq.audio.frontend import log_mel_numpy
    from jaxseq.evaluation.waveforms import predict_waveforms

    trained, waves = _tiny_recognizer()
    task, vocab, steps = trained.task, trained.task.tokenizer.size, 4
    assert (vocab, task.exhaustive_sequences()) == (6, 6**steps)
    beam = (vocab - 1) ** (steps - 1)  # live prefixes at most: a beam this wide drops nothing
    features = np.zeros((len(waves), 32, trained.frontend.n_mels), np.float32)
    lengths = np.zeros(len(waves), np.int32)
    for i, wave in enumerate(waves):
        mel = log_mel_numpy(wave, trained.frontend)  # [frames <= 20, n_mels]
        features[i, : len(mel)], lengths[i] = mel, len(mel)
    batch = {"features": features, "feature_lengths": lengths}
    predict = jax.jit(task.predict_fn, static_argnames=("decoder", "beam_size"))
    ids = {
        decoder: predict(trained.params, batch, decoder=decoder, beam_size=beam)
        for decoder in ("exhaustive", "beam", "greedy")
    }  # (sequences [4, steps], lengths [4]) each
    for got, want in zip(ids["exhaustive"], ids["beam"], strict=True):
        np.testing.assert_array_equal(got, want)
    assert len({tuple(np.asarray(s)) for s in ids["exhaustive"][0]}) > 1  # not one answer
    assert not np.array_equal(ids["exhaustive"][0], ids["greedy"][0])  # greedy is beaten
    # Transcription, as `jaxseq transcribe` and evaluation run it: the decoder by its name.
    texts = predict_waveforms(trained, waves, decoder="exhaustive")
    assert texts == task.decode(ids["exhaustive"], "exhaustive", 1)
    assert texts == task.decode(ids["beam"], "beam", beam)


def test_exhaustive_decoder_refuses_a_big_search_naming_the_key():
    from jaxseq.config import ConfigError
    from jaxseq.evaluation.waveforms import predict_waveforms

    # 6 tokens, labels of 9: 6 ** 10 > 2 ** 16 sequences; 6 ** 6 fits (labels of 5).
    trained, waves = _tiny_recognizer("data.max_label_length=9")
    want = (
        r"eval.decoder=exhaustive .* 6 \*\* 10 = 60,466,176 sequences per utterance, over its "
        r"limit of 65,536 .* eval.decoder=beam .* lower data.max_label_length to 5 or less"
    )
    with pytest.raises(ConfigError, match=want):
        predict_waveforms(trained, waves, decoder="exhaustive")
    assert len(predict_waveforms(trained, waves, decoder="greedy")) == 4  # greedy still runs
    with pytest.raises(ConfigError, match=want):  # asked for in the config: before training
        _tiny_recognizer("data.max_label_length=9", "eval.decoder=exhaustive")


def test_exhaustive_decoder_is_for_the_rnn_family_only():
    from jaxseq.config import ConfigError, load_config

    assert load_config(None, ["model.family=rnn", "eval.decoder=exhaustive"])
    for family in ("ctc", "seq2seq", "whisper", "tts", "classify"):
        want = rf"'eval.decoder' is 'exhaustive', .* model.family=rnn .*family={family}\)"
        with pytest.raises(ConfigError, match=want):
            load_config(None, [f"model.family={family}", "eval.decoder=exhaustive"])
