"""Classification heads on jaxseq's audio encoder (the CTC family's conv stem + Transformer).

The encoder's parameters sit under "encoder", exactly as in `CTCModel`, so a classifier can
start from a trained CTC checkpoint (`train.init_from`); the head is "classifier".
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseq.config import ModelConfig
from jaxseq.models.encoder import audio_encoder
from jaxseq.models.layers import constrain, dense, padding_mask
from jaxseq.parallel.sharding import BATCH, EMBED, LABELS, LENGTH


def masked_mean(x: jax.Array, lengths: jax.Array) -> jax.Array:
    """Mean of x [batch, length, features] over each row's first `lengths` [batch] positions
    → [batch, features]; padded positions never count (an empty row gives zeros)."""
    valid = padding_mask(lengths, x.shape[1])[:, :, None].astype(x.dtype)  # [b, T, 1]
    total = jnp.sum(x * valid, axis=1)  # [b, features]
    return total / jnp.maximum(lengths, 1)[:, None].astype(x.dtype)


class EncoderClassifier(nn.Module):
    """Log-mel → class logits per sequence (mean over valid frames, then a linear layer) or per
    encoder frame (a linear layer on every frame).

    Attributes:
      cfg: encoder sizes (d_model, num_heads, num_layers, mlp_dim, dropout, subsample_strides).
      num_labels: classes.
      level: "sequence" or "frame".
    """

    cfg: ModelConfig
    num_labels: int
    level: str = "sequence"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self, features: jax.Array, lengths: jax.Array, deterministic: bool = True
    ) -> tuple[jax.Array, jax.Array]:
        """features [batch, frames, n_mels], lengths [batch] → (logits float32: [batch, labels]
        at sequence level, [batch, enc_frames, labels] at frame level; enc_lengths [batch])."""
        cfg = self.cfg
        x, enc_lengths = audio_encoder(cfg, self.dtype)(
            features, lengths, deterministic
        )  # [b, enc_frames, d_model]
        head = dense(self.num_labels, (EMBED, LABELS), self.dtype, "classifier")
        if self.level == "frame":
            logits = head(x)  # [b, enc_frames, labels]
            return constrain(logits.astype(jnp.float32), BATCH, LENGTH, LABELS), enc_lengths
        pooled = masked_mean(x, enc_lengths)  # [b, d_model]
        logits = head(pooled)  # [b, labels]
        return constrain(logits.astype(jnp.float32), BATCH, LABELS), enc_lengths
