"""jaxseq's beam and greedy search over a converted Whisper against transformers' own
`WhisperForConditionalGeneration.generate`, token for token, on real (espeak-ng) log-mel input.

transformers' Whisper `generate` adds Whisper-specific logits processors and prompt tokens; they
are all switched off (`jaxseq.convert.hf_generate`, whose docstring says why each one), leaving
the plain beam / greedy search that `jaxseq.decoding.beam_search` reimplements.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxseq.audio.espeak import synthesize
from jaxseq.audio.frontend import log_mel_numpy
from jaxseq.audio.io import to_mono_resampled
from jaxseq.config import FrontendConfig
from jaxseq.convert import load_hf_whisper
from jaxseq.convert.hf_generate import plain_config_kwargs, plain_generate_kwargs
from jaxseq.decoding.beam_search import LengthPenalty, beam_search, greedy_search
from jaxseq.models.whisper import WhisperModel, search_setup
from tests.hf_whisper import (
    random_whisper,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VOCAB = 100
SOURCE_POSITIONS = 150  # 300 mel frames: 3 s
TARGET_POSITIONS = 40
MAX_NEW_TOKENS = 30
EOS, START = 1, 2
BEAMS = 4
WEIGHT_STD = 0.3  # peaked distributions: no near-ties for float32 rounding to flip
EOS_SCALE = 2.5  # the EOS embedding row (tied to the output) is this much longer than the others
UTTERANCES = [  # (digits, voice): different speakers and accents
    ("one two three", "en-us"),
    ("four five six seven", "en-gb-x-rp"),
    ("eight nine zero", "en-gb-scotland"),
    ("two two eight one", "en-029"),
    ("nine", "en-us-nyc"),
    ("three oh five six one", "en+f2"),
    ("seven seven", "en-us+m3"),
    ("zero one two three four", "en-gb-x-gbclan"),
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(torch model, jaxseq WhisperModel, params): a small random Whisper, saved and converted.

    Weights are redrawn N(0, 0.3) (LayerNorm scales N(1, 0.3)) for peaked, audio-dependent
    distributions. The decoder's final LayerNorm bias is zeroed and every token embedding row
    gets the same norm, so that no token wins by a constant offset; then the EOS row is made
    `EOS_SCALE` times longer, so that hypotheses end at different lengths (not all at the limit).
    """
    model = random_whisper(
        WEIGHT_STD,
        vocab_size=VOCAB,
        max_source_positions=SOURCE_POSITIONS,
        max_target_positions=TARGET_POSITIONS,
        pad_token_id=EOS,
        bos_token_id=EOS,
        eos_token_id=EOS,
        decoder_start_token_id=START,
        **plain_config_kwargs(),
    )
    with torch.no_grad():
        model.model.decoder.layer_norm.bias.zero_()
        embed = model.model.decoder.embed_tokens.weight  # [vocab, d_model]
        embed *= WEIGHT_STD * embed.shape[1] ** 0.5 / embed.norm(dim=1, keepdim=True)
        embed[EOS] *= EOS_SCALE
    folder = tmp_path_factory.mktemp("hf_whisper_generate")
    model.save_pretrained(folder)
    params, dims = load_hf_whisper(folder)
    return model, WhisperModel(dims), jax.tree.map(jnp.asarray, params)


@pytest.fixture(scope="module")
def features():
    """Real log-mel input [utterances, 300, 80], padded/trimmed to 3 s like Whisper does."""
    cfg = FrontendConfig()
    num_samples = 2 * SOURCE_POSITIONS * cfg.hop_length
    mels = []
    for text, voice in UTTERANCES:
        audio, sr = synthesize(text, voice)
        audio = to_mono_resampled(audio, sr, cfg.sample_rate)[:num_samples]
        audio = np.pad(audio, (0, num_samples - len(audio)))
        mels.append(log_mel_numpy(audio, cfg))  # [300, 80]
    return np.stack(mels)


def _hf_generate(model, features: np.ndarray, num_beams: int):
    """transformers' Whisper generate with every Whisper-specific addition off
    (`jaxseq.convert.hf_generate`)."""
    with torch.inference_mode():
        return model.generate(
            torch.from_numpy(np.ascontiguousarray(features.transpose(0, 2, 1))),
            **plain_generate_kwargs(num_beams, MAX_NEW_TOKENS, output_scores=True),
        )


def _jax_search(converted, features: np.ndarray, num_beams: int):
    _, model, params = converted
    lengths = jnp.full((features.shape[0],), features.shape[1])  # Whisper never masks frames
    prompt = jnp.full((features.shape[0], 1), START, jnp.int32)

    @jax.jit
    def run(features, lengths, prompt):
        encoded, mask = model.apply(
            {"params": params}, features, lengths, method=WhisperModel.encode
        )
        cache, step = search_setup(model, params, encoded, mask, max_length=1 + MAX_NEW_TOKENS)
        if num_beams == 1:
            return greedy_search(step, cache, prompt, max_new_tokens=MAX_NEW_TOKENS, eos_id=EOS)
        return beam_search(
            step,
            cache,
            prompt,
            beam_size=num_beams,
            max_new_tokens=MAX_NEW_TOKENS,
            eos_id=EOS,
            length_penalty=LengthPenalty.transformers(1.0),
            early_stopping=False,
        )

    return run(jnp.asarray(features), lengths, prompt)


def _hf_rows(sequences: torch.Tensor) -> list[list[int]]:
    """HF sequences [batch, prompt + generated] → generated ids per utterance, up to and
    including the first EOS (transformers pads after it)."""
    rows = []
    for seq in sequences.tolist():
        assert seq[0] == START  # the prompt is the start token alone: nothing Whisper-specific
        seq = seq[1:]
        rows.append(seq[: seq.index(EOS) + 1] if EOS in seq else seq)
    return rows


def _jax_rows(sequences: jax.Array, lengths: jax.Array) -> list[list[int]]:
    return [s[:n].tolist() for s, n in zip(np.asarray(sequences), np.asarray(lengths), strict=True)]


def test_beam_search_matches_transformers(models, features):
    hf = _hf_generate(models[0], features, BEAMS)
    ours = _jax_search(models, features, BEAMS)
    want, got = _hf_rows(hf.sequences), _jax_rows(ours.sequences[:, 0], ours.lengths[:, 0])
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, (i, UTTERANCES[i])
    # Not a degenerate comparison: some hypotheses end early, some run to the limit, and the
    # utterances do not all give the same text.
    lengths = [len(w) for w in want]
    assert min(lengths) < MAX_NEW_TOKENS // 2 and max(lengths) == MAX_NEW_TOKENS, lengths
    assert len({tuple(w) for w in want}) >= 6
    np.testing.assert_allclose(
        np.asarray(ours.scores[:, 0]), hf.sequences_scores.numpy(), rtol=0, atol=1e-4
    )


def test_greedy_search_matches_transformers(models, features):
    hf = _hf_generate(models[0], features, 1)
    ours = _jax_search(models, features, 1)
    want, got = _hf_rows(hf.sequences), _jax_rows(ours.sequences, ours.lengths)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, (i, UTTERANCES[i])
    assert min(len(w) for w in want) < MAX_NEW_TOKENS
    # Scores: HF's per-step scores (logits; no processor is active) → summed log-probs.
    log_probs = torch.log_softmax(torch.stack(hf.scores, 1), -1).numpy()  # [batch, steps, vocab]
    want_scores = [sum(log_probs[b, t, tok] for t, tok in enumerate(w)) for b, w in enumerate(want)]
    # A sum of float32 log-probs: each token's may differ by ~1e-5 between XLA and PyTorch (the
    # summation order depends on the CPU's vector width), so the bound grows with the length.
    atol = np.array([1e-5 * len(w) for w in want]) + 1e-5
    err = np.abs(np.asarray(ours.scores) - np.asarray(want_scores))
    assert np.all(err <= atol), (err, atol)
