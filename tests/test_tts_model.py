"""The TTS model: cached generation equals teacher forcing, padding never counts, stop works."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseq.config import load_config
from jaxseq.errors import JaxseqError
from jaxseq.models.tts import TTSModel
from jaxseq.tasks.tts import TTSTask, mel_teacher_forcing
from jaxseq.text.vocab import CharVocab
from tests.conftest import REPO

CONFIG = REPO / "configs" / "tts_tiny.yaml"
VOCAB = CharVocab.from_charset("abcdefghijklmnopqrstuvwxyz' ")


def _task(*overrides: str) -> TTSTask:
    return TTSTask(load_config(CONFIG, overrides), VOCAB, n_mels=8)


def _batch(rng, lengths=(9, 5), chars=(6, 3), frames=12, width=8):
    features = rng.normal(size=(len(lengths), frames, 8)).astype(np.float32)
    labels = rng.integers(1, VOCAB.size, size=(len(chars), width)).astype(np.int32)
    for i, (n, c) in enumerate(zip(lengths, chars, strict=True)):
        features[i, n:] = 0
        labels[i, c:] = 0
    return {
        "features": features,
        "feature_lengths": np.array(lengths, np.int32),
        "labels": labels,
        "label_lengths": np.array(chars, np.int32),
    }


def _params():
    """The model's parameters from PRNGKey(0), a fresh tree per call (tests edit it). They
    depend on neither the tts.* switches the tests set (dropout, thresholds, lengths) nor the
    batch's shapes, so one compiled init serves every test."""
    return jax.tree.map(lambda x: x, _initial_params())


@functools.cache
def _initial_params():
    task, batch = _task(), _batch(np.random.default_rng(0))
    return nn.meta.unbox(jax.jit(task.init_variables)(jax.random.PRNGKey(0), batch)["params"])


def test_every_parameter_has_logical_axis_names():
    task = _task()
    batch = _batch(np.random.default_rng(0))
    boxed = jax.eval_shape(task.init_variables, jax.random.PRNGKey(0), batch)  # no compile
    leaves = jax.tree.leaves(boxed["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
    for x in leaves:
        assert len(x.names) == x.value.ndim


def test_teacher_forcing_inputs_are_the_last_frame_of_each_previous_group():
    features = np.arange(2 * 7 * 3, dtype=np.float32).reshape(2, 7, 3)
    inputs, targets = mel_teacher_forcing(jnp.asarray(features), 3)
    assert inputs.shape == (2, 3, 3) and targets.shape == (2, 9, 3)
    np.testing.assert_array_equal(inputs[:, 0], 0)
    np.testing.assert_array_equal(inputs[:, 1], features[:, 2])
    np.testing.assert_array_equal(inputs[:, 2], features[:, 5])
    np.testing.assert_array_equal(targets[:, :7], features)
    np.testing.assert_array_equal(targets[:, 7:], 0)


def test_padding_never_counts():
    """Extra padded frames and characters change neither the loss nor its parts (pre-net
    dropout off: its random mask depends on the padded shape)."""
    rng = np.random.default_rng(0)
    task = _task("tts.prenet_dropout=0.0")
    small = _batch(rng)
    big = {
        "features": np.pad(small["features"], ((0, 0), (0, 10), (0, 0))),
        "feature_lengths": small["feature_lengths"],
        "labels": np.pad(small["labels"], ((0, 0), (0, 5))),
        "label_lengths": small["label_lengths"],
    }
    params = _params()
    key = jax.random.PRNGKey(3)
    loss_fn = jax.jit(task.loss_fn, static_argnames="train")
    loss_a, m_a = loss_fn(params, small, key, train=False)
    loss_b, m_b = loss_fn(params, big, key, train=False)
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-5)
    for name in ("spectrogram", "stop_bce", "guided_attention", "tokens"):
        np.testing.assert_allclose(m_a[name], m_b[name], rtol=1e-5, err_msg=name)


def test_attention_is_zero_on_padded_characters_and_sums_to_one():
    rng = np.random.default_rng(1)
    task = _task()
    batch = _batch(rng)
    params = _params()
    inputs, _ = mel_teacher_forcing(jnp.asarray(batch["features"]), 2)
    _, state = task.model.apply(
        {"params": params},
        batch["labels"],
        batch["label_lengths"],
        inputs,
        batch["feature_lengths"],
        rngs={"dropout": jax.random.PRNGKey(0)},
        mutable=["intermediates"],
    )
    (weights,) = jax.tree.leaves(state["intermediates"])  # [batch, heads, steps, chars]
    weights = np.asarray(weights)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
    for i, c in enumerate(batch["label_lengths"]):
        assert np.all(weights[i, :, :, c:] == 0)


def test_cached_generation_equals_teacher_forcing_on_its_own_output():
    """Frames generated step by step (KV cache) equal one teacher-forced pass over them."""
    # Deterministic (no pre-net dropout) and never stopping (p(stop) < 1), for 6 steps.
    task = _task("tts.prenet_dropout=0.0", "tts.stop_threshold=1.0", "tts.max_frames=12")
    rng = np.random.default_rng(2)
    batch = _batch(rng)
    params = _params()
    out = jax.jit(task.synthesize_fn)(
        params, batch["labels"], batch["label_lengths"], jax.random.PRNGKey(0)
    )
    frames = task.cfg.tts.max_frames
    assert out.mel.shape == (2, frames, 8)
    np.testing.assert_array_equal(out.lengths, [frames, frames])
    assert not np.asarray(out.stopped).any()
    inputs, _ = mel_teacher_forcing(out.mel, 2)  # post-net output: recover the decoder's input
    # The decoder is fed its own pre-post-net frames; rebuild them from one full pass.
    before, after, _ = task.model.apply(
        {"params": params},
        batch["labels"],
        batch["label_lengths"],
        _decoder_inputs(task, params, batch),
        out.lengths,
        rngs={"dropout": jax.random.PRNGKey(0)},
    )
    np.testing.assert_allclose(after, out.mel, atol=1e-4)
    assert inputs.shape[1] == before.shape[1] // 2


def _decoder_inputs(task, params, batch):
    """Greedy, uncached: step s's input is the last frame of step s - 1 from a full pass."""
    steps = task.cfg.tts.max_frames // 2
    inputs = jnp.zeros((batch["labels"].shape[0], steps, 8))
    encode = jax.jit(functools.partial(task.model.apply, method=TTSModel.encode))
    encoded, mask = encode({"params": params}, batch["labels"], batch["label_lengths"])
    # Jitted, with the weights as arguments (not constants baked into the program): one
    # compile per prefix length instead of one per operation of each eager pass.
    decode = jax.jit(
        lambda params, frames, encoded, mask: task.model.apply(
            {"params": params},
            frames,
            encoded,
            mask,
            method=TTSModel.decode,
            rngs={"dropout": jax.random.PRNGKey(0)},
        )
    )
    for s in range(1, steps):
        mel, _ = decode(params, inputs[:, :s], encoded, mask)  # [batch, s, r, n_mels]
        inputs = inputs.at[:, s].set(mel[:, s - 1, -1])
    return inputs


@functools.cache
def _synthesize():
    """The default config's `synthesize_fn`, compiled once for both cases below."""
    return jax.jit(_task().synthesize_fn)


@pytest.mark.parametrize(("bias", "stopped", "length"), [(10.0, True, 1), (-10.0, False, 40)])
def test_real_model_stops_at_the_threshold(bias, stopped, length):
    batch = _batch(np.random.default_rng(3))
    params = _params()
    stop = params["decoder"]["stop_out"]
    params["decoder"]["stop_out"] = {
        "kernel": jnp.zeros_like(stop["kernel"]),
        "bias": jnp.full_like(stop["bias"], bias),
    }
    out = _synthesize()(params, batch["labels"], batch["label_lengths"], jax.random.key(0))
    np.testing.assert_array_equal(out.stopped, [stopped, stopped])
    np.testing.assert_array_equal(out.lengths, [length, length])


def test_text_errors_name_the_problem():
    task = _task()
    policy = dataclasses.replace(load_config(CONFIG).prepare.text)
    np.testing.assert_array_equal(task.encode_text(" Nine  ", policy), VOCAB.encode("nine"))
    with pytest.raises(JaxseqError, match="empty"):
        task.encode_text("   ", policy)
    with pytest.raises(JaxseqError, match=r"\['2', '4'\]"):
        task.encode_text("room 42", policy)
    with pytest.raises(JaxseqError, match="max_label_length=64"):
        task.encode_text("one " * 20, policy)


@pytest.mark.parametrize("probability", [0.0, 0.5, 1.0])
def test_scheduled_sampling_feeds_back_the_models_own_frames(probability):
    task = _task("tts.prenet_dropout=0.0", f"tts.scheduled_sampling={probability}")
    batch = _batch(np.random.default_rng(4), lengths=(12, 12), chars=(6, 6))
    params = _params()
    true, _ = mel_teacher_forcing(jnp.asarray(batch["features"]), 2)  # [batch, 6, n_mels]
    before, _, _ = task.model.apply(
        {"params": params},
        batch["labels"],
        batch["label_lengths"],
        true,
        batch["feature_lengths"],
        rngs={"dropout": jax.random.PRNGKey(0)},
    )
    own, _ = mel_teacher_forcing(before, 2)
    got = np.asarray(task._own_inputs(params, batch, true, jax.random.PRNGKey(1)))
    is_own = np.all(np.isclose(got, own, atol=1e-6), axis=-1)[:, 1:]  # step 0 is zeros in both
    is_true = np.all(got == np.asarray(true), axis=-1)[:, 1:]
    assert np.all(is_own | is_true)
    if probability == 0.0:
        assert is_true.all()
    elif probability == 1.0:
        assert is_own.all() and not is_true.any()
    else:
        assert is_own.any() and is_true.any()


@pytest.mark.parametrize("probability", [0.0, 0.5, 1.0])
def test_frame_dropout_zeroes_whole_input_frames(probability):
    task = _task(f"tts.frame_dropout={probability}")
    batch = _batch(np.random.default_rng(5), lengths=(12, 12), chars=(6, 6))
    true, _ = mel_teacher_forcing(jnp.asarray(batch["features"]), 2)
    got = np.asarray(task._train_inputs(None, batch, true, jax.random.PRNGKey(2)))
    zero = np.all(got == 0, axis=-1)[:, 1:]  # step 0 is the all-zero start frame anyway
    kept = np.all(got == np.asarray(true), axis=-1)[:, 1:]
    assert np.all(zero | kept)
    assert zero.all() if probability == 1.0 else kept.all() if probability == 0.0 else zero.any()


@pytest.mark.parametrize(("probability", "step"), [(1.0, 7), (0.5, 7), (1.0, 6)])
def test_free_running_rows_are_the_models_own_generation(probability, step):
    """Free-running rows equal an uncached greedy rollout; before tts.free_running_from the
    inputs are the recording's."""
    task = _task(
        "tts.prenet_dropout=0.0",
        "tts.max_frames=12",
        f"tts.free_running={probability}",
        "tts.free_running_from=7",
    )
    batch, rollout = _free_running_batch_and_rollout()
    batch = {**batch, "step": np.full(8, step, np.int32)}
    params = _params()
    true, _ = mel_teacher_forcing(jnp.asarray(batch["features"]), 2)  # [8, 6, n_mels]
    got = np.asarray(jax.jit(task._free_running_inputs)(params, batch, true, jax.random.key(3)))
    is_own = np.all(np.isclose(got, rollout, atol=1e-5), axis=(1, 2))
    is_true = np.all(got == np.asarray(true), axis=(1, 2))
    assert np.all(is_own | is_true)
    if step < 7:
        assert is_true.all()
    elif probability == 1.0:
        assert is_own.all()
    else:
        assert is_own.any() and is_true.any()


@functools.cache
def _free_running_batch_and_rollout():
    """8 rows (some of each kind) and their uncached greedy rollout [8, 6, n_mels]: the same
    for every case above (tts.free_running* do not touch the model), so computed once."""
    batch = _batch(np.random.default_rng(6), lengths=(12, 12), chars=(6, 6))
    batch = {
        "features": np.tile(batch["features"], (4, 1, 1)),
        "feature_lengths": np.tile(batch["feature_lengths"], 4),
        "labels": np.tile(batch["labels"], (4, 1)),
        "label_lengths": np.tile(batch["label_lengths"], 4),
    }
    task = _task("tts.prenet_dropout=0.0", "tts.max_frames=12")
    return batch, np.asarray(_decoder_inputs(task, _params(), batch))
