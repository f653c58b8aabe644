"""Whisper's timestamp-token rules, applied to each decoding step's log-probs.

With timestamps on, Whisper writes `<|t0|> text <|t1|><|t2|> text <|t3|> ... <|endoftext|>`:
segments of text between a start and an end timestamp token (`<|0.00|>` .. `<|30.00|>`, one
per 20 ms, the ids after `<|notimestamps|>`). The rules that keep a search on that grammar are
openai-whisper's `ApplyTimestampRules` and transformers' `WhisperTimeStampLogitsProcessor`:

- `<|notimestamps|>` never comes;
- timestamps come in pairs: after a lone timestamp (a segment's end, or a start) the next token
  is a timestamp or the end of text; after a pair, it is text;
- timestamps never go back, and a segment's end is after its start;
- the first token is a timestamp, at most `max_initial_index` steps (1 s) in;
- where the timestamps' total probability beats every text token's, a timestamp comes.

All of it is computed from the tokens generated so far, so the rules run inside the jitted
greedy and beam searches (`jaxseq.decoding.beam_search`) for every row at once.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class TimestampRules:
    """The rules for one tokenizer (static: hashable, part of a search's jit key).

    Attributes:
      timestamp_begin: id of `<|0.00|>` (every id from it up is a timestamp).
      no_timestamps_id: id of `<|notimestamps|>`, or None where there is none (a seq2seq
        model trained here with timestamps).
      eos_id: id of `<|endoftext|>`.
      max_initial_index: the latest first timestamp, in steps after `<|0.00|>` (the generation
        config's `max_initial_timestamp_index`, 50 = 1 s), or None for no limit.
      text_ids: the [first, last + 1) ids of text, None for Whisper's [0, eos_id) (a BPE
        tokenizer's pieces lie between its special ids and its timestamps).
    """

    timestamp_begin: int
    no_timestamps_id: int | None
    eos_id: int
    max_initial_index: int | None = 50
    text_ids: tuple[int, int] | None = None

    def __call__(self, log_probs: jax.Array, generated: jax.Array, t: jax.Array) -> jax.Array:
        """`log_probs` with the ids the rules forbid at -inf.

        Args:
          log_probs: float32 [n, vocab], this step's (suppressed ids already at -inf).
          generated: int32 [n, steps], the tokens generated before this step in columns < t
            (the prompt excluded).
          t: int32 [], this step's index (0 for the first generated token).
        Returns:
          float32 [n, vocab].
        """
        n, vocab = log_probs.shape
        ids = jnp.arange(vocab)[None, :]  # [1, vocab]
        is_time = ids >= self.timestamp_begin
        if self.no_timestamps_id is not None:
            log_probs = jnp.where(ids == self.no_timestamps_id, -jnp.inf, log_probs)
        first_text, end_text = self.text_ids or (0, self.eos_id)
        is_text = (ids >= first_text) & (ids < end_text)

        column = jnp.arange(generated.shape[1])[None, :]  # [1, steps]
        written = column < t
        last = generated[:, jnp.maximum(t - 1, 0)]  # [n]
        penultimate = generated[:, jnp.maximum(t - 2, 0)]
        last_was_time = (t >= 1) & (last >= self.timestamp_begin)  # [n]
        penultimate_was_time = (t < 2) | (penultimate >= self.timestamp_begin)
        pair_done = (last_was_time & penultimate_was_time)[:, None]  # must write text
        lone = (last_was_time & ~penultimate_was_time)[:, None]  # a timestamp or the end
        forbidden = (pair_done & is_time) | (lone & is_text)

        # Timestamps never decrease; after a pair (or text) the next one must be later.
        times = jnp.where(written & (generated >= self.timestamp_begin), generated, -1)
        latest = jnp.max(times, axis=1)  # [n], -1 where no timestamp yet
        floor = jnp.where(latest < 0, self.timestamp_begin, latest + (~lone[:, 0]))  # [n]
        forbidden |= is_time & (ids < floor[:, None])

        first = t == 0  # the first token is a timestamp, within the first second
        opening = ~is_time
        if self.max_initial_index is not None:
            opening |= ids > self.timestamp_begin + self.max_initial_index
        forbidden |= first & opening
        log_probs = jnp.where(forbidden, -jnp.inf, log_probs)

        # A timestamp comes where their total probability beats every text token's.
        normalized = jax.nn.log_softmax(log_probs, axis=-1)
        time_mass = jax.nn.logsumexp(jnp.where(is_time, normalized, -jnp.inf), axis=-1)
        best_text = jnp.max(jnp.where(is_time, -jnp.inf, normalized), axis=-1)  # [n]
        must_time = (time_mass > best_text)[:, None]
        return jnp.where(must_time & ~is_time, -jnp.inf, log_probs)
