"""Whisper's language detection (`--language auto`) and its translate task, against
transformers on the same weights: `detect_language` and the softmax over the language tokens'
logits, and `generate(language=None | CODE, task=...)` greedy tokens.

The checkpoint is test_whisper_finetune's small random Whisper (the real 51,865-token
vocabulary, 6 s inputs), with every language in its generation config and eight languages made
the likeliest after `<|startoftranscript|>` on average over this module's inputs, so that which
of them wins depends on the input (the rows detect different languages, not all the same).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile
import srt
import torch

from jaxseq import cli
from jaxseq.audio.frontend import log_mel_numpy
from jaxseq.config import ConfigError, FrontendConfig, load_config
from jaxseq.data.waveforms import feature_batch
from jaxseq.errors import JaxseqError
from jaxseq.inference.language import detect_languages, recording_languages
from jaxseq.inference.transcribe import transcribe_waveforms
from jaxseq.tasks.ctc import CTCTask
from jaxseq.tasks.whisper import WhisperTask
from jaxseq.train.trained import load_trained
from tests import test_whisper_finetune as finetune

hf_dir = finetune.hf_dir  # the fixture: (folder, torch model) of the random Whisper
SOT, EOT = finetune.SOT, finetune.EOT
FRAMES = 2 * finetune.SOURCE_POSITIONS  # the model's window: 600 log-mel frames, 6 s
RATE = 16000
CONTEXT = FRAMES * FrontendConfig().hop_length  # samples in the window
MAX_NEW = finetune.TARGET_POSITIONS - 4  # after <|sot|><|xx|><|task|><|notimestamps|>
LIKELY = ["en", "de", "fr", "es", "ja", "zh", "ru", "it"]  # the languages made competitive


def _waves() -> list[np.ndarray]:
    """Random recordings: noise of random loudness plus a random tone, 1 to 8 s (the longest
    are cut to the first window for detection, and decoded in two windows)."""
    rng = np.random.default_rng(0)
    waves = []
    for seconds in (1.0, 2.5, 4.0, 5.5, 3.0, 8.0):
        t = np.arange(int(seconds * RATE)) / RATE
        noise = rng.normal(0.0, rng.uniform(0.01, 0.5), len(t))
        tone = rng.uniform(0.0, 0.5) * np.sin(2 * np.pi * rng.uniform(100, 3000) * t)
        waves.append((noise + tone).astype(np.float32))
    return waves


WAVES = _waves()


def _first_windows(waves: list[np.ndarray]) -> torch.Tensor:
    """transformers' input: each recording's first window as log-mel, padded like Whisper."""
    features = [log_mel_numpy(w[:CONTEXT], FrontendConfig()) for w in waves]
    return finetune._hf_features(feature_batch(features, len(features), FRAMES, 80))


@pytest.fixture(scope="module")
def lang_dir(hf_dir, reference, tmp_path_factory):
    """(folder, torch model): `hf_dir`'s Whisper with openai-whisper's 99 languages in its
    generation config's `lang_to_id` (what transformers' `detect_language` masks to), and the
    embeddings (tied to the output layer) of the `LIKELY` languages moved along the mean
    decoder state h̄ after `<|startoftranscript|>` on `WAVES`: each one's logit at h̄ is then
    the highest language logit + 1, and the input decides among them."""
    model = copy.deepcopy(hf_dir[1])
    features = _first_windows(WAVES)
    with torch.no_grad():
        start = torch.full((len(WAVES), 1), SOT)
        states = model.model(input_features=features, decoder_input_ids=start)
        mean = states.last_hidden_state[:, -1].mean(0)  # [d_model]
        embed = model.model.decoder.embed_tokens.weight  # [vocab, d_model]
        target = (embed[list(reference.all_language_tokens)] @ mean).max() + 1.0
        for code in LIKELY:
            row = reference.to_language_token(code)
            embed[row] += (target - embed[row] @ mean) * mean / mean.dot(mean)
    model.generation_config.lang_to_id = {
        f"<|{code}|>": token
        for code, token in zip(
            reference.all_language_codes, reference.all_language_tokens, strict=True
        )
    }
    folder = tmp_path_factory.mktemp("hf_whisper_languages")
    model.save_pretrained(folder)
    shutil.copy(hf_dir[0] / "tokenizer.json", folder / "tokenizer.json")
    return folder, model


@pytest.fixture(scope="module")
def converted(lang_dir, tmp_path_factory):
    """`lang_dir` through `jaxseq convert` (model.language=en, model.task=transcribe)."""
    workdir = tmp_path_factory.mktemp("converted_languages") / "whisper"
    cli.main(["convert", "--hf", str(lang_dir[0]), "--workdir", str(workdir)])
    return workdir


def _generate(model, waves: list[np.ndarray], **kwargs) -> np.ndarray:
    """transformers' greedy tokens [batch, 4 + MAX_NEW] for each recording's first window."""
    with torch.inference_mode():
        return model.generate(
            input_features=_first_windows(waves),
            max_new_tokens=MAX_NEW,
            return_timestamps=False,
            do_sample=False,
            num_beams=1,
            temperature=None,
            return_dict_in_generate=True,  # the sequences with their prompts
            **kwargs,
        ).sequences.numpy()


def _texts(trained, sequences: np.ndarray) -> list[str]:
    """Texts of transformers' sequences, the prompt and the specials dropped as jaxseq does."""
    return [trained.task.ids_to_text(s[4:][s[4:] != EOT]) for s in sequences]


def test_detected_languages_match_transformers(converted, lang_dir, reference):
    """Each recording's language and the probabilities of all 99 languages (on its first
    window) equal transformers' `detect_language` and the softmax over the language tokens'
    logits after `<|startoftranscript|>`."""
    trained = load_trained(converted)
    codes, tokens = reference.all_language_codes, list(reference.all_language_tokens)
    assert dict(trained.task.language_ids) == dict(zip(codes, tokens, strict=True))
    ours = detect_languages(trained, WAVES, batch_size=4)  # two batches
    model = lang_dir[1]
    features = _first_windows(WAVES)
    with torch.inference_mode():
        theirs = model.detect_language(features).tolist()
        start = torch.full((len(WAVES), 1), SOT)
        logits = model(input_features=features, decoder_input_ids=start).logits[:, -1]
        probs = torch.softmax(logits[:, tokens], dim=-1).numpy()  # [waves, 99]
    assert [code for code, _ in ours] == [reference.decode([t])[2:-2] for t in theirs]
    ours_probs = np.array([[p[c] for c in codes] for _, p in ours])
    np.testing.assert_allclose(ours_probs, probs, atol=2e-6, rtol=1e-4)
    assert len({code for code, _ in ours}) >= 3, "the rows should detect different languages"


def test_transcribe_auto_matches_transformers_generate(converted, lang_dir):
    """`Model.transcribe(language="auto")`: each recording decoded with the prompt of the
    language detected on its first window, as transformers' `generate(language=None)` does
    it (the recordings within one 6 s window)."""
    import jaxseq

    model = jaxseq.load(converted)
    short = [w for w in WAVES if len(w) <= CONTEXT]
    results = model.transcribe(
        short, language="auto", return_language=True, decoder="greedy", batch_size=4
    )
    theirs = _generate(lang_dir[1], short, task="transcribe")
    id_to_code = {t: c[2:-2] for c, t in lang_dir[1].generation_config.lang_to_id.items()}
    languages = [id_to_code[int(s[1])] for s in theirs]
    assert [r["language"] for r in results] == languages
    assert len(set(languages)) >= 2  # several prompts: several decode passes
    assert [r["text"] for r in results] == _texts(model.trained, theirs)
    assert all(r["segments"] == [] for r in results)
    assert model.transcribe(short[:1], decoder="greedy") == [
        _texts(model.trained, _generate(lang_dir[1], short[:1], language="en"))[0]
    ]  # the workdir's model.language=en, without detection, returns the text alone
    # An 8 s recording (two windows): the language of its first window, for both windows.
    long = WAVES[-1]
    assert len(long) > CONTEXT
    with torch.inference_mode():
        first = id_to_code[int(lang_dir[1].detect_language(_first_windows([long]))[0])]
    (result,) = model.transcribe([long], language="auto", return_language=True, decoder="greedy")
    assert result["language"] == first
    assert [result["text"]] == model.transcribe([long], language=first, decoder="greedy")


def test_translate_matches_transformers_generate(converted, lang_dir):
    """`task="translate"` with a non-English language: jaxseq's greedy search from the prompt
    `<|sot|><|de|><|translate|><|notimestamps|>` gives transformers' tokens."""
    trained = load_trained(converted)
    task = trained.task
    prompt = task.prompt_for("de", "translate")
    assert prompt[1:3] == (task.language_ids["de"], task.tokenizer.translate_id)
    features = [log_mel_numpy(w[:CONTEXT], FrontendConfig()) for w in WAVES]
    host = feature_batch(features, len(features), FRAMES, 80)
    predict = jax.jit(task.predict_fn, static_argnums=(2, 3, 4))
    sequences, lengths = jax.device_get(
        predict(trained.params, jax.tree.map(jnp.asarray, host), "greedy", 1, prompt)
    )
    theirs = _generate(lang_dir[1], WAVES, language="de", task="translate")
    assert (theirs[:, :4] == prompt).all()
    for ours, n, ref in zip(sequences, lengths, theirs[:, 4:], strict=True):
        np.testing.assert_array_equal(ours[:n], ref[:n])
        assert (ref[n:] == EOT).all()
    assert min(lengths) < MAX_NEW, "some hypothesis should end before the limit"


def test_cli_language_and_task_in_the_json(converted, lang_dir, tmp_path, capsys):
    """`jaxseq transcribe --language auto` and `--language de --task translate` with
    `--output-format json`: openai-whisper's layout with the detected (or given) language
    and transformers' text."""
    waves = WAVES[:3]
    paths = []
    for i, wave in enumerate(waves):
        paths.append(tmp_path / f"clip{i}.wav")
        soundfile.write(paths[-1], wave, RATE, subtype="FLOAT")
    trained = load_trained(converted)
    id_to_code = {t: c[2:-2] for c, t in lang_dir[1].generation_config.lang_to_id.items()}
    base = ["transcribe", "--workdir", str(converted), "--decoder", "greedy"]
    base += ["--output-format", "json", *map(str, paths)]
    runs = [
        (["--language", "auto"], {"task": "transcribe"}, "auto"),
        (
            ["--language", "de", "--task", "translate"],
            {"language": "de", "task": "translate"},
            "de",
        ),
    ]
    for flags, generate_kwargs, name in runs:
        out = tmp_path / name
        cli.main([*base, *flags, "--output-dir", str(out)])
        printed = capsys.readouterr().out.splitlines()
        theirs = _generate(lang_dir[1], waves, **generate_kwargs)
        texts = _texts(trained, theirs)
        assert [line for line in printed if "\t" in line] == [
            f"{p}\t{t}" for p, t in zip(paths, texts, strict=True)
        ]
        for path, sequence, text in zip(paths, theirs, texts, strict=True):
            result = json.loads((out / f"{path.stem}.json").read_text())
            expected = {"text": text, "language": id_to_code[int(sequence[1])], "segments": []}
            assert result == expected
    # A manifest job records each item's detected language beside its text.
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"id": p.stem, "audio": str(p)}) + "\n" for p in paths))
    job = ["transcribe", "--workdir", str(converted), "--decoder", "greedy", "--language", "auto"]
    cli.main([*job, "--manifest", str(manifest), "--output-dir", str(tmp_path / "job")])
    capsys.readouterr()
    lines = (tmp_path / "job" / "results.jsonl").read_text().splitlines()
    theirs = _generate(lang_dir[1], waves, task="transcribe")
    assert [json.loads(line) for line in lines] == [
        {
            "id": p.stem,
            "audio": str(p),
            "seconds": round(len(w) / RATE, 3),
            "text": t,
            "language": id_to_code[int(s[1])],
        }
        for p, w, s, t in zip(paths, waves, theirs, _texts(trained, theirs), strict=True)
    ]
    # Subtitles: decoded with timestamp tokens, a cue per segment.
    subtitles = ["transcribe", "--workdir", str(converted), "--output-format", "srt"]
    cli.main([*subtitles, "--output-dir", str(tmp_path / "srt"), *map(str, paths)])
    timed = finetune.trained_model(converted).transcribe(paths, return_timestamps=True)
    cues = [list(srt.parse((tmp_path / "srt" / f"{p.stem}.srt").read_text())) for p in paths]
    assert [[c.content for c in cs] for cs in cues] == [
        [s["text"].strip() for s in r["segments"]] for r in timed
    ]
    assert sum(map(len, cues)) > 0 and all(c.start <= c.end for cs in cues for c in cs)


def test_language_errors_name_the_problem(converted):
    with pytest.raises(ConfigError, match="model.language.*'german'.*or auto"):
        load_config(None, ["model.family=whisper", "model.language=german"])
    auto = load_trained(converted, overrides=("model.language=auto",))
    task = auto.task
    assert task.language == "auto" and len(task.prompt) == 4  # shapes as with a language
    with pytest.raises(JaxseqError, match="model.language=auto.*the loss"):
        task.loss_fn(auto.params, {}, jax.random.PRNGKey(0), train=False)
    with pytest.raises(JaxseqError, match="model.language=auto.*decoding without a prompt"):
        task.predict_fn(auto.params, {}, "greedy", 1)
    with pytest.raises(JaxseqError, match="'xx' is none of this checkpoint's language codes"):
        task.prompt_for("xx")
    with pytest.raises(JaxseqError, match="Whisper task 'summarize'"):
        task.prompt_for("en", "summarize")
    # A CTC model has no prompt (the task is only looked at, never run).
    ctc = dataclasses.replace(auto, cfg=load_config(None), task=object.__new__(CTCTask))
    with pytest.raises(JaxseqError, match="this workdir holds a ctc model"):
        transcribe_waveforms(ctc, [], language="de")


def test_english_only_checkpoints_have_no_language_to_detect():
    """An English-only vocabulary (51,864 tokens): its prompt has no language token, auto is
    English without detection (transformers' `generate(language=None)`), and another language
    or the translate task is an error (as transformers' `generate` refuses them)."""
    english = ["model.family=whisper", "model.vocab_size=51864", "data.dataset=/nonexistent"]
    task = WhisperTask.from_config(load_config(None, [*english, "model.language=auto"]))
    tok = task.tokenizer
    assert task.language_ids == {}
    assert task.prompt == task.prompt_for("en") == (tok.sot_id, tok.no_timestamps_id)
    languages = recording_languages(SimpleNamespace(task=task), WAVES[:2], batch_size=2)
    assert languages == (["en", "en"], ["en"])  # detects nothing (it calls no model)
    for overrides in (["model.language=de"], ["model.task=translate"]):
        with pytest.raises(JaxseqError, match="English-only checkpoint"):
            WhisperTask.from_config(load_config(None, english + overrides))
