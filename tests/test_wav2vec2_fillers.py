"""An evaluation batch's filler rows (0 samples, beyond a split's last item) through the
Wav2Vec2 encoder: every output stays finite and the real rows are those of the batch without
fillers. The first conv's per-item GroupNorm used to take its statistics over no frames at all
(0/0 = NaN), which made a HuBERT run's validation loss NaN whenever a split's size was not a
multiple of the evaluation batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq.models.wav2vec2 import Wav2Vec2CTC, Wav2Vec2Dims
from tests.wav2vec2_tiny import TINY

DIMS = Wav2Vec2Dims(**TINY, vocab_size=6)


def test_filler_rows_stay_finite_and_change_no_real_row():
    rng = np.random.default_rng(0)
    lengths = np.array([1600, 1100, 0, 0], np.int32)  # two items, two fillers
    waves = rng.normal(size=(4, 1600)).astype(np.float32)
    waves[np.arange(1600)[None, :] >= lengths[:, None]] = 0.0  # as collate_waveforms pads
    model = Wav2Vec2CTC(DIMS)
    params = model.init(jax.random.PRNGKey(0), jnp.asarray(waves), jnp.asarray(lengths))
    logits, out = model.apply(params, jnp.asarray(waves), jnp.asarray(lengths))
    assert np.isfinite(np.asarray(logits)).all()
    assert np.isfinite(np.asarray(out.conv_features)).all()
    alone, _ = model.apply(params, jnp.asarray(waves[:2]), jnp.asarray(lengths[:2]))
    np.testing.assert_allclose(np.asarray(logits[:2]), np.asarray(alone), rtol=1e-5, atol=1e-6)
