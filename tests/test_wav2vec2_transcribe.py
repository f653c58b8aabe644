"""Transcription with a waveform (Wav2Vec2) workdir: a tiny random transformers Wav2Vec2ForCTC,
converted, transcribes a clip through `jaxseq transcribe` and `jaxseq.load(...).transcribe` to
the HF processor's greedy transcript of the same samples, with word times on its 20 ms frames;
chunked long-form decoding keeps its times on those frames; and `jaxseq evaluate --manifest`
scores the clip.

The model's conv strides multiply to 320 samples (20 ms at 16 kHz, as wav2vec2-base's), and its
feature encoder uses layer norm, whose valid frames do not depend on the padding of jaxseq's
bucketed batches (transformers' reference sees the clip unpadded).
"""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import (
    Wav2Vec2Config,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC,
    Wav2Vec2Processor,
)

import jaxseq
from jaxseq import cli

RATE, FRAME = 16000, 0.02  # samples per second; seconds per encoder frame
TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "|", "a", "e", "i", "n", "o", "r", "s", "t"]
SIZES = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(16, 16, 16),
    conv_kernel=(10, 8, 8),
    conv_stride=(5, 8, 8),  # 320 samples per frame
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
    feat_extract_norm="layer",
    vocab_size=len(TOKENS),
    pad_token_id=0,
)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(HF model, processor, workdir, clip path, the clip's samples float32 [samples])."""
    root = tmp_path_factory.mktemp("w2v")
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(Wav2Vec2Config(**SIZES)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        model.lm_head.bias[1:4] = -100.0  # no <s>, </s>, <unk>: letters, spaces and blanks
        model.lm_head.bias[4] += 1.0  # some word delimiters, so that there are words
    model.save_pretrained(root / "hf")
    (root / "hf" / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(TOKENS)}))
    tokenizer = Wav2Vec2CTCTokenizer(root / "hf" / "vocab.json")
    processor = Wav2Vec2Processor(Wav2Vec2FeatureExtractor(), tokenizer)
    processor.save_pretrained(root / "hf")
    cli.main(["convert", "--hf", str(root / "hf"), "--workdir", str(root / "wd")])
    t = np.arange(RATE) / RATE  # a 1 s chirp in noise, saved as 16-bit PCM
    wave = 0.3 * np.sin(2 * np.pi * (200 + 600 * t) * t)
    wave += 0.05 * np.random.default_rng(0).standard_normal(RATE)
    sf.write(root / "clip.wav", wave, RATE, subtype="PCM_16")
    samples, _ = sf.read(root / "clip.wav", dtype="float32")  # what jaxseq reads
    return model, processor, root / "wd", root / "clip.wav", samples


def _reference(model, processor, samples):
    """HF's greedy transcript and best path [frames] of float samples [samples]."""
    inputs = processor(samples, sampling_rate=RATE, return_tensors="pt")  # do_normalize
    with torch.no_grad():
        path = model(inputs.input_values).logits.argmax(-1).numpy()  # [1, frames]
    return processor.batch_decode(path)[0], path[0]


def _word_times(path):
    """(start, end) seconds of each word of a best path [frames]: from its first letter's
    frame to its last letter's frame + 1 (blanks inside a word do not end it)."""
    letters, delimiter = [[]], TOKENS.index("|")  # each word's letter frames
    for frame, token in enumerate(path):
        if token == delimiter:
            letters.append([])
        elif token > delimiter:
            letters[-1].append(frame)
    return [(f[0] * FRAME, (f[-1] + 1) * FRAME) for f in letters if f]


def _on_frames(seconds):
    return abs(seconds / FRAME - round(seconds / FRAME)) < 1e-6


def test_transcribe_matches_the_hf_processor(converted, tmp_path):
    model, processor, workdir, clip, samples = converted
    reference, path = _reference(model, processor, samples)
    assert len(reference.split()) >= 2  # several words, so that word times say something
    out = tmp_path / "out"
    cli.main(
        ["transcribe", "--workdir", str(workdir), str(clip), "--no-vad"]
        + ["--output-format", "json", "--output-dir", str(out)]
    )
    result = json.loads((out / "clip.json").read_text())
    assert result["text"].split() == reference.split()  # the same words (spaces collapsed)
    words = [w for s in result["segments"] for w in s["words"]]
    assert [w["word"].strip() for w in words] == reference.split()
    assert all(_on_frames(w["start"]) and _on_frames(w["end"]) for w in words)
    ours = [t for w in words for t in (w["start"], w["end"])]
    assert ours == pytest.approx([t for span in _word_times(path) for t in span])

    # The Python API, on the samples in memory, gives the same words.
    (text,) = jaxseq.load(workdir).transcribe([samples])
    assert text.split() == reference.split()


def test_chunked_times_stay_on_the_frames(converted):
    """Windows of 0.4 s with 0.08 s strides (20 and 4 frames) over 1.5 s: the kept frames of
    each window line up with the recording's 20 ms frames, in order, within the recording."""
    _, _, workdir, _, samples = converted
    long = np.concatenate([samples, np.zeros(RATE // 4, np.float32), samples[: RATE // 4]])
    (result,) = jaxseq.load(workdir).transcribe(
        [long], return_timestamps="word", chunk_seconds=0.4, stride_seconds=0.08, vad=False
    )
    words = [w for s in result["segments"] for w in s["words"]]
    assert words and result["text"].split() == [w["word"].strip() for w in words]
    times = [t for w in words for t in (w["start"], w["end"])]
    assert all(_on_frames(t) for t in times)
    assert times == sorted(times) and times[-1] <= len(long) / RATE


def test_evaluate_a_manifest(converted, tmp_path, capsys):
    """`jaxseq evaluate --manifest` prepares waveform records of the workdir's frontend and
    scores them: the clip's hypothesis is the HF transcript (16-bit samples both ways)."""
    model, processor, workdir, clip, samples = converted
    reference, _ = _reference(model, processor, samples)
    manifest = tmp_path / "test.jsonl"
    manifest.write_text(json.dumps({"audio": str(clip), "text": " ".join(reference.split())}))
    cli.main(["evaluate", "--workdir", str(workdir), "--manifest", str(manifest)])
    assert "1 utterances (0 skipped)" in capsys.readouterr().out
    reports = [json.loads(p.read_text()) for p in (workdir / "eval").glob("*.json")]
    (report,) = [r for r in reports if "utterances" in r]
    assert report["wer"] == 0.0 and report["utterances"][0]["hyp"].split() == reference.split()
