"""Device side of sequential long-form transcription (`jaxseq.inference.whisper_sequential`):
every window of a round is one row of a `jax.vmap`ped decode, after its own prompt, at its own
temperature and with its own PRNG stream."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxseq.decoding.sampling import sample_after_prompt
from jaxseq.models.whisper import WhisperModel, search_setup
from jaxseq.parallel.sharding import replicated
from jaxseq.tasks.seq2seq import Seq2SeqTask


def decode_rows(task: Seq2SeqTask, params: Any, batch: dict[str, jax.Array]) -> dict:
    """Device side: one window per row, decoded after its own prompt (jit it).

    Args:
      batch: features float32 [rows, frames, n_mels] (the model's window), frames int32
        [rows] (the frames the encoder attends to: all for Whisper, which never masks; those
        with audio for a model trained here, as in training); prompt int32
        [rows, max_target_positions], each row's prompt in its first prompt_len entries;
        prompt_len, limit (most new tokens), probe_at (the position of
        `<|startoftranscript|>`) int32 [rows]; temperature float32 [rows]; seed int32 [rows, 4]
        (each row's PRNG stream: folded into a key).
    Returns:
      tokens int32 [rows, max_target_positions - 1] (end-of-text after the end), length int32
      [rows] (end-of-text included), sum_log_prob float32 [rows], no_speech_prob float32
      [rows] (the softmax of the raw logits after `<|startoftranscript|>`).
    """
    dims, tok = task.dims, task.tokenizer
    encoded, mask = task.model.apply(
        {"params": params}, batch["features"], batch["frames"], method=WhisperModel.encode
    )  # [rows, enc_frames, d_model], [rows, enc_frames]
    no_speech = tok.no_speech_id
    if no_speech is None and tok.no_timestamps_id is not None:
        no_speech = tok.no_timestamps_id - 1  # <|nocaptions|> in older checkpoints
    options = dict(
        max_new_tokens=dims.max_target_positions - 1,
        vocab_size=dims.vocab_size,
        eos_id=tok.eot_id,
        suppress_ids=task.suppress_ids,
        begin_suppress_ids=task.begin_suppress_ids,
        rules=task.timestamp_rules(),
    )

    def one(encoded, mask, prompt, prompt_len, limit, probe_at, temperature, seed):
        # encoded [enc_frames, d_model]; mask [enc_frames]; prompt [max_target_positions]
        cache, step_fn = search_setup(
            task.model, params, encoded[None], mask[None], dims.max_target_positions
        )
        key = jax.random.PRNGKey(0)
        for part in seed:  # [4]
            key = jax.random.fold_in(key, part)
        out = sample_after_prompt(
            step_fn,
            cache,
            prompt,
            prompt_len,
            limit=limit,
            temperature=temperature,
            key=key,
            probe_at=probe_at,
            **options,
        )
        # A model trained here has no <|nospeech|>: its windows are never skipped as silent.
        silent = jnp.exp(out.probe[no_speech]) if no_speech is not None else jnp.float32(0)
        return out.tokens, out.length, out.sum_log_prob, silent

    # Each row is a batch of one inside the map: no logical constraints on its batch axis.
    with nn.logical_axis_rules(()):
        tokens, length, score, no_speech_prob = jax.vmap(one)(
            encoded,
            mask,
            batch["prompt"],
            batch["prompt_len"],
            batch["limit"],
            batch["probe_at"],
            batch["temperature"],
            batch["seed"],
        )
    return {
        "tokens": tokens,
        "length": length,
        "sum_log_prob": score,
        "no_speech_prob": no_speech_prob,
    }


@functools.cache
def jitted_decode_rows(task: Seq2SeqTask, mesh: Mesh):
    """`decode_rows` jitted once per (task, mesh): one compilation per number of rows."""
    return jax.jit(functools.partial(decode_rows, task), out_shardings=replicated(mesh))
