"""Word times of a chunked seq2seq transcription (`jaxseq.inference.chunked_words`): the merged
segments grouped into alignment windows (known answers), and each window's words what
`find_alignment` and `add_word_timestamps` (both checked against openai-whisper in
tests/test_word_timing.py) give for it one window at a time, on a converted random Whisper."""

from __future__ import annotations

import numpy as np
import pytest

from jaxseq.inference.chunked_words import alignment_groups, alignment_pieces
from jaxseq.inference.longform import window_features
from jaxseq.inference.transcribe import transcribe_waveforms
from jaxseq.inference.word_timing import add_word_timestamps, split_to_word_tokens
from tests.test_whisper_sequential import hf_model, trained, workdir  # noqa: F401 (fixtures)
from tests.test_word_timing import find_alignment
from tests.whisper_sequential_model import assert_words_match
from tests.whisper_sequential_run import recording


def _segments(*spans) -> list[dict]:
    return [{"start": s, "end": e, "tokens": [7] * n} for s, e, n in spans]


@pytest.mark.parametrize(
    "spans, want",
    [
        # The second segment ends within the 10 s of the first window, the third does not;
        # its window starts where the one before ended, not 0.5 s before its own start.
        (((0.2, 3.0, 4), (3.5, 9.0, 4), (9.2, 12.0, 4)), [(0.0, [0, 1]), (9.0, [2])]),
        # 30 tokens + 2 timestamps fill the window's 32: the next segment gets its own.
        (((30.0, 31.0, 30), (31.0, 32.0, 2)), [(29.5, [0]), (31.0, [1])]),
        # A segment longer than a window is aligned alone; one that starts before the one
        # before ended starts its window at its start.
        (((1.0, 14.0, 3), (13.0, 15.0, 3), (20.0, 21.0, 3)), [(0.5, [0]), (13.0, [1, 2])]),
    ],
)
def test_alignment_groups_known_answers(spans, want):
    groups = alignment_groups(_segments(*spans), window_seconds=10.0, max_tokens=32, lead=0.5)
    assert groups == want


def test_alignment_pieces_cut_long_segments_between_words():
    words = {
        tuple(range(1, 11)): [[1, 2], [3], [4, 5, 6], [7], [8, 9, 10]],
        (1, 2, 3, 4, 5, 6): [[1, 2, 3, 4, 5, 6]],
    }
    segments = [
        {"start": 0.0, "end": 1.0, "tokens": [1, 2, 3, 4]},  # fits: as it is
        {"start": 2.0, "end": 12.0, "tokens": list(range(1, 11))},  # 1 s per token
        {"start": 20.0, "end": 23.0, "tokens": [1, 2, 3, 4, 5, 6]},  # one word, too long
    ]
    pieces = alignment_pieces(segments, 6, lambda ids: words[tuple(ids)])
    assert [(p["of"], p["start"], p["end"], p["tokens"]) for p in pieces] == [
        (0, 0.0, 1.0, [1, 2, 3, 4]),
        (1, 2.0, 5.0, [1, 2, 3]),
        (1, 5.0, 9.0, [4, 5, 6, 7]),
        (1, 9.0, 12.0, [8, 9, 10]),
        (2, 20.0, 22.0, [1, 2, 3, 4]),
        (2, 22.0, 23.0, [5, 6]),
    ]


def test_words_are_each_alignment_windows(trained):  # noqa: F811 (the imported fixture)
    """`return_timestamps="word"` gives the segments of `return_timestamps=True` with each
    alignment window's words: its audio's log-mel, zero-padded to the model's window, and its
    segments' text, aligned after the prompt and moved by the window's start."""
    wave = recording(70, 0)
    plain = transcribe_waveforms(trained, [wave], return_timestamps=True)[0]
    got = transcribe_waveforms(trained, [wave], return_timestamps="word")[0]
    task, tok = trained.task, trained.task.tokenizer
    size, hop, rate = task.dims.num_frames, trained.frontend.hop_length, 16000
    init = tuple(t for t in task.prompt_for("en", None) if t != tok.no_timestamps_id)
    budget = task.dims.max_target_positions - len(init) - 2
    pieces = alignment_pieces(
        plain["segments"], budget, lambda ids: split_to_word_tokens(tok, ids, "en")[1]
    )
    groups = alignment_groups(pieces, window_seconds=size * hop / rate, max_tokens=budget)
    last = 0.0
    for start, members in groups:
        first = int(start * rate) // hop * hop
        features = window_features(trained, wave[first : first + size * hop])[:size]
        window = np.zeros((size, features.shape[1]), np.float32)
        window[: len(features)] = features
        text = [t for m in members for t in pieces[m]["tokens"]]
        alignment = find_alignment(
            task.model, trained.params, tok, window, len(features), text, init
        )
        timed, last = add_word_timestamps(
            [pieces[m] for m in members],
            alignment,
            time_offset=first / rate,
            last_speech_timestamp=last,
            text_ids=tok.text_ids,
        )
        for m, piece in zip(members, timed, strict=True):
            pieces[m] = piece
    want = []
    for i, segment in enumerate(plain["segments"]):
        own = [p for p in pieces if p["of"] == i]
        words = [w for p in own for w in p["words"]]
        start, end = round(own[0]["start"], 2), round(own[-1]["end"], 2)
        want.append({**segment, "start": start, "end": end, "words": words})
    assert len(pieces) > len(plain["segments"])  # some segment was cut
    assert len(groups) > 1 and sum(len(seg["words"]) for seg in want) > 10
    assert [seg["text"] for seg in got["segments"]] == [seg["text"] for seg in want]
    assert_words_match(got["segments"], want)
    words = [x for seg in got["segments"] for x in seg["words"]]
    assert all(x["start"] <= x["end"] for x in words)
    assert all(x["start"] >= 0 and x["end"] <= len(wave) / rate for x in words)
