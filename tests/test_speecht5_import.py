"""Imported transformers SpeechT5 text-to-speech + HiFi-GAN vocoder against transformers itself.

Tiny random `SpeechT5ForTextToSpeech` and `SpeechT5HifiGan` models (every weight and buffer
perturbed, LayerNorm and BatchNorm statistics included, so that nothing sits at its identity
initialization; `.eval()`) are saved with `save_pretrained`, converted by
jaxseq.convert.hf_speecht5, and compared in float32 to ~1e-5: encoder outputs, teacher-forced
decoder outputs (mel before/after the post-net, stop logits) with speaker embeddings, a padded
batch, the vocoder's waveform, full `generate_speech`, and the tokenizer's ids.

Pre-net dropout: transformers keeps `_consistent_dropout` on at inference, drawing its masks from
torch's generator, which JAX cannot reproduce. So (1) the teacher-forced comparison runs once
with the dropout off on both sides (transformers' `_consistent_dropout` patched to the identity;
with p = 0 it would instead zero everything, since it keeps units where bernoulli(p) = 1) and
once with the same explicit masks fed to both (transformers' patched to apply them), which
checks the masking and its 1 / (1 - p) scaling; (2) generation runs with the dropout off on
both sides, so that the loop, the caches, the stop rule and the post-net per row are compared
exactly, frame count and spectrogram.
"""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from transformers.models.speecht5 import modeling_speecht5 as hf_speecht5

from jaxseq.convert.hf_speecht5 import (
    SpeechT5Text,
    load_hf_hifigan,
    load_hf_speecht5,
)
from jaxseq.convert.hf_whisper import ConversionError
from jaxseq.convert.speecht5_synthesizer import load_speecht5
from jaxseq.decoding.speecht5 import generate_speech
from jaxseq.models.hifigan import HifiGan
from jaxseq.models.speecht5 import SpeechT5TTS

TOL = dict(rtol=1e-5, atol=1e-5)
CORPUS = "the quick brown fox jumps over the lazy dog. Hello, World! 0123456789 ?'-"


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Every parameter and floating buffer moved off its initialization (variances positive)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
        for name, b in model.named_buffers():
            if not b.is_floating_point():
                continue
            if name.endswith(("running_var", "scale")):
                b.copy_(0.5 + torch.rand_like(b))
            elif name.endswith(("running_mean", "mean")):
                b.copy_(0.3 * torch.randn_like(b))
    model.eval()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(root, TTS folder with spm_char.model, vocoder folder, weight-normed vocoder folder)."""
    import sentencepiece as spm

    root = tmp_path_factory.mktemp("speecht5")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join([CORPUS, CORPUS.upper()] * 20))
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(root / "spm_char"),
        model_type="char",
        vocab_size=60,
        hard_vocab_limit=False,
        bos_id=0,
        pad_id=1,
        eos_id=2,
        unk_id=3,
        minloglevel=2,
    )
    vocab = spm.SentencePieceProcessor(model_file=str(root / "spm_char.model")).get_piece_size()
    config = transformers.SpeechT5Config(
        vocab_size=vocab,
        hidden_size=16,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=24,
        decoder_ffn_dim=24,
        num_mel_bins=6,
        speech_decoder_prenet_units=10,
        speaker_embedding_dim=8,
        speech_decoder_postnet_layers=3,
        speech_decoder_postnet_units=12,
        reduction_factor=2,
        max_speech_positions=300,
        max_text_positions=60,
        encoder_max_relative_position=4,  # texts are longer: the clipping is exercised
    )
    torch.manual_seed(0)
    tts = transformers.SpeechT5ForTextToSpeech(config)
    _perturb(tts, 0)
    tts_dir = root / "tts"
    tts.save_pretrained(tts_dir)
    shutil.copy(root / "spm_char.model", tts_dir / "spm_char.model")
    vcfg = transformers.SpeechT5HifiGanConfig(
        model_in_dim=6,
        upsample_initial_channel=8,
        upsample_rates=[2, 3],
        upsample_kernel_sizes=[4, 7],
        resblock_kernel_sizes=[3, 5],
        resblock_dilation_sizes=[[1, 3], [1, 2]],
    )
    torch.manual_seed(1)
    vocoder = transformers.SpeechT5HifiGan(vcfg)
    _perturb(vocoder, 1)
    vocoder.save_pretrained(root / "vocoder")
    vocoder.apply_weight_norm()
    vocoder.save_pretrained(root / "vocoder_wn")
    return root, tts_dir, root / "vocoder", root / "vocoder_wn"


@pytest.fixture(scope="module")
def tts(folders):
    """(transformers model, jaxseq SpeechT5TTS, its variables)."""
    model = transformers.SpeechT5ForTextToSpeech.from_pretrained(folders[1]).eval()
    dims, variables = load_hf_speecht5(folders[1])
    return model, SpeechT5TTS(dims), variables


@pytest.fixture
def no_dropout(monkeypatch):
    """transformers' pre-net dropout off (identity)."""
    monkeypatch.setattr(
        hf_speecht5.SpeechT5SpeechDecoderPrenet, "_consistent_dropout", lambda self, x, p: x
    )


def _inputs(vocab: int, widths=(9, 6), steps=5, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.full((len(widths), max(widths)), 1, np.int64)  # pad_token_id
    for i, w in enumerate(widths):
        ids[i, :w] = rng.integers(4, vocab, w)
    mask = (ids != 1).astype(np.int64)
    speaker = rng.normal(size=(len(widths), 8)).astype(np.float32)
    frames = rng.normal(size=(len(widths), steps, 6)).astype(np.float32)
    return ids, mask, speaker, frames


def _hf_teacher_forced(model, ids, mask, speaker, frames):
    t = torch.from_numpy
    with torch.no_grad():
        enc = model.speecht5.encoder(input_values=t(ids), attention_mask=t(mask)).last_hidden_state
        dec = model.speecht5.decoder(
            input_values=t(frames),
            encoder_hidden_states=enc,
            encoder_attention_mask=t(mask),
            speaker_embeddings=t(speaker),
            use_cache=False,
        ).last_hidden_state
        before, after, stop = model.speech_decoder_postnet(dec)
    return {
        k: v.numpy()
        for k, v in dict(
            encoded=enc, decoded=dec, mel_before=before, mel_after=after, stop_logits=stop
        ).items()
    }


def test_teacher_forced_and_padded_batch(tts, no_dropout):
    model, jmodel, variables = tts
    ids, mask, speaker, frames = _inputs(model.config.vocab_size)
    ref = _hf_teacher_forced(model, ids, mask, speaker, frames)
    lengths = jnp.asarray(mask.sum(1))
    ours = jax.jit(jmodel.apply)(variables, jnp.asarray(ids), lengths, frames, speaker)
    for key, value in ref.items():
        np.testing.assert_allclose(np.asarray(ours[key]), value, **TOL, err_msg=key)
    # The shorter row alone, unpadded: the padding in the batch changed nothing for it.
    alone = jax.jit(jmodel.apply)(
        variables, jnp.asarray(ids[1:, :6]), lengths[1:], frames[1:], speaker[1:]
    )
    np.testing.assert_allclose(ours["encoded"][1, :6], alone["encoded"][0], **TOL)
    for key in ("mel_before", "mel_after", "stop_logits"):
        np.testing.assert_allclose(ours[key][1], alone[key][0], **TOL, err_msg=key)


def test_prenet_dropout_same_masks(tts, monkeypatch):
    model, jmodel, variables = tts
    ids, mask, speaker, frames = _inputs(model.config.vocab_size, seed=1)
    rng = np.random.default_rng(2)
    masks = [rng.random((frames.shape[1], 10)) < 0.5 for _ in range(2)]
    calls = iter(masks)

    def same_masks(self, x, p):
        keep = torch.from_numpy(next(calls))[None]
        return torch.where(keep, x, 0) * 1 / (1 - p)

    monkeypatch.setattr(hf_speecht5.SpeechT5SpeechDecoderPrenet, "_consistent_dropout", same_masks)
    ref = _hf_teacher_forced(model, ids, mask, speaker, frames)
    apply = jax.jit(lambda v, *args, m: jmodel.apply(v, *args, dropout_masks=m))
    ours = apply(
        variables,
        jnp.asarray(ids),
        jnp.asarray(mask.sum(1)),
        frames,
        speaker,
        m=tuple(jnp.asarray(m) for m in masks),
    )
    for key in ("mel_after", "stop_logits"):
        np.testing.assert_allclose(np.asarray(ours[key]), ref[key], **TOL, err_msg=key)


@pytest.mark.parametrize("which", [2, 3], ids=["plain", "weight_norm"])
def test_hifigan_waveform(folders, which):
    vocoder = transformers.SpeechT5HifiGan.from_pretrained(folders[2]).eval()
    dims, variables = load_hf_hifigan(folders[which])
    spec = np.random.default_rng(3).normal(size=(2, 7, 6)).astype(np.float32)
    with torch.no_grad():
        ref = vocoder(torch.from_numpy(spec)).numpy()
    ours = np.asarray(jax.jit(HifiGan(dims).apply)(variables, spec))
    assert ours.shape == ref.shape == (2, 7 * dims.hop_length)
    np.testing.assert_allclose(ours, ref, **TOL)


def _hf_generate(model, ids, mask, speaker, **kw):
    with torch.no_grad():
        spec, lengths = model.generate_speech(
            torch.from_numpy(ids),
            torch.from_numpy(speaker),
            attention_mask=torch.from_numpy(mask),
            return_output_lengths=True,
            **kw,
        )
    return spec.numpy(), np.array(lengths)


def test_generate_speech(tts, no_dropout):
    model, jmodel, variables = tts
    ids, mask, speaker, _ = _inputs(model.config.vocab_size, seed=4)
    lengths = jnp.asarray(mask.sum(1))

    def ours(threshold, **kw):
        out = generate_speech(
            jmodel,
            variables,
            jnp.asarray(ids),
            lengths,
            jnp.asarray(speaker),
            jax.random.PRNGKey(0),
            threshold=threshold,
            prenet_dropout=False,
            **kw,
        )
        return np.asarray(out.spectrogram), np.asarray(out.frames), np.asarray(out.stopped)

    # The per-step stop probability sums of the full-length run (a forward hook on prob_out)
    # give thresholds where a row first crosses after step 1 (so that rows stop at different
    # steps), each midway between two sums at least 2e-4 apart, so that float rounding cannot
    # flip a decision; 2.5 never stops (r = 2 probabilities sum to at most 2). One compile
    # serves them all (the threshold is traced).
    kw = dict(minlenratio=0.0, maxlenratio=4.0)  # maxlen: int(9 · 4 / 2) = 18 steps
    logits = []
    hook = model.speech_decoder_postnet.prob_out.register_forward_hook(
        lambda module, args, out: logits.append(out.numpy())
    )
    try:
        _hf_generate(model, ids, mask, speaker, threshold=2.5, **kw)
    finally:
        hook.remove()
    sums = (1 / (1 + np.exp(-np.stack(logits)))).sum(-1)  # [steps, batch]
    levels = np.sort(sums.ravel())
    midpoints = [(a + b) / 2 for a, b in zip(levels[:-1], levels[1:], strict=True) if b - a > 2e-4]
    thresholds = []
    for row in range(sums.shape[1]):
        for t in range(1, sums.shape[0]):  # row first crosses at step t + 1 > 1
            ok = [m for m in midpoints if sums[:t, row].max() < m <= sums[t, row]]
            thresholds += ok[:1]
    assert thresholds, "no threshold stops a row after its first step"
    seen = set()
    for thr in [*thresholds, 2.5]:
        ref, ref_len = _hf_generate(model, ids, mask, speaker, threshold=float(thr), **kw)
        spec, frames, stopped = ours(float(thr), **kw)
        np.testing.assert_array_equal(frames, ref_len, err_msg=f"threshold {thr}")
        np.testing.assert_array_equal(stopped, ref_len < 36)
        np.testing.assert_allclose(spec[:, : ref_len.max()], ref, **TOL)
        assert not spec[:, ref_len.max() :].any()
        seen.add(tuple(ref_len))
    assert any(n[0] != n[1] and any(2 < x < 36 for x in n) for n in seen), seen
    assert (36, 36) in seen
    # minlen: both rows would stop at step 1; minlenratio 0.5 holds them to step 2.
    kw = dict(minlenratio=0.5, maxlenratio=1.0)
    ref, ref_len = _hf_generate(model, ids, mask, speaker, threshold=0.05, **kw)
    spec, frames, stopped = ours(0.05, **kw)
    np.testing.assert_array_equal(frames, [4, 4])
    np.testing.assert_array_equal(frames, ref_len)
    np.testing.assert_allclose(spec[:, :4], ref, **TOL)


def test_tokenizer_and_synthesize(folders, tts, no_dropout):
    model = tts[0]
    hf_tok = transformers.SpeechT5Tokenizer(vocab_file=str(folders[1] / "spm_char.model"))
    ours = SpeechT5Text(folders[1])
    texts = ["Hello, World!", "the lazy dog", " leading space", "über 42 ~", "a  b"]
    for text in texts:
        assert ours.encode(text) == hf_tok(text)["input_ids"], text
    synth = load_speecht5(folders[1], folders[2])
    spk = np.random.default_rng(5).normal(size=8).astype(np.float32)
    results = synth.synthesize(["Hello there."], spk, maxlenratio=3.0, prenet_dropout=False)
    vocoder = transformers.SpeechT5HifiGan.from_pretrained(folders[2]).eval()
    ids = torch.tensor([ours.encode("Hello there.")])
    with torch.no_grad():
        ref = model.generate_speech(
            ids, torch.from_numpy(spk)[None], maxlenratio=3.0, vocoder=vocoder
        ).numpy()
    assert results[0].audio.shape == ref.shape
    np.testing.assert_allclose(results[0].audio, ref, **TOL)

    # Dropout on (as transformers generates): one mask for the whole batch, so two identical
    # rows stay identical; the same seed repeats, another seed differs.
    def run(seed):
        return synth.synthesize(["Hello there."] * 2, spk, seed=seed, maxlenratio=3.0)

    a, b, c = run(1), run(1), run(2)
    np.testing.assert_array_equal(a[0].audio, a[1].audio)
    np.testing.assert_array_equal(a[0].audio, b[0].audio)
    assert a[0].audio.shape != c[0].audio.shape or not np.array_equal(a[0].audio, c[0].audio)


def test_conversion_errors(folders, tmp_path):
    _, tts_dir, vocoder_dir, _ = folders
    with pytest.raises(ConversionError, match="model_type is 'speecht5_hifigan'"):
        load_hf_speecht5(vocoder_dir)
    with pytest.raises(ConversionError, match="model_type is 'speecht5'"):
        load_hf_hifigan(tts_dir)
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(ConversionError, match="no config.json"):
        load_hf_speecht5(bare)
    shutil.copy(tts_dir / "config.json", bare / "config.json")
    with pytest.raises(ConversionError, match="no model.safetensors"):
        load_hf_speecht5(bare)
    from safetensors.numpy import load_file, save_file

    tensors = load_file(tts_dir / "model.safetensors")
    del tensors["speech_decoder_postnet.prob_out.weight"]
    save_file(tensors, bare / "model.safetensors")
    with pytest.raises(ConversionError, match="speech_decoder_postnet.prob_out.weight"):
        load_hf_speecht5(bare)
    cfg = json.loads((tts_dir / "config.json").read_text())
    (bare / "config.json").write_text(json.dumps({**cfg, "model_type": "whisper"}))
    with pytest.raises(ConversionError, match="'whisper'"):
        load_hf_speecht5(bare)
    with pytest.raises(ConversionError, match="spm_char.model"):
        SpeechT5Text(bare)


def test_synthesize_cli_with_the_converted_pair(folders, tmp_path, capsys):
    """`jaxseq synthesize --hf --hf-vocoder --speaker-embedding` writes, as 16-bit PCM, what
    `load_speecht5(...).synthesize` gives for the same seed (pre-net dropout on, as
    transformers generates); without a vocoder or speaker it says what is missing."""
    import soundfile as sf

    from jaxseq import cli

    _, tts_dir, vocoder_dir, _ = folders
    spk = np.random.default_rng(7).normal(size=8).astype(np.float32)
    np.save(tmp_path / "spk.npy", spk)
    args = ["synthesize", "--hf", str(tts_dir), "--hf-vocoder", str(vocoder_dir)]
    args += ["--speaker-embedding", str(tmp_path / "spk.npy"), "--seed", "3"]
    cli.main([*args, "Hello there.", "the lazy dog", "-o", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    expected = load_speecht5(tts_dir, vocoder_dir).synthesize(
        ["Hello there.", "the lazy dog"], spk, seed=3
    )
    for i, r in enumerate(expected):
        audio, rate = sf.read(tmp_path / "out" / f"{i:03d}.wav", dtype="float32")
        assert rate == 16000 and audio.shape == r.audio.shape
        np.testing.assert_allclose(audio, np.clip(r.audio, -1, 1), atol=1.0 / 32768 + 1e-7)
        assert f"{i:03d}.wav" in printed
    with pytest.raises(SystemExit):
        cli.main(["synthesize", "--hf", str(tts_dir), "hi", "-o", str(tmp_path / "x.wav")])
    assert "needs --hf-vocoder" in capsys.readouterr().err
