"""Label-smoothed cross-entropy from integer labels against optax's one-hot path and a float64
NumPy oracle, and the memory it saves at Whisper's vocabulary."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxseq.losses.cross_entropy import smoothed_cross_entropy


def _optax(logits, targets, smoothing):
    soft = optax.smooth_labels(jax.nn.one_hot(targets, logits.shape[-1]), smoothing)
    return optax.softmax_cross_entropy(logits, soft)


def _oracle(logits, targets, smoothing):
    z = np.asarray(logits, np.float64)
    vocab = z.shape[-1]
    logp = z - np.log(np.sum(np.exp(z - z.max(-1, keepdims=True)), -1, keepdims=True))
    logp -= z.max(-1, keepdims=True)
    soft = np.full(z.shape, smoothing / vocab)
    np.put_along_axis(soft, np.asarray(targets)[..., None], 1 - smoothing + smoothing / vocab, -1)
    return -np.sum(soft * logp, -1)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5])
def test_equals_optax_and_the_float64_oracle(smoothing):
    logits = 4.0 * jax.random.normal(jax.random.PRNGKey(0), (3, 7, 50))
    targets = jax.random.randint(jax.random.PRNGKey(1), (3, 7), 0, 50)
    ours = smoothed_cross_entropy(logits, targets, smoothing)
    assert ours.shape == (3, 7) and ours.dtype == jnp.float32
    np.testing.assert_allclose(ours, _oracle(logits, targets, smoothing), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours, _optax(logits, targets, smoothing), rtol=1e-5, atol=1e-5)
    # The gradient with respect to the logits: softmax(z) - the smoothed target.
    grad = lambda f: jax.grad(lambda z: jnp.sum(f(z, targets, smoothing)))(logits)  # noqa: E731
    np.testing.assert_allclose(grad(smoothed_cross_entropy), grad(_optax), atol=1e-6)


def test_bfloat16_logits_are_scored_in_float32():
    logits = (4.0 * jax.random.normal(jax.random.PRNGKey(2), (2, 5, 64))).astype(jnp.bfloat16)
    targets = jnp.arange(10).reshape(2, 5)
    ours = smoothed_cross_entropy(logits, targets, 0.1)
    assert ours.dtype == jnp.float32
    np.testing.assert_allclose(ours, _oracle(logits.astype(jnp.float32), targets, 0.1), rtol=1e-5)


def test_no_one_hot_at_whisper_vocabulary():
    """The loss and its gradient at batch 4, 48 tokens, 51,865 tokens: the compiled program's
    temporaries are smaller than optax's one-hot path's by at least one [4, 48, V] float32."""
    shape, vocab = (4, 48), 51865
    logits = jax.ShapeDtypeStruct((*shape, vocab), jnp.float32)
    targets = jax.ShapeDtypeStruct(shape, jnp.int32)

    def temp_bytes(loss):
        step = jax.jit(jax.value_and_grad(lambda z, t: jnp.sum(loss(z, t, 0.1))))
        return step.lower(logits, targets).compile().memory_analysis().temp_size_in_bytes

    one_array = 4 * np.prod(shape) * vocab
    assert temp_bytes(smoothed_cross_entropy) + one_array <= temp_bytes(_optax)
