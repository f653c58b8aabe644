"""CTC encoder-only ASR model: Transformer encoder + linear head over characters and blank."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseq.config import ModelConfig
from jaxseq.models.encoder import audio_encoder
from jaxseq.models.layers import constrain, dense
from jaxseq.parallel.sharding import BATCH, EMBED, LENGTH, VOCAB


class CTCModel(nn.Module):
    """Log-mel → per-frame logits over `vocab_size` classes (blank included)."""

    cfg: ModelConfig
    vocab_size: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self, features: jax.Array, lengths: jax.Array, deterministic: bool = True
    ) -> tuple[jax.Array, jax.Array]:
        """features [batch, frames, n_mels], lengths [batch] →
        (logits float32 [batch, enc_frames, vocab], enc_lengths [batch])."""
        cfg = self.cfg
        x, lengths = audio_encoder(cfg, self.dtype)(features, lengths, deterministic)
        logits = dense(self.vocab_size, (EMBED, VOCAB), self.dtype, "head")(x)  # [b, frames, vocab]
        return constrain(logits.astype(jnp.float32), BATCH, LENGTH, VOCAB), lengths
