"""The converted random Whisper of tests/test_whisper_sequential.py and
tests/test_whisper_sequential_parity.py (and test_chunked_words.py), its fixtures and helpers.

The checkpoint is a small random Whisper (d_model 64, 2 + 2 layers) with Whisper's real
vocabulary and 30-second windows (1500 encoder positions), 64 decoder positions, and two
biases added before conversion, so that both models see them: every timestamp token's logit is
raised by `TIME_BOOST` (its embedding row, tied to the output layer, gets a shared component
that the decoder's final LayerNorm bias lifts), and end-of-text's by `EOT_BOOST`. Random
weights then write timestamp pairs, segments and seeks happen, and windows end at different
lengths. The recording is 70 s of noise with silent and loud seconds: three windows, the
later ones starting where the timestamps of the one before put them.

The checkpoint, its converted workdir and jaxseq's greedy result for the recording are built
once per test run (conftest's `built_once`), whichever worker's file needs them first.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from jaxseq.convert.workdir import convert_to_workdir
from jaxseq.inference.whisper_sequential import sequential_transcribe
from jaxseq.text.whisper_tokenizer import WhisperTokenizer
from jaxseq.train.trained import load_trained
from tests import test_whisper_finetune as finetune
from tests.conftest import built_once
from tests.hf_whisper import random_whisper
from tests.whisper_sequential_run import RATE, recording

EOT, SOT, EN, TRANSCRIBE = finetune.EOT, finetune.SOT, finetune.EN, finetune.TRANSCRIBE
NO_TIMESTAMPS = finetune.NO_TIMESTAMPS
TIMESTAMP_BEGIN = NO_TIMESTAMPS + 1
NO_SPEECH = NO_TIMESTAMPS - 1
SOT_PREV = 50361
TARGET_POSITIONS = 64
TIME_BOOST = 5.0
EOT_BOOST = 5.0
OFF = dict(compression_ratio_threshold=None, logprob_threshold=None, no_speech_threshold=None)
GREEDY = dict(temperatures=(0.0,), condition_on_previous_text=False, **OFF)
WAVE = recording(70, 0)


def _generation_config(tokenizer_folder: Path) -> transformers.GenerationConfig:
    """The fields transformers' long-form generate reads."""
    tokenizer = WhisperTokenizer.from_folder(tokenizer_folder)
    return transformers.GenerationConfig(
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


def _build(root: Path, tokenizer_folder: Path) -> None:
    """ROOT/hf: the random Whisper with Whisper's tokenizer and generation config;
    ROOT/whisper: it through jaxseq's converter; ROOT/greedy.json: jaxseq's greedy result for
    WAVE without fallback or conditioning."""
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
    model.generation_config = _generation_config(tokenizer_folder)
    model.save_pretrained(root / "hf")
    shutil.copy(tokenizer_folder / "tokenizer.json", root / "hf" / "tokenizer.json")
    workdir = convert_to_workdir(root / "hf", root / "whisper")
    [greedy] = sequential_transcribe(load_trained(workdir), [WAVE], **GREEDY)
    (root / "greedy.json").write_text(json.dumps(greedy))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, worker_id, whisper_folder) -> Path:
    """The checkpoint through jaxseq's converter (ROOT/whisper of `_build`)."""
    root = built_once(
        tmp_path_factory,
        worker_id,
        "whisper-sequential",
        lambda root: _build(root, whisper_folder),
    )
    return root / "whisper"


@pytest.fixture(scope="module")
def hf_model(workdir):
    """(folder, torch model): the random Whisper with Whisper's tokenizer and a generation
    config holding the fields transformers' long-form generate reads."""
    folder = workdir.parent / "hf"
    model = transformers.WhisperForConditionalGeneration.from_pretrained(folder).eval()
    model.generation_config = _generation_config(folder)
    return folder, model


@pytest.fixture(scope="module")
def trained(workdir):
    return load_trained(workdir)


@pytest.fixture(scope="module")
def greedy(workdir) -> dict:
    """jaxseq's greedy result for WAVE without fallback or conditioning (`sequential_transcribe`
    with `GREEDY`, written as JSON, which round-trips it: test_times_are_consistent_and_written)."""
    return json.loads((workdir.parent / "greedy.json").read_text())


def hf_segments(model, wave: np.ndarray, **kwargs) -> list[dict]:
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


def times_and_tokens(segments) -> list[tuple[float, float, list[int]]]:
    """Times (past the recording's end moved to it, as jaxseq does) and tokens."""
    end = len(WAVE) / RATE
    return [
        (min(float(s["start"]), end), min(float(s["end"]), end), [int(t) for t in s["tokens"]])
        for s in segments
    ]


def assert_words_match(got: list[dict], want: list[dict]) -> None:
    """`got` segments with words as `want`'s: the same words, segment and word times within one
    encoder frame, probabilities within 1e-4. Batched rows and a single row round the
    attention differently (~1e-7); on this random model's flat attention that can move a DTW
    step by one encoder frame (20 ms)."""
    assert [[w["word"] for w in seg["words"]] for seg in got] == [
        [w["word"] for w in seg["words"]] for seg in want
    ]
    for g, w in zip(got, want, strict=True):
        assert (g["start"], g["end"]) == pytest.approx((w["start"], w["end"]), abs=0.021)
        for key in ("start", "end"):
            assert [x[key] for x in g["words"]] == pytest.approx(
                [x[key] for x in w["words"]], abs=0.021
            )
        assert [x["probability"] for x in g["words"]] == pytest.approx(
            [x["probability"] for x in w["words"]], abs=1e-4
        )
