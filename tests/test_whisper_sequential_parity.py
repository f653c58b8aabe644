"""Whisper's sequential long-form transcription (`jaxseq.inference.whisper_sequential`)
against transformers 5's long-form `generate(..., return_timestamps=True)` on the same weights:
segments, skipped windows and each segment's figures. The checkpoint and the recording:
tests/whisper_sequential_model.py; the rest of the sequential tests:
tests/test_whisper_sequential.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from transformers.models.whisper.generation_whisper import WhisperGenerationMixin

from jaxseq.inference.whisper_sequential import sequential_transcribe
from tests import whisper_sequential_model as shared
from tests.whisper_sequential_model import NO_SPEECH, OFF, WAVE, hf_segments, times_and_tokens
from tests.whisper_sequential_run import RATE

# The fixtures: the converted random Whisper, built once per run (whisper_sequential_model).
greedy, hf_model, trained, workdir = shared.greedy, shared.hf_model, shared.trained, shared.workdir


@pytest.mark.parametrize("condition", [False, True])
def test_greedy_segments_match_transformers(trained, hf_model, greedy, condition):
    """Without fallback, every segment's tokens, start and end equal transformers', with and
    without conditioning on the earlier segments; the recording takes several windows and
    gives several segments, some windows seeking to their last timestamp pair."""
    want = hf_segments(hf_model[1], WAVE, condition_on_prev_tokens=condition, temperature=0.0)
    result = greedy
    if condition:
        [result] = sequential_transcribe(trained, [WAVE], temperatures=(0.0,), **OFF)
    got = result["segments"]
    assert times_and_tokens(got) == times_and_tokens(want)
    if condition:  # the earlier text (its last 31 tokens) changed what later windows wrote
        assert times_and_tokens(got) != times_and_tokens(greedy["segments"])
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
    want = hf_segments(hf_model[1], WAVE, **options)
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
    assert times_and_tokens(got) == times_and_tokens(want)
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
