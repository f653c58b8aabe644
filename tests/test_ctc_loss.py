"""CTC loss numerics against torch (float64), optax and a brute-force float64 NumPy oracle."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from jaxseq.losses.ctc import ctc_feasible, ctc_loss

RTOL = 1e-4
GRAD_ATOL = 1e-6  # gradient entries are differences of probabilities, |g| <= 1


def random_batch(
    seed: int,
    batch: int = 6,
    frames: int = 12,
    max_labels: int = 5,
    vocab: int = 6,
    blank_id: int = 0,
):
    """A mixed batch: repeats ("aa"), an empty label, padded frames, one infeasible item.

    Returns numpy arrays: logits [batch, frames, vocab] f32, logit_lengths [batch],
    labels [batch, max_labels] (padding = -1 beyond label_lengths), label_lengths [batch].
    """
    rng = np.random.default_rng(seed)
    logits = (2.0 * rng.normal(size=(batch, frames, vocab))).astype(np.float32)
    non_blank = np.array([v for v in range(vocab) if v != blank_id])
    labels = rng.choice(non_blank, size=(batch, max_labels))
    labels[0, 1] = labels[0, 0]  # a repeat: needs a blank in between
    labels[1, 2:4] = labels[1, 1]  # a triple repeat
    label_lengths = rng.integers(1, max_labels + 1, size=batch)
    label_lengths[:2] = max_labels
    label_lengths[2] = 0  # empty label
    logit_lengths = rng.integers(max_labels + 4, frames + 1, size=batch)
    logit_lengths[3] = frames
    logit_lengths[4] = 3  # infeasible unless its label is short
    label_lengths[4] = max_labels
    labels[np.arange(max_labels)[None, :] >= label_lengths[:, None]] = -1
    logits[np.arange(frames)[None, :] >= logit_lengths[:, None]] = 50.0  # garbage
    return (
        logits,
        logit_lengths.astype(np.int32),
        labels.astype(np.int32),
        label_lengths.astype(np.int32),
    )


@functools.cache
def _loss_and_grad_fn(blank_id: int):
    def loss_and_total(x, logit_lengths, labels, label_lengths):
        loss = ctc_loss(x, logit_lengths, labels, label_lengths, blank_id=blank_id)
        return loss.sum(), loss

    return jax.jit(jax.grad(loss_and_total, has_aux=True))


def jax_loss_and_grad(logits, logit_lengths, labels, label_lengths, blank_id=0):
    """Jitted loss [batch] and the gradient of its sum w.r.t. logits, as numpy."""
    grad, loss = _loss_and_grad_fn(blank_id)(
        jnp.asarray(logits), logit_lengths, labels, label_lengths
    )
    return np.asarray(loss), np.asarray(grad)


def torch_loss_and_grad(logits, logit_lengths, labels, label_lengths, blank_id=0):
    x = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    log_probs = torch.log_softmax(x, dim=-1).transpose(0, 1)  # [frames, batch, vocab]
    loss = torch.nn.functional.ctc_loss(
        log_probs,
        torch.tensor(np.maximum(labels, 0), dtype=torch.long),
        torch.tensor(logit_lengths, dtype=torch.long),
        torch.tensor(label_lengths, dtype=torch.long),
        blank=blank_id,
        reduction="none",
        zero_infinity=True,
    )
    loss.sum().backward()
    return loss.detach().numpy(), x.grad.numpy()


@jax.jit
def _optax_loss_and_grad(logits, logit_lengths, labels, label_lengths):
    logit_pad = jnp.arange(logits.shape[1])[None, :] >= logit_lengths[:, None]
    label_pad = jnp.arange(labels.shape[1])[None, :] >= label_lengths[:, None]

    def loss_and_total(x):
        loss = optax.ctc_loss(
            x, logit_pad.astype(jnp.float32), jnp.maximum(labels, 0), label_pad.astype(jnp.float32)
        )
        return loss.sum(), loss

    return jax.grad(loss_and_total, has_aux=True)(logits)


def optax_loss_and_grad(logits, logit_lengths, labels, label_lengths):
    grad, loss = _optax_loss_and_grad(logits, logit_lengths, labels, label_lengths)
    return np.asarray(loss), np.asarray(grad)


@pytest.mark.parametrize("seed", range(6))
def test_matches_torch_float64(seed):
    blank_id = 0 if seed % 2 == 0 else 5
    batch = random_batch(seed, blank_id=blank_id)
    loss, grad = jax_loss_and_grad(*batch, blank_id=blank_id)
    ref_loss, ref_grad = torch_loss_and_grad(*batch, blank_id=blank_id)
    np.testing.assert_allclose(loss, ref_loss, rtol=RTOL, atol=1e-5)
    np.testing.assert_allclose(grad, ref_grad, rtol=RTOL, atol=GRAD_ATOL)
    # ctc_feasible agrees with torch's inf (zero_infinity=False) on every item.
    _, logit_lengths, labels, label_lengths = batch
    log_probs = torch.log_softmax(torch.tensor(batch[0], dtype=torch.float64), -1).transpose(0, 1)
    torch_inf = torch.nn.functional.ctc_loss(
        log_probs,
        torch.tensor(np.maximum(labels, 0)),
        torch.tensor(logit_lengths),
        torch.tensor(label_lengths),
        blank=blank_id,
        reduction="none",
    ).isinf()
    feasible = np.asarray(ctc_feasible(logit_lengths, labels, label_lengths))
    np.testing.assert_array_equal(feasible, ~torch_inf.numpy())
    assert not feasible.all()


@pytest.mark.parametrize("seed", range(3))
def test_matches_optax_on_feasible_items(seed):
    logits, logit_lengths, labels, label_lengths = random_batch(seed)
    feasible = np.asarray(ctc_feasible(logit_lengths, labels, label_lengths))
    assert feasible.sum() >= 4
    loss, grad = jax_loss_and_grad(logits, logit_lengths, labels, label_lengths)
    ref_loss, ref_grad = optax_loss_and_grad(logits, logit_lengths, labels, label_lengths)
    np.testing.assert_allclose(loss[feasible], ref_loss[feasible], rtol=RTOL, atol=1e-5)
    np.testing.assert_allclose(grad[feasible], ref_grad[feasible], rtol=RTOL, atol=1e-5)


def test_padded_frames_get_exactly_zero_gradient_and_do_not_change_loss():
    logits, logit_lengths, labels, label_lengths = random_batch(7)
    loss, grad = jax_loss_and_grad(logits, logit_lengths, labels, label_lengths)
    padded = np.arange(logits.shape[1])[None, :] >= logit_lengths[:, None]
    assert padded.any()
    assert np.all(grad[padded] == 0.0)
    other = logits.copy()
    other[padded] = -7.0
    np.testing.assert_array_equal(
        loss, jax_loss_and_grad(other, logit_lengths, labels, label_lengths)[0]
    )


def test_infeasible_is_zero_finite_and_matches_torch_zero_infinity():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 6, 4)).astype(np.float32)
    labels = np.array([[1, 1, 1], [1, 2, 3], [2, 2, 0], [1, 2, 0]], np.int32)
    label_lengths = np.array([3, 3, 2, 2], np.int32)
    logit_lengths = np.array([4, 2, 3, 0], np.int32)  # needs 5, 3, 3, 2 frames
    np.testing.assert_array_equal(
        ctc_feasible(logit_lengths, labels, label_lengths), [False, False, True, False]
    )
    loss, grad = jax_loss_and_grad(logits, logit_lengths, labels, label_lengths)
    ref_loss, ref_grad = torch_loss_and_grad(logits, logit_lengths, labels, label_lengths)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))
    np.testing.assert_array_equal(loss[[0, 1, 3]], 0.0)
    np.testing.assert_array_equal(grad[[0, 1, 3]], 0.0)
    assert loss[2] > 0 and np.abs(grad[2]).sum() > 0
    np.testing.assert_allclose(loss, ref_loss, rtol=RTOL, atol=1e-5)
    np.testing.assert_allclose(grad, ref_grad, rtol=RTOL, atol=GRAD_ATOL)


def test_never_negative_when_one_alignment_is_certain():
    frames, vocab = 40, 8
    path = np.array([0, 3, 3, 0, 5, 5, 5, 0, 3] + [0] * (frames - 9))  # labels 3 5 3
    logits = np.full((4, frames, vocab), -30.0, np.float32)
    logits[:, np.arange(frames), path] = 30.0
    logits += np.random.default_rng(0).normal(scale=1e-3, size=logits.shape).astype(np.float32)
    labels = np.tile(np.array([[3, 5, 3]], np.int32), (4, 1))
    loss, grad = jax_loss_and_grad(
        logits, np.full(4, frames, np.int32), labels, np.full(4, 3, np.int32)
    )
    assert np.all(loss >= 0.0) and np.all(loss < 1e-4)
    assert np.all(np.isfinite(grad))


def test_masked_vocabulary_entries_minus_inf():
    logits, logit_lengths, labels, label_lengths = random_batch(4)
    masked = logits.copy()
    masked[:, :, 4] = -np.inf  # an entry that may or may not be in the labels
    loss, grad = jax_loss_and_grad(masked, logit_lengths, labels, label_lengths)
    assert np.all(np.isfinite(grad)) and not np.any(np.isnan(loss))
    needs_masked = np.any((labels == 4) & (np.arange(5)[None, :] < label_lengths[:, None]), 1)
    assert needs_masked.any() and not needs_masked.all()
    np.testing.assert_array_equal(loss[needs_masked], 0.0)  # p = 0: zero_infinity
    np.testing.assert_array_equal(grad[needs_masked], 0.0)
    np.testing.assert_array_equal(grad[:, :, 4], 0.0)
    ref_loss = torch_loss_and_grad(masked, logit_lengths, labels, label_lengths)[0]
    np.testing.assert_allclose(loss, ref_loss, rtol=RTOL, atol=1e-5)
    # torch's gradient has NaNs with -inf logits: compare with a finite, as good as 0, mask.
    masked[:, :, 4] = -1e9
    ok = ~needs_masked
    ref_grad = torch_loss_and_grad(masked, logit_lengths, labels, label_lengths)[1]
    np.testing.assert_allclose(grad[ok], ref_grad[ok], rtol=RTOL, atol=GRAD_ATOL)


def test_frame_that_no_state_can_emit_gives_zero_not_nan():
    logits = np.random.default_rng(3).normal(size=(2, 4, 3)).astype(np.float32)
    logits[0, 1] = [-np.inf, -np.inf, 0.0]  # frame 1 can only be symbol 2; label is [1]
    loss, grad = jax_loss_and_grad(
        logits,
        np.array([4, 4], np.int32),
        np.array([[1], [1]], np.int32),
        np.array([1, 1], np.int32),
    )
    assert loss[0] == 0.0 and np.all(grad[0] == 0.0)
    assert loss[1] > 0.0 and np.all(np.isfinite(grad))


def test_empty_labels_and_empty_frames():
    logits = np.random.default_rng(2).normal(size=(3, 5, 4)).astype(np.float32)
    labels = np.zeros((3, 2), np.int32)
    logit_lengths = np.array([5, 2, 0], np.int32)
    loss, grad = jax_loss_and_grad(logits, logit_lengths, labels, np.zeros(3, np.int32))
    log_probs = jax.nn.log_softmax(logits.astype(np.float64))
    expected = [-np.sum(np.asarray(log_probs)[b, :n, 0]) for b, n in enumerate(logit_lengths)]
    np.testing.assert_allclose(loss, expected, rtol=RTOL, atol=1e-6)
    np.testing.assert_array_equal(grad[2], 0.0)


def brute_force(logits: np.ndarray, labels: list[int], blank_id: int = 0):
    """Float64 loss and d loss / d logits of one utterance, enumerating all vocab**frames paths."""
    frames, vocab = logits.shape
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    total, occupancy = 0.0, np.zeros((frames, vocab))
    for path in itertools.product(range(vocab), repeat=frames):
        merged = [k for i, k in enumerate(path) if i == 0 or k != path[i - 1]]
        if [k for k in merged if k != blank_id] == labels:
            p = np.exp(log_probs[np.arange(frames), path].sum())
            total += p
            occupancy[np.arange(frames), path] += p
    return -np.log(total), np.exp(log_probs) - occupancy / total


@pytest.mark.parametrize("labels", [[1], [1, 2], [2, 2], [1, 2, 1], []])
def test_matches_brute_force_oracle(labels):
    logits = np.random.default_rng(len(labels)).normal(size=(4, 3))
    ref_loss, ref_grad = brute_force(logits, labels)
    padded = np.array([labels + [0] * (3 - len(labels))], np.int32)
    loss, grad = jax_loss_and_grad(
        logits[None].astype(np.float32),
        np.array([4], np.int32),
        padded,
        np.array([len(labels)], np.int32),
    )
    np.testing.assert_allclose(loss[0], ref_loss, rtol=RTOL)
    np.testing.assert_allclose(grad[0], ref_grad, rtol=RTOL, atol=GRAD_ATOL)


def test_jit_vmap_and_bfloat16():
    logits, logit_lengths, labels, label_lengths = random_batch(3)
    jitted = jax.jit(ctc_loss)
    loss = np.asarray(jitted(logits, logit_lengths, labels, label_lengths))
    np.testing.assert_allclose(loss, torch_loss_and_grad(*random_batch(3))[0], rtol=RTOL, atol=1e-5)
    stacked = [np.stack([a, a[::-1]]) for a in (logits, logit_lengths, labels, label_lengths)]
    mapped = np.asarray(jax.jit(jax.vmap(ctc_loss))(*stacked))
    np.testing.assert_allclose(mapped, np.stack([loss, loss[::-1]]), rtol=1e-5)
    half_logits = jnp.asarray(logits, jnp.bfloat16)
    half = jitted(half_logits, logit_lengths, labels, label_lengths)
    assert half.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(half), loss, rtol=2e-2, atol=1e-2)
    grad = jax.jit(jax.grad(lambda x: ctc_loss(x, logit_lengths, labels, label_lengths).sum()))(
        half_logits
    )
    assert grad.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(grad, np.float32)))
