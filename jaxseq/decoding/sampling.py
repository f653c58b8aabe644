"""One hypothesis after a prompt of dynamic length: greedy at temperature 0, sampled above.

What openai-whisper's `DecodingTask` (batch 1, `best_of=1`) and transformers' `generate` with
`do_sample` do for one window of Whisper's sequential long-form transcription, in one jit-able
function whose shapes do not depend on the prompt: the prompt sits in a fixed-size buffer and
`prompt_len` of it is fed (a `lax.while_loop`), so that prompts of every length (Whisper's
previous-text conditioning) share one compiled program. Its inputs are a single row; `jax.vmap`
it for a batch of rows with different prompts, lengths and temperatures.

Each step applies, in transformers' order, `suppress_ids` and (first step) `begin_suppress_ids`,
then `rules` (e.g. `jaxseq.decoding.timestamp_rules.TimestampRules`); the token is the argmax,
or at temperature T > 0 a draw from `softmax(log_probs / T)` over the whole vocabulary
(openai-whisper's sampler; transformers adds a top-50 cut by default). The log-probability
summed for the result is the chosen token's under the processed distribution renormalized at
temperature 1, transformers' `_retrieve_avg_logprobs` (scores times T, `log_softmax`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxseq.decoding.beam_search import Rules, StepFn, process_log_probs


class SampleOutput(NamedTuple):
    tokens: jax.Array  # int32 [max_new_tokens], pad_id after the end
    length: jax.Array  # int32 [], generated tokens, EOS included
    sum_log_prob: jax.Array  # float32 [], the tokens' renormalized log-probs, EOS included
    probe: jax.Array  # float32 [vocab], the model's raw log-probs after position `probe_at`


def sample_after_prompt(
    step_fn: StepFn,
    cache: Any,
    prompt: jax.Array,
    prompt_len: jax.Array,
    *,
    limit: jax.Array,
    temperature: jax.Array,
    key: jax.Array,
    probe_at: jax.Array,
    max_new_tokens: int,
    vocab_size: int,
    eos_id: int,
    pad_id: int | None = None,
    suppress_ids: Sequence[int] = (),
    begin_suppress_ids: Sequence[int] = (),
    rules: Rules | None = None,
) -> SampleOutput:
    """Decodes one row after `prompt[:prompt_len]` until EOS or `limit` tokens.

    Args:
      step_fn: the model step (`jaxseq.decoding.beam_search`), called with one row (n = 1).
      cache: its cache for one row (leading axis 1), long enough for `prompt_len + limit - 1`
        positions.
      prompt: int32 [buffer], the prompt in its first `prompt_len` (>= 1) entries.
      prompt_len, limit: int32 []: the prompt's length; the most tokens to generate
        (<= max_new_tokens; 0 generates none).
      temperature: float32 []: 0 for the argmax, else sampling at this temperature.
      key: a PRNG key (sampling draws from `fold_in(key, step)`).
      probe_at: int32 []: a decoder position (< prompt_len + limit - 1) whose raw next-token
        log-probs to return (Whisper's no-speech probability is read after
        `<|startoftranscript|>`).
      max_new_tokens: static size of the token buffer. vocab_size: `step_fn`'s.
      eos_id, pad_id (default eos_id), suppress_ids, begin_suppress_ids, rules: static, as
        `beam_search.greedy_search`.
    Returns:
      SampleOutput.
    """
    pad_id = eos_id if pad_id is None else pad_id
    prompt = jnp.asarray(prompt, jnp.int32)
    prompt_len = jnp.asarray(prompt_len, jnp.int32)

    def prefill(carry):  # feeds prompt[p] at position p, for p < prompt_len - 1
        p, cache, probe = carry
        log_probs, cache = step_fn(prompt[p][None], cache, p)  # [1, vocab]
        probe = jnp.where(p == probe_at, log_probs[0].astype(jnp.float32), probe)
        return p + 1, cache, probe

    vocab_probe = jnp.zeros((vocab_size,), jnp.float32)
    _, cache, probe = jax.lax.while_loop(
        lambda c: c[0] < prompt_len - 1, prefill, (jnp.asarray(0, jnp.int32), cache, vocab_probe)
    )

    def body(carry):
        # t int32 []; token int32 [] (the last one fed); done bool []; score float32 [];
        # seqs int32 [max_new_tokens]; probe float32 [vocab]
        t, token, cache, done, score, seqs, probe = carry
        position = prompt_len - 1 + t
        raw, cache = step_fn(token[None], cache, position)  # [1, vocab]
        raw = raw.astype(jnp.float32)
        probe = jnp.where(position == probe_at, raw[0], probe)
        processed = process_log_probs(raw, t, suppress_ids, begin_suppress_ids, rules, seqs[None])[
            0
        ]
        scaled = processed / jnp.maximum(temperature, 1e-6)
        drawn = jax.random.categorical(jax.random.fold_in(key, t), scaled)
        best = jnp.where(temperature > 0, drawn, jnp.argmax(processed)).astype(jnp.int32)
        log_prob = jax.nn.log_softmax(processed)[best]  # renormalized at temperature 1
        seqs = seqs.at[t].set(best)
        return t + 1, best, cache, best == eos_id, score + log_prob, seqs, probe

    def cond(carry):
        t, done = carry[0], carry[3]
        return (t < limit) & ~done

    carry = (
        jnp.asarray(0, jnp.int32),
        prompt[prompt_len - 1],
        cache,
        jnp.asarray(False),
        jnp.asarray(0.0, jnp.float32),
        jnp.full((max_new_tokens,), pad_id, jnp.int32),
        probe,
    )
    length, _, _, _, score, seqs, probe = jax.lax.while_loop(cond, body, carry)
    return SampleOutput(seqs, length, score, probe)
