"""Word times of a chunked seq2seq transcription (`return_timestamps="word"`).

Chunked decoding merges overlapping windows on their timestamp tokens
(`jaxseq.inference.seq2seq_longform`), so the transcript's tokens are no one window's. Its
merged segments are aligned again instead, as openai-whisper aligns a sequential window's:
consecutive segments are grouped into windows of the model's length, each from shortly before
its first segment (`alignment_groups`; a segment whose text is too long for one decoder pass
is aligned in pieces, `alignment_pieces`); each window's text is aligned to its audio by the
cross-attention of the alignment heads, all windows of a round in one teacher-forced pass
(`jaxseq.inference.word_timing.align_windows`), then split into words and moved to the
recording's time (`add_word_timestamps`, which also moves segment times to their words where
those are more precise).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxseq.inference.longform import window_features
from jaxseq.inference.word_timing import (
    AlignWindow,
    add_word_timestamps,
    align_windows,
    split_to_word_tokens,
)
from jaxseq.parallel.mesh import rows_per_process
from jaxseq.text.timed_targets import FRAMES_PER_STEP
from jaxseq.train.trained import Trained

LEAD_SECONDS = 0.5  # audio an alignment window has before its first segment's start


def alignment_groups(
    segments: Sequence[dict[str, Any]],
    *,
    window_seconds: float,
    max_tokens: int,
    lead: float = LEAD_SECONDS,
) -> list[tuple[float, list[int]]]:
    """Consecutive segments (each with "start", "end" and its text "tokens") grouped into
    alignment windows: [(window start in seconds, indices of its segments)].

    A window starts `lead` seconds before its first segment, but not before 0 or the end of
    the previous window's last segment, and takes the segments after it while they end
    within `window_seconds` of its start and their tokens (two timestamps each) number at
    most `max_tokens`. A segment that alone breaks a limit gets a window of its own.
    """
    groups: list[tuple[float, list[int]]] = []
    previous_end, i = 0.0, 0
    while i < len(segments):
        start = max(0.0, previous_end, segments[i]["start"] - lead)
        start = min(start, segments[i]["start"])
        members, used = [i], len(segments[i]["tokens"]) + 2
        i += 1
        while i < len(segments):
            cost = len(segments[i]["tokens"]) + 2
            if segments[i]["end"] > start + window_seconds or used + cost > max_tokens:
                break
            members.append(i)
            used += cost
            i += 1
        groups.append((start, members))
        previous_end = segments[members[-1]]["end"]
    return groups


def alignment_pieces(
    segments: Sequence[dict[str, Any]], budget: int, words: Callable[[list[int]], list[list[int]]]
) -> list[dict[str, Any]]:
    """The segments as the alignment takes them: each whose tokens (and its two timestamps)
    fit `budget` as it is, a longer one (text merged over several windows) cut between words
    into pieces that do, each piece's span of the segment's time in proportion to its tokens.
    Each piece is {"start", "end", "tokens", "of": index of its segment}.

    Args:
      budget: the most tokens of one piece, timestamps included.
      words: a segment's text ids -> its words' ids, in order (`split_to_word_tokens`).
    """
    pieces = []
    for index, segment in enumerate(segments):
        tokens = list(segment["tokens"])
        if len(tokens) + 2 <= budget:
            pieces.append({**segment, "tokens": tokens, "of": index})
            continue
        runs: list[list[int]] = [[]]
        for word in words(tokens):  # whole words while they fit (a longer word is cut)
            for i in range(0, len(word), budget - 2):
                part = word[i : i + budget - 2]
                if len(runs[-1]) + len(part) > budget - 2:
                    runs.append([])
                runs[-1] += part
        per_token = (segment["end"] - segment["start"]) / len(tokens)
        done = 0
        for run in runs:
            start = segment["start"] + done * per_token
            done += len(run)
            end = segment["start"] + done * per_token
            pieces.append({"start": start, "end": end, "tokens": run, "of": index})
    return pieces


def _window_tokens(
    segments: Sequence[dict[str, Any]],
    offset: float,
    timestamp_begin: int,
    step_seconds: float,
    steps: int,
) -> list[int]:
    """The segments' text tokens between their timestamp tokens, times from `offset`
    (seconds) in steps of `step_seconds`, the first `steps` of them: what a model trained with
    timestamps is fed to align them (Whisper's alignment keeps the text only)."""

    def stamp(seconds: float) -> int:
        return timestamp_begin + int(
            np.clip(round((seconds - offset) / step_seconds), 0, steps - 1)
        )

    ids: list[int] = []
    for segment in segments:
        ids += [stamp(segment["start"]), *segment["tokens"], stamp(segment["end"])]
    return ids


def add_chunked_word_timestamps(
    trained: Trained,
    waves: Sequence[np.ndarray],
    results: list[dict[str, Any]],
    *,
    task: str | None,
    batch_size: int,
) -> None:
    """Adds each segment's "words" [{"word", "start", "end", "probability"}] to `results`
    (`seq2seq_transcribe_long`'s for float waveforms [samples], in place; their segments
    carry their text "tokens"), its segments' times moved to their words as openai-whisper
    moves them. `task` ("transcribe", "translate" or None for model.task) picks the prompt
    the text is aligned after.

    A collective with several processes: every process calls it with its own recordings (any
    number, also none); all run the same number of rounds.
    """
    model, tok = trained.task, trained.task.tokenizer
    dims, frontend = model.dims, trained.frontend
    frames = min(dims.num_frames, max(trained.cfg.data.buckets))  # log-mel frames a window
    hop, rate = frontend.hop_length, frontend.sample_rate
    steps = frames // FRAMES_PER_STEP + 1  # timestamps in a window: <|0.00|> to its end
    jobs = []  # (recording, first sample, its pieces' indices, start sequence)
    pieces = []  # per recording
    for r, result in enumerate(results):
        init = tuple(
            t for t in model.prompt_for(result["language"], task) if t != tok.no_timestamps_id
        )
        budget = dims.max_target_positions - len(init) - 2  # with <|notimestamps|>, the end
        pieces.append(
            alignment_pieces(
                result["segments"],
                budget,
                lambda ids, code=result["language"]: split_to_word_tokens(tok, ids, code)[1],
            )
        )
        for start, members in alignment_groups(
            pieces[r], window_seconds=frames * hop / rate, max_tokens=budget
        ):
            jobs.append((r, int(start * rate) // hop * hop, members, init))
    rows = rows_per_process(len(jobs), batch_size, trained.mesh)
    rounds = -(-len(jobs) // rows)
    if jax.process_count() > 1:
        rounds = int(multihost_utils.process_allgather(np.array([rounds])).max())
    last_speech = [0.0] * len(results)
    for k in range(rounds):
        chunk = jobs[k * rows : (k + 1) * rows]
        windows = []
        for r, first, members, init in chunk:
            audio = np.asarray(waves[r][first : first + frames * hop])
            features = window_features(trained, audio)[:frames]  # [<= frames, n_mels]
            padded = np.zeros((dims.num_frames, frontend.n_mels), np.float32)
            padded[: len(features)] = features  # zero-padded, as a sequential window
            ids = _window_tokens(
                [pieces[r][m] for m in members],
                first / rate,
                tok.timestamp_begin,
                FRAMES_PER_STEP * hop / rate,
                steps,
            )
            windows.append(AlignWindow(padded, len(features), ids, init, results[r]["language"]))
        for (r, first, members, _), alignment in zip(
            chunk, align_windows(trained, windows, rows), strict=True
        ):
            timed, last_speech[r] = add_word_timestamps(
                [pieces[r][m] for m in members],
                alignment,
                time_offset=first / rate,
                last_speech_timestamp=last_speech[r],
                text_ids=tok.text_ids,
            )
            for m, piece in zip(members, timed, strict=True):
                pieces[r][m] = piece
    for result, timed in zip(results, pieces, strict=True):
        _join_pieces(result["segments"], timed)


def _join_pieces(segments: list[dict[str, Any]], pieces: Sequence[dict[str, Any]]) -> None:
    """Each segment's words from its timed pieces, in place, and its start and end those of
    its first and last piece (moved to their words by `add_word_timestamps`)."""
    own: dict[int, list[dict[str, Any]]] = {}
    for piece in pieces:
        own.setdefault(piece["of"], []).append(piece)
    for index, segment in enumerate(segments):
        first, last = own[index][0], own[index][-1]
        segment["start"], segment["end"] = round(first["start"], 2), round(last["end"], 2)
        segment["words"] = [w for p in own[index] for w in p["words"]]
