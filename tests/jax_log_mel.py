"""A batched, jit-compiled log-mel in JAX, for the frontend tests only: jaxseq computes features
offline, once, with `jaxseq.audio.frontend.log_mel_numpy` (`prepare`); this is the on-device
variant of the same steps, padded batches and per-utterance reflection included, checked
against openai-whisper in tests/test_frontend.py."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq.audio.frontend import mel_filters
from jaxseq.config import FrontendConfig

_LOG_FLOOR = 1e-10  # power floor before log10 (Whisper's)
_DYNAMIC_RANGE = 8.0  # log10 units kept below each utterance's maximum (Whisper's)


def _frames(audio: jax.Array, lengths: jax.Array, cfg: FrontendConfig) -> jax.Array:
    """Centered, reflect-padded STFT frames, reflecting at each utterance's own end.

    Args:
      audio: [batch, num_samples]; lengths: int [batch].

    Returns:
      [batch, num_samples // hop, n_fft] (frames past an utterance's end hold junk).
    """
    batch, num_samples = audio.shape
    hop, n_fft, half = cfg.hop_length, cfg.n_fft, cfg.n_fft // 2
    frames = num_samples // hop
    chunks_per_frame = -(-n_fft // hop)  # ceil
    padded_len = (frames + chunks_per_frame - 1) * hop
    # Position p of the padded signal is sample p - half of the utterance, reflected at 0 and at
    # length - 1 (numpy/torch "reflect": the edge sample is not repeated).
    idx = jnp.arange(padded_len)[None, :] - half  # [1, padded_len]
    last = (lengths - 1)[:, None]  # [batch, 1]
    idx = jnp.abs(idx)
    idx = jnp.where(idx > last, 2 * last - idx, idx)
    idx = jnp.clip(idx, 0, num_samples - 1)  # [batch, padded_len]
    padded = jnp.take_along_axis(audio, idx, axis=1)  # [batch, padded_len]
    # Frame t = padded[t * hop : t * hop + n_fft], built from hop-sized chunks without a gather.
    chunks = padded.reshape(batch, -1, hop)  # [batch, frames + chunks_per_frame - 1, hop]
    stacked = jnp.concatenate(
        [chunks[:, i : i + frames] for i in range(chunks_per_frame)], axis=-1
    )  # [batch, frames, chunks_per_frame * hop]
    return stacked[..., :n_fft]  # [batch, frames, n_fft]


@functools.partial(jax.jit, static_argnames="cfg")
def log_mel_jax(
    audio: jax.Array, cfg: FrontendConfig, lengths: jax.Array | None = None
) -> jax.Array:
    """Log-mel features of a zero-padded batch, on device (jit-compiled; `cfg` is static).

    Each utterance is treated as if alone: the STFT reflects at its own end and the max - 8
    floor uses the maximum over its own valid frames, so valid frames equal `log_mel_numpy` of
    the unpadded audio. Frames past an utterance's `lengths[b] // hop_length` are set to 0.

    Args:
      audio: float [batch, num_samples], zero-padded.
      cfg: frontend settings (static).
      lengths: int [batch] valid samples per utterance (each > n_fft // 2); None = all valid.

    Returns:
      float32 [batch, num_samples // hop_length, n_mels].
    """
    audio = audio.astype(jnp.float32)
    batch, num_samples = audio.shape
    if lengths is None:
        lengths = jnp.full((batch,), num_samples, dtype=jnp.int32)
    lengths = lengths.astype(jnp.int32)
    window = jnp.asarray(np.hanning(cfg.n_fft + 1)[:-1], dtype=jnp.float32)  # periodic Hann
    frames = _frames(audio, lengths, cfg) * window  # [batch, frames, n_fft]
    spec = jnp.fft.rfft(frames, axis=-1)  # [batch, frames, n_fft // 2 + 1]
    power = jnp.real(spec) ** 2 + jnp.imag(spec) ** 2
    filters = jnp.asarray(mel_filters(cfg.sample_rate, cfg.n_fft, cfg.n_mels))  # [mels, freq]
    mel = jnp.einsum(
        "btf,mf->btm", power, filters, precision=jax.lax.Precision.HIGHEST
    )  # [batch, frames, n_mels]
    log_spec = jnp.log10(jnp.maximum(mel, _LOG_FLOOR))
    valid = jnp.arange(log_spec.shape[1])[None, :] < (lengths // cfg.hop_length)[:, None]
    peak = jnp.max(jnp.where(valid[..., None], log_spec, -jnp.inf), axis=(1, 2))  # [batch]
    log_spec = jnp.maximum(log_spec, (peak - _DYNAMIC_RANGE)[:, None, None])
    log_spec = (log_spec + 4.0) / 4.0
    return jnp.where(valid[..., None], log_spec, 0.0)  # [batch, frames, n_mels]
