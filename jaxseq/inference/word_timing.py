"""Word times for a seq2seq (Whisper) transcript from the decoder's cross-attention.

openai-whisper's `timing.find_alignment`, step by step: the transcript is fed back to the
decoder once (teacher forcing) after the start sequence and `<|notimestamps|>` (a model
trained here with timestamps, which has no `<|notimestamps|>`, is fed its own timed tokens,
and the rows of its text tokens are kept); the
cross-attention weights of the alignment heads (the checkpoint's `alignment_heads`, else every
head of the upper half of the layers) are renormalized over the audio's frames, standardized
over the tokens, median-filtered along time (width 7) and averaged over the heads. Dynamic
time warping (librosa's) finds the monotonic path of tokens over encoder frames (20 ms each)
that follows the attention; a token starts where the path first reaches it, and a word spans
its tokens. Each word's probability is the mean of its tokens' probabilities over the text
vocabulary.
"""

from __future__ import annotations

import functools
import string
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import librosa
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from jaxseq.models.whisper import WhisperModel
from jaxseq.parallel.batch import to_global
from jaxseq.parallel.sharding import replicated, sharding_context
from jaxseq.text.bpe import BpeTokenizer
from jaxseq.text.whisper_tokenizer import WhisperTokenizer
from jaxseq.train.trained import Trained

SECONDS_PER_FRAME = 0.02  # one encoder frame: two 10 ms log-mel hops
MEDIAN_WIDTH = 7
NO_SPACE_LANGUAGES = ("zh", "ja", "th", "lo", "my", "yue")


def alignment_heads(
    tokenizer: WhisperTokenizer, layers: int, heads: int
) -> tuple[tuple[int, int], ...]:
    """(layer, head) pairs whose cross-attention aligns tokens with audio: the checkpoint's
    `generation_config.json` `alignment_heads`, else every head of the upper half of the
    decoder layers (openai-whisper's default)."""
    given = tokenizer.generation_config.get("alignment_heads")
    if given:
        return tuple((int(layer), int(head)) for layer, head in given)
    return tuple((layer, head) for layer in range(layers // 2, layers) for head in range(heads))


def alignment_weights(
    model: WhisperModel,
    params: Any,
    features: jax.Array,
    tokens: jax.Array,
    frames: jax.Array,
    lengths: jax.Array | None = None,
    *,
    heads: tuple[tuple[int, int], ...],
    text_ids: tuple[int, int],
) -> tuple[jax.Array, jax.Array]:
    """Device side (jit it): teacher-forced passes over windows.

    Args:
      features: float32 [rows, num_frames, n_mels] (padded windows).
      tokens: int32 [rows, T], each row's `alignment_tokens`, padded after them (the decoder
        is causal: padding changes nothing before).
      frames: int32 [rows], each window's encoder frames that hold audio.
      lengths: int32 [rows], the log-mel frames the encoder attends to; None: all (Whisper
        never masks; a model trained here masks what is not audio, as in training).
      text_ids: [first, last + 1) of the text vocabulary.
    Returns:
      weights float32 [rows, heads, T, enc_frames] (zero past `frames`, renormalized over the
      rest: the softmax over the audio alone), and float32 [rows, T] the probability, over the
      text vocabulary, of each row's next token (position t: of tokens[t + 1]; the last: 0).
    """
    if lengths is None:
        lengths = jnp.full(features.shape[:1], features.shape[1], jnp.int32)
    logits, state = model.clone(sow_cross_weights=True).apply(
        {"params": params}, features, lengths, tokens, mutable=["intermediates"]
    )  # [rows, T, vocab]
    sown = state["intermediates"]["decoder"]  # layer -> cross_attn -> weights: ([r, h, T, e],)
    weights = jnp.stack(
        [sown[f"layer{layer}"]["cross_attn"]["weights"][0][:, head] for layer, head in heads],
        axis=1,
    )  # [rows, heads, T, enc_frames]
    kept = jnp.arange(weights.shape[-1]) < frames[:, None, None, None]
    weights = jnp.where(kept, weights, 0.0)
    weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    first, end = text_ids
    log_probs = jax.nn.log_softmax(logits[:, :, first:end], axis=-1)  # [rows, T, text vocab]
    following = jnp.clip(jnp.roll(tokens, -1, axis=1) - first, 0, end - first - 1)  # [rows, T]
    probs = jnp.exp(jnp.take_along_axis(log_probs, following[..., None], axis=-1)[..., 0])
    return weights, probs.at[:, -1].set(0.0)


def _median_filter(x: np.ndarray, width: int) -> np.ndarray:
    """Median over a sliding window of `width` along the last axis, edges reflected."""
    pad = width // 2
    if x.shape[-1] <= pad:
        return x
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=-1)
    return np.median(windows, axis=-1)


def dtw_path(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The minimal-cost monotonic path through `cost` [tokens, frames] from (0, 0) to the
    last cell with steps (1, 1), (1, 0) and (0, 1) (librosa's DTW): (token indices, frame
    indices), one entry per step."""
    _, path = librosa.sequence.dtw(
        C=cost.astype(np.float64), step_sizes_sigma=np.array([[1, 1], [1, 0], [0, 1]])
    )
    path = path[::-1]  # librosa backtracks from the end
    return path[:, 0], path[:, 1]


def split_to_word_tokens(
    tokenizer: WhisperTokenizer | BpeTokenizer, tokens: Sequence[int], language: str | None = "en"
) -> tuple[list[str], list[list[int]]]:
    """Words and their tokens, as openai-whisper's `Tokenizer.split_to_word_tokens`: tokens
    are grouped into whole characters, then (except in languages written without spaces)
    into words that start at a space, a punctuation mark or a special token. A BPE
    tokenizer's words start at a piece that starts with `▁` or at a special token, and are
    written with a leading space, as Whisper's."""
    if isinstance(tokenizer, BpeTokenizer):
        return _bpe_word_tokens(tokenizer, tokens)
    full = tokenizer.decode(tokens, skip_special=False)
    pieces, piece_tokens, current, offset = [], [], [], 0
    for token in tokens:
        current.append(int(token))
        decoded = tokenizer.decode(current, skip_special=False)
        cut = decoded.find("\ufffd")
        if cut < 0 or full[offset + cut] == "\ufffd":  # a whole character (or a real U+FFFD)
            pieces.append(decoded)
            piece_tokens.append(current)
            current, offset = [], offset + len(decoded)
    if language in NO_SPACE_LANGUAGES:
        return pieces, piece_tokens
    words, word_tokens = [], []
    for piece, ids in zip(pieces, piece_tokens, strict=True):
        starts_word = (
            ids[0] >= tokenizer.eot_id
            or piece.startswith(" ")
            or piece.strip() in string.punctuation
        )
        if starts_word or not words:
            words.append(piece)
            word_tokens.append(list(ids))
        else:
            words[-1] += piece
            word_tokens[-1].extend(ids)
    return words, word_tokens


def _bpe_word_tokens(
    tokenizer: BpeTokenizer, tokens: Sequence[int]
) -> tuple[list[str], list[list[int]]]:
    """`split_to_word_tokens` for a BPE tokenizer (metaspace `▁` marks a word's start)."""
    first, end = tokenizer.text_ids
    words: list[str] = []
    word_tokens: list[list[int]] = []
    for token in tokens:
        token = int(token)
        text = first <= token < end
        piece = tokenizer.token(token) if text else ""
        if not text or piece.startswith("▁") or not words:
            words.append(piece.replace("▁", " "))
            word_tokens.append([token])
        else:
            words[-1] += piece.replace("▁", " ")
            word_tokens[-1].append(token)
    return words, word_tokens


def is_text(tokenizer: WhisperTokenizer | BpeTokenizer, token: int) -> bool:
    """Whether `token` is a text token (not a special or a timestamp)."""
    first, end = tokenizer.text_ids
    return first <= token < end


def alignment_tokens(
    tokenizer: WhisperTokenizer | BpeTokenizer,
    tokens: Sequence[int],
    start_sequence: Sequence[int],
) -> np.ndarray:
    """int32 [T], what the decoder is fed to align `tokens` (a window's decoded tokens):
    Whisper's start sequence, `<|notimestamps|>`, the text tokens and end-of-text; for a
    tokenizer without `<|notimestamps|>`, the start sequence, all of `tokens` (timestamps
    included, as the model was trained) and end-of-text."""
    if tokenizer.no_timestamps_id is None:
        middle = [int(t) for t in tokens if t != tokenizer.eot_id]
    else:
        middle = [tokenizer.no_timestamps_id, *(t for t in tokens if is_text(tokenizer, t))]
    return np.asarray([*start_sequence, *middle, tokenizer.eot_id], np.int32)


def align_words(
    weights: np.ndarray,
    probs: np.ndarray,
    tokenizer: WhisperTokenizer | BpeTokenizer,
    num_frames: int,
    tokens: np.ndarray,
    *,
    language: str | None = "en",
    median_width: int = MEDIAN_WIDTH,
) -> list[dict]:
    """Words of the text of `tokens` (`alignment_tokens`, T of them) with their times in the
    window: the host side of openai-whisper's `find_alignment`, from one row of
    `alignment_weights` (weights [heads, >= T, enc_frames], next-token probabilities [>= T];
    padding past T ignored)."""
    tokens = np.asarray(tokens)
    positions = [p for p in range(1, len(tokens)) if is_text(tokenizer, int(tokens[p]))]
    if not positions:
        return []
    text_tokens = [int(tokens[p]) for p in positions]
    # The rows that predict each text token, and the row after the last (its end).
    rows = np.asarray([p - 1 for p in positions] + [positions[-1]])
    kept = num_frames // 2
    weights = np.asarray(weights, np.float64)[:, : len(tokens), :kept]  # [heads, T, kept]
    mean = weights.mean(axis=-2, keepdims=True)
    std = weights.std(axis=-2, keepdims=True)
    matrix = _median_filter((weights - mean) / std, median_width).mean(axis=0)  # [T, kept]
    text_index, time_index = dtw_path(-matrix[rows])

    eot = tokenizer.eot_id
    words, word_tokens = split_to_word_tokens(tokenizer, [*text_tokens, eot], language)
    if len(word_tokens) <= 1:
        return []
    boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(text_index), (1, 0), constant_values=1).astype(bool)
    jump_times = time_index[jumps] * SECONDS_PER_FRAME  # each token's first frame
    token_probs = np.asarray(probs)[rows[:-1]]
    return [
        {
            "word": word,
            "tokens": ids,
            "start": float(jump_times[i]),
            "end": float(jump_times[j]),
            "probability": float(np.mean(token_probs[i:j])),
        }
        for word, ids, i, j in zip(
            words[:-1], word_tokens[:-1], boundaries[:-1], boundaries[1:], strict=True
        )
    ]


class AlignWindow(NamedTuple):
    """One window to align: its log-mel float32 [dims.num_frames, n_mels] (padded as the
    model takes it), the log-mel frames that hold audio, the decoded ids of its segments
    (text and timestamps), the decoder's start sequence before `<|notimestamps|>` and the
    language (for splitting words)."""

    features: np.ndarray
    num_frames: int
    tokens: Sequence[int]
    start_sequence: Sequence[int]
    language: str | None


@functools.cache
def _align_step(task: Any, mesh: Mesh):
    """`alignment_weights` for a Whisper task's alignment heads, jitted once per (task, mesh):
    one compilation per (rows, tokens) shape."""
    d = task.dims
    heads = alignment_heads(task.tokenizer, d.decoder_layers, d.decoder_heads)
    step = functools.partial(
        alignment_weights, task.model, heads=heads, text_ids=task.tokenizer.text_ids
    )
    return jax.jit(step, out_shardings=replicated(mesh))


def align_windows(trained: Trained, windows: Sequence[AlignWindow], rows: int) -> list[list[dict]]:
    """`align_words` of each window, [{"word", "tokens", "start", "end", "probability"}] in
    seconds from its start, all in one teacher-forced pass of `rows` rows (>= len(windows),
    a whole number of this process's data-parallel share).

    A collective with several processes: every process calls it with its own windows (any
    number up to `rows`, also none), and nothing runs where no process has one.
    """
    task, mesh = trained.task, trained.mesh
    tok = task.tokenizer
    sequences = [alignment_tokens(tok, w.tokens, w.start_sequence) for w in windows]
    longest = max((len(t) for t in sequences), default=0)
    if jax.process_count() > 1:
        longest = int(multihost_utils.process_allgather(np.array([longest])).max())
    if longest == 0:
        return []
    width = min(1 << (longest - 1).bit_length(), task.dims.max_target_positions)
    features = np.zeros((rows, task.dims.num_frames, trained.frontend.n_mels), np.float32)
    tokens = np.full((rows, width), tok.eot_id, np.int32)
    frames = np.ones(rows, np.int32)  # [rows] encoder frames with audio
    # The log-mel frames the encoder attends to: all for Whisper, the audio for a model
    # trained here (as `whisper_sequential` decodes them).
    lengths = np.full(rows, task.dims.num_frames, np.int32)
    for r, (window, ids) in enumerate(zip(windows, sequences, strict=True)):
        features[r], tokens[r, : len(ids)] = window.features, ids
        frames[r] = max(window.num_frames // 2, 1)
        if not task.attends_to_padding:
            lengths[r] = window.num_frames
    host = {"features": features, "tokens": tokens, "frames": frames, "lengths": lengths}
    with sharding_context(mesh):
        batch = to_global(host, mesh)
        weights, probs = jax.device_get(
            _align_step(task, mesh)(
                trained.params,
                batch["features"],
                batch["tokens"],
                batch["frames"],
                batch["lengths"],
            )
        )
    first = jax.process_index() * rows  # this process's rows
    return [
        align_words(
            weights[first + r],
            probs[first + r],
            tok,
            w.num_frames,
            ids,
            language=w.language,
        )
        for r, (w, ids) in enumerate(zip(windows, sequences, strict=True))
    ]


PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
SENTENCE_ENDS = ".。!！?？"


def merge_punctuations(words: list[dict]) -> list[dict]:
    """Opening marks joined to the word after them and closing marks to the word before
    (openai-whisper's `merge_punctuations`); an emptied entry keeps its place with word ""."""
    words = [dict(w, tokens=list(w["tokens"])) for w in words]
    i, j = len(words) - 2, len(words) - 1
    while i >= 0:
        before, after = words[i], words[j]
        if before["word"].startswith(" ") and before["word"].strip() in PREPEND_PUNCTUATIONS:
            after["word"], after["tokens"] = (
                before["word"] + after["word"],
                before["tokens"] + after["tokens"],
            )
            before["word"], before["tokens"] = "", []
        else:
            j = i
        i -= 1
    i, j = 0, 1
    while j < len(words):
        before, after = words[i], words[j]
        if not before["word"].endswith(" ") and after["word"] in APPEND_PUNCTUATIONS:
            before["word"], before["tokens"] = (
                before["word"] + after["word"],
                before["tokens"] + after["tokens"],
            )
            after["word"], after["tokens"] = "", []
        else:
            i = j
        j += 1
    return words


def add_word_timestamps(
    segments: list[dict],
    alignment: list[dict],
    *,
    time_offset: float,
    last_speech_timestamp: float,
    text_ids: tuple[int, int],
) -> tuple[list[dict], float]:
    """The window's segments with their "words", as openai-whisper's `add_word_timestamps`.

    Args:
      segments: one window's segments, each with "tokens", "start" and "end" (seconds in the
        recording); `alignment`: `align_words` over all their text tokens, in order.
      time_offset: the window's start in the recording (seconds).
      last_speech_timestamp: the end of the last word before this window.
      text_ids: [first, last + 1) of the text ids (the tokenizer's `text_ids`).
    Returns:
      (segments with "words" [{"word", "start", "end", "probability"}] and starts and ends
      moved to their words where the words are more precise, the new last speech timestamp).

    Words longer than twice the median word (at most 0.7 s) are cut at sentence ends and
    after long pauses, and a segment's start and end prefer the word times unless those
    are implausibly long, as openai-whisper does.
    """
    alignment = [dict(w) for w in alignment]
    durations = np.array([w["end"] - w["start"] for w in alignment])
    durations = durations[durations.nonzero()]
    median = min(0.7, float(np.median(durations))) if len(durations) else 0.0
    longest = median * 2
    if len(durations):  # long words at sentence boundaries are cut
        for i in range(1, len(alignment)):
            if alignment[i]["end"] - alignment[i]["start"] > longest:
                if alignment[i]["word"] in SENTENCE_ENDS:
                    alignment[i]["end"] = alignment[i]["start"] + longest
                elif alignment[i - 1]["word"] in SENTENCE_ENDS:
                    alignment[i]["start"] = alignment[i]["end"] - longest
    alignment = merge_punctuations(alignment)

    out, index = [], 0
    for segment in segments:
        segment = dict(segment)
        wanted = sum(1 for t in segment["tokens"] if text_ids[0] <= t < text_ids[1])
        saved, words = 0, []
        while index < len(alignment) and saved < wanted:
            timing = alignment[index]
            if timing["word"]:
                words.append(
                    {
                        "word": timing["word"],
                        "start": round(time_offset + timing["start"], 2),
                        "end": round(time_offset + timing["end"], 2),
                        "probability": timing["probability"],
                    }
                )
            saved += len(timing["tokens"])
            index += 1
        if words:
            first, last = words[0], words[-1]
            # After a pause, the first word (and the second) is at most twice the median.
            if first["end"] - last_speech_timestamp > median * 4 and (
                first["end"] - first["start"] > longest
                or (len(words) > 1 and words[1]["end"] - first["start"] > longest * 2)
            ):
                if len(words) > 1 and words[1]["end"] - words[1]["start"] > longest:
                    boundary = max(words[1]["end"] / 2, words[1]["end"] - longest)
                    first["end"] = words[1]["start"] = boundary
                first["start"] = max(0, first["end"] - longest)
            if segment["start"] < first["end"] and segment["start"] - 0.5 > first["start"]:
                first["start"] = max(0, min(first["end"] - median, segment["start"]))
            else:
                segment["start"] = first["start"]
            if segment["end"] > last["start"] and segment["end"] + 0.5 < last["end"]:
                last["end"] = max(last["start"] + median, segment["end"])
            else:
                segment["end"] = last["end"]
            last_speech_timestamp = segment["end"]
        segment["words"] = words
        out.append(segment)
    return out, last_speech_timestamp
