"""Pretrained Whisper through jaxseq, against transformers: `jaxseq convert` → loss and
decoding (Whisper's prompt, token suppression, 30-second padding) → `jaxseq train` with
`train.init_from` (the fine-tune path) → `jaxseq evaluate` → `jaxseq export`.

The checkpoint is a small random `WhisperForConditionalGeneration` with Whisper's real
multilingual vocabulary (51,865 tokens, tokenizer.json from the `whisper_folder` fixture) and a
generation config carrying the Whisper fields transformers' `generate` reads.
"""

from __future__ import annotations

import json
import runpy
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile
import torch
import transformers

from jaxseq import cli
from jaxseq.audio.espeak import synthesize
from jaxseq.audio.frontend import log_mel_numpy
from jaxseq.audio.io import to_mono_resampled
from jaxseq.config import FrontendConfig, load_config
from jaxseq.data.eval_batches import make_eval_batches
from jaxseq.data.pipeline import load_dataset_info, make_train_iterator
from jaxseq.tasks.whisper import pad_like_whisper
from jaxseq.text.whisper_tokenizer import WhisperTokenizer
from jaxseq.train.trained import load_trained
from tests.conftest import REPO
from tests.hf_whisper import (
    random_whisper,
)

FINETUNE = REPO / "configs" / "whisper_finetune.yaml"
# The fine-tune runs' shapes and schedule (the fine-tune test's and the example's: one set of
# compiled programs for both).
FINETUNE_RUN = [
    "data.batch_size=4",
    "data.eval_batch_size=4",
    "data.buckets=[600]",
    "data.max_label_length=16",
    "train.num_steps=6",
    "train.log_every=1",
    "train.checkpoint_every=6",
    "optim.learning_rate=3e-3",
    "optim.warmup_steps=1",
    "eval.beam_size=2",
]
SOURCE_POSITIONS = 300  # 600 mel frames: 6 s inputs (the tiny corpus' longest is shorter)
TARGET_POSITIONS = 24
EOT, SOT, EN, TRANSCRIBE, NO_TIMESTAMPS = 50257, 50258, 50259, 50359, 50363
EOT_BOOST = 9.0
TASK_IDS = {"translate": 50358, "transcribe": TRANSCRIBE}
ALWAYS_SUPPRESSED = [SOT, 50358, 50359, 50360, 50361, 50362]  # tasks, lm, prev, nospeech


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, whisper_folder):
    """(folder, torch model): a random Whisper with Whisper's tokenizer and generation config.

    Weights are redrawn N(0, 0.2) for peaked next-token distributions (no float32 near-ties);
    the decoder's final LayerNorm bias raises the end-of-text logit by `EOT_BOOST`, so that
    hypotheses end at different lengths.
    """
    model = random_whisper(
        0.2,
        vocab_size=51865,
        max_source_positions=SOURCE_POSITIONS,
        max_target_positions=TARGET_POSITIONS,
        pad_token_id=EOT,
        bos_token_id=EOT,
        eos_token_id=EOT,
        decoder_start_token_id=SOT,
    )
    with torch.no_grad():
        eot = model.model.decoder.embed_tokens.weight[EOT]  # tied to the output layer
        model.model.decoder.layer_norm.bias += EOT_BOOST * eot / eot.dot(eot)
    tokenizer = WhisperTokenizer.from_folder(whisper_folder)
    model.generation_config = transformers.GenerationConfig(
        decoder_start_token_id=SOT,
        eos_token_id=EOT,
        pad_token_id=EOT,
        bos_token_id=EOT,
        max_length=TARGET_POSITIONS,
        suppress_tokens=sorted([*tokenizer.non_speech_ids(), *ALWAYS_SUPPRESSED]),
        begin_suppress_tokens=[220, EOT],
        is_multilingual=True,
        lang_to_id={"<|en|>": EN, "<|de|>": 50261},
        task_to_id=TASK_IDS,
        no_timestamps_token_id=NO_TIMESTAMPS,
    )
    folder = tmp_path_factory.mktemp("hf_whisper_pretrained")
    model.save_pretrained(folder)
    shutil.copy(whisper_folder / "tokenizer.json", folder / "tokenizer.json")
    return folder, model


@pytest.fixture(scope="module")
def converted(hf_dir, tmp_path_factory):
    """A workdir written by `jaxseq convert`."""
    workdir = tmp_path_factory.mktemp("converted") / "whisper"
    cli.main(["convert", "--hf", str(hf_dir[0]), "--workdir", str(workdir)])
    return workdir


@pytest.fixture(scope="module")
def batch(converted, tiny_dataset):
    """Four test utterances of the tiny corpus, as the evaluation pipeline batches them."""
    trained = load_trained(converted)
    data = load_config(None, ["data.eval_batch_size=4", "data.buckets=[600]"]).data
    host, _, texts = next(make_eval_batches(tiny_dataset, "test", data, trained.task.tokenizer))
    return host, texts


def _hf_features(host: dict) -> torch.Tensor:
    features = jnp.asarray(host["features"], jnp.float32)  # train batches hold float16
    padded, _ = pad_like_whisper(
        features, jnp.asarray(host["feature_lengths"]), 2 * SOURCE_POSITIONS
    )
    return torch.from_numpy(np.asarray(padded).transpose(0, 2, 1).copy())  # [batch, mels, frames]


def test_convert_writes_a_workdir(converted, hf_dir):
    cfg = load_config(converted / "config.yaml")
    m = cfg.model
    assert (m.family, m.d_model, m.num_heads, m.num_layers, m.decoder_layers, m.mlp_dim) == (
        "whisper",
        64,
        4,
        2,
        2,
        128,
    )
    assert (m.vocab_size, m.max_source_positions, m.max_target_positions) == (51865, 300, 24)
    assert cfg.optim.freeze == ("encoder/pos_embedding",)
    assert json.loads((converted / "frontend.json").read_text())["frontend"]["n_mels"] == 80
    for name in ("tokenizer.json", "generation_config.json"):
        assert (converted / "tokenizer" / name).read_bytes() == (hf_dir[0] / name).read_bytes()
    with pytest.raises(SystemExit):  # never over an existing checkpoint
        cli.main(["convert", "--hf", str(hf_dir[0]), "--workdir", str(converted)])


def test_pad_like_whisper_equals_log_mel_of_padded_audio():
    """Padding features equals computing them on audio zero-padded to the full window, away
    from the two STFT frames at the utterance's end (whose windows see the padding)."""
    cfg = FrontendConfig()
    audio, sr = synthesize("three four", "en-us")
    audio = to_mono_resampled(audio, sr, cfg.sample_rate)
    mel = log_mel_numpy(audio, cfg)  # [frames, 80]
    frames, total = len(mel), 2 * SOURCE_POSITIONS
    expected = log_mel_numpy(np.pad(audio, (0, total * cfg.hop_length - len(audio))), cfg)
    padded, lengths = pad_like_whisper(jnp.asarray(mel[None]), jnp.asarray([frames]), total)
    padded = np.asarray(padded[0])
    assert padded.shape == expected.shape == (total, 80) and int(lengths[0]) == total
    away = np.r_[0 : frames - 2, frames + 2 : total]
    np.testing.assert_allclose(padded[away], expected[away], atol=2e-5)


def _transformers_loss(model, host: dict, transcripts: list[list[int]]) -> tuple[float, int]:
    """(mean loss per predicted token, tokens) of transformers' Whisper on a batch: the prompt
    given, each transcript's ids and end-of-text predicted (the prompt's labels -100)."""
    features = _hf_features(host)
    prompt = [SOT, EN, TRANSCRIBE, NO_TIMESTAMPS]
    total = count = 0.0
    for i, ids in enumerate(transcripts):
        labels = [-100] * (len(prompt) - 1) + ids + [EOT]
        with torch.no_grad():
            out = model(
                input_features=features[i : i + 1],
                decoder_input_ids=torch.tensor([prompt + ids]),
                labels=torch.tensor([labels]),
            )
        total += float(out.loss) * (len(ids) + 1)
        count += len(ids) + 1
    return total / count, int(count)


def test_loss_matches_transformers(converted, hf_dir, batch):
    """The task's teacher-forced loss (prompt given, transcript + end-of-text predicted) equals
    transformers' loss with the prompt's labels set to -100."""
    host, texts = batch
    trained = load_trained(converted)
    loss_fn = jax.jit(trained.task.loss_fn, static_argnames="train")
    loss, metrics = loss_fn(
        trained.params, jax.tree.map(jnp.asarray, host), jax.random.PRNGKey(0), train=False
    )
    transcripts = [trained.task.tokenizer.encode(text).tolist() for text in texts]
    expected, count = _transformers_loss(hf_dir[1], host, transcripts)
    assert float(metrics["tokens"]) == count
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


@pytest.mark.parametrize("num_beams", [1, 4])
def test_decoding_matches_transformers_generate(converted, hf_dir, batch, num_beams):
    """jaxseq's search over the converted workdir gives transformers' Whisper `generate` ids:
    the same prompt, suppress_tokens, begin_suppress_tokens, beams and length penalty."""
    host, _ = batch
    trained = load_trained(converted)
    decoder = "beam" if num_beams > 1 else "greedy"
    sequences, lengths = jax.device_get(
        jax.jit(trained.task.predict_fn, static_argnums=(2, 3))(
            trained.params, jax.tree.map(jnp.asarray, host), decoder, num_beams
        )
    )
    max_new = TARGET_POSITIONS - 4
    assert sequences.shape == (4, max_new)
    with torch.inference_mode():
        out = hf_dir[1].generate(
            input_features=_hf_features(host),
            num_beams=num_beams,
            max_new_tokens=max_new,
            language="en",
            task="transcribe",
            return_timestamps=False,
            length_penalty=1.0,
            early_stopping=False,
            do_sample=False,
            temperature=None,
            return_dict_in_generate=True,
        )
    theirs = out.sequences.numpy()
    assert (theirs[:, :4] == [SOT, EN, TRANSCRIBE, NO_TIMESTAMPS]).all()
    theirs = theirs[:, 4:]
    suppressed = set(trained.task.suppress_ids)
    for ours, n, ref in zip(sequences, lengths, theirs, strict=True):
        np.testing.assert_array_equal(ours[:n], ref[:n])
        assert (ref[n:] == EOT).all()  # transformers pads after its end
        assert not suppressed & set(ours[:n].tolist())
        assert ours[0] not in (220, EOT)  # begin_suppress_tokens
    assert min(lengths) < max_new, "some hypothesis should end before the limit"


def test_finetune_evaluate_export(converted, hf_dir, tiny_dataset, tmp_path, capsys):
    """The documented fine-tune path: configs/whisper_finetune.yaml with train.init_from."""
    workdir = tmp_path / "ft"
    cli.main(
        [
            "train",
            "--config",
            str(FINETUNE),
            "--workdir",
            str(workdir),
            f"train.init_from={converted}",
            f"data.dataset={tiny_dataset}",
            "train.eval_every=6",
            *FINETUNE_RUN,
        ]
    )
    capsys.readouterr()
    # The model section came from the converted workdir, the tokenizer folder too.
    assert (
        load_config(workdir / "config.yaml").model == load_config(converted / "config.yaml").model
    )
    assert (workdir / "tokenizer" / "tokenizer.json").is_file()
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in lines if m["split"] == "train"]
    assert [m["step"] for m in train] == list(range(1, 7))
    # Step 1 is transformers' loss of the pretrained weights on the first training batch (no
    # dropout, no SpecAugment: the train-mode loss is the teacher-forced one); then it falls.
    trained = load_trained(workdir)
    cfg = trained.cfg
    info = load_dataset_info(cfg.data.dataset, cfg.data.train_split)
    first = next(
        make_train_iterator(
            cfg.data.dataset,
            cfg.data.train_split,
            cfg.data,
            trained.task.tokenizer,
            seed=cfg.data.shuffle_seed,
            label_lengths=trained.task.label_lengths(cfg.data.dataset, info, cfg.data.train_split),
        )
    )
    transcripts = [
        row[:n].tolist() for row, n in zip(first["labels"], first["label_lengths"], strict=True)
    ]
    expected, count = _transformers_loss(hf_dir[1], first, transcripts)
    assert train[0]["tokens"] == count
    assert train[0]["loss"] == pytest.approx(expected, rel=1e-5)
    assert train[-1]["loss"] < train[0]["loss"]
    before, after = load_trained(converted).params, load_trained(workdir).params
    np.testing.assert_array_equal(
        before["encoder"]["pos_embedding"], after["encoder"]["pos_embedding"]
    )  # frozen
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), before, after)
    assert moved["decoder"]["embed"]["embedding"] > 0
    assert moved["encoder"]["layer0"]["attn"]["query"]["kernel"] > 0

    cli.main(["evaluate", "--workdir", str(workdir), "--split", "test"])
    assert "WER" in capsys.readouterr().out

    wav = sorted((tiny_dataset.parent / "audio" / "test" / "wav").glob("*.wav"))[:2]
    cli.main(["transcribe", "--workdir", str(workdir), *map(str, wav)])
    out = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in out] == [str(w) for w in wav]
    # Longer than the model's 6 s context: decoded in windows (never silently truncated).
    audio, sr = soundfile.read(wav[0])
    long = tmp_path / "long.wav"
    soundfile.write(long, np.tile(audio, int(7 * sr / len(audio)) + 1), sr)
    cli.main(["transcribe", "--workdir", str(workdir), str(long)])
    assert capsys.readouterr().out.startswith(f"{long}\t")

    out = tmp_path / "hf"
    cli.main(["export", "--workdir", str(workdir), "--out", str(out)])
    for name in ("tokenizer.json", "generation_config.json", "config.json", "model.safetensors"):
        assert (out / name).is_file()
    reloaded = transformers.WhisperForConditionalGeneration.from_pretrained(out).eval()
    trained = load_trained(workdir)
    state = reloaded.state_dict()
    np.testing.assert_array_equal(
        state["model.decoder.embed_tokens.weight"].numpy(),
        np.asarray(after["decoder"]["embed"]["embedding"]),
    )
    assert trained.step == 6


def test_init_from_and_tokenizer_errors(converted, tiny_dataset, tmp_path, capsys):
    base = [f"data.dataset={tiny_dataset}", "data.buckets=[600]", "data.max_label_length=16"]
    cases = [
        (["train.init_from=''", "model.tokenizer=''"], "set train.init_from"),
        ([f"train.init_from={tmp_path / 'nowhere'}"], "has no tokenizer.json"),
        ([f"train.init_from={converted}", "optim.freeze=[encoder/pos_embeding]"], "matches no"),
    ]
    for i, (overrides, message) in enumerate(cases):
        with pytest.raises(SystemExit) as exit_info:
            workdir = str(tmp_path / f"w{i}")
            cli.main(["train", "--config", str(FINETUNE), "--workdir", workdir, *base, *overrides])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_convert_errors_name_the_problem(hf_dir, tmp_path, capsys):
    folder = tmp_path / "no_tokenizer"
    shutil.copytree(hf_dir[0], folder)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(SystemExit):
        cli.main(["convert", "--hf", str(folder), "--workdir", str(tmp_path / "w")])
    assert f"{folder} has no tokenizer.json" in capsys.readouterr().err


def test_example_finetune_from_script(hf_dir, tiny_dataset, tmp_path, monkeypatch, capsys):
    """examples/finetune_from_script.py, run as a user runs it (as `__main__`, with its command
    line; in this process: no start-up, no imports): this module's converted (tiny, random)
    Whisper fine-tuned on a manifest through the Python API, then evaluated."""
    audio = tiny_dataset.parent / "audio"
    workdir = tmp_path / "ft"
    script = REPO / "examples" / "finetune_from_script.py"
    # The train and beam-search programs of test_finetune_evaluate_export (the same shapes and
    # schedule): the run's persistent compilation cache has them.
    argv = [str(script), "--hf", str(hf_dir[0]), "--workdir", str(workdir)]
    argv += ["--train", str(audio / "train" / "manifest.jsonl")]
    argv += ["--test", str(audio / "test" / "manifest.jsonl"), *FINETUNE_RUN]
    monkeypatch.setattr(sys, "argv", argv)
    capsys.readouterr()
    runpy.run_path(str(script), run_name="__main__")
    lines = capsys.readouterr().out.strip().splitlines()
    # The callback saw every step: its losses are the ones the loop logged at each step.
    logged = [
        json.loads(x)["loss"]
        for x in (workdir / "run" / "metrics.jsonl").read_text().splitlines()
        if json.loads(x)["split"] == "train"
    ]
    assert len(logged) == 6
    assert lines[0] == f"step 6: train loss {logged[0]:.4f} -> {logged[-1]:.4f}"
    # The evaluation scored every test utterance of the manifest with the trained step.
    report = json.loads((workdir / "run" / "eval" / "eval-step6.json").read_text())
    test_items = (audio / "test" / "manifest.jsonl").read_text().splitlines()
    assert report["num_utterances"] + report["num_skipped"] == len(test_items)
    assert lines[-1] == (
        f"jaxseq.Model(whisper, {workdir / 'run'}, step 6): {report['headline']} "
        f"on {report['num_utterances']} utterances"
    )
    assert load_trained(workdir / "run").step == 6


def _long_recording() -> np.ndarray:
    """15 s of six espeak-ng utterances with 0.75 s pauses (windows at 0, 4, 8 and 12 s)."""
    parts = []
    for text, voice, words_per_minute in [
        ("one two three four", "en-us", 110),
        ("five six seven", "en-gb-x-rp", 120),
        ("eight nine zero one two", "en-us+m3", 100),
        ("three three four", "en-029", 130),
        ("nine eight seven six five", "en+f2", 110),
        ("zero zero one", "en-us", 175),
    ]:
        wave, rate = synthesize(text, voice=voice, rate=words_per_minute)
        parts += [to_mono_resampled(wave[:, None], rate, 16000), np.zeros(12000, np.float32)]
    audio = np.concatenate(parts).astype(np.float32)
    assert 14 < len(audio) / 16000 < 30
    return audio


def _pipeline_transcribe(hf_dir, audio: np.ndarray, max_new: int, **kwargs) -> dict:
    """transformers' `pipeline("automatic-speech-recognition", chunk_length_s=6,
    stride_length_s=1, batch_size=4)`, greedy, English."""
    tokenizer = transformers.WhisperTokenizerFast.from_pretrained(hf_dir[0])
    tokenizer.pad_token = "<|endoftext|>"  # the tokenizer.json built offline names none
    pipe = transformers.pipeline(
        "automatic-speech-recognition",
        model=hf_dir[1],
        tokenizer=tokenizer,
        feature_extractor=transformers.WhisperFeatureExtractor(chunk_length=6),
        chunk_length_s=6,
        stride_length_s=1,
        batch_size=4,
        device="cpu",
    )
    generate = {"language": "en", "task": "transcribe", "max_new_tokens": max_new}
    with torch.inference_mode():
        return pipe(
            audio, generate_kwargs={**generate, "num_beams": 1, "do_sample": False}, **kwargs
        )


def test_chunked_long_form_matches_transformers_pipeline(converted, hf_dir):
    """A 15 s recording in 6 s windows with 1 s strides: jaxseq's chunked transcript equals
    transformers' pipeline's on the same weights, whose windows, greedy decoding and token
    merge it follows; with timestamps, so do the segments, merged on the timestamp tokens."""
    audio = _long_recording()
    trained = load_trained(converted)
    max_new = min(TARGET_POSITIONS - 4, trained.cfg.data.max_label_length + 1)
    model = trained_model(converted)
    options = dict(decoder="greedy", chunk_seconds=6, stride_seconds=1, batch_size=4)
    (ours,) = model.transcribe([audio], **options)
    theirs = _pipeline_transcribe(hf_dir, audio, max_new)["text"]
    assert ours == theirs.strip()
    assert len(ours) > 60  # several windows' worth of text, merged

    # With timestamps (a 3-token prompt: one more new token). This random model writes one
    # timestamp and then text, so the segment opens in a right stride and never closes: jaxseq
    # gives it the recording's start and end where transformers has None.
    (timed,) = model.transcribe([audio], return_timestamps=True, **options)
    chunks = _pipeline_transcribe(hf_dir, audio, max_new + 1, return_timestamps=True)["chunks"]
    assert [(s["start"], s["end"], s["text"]) for s in timed["segments"]] == [
        (c["timestamp"][0] or 0.0, c["timestamp"][1] or round(len(audio) / 16000, 2), c["text"])
        for c in chunks
    ]
    assert timed["text"] == "".join(c["text"] for c in chunks).strip() and len(chunks) == 1


def trained_model(workdir):
    import jaxseq

    return jaxseq.load(workdir)
