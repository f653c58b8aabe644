"""TTS losses against torch and a float64 NumPy oracle of ESPnet's guided-attention mask."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxseq.losses.tts import (
    guided_attention_loss,
    guided_attention_weights,
    spectrogram_error,
    stop_bce,
)


@pytest.mark.parametrize("kind", ["l1", "mse", "l1+mse"])
def test_spectrogram_error_matches_torch(kind):
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=(2, 2, 7, 5)).astype(np.float32)
    lengths = np.array([7, 3])
    mask = np.arange(7)[None] < lengths[:, None]
    got = np.asarray(spectrogram_error(pred, target, mask, kind))
    for b, n in enumerate(lengths):
        p, t = torch.tensor(pred[b, :n]), torch.tensor(target[b, :n])
        want = 0.0
        if "l1" in kind:
            want += torch.nn.functional.l1_loss(p, t, reduction="mean").item() * n
        if "mse" in kind:
            want += torch.nn.functional.mse_loss(p, t, reduction="mean").item() * n
        np.testing.assert_allclose(got[b], want, rtol=1e-5)


def test_spectrogram_error_rejects_unknown_kind():
    with pytest.raises(ValueError, match="huber"):
        spectrogram_error(jnp.zeros((1, 1, 1)), jnp.zeros((1, 1, 1)), jnp.ones((1, 1)), "huber")


def test_stop_bce_matches_torch_pos_weight():
    rng = np.random.default_rng(1)
    logits = (rng.normal(size=(3, 9)) * 4).astype(np.float32)
    targets = (rng.random((3, 9)) < 0.3).astype(np.float32)
    mask = np.arange(9)[None] < np.array([9, 5, 1])[:, None]
    got = np.asarray(stop_bce(logits, targets, mask, pos_weight=5.0))
    loss = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(5.0), reduction="none")
    per = loss(torch.tensor(logits), torch.tensor(targets)).numpy()
    np.testing.assert_allclose(got, (per * mask).sum(-1), rtol=1e-5)


def _espnet_mask(steps: int, chars: int, sigma: float) -> np.ndarray:
    """ESPnet's GuidedAttentionLoss._make_guided_attention_mask, float64, written as loops."""
    w = np.zeros((steps, chars))
    for s in range(steps):
        for n in range(chars):
            w[s, n] = 1.0 - np.exp(-((n / chars - s / steps) ** 2) / (2 * sigma**2))
    return w


def test_guided_attention_matches_float64_oracle():
    steps, chars, sigma = np.array([6, 4]), np.array([3, 5]), 0.4
    got = np.asarray(guided_attention_weights(jnp.asarray(steps), jnp.asarray(chars), 7, 6, sigma))
    for b in range(2):
        want = np.zeros((7, 6))
        want[: steps[b], : chars[b]] = _espnet_mask(steps[b], chars[b], sigma)
        np.testing.assert_allclose(got[b], want, atol=1e-6)
    rng = np.random.default_rng(2)
    attention = rng.random((2, 7, 6)).astype(np.float32)
    loss = np.asarray(
        guided_attention_loss(attention, jnp.asarray(steps), jnp.asarray(chars), sigma)
    )
    want = [
        (attention[b, : steps[b], : chars[b]] * _espnet_mask(steps[b], chars[b], sigma)).sum()
        for b in range(2)
    ]
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    # A diagonal alignment costs (almost) nothing; a flat one costs a lot.
    diagonal = np.eye(6, dtype=np.float32)[None]
    flat = np.full((1, 6, 6), 1 / 6, np.float32)
    six = jnp.array([6])
    assert float(guided_attention_loss(diagonal, six, six, sigma)[0]) < 1e-6
    assert float(guided_attention_loss(flat, six, six, sigma)[0]) > 0.5
