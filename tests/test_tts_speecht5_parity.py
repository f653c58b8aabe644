"""jaxseq's TTS model (jaxseq.models.tts) piece by piece against transformers' PyTorch SpeechT5.

A tiny random `SpeechT5ForTextToSpeech` (every weight perturbed, so that no LayerNorm or bias
sits at its identity initialization) is copied into jaxseq's parameters by the mapping below;
both run in eval mode on the same inputs in float32 and must agree to ~1e-5.

Where jaxseq's design differs from SpeechT5 on purpose, the reference is SpeechT5's own
modules wired or configured jaxseq's way, and only the pieces meant to match are compared:

  * Layer order: jaxseq's layers are pre-LN (x + f(LN(x)), then a final LayerNorm), SpeechT5's
    are post-LN (LN(x + f(x)), a LayerNorm before the first encoder layer) with a relative
    position bias in the encoder. The reference layers call SpeechT5's attention, feed-forward
    and LayerNorm modules in pre-LN order, without the relative position bias; the final
    LayerNorms are SpeechT5's encoder LayerNorm (moved after the layers) and a fresh one.
  * Positions: both add α · sinusoids with a learned α, but jaxseq's table is Whisper's (sin
    half | cos half, timescales 10000^(i / (d/2 - 1))) and SpeechT5's interleaves sin and cos
    (timescales 10000^(2i / d)); the reference gets jaxseq's table.
  * Pre-net dropout: always on in both (Tacotron 2), but SpeechT5 draws one mask for the whole
    batch (and transformers' `_consistent_dropout` keeps a unit with probability p, which is the
    usual 1 - p only at SpeechT5's p = 0.5) while jaxseq draws one per row; the masks come from
    different generators, so both run with the pre-net dropout off.
  * Post-net: SpeechT5's convolutions have no bias and each is followed by a BatchNorm (running
    statistics at inference), the last one too; jaxseq's convolutions have biases, a LayerNorm
    over channels follows every one but the last, and padded frames are zeroed between layers.
    The reference is SpeechT5's post-net with biases added and the BatchNorms swapped for those
    LayerNorms (the last for nothing), run on each utterance cut to its length.

The attention, feed-forward, pre-net linears, feature and stop heads (`feat_out`, `prob_out`,
including how r frames per step are laid out) and the convolutions' layout are SpeechT5's.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from jaxseq.models.attention import MultiHeadAttention
from jaxseq.models.layers import sinusoidal_positions
from jaxseq.models.transformer import DecoderLayer
from jaxseq.models.tts import MelDecoder, Postnet, Prenet, ScaledPositions, TTSDims, TTSModel

VOCAB, MELS, D, HEADS, MLP, R = 12, 8, 16, 2, 24, 2
PRENET, POST_CHANNELS, POST_KERNEL, POST_LAYERS = 20, 12, 5, 3
MAX_STEPS, TOL = 16, dict(rtol=1e-5, atol=1e-5)
DIMS = TTSDims(
    vocab_size=VOCAB,
    n_mels=MELS,
    d_model=D,
    num_heads=HEADS,
    encoder_layers=2,
    decoder_layers=2,
    mlp_dim=MLP,
    reduction_factor=R,
    prenet_dim=PRENET,
    prenet_dropout=0.0,
    postnet_layers=POST_LAYERS,
    postnet_channels=POST_CHANNELS,
    postnet_kernel=POST_KERNEL,
    max_steps=MAX_STEPS,
)


@pytest.fixture(scope="module")
def speecht5():
    """A tiny random SpeechT5ForTextToSpeech in eval mode, dropout off, weights perturbed."""
    torch.manual_seed(0)
    config = transformers.SpeechT5Config(
        vocab_size=VOCAB,
        hidden_size=D,
        encoder_layers=DIMS.encoder_layers,
        decoder_layers=DIMS.decoder_layers,
        encoder_attention_heads=HEADS,
        decoder_attention_heads=HEADS,
        encoder_ffn_dim=MLP,
        decoder_ffn_dim=MLP,
        hidden_act="gelu",  # exact (erf) GELU, as jaxseq's MlpBlock
        layer_norm_eps=1e-5,
        num_mel_bins=MELS,
        reduction_factor=R,
        speech_decoder_prenet_layers=2,
        speech_decoder_prenet_units=PRENET,
        speech_decoder_postnet_layers=POST_LAYERS,
        speech_decoder_postnet_units=POST_CHANNELS,
        speech_decoder_postnet_kernel=POST_KERNEL,
        max_speech_positions=MAX_STEPS,
        max_text_positions=32,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        positional_dropout=0.0,
        speech_decoder_postnet_dropout=0.0,
    )
    model = transformers.SpeechT5ForTextToSpeech(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
        for prenet in (model.speecht5.encoder.prenet, model.speecht5.decoder.prenet):
            positions = prenet.encode_positions
            positions.pe = torch.from_numpy(sinusoidal_positions(positions.max_len, D))[None]
    model.speecht5.decoder.prenet._consistent_dropout = lambda x, p: x  # pre-net dropout off
    _jaxseq_postnet_norms(model.speech_decoder_postnet)
    return model


class _ChannelLayerNorm(torch.nn.Module):
    """LayerNorm over the channels of a [batch, channels, time] tensor."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = torch.nn.LayerNorm(channels, eps=1e-5)

    def forward(self, x):
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


def _jaxseq_postnet_norms(postnet) -> None:
    """SpeechT5's post-net made jaxseq's: biased convolutions, LayerNorm instead of BatchNorm
    (none after the last convolution); random values for the new parameters."""
    with torch.no_grad():
        for i, layer in enumerate(postnet.layers):
            layer.conv.bias = torch.nn.Parameter(0.2 * torch.randn(layer.conv.out_channels))
            if i == len(postnet.layers) - 1:
                layer.batch_norm = torch.nn.Identity()
            else:
                layer.batch_norm = _ChannelLayerNorm(layer.conv.out_channels)
                layer.batch_norm.norm.weight.add_(0.2 * torch.randn(layer.conv.out_channels))
                layer.batch_norm.norm.bias.add_(0.2 * torch.randn(layer.conv.out_channels))


# Weight mapping: torch module -> jaxseq parameter subtree.


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().astype(np.float32)


def _dense(linear) -> dict:
    """nn.Linear (weight [out, in]) -> flax Dense (kernel [in, out])."""
    return {"kernel": _np(linear.weight).T, "bias": _np(linear.bias)}


def _split_heads(linear) -> dict:
    """q/k/v projection -> SplitHeads (kernel [embed, heads, head_dim])."""
    return {
        "kernel": _np(linear.weight).T.reshape(D, HEADS, D // HEADS),
        "bias": _np(linear.bias).reshape(HEADS, D // HEADS),
    }


def _attention(attn) -> dict:
    return {
        "query": _split_heads(attn.q_proj),
        "key": _split_heads(attn.k_proj),
        "value": _split_heads(attn.v_proj),
        "out": {  # MergeHeads: kernel [heads, head_dim, embed]
            "kernel": _np(attn.out_proj.weight).T.reshape(HEADS, D // HEADS, D),
            "bias": _np(attn.out_proj.bias),
        },
    }


def _norm(layer_norm) -> dict:
    return {"LayerNorm_0": {"scale": _np(layer_norm.weight), "bias": _np(layer_norm.bias)}}


def _mlp(ff) -> dict:
    return {"wi": _dense(ff.intermediate_dense), "wo": _dense(ff.output_dense)}


def _decoder_layer(layer) -> dict:
    return {
        "self_attn_norm": _norm(layer.self_attn_layer_norm),
        "self_attn": _attention(layer.self_attn),
        "cross_attn_norm": _norm(layer.encoder_attn_layer_norm),
        "cross_attn": _attention(layer.encoder_attn),
        "mlp_norm": _norm(layer.final_layer_norm),
        "mlp": _mlp(layer.feed_forward),
    }


def _prenet(prenet) -> dict:
    return {
        "dense0": _dense(prenet.layers[0]),
        "dense1": _dense(prenet.layers[1]),
        "out": _dense(prenet.final_layer),
    }


def _postnet(postnet) -> dict:
    out = {}
    for i, layer in enumerate(postnet.layers):  # Conv1d weight [out, in, k] -> [k, in, out]
        out[f"conv{i}"] = {
            "kernel": _np(layer.conv.weight).transpose(2, 1, 0),
            "bias": _np(layer.conv.bias),
        }
        if i < len(postnet.layers) - 1:
            out[f"norm{i}"] = _norm(layer.batch_norm.norm)
    return out


def _alpha(prenet) -> dict:
    return {"alpha": _np(prenet.encode_positions.alpha).reshape(1)}


def _final_decoder_norm() -> torch.nn.LayerNorm:
    torch.manual_seed(1)
    norm = torch.nn.LayerNorm(D, eps=1e-5)
    with torch.no_grad():
        norm.weight.add_(0.2 * torch.randn(D))
        norm.bias.add_(0.2 * torch.randn(D))
    return norm


def _params(model, decoder_norm) -> dict:
    """The whole TTSModel's parameters from SpeechT5's modules."""
    encoder, decoder = model.speecht5.encoder, model.speecht5.decoder
    heads = model.speech_decoder_postnet
    enc = {"embed": {"embedding": _np(encoder.prenet.embed_tokens.weight)}}
    enc["positions"] = _alpha(encoder.prenet)
    for i, layer in enumerate(encoder.wrapped_encoder.layers):
        enc[f"layer{i}"] = {
            "attn_norm": _norm(layer.layer_norm),
            "attn": _attention(layer.attention),
            "mlp_norm": _norm(layer.final_layer_norm),
            "mlp": _mlp(layer.feed_forward),
        }
    enc["final_norm"] = _norm(encoder.wrapped_encoder.layer_norm)
    dec = {"prenet": _prenet(decoder.prenet), "positions": _alpha(decoder.prenet)}
    for i, layer in enumerate(decoder.wrapped_decoder.layers):
        dec[f"layer{i}"] = _decoder_layer(layer)
    dec["final_norm"] = _norm(decoder_norm)
    dec["mel_out"], dec["stop_out"] = _dense(heads.feat_out), _dense(heads.prob_out)
    return {"encoder": enc, "decoder": dec, "postnet": _postnet(heads)}


# The reference: SpeechT5's modules, pre-LN.


def _additive(mask: np.ndarray) -> torch.Tensor:
    """bool [batch, 1, q, kv] (True = attend) -> SpeechT5's additive float mask."""
    return torch.from_numpy(np.where(mask, 0.0, np.finfo(np.float32).min).astype(np.float32))


def _reference_encoder(model, ids, lengths):
    encoder = model.speecht5.encoder
    valid = np.arange(ids.shape[1])[None] < lengths[:, None]
    mask = _additive(valid[:, None, None, :] & valid[:, None, :, None])
    x = encoder.prenet(torch.from_numpy(ids).long())  # embedding + α · sinusoids
    for layer in encoder.wrapped_encoder.layers:
        x = x + layer.attention(layer.layer_norm(x), attention_mask=mask)[0]
        x = x + layer.feed_forward(layer.final_layer_norm(x))
    return encoder.wrapped_encoder.layer_norm(x), valid


def _reference_decoder_layer(layer, x, encoded, self_mask, cross_mask):
    x = x + layer.self_attn(layer.self_attn_layer_norm(x), attention_mask=self_mask)[0]
    h = layer.encoder_attn_layer_norm(x)
    x = x + layer.encoder_attn(h, key_value_states=encoded, attention_mask=cross_mask)[0]
    return x + layer.feed_forward(layer.final_layer_norm(x))


def _masks(batch: int, steps: int, text_valid: np.ndarray):
    """(causal bool [1, 1, S, S], cross bool [batch, 1, 1, chars]) as jaxseq builds them, and
    the same expanded for SpeechT5 ([batch, 1, S, S], [batch, 1, S, chars], additive)."""
    causal = np.tril(np.ones((steps, steps), bool))[None, None]
    cross = text_valid[:, None, None, :]
    torch_masks = (
        _additive(np.broadcast_to(causal, (batch, 1, steps, steps))),
        _additive(np.broadcast_to(cross, (batch, 1, steps, text_valid.shape[1]))),
    )
    return causal, cross, torch_masks


def _reference_decoder(model, decoder_norm, frames, encoded, text_valid):
    decoder = model.speecht5.decoder
    _, _, (self_mask, cross_mask) = _masks(*frames.shape[:2], text_valid)
    x = decoder.prenet(torch.from_numpy(frames))  # linears + α · sinusoids
    for layer in decoder.wrapped_decoder.layers:
        x = _reference_decoder_layer(layer, x, encoded, self_mask, cross_mask)
    return model.speech_decoder_postnet(decoder_norm(x))  # (before, after, stop logits)


def _check(name: str, ours, theirs) -> None:
    ours, theirs = np.asarray(ours), _np(theirs) if torch.is_tensor(theirs) else theirs
    assert ours.shape == theirs.shape, name
    np.testing.assert_allclose(ours, theirs, err_msg=name, **TOL)


def _inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, size=(3, 7)).astype(np.int32)
    lengths = np.array([7, 4, 1], np.int32)
    frames = rng.normal(size=(3, 5, MELS)).astype(np.float32)
    hidden = rng.normal(size=(3, 5, D)).astype(np.float32)
    encoded = rng.normal(size=(3, 7, D)).astype(np.float32)
    return ids, lengths, frames, hidden, encoded


@torch.no_grad()
@pytest.mark.parametrize("kind", ["self", "cross"])
def test_attention_matches_speecht5_attention(speecht5, kind):
    """Self-attention (causal and key padding) and cross-attention (text padding, a row with a
    single valid key): MultiHeadAttention vs SpeechT5Attention on the same weights."""
    layer = speecht5.speecht5.decoder.wrapped_decoder.layers[0]
    torch_attn = layer.self_attn if kind == "self" else layer.encoder_attn
    ids, lengths, _, hidden, encoded = _inputs()
    kv = hidden if kind == "self" else encoded
    valid = np.arange(kv.shape[1])[None] < np.minimum(lengths, kv.shape[1])[:, None]
    mask = valid[:, None, None, :] & (
        np.tril(np.ones((5, 5), bool))[None, None] if kind == "self" else True
    )  # [batch, 1, q, kv]
    mask = np.broadcast_to(mask, (3, 1, 5, kv.shape[1]))
    ours = MultiHeadAttention(HEADS).apply(
        {"params": _attention(torch_attn)}, hidden, kv, mask, True
    )
    theirs = torch_attn(
        torch.from_numpy(hidden),
        key_value_states=None if kind == "self" else torch.from_numpy(kv),
        attention_mask=_additive(mask),
    )[0]
    _check(f"attention ({kind})", ours, theirs)


@torch.no_grad()
def test_decoder_layer_matches_speecht5_modules_pre_ln(speecht5):
    """DecoderLayer vs SpeechT5DecoderLayer's own modules in pre-LN order, causal self-attention
    and padded text."""
    layer = speecht5.speecht5.decoder.wrapped_decoder.layers[0]
    _, lengths, _, hidden, encoded = _inputs(1)
    text_valid = np.arange(7)[None] < lengths[:, None]
    causal, cross, (self_mask, cross_mask) = _masks(3, 5, text_valid)
    ours = DecoderLayer(HEADS, MLP).apply(
        {"params": _decoder_layer(layer)}, hidden, encoded, causal, cross, True
    )
    theirs = _reference_decoder_layer(
        layer, torch.from_numpy(hidden), torch.from_numpy(encoded), self_mask, cross_mask
    )
    _check("decoder layer", ours, theirs)


@torch.no_grad()
def test_prenet_and_scaled_positions_match_speech_decoder_prenet(speecht5):
    """Prenet (dropout off) then ScaledPositions vs SpeechT5SpeechDecoderPrenet (α copied)."""
    prenet = speecht5.speecht5.decoder.prenet
    _, _, frames, _, _ = _inputs(2)

    class PrenetWithPositions(nn.Module):
        @nn.compact
        def __call__(self, frames):
            x = Prenet(DIMS, name="prenet")(frames)
            return ScaledPositions(MAX_STEPS, name="positions")(x)

    params = {"prenet": _prenet(prenet), "positions": _alpha(prenet)}
    ours = PrenetWithPositions().apply({"params": params}, frames)
    _check("pre-net + positions", ours, prenet(torch.from_numpy(frames)))


@torch.no_grad()
def test_postnet_matches_speech_decoder_postnet(speecht5):
    """TTSModel.refine (post-net residual, padded batch) vs SpeechT5's post-net (norms made
    jaxseq's, see the module docstring) on each utterance cut to its length; jaxseq's padded
    frames are left as they were."""
    heads = speecht5.speech_decoder_postnet
    rng = np.random.default_rng(3)
    lengths = np.array([10, 7, 3], np.int32)
    mel = rng.normal(size=(3, 10, MELS)).astype(np.float32)
    params = {"postnet": _postnet(heads)}
    ours = np.asarray(
        TTSModel(DIMS).apply({"params": params}, mel, lengths, method=TTSModel.refine)
    )
    for i, n in enumerate(lengths):
        theirs = heads.postnet(torch.from_numpy(mel[i : i + 1, :n]))
        _check("post-net", ours[i : i + 1, :n], theirs)
        np.testing.assert_array_equal(ours[i, n:], mel[i, n:])
    residual = Postnet(DIMS).apply({"params": params["postnet"]}, mel, lengths, True)
    np.testing.assert_array_equal(np.asarray(residual)[2, 3:], 0.0)


@torch.no_grad()
def test_mel_decoder_heads_match_feat_out_and_prob_out(speecht5):
    """MelDecoder (pre-net, positions, layers, final norm, r frames + r stop logits per step)
    vs SpeechT5's pre-net, decoder-layer modules (pre-LN) and SpeechT5SpeechDecoderPostnet's
    feat_out / prob_out, whose `view(batch, -1, n_mels)` fixes the frame order."""
    norm = _final_decoder_norm()
    params = _params(speecht5, norm)["decoder"]
    _, lengths, frames, _, encoded = _inputs(4)
    text_valid = np.arange(7)[None] < lengths[:, None]
    mel, stop = MelDecoder(DIMS).apply({"params": params}, frames, encoded, text_valid)
    before, _, logits = _reference_decoder(
        speecht5, norm, frames, torch.from_numpy(encoded), text_valid
    )
    assert mel.shape == (3, 5, R, MELS) and stop.shape == (3, 5, R)
    _check("feature output (feat_out)", np.asarray(mel).reshape(3, 5 * R, MELS), before)
    _check("stop logits (prob_out)", np.asarray(stop).reshape(3, 5 * R), logits)


@torch.no_grad()
def test_whole_model_teacher_forcing_matches_speecht5_modules(speecht5):
    """TTSModel's teacher-forced outputs (mel before and after the post-net, stop logits) vs
    the SpeechT5 reference end to end: padded text, every mapped weight used once."""
    norm = _final_decoder_norm()
    params = _params(speecht5, norm)
    init = jax.eval_shape(
        TTSModel(DIMS).init,
        {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(0)},
        jnp.ones((1, 7), jnp.int32),
        jnp.array([7]),
        jnp.zeros((1, 5, MELS)),
        jnp.array([10]),
    )
    shapes = lambda tree: jax.tree.map(np.shape, tree)  # noqa: E731
    assert shapes(params) == shapes(nn.meta.unbox(init["params"]))  # the mapping is complete
    ids, lengths, frames, _, _ = _inputs(5)
    frame_lengths = np.full(3, 5 * R, np.int32)  # the post-net sees no padding here
    before, after, stop = jax.jit(TTSModel(DIMS).apply)(
        {"params": params}, ids, lengths, frames, frame_lengths
    )
    encoded, text_valid = _reference_encoder(speecht5, ids, lengths)
    ref_before, ref_after, ref_stop = _reference_decoder(
        speecht5, norm, frames, encoded, text_valid
    )
    _check("model: mel before post-net", before, ref_before)
    _check("model: mel after post-net", after, ref_after)
    _check("model: stop logits", stop, ref_stop)
