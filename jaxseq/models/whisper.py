"""Whisper: the jaxseq audio encoder plus a Transformer decoder with a KV cache.

The layout follows openai-whisper / transformers' WhisperForConditionalGeneration, so that
`jaxseq.convert.hf_whisper` can load and export its checkpoints: a conv stem with strides (1, 2),
a stored sinusoidal position table, pre-LN layers whose key projections have no bias, and a
decoder with learned positions whose output projection is tied to its token embedding.

Cached decoding (t5x style):

    cache = init_cache(model, params, encoded, encoder_mask, max_length)
    for t in range(n):
        logits, cache = decode_step(model, params, cache, tokens[:, t : t + 1], encoded, mask)

`init_cache` computes every layer's cross-attention keys and values once per utterance; each
step writes one position into the self-attention caches. For `jaxseq.decoding.beam_search`,
`search_setup` gives the cache and step in its `step_fn(tokens, cache, position)` form.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from jaxseq.models.encoder import TransformerEncoder
from jaxseq.models.layers import (
    LayerNorm,
    constrain,
    decoding_start,
    dense,
    embedding,
    padding_mask,
    partitioned,
    remat_layer,
    scanned_layers,
)
from jaxseq.models.transformer import DecoderLayer
from jaxseq.parallel.sharding import BATCH, EMBED, LENGTH, POSITION, VOCAB

Dtype = Any


@dataclass(frozen=True)
class WhisperDims:
    """Whisper's hyperparameters (the fields of a transformers WhisperConfig that matter)."""

    n_mels: int = 80
    d_model: int = 384
    encoder_layers: int = 4
    encoder_heads: int = 6
    encoder_ffn_dim: int = 1536
    decoder_layers: int = 4
    decoder_heads: int = 6
    decoder_ffn_dim: int = 1536
    vocab_size: int = 51865
    max_source_positions: int = 1500  # encoder frames; the input has twice as many mel frames
    max_target_positions: int = 448
    pad_token_id: int = 50257
    bos_token_id: int = 50257
    eos_token_id: int = 50257
    decoder_start_token_id: int = 50258

    @property
    def num_frames(self) -> int:
        """Mel frames per input: Whisper pads or trims every input to exactly this many."""
        return 2 * self.max_source_positions


class TransformerDecoder(nn.Module):
    """Token embedding + learned positions → pre-LN decoder layers → LayerNorm → tied logits."""

    dims: WhisperDims
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32
    remat: str = "none"  # a layers.REMAT_POLICIES key (training only; cached decoding never)
    scan_layers: bool = False  # the layers as one nn.scan (parameters and caches stacked)
    sow_cross_weights: bool = False  # keep each layer's cross-attention weights (word timing)

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        encoded: jax.Array,
        encoder_mask: jax.Array,
        deterministic: bool = True,
        decode: bool = False,
    ) -> jax.Array:
        """Next-token logits.

        Args:
          tokens: int [batch, length] (length 1 for a cached step).
          encoded: [batch, enc_frames, d_model] (ignored by a cached step, which reads the
            cross-attention cache).
          encoder_mask: bool [batch, enc_frames], True on valid encoder frames.
          decode: use and update the "cache" collection (see the module docstring).
        Returns:
          float32 [batch, length, vocab].
        """
        d = self.dims
        embed = embedding(d.vocab_size, d.d_model, self.dtype, 0.02, "embed")
        table = self.param(
            "pos_embedding",
            partitioned(nn.initializers.normal(0.02), POSITION, EMBED),
            (d.max_target_positions, d.d_model),
        )  # [max_target_positions, d_model]
        length = tokens.shape[1]
        start = decoding_start(self, length, decode)
        positions = jax.lax.dynamic_slice_in_dim(table, start, length)  # [length, d_model]
        x = embed(tokens) + positions[None].astype(self.dtype)  # [batch, length, d_model]
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        x = constrain(x, BATCH, LENGTH, EMBED)
        cross_mask = encoder_mask[:, None, None, :]  # [batch, 1, 1, enc_frames]
        # deterministic and decode are static
        layer_cls = remat_layer(DecoderLayer, "none" if decode else self.remat, (5, 6))
        make_layer = functools.partial(
            layer_cls,
            d.decoder_heads,
            d.decoder_ffn_dim,
            self.dtype,
            self.dropout_rate,
            False,
            self.sow_cross_weights,
        )
        args = (encoded, None, cross_mask, deterministic, decode)  # self-attention: causal, no mask
        if self.scan_layers:  # caches stacked too: [layers, batch, ...]
            x, _ = scanned_layers(make_layer, d.decoder_layers, len(args), "layers")(x, *args)
        else:
            for i in range(d.decoder_layers):
                x = make_layer(name=f"layer{i}")(x, *args)
        x = LayerNorm(dtype=self.dtype, name="final_norm")(x)
        logits = embed.attend(x)  # [batch, length, vocab]
        return constrain(logits.astype(jnp.float32), BATCH, LENGTH, VOCAB)


class WhisperModel(nn.Module):
    """Log-mel features + decoder tokens → next-token logits.

    `ctc_vocab > 0` adds a linear CTC head over the encoder output (joint CTC/attention
    training, `joint`); Whisper checkpoints have none.
    """

    dims: WhisperDims
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32
    ctc_vocab: int = 0
    remat: str = "none"  # a layers.REMAT_POLICIES key
    scan_layers: bool = False  # encoder and decoder layers as nn.scans (not HF-convertible)
    # Keep the decoder's cross-attention weights, float32 [batch, heads, tokens, enc_frames]
    # per layer, in the "intermediates" collection (`jaxseq.inference.word_timing`).
    sow_cross_weights: bool = False

    def setup(self):
        d = self.dims
        self.encoder = TransformerEncoder(
            d_model=d.d_model,
            num_heads=d.encoder_heads,
            num_layers=d.encoder_layers,
            mlp_dim=d.encoder_ffn_dim,
            subsample_strides=(1, 2),
            dropout_rate=self.dropout_rate,
            dtype=self.dtype,
            key_bias=False,
            position_table=d.max_source_positions,
            remat=self.remat,
            scan_layers=self.scan_layers,
        )
        self.decoder = TransformerDecoder(
            d, self.dropout_rate, self.dtype, self.remat, self.scan_layers, self.sow_cross_weights
        )
        if self.ctc_vocab:
            self.ctc_head = dense(self.ctc_vocab, (EMBED, VOCAB), self.dtype, None)

    def encode(
        self, features: jax.Array, lengths: jax.Array, deterministic: bool = True
    ) -> tuple[jax.Array, jax.Array]:
        """features float [batch, frames, n_mels], lengths int [batch] →
        (encoded [batch, ceil(frames / 2), d_model], encoder_mask bool [batch, enc_frames]).

        Frames past `lengths` are zeroed and masked; Whisper itself never masks (it pads every
        input to `dims.num_frames`), so pass full lengths to reproduce its outputs.
        """
        encoded, enc_lengths = self.encoder(features, lengths, deterministic)
        return encoded, padding_mask(enc_lengths, encoded.shape[1])

    def decode(
        self,
        tokens: jax.Array,
        encoded: jax.Array,
        encoder_mask: jax.Array,
        deterministic: bool = True,
        use_cache: bool = False,
    ) -> jax.Array:
        """tokens int [batch, length] → logits float32 [batch, length, vocab].

        `use_cache=True` reads and updates the mutable "cache" collection: see `init_cache` and
        `decode_step`.
        """
        return self.decoder(tokens, encoded, encoder_mask, deterministic, use_cache)

    def __call__(
        self,
        features: jax.Array,
        feature_lengths: jax.Array,
        tokens: jax.Array,
        deterministic: bool = True,
    ) -> jax.Array:
        """Teacher-forced logits float32 [batch, tokens, vocab] for tokens int [batch, tokens]."""
        encoded, encoder_mask = self.encode(features, feature_lengths, deterministic)
        return self.decode(tokens, encoded, encoder_mask, deterministic)

    def joint(
        self,
        features: jax.Array,
        feature_lengths: jax.Array,
        tokens: jax.Array,
        deterministic: bool = True,
    ) -> tuple[jax.Array, jax.Array | None, jax.Array]:
        """One forward pass for joint CTC/attention training.

        Returns:
          decoder logits float32 [batch, tokens, vocab]; CTC logits float32
          [batch, enc_frames, ctc_vocab] (None without a CTC head); encoder lengths int [batch].
        """
        encoded, encoder_mask = self.encode(features, feature_lengths, deterministic)
        logits = self.decode(tokens, encoded, encoder_mask, deterministic)
        ctc_logits = None
        if self.ctc_vocab:
            ctc_logits = self.ctc_head(encoded).astype(jnp.float32)  # [batch, enc_frames, vocab]
            ctc_logits = constrain(ctc_logits, BATCH, LENGTH, VOCAB)
        return logits, ctc_logits, jnp.sum(encoder_mask, axis=-1)


def init_cache(
    model: WhisperModel,
    params: Any,
    encoded: jax.Array,
    encoder_mask: jax.Array,
    max_length: int,
) -> Any:
    """A decoding cache for `max_length` steps over one batch of encoder outputs.

    Self-attention caches start empty (zeros, index 0); cross-attention keys and values are
    computed here, once.
    """
    tokens = jnp.zeros((encoded.shape[0], max_length), jnp.int32)  # only the shape matters
    _, state = model.apply(
        {"params": params},
        tokens,
        encoded,
        encoder_mask,
        use_cache=True,
        method=WhisperModel.decode,
        mutable=["cache"],
    )
    return state["cache"]


def decode_step(
    model: WhisperModel,
    params: Any,
    cache: Any,
    tokens: jax.Array,
    encoded: jax.Array | None,
    encoder_mask: jax.Array,
) -> tuple[jax.Array, Any]:
    """One cached step: tokens int [batch, 1] → (logits float32 [batch, 1, vocab], new cache).

    `encoded` is not read (the cache holds the cross-attention keys and values); it may be None.
    """
    logits, state = model.apply(
        {"params": params, "cache": cache},
        tokens,
        encoded,
        encoder_mask,
        use_cache=True,
        method=WhisperModel.decode,
        mutable=["cache"],
    )
    return logits, state["cache"]


_SELF = ("cached_key", "cached_value")  # per hypothesis: repeated and reordered by beam search
_CROSS = ("cross_key", "cross_value")  # per utterance: shared by every beam of an item


def _heads_major(x: jax.Array) -> jax.Array:
    """[..., frames, heads, head_dim] -> [..., heads, head_dim, frames]."""
    n = x.ndim
    return jnp.transpose(x, (*range(n - 3), n - 2, n - 1, n - 3))


def _frames_major(x: jax.Array) -> jax.Array:
    """The inverse of `_heads_major`."""
    n = x.ndim
    return jnp.transpose(x, (*range(n - 3), n - 1, n - 3, n - 2))


def _select(cache: Any, names: tuple[str, ...]) -> Any:
    flat = traverse_util.flatten_dict(cache)
    return traverse_util.unflatten_dict({k: v for k, v in flat.items() if k[-1] in names})


def search_setup(
    model: WhisperModel,
    params: Any,
    encoded: jax.Array,
    encoder_mask: jax.Array,
    max_length: int,
) -> tuple[dict, Callable]:
    """The model in `jaxseq.decoding.beam_search`'s form: `(init_cache, step_fn)`.

    `init_cache` holds only the self-attention caches (leading axis batch; the search repeats
    and reorders them per beam). The cross-attention keys and values and the encoder mask stay
    per utterance inside `step_fn`: the beams of an item share them, so they are never copied
    per beam or gathered per step (the cross-attention groups an item's beams as queries).
    `step_fn(tokens [n], cache, position []) -> (log_probs float32 [n, vocab], cache)` rebuilds
    the scalar counters from `position`, which also picks the row of the position table.

    `max_length` is the self-attention caches' length, the most positions a search feeds:
    `prompt_len + max_new_tokens` (the last new token is never fed, so one fewer suffices),
    at most `dims.max_target_positions`. Every cached step attends over all `max_length`
    slots, so a cache sized to the search, not to the model's context, is faster.
    """
    if not 1 <= max_length <= model.dims.max_target_positions:
        raise ValueError(
            f"max_length={max_length}: the decoder has {model.dims.max_target_positions} "
            "positions (dims.max_target_positions)"
        )
    cache = init_cache(model, params, encoded, encoder_mask, max_length)
    cross = _select(cache, _CROSS)  # leaves [batch, enc_frames, heads, head_dim]
    # Scanned layers stack the caches [layers, batch, ...]; the search wants batch first.
    layers = model.dims.decoder_layers if model.scan_layers else None
    swap = (lambda x: jnp.swapaxes(x, 0, 1)) if layers else (lambda x: x)
    heads_major = jax.default_backend() == "cpu"
    if heads_major:
        # XLA's CPU backend wants the cached step's attention operands [batch, heads,
        # head_dim, frames] and, left alone, transposes every layer's loop-invariant keys and
        # values into that layout at every step of the search (8 copies of 18 MB a step for
        # whisper-tiny's 8 windows of 1500 frames: about half the step). So they are
        # transposed once, here; inside the step the transpose back and the dot's cancel.
        # The barrier keeps XLA from sinking this transpose back into the loop.
        cross = jax.lax.optimization_barrier(jax.tree.map(_heads_major, cross))

    def step_fn(tokens: jax.Array, cache: dict, position: jax.Array) -> tuple[jax.Array, dict]:
        position = jnp.asarray(position, jnp.int32)
        flat = {
            **traverse_util.flatten_dict(jax.tree.map(swap, cache)),
            **traverse_util.flatten_dict(
                jax.tree.map(_frames_major, cross) if heads_major else cross
            ),
        }
        index = position if layers is None else jnp.full((layers,), position)
        for path in [k for k in flat if k[-1] == "cached_key"]:
            flat[(*path[:-1], "cache_index")] = index
        flat[("decoder", "position")] = position
        logits, full = decode_step(
            model, params, traverse_util.unflatten_dict(flat), tokens[:, None], None, encoder_mask
        )  # [n, 1, vocab]
        log_probs = jax.nn.log_softmax(logits[:, 0], axis=-1)  # [n, vocab]
        return log_probs, jax.tree.map(swap, _select(full, _SELF))

    return jax.tree.map(swap, _select(cache, _SELF)), step_fn
