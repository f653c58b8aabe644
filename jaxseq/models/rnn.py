"""RNN encoder–decoder with Luong attention (listen, attend and spell).

    log-mel ─► [stack f adjacent frames ─► (Bi)LSTM/GRU layer] × encoder_layers ─► encoded
    encoded ─► final states (forward and backward, top layer) ─► bridge ─► decoder state
    previous token ─► embedding (⊕ previous attentional state) ─► LSTM/GRU layers ─► h
    h · keys (softmax over valid frames) ─► weights ─► context = Σ weights · encoded
    tanh(W_c [context; h]) = attentional state ─► output layer ─► next-token logits

The cells follow PyTorch's gate equations and parameter layout (`weight_ih` [G·H, in],
`weight_hh` [G·H, H], `bias_ih`, `bias_hh` [G·H]; G = 4 gates i, f, g, o for the LSTM, 3 gates
r, z, n for the GRU, whose reset gate multiplies W_hn h + b_hn), so `torch.nn.LSTM` / `GRU`
weights copy over 1:1. Every recurrence is one `jax.lax.scan` over time whose input
projections are computed for all frames first; a padded frame leaves the state unchanged and
outputs zeros, so the final state is each item's state at its last valid frame, and the
backward direction reads each item reversed within its own length (it starts at the last
valid frame, not at the padding).

Attention is Luong's dot product: score(h, s) = h · k(s), where the keys k(s) are the encoder
outputs themselves when their width equals the decoder's (bidirectional=False), else their
projection W_k s (no bias); the context sums the encoder outputs themselves. With input
feeding, the previous step's attentional state joins the token embedding at the decoder's
input. The decoder's initial state is a learned bridge from the encoder's top-layer final
state, the forward and backward directions concatenated: h₀ = tanh(W_h s_h + b_h) for every
decoder layer, and for the LSTM c₀ = W_c s_c + b_c.

One decoder step is one module (`DecoderCell`); teacher forcing scans it over the inputs
(`nn.scan`), and greedy / beam search call it once per step with the state as the cache, so
the two agree by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseq.models.layers import constrain, dense, embedding, padding_mask, partitioned
from jaxseq.parallel.sharding import BATCH, EMBED, GATES, KV, LENGTH, VOCAB

Dtype = Any

CELLS = ("lstm", "gru")
NUM_GATES = {"lstm": 4, "gru": 3}
STATE_PARTS = {"lstm": 2, "gru": 1}  # an LSTM state is (h, c), a GRU state is h


@dataclass(frozen=True)
class RNNDims:
    """The RNN encoder–decoder's hyperparameters."""

    n_mels: int
    vocab_size: int
    cell: str = "lstm"
    hidden: int = 256  # every cell's state size (per direction in the encoder)
    encoder_layers: int = 2
    decoder_layers: int = 1
    bidirectional: bool = True
    pyramid: tuple[int, ...] = (2, 2)  # frames concatenated at each encoder layer's input
    input_feeding: bool = True

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def encoder_width(self) -> int:
        """Width of the encoder outputs (both directions concatenated)."""
        return self.directions * self.hidden

    def reduction(self, layer: int) -> int:
        return self.pyramid[layer] if layer < len(self.pyramid) else 1


class Memory(NamedTuple):
    """What the decoder attends to, per utterance."""

    keys: jax.Array  # [batch, frames', hidden]
    values: jax.Array  # [batch, frames', encoder_width] (the encoder outputs)
    mask: jax.Array  # bool [batch, frames'] valid encoder frames
    lengths: jax.Array  # int32 [batch] valid encoder frames


# ----------------------------------------------------------------------------- cells


def cell_update(cell: str, state: jax.Array, xw: jax.Array, hw: jax.Array) -> jax.Array:
    """One step of PyTorch's LSTM or GRU from precomputed projections.

    Args:
      state: [..., parts, hidden] the previous state ((h, c) for the LSTM, h for the GRU).
      xw: [..., gates * hidden] = W_ih x + b_ih.
      hw: [..., gates * hidden] = W_hh h + b_hh.
    Returns:
      the next state [..., parts, hidden] (float32).
    """
    xw, hw = xw.astype(jnp.float32), hw.astype(jnp.float32)
    if cell == "lstm":
        i, f, g, o = jnp.split(xw + hw, 4, axis=-1)  # [..., hidden] each
        c = jax.nn.sigmoid(f) * state[..., 1, :] + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return jnp.stack([h, c], axis=-2)
    xr, xz, xn = jnp.split(xw, 3, axis=-1)
    hr, hz, hn = jnp.split(hw, 3, axis=-1)
    r = jax.nn.sigmoid(xr + hr)
    z = jax.nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * hn)  # the reset gate scales W_hn h + b_hn, as PyTorch does
    return ((1.0 - z) * n + z * state[..., 0, :])[..., None, :]


class CellWeights(nn.Module):
    """The parameters of one LSTM/GRU cell in PyTorch's layout (gate order i, f, g, o or
    r, z, n), initialized as PyTorch does: U(-1/√hidden, 1/√hidden)."""

    cell: str
    hidden: int

    @nn.compact
    def __call__(self, input_size: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """-> weight_ih [G·H, input_size], weight_hh [G·H, H], bias_ih [G·H], bias_hh [G·H]."""
        rows = NUM_GATES[self.cell] * self.hidden
        bound = self.hidden**-0.5
        init = nn.initializers.uniform(2 * bound)

        def shifted(key, shape, dtype=jnp.float32):  # U(-bound, bound)
            return init(key, shape, dtype) - bound

        weight_ih = self.param(
            "weight_ih", partitioned(shifted, GATES, EMBED), (rows, input_size), jnp.float32
        )
        weight_hh = self.param(
            "weight_hh", partitioned(shifted, GATES, EMBED), (rows, self.hidden), jnp.float32
        )
        bias_ih = self.param("bias_ih", partitioned(shifted, GATES), (rows,), jnp.float32)
        bias_hh = self.param("bias_hh", partitioned(shifted, GATES), (rows,), jnp.float32)
        return weight_ih, weight_hh, bias_ih, bias_hh


def reverse_valid(x: jax.Array, lengths: jax.Array) -> jax.Array:
    """Each item's first `length` frames in reverse order, padding left in place.

    x: [batch, frames, ...], lengths int [batch] → the same shape (its own inverse)."""
    t = jnp.arange(x.shape[1])[None, :]  # [1, frames]
    index = jnp.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)  # [batch, frames]
    return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


def scan_cells(
    cell: str,
    xw: jax.Array,
    mask: jax.Array,
    weight_hh: jax.Array,
    bias_hh: jax.Array,
    state: jax.Array,
    dtype: Dtype = jnp.float32,
) -> tuple[jax.Array, jax.Array]:
    """Runs D independent cells (e.g. the two directions) over time as one `lax.scan`.

    Args:
      xw: [D, batch, frames, G·H] input projections W_ih x + b_ih of every frame.
      mask: bool [batch, frames]; a masked frame keeps the state and outputs zeros.
      weight_hh: [D, G·H, H]; bias_hh: [D, G·H].
      state: [D, batch, parts, H] the initial states.
    Returns:
      outputs h [D, batch, frames, H] (zero on masked frames) and the final states
      [D, batch, parts, H] (each item's state after its last unmasked frame).
    """

    def step(state, inputs):
        xw_t, m_t = inputs  # [D, batch, G·H], [batch]
        h = state[..., 0, :].astype(dtype)  # [D, batch, H]
        hw = jnp.einsum("dbh,dgh->dbg", h, weight_hh.astype(dtype)) + bias_hh[:, None, :]
        new = cell_update(cell, state, xw_t, hw)  # [D, batch, parts, H]
        state = jnp.where(m_t[None, :, None, None], new, state)
        return state, jnp.where(m_t[None, :, None], state[..., 0, :], 0.0)

    xs = (jnp.moveaxis(xw, 2, 0), jnp.moveaxis(mask, 1, 0))  # [frames, D, batch, G·H], [frames, b]
    state, outputs = jax.lax.scan(step, state.astype(jnp.float32), xs)
    return jnp.moveaxis(outputs, 0, 2), state  # [D, batch, frames, H], [D, batch, parts, H]


class RNNLayer(nn.Module):
    """One (bi)directional LSTM/GRU layer over padded sequences (parameters "forward" and
    "backward", each PyTorch's `weight_ih_l{k}` / `..._reverse` of one layer)."""

    cell: str
    hidden: int
    bidirectional: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x: [batch, frames, features], lengths int [batch] →
        outputs [batch, frames, D·H] (zero past each length) and the final states
        [batch, parts, D·H] (directions concatenated on the last axis), D = 1 or 2."""
        names = ("forward", "backward") if self.bidirectional else ("forward",)
        weights = [CellWeights(self.cell, self.hidden, name=n)(x.shape[-1]) for n in names]
        weight_ih, weight_hh, bias_ih, bias_hh = (jnp.stack(w) for w in zip(*weights, strict=True))
        xs = jnp.stack([x, reverse_valid(x, lengths)][: len(names)])  # [D, batch, frames, F]
        xw = jnp.einsum("dbtf,dgf->dbtg", xs.astype(self.dtype), weight_ih.astype(self.dtype))
        xw = xw + bias_ih[:, None, None, :]  # [D, batch, frames, G·H]
        parts = STATE_PARTS[self.cell]
        state = jnp.zeros((len(names), x.shape[0], parts, self.hidden), jnp.float32)
        mask = padding_mask(lengths, x.shape[1])  # [batch, frames]
        outputs, final = scan_cells(self.cell, xw, mask, weight_hh, bias_hh, state, self.dtype)
        if self.bidirectional:  # the backward outputs back in time order
            outputs = outputs.at[1].set(reverse_valid(outputs[1], lengths))
        outputs = jnp.concatenate(list(outputs), axis=-1)  # [batch, frames, D·H]
        return outputs.astype(self.dtype), jnp.concatenate(list(final), axis=-1)


# ----------------------------------------------------------------------------- encoder


def stack_frames(x: jax.Array, lengths: jax.Array, factor: int) -> tuple[jax.Array, jax.Array]:
    """LAS's pyramid step: `factor` adjacent frames concatenated.

    x: [batch, frames, F] (zero past each length) → [batch, ceil(frames / factor), factor·F],
    lengths → ceil(lengths / factor)."""
    if factor == 1:
        return x, lengths
    batch, frames, features = x.shape
    pad = -frames % factor
    x = jnp.pad(x, ((0, 0), (0, pad), (0, 0)))
    x = x.reshape(batch, (frames + pad) // factor, factor * features)  # [b, frames', f·F]
    return x, -(-lengths // factor)


class RNNEncoder(nn.Module):
    """Stacked (bi)directional layers, each reading `pyramid[i]` stacked frames."""

    dims: RNNDims
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, features: jax.Array, lengths: jax.Array, deterministic: bool
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """features [batch, frames, n_mels], lengths int [batch] → outputs
        [batch, frames', encoder_width] (zero past each length), lengths' [batch], and the top
        layer's final states [batch, parts, encoder_width]."""
        d = self.dims
        x = features * padding_mask(lengths, features.shape[1])[:, :, None]
        final = None
        for i in range(d.encoder_layers):
            if i > 0:
                x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
            x, lengths = stack_frames(x, lengths, d.reduction(i))  # [b, frames_i, f·F]
            x, final = RNNLayer(d.cell, d.hidden, d.bidirectional, self.dtype, name=f"layer{i}")(
                x, lengths
            )  # [batch, frames_i, encoder_width], [batch, parts, encoder_width]
            x = constrain(x, BATCH, LENGTH, EMBED)
        return x, lengths, final


# ----------------------------------------------------------------------------- decoder


def attend(
    query: jax.Array, memory: Memory, dtype: Dtype = jnp.float32
) -> tuple[jax.Array, jax.Array]:
    """Dot-product attention of decoder states over an utterance's encoder frames.

    The n = batch · group queries are batch major: query rows [i·group, (i+1)·group) attend to
    utterance i (group 1 in teacher forcing and greedy search, the beam in beam search), so
    the memory is never copied per hypothesis.

    Args:
      query: [n, hidden] the top decoder layer's output h.
      memory: keys [batch, frames', hidden], values [batch, frames', width], mask.
    Returns:
      context [n, width] and the weights float32 [n, frames'] (softmax over the valid frames,
      exactly 0 on padding; an item without valid frames, an evaluation filler, gets uniform
      weights over its zero padding instead of NaN).
    """
    batch = memory.keys.shape[0]
    q = query.reshape(batch, -1, query.shape[-1]).astype(dtype)  # [batch, group, hidden]
    scores = jnp.einsum(  # float32 logits under a bfloat16 compute dtype
        "bgh,bth->bgt", q, memory.keys.astype(dtype), preferred_element_type=jnp.float32
    )
    scores = jnp.where(memory.mask[:, None, :], scores, -1e30)  # exp underflows to 0
    weights = jax.nn.softmax(scores, axis=-1)  # [batch, group, frames']
    context = jnp.einsum(
        "bgt,btw->bgw",
        weights.astype(dtype),
        memory.values.astype(dtype),
        preferred_element_type=jnp.float32,
    ).astype(dtype)
    return context.reshape(query.shape[0], -1), weights.reshape(query.shape[0], -1)


class DecoderCell(nn.Module):
    """One decoder step: token → embedding (⊕ feed) → cells → attention → logits."""

    dims: RNNDims
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, carry: dict[str, jax.Array], tokens: jax.Array, memory: Memory, deterministic: bool
    ) -> tuple[dict[str, jax.Array], tuple[jax.Array, jax.Array]]:
        """carry {"state": [n, layers, parts, hidden], "feed": [n, hidden]}, tokens int [n] →
        (the next carry, (logits float32 [n, vocab], attention weights [n, frames']))."""
        d = self.dims
        x = embedding(d.vocab_size, d.hidden, self.dtype, 1.0, "embed")(tokens)  # [n, hidden]
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        if d.input_feeding:
            x = jnp.concatenate([x, carry["feed"].astype(x.dtype)], axis=-1)  # [n, 2 hidden]
        states = []
        for i in range(d.decoder_layers):
            weight_ih, weight_hh, bias_ih, bias_hh = CellWeights(
                d.cell, d.hidden, name=f"layer{i}"
            )(x.shape[-1])
            state = carry["state"][:, i]  # [n, parts, hidden]
            xw = x.astype(self.dtype) @ weight_ih.T.astype(self.dtype) + bias_ih
            hw = state[:, 0].astype(self.dtype) @ weight_hh.T.astype(self.dtype) + bias_hh
            state = cell_update(d.cell, state, xw, hw)
            states.append(state)
            x = state[:, 0]  # [n, hidden]
        context, weights = attend(x, memory, self.dtype)  # [n, width], [n, frames']
        combined = jnp.concatenate([context.astype(self.dtype), x.astype(self.dtype)], axis=-1)
        attentional = jnp.tanh(dense(d.hidden, (EMBED, KV), self.dtype, "combine")(combined))
        logits = dense(d.vocab_size, (KV, VOCAB), self.dtype, "output")(attentional)
        carry = {"state": jnp.stack(states, axis=1), "feed": attentional.astype(jnp.float32)}
        return carry, (logits.astype(jnp.float32), weights)


class RNNModel(nn.Module):
    """Encoder, bridge, attention keys and decoder cell (the module docstring)."""

    dims: RNNDims
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32

    def setup(self):
        d = self.dims
        self.encoder = RNNEncoder(d, self.dropout_rate, self.dtype)
        layers_hidden = d.decoder_layers * d.hidden
        self.bridge_h = dense(layers_hidden, (EMBED, KV), self.dtype, None)
        self.bridge_c = (
            dense(layers_hidden, (EMBED, KV), self.dtype, None) if d.cell == "lstm" else None
        )
        # Luong's "general" score h · W_k s where the widths differ, the plain dot product else.
        self.keys = (
            nn.Dense(
                d.hidden,
                use_bias=False,
                dtype=self.dtype,
                param_dtype=jnp.float32,
                kernel_init=partitioned(nn.initializers.xavier_uniform(), EMBED, KV),
            )
            if d.encoder_width != d.hidden
            else None
        )
        self.decoder = DecoderCell(d, self.dropout_rate, self.dtype)

    def encode(
        self, features: jax.Array, lengths: jax.Array, deterministic: bool = True
    ) -> tuple[Memory, dict[str, jax.Array]]:
        """features [batch, frames, n_mels], lengths [batch] → the memory and the decoder's
        initial carry {"state": [batch, layers, parts, hidden], "feed": zeros [batch, hidden]}."""
        d = self.dims
        values, lengths, final = self.encoder(features, lengths, deterministic)
        mask = padding_mask(lengths, values.shape[1])  # [batch, frames']
        keys = values if self.keys is None else self.keys(values)  # [batch, frames', hidden]
        memory = Memory(constrain(keys, BATCH, LENGTH, KV), values, mask, lengths)
        batch = features.shape[0]
        h = jnp.tanh(self.bridge_h(final[:, 0])).reshape(batch, d.decoder_layers, 1, d.hidden)
        if self.bridge_c is not None:
            c = self.bridge_c(final[:, 1]).reshape(batch, d.decoder_layers, 1, d.hidden)
            h = jnp.concatenate([h, c], axis=2)
        carry = {
            "state": h.astype(jnp.float32),  # [batch, layers, parts, hidden]
            "feed": jnp.zeros((batch, d.hidden), jnp.float32),
        }
        return memory, carry

    def decode_step(
        self, carry: dict[str, jax.Array], tokens: jax.Array, memory: Memory
    ) -> tuple[dict[str, jax.Array], tuple[jax.Array, jax.Array]]:
        """One inference step (the beam search's step): tokens int [n], n = batch · group →
        (carry, (logits [n, vocab], weights [n, frames']))."""
        return self.decoder(carry, tokens, memory, True)

    def decode(
        self,
        carry: dict[str, jax.Array],
        inputs: jax.Array,
        memory: Memory,
        deterministic: bool = True,
    ) -> tuple[jax.Array, jax.Array]:
        """Teacher forcing: the decoder cell scanned over inputs int [batch, L] →
        logits float32 [batch, L, vocab] and attention weights [batch, L, frames']."""

        def body(cell, carry, tokens):
            return cell(carry, tokens, memory, deterministic)

        scan = nn.scan(
            body,
            variable_broadcast="params",
            split_rngs={"params": False, "dropout": True},
            in_axes=1,
            out_axes=1,
        )
        _, (logits, weights) = scan(self.decoder, carry, inputs)
        return constrain(logits, BATCH, LENGTH, VOCAB), weights

    def __call__(
        self,
        features: jax.Array,
        lengths: jax.Array,
        inputs: jax.Array,
        deterministic: bool = True,
    ) -> tuple[jax.Array, jax.Array]:
        """Teacher-forced logits [batch, L, vocab] and attention weights [batch, L, frames']."""
        memory, carry = self.encode(features, lengths, deterministic)
        return self.decode(carry, inputs, memory, deterministic)
