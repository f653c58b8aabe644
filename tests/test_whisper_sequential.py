"""Whisper's sequential long-form transcription (`jaxseq.inference.whisper_sequential`):
temperature fallback, recordings decoded side by side and in two processes, segment times and
their formats, word times, the CLI and the API, and the sampler against a NumPy oracle. The
checkpoint and the recording: tests/whisper_sequential_model.py; the segments against
transformers' long-form generate: tests/test_whisper_sequential_parity.py.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile

from jaxseq import cli
from jaxseq.api import Model
from jaxseq.config import ConfigError, load_config
from jaxseq.decoding.sampling import sample_after_prompt
from jaxseq.errors import JaxseqError
from jaxseq.inference.formats import FORMATS, write_result
from jaxseq.inference.longform import window_features
from jaxseq.inference.whisper_sequential import sequential_transcribe
from jaxseq.inference.word_timing import add_word_timestamps
from jaxseq.tasks.registry import task_class
from tests import whisper_sequential_model as shared
from tests.conftest import REPO
from tests.test_multiprocess import TIMEOUT, _env, _free_port
from tests.test_transcribe_compiles_once import Lowerings
from tests.test_word_timing import find_alignment
from tests.whisper_sequential_model import (
    GREEDY,
    OFF,
    TIMESTAMP_BEGIN,
    WAVE,
    assert_words_match,
    times_and_tokens,
)
from tests.whisper_sequential_run import OPTIONS, RATE, RECORDINGS, recording

# The fixtures: the converted random Whisper, built once per run (whisper_sequential_model).
greedy, hf_model, trained, workdir = shared.greedy, shared.hf_model, shared.trained, shared.workdir


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
    assert times_and_tokens(segments) != times_and_tokens(greedy["segments"])
    for s in segments:
        times = [t for t in s["tokens"] if t >= TIMESTAMP_BEGIN]
        assert s["tokens"][0] >= TIMESTAMP_BEGIN and times == sorted(times)
        assert s["compression_ratio"] > 0.0 and s["avg_logprob"] <= 0.0


OTHER = recording(45, 1)


@pytest.fixture(scope="module")
def together(trained) -> list[dict]:
    """WAVE and OTHER decoded side by side (two rows, `GREEDY`): the single-process run that
    tests/whisper_sequential_run.py's process 0 repeats."""
    assert RECORDINGS[0] == [(70, 0), (45, 1)] and recording(70, 0).tobytes() == WAVE.tobytes()
    return sequential_transcribe(trained, [WAVE, OTHER], batch_size=2, **GREEDY)


def test_recordings_decode_together_as_alone(trained, greedy, together):
    """Two recordings decoded side by side (a row each, windows of different prompts and
    lengths in one program) give each one's result alone; a recording of another length
    reuses the compiled program."""
    with Lowerings() as lowered:
        [alone] = sequential_transcribe(trained, [OTHER], **GREEDY)
    assert lowered.count == 0
    for both, one in zip(together, [greedy, alone], strict=True):
        assert both["text"] == one["text"]
        assert times_and_tokens(both["segments"]) == times_and_tokens(one["segments"])
        for a, b in zip(both["segments"], one["segments"], strict=True):  # float32 rounding
            np.testing.assert_allclose(a["avg_logprob"], b["avg_logprob"], rtol=1e-5)
            np.testing.assert_allclose(a["no_speech_prob"], b["no_speech_prob"], rtol=1e-4)
    assert alone["segments"] and alone["segments"] != greedy["segments"]


def test_two_processes_each_with_their_own_recordings(workdir, trained, together, tmp_path):
    """Two processes, one with two recordings and one with a shorter one (different numbers
    of windows), each get the results one process gets for its recordings: every jitted call
    ran on both, or the run would hang. Process 0's reference is `together` (its recordings,
    its options, two rows)."""
    script = REPO / "tests" / "whisper_sequential_run.py"
    env = {**_env(1), "PYTHONPATH": str(REPO)}
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
    assert OPTIONS == GREEDY
    for p, specs in RECORDINGS.items():
        got = json.loads((tmp_path / f"result-p{p}.json").read_text())
        want = together if p == 0 else None
        if want is None:
            want = sequential_transcribe(trained, [recording(*r) for r in specs], **GREEDY)
        assert len(got) == len(want) == len(specs)
        for ours, theirs in zip(got, want, strict=True):
            assert ours["text"] == theirs["text"]
            assert times_and_tokens(ours["segments"]) == times_and_tokens(theirs["segments"])


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
    # The check comes first: a task of seq2seq_tiny.yaml (no parameters: nothing runs).
    cfg = load_config(REPO / "configs" / "seq2seq_tiny.yaml")
    seq2seq = SimpleNamespace(cfg=cfg, task=task_class(cfg.model.family).from_config(cfg))
    with pytest.raises(JaxseqError, match="eval.longform=chunked"):
        sequential_transcribe(seq2seq, [WAVE[:RATE]])


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
    assert times_and_tokens(written["segments"]) == times_and_tokens(words["segments"])
    assert [s["words"] for s in written["segments"]] == [s["words"] for s in words["segments"]]
    assert written["text"] == greedy["text"] and written["language"] == "en"
    assert greedy["text"] in capsys.readouterr().out

    cfg = load_config(workdir / "config.yaml", settings)
    model = Model(dataclasses.replace(trained, cfg=cfg), workdir)
    [result] = model.transcribe([WAVE], return_timestamps=True)
    assert times_and_tokens(result["segments"]) == times_and_tokens(greedy["segments"])
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
    return sequential_transcribe(trained, [WAVE], word_timestamps=True, **GREEDY)[0]


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
    assert_words_match(got["segments"], want)
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
