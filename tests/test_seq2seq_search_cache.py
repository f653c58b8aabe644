"""Whisper's `predict_fn` sizes the decoder's KV cache to the search, not to the model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxseq.tasks import seq2seq
from tests.test_transcribe_compiles_once import random_trained

MAX_LABEL_LENGTH = 8


@pytest.fixture(scope="module")
def whisper():
    """A tiny Whisper (448 decoder positions) whose weights are redrawn wider than the init
    (std 0.1), so that next-token distributions are peaked: no near-ties for rounding to flip."""
    trained = random_trained(
        "whisper_tiny.yaml",
        "model.d_model=32",
        "model.num_heads=2",
        "model.num_layers=1",
        "model.decoder_layers=1",
        "model.mlp_dim=64",
        "model.max_source_positions=64",
        f"data.max_label_length={MAX_LABEL_LENGTH}",
        "data.buckets=[128]",
    )
    flat = traverse_util.flatten_dict(trained.params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(flat))
    params = traverse_util.unflatten_dict(
        {
            path: x if path[-1] == "scale" else 0.1 * jax.random.normal(key, x.shape, x.dtype)
            for (path, x), key in zip(flat.items(), keys, strict=True)
        }
    )
    return trained.task, params


@pytest.mark.parametrize("decoder", ["greedy", "beam"])
def test_predict_fn_cache_holds_prompt_and_new_tokens(whisper, decoder, monkeypatch):
    task, params = whisper
    assert task.dims.max_target_positions == 448
    original, sizes = seq2seq.search_setup, []

    def recorded(model, params, encoded, mask, max_length):
        cache, step_fn = original(model, params, encoded, mask, max_length)
        sizes.append({x.shape[1] for x in jax.tree.leaves(cache)})  # [batch, length, heads, hd]
        return cache, step_fn

    def old_sizing(model, params, encoded, mask, max_length):  # the reference: all positions
        return recorded(model, params, encoded, mask, model.dims.max_target_positions)

    rng = np.random.default_rng(0)
    batch = {
        "features": jnp.asarray(rng.normal(size=(3, 128, task.n_mels)), jnp.float32),
        "feature_lengths": jnp.array([128, 100, 70], jnp.int32),
    }
    outputs = {}
    for name, setup in [("new", recorded), ("old", old_sizing)]:
        monkeypatch.setattr(seq2seq, "search_setup", setup)
        predict = jax.jit(task.predict_fn, static_argnums=(2, 3))
        outputs[name] = jax.device_get(predict(params, batch, decoder, 2))
    max_new = MAX_LABEL_LENGTH + 1
    assert sizes == [{len(task.prompt) + max_new}, {448}]
    (seqs, lengths), (want_seqs, want_lengths) = outputs["new"], outputs["old"]
    np.testing.assert_array_equal(seqs, want_seqs)
    np.testing.assert_array_equal(lengths, want_lengths)
    assert seqs.shape == (3, max_new)
    assert len({tuple(row) for row in seqs.tolist()}) > 1  # the rows decode differently
