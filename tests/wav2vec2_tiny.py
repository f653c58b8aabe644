"""What the Wav2Vec2/HuBERT tests share: one tiny model size (transformers' config field names,
`Wav2Vec2Dims` too) and the tolerance check against transformers."""

from __future__ import annotations

import numpy as np

# hidden 32, 2 layers of 2 heads; three convs of 16 channels, 20 samples per frame
TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(16, 16, 16),
    conv_kernel=(10, 3, 3),
    conv_stride=(5, 2, 2),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
)


def assert_close(ours, theirs, what: str, tol: float = 1e-5) -> float:
    """Asserts max |ours - theirs| <= tol · max(1, max |theirs|); returns the difference."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, what
    err = float(np.abs(ours - theirs).max())
    scale = max(1.0, float(np.abs(theirs).max()))
    print(f"{what}: max |jaxseq - transformers| = {err:.2e} (scale {scale:.1f})")
    assert err <= tol * scale, what
    return err
