"""Whisper's sequential long-form transcription, with segment times (`eval.longform=sequential`).

The algorithm of the Whisper paper (section 3.8), as openai-whisper's `transcribe` and
transformers' long-form `WhisperForConditionalGeneration.generate(..., return_timestamps=True)`
run it; this module follows transformers 5 step for step, so that greedy decoding gives its
tokens, segments and times:

  * the log-mel of the WHOLE recording (`WhisperFeatureExtractor(truncation=False)`), cut in
    windows of the model's 30 s from `seek` (the last one zero-padded, `_get_input_segment`);
  * each window decoded with timestamp tokens (`TimestampRules`), after
    `<|startofprev|>` + the last `max_target_positions // 2 - 1` tokens of the earlier
    segments while `condition_on_previous_text` (`_prepare_decoder_input_ids`);
  * a decoding too repetitive (`compression_ratio_threshold`) or improbable
    (`logprob_threshold`) retried at the next of `temperatures`; a window whose
    `<|nospeech|>` probability passes `no_speech_threshold` (and is improbable) skipped
    (`generate_with_fallback`, `_need_fallback`, `WhisperNoSpeechDetection`);
  * the window's segments read off its timestamp pairs, and the next window started at the
    last pair's time, or after the whole window (`_retrieve_segment`;
    `jaxseq.inference.whisper_segments`).

Device side, every window of a round is one row of a `jax.vmap`ped decode
(`jaxseq.inference.sequential_rows`): rows hold different recordings, prompt lengths and
temperatures, and the program is compiled once per number of rows. Rows are filled from each
process's own recordings, and all processes run the same rounds (how many is agreed by a
collective each round), so the jitted calls stay in lockstep as
`jaxseq.evaluation.waveforms.predicted_batches` keeps them. Sampling at temperature > 0 draws
with jax's PRNG, not torch's: those tokens cannot equal transformers', and transformers also
cuts sampling to the top 50 tokens by default, openai-whisper and this module do not.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from jaxseq.errors import JaxseqError
from jaxseq.inference.language import recording_languages
from jaxseq.inference.longform import window_features
from jaxseq.inference.sequential_rows import jitted_decode_rows
from jaxseq.inference.whisper_segments import (
    FRAME_SECONDS,
    compression_ratio,
    fallback,
    previous_tokens,
    window_segments,
)
from jaxseq.inference.word_timing import (
    AlignWindow,
    add_word_timestamps,
    align_windows,
    is_text,
)
from jaxseq.parallel.batch import to_global
from jaxseq.parallel.mesh import rows_per_process
from jaxseq.parallel.sharding import sharding_context
from jaxseq.tasks.seq2seq import Seq2SeqTask
from jaxseq.train.trained import Trained

log = logging.getLogger(__name__)

TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def _align_round(trained: Trained, slots: list, host: dict, rows: int, fresh: dict) -> None:
    """Word times for the segments each slot's window just added (`fresh`: slot -> (seek,
    frames, first new segment)), as openai-whisper's `add_word_timestamps`: one
    teacher-forced pass for all of them (a collective: every process runs it each round)."""
    tok = trained.task.tokenizer
    windows = [
        AlignWindow(
            host["features"][s],
            frames,
            [t for seg in slots[s].segments[first:] for t in seg["tokens"]],
            slots[s].init,
            slots[s].language,
        )
        for s, (_, frames, first) in fresh.items()
    ]
    aligned = align_windows(trained, windows, rows)
    for alignment, (s, (seek, _, first)) in zip(aligned, fresh.items(), strict=True):
        rec = slots[s]
        timed, rec.last_speech = add_word_timestamps(
            rec.segments[first:],
            alignment,
            time_offset=seek * FRAME_SECONDS,
            last_speech_timestamp=rec.last_speech,
            text_ids=tok.text_ids,
        )
        rec.segments[first:] = timed


@dataclasses.dataclass
class _Recording:
    """One recording's progress through its windows."""

    features: np.ndarray  # float32 [frames, n_mels], the whole recording
    seconds: float  # its duration
    init: tuple[int, ...]  # <|startoftranscript|><|xx|><|task|> (no <|notimestamps|>)
    stream: int  # this recording's PRNG stream
    condition: bool  # condition the next window on the earlier segments
    seek: int = 0  # the next window's first frame
    attempt: int = 0  # index into the temperatures
    decodes: int = 0
    prompt: tuple[int, ...] = ()  # the current window's (the same for its retries)
    segments: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    language: str | None = None  # for splitting words (languages written without spaces)
    last_speech: float = 0.0  # the end of the last word so far (word times)

    @property
    def done(self) -> bool:
        return self.seek >= len(self.features)


def _next_prompt(rec: _Recording, task: Seq2SeqTask) -> tuple[int, ...]:
    """The next window's prompt: `<|startofprev|>` and the earlier segments' last tokens while
    conditioning, then the start sequence (`_prepare_decoder_input_ids`)."""
    if not (rec.condition and rec.segments and task.tokenizer.sot_prev_id is not None):
        return rec.init
    tok = task.tokenizer
    cut = task.dims.max_target_positions // 2 - 1
    earlier = previous_tokens(rec.segments, timestamp_begin=tok.timestamp_begin, max_tokens=cut)
    return (tok.sot_prev_id, *earlier, *rec.init)


def _row(rec: _Recording, task: Seq2SeqTask, temperatures, max_new: int | None) -> dict:
    """A host row for the recording's current window and attempt."""
    dims, tok = task.dims, task.tokenizer
    size = dims.num_frames
    frames = min(len(rec.features) - rec.seek, size)
    window = np.zeros((size, rec.features.shape[1]), np.float32)  # zero-padded, as transformers
    window[:frames] = rec.features[rec.seek : rec.seek + frames]
    prompt = np.full(dims.max_target_positions, tok.eot_id, np.int32)
    prompt[: len(rec.prompt)] = rec.prompt
    limit = dims.max_target_positions - len(rec.prompt)  # the decoder's last position
    if max_new is not None:
        limit = min(limit, max_new)
    return {
        "features": window,
        "frames": np.int32(size if task.attends_to_padding else frames),
        "prompt": prompt,
        "prompt_len": np.int32(len(rec.prompt)),
        "limit": np.int32(limit),
        "probe_at": np.int32(len(rec.prompt) - len(rec.init)),
        "temperature": np.float32(temperatures[rec.attempt]),
        "seed": np.asarray([jax.process_index(), rec.stream, rec.decodes, 0], np.int32),
    }


def _filler(task: Seq2SeqTask, n_mels: int) -> dict:
    """A row that decodes nothing (no recording left for it)."""
    dims = task.dims
    return {
        "features": np.zeros((dims.num_frames, n_mels), np.float32),
        "frames": np.int32(dims.num_frames),
        "prompt": np.full(dims.max_target_positions, task.tokenizer.sot_id, np.int32),
        "prompt_len": np.int32(1),
        "limit": np.int32(0),
        "probe_at": np.int32(0),
        "temperature": np.float32(0.0),
        "seed": np.zeros(4, np.int32),
    }


def _advance(
    rec: _Recording, out: dict, task: Seq2SeqTask, temperatures, thresholds: dict, condition: bool
) -> None:
    """Takes a decoded row: retries at the next temperature, skips the window, or adds its
    segments and moves `seek` on (`generate_with_fallback` and the long-form loop)."""
    tok = task.tokenizer
    temperature = temperatures[rec.attempt]
    tokens = [int(t) for t in out["tokens"][: int(out["length"])]]  # the end-of-text included
    stats = {
        "temperature": float(temperature),
        "avg_logprob": float(out["sum_log_prob"]) / max(len(tokens), 1),
        "compression_ratio": compression_ratio(tokens, task.dims.vocab_size),
        "no_speech_prob": float(out["no_speech_prob"]),
    }
    retry, skip = fallback(
        stats["compression_ratio"], stats["avg_logprob"], stats["no_speech_prob"], **thresholds
    )
    if tokens and tokens[-1] == tok.eot_id:
        tokens = tokens[:-1]
    rec.decodes += 1
    rec.condition = condition and temperature < 0.5  # no conditioning on a high-temperature text
    if retry and rec.attempt < len(temperatures) - 1:
        rec.attempt += 1
        return
    rec.attempt = 0
    frames = min(len(rec.features) - rec.seek, task.dims.num_frames)
    if skip:
        rec.seek += frames
        rec.prompt = _next_prompt(rec, task)
        return
    segments, step = window_segments(
        tokens, timestamp_begin=tok.timestamp_begin, seek=rec.seek, window_frames=frames
    )
    for segment in segments:
        text = [t for t in segment["tokens"] if is_text(tok, t)]
        rec.segments.append({"seek": rec.seek, **segment, "text": task.segment_text(text), **stats})
    if step <= 0:  # the last pair at <|0.00|>: transformers would decode this window forever
        log.warning("a window at frame %d ended at its own start; moving on a window", rec.seek)
        step = frames
    rec.seek += step
    rec.prompt = _next_prompt(rec, task)


def _result(rec: _Recording, task: Seq2SeqTask, language: str | None) -> dict[str, Any]:
    """openai-whisper's layout: {"text", "language", "segments": [{"id", "seek", "start",
    "end", "text", "tokens", "temperature", "avg_logprob", "compression_ratio",
    "no_speech_prob"}]}; times past the recording's end (a last window padded with silence
    can have them) are moved to it, as chunked decoding does."""

    def within(seconds: float) -> float:
        return min(seconds, rec.seconds)

    segments = [
        {
            "id": i,
            "seek": s["seek"],
            "start": within(s["start"]),
            "end": within(s["end"]),
            "text": s["text"],
            "tokens": s["tokens"],
            "temperature": s["temperature"],
            "avg_logprob": s["avg_logprob"],
            "compression_ratio": s["compression_ratio"],
            "no_speech_prob": s["no_speech_prob"],
            **(
                {
                    "words": [
                        w | {"start": within(w["start"]), "end": within(w["end"])}
                        for w in s["words"]
                    ]
                }
                if "words" in s
                else {}
            ),
        }
        for i, s in enumerate(rec.segments)
    ]
    ids = [t for s in rec.segments for t in s["tokens"]]
    return {
        "text": task.ids_to_text(np.asarray(ids, np.int64)),
        "language": language,
        "segments": segments,
    }


def sequential_transcribe(
    trained: Trained,
    waves: Sequence[np.ndarray],
    *,
    temperatures: Sequence[float] = TEMPERATURES,
    compression_ratio_threshold: float | None = 2.4,
    logprob_threshold: float | None = -1.0,
    no_speech_threshold: float | None = 0.6,
    condition_on_previous_text: bool = True,
    language: str | None = None,
    task: str | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = 32,
    word_timestamps: bool = False,
) -> list[dict[str, Any]]:
    """Transcripts with segment times of float waveforms [samples] of any length at the
    model's sample rate, by Whisper's sequential long-form algorithm (module docstring).

    Args:
      temperatures: tried in turn while a window's decoding fails the thresholds (0: greedy);
        None thresholds are off.
      condition_on_previous_text: prompt each window with the earlier segments' tokens (not
        after a window decoded at temperature >= 0.5).
      language: a code, "auto" (each recording's detected on its first 30 s) or None for
        model.language; task: "transcribe" or "translate", None for model.task.
      max_new_tokens: the most tokens per window (None: up to the decoder's last position, as
        transformers with Whisper's generation config).
      batch_size: the most recordings one process decodes at once (a window each).
      word_timestamps: also each segment's "words" [{"word", "start", "end", "probability"}],
        from the cross-attention of each window's text (`jaxseq.inference.word_timing`, as
        openai-whisper's `word_timestamps=True`, which also moves segment times to their
        words where those are more precise).
    Returns:
      One result per waveform in openai-whisper's layout: {"text", "language", "segments":
      [{"id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob",
      "compression_ratio", "no_speech_prob"}]}, times in seconds.

    A collective with several processes: every process calls it with its own waveforms (any
    number, also none). One compilation per number of rows.
    """
    model = trained.task
    if not model.has_timestamps:
        raise JaxseqError(
            f"eval.longform=sequential seeks by timestamp tokens, and this workdir's "
            f"model.family={trained.cfg.model.family} model has none: use eval.longform=chunked"
        )
    if condition_on_previous_text and model.tokenizer.sot_prev_id is None:
        log.info("the model has no <|startofprev|>: windows are not conditioned on earlier text")
    temperatures = tuple(float(t) for t in temperatures)
    if not temperatures or min(temperatures) < 0:
        raise JaxseqError(f"temperatures {temperatures}: give one or more, each >= 0")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise JaxseqError(f"max_new_tokens={max_new_tokens}: give 1 or more, or None")
    tok = model.tokenizer
    codes, _ = recording_languages(trained, list(waves), language, batch_size=batch_size)
    recordings = []
    for i, (wave, code) in enumerate(zip(waves, codes, strict=True)):
        init = tuple(t for t in model.prompt_for(code, task) if t != tok.no_timestamps_id)
        recordings.append(
            _Recording(
                features=window_features(trained, np.asarray(wave)),  # the whole recording
                seconds=len(wave) / trained.frontend.sample_rate,
                init=init,
                stream=i,
                condition=condition_on_previous_text,
                prompt=init,
                language=code,
            )
        )
    thresholds = dict(
        compression_ratio_threshold=compression_ratio_threshold,
        logprob_threshold=logprob_threshold,
        no_speech_threshold=no_speech_threshold,
    )
    rows = rows_per_process(len(recordings), batch_size, trained.mesh)
    step = jitted_decode_rows(model, trained.mesh)
    waiting = [r for r in recordings if not r.done]
    slots: list[_Recording | None] = [None] * rows
    p, n_mels = jax.process_index(), trained.frontend.n_mels
    frames = sum(len(r.features) for r in recordings)
    bar = tqdm(total=frames, unit="frame", desc="sequential", disable=p != 0, leave=False)
    while True:
        for s in range(rows):
            if slots[s] is None or slots[s].done:
                slots[s] = waiting.pop(0) if waiting else None
        busy = any(s is not None for s in slots)
        if jax.process_count() > 1:
            busy = bool(multihost_utils.process_allgather(np.array([busy])).any())
        if not busy:
            break
        host = [
            _row(s, model, temperatures, max_new_tokens)
            if s is not None
            else _filler(model, n_mels)
            for s in slots
        ]
        host = {k: np.stack([r[k] for r in host]) for k in host[0]}
        with sharding_context(trained.mesh):
            outputs = jax.device_get(step(trained.params, to_global(host, trained.mesh)))
        fresh = {}  # slot -> (window seek, its audio frames, index of its first new segment)
        for s, rec in enumerate(slots):
            if rec is not None:
                out = {k: np.asarray(v)[p * rows + s] for k, v in outputs.items()}
                before, count = rec.seek, len(rec.segments)
                _advance(rec, out, model, temperatures, thresholds, condition_on_previous_text)
                if len(rec.segments) > count:
                    frames = min(len(rec.features) - before, model.dims.num_frames)
                    fresh[s] = (before, frames, count)
                bar.update(min(rec.seek, len(rec.features)) - before)
        if word_timestamps:
            _align_round(trained, slots, host, rows, fresh)
    bar.close()
    return [_result(r, model, c) for r, c in zip(recordings, codes, strict=True)]


def transcribe_sequential(
    trained: Trained,
    waves: Sequence[np.ndarray],
    *,
    decoder: str | None = None,
    return_timestamps: bool | str = False,
    return_language: bool = False,
    language: str | None = None,
    task: str | None = None,
    batch_size: int = 32,
) -> list[Any]:
    """`transcribe_waveforms` with `eval.longform=sequential`: `sequential_transcribe` with
    the workdir's `eval` options; each result a dict with segments when `return_timestamps`
    or `return_language` ask for dicts, else its text. Greedy at temperature 0 (no beam
    search), so a `decoder` other than greedy is refused; `return_timestamps="word"` adds
    each segment's words."""
    if decoder not in (None, "greedy"):
        raise JaxseqError(
            f"decoder={decoder!r}: eval.longform=sequential decodes greedily at temperature 0 "
            "and samples at the fallback temperatures (eval.temperatures); drop the decoder, "
            "or use eval.longform=chunked"
        )
    ev = trained.cfg.eval
    results = sequential_transcribe(
        trained,
        waves,
        temperatures=ev.temperatures,
        compression_ratio_threshold=ev.compression_ratio_threshold,
        logprob_threshold=ev.logprob_threshold,
        no_speech_threshold=ev.no_speech_threshold,
        condition_on_previous_text=ev.condition_on_previous_text,
        language=language,
        task=task,
        batch_size=batch_size,
        word_timestamps=return_timestamps == "word",
    )
    if return_timestamps or return_language:
        return results
    return [r["text"] for r in results]
