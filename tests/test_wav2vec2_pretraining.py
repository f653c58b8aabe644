"""wav2vec 2.0 pre-training (jaxseq.models.wav2vec2_pretraining, jaxseq.losses.wav2vec2) against
transformers' `Wav2Vec2ForPreTraining`, through the converter's "contrastive" head: the
projected states, the quantized states, the codevector perplexity and the three losses on a
padded batch with a fixed time mask and fixed distractors, in eval mode (argmax codevectors) and
in training mode (hard Gumbel-softmax with transformers' own noise); the straight-through
estimator against torch's; export back into transformers; the distractor sampler; the Gumbel
temperature schedule."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining

from jaxseq.convert.hf_wav2vec2 import (
    wav2vec2_config_from_hf,
    wav2vec2_params_from_hf,
    wav2vec2_params_to_hf,
    wav2vec2_pretraining_config_from_hf,
)
from jaxseq.convert.hf_whisper import ConversionError
from jaxseq.losses.wav2vec2 import (
    gumbel_temperature,
    sample_negative_indices,
    wav2vec2_loss,
)
from jaxseq.models.wav2vec2 import Wav2Vec2Dims
from jaxseq.models.wav2vec2_pretraining import (
    Wav2Vec2PreTraining,
    Wav2Vec2PreTrainingDims,
    gumbel_softmax_hard,
)
from jaxseq.parallel.sharding import LOGICAL_RULES
from tests.wav2vec2_tiny import TINY, assert_close

SIZES = dict(
    # Layer norm in the feature encoder: transformers' padded item then equals the item alone,
    # as jaxseq's does with either norm (its GroupNorm ignores the padding; transformers' does
    # not: tests/test_wav2vec2_parity.py::test_padded_batches compares that case).
    feat_extract_norm="layer",
    **TINY,
    # A small codebook: 16 codevectors for 79 frames, so that distractors equal to their
    # positive (the -inf path) occur.
    num_codevector_groups=2,
    num_codevectors_per_group=4,
    codevector_dim=12,
    proj_codevector_dim=10,
    num_negatives=6,
    diversity_loss_weight=0.3,
    contrastive_logits_temperature=0.2,
)
NO_DROPOUT = dict(
    hidden_dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    feat_proj_dropout=0.0,
    feat_quantizer_dropout=0.0,
    layerdrop=0.0,
)
SAMPLES, SHORT = 1600, 1100  # 79 and 54 frames
FRAMES = 79


def _hf(seed: int = 0, **changes) -> Wav2Vec2ForPreTraining:
    torch.manual_seed(seed)
    model = Wav2Vec2ForPreTraining(Wav2Vec2Config(**{**SIZES, **changes})).eval()
    with torch.no_grad():  # every parameter perturbed, so that a swapped or dropped one shows
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _convert(hf):
    dims = Wav2Vec2Dims(**wav2vec2_config_from_hf(hf.config))
    objective = Wav2Vec2PreTrainingDims(**wav2vec2_pretraining_config_from_hf(hf.config))
    params = wav2vec2_params_from_hf(hf.state_dict(), dims, "contrastive", "wav2vec2", objective)
    return Wav2Vec2PreTraining(dims, objective), params


def _batch():
    """A padded batch, a fixed time mask inside the valid frames, and distractors from it."""
    x = np.random.default_rng(0).standard_normal((2, SAMPLES)).astype(np.float32)
    x[1, SHORT:] = 0.0
    attention = np.zeros((2, SAMPLES), np.int64)
    attention[0], attention[1, :SHORT] = 1, 1
    mask = np.zeros((2, FRAMES), bool)
    mask[0, 3:13] = mask[0, 30:45] = mask[0, 70:79] = mask[1, 5:15] = mask[1, 40:54] = True
    negatives = np.asarray(sample_negative_indices(jax.random.key(0), mask, 6))
    return x, attention, mask, negatives


def _hf_forward(hf, x, attention, mask, negatives):
    offsets = np.arange(2)[:, None, None] * FRAMES  # transformers indexes the flattened batch
    return hf(
        torch.from_numpy(x),
        attention_mask=torch.from_numpy(attention),
        mask_time_indices=torch.from_numpy(mask),
        sampled_negative_indices=torch.from_numpy(negatives + offsets),
    )


def _objective(model, out, negatives, mask):
    """wav2vec2_loss of the model's outputs with its objective's settings."""
    o = model.objective
    return wav2vec2_loss(
        out.projected_states,
        out.projected_quantized_states,
        out.codevector_perplexity,
        negatives,
        mask,
        o.num_codevectors,
        o.contrastive_logits_temperature,
        o.diversity_loss_weight,
    )


def _compare(model, params, theirs, x, mask, negatives, deterministic, rngs=None):
    apply = jax.jit(
        lambda p, x, m: model.apply(
            {"params": p}, x, jnp.array([SAMPLES, SHORT]), m, deterministic, 1.7, rngs=rngs
        )
    )
    out = apply(params, x, mask)
    losses = _objective(model, out, negatives, mask)
    for name in ("projected_states", "projected_quantized_states"):
        ours, hf = np.asarray(getattr(out, name)), getattr(theirs, name).detach().numpy()
        assert_close(ours[0], hf[0], f"{name}, item 0")
        assert_close(ours[1, :54], hf[1, :54], f"{name}, item 1 (valid frames)")
    assert_close(out.codevector_perplexity, theirs.codevector_perplexity.item(), "perplexity")
    assert_close(losses.contrastive_loss, theirs.contrastive_loss.item(), "contrastive loss")
    num_masked = mask.sum()
    assert losses.num_masked == num_masked
    assert_close(losses.diversity_loss * num_masked, theirs.diversity_loss.item(), "diversity loss")
    assert_close(losses.loss, theirs.loss.item(), "loss")
    return out, losses


def test_eval_mode_matches_transformers():
    hf = _hf()
    model, params = _convert(hf)
    x, attention, mask, negatives = _batch()
    with torch.no_grad():
        theirs = _hf_forward(hf, x, attention, mask, negatives)
    out, _ = _compare(model, params, theirs, x, mask, negatives, True)
    # The -inf path ran: some distractor shares its positive's codevectors.
    q = np.asarray(out.projected_quantized_states)
    copies = [
        (q[b, negatives[b, t]] == q[b, t]).all(-1).any()
        for b, t in zip(*np.nonzero(mask), strict=True)
    ]
    assert any(copies) and not all(copies)


def test_training_mode_with_transformers_gumbel_noise(monkeypatch):
    hf = _hf(**NO_DROPOUT).train()
    hf.set_gumbel_temperature(1.7)
    model, params = _convert(hf)
    x, attention, mask, negatives = _batch()
    # Record the noise that torch's own gumbel_softmax draws, from its RNG state at the call.
    original, noises = torch.nn.functional.gumbel_softmax, []

    def recording(logits, tau=1.0, hard=False, **kwargs):
        state = torch.get_rng_state()
        out = original(logits, tau=tau, hard=hard, **kwargs)
        torch.set_rng_state(state)
        noises.append(-torch.empty_like(logits).exponential_().log().numpy())
        return out

    monkeypatch.setattr(torch.nn.functional, "gumbel_softmax", recording)
    torch.manual_seed(1)
    with torch.no_grad():
        theirs = _hf_forward(hf, x, attention, mask, negatives)
    (noise,) = noises
    # ... and feed the same noise to the JAX quantizer.
    monkeypatch.setattr(jax.random, "gumbel", lambda key, shape, dtype: noise.reshape(shape))
    assert model.dims.layerdrop == model.objective.feat_quantizer_dropout == 0.0
    out, _ = _compare(
        model, params, theirs, x, mask, negatives, False, {"gumbel": jax.random.key(0)}
    )
    # Training-mode perplexity is the soft one: not an integer count of codevectors.
    assert abs(float(out.codevector_perplexity) - round(float(out.codevector_perplexity))) > 1e-3


def test_straight_through_estimator_matches_torch():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((50, 4, 7)).astype(np.float32)
    upstream = rng.standard_normal(logits.shape).astype(np.float32)
    torch.manual_seed(3)
    t_logits = torch.from_numpy(logits).requires_grad_()
    state = torch.get_rng_state()
    t_out = torch.nn.functional.gumbel_softmax(t_logits, tau=0.7, hard=True)
    (t_out * torch.from_numpy(upstream)).sum().backward()
    torch.set_rng_state(state)
    noise = -torch.empty_like(t_logits).exponential_().log().numpy()

    def f(z):
        return jnp.sum(gumbel_softmax_hard(z, noise, 0.7) * upstream)

    ours = gumbel_softmax_hard(logits, noise, 0.7)
    np.testing.assert_array_equal(np.asarray(ours), t_out.detach().numpy())
    np.testing.assert_array_equal(np.asarray(ours).sum(-1), 1.0)  # one-hot rows
    grad = np.asarray(jax.grad(f)(logits))
    assert_close(grad, t_logits.grad.numpy(), "straight-through gradient", 1e-6)
    # ... which is the gradient of the soft sample: a float64 NumPy reference.
    z = (logits.astype(np.float64) + noise) / 0.7
    soft = np.exp(z - z.max(-1, keepdims=True))
    soft /= soft.sum(-1, keepdims=True)
    reference = soft * (upstream - (soft * upstream).sum(-1, keepdims=True)) / 0.7
    assert_close(grad, reference, "straight-through gradient vs NumPy", 1e-6)


def test_export_back_into_transformers():
    hf = _hf()
    model, params = _convert(hf)
    dims, objective = model.dims, model.objective
    state = wav2vec2_params_to_hf(params, dims, "contrastive", "wav2vec2", objective)
    original = hf.state_dict()
    assert sorted(state) == sorted(original)
    for k, v in state.items():  # bit for bit
        np.testing.assert_array_equal(v, original[k].numpy(), err_msg=k)
    fresh = _hf(seed=1)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    batch = _batch()
    with torch.no_grad():
        assert _hf_forward(fresh, *batch).loss.item() == _hf_forward(hf, *batch).loss.item()
    with pytest.raises(ConversionError, match="pretraining_dims"):
        wav2vec2_params_from_hf(hf.state_dict(), dims, "contrastive")
    with pytest.raises(ConversionError, match="lacks 1 tensors: quantizer.codevectors"):
        del original["quantizer.codevectors"]
        wav2vec2_params_from_hf(original, dims, "contrastive", "wav2vec2", objective)


def test_negative_sampler_never_picks_the_positive_nor_a_padded_frame():
    rng = np.random.default_rng(4)
    sample = jax.jit(sample_negative_indices, static_argnums=2)
    for seed in range(10):
        candidates = rng.random((4, 30)) < 0.4
        candidates[:, 25:] = False  # padding
        candidates[2] = False
        candidates[2, 7] = True  # a single candidate: no distractor exists
        candidates[3] = False
        negatives = np.asarray(sample(jax.random.key(seed), candidates, 20))
        assert negatives.shape == (4, 30, 20) and negatives.dtype == np.int32
        for b, t in zip(*np.nonzero(candidates), strict=True):
            if candidates[b].sum() >= 2:
                assert candidates[b, negatives[b, t]].all(), (b, t)
                assert (negatives[b, t] != t).all(), (b, t)
            else:
                assert (negatives[b, t] == t).all()
        assert (negatives[3] == np.arange(30)[:, None]).all()
    # Uniform over the other candidates: 20,000 draws for one frame of 5 candidates.
    candidates = np.zeros((1, 12), bool)
    candidates[0, [1, 4, 5, 9, 11]] = True
    draws = np.asarray(sample(jax.random.key(0), candidates, 20_000))[0, 5]
    counts = np.bincount(draws, minlength=12)
    assert counts[[0, 2, 3, 5, 6, 7, 8, 10]].sum() == 0
    assert np.abs(counts[[1, 4, 9, 11]] / 20_000 - 0.25).max() < 0.015


def test_gumbel_temperature_schedule():
    steps = np.array([0, 1, 10, 1_000, 100_000, 277_258, 277_259, 400_000, 2_000_000])
    reference = np.maximum(2.0 * 0.999995 ** steps.astype(np.float64), 0.5)
    ours = np.asarray(jax.jit(jax.vmap(gumbel_temperature))(jnp.asarray(steps)))
    np.testing.assert_allclose(ours, reference, rtol=2e-7)
    np.testing.assert_allclose(
        float(gumbel_temperature(1000, 1.0, 0.1, 0.99)), max(0.99**1000, 0.1), rtol=1e-6
    )


def test_every_parameter_has_logical_axes():
    model, _ = _convert(_hf())
    boxed = jax.eval_shape(
        lambda: model.init(
            jax.random.key(0), jnp.zeros((1, SAMPLES)), None, jnp.ones((1, 79), bool)
        )
    )["params"]
    leaves = jax.tree_util.tree_flatten_with_path(
        boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
    )[0]
    assert {"quantizer", "project_q", "project_hid", "encoder"} <= set(boxed)
    ruled = dict(LOGICAL_RULES)
    for path, leaf in leaves:
        where = jax.tree_util.keystr(path)
        assert isinstance(leaf, nn.LogicallyPartitioned), where
        names = tuple(leaf.names)
        assert len(names) == leaf.value.ndim and len(set(names)) == len(names), where
        assert set(names) <= set(ruled), where


def test_feature_grad_mult_scales_the_conv_encoders_gradient_as_fairseq():
    """wav2vec2.feature_grad_mult=0.1 (fairseq's GradMultiply on the conv features): the loss's
    gradient for every parameter equals transformers' with a hook that scales the gradient
    reaching its feature extractor's output by 0.1; the outputs are unchanged."""
    hf = _hf()
    model, params = _convert(hf)
    model = model.clone(dims=dataclasses.replace(model.dims, feature_grad_mult=0.1))
    x, attention, mask, negatives = _batch()

    def scale_gradient(module, inputs, out):  # fairseq's GradMultiply.apply(features, 0.1)
        out.register_hook(lambda grad: grad * 0.1)

    hook = hf.wav2vec2.feature_extractor.register_forward_hook(scale_gradient)
    theirs = _hf_forward(hf, x, attention, mask, negatives)
    theirs.loss.backward()
    hook.remove()
    # (no gradient reaches the eval-mode quantizer's projection: its codevectors are argmaxes)
    grads = {
        name: torch.zeros_like(p) if p.grad is None else p.grad for name, p in hf.named_parameters()
    }
    buffers = {name: b for name, b in hf.state_dict().items() if name not in grads}
    reference = wav2vec2_params_from_hf(
        {**buffers, **grads}, model.dims, "contrastive", "wav2vec2", model.objective
    )

    def loss(p):
        out = model.apply({"params": p}, x, jnp.array([SAMPLES, SHORT]), mask, True, 1.7)
        return _objective(model, out, negatives, mask).loss

    value, ours = jax.jit(jax.value_and_grad(loss))(params)
    assert_close(value, theirs.loss.item(), "loss")
    flat = jax.tree_util.tree_leaves_with_path(ours)
    for (path, a), b in zip(flat, jax.tree.leaves(reference), strict=True):
        assert_close(a, b, f"gradient {jax.tree_util.keystr(path)}", tol=1e-4)
    # ... and without the factor, the conv encoder's gradient is 10 times as large.
    model = model.clone(dims=dataclasses.replace(model.dims, feature_grad_mult=1.0))
    plain = jax.jit(jax.grad(loss))(params)
    scaled = jax.tree_util.tree_leaves_with_path(ours["encoder"]["feature_encoder"])
    unscaled = jax.tree.leaves(plain["encoder"]["feature_encoder"])
    for (path, g), p in zip(scaled, unscaled, strict=True):
        assert_close(10 * np.asarray(g), p, f"x 10: {jax.tree_util.keystr(path)}")
