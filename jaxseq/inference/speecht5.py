"""Speech from text with converted transformers SpeechT5 checkpoints: `SpeechT5ForTextToSpeech`
(jaxseq.models.speecht5) and its `SpeechT5HifiGan` vocoder (jaxseq.models.hifigan).

    synth = load_speecht5("speecht5_tts/", "speecht5_hifigan/")
    results = synth.synthesize(["Hello there."], np.load("speaker.npy"), seed=0)
    results[0].audio  # float32 [samples] at synth.sample_rate (16 kHz)

`generate_speech` is transformers' `SpeechT5ForTextToSpeech.generate_speech` as one jitted
`lax.while_loop` over cached decoder steps (see its docstring for the correspondence).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq.convert.hf_speecht5 import SpeechT5Text, load_hf_hifigan, load_hf_speecht5
from jaxseq.errors import JaxseqError
from jaxseq.models.hifigan import HifiGan, HifiGanDims
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


class SpeechT5Result(NamedTuple):
    """One synthesized text."""

    audio: np.ndarray  # float32 [samples] at the vocoder's sampling rate
    frames: int  # spectrogram frames
    stopped: bool  # False: never predicted stop (cut at the maximum length)


class SpeechT5Synthesizer:
    """Converted SpeechT5 TTS + HiFi-GAN vocoder + tokenizer (`load_speecht5`)."""

    def __init__(
        self,
        dims: SpeechT5Dims,
        variables: Any,
        vocoder_dims: HifiGanDims,
        vocoder_variables: Any,
        text: SpeechT5Text,
    ):
        self.dims, self.variables = dims, variables
        self.vocoder_dims, self.vocoder_variables = vocoder_dims, vocoder_variables
        self.text = text
        self.model = SpeechT5TTS(dims)
        self._vocode = jax.jit(HifiGan(vocoder_dims).apply)

    @property
    def sample_rate(self) -> int:
        """The vocoder's output rate (16 kHz for microsoft/speecht5_hifigan)."""
        return self.vocoder_dims.sampling_rate

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids int [batch, width] padded with pad_token_id, lengths int [batch])."""
        if not texts:
            raise JaxseqError("no text to synthesize")
        ids = [self.text.encode(t) for t in texts]
        for t, x in zip(texts, ids, strict=True):
            if len(x) <= 1:
                raise JaxseqError(f"{t!r}: nothing to synthesize")
            if len(x) > self.dims.max_text_positions:
                raise JaxseqError(
                    f"{t[:40]!r}...: {len(x)} ids; SpeechT5 takes at most "
                    f"max_text_positions={self.dims.max_text_positions}"
                )
        out = np.full((len(ids), max(map(len, ids))), self.dims.pad_token_id, np.int32)
        for i, x in enumerate(ids):
            out[i, : len(x)] = x
        return out, np.array([len(x) for x in ids], np.int32)

    def synthesize(
        self,
        texts: list[str],
        speaker_embedding: np.ndarray,
        seed: int = 0,
        *,
        threshold: float = 0.5,
        minlenratio: float = 0.0,
        maxlenratio: float = 20.0,
        prenet_dropout: bool = True,
    ) -> list[SpeechT5Result]:
        """Speech for each text, generated as one batch (`generate_speech`) and vocoded as
        transformers' batched `generate_speech(vocoder=...)` does (the zero-padded batch of
        spectrograms, each waveform cut to frames · hop samples).

        speaker_embedding: [speaker_dim] (every text) or [len(texts), speaker_dim] x-vectors.
        `seed` drives the pre-net dropout (same seed, same audio)."""
        ids, lengths = self.encode(texts)
        speaker = np.asarray(speaker_embedding, np.float32)
        dim = self.dims.speaker_embedding_dim
        if speaker.ndim == 1:
            speaker = np.broadcast_to(speaker, (len(texts), speaker.shape[0]))
        if speaker.shape != (len(texts), dim):
            raise JaxseqError(
                f"speaker embedding of shape {np.shape(speaker_embedding)}; expected ({dim},) "
                f"or ({len(texts)}, {dim})"
            )
        _, _, cap = generation_steps(ids.shape[1], self.dims, minlenratio, maxlenratio)
        if cap > self.dims.max_speech_positions:
            raise JaxseqError(
                f"{cap} decoder steps exceed max_speech_positions="
                f"{self.dims.max_speech_positions}: shorten the texts or lower maxlenratio"
            )
        out = generate_speech(
            self.model,
            self.variables,
            jnp.asarray(ids),
            jnp.asarray(lengths),
            jnp.asarray(speaker),
            jax.random.PRNGKey(seed),
            threshold=threshold,
            minlenratio=minlenratio,
            maxlenratio=maxlenratio,
            prenet_dropout=prenet_dropout,
        )
        frames = np.asarray(out.frames)
        width = int(frames.max())
        audio = np.asarray(self._vocode(self.vocoder_variables, out.spectrogram[:, :width]))
        hop = self.vocoder_dims.hop_length
        return [
            SpeechT5Result(audio[i, : int(n) * hop].astype(np.float32), int(n), bool(s))
            for i, (n, s) in enumerate(zip(frames, np.asarray(out.stopped), strict=True))
        ]


def load_speecht5(
    model_dir: str | Path, vocoder_dir: str | Path, processor_dir: str | Path | None = None
) -> SpeechT5Synthesizer:
    """Converts a transformers SpeechT5ForTextToSpeech folder and a SpeechT5HifiGan folder;
    the tokenizer's spm_char.model comes from `processor_dir` (default: `model_dir`).
    Raises jaxseq.convert.hf_whisper.ConversionError on a missing or foreign file."""
    dims, variables = load_hf_speecht5(model_dir)
    vocoder_dims, vocoder_variables = load_hf_hifigan(vocoder_dir)
    if vocoder_dims.model_in_dim != dims.num_mel_bins:
        raise JaxseqError(
            f"{vocoder_dir}: the vocoder takes {vocoder_dims.model_in_dim} mel bins, the model "
            f"in {model_dir} makes {dims.num_mel_bins}"
        )
    text = SpeechT5Text(processor_dir if processor_dir is not None else model_dir)
    return SpeechT5Synthesizer(dims, variables, vocoder_dims, vocoder_variables, text)
