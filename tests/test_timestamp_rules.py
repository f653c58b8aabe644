"""Whisper's timestamp rules (`jaxseq.decoding.timestamp_rules`) against transformers'
`WhisperTimeStampLogitsProcessor`, step by step along greedy paths over random logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import WhisperTimeStampLogitsProcessor

from jaxseq.decoding.beam_search import greedy_search
from jaxseq.decoding.timestamp_rules import TimestampRules

# A small vocabulary laid out like Whisper's: text, end of text, specials, <|notimestamps|>,
# then the timestamps.
EOS, NO_TIMESTAMPS, TIMESTAMP_BEGIN, VOCAB = 40, 47, 48, 96
PROMPT = [41, 42, 43]  # <|startoftranscript|><|en|><|transcribe|>
STEPS = 24


def _reference(max_initial: int | None) -> WhisperTimeStampLogitsProcessor:
    config = GenerationConfig(
        no_timestamps_token_id=NO_TIMESTAMPS,
        eos_token_id=EOS,
        max_initial_timestamp_index=max_initial,
    )
    return WhisperTimeStampLogitsProcessor(config, begin_index=len(PROMPT))


def _logits(rng: np.random.Generator, rows: int) -> np.ndarray:
    """Random log-probs; in some rows the timestamps are likely, in some the end of text."""
    logits = rng.standard_normal((rows, VOCAB)) * 2.0
    logits[:, TIMESTAMP_BEGIN:] += rng.choice([-2.0, 0.0, 3.0], size=(rows, 1))
    logits[:, EOS] += rng.choice([-5.0, 0.0], size=rows)
    return np.asarray(jax.nn.log_softmax(jnp.asarray(logits, jnp.float32)))


@pytest.mark.parametrize("max_initial", [50, 3, None])
def test_rules_match_transformers_along_greedy_paths(max_initial):
    rules = TimestampRules(TIMESTAMP_BEGIN, NO_TIMESTAMPS, EOS, max_initial)
    reference = _reference(max_initial)
    rng = np.random.default_rng(max_initial or 0)
    rows = 16
    generated = np.full((rows, STEPS), EOS, np.int32)
    apply = jax.jit(rules)
    seen_lone = seen_pair = 0
    for t in range(STEPS):
        log_probs = _logits(rng, rows)
        ids = torch.tensor(np.concatenate([np.tile(PROMPT, (rows, 1)), generated[:, :t]], 1))
        want = reference(ids, torch.tensor(log_probs)).numpy()
        got = np.asarray(apply(jnp.asarray(log_probs), jnp.asarray(generated), jnp.int32(t)))
        np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want), err_msg=f"step {t}")
        np.testing.assert_allclose(got[np.isfinite(want)], want[np.isfinite(want)], rtol=1e-6)
        generated[:, t] = np.argmax(want, axis=-1)
        if t >= 1:
            is_time = generated[:, t - 1 : t + 1] >= TIMESTAMP_BEGIN
            seen_pair += int(np.sum(is_time.all(1)))
            seen_lone += int(np.sum(is_time[:, 1] & ~is_time[:, 0]))
    assert seen_pair > 5 and seen_lone > 5  # the paths went through both kinds of state
    times = np.where(generated >= TIMESTAMP_BEGIN, generated, -1)
    assert (np.diff(np.maximum.accumulate(times, axis=1), axis=1) >= 0).all()


def test_greedy_search_applies_the_rules():
    """A model that always prefers text token 7 writes <|t|> 7 ... as the rules demand."""
    rules = TimestampRules(TIMESTAMP_BEGIN, NO_TIMESTAMPS, EOS, 2)
    preference = np.full(VOCAB, -10.0, np.float32)
    preference[7], preference[TIMESTAMP_BEGIN + 5] = 0.0, -1.0  # the start is past max_initial

    def step_fn(tokens, cache, position):
        del tokens, position
        return jax.nn.log_softmax(jnp.broadcast_to(preference, (cache.shape[0], VOCAB))), cache

    out = greedy_search(
        step_fn,
        jnp.zeros((2, 1)),
        jnp.asarray([PROMPT] * 2),
        max_new_tokens=6,
        eos_id=EOS,
        rules=rules,
    )
    first = np.asarray(out.sequences)[0]
    assert TIMESTAMP_BEGIN <= first[0] <= TIMESTAMP_BEGIN + 2  # forced, within max_initial
    assert (first[1:] == 7).all()  # then text, the model's choice


def test_rules_on_a_bpe_layout_equal_transformers_on_the_same_vocabulary_reordered():
    """A BPE tokenizer's layout (pad, start, end, unk, pieces, timestamps) under `text_ids`
    gives transformers' masks once its ids are reordered into Whisper's layout (pieces, end,
    the other specials, timestamps); pad plays `<|notimestamps|>` and is never likely."""
    pieces_end = 44  # pieces 4..43, timestamps 44..95
    whisper_id = np.empty(VOCAB, np.int64)  # BPE id -> Whisper-layout id
    whisper_id[4:pieces_end] = np.arange(pieces_end - 4)
    whisper_id[[2, 1, 3, 0]] = pieces_end - 4 + np.arange(4)  # end, start, unk, pad
    whisper_id[pieces_end:] = np.arange(pieces_end, VOCAB)
    rules = TimestampRules(pieces_end, None, 2, None, text_ids=(4, pieces_end))
    config = GenerationConfig(
        no_timestamps_token_id=int(whisper_id[0]), eos_token_id=int(whisper_id[2])
    )
    reference = WhisperTimeStampLogitsProcessor(config, begin_index=1)
    rng = np.random.default_rng(7)
    rows, seen_pair = 16, 0
    generated = np.full((rows, STEPS), 2, np.int32)
    apply = jax.jit(rules)
    for t in range(STEPS):
        logits = rng.standard_normal((rows, VOCAB)) * 2.0
        logits[:, pieces_end:] += rng.choice([-2.0, 0.0, 3.0], size=(rows, 1))
        logits[:, 0] = -np.inf
        log_probs = np.asarray(jax.nn.log_softmax(jnp.asarray(logits, jnp.float32)))
        got = np.asarray(apply(jnp.asarray(log_probs), jnp.asarray(generated), jnp.int32(t)))
        reordered = np.empty_like(log_probs)
        reordered[:, whisper_id] = log_probs
        history = np.concatenate(
            [np.full((rows, 1), whisper_id[1]), whisper_id[generated[:, :t]]], 1
        )
        want = reference(torch.tensor(history), torch.tensor(reordered)).numpy()[:, whisper_id]
        np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want), err_msg=f"step {t}")
        np.testing.assert_allclose(got[np.isfinite(want)], want[np.isfinite(want)], rtol=1e-6)
        generated[:, t] = np.argmax(want, axis=-1)
        if t >= 1:
            seen_pair += int(np.sum((generated[:, t - 1 : t + 1] >= pieces_end).all(1)))
    assert seen_pair > 5
