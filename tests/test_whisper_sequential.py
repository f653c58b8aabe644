"""Whisper's sequential long-form transcription (`jaxseq.inference.whisper_sequential`)
against transformers 5's long-form `generate(..., return_timestamps=True)` on the same weights.

The checkpoint is a small random Whisper (d_model 64, 2 + 2 layers) with Whisper's real
vocabulary and 30-second windows (1500 encoder positions), 64 decoder positions, and two
biases added before conversion, so that both models see them: every timestamp token's logit is
raised by `TIME_BOOST` (its embedding row, tied to the output layer, gets a shared component
that the decoder's final LayerNorm bias lifts), and end-of-text's by `EOT_BOOST`. Random
weights then write timestamp pairs, segments and seeks happen, and windows end at different
lengths. The recording is 70 s of noise with silent and loud seconds: three windows, the
later ones starting where the timestamps of the one before put them.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile
import torch
import transformers
from transformers.models.whisper.generation_whisper import WhisperGenerationMixin

from jaxseq import cli
from jaxseq.api import Model
from jaxseq.config import ConfigError, load_config
from jaxseq.convert.workdir import convert_to_workdir
from jaxseq.decoding.sampling import sample_after_prompt
from jaxseq.errors import JaxseqError
from jaxseq.inference.formats import FORMATS, write_result
from jaxseq.inference.longform import window_features
from jaxseq.inference.whisper_sequential import sequential_transcribe
from jaxseq.inference.word_timing import add_word_timestamps
from jaxseq.text.whisper_tokenizer import WhisperTokenizer
from jaxseq.train.trained import load_trained
from tests import test_whisper_finetune as finetune
from tests.conftest import REPO
from tests.hf_whisper import random_whisper
from tests.test_multiprocess import TIMEOUT, _env, _free_port
from tests.test_transcribe_compiles_once import Lowerings, random_trained
from tests.test_word_timing import find_alignment
from tests.whisper_sequential_run import RATE, RECORDINGS, recording

EOT, SOT, EN, TRANSCRIBE = finetune.EOT, finetune.SOT, finetune.EN, finetune.TRANSCRIBE
NO_TIMESTAMPS = finetune.NO_TIMESTAMPS
TIMESTAMP_BEGIN = NO_TIMESTAMPS + 1
NO_SPEECH = NO_TIMESTAMPS - 1
SOT_PREV = 50361
TARGET_POSITIONS = 64
TIME_BOOST = 5.0
EOT_BOOST = 5.0
OFF = dict(compression_ratio_threshold=None, logprob_threshold=None, no_speech_threshold=None)
WAVE = recording(70, 0)


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory, whisper_folder):
    """(folder, torch model): the random Whisper with Whisper's tokenizer and a generation
    config holding the fields transformers' long-form generate reads."""
    model = random_whisper(
        0.2,
        vocab_size=51865,
        max_source_positions=1500,
        max_target_positions=TARGET_POSITIONS,
        pad_token_id=EOT,
        bos_token_id=EOT,
        eos_token_id=EOT,
        decoder_start_token_id=SOT,
    )
    with torch.no_grad():
        embed = model.model.decoder.embed_tokens.weight  # [vocab, d_model], tied to the output
        embed[TIMESTAMP_BEGIN:, 0] = 1.0  # a shared component of every timestamp row ...
        model.model.decoder.layer_norm.bias[0] += TIME_BOOST  # ... that the final bias lifts
        eot = embed[EOT].clone()
        eot[0] = 0.0
        model.model.decoder.layer_norm.bias += EOT_BOOST * eot / eot.dot(eot)
    tokenizer = WhisperTokenizer.from_folder(whisper_folder)
    model.generation_config = transformers.GenerationConfig(
        decoder_start_token_id=SOT,
        eos_token_id=EOT,
        pad_token_id=EOT,
        bos_token_id=EOT,
        max_length=TARGET_POSITIONS,
        suppress_tokens=sorted([*tokenizer.non_speech_ids(), *finetune.ALWAYS_SUPPRESSED]),
        begin_suppress_tokens=[220, EOT],
        is_multilingual=True,
        lang_to_id={"<|en|>": EN},
        task_to_id=finetune.TASK_IDS,
        no_timestamps_token_id=NO_TIMESTAMPS,
        prev_sot_token_id=SOT_PREV,
        max_initial_timestamp_index=50,
    )
    folder = tmp_path_factory.mktemp("hf_whisper_sequential")
    model.save_pretrained(folder)
    shutil.copy(whisper_folder / "tokenizer.json", folder / "tokenizer.json")
    return folder, model


@pytest.fixture(scope="module")
def workdir(hf_model, tmp_path_factory):
    """The checkpoint through jaxseq's converter."""
    return convert_to_workdir(hf_model[0], tmp_path_factory.mktemp("sequential") / "whisper")


@pytest.fixture(scope="module")
def trained(workdir):
    return load_trained(workdir)


@pytest.fixture(scope="module")
def greedy(trained) -> dict:
    """jaxseq's greedy result for WAVE without fallback or conditioning."""
    options = dict(temperatures=(0.0,), condition_on_previous_text=False, **OFF)
    return sequential_transcribe(trained, [WAVE], **options)[0]


def _hf_segments(model, wave: np.ndarray, **kwargs) -> list[dict]:
    """transformers' long-form segments of one recording (its features as the feature
    extractor computes them for long-form: the whole recording, not truncated)."""
    extractor = transformers.WhisperFeatureExtractor(feature_size=80)
    inputs = extractor(
        wave,
        sampling_rate=RATE,
        return_tensors="pt",
        truncation=False,
        padding="longest",
        return_attention_mask=True,
    )
    with torch.inference_mode():
        out = model.generate(
            inputs.input_features,
            attention_mask=inputs.attention_mask,
            return_timestamps=True,
            return_segments=True,
            language="en",
            task="transcribe",
            **kwargs,
        )
    return out["segments"][0]


def _times_and_tokens(segments) -> list[tuple[float, float, list[int]]]:
    """Times (past the recording's end moved to it, as jaxseq does) and tokens."""
    end = len(WAVE) / RATE
    return [
        (min(float(s["start"]), end), min(float(s["end"]), end), [int(t) for t in s["tokens"]])
        for s in segments
    ]


@pytest.mark.parametrize("condition", [False, True])
def test_greedy_segments_match_transformers(trained, hf_model, greedy, condition):
    """Without fallback, every segment's tokens, start and end equal transformers', with and
    without conditioning on the earlier segments; the recording takes several windows and
    gives several segments, some windows seeking to their last timestamp pair."""
    want = _hf_segments(hf_model[1], WAVE, condition_on_prev_tokens=condition, temperature=0.0)
    result = greedy
    if condition:
        [result] = sequential_transcribe(trained, [WAVE], temperatures=(0.0,), **OFF)
    got = result["segments"]
    assert _times_and_tokens(got) == _times_and_tokens(want)
    if condition:  # the earlier text (its last 31 tokens) changed what later windows wrote
        assert _times_and_tokens(got) != _times_and_tokens(greedy["segments"])
    seeks = sorted({s["seek"] for s in got})
    assert len(seeks) >= 3 and len(got) >= 8, (seeks, len(got))
    assert any(seek % 3000 for seek in seeks)  # a window started at a timestamp, not a border
    assert result["language"] == "en"
    assert {s["temperature"] for s in got} == {0.0}
    text = trained.task.ids_to_text(np.asarray([t for s in got for t in s["tokens"]]))
    assert result["text"] == text and text


def _window_input(wave: np.ndarray, seek: int) -> torch.Tensor:
    """transformers' input for the window at `seek`: [1, 80, 3000], zero-padded."""
    extractor = transformers.WhisperFeatureExtractor(feature_size=80)
    features = extractor(wave, sampling_rate=RATE, truncation=False, padding="longest")
    window = np.asarray(features.input_features[0])[:, seek : seek + 3000]
    return torch.from_numpy(np.pad(window, ((0, 0), (0, 3000 - window.shape[1])))[None])


def test_skipped_windows_and_figures_match_transformers(trained, hf_model, greedy):
    """With thresholds that decide without sampling (every window whose greedy decoding is
    less probable than `logprob_threshold` is skipped as silence: no_speech_threshold 0),
    the same windows are skipped and the same segments kept as transformers'; each segment's
    avg_logprob, compression_ratio and no_speech_prob equal transformers' figures for its
    window (`_retrieve_avg_logprobs`, `_retrieve_compression_ratio`, the softmax after
    `<|startoftranscript|>` that `WhisperNoSpeechDetection` takes)."""
    window_logprobs = sorted({s["avg_logprob"] for s in greedy["segments"]})
    middle = len(window_logprobs) // 2  # some windows pass, some are skipped, none borderline
    threshold = (window_logprobs[middle - 1] + window_logprobs[middle]) / 2
    options = dict(
        temperature=(0.0, 0.2, 0.4),
        logprob_threshold=threshold,
        no_speech_threshold=0.0,
        condition_on_prev_tokens=True,
    )
    want = _hf_segments(hf_model[1], WAVE, **options)
    [result] = sequential_transcribe(
        trained,
        [WAVE],
        temperatures=(0.0, 0.2, 0.4),
        compression_ratio_threshold=None,
        logprob_threshold=threshold,
        no_speech_threshold=0.0,
        condition_on_previous_text=True,
    )
    got = result["segments"]
    assert _times_and_tokens(got) == _times_and_tokens(want)
    kept = {s["seek"] for s in got}
    assert kept and len(got) < len(greedy["segments"])  # some windows kept, some skipped
    assert all(s["avg_logprob"] >= threshold and s["temperature"] == 0.0 for s in got)
    for ours, theirs in zip(got, want, strict=True):
        scores = theirs["result"]["scores"]  # per generated step, [vocab]
        generated = theirs["result"]["sequences"][-len(scores) :]  # end-of-text included
        avg = WhisperGenerationMixin._retrieve_avg_logprobs(scores, generated, 0.0)
        ratio = WhisperGenerationMixin._retrieve_compression_ratio(generated, 51865)
        np.testing.assert_allclose(ours["avg_logprob"], float(avg), rtol=0, atol=2e-5)
        assert ours["compression_ratio"] == ratio
        prompt = theirs["result"]["sequences"][: -len(scores)]
        with torch.inference_mode():
            logits = hf_model[1](
                input_features=_window_input(WAVE, ours["seek"]), decoder_input_ids=prompt[None]
            ).logits[0, len(prompt) - 3]  # after <|startoftranscript|>, before <|en|><|task|>
        no_speech = float(torch.softmax(logits.double(), -1)[NO_SPEECH])
        np.testing.assert_allclose(ours["no_speech_prob"], no_speech, rtol=1e-4)


def test_temperature_fallback_samples(trained):
    """A decoding that always fails (compression_ratio_threshold 0) is retried at every
    temperature and the last one's kept: sampled (jax's PRNG, so not transformers' tokens),
    on Whisper's timestamp grammar, reproducible, unlike the greedy text."""
    options = dict(
        temperatures=(0.0, 0.2, 0.4),
        compression_ratio_threshold=0.0,
        logprob_threshold=None,
        no_speech_threshold=None,
    )
    wave = WAVE[: 40 * RATE]  # two windows
    [first] = sequential_transcribe(trained, [wave], **options)
    [again] = sequential_transcribe(trained, [wave], **options)
    [greedy] = sequential_transcribe(trained, [wave], temperatures=(0.0,), **OFF)
    assert first == again
    segments = first["segments"]
    assert segments and {s["temperature"] for s in segments} == {0.4}
    assert _times_and_tokens(segments) != _times_and_tokens(greedy["segments"])
    for s in segments:
        times = [t for t in s["tokens"] if t >= TIMESTAMP_BEGIN]
        assert s["tokens"][0] >= TIMESTAMP_BEGIN and times == sorted(times)
        assert s["compression_ratio"] > 0.0 and s["avg_logprob"] <= 0.0


def test_recordings_decode_together_as_alone(trained, greedy):
    """Two recordings decoded side by side (a row each, windows of different prompts and
    lengths in one program) give each one's result alone; a recording of another length
    reuses the compiled program."""
    other = recording(45, 1)
    options = dict(temperatures=(0.0,), condition_on_previous_text=False, **OFF)
    together = sequential_transcribe(trained, [WAVE, other], batch_size=2, **options)
    with Lowerings() as lowered:
        [alone] = sequential_transcribe(trained, [other], **options)
    assert lowered.count == 0
    for both, one in zip(together, [greedy, alone], strict=True):
        assert both["text"] == one["text"]
        assert _times_and_tokens(both["segments"]) == _times_and_tokens(one["segments"])
        for a, b in zip(both["segments"], one["segments"], strict=True):  # float32 rounding
            np.testing.assert_allclose(a["avg_logprob"], b["avg_logprob"], rtol=1e-5)
            np.testing.assert_allclose(a["no_speech_prob"], b["no_speech_prob"], rtol=1e-4)
    assert alone["segments"] and alone["segments"] != greedy["segments"]


def test_two_processes_each_with_their_own_recordings(workdir, trained, tmp_path):
    """Two processes, one with two recordings and one with a longer one (different numbers
    of windows), each get the results one process gets for its recordings: every jitted call
    ran on both, or the run would hang."""
    script = REPO / "tests" / "whisper_sequential_run.py"
    env = {**_env(1), "PYTHONPATH": str(REPO)}
    env["XLA_FLAGS"] += " --xla_backend_optimization_level=0"  # tiny programs: compile faster
    args = [sys.executable, str(script), str(tmp_path), str(workdir), str(_free_port()), "2"]
    procs = [
        subprocess.Popen(
            [*args, str(i)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for i in range(2)
    ]
    deadline = time.time() + TIMEOUT
    for i, proc in enumerate(procs):
        try:
            output = proc.communicate(timeout=max(deadline - time.time(), 1))[0]
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            pytest.fail("2 processes timed out (a collective ran on one process only)")
        assert proc.returncode == 0, f"process {i}:\n{output.decode()[-3000:]}"
    options = dict(temperatures=(0.0,), **OFF)
    for p, specs in RECORDINGS.items():
        got = json.loads((tmp_path / f"result-p{p}.json").read_text())
        want = sequential_transcribe(trained, [recording(*r) for r in specs], **options)
        assert len(got) == len(want) == len(specs)
        for ours, theirs in zip(got, want, strict=True):
            assert ours["text"] == theirs["text"]
            assert _times_and_tokens(ours["segments"]) == _times_and_tokens(theirs["segments"])


def test_times_are_consistent_and_written(greedy, tmp_path):
    """Segment times never go back, each segment lies in its window (30 s from its seek),
    every window starts inside the recording, and the result is written in every format."""
    segments = greedy["segments"]
    frames = len(WAVE) // 160
    assert [s["id"] for s in segments] == list(range(len(segments)))
    starts = [s["start"] for s in segments]
    assert starts == sorted(starts) and starts[0] >= 0.0
    for s in segments:
        assert 0 <= s["seek"] < frames
        assert s["seek"] / 100 <= s["start"] <= s["end"] <= s["seek"] / 100 + 30.0
    ends = [s["end"] for s in segments]
    assert ends == sorted(ends)
    paths = write_result(greedy, tmp_path, "long", list(FORMATS))
    assert json.loads(paths[FORMATS.index("json")].read_text()) == greedy
    srt = paths[FORMATS.index("srt")].read_text().strip().split("\n\n")
    assert len(srt) == len(segments)
    first = segments[1]
    cue = srt[1].splitlines()
    assert cue[0] == "2" and cue[1].startswith(
        f"00:00:{int(first['start']):02d},{round(first['start'] % 1 * 1000):03d} --> "
    )


def test_sequential_needs_whisper_and_valid_options():
    """A model trained here has no timestamp tokens: its config, and the function, name the
    key to change; the fallback options are checked when the config loads."""
    with pytest.raises(ConfigError, match="eval.longform=chunked"):
        load_config(REPO / "configs" / "seq2seq_tiny.yaml", ["eval.longform=sequential"])
    whisper = ["model.family=whisper", "eval.longform=sequential"]
    with pytest.raises(ConfigError, match="eval.temperatures"):
        load_config(None, [*whisper, "eval.temperatures=[0.0,-0.2]"])
    with pytest.raises(ConfigError, match="eval.no_speech_threshold"):
        load_config(None, [*whisper, "eval.no_speech_threshold=1.5"])
    options = load_config(None, [*whisper, "eval.logprob_threshold=null"]).eval
    assert options.logprob_threshold is None and options.temperatures[0] == 0.0
    trained = random_trained("seq2seq_tiny.yaml")
    with pytest.raises(JaxseqError, match="eval.longform=chunked"):
        sequential_transcribe(trained, [WAVE[:RATE]])


def test_transcribe_cli_and_api_give_sequential_segments(
    workdir, trained, greedy, words, tmp_path, capsys
):
    """`jaxseq transcribe --set eval.longform=sequential --output-format json` writes the
    segments with times, and `Model.transcribe(return_timestamps=True)` returns them (and
    "word" their words); a beam decoder is refused by name."""
    audio = tmp_path / "long.wav"
    soundfile.write(audio, WAVE, RATE, subtype="FLOAT")  # read back bit for bit
    settings = [
        "eval.longform=sequential",
        "eval.temperatures=[0.0]",
        "eval.compression_ratio_threshold=null",
        "eval.logprob_threshold=null",
        "eval.no_speech_threshold=null",
        "eval.condition_on_previous_text=false",
    ]
    args = ["transcribe", "--workdir", str(workdir), str(audio), "--output-format"]
    args += ["json", "--output-dir", str(tmp_path / "out")]
    cli.main(args + [x for setting in settings for x in ("--set", setting)])
    written = json.loads((tmp_path / "out" / "long.json").read_text())  # with word times
    assert _times_and_tokens(written["segments"]) == _times_and_tokens(words["segments"])
    assert [s["words"] for s in written["segments"]] == [s["words"] for s in words["segments"]]
    assert written["text"] == greedy["text"] and written["language"] == "en"
    assert greedy["text"] in capsys.readouterr().out

    cfg = load_config(workdir / "config.yaml", settings)
    model = Model(dataclasses.replace(trained, cfg=cfg), workdir)
    [result] = model.transcribe([WAVE], return_timestamps=True)
    assert _times_and_tokens(result["segments"]) == _times_and_tokens(greedy["segments"])
    assert model.transcribe([WAVE[: 5 * RATE]]) == [
        sequential_transcribe(model.trained, [WAVE[: 5 * RATE]], **_options(cfg))[0]["text"]
    ]
    with pytest.raises(JaxseqError, match="decoder='beam'"):
        model.transcribe([WAVE], decoder="beam")
    [timed] = model.transcribe([WAVE], return_timestamps="word")
    assert [len(seg["words"]) for seg in timed["segments"]] == [
        len(seg["words"]) for seg in words["segments"]
    ]


@pytest.fixture(scope="module")
def words(trained) -> dict:
    """`greedy` with word times."""
    options = dict(temperatures=(0.0,), condition_on_previous_text=False, **OFF)
    return sequential_transcribe(trained, [WAVE], word_timestamps=True, **options)[0]


def test_word_times_are_each_windows_alignment(trained, greedy, words):
    """Word times (`word_timestamps=True`): what `find_alignment` and `add_word_timestamps`
    (both checked against openai-whisper in tests/test_word_timing.py) give for each window's
    segments one window at a time, here computed for all rows of a round at once."""
    got = words
    task, tok = trained.task, trained.task.tokenizer
    features = window_features(trained, WAVE)  # [frames, n_mels], the whole recording
    size = task.dims.num_frames
    init = tuple(t for t in task.prompt_for("en", None) if t != tok.no_timestamps_id)
    want, last = [], 0.0
    seeks = sorted({seg["seek"] for seg in greedy["segments"]})
    for seek in seeks:
        segments = [seg for seg in greedy["segments"] if seg["seek"] == seek]
        frames = min(len(features) - seek, size)
        window = np.zeros((size, features.shape[1]), np.float32)
        window[:frames] = features[seek : seek + frames]
        text = [t for seg in segments for t in seg["tokens"] if t < tok.eot_id]
        alignment = find_alignment(task.model, trained.params, tok, window, frames, text, init)
        timed, last = add_word_timestamps(
            segments,
            alignment,
            time_offset=seek / 100,
            last_speech_timestamp=last,
            text_ids=tok.text_ids,
        )
        want += timed
    assert len(seeks) > 1 and sum(len(seg["words"]) for seg in want) > 10
    assert [[w["word"] for w in seg["words"]] for seg in got["segments"]] == [
        [w["word"] for w in seg["words"]] for seg in want
    ]
    # Batched rows and a single row round the attention differently (~1e-7); on this random
    # model's flat attention that can move a DTW step by one encoder frame (20 ms).
    for g, w in zip(got["segments"], want, strict=True):
        assert (g["start"], g["end"]) == pytest.approx((w["start"], w["end"]), abs=0.021)
        for key in ("start", "end"):
            assert [x[key] for x in g["words"]] == pytest.approx(
                [x[key] for x in w["words"]], abs=0.021
            )
        assert [x["probability"] for x in g["words"]] == pytest.approx(
            [x["probability"] for x in w["words"]], abs=1e-4
        )
    moved = sum(
        abs(a[key] - b[key]) > 1e-6
        for g, w in zip(got["segments"], want, strict=True)
        for a, b in zip(g["words"], w["words"], strict=True)
        for key in ("start", "end")
    )
    assert moved <= 2
    assert all(x["start"] <= x["end"] for seg in got["segments"] for x in seg["words"])


def _options(cfg) -> dict:
    ev = cfg.eval
    return dict(
        temperatures=ev.temperatures,
        compression_ratio_threshold=ev.compression_ratio_threshold,
        logprob_threshold=ev.logprob_threshold,
        no_speech_threshold=ev.no_speech_threshold,
        condition_on_previous_text=ev.condition_on_previous_text,
    )


VOCAB, EOS = 7, 6


def _toy_model(table: np.ndarray):
    """A step_fn whose next-token log-probs depend on the fed token and on the sum of every
    token fed before (its cache), so that a prompt fed wrongly shows."""

    def step_fn(tokens, cache, position):
        del position
        logits = jnp.asarray(table)[tokens] + jnp.asarray(table)[cache % VOCAB]  # [1, vocab]
        return jax.nn.log_softmax(logits, -1), cache + tokens

    return step_fn


def _sample(table, prompt, temperature, key, limit=5):
    buffer = np.full(8, EOS, np.int32)
    buffer[: len(prompt)] = prompt
    return sample_after_prompt(
        _toy_model(table),
        jnp.zeros(1, jnp.int32),
        jnp.asarray(buffer),
        jnp.int32(len(prompt)),
        limit=jnp.int32(limit),
        temperature=jnp.float32(temperature),
        key=key,
        probe_at=jnp.int32(1),
        max_new_tokens=6,
        vocab_size=VOCAB,
        eos_id=EOS,
        suppress_ids=(0,),
        begin_suppress_ids=(EOS,),
    )


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def test_sampler_feeds_the_prompt_and_renormalizes():
    """Greedy after a prompt equals a NumPy oracle: the prompt fed in order, suppression,
    the chosen tokens' log-probs renormalized after it, the raw probe at position 1; and at
    temperature T the first token is drawn from softmax(processed / T)."""
    table = np.random.default_rng(0).normal(0, 2, (VOCAB, VOCAB)).astype(np.float32)
    prompt = [3, 1, 4]
    out = _sample(table, prompt, 0.0, jax.random.PRNGKey(0))
    fed, tokens, total, probe = sum(prompt[:-1]), [], 0.0, None
    token = prompt[-1]
    probe = _log_softmax(table[prompt[1]] + table[prompt[0] % VOCAB])  # after position 1
    while len(tokens) < 5 and EOS not in tokens:
        raw = _log_softmax(table[token] + table[fed % VOCAB])
        fed += token
        raw[0] = -np.inf
        if not tokens:
            raw[EOS] = -np.inf
        token = int(np.argmax(raw))
        total += _log_softmax(raw)[token]
        tokens.append(token)
    assert out.tokens[: int(out.length)].tolist() == tokens
    np.testing.assert_allclose(float(out.sum_log_prob), total, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(out.probe), probe, rtol=1e-5)

    keys = jax.random.split(jax.random.PRNGKey(1), 4000)
    drawn = jax.vmap(lambda k: _sample(table, prompt, 0.7, k, limit=1).tokens[0])(keys)
    counts = np.bincount(np.asarray(drawn), minlength=VOCAB) / len(keys)
    first = _log_softmax(table[prompt[-1]] + table[sum(prompt[:-1]) % VOCAB])
    first[[0, EOS]] = -np.inf
    expected = np.exp(_log_softmax(first / 0.7))
    np.testing.assert_allclose(counts, expected, atol=0.03)
