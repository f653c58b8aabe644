"""transformers' `SpeechT5ForTextToSpeech.generate_speech` for jaxseq.models.speecht5: one jitted
`lax.while_loop` over cached decoder steps, batched, each row stopping on its own
(`generate_speech`; the converted checkpoints and the vocoder: jaxseq.convert.speecht5_synthesizer).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxseq.models.speecht5 import SpeechT5Dims, SpeechT5TTS


class GeneratedSpeech(NamedTuple):
    """What `generate_speech` returns."""

    spectrogram: jax.Array  # [batch, max_frames, mels] after the post-net, zero past `frames`
    frames: jax.Array  # int [batch] frames of each row (its decoder steps · reduction_factor)
    stopped: jax.Array  # bool [batch]: stop predicted (False: cut at the maximum length)


def generation_steps(chars: int, dims: SpeechT5Dims, minlenratio: float, maxlenratio: float):
    """(minlen, maxlen, cap) decoder steps for text ids [batch, chars], as transformers: int(chars
    · ratio / r) from the *padded* width; `cap` = the most steps the loop may take."""
    maxlen = int(chars * maxlenratio / dims.reduction_factor)
    minlen = int(chars * minlenratio / dims.reduction_factor)
    return minlen, maxlen, max(maxlen, minlen, 1)


@functools.partial(
    jax.jit,
    static_argnames=("model", "minlenratio", "maxlenratio", "prenet_dropout"),
)
def generate_speech(
    model: SpeechT5TTS,
    variables: Any,
    ids: jax.Array,
    lengths: jax.Array,
    speaker: jax.Array,
    rng: jax.Array,
    *,
    threshold: float | jax.Array = 0.5,
    minlenratio: float = 0.0,
    maxlenratio: float = 20.0,
    prenet_dropout: bool = True,
) -> GeneratedSpeech:
    """transformers' `_generate_speech` (no vocoder) on a batch, jitted.

    Args:
      model, variables: `SpeechT5TTS` and its {"params", "batch_stats"}.
      ids: int [batch, chars] text ids (padding past `lengths` is masked out).
      lengths: int [batch] valid ids per row.
      speaker: [batch, speaker_embedding_dim] x-vectors.
      rng: key of the pre-net dropout (one mask per step for the whole batch, step t's from
        fold_in(rng, t)); unused when `prenet_dropout` is False.
      threshold, minlenratio, maxlenratio: as transformers. Step idx = 1, 2, ... predicts r
        frames; a row stops at the first idx >= minlen where sum(sigmoid(stop logits)) >=
        threshold, and every row still going stops at idx = maxlen (minlen and maxlen are
        int(chars · ratio / r) of the padded width `chars`, as in transformers).
      prenet_dropout: keep the pre-net's dropout on, as transformers does at inference.
    Raises:
      ValueError: text wider than max_text_positions, or more steps than max_speech_positions.
    Returns:
      GeneratedSpeech: each row's post-net spectrogram is the post-net of its own frames
      (transformers' `result_spectrogram`), padded with zeros.
    """
    d = model.dims
    r, mels = d.reduction_factor, d.num_mel_bins
    batch, chars = ids.shape
    minlen, maxlen, cap = generation_steps(chars, d, minlenratio, maxlenratio)
    if cap > d.max_speech_positions:  # transformers fails there too (its position table ends)
        raise ValueError(
            f"{cap} decoder steps exceed max_speech_positions={d.max_speech_positions}"
        )
    encoded, valid = model.apply(variables, ids, lengths, method=SpeechT5TTS.encode)
    _, state = model.apply(  # creates the caches: empty self-attention, cross keys and values
        variables,
        jnp.zeros((batch, cap, mels), jnp.float32),
        speaker,
        encoded,
        valid,
        decode=True,
        method=SpeechT5TTS.decode,
        mutable=["cache"],
    )

    def step(carry):
        t, prev, cache, feats, done, steps, stopped = carry
        (_, mel, stop), out = model.apply(
            {**variables, "cache": cache},
            prev[:, None],  # [batch, 1, mels]
            speaker,
            None,
            valid,
            t,
            decode=True,
            prenet_dropout=prenet_dropout,
            method=SpeechT5TTS.decode,
            mutable=["cache"],
            rngs={"dropout": jax.random.fold_in(rng, t)},
        )  # [batch, 1, r, mels], [batch, 1, r]
        feats = jax.lax.dynamic_update_slice_in_dim(feats, mel, t, axis=1)
        idx = t + 1
        prob = jnp.sum(jax.nn.sigmoid(stop[:, 0].astype(jnp.float32)), axis=-1)  # [batch]
        hit = prob >= threshold
        meet = jnp.logical_or(hit, idx >= maxlen)
        new = jnp.logical_and(jnp.logical_and(meet, idx >= minlen), jnp.logical_not(done))
        steps = jnp.where(new, idx, steps)
        stopped = jnp.where(new, hit, stopped)
        return idx, mel[:, 0, -1], out["cache"], feats, done | new, steps, stopped

    def keep_going(carry):
        t, done = carry[0], carry[4]
        return jnp.logical_and(t < cap, jnp.logical_not(jnp.all(done)))

    init = (
        jnp.array(0, jnp.int32),
        jnp.zeros((batch, mels), jnp.float32),  # step 0 reads an all-zero frame
        state["cache"],
        jnp.zeros((batch, cap, r, mels), jnp.float32),
        jnp.zeros((batch,), bool),
        jnp.zeros((batch,), jnp.int32),
        jnp.zeros((batch,), bool),
    )
    _, _, _, feats, _, steps, stopped = jax.lax.while_loop(keep_going, step, init)
    frames = steps * r
    before = feats.reshape(batch, cap * r, mels)  # [batch, cap · r, mels]
    after = model.apply(variables, before, frames, method=SpeechT5TTS.postnet)
    keep = (jnp.arange(cap * r)[None, :] < frames[:, None])[..., None]
    return GeneratedSpeech(jnp.where(keep, after, 0.0), frames, stopped)
