"""Word times from cross-attention (`jaxseq.inference.word_timing`) against openai-whisper's
`timing.find_alignment` on the same small random Whisper, loaded into both."""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import whisper.model
import whisper.timing
import whisper.tokenizer

from jaxseq.audio.frontend import log_mel_numpy
from jaxseq.audio.io import to_mono_resampled
from jaxseq.config import FrontendConfig
from jaxseq.convert import load_hf_whisper
from jaxseq.inference.word_timing import (
    add_word_timestamps,
    align_words,
    alignment_heads,
    alignment_tokens,
    alignment_weights,
    dtw_path,
    split_to_word_tokens,
)
from jaxseq.models.whisper import WhisperModel
from jaxseq.text.whisper_tokenizer import WhisperTokenizer
from tests.conftest import REPO
from tests.hf_whisper import (
    random_whisper,
    write_whisper_tokenizer,
)

SOURCE_POSITIONS = 200  # 400 log-mel frames: 4 s windows
HEADS = [[1, 0], [1, 2], [0, 3]]  # the checkpoint's alignment heads (layer, head)
TEXT = " one two, three four five six"


@functools.cache
def _weights_fn(model: WhisperModel, heads: tuple, text_ids: tuple[int, int]):
    return jax.jit(functools.partial(alignment_weights, model, heads=heads, text_ids=text_ids))


def find_alignment(model, params, tok, mel, num_frames, text_tokens, start_sequence):
    """openai-whisper's `find_alignment` for one window, from jaxseq's pieces: the
    teacher-forced pass (`alignment_weights`) on one row, then `align_words`."""
    d = model.dims
    heads = alignment_heads(tok, d.decoder_layers, d.decoder_heads)
    tokens = alignment_tokens(tok, text_tokens, start_sequence)
    weights, probs = _weights_fn(model, heads, tok.text_ids)(
        params, jnp.asarray(mel)[None], jnp.asarray(tokens)[None], jnp.asarray([num_frames // 2])
    )
    return align_words(
        np.asarray(weights[0]),
        np.asarray(probs[0]),
        tok,
        num_frames,
        tokens,
    )


def _openai_state(hf_state: dict) -> dict:
    """openai-whisper's parameter names for a transformers Whisper state dict."""
    renames = [
        ("model.", ""),
        ("encoder.layers.", "encoder.blocks."),
        ("decoder.layers.", "decoder.blocks."),
        ("self_attn_layer_norm", "attn_ln"),
        ("encoder_attn_layer_norm", "cross_attn_ln"),
        ("final_layer_norm", "mlp_ln"),
        ("self_attn.", "attn."),
        ("encoder_attn.", "cross_attn."),
        ("q_proj", "query"),
        ("k_proj", "key"),
        ("v_proj", "value"),
        ("out_proj", "out"),
        ("fc1", "mlp.0"),
        ("fc2", "mlp.2"),
        ("encoder.layer_norm", "encoder.ln_post"),
        ("decoder.layer_norm", "decoder.ln"),
        ("decoder.embed_tokens", "decoder.token_embedding"),
        ("encoder.embed_positions.weight", "encoder.positional_embedding"),
        ("decoder.embed_positions.weight", "decoder.positional_embedding"),
    ]
    state = {}
    for name, value in hf_state.items():
        if name == "proj_out.weight":  # tied to the token embedding
            continue
        for old, new in renames:
            name = name.replace(old, new)
        state[name] = value
    return state


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(jaxseq model, params, jaxseq tokenizer, openai-whisper model, openai tokenizer)."""
    hf = random_whisper(
        0.3,
        vocab_size=51865,
        max_source_positions=SOURCE_POSITIONS,
        max_target_positions=64,
        encoder_ffn_dim=256,  # openai-whisper's MLPs are 4 x d_model
        decoder_ffn_dim=256,
    )
    folder = tmp_path_factory.mktemp("whisper_word_timing")
    hf.save_pretrained(folder)
    write_whisper_tokenizer(folder)
    (folder / "generation_config.json").write_text(json.dumps({"alignment_heads": HEADS}))
    params, dims = load_hf_whisper(folder)
    c = hf.config
    oai = whisper.model.Whisper(
        whisper.model.ModelDimensions(
            n_mels=c.num_mel_bins,
            n_audio_ctx=SOURCE_POSITIONS,
            n_audio_state=c.d_model,
            n_audio_head=c.encoder_attention_heads,
            n_audio_layer=c.encoder_layers,
            n_vocab=c.vocab_size,
            n_text_ctx=c.max_target_positions,
            n_text_state=c.d_model,
            n_text_head=c.decoder_attention_heads,
            n_text_layer=c.decoder_layers,
        )
    ).eval()
    missing = oai.load_state_dict(_openai_state(hf.state_dict()), strict=False)
    assert not missing.unexpected_keys and missing.missing_keys == [], missing
    mask = torch.zeros(c.decoder_layers, c.decoder_attention_heads, dtype=torch.bool)
    for layer, head in HEADS:
        mask[layer, head] = True
    oai.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)
    oai_tok = whisper.tokenizer.get_tokenizer(True, language="en", task="transcribe")
    tok = WhisperTokenizer.from_folder(folder)
    return WhisperModel(dims), jax.tree.map(jnp.asarray, params), tok, oai, oai_tok


# The utterances the tests speak, in this order.
SPOKEN = [
    (TEXT.strip().replace(",", ""), "en-us"),
    (TEXT.strip().replace(",", ""), "en-gb-scotland+f2"),
    ("one two three four five six", "en-us"),
]
_SPEAK = f"""
import sys
import numpy as np
from jaxseq.audio.espeak import synthesize_isolated
waves = [synthesize_isolated([(text, voice, 175, 50)])[0][0] for text, voice in {SPOKEN!r}]
np.savez(sys.argv[1], *waves)
"""


@pytest.fixture(scope="module")
def spoken(tmp_path_factory) -> dict[tuple[str, str], np.ndarray]:
    """SPOKEN's waveforms (22,050 Hz), each synthesized reproducibly (`synthesize_isolated`,
    in a process that runs no jax): espeak-ng's noise generators make `synthesize`'s samples
    depend on what its process spoke before and on their seeding, and on this random model's
    flat attention a slightly different waveform can tip a DTW step either way in the two
    implementations, or leave every word at one frame."""
    out = tmp_path_factory.mktemp("spoken") / "spoken.npz"
    subprocess.run([sys.executable, "-c", _SPEAK, str(out)], check=True, cwd=REPO)
    with np.load(out) as saved:
        return {key: saved[f"arr_{i}"] for i, key in enumerate(SPOKEN)}


def _window(audio: np.ndarray) -> tuple[np.ndarray, int]:
    """An espeak-ng utterance's log-mel padded to the window [400, 80], and its frames."""
    cfg = FrontendConfig()
    audio = to_mono_resampled(audio, 22050, cfg.sample_rate)
    frames = len(audio) // cfg.hop_length
    audio = np.pad(audio, (0, 2 * SOURCE_POSITIONS * cfg.hop_length - len(audio)))
    return log_mel_numpy(audio, cfg), frames


@pytest.mark.parametrize("voice", ["en-us", "en-gb-scotland+f2"])
def test_words_match_openai_whisper(models, spoken, voice):
    model, params, tok, oai, oai_tok = models
    mel, frames = _window(spoken[TEXT.strip().replace(",", ""), voice])
    text_tokens = oai_tok.encode(TEXT)
    assert list(tok.encode(TEXT)) == text_tokens
    want = whisper.timing.find_alignment(
        oai, oai_tok, text_tokens, torch.from_numpy(mel.T.copy()), frames
    )
    got = find_alignment(model, params, tok, mel, frames, text_tokens, oai_tok.sot_sequence)
    assert [w["word"] for w in got] == [w.word for w in want]
    assert [w["tokens"] for w in got] == [w.tokens for w in want]
    np.testing.assert_allclose([w["start"] for w in got], [w.start for w in want], atol=1e-9)
    np.testing.assert_allclose([w["end"] for w in got], [w.end for w in want], atol=1e-9)
    np.testing.assert_allclose(
        [w["probability"] for w in got], [w.probability for w in want], rtol=1e-4
    )
    starts = [w["start"] for w in got]
    assert starts == sorted(starts) and len(set(starts)) > 2  # not all at one frame


def test_segment_words_match_openai_whisper(models, spoken):
    """Two segments of one window (seek 1 s): words split between them, punctuation merged,
    times offset and clipped as openai-whisper's `add_word_timestamps` does."""
    model, params, tok, oai, oai_tok = models
    mel, frames = _window(spoken["one two three four five six", "en-us"])
    first, second = oai_tok.encode(" (one) two, three"), oai_tok.encode(" four five six.")
    ts = oai_tok.timestamp_begin
    segments = [
        {"seek": 100, "start": 1.0, "end": 2.4, "tokens": [ts, *first, ts + 70]},
        {"seek": 100, "start": 2.4, "end": 4.6, "tokens": [ts + 70, *second, ts + 180]},
    ]
    want = [dict(s) for s in segments]
    whisper.timing.add_word_timestamps(
        segments=want,
        model=oai,
        tokenizer=oai_tok,
        mel=torch.from_numpy(mel.T.copy()),
        num_frames=frames,
        last_speech_timestamp=0.3,
    )
    alignment = find_alignment(
        model, params, tok, mel, frames, [*first, *second], oai_tok.sot_sequence
    )
    got, last = add_word_timestamps(
        segments, alignment, time_offset=1.0, last_speech_timestamp=0.3, text_ids=tok.text_ids
    )
    assert (
        [[w["word"] for w in s["words"]] for s in got]
        == [[w["word"] for w in s["words"]] for s in want]
        == [[" (one)", " two,", " three"], [" four", " five", " six."]]
    )
    for g, w in zip(got, want, strict=True):
        for key in ("start", "end"):
            assert g[key] == pytest.approx(w[key], abs=1e-6)
            assert [x[key] for x in g["words"]] == pytest.approx([x[key] for x in w["words"]])
        assert [x["probability"] for x in g["words"]] == pytest.approx(
            [x["probability"] for x in w["words"]], rel=1e-4
        )
    assert last == got[-1]["end"]


def test_alignment_heads_default_to_the_upper_half(models):
    _, _, tok, _, _ = models
    assert alignment_heads(tok, 2, 4) == tuple(map(tuple, HEADS))
    bare = WhisperTokenizer(tok._tok)  # no generation config
    assert alignment_heads(bare, 4, 2) == ((2, 0), (2, 1), (3, 0), (3, 1))


@pytest.mark.parametrize(
    "text, language",
    [
        (" Hello, wörld! It's 5 o'clock.", "en"),
        (" 日本語のテキスト、です。", "ja"),
        (" ½ — ok", "en"),
    ],
)
def test_word_splitting_matches_openai_whisper(models, text, language):
    _, _, tok, _, _ = models
    oai_tok = whisper.tokenizer.get_tokenizer(True, language=language, task="transcribe")
    tokens = [*oai_tok.encode(text), oai_tok.eot]
    want_words, want_tokens = oai_tok.split_to_word_tokens(tokens)
    got_words, got_tokens = split_to_word_tokens(tok, tokens, language)
    assert got_words == want_words and got_tokens == want_tokens


def test_dtw_path_matches_openai_whisper():
    rng = np.random.default_rng(0)
    for shape in [(5, 40), (12, 12), (30, 200)]:
        cost = rng.standard_normal(shape)
        want = whisper.timing.dtw_cpu(cost.copy())
        got = dtw_path(cost)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
