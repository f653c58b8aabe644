"""A subword tokenizer (BPE or unigram) trained from scratch on training transcripts.

Built on the HF `tokenizers` library: whitespace becomes the metaspace `▁` (as in
SentencePiece), so `decode(encode(text)) == text` for normalized text (see
`jaxseq.text.normalize`: single spaces, no leading or trailing space). Special tokens have fixed
ids: `<pad>` = 0, `<s>` = 1 (start), `</s>` = 2 (end), `<unk>` = 3. A character never seen in
training encodes to `<unk>`, which `decode` drops like every special token. The whole tokenizer
is one JSON file (the `tokenizers` format), `tokenizer.json` in a workdir.

A tokenizer for a model trained with timestamps (`model.timestamps`) also has Whisper-style
timestamp tokens `<|0.00|>`, `<|0.02|>`, ... after every other id (`with_timestamps`), one per
20 ms; its `encode_record` builds timed targets (`jaxseq.text.timed_targets`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from jaxseq.errors import JaxseqError
from jaxseq.text.timed_targets import time_token, timed_window

PAD, START, END, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIALS = (PAD, START, END, UNK)  # their ids are their positions here
TOKENIZER_FILE = "tokenizer.json"
MODELS = ("bpe", "unigram")


class TextTokenizer(Protocol):
    """What a sequence-to-sequence task needs from a tokenizer (BPE or pretrained Whisper)."""

    @property
    def size(self) -> int: ...  # number of ids, specials included

    @property
    def pad_id(self) -> int: ...

    @property
    def end_id(self) -> int: ...

    @property
    def special_ids(self) -> frozenset[int]: ...

    def prompt_ids(self) -> list[int]: ...  # what the decoder starts from

    def encode(self, text: str) -> np.ndarray: ...  # int32 [n], no special tokens

    def decode(self, ids: Sequence[int] | np.ndarray) -> str: ...


def _tokenizer_file(path: str | Path) -> Path:
    """`path` itself if it names a .json file, else `path/tokenizer.json` (a workdir)."""
    path = Path(path)
    return path if path.suffix == ".json" else path / TOKENIZER_FILE


class BpeTokenizer:
    """A trained subword tokenizer with fixed special ids; see the module docstring."""

    def __init__(self, tokenizer: Tokenizer):
        for want, token in enumerate(SPECIALS):
            got = tokenizer.token_to_id(token)
            if got != want:
                raise JaxseqError(f"tokenizer has {token!r} at id {got}, expected id {want}")
        self._tok = tokenizer

    @property
    def size(self) -> int:
        """Number of ids, the four specials included."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def pad_id(self) -> int:
        return SPECIALS.index(PAD)

    @property
    def start_id(self) -> int:
        return SPECIALS.index(START)

    @property
    def end_id(self) -> int:
        return SPECIALS.index(END)

    @property
    def unk_id(self) -> int:
        return SPECIALS.index(UNK)

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset(range(len(SPECIALS)))

    @property
    def text_ids(self) -> tuple[int, int]:
        """[first, last + 1) of the text ids: the pieces, between the specials and any
        timestamps."""
        begin = self.timestamp_begin
        return len(SPECIALS), self.size if begin is None else begin

    # Whisper's names (`jaxseq.text.whisper_tokenizer`), which long-form decoding and word
    # timing read: the end and start ids, and the special tokens a BPE tokenizer lacks.
    @property
    def eot_id(self) -> int:
        return self.end_id

    @property
    def sot_id(self) -> int:
        return self.start_id

    sot_prev_id = no_timestamps_id = no_speech_id = None  # no conditioning, no no-speech token

    @property
    def generation_config(self) -> dict:
        """No checkpoint settings (word timing uses the upper half of the decoder's heads)."""
        return {}

    def prompt_ids(self) -> list[int]:
        """The decoder's start sequence: `[start_id]`."""
        return [self.start_id]

    @property
    def timestamp_begin(self) -> int | None:
        """Id of `<|0.00|>` (every id from it up is a timestamp), or None without timestamps."""
        return self._tok.token_to_id(time_token(0))

    @property
    def num_timestamps(self) -> int:
        """How many timestamp tokens (0 without timestamps)."""
        begin = self.timestamp_begin
        return 0 if begin is None else self.size - begin

    def with_timestamps(self, count: int) -> BpeTokenizer:
        """This tokenizer with `count` timestamp tokens `<|0.00|>` .. after its other ids."""
        if self.timestamp_begin is not None:
            raise JaxseqError("the tokenizer already has timestamp tokens")
        tok = Tokenizer.from_str(self._tok.to_str())
        tok.add_special_tokens([time_token(i) for i in range(count)])
        return BpeTokenizer(tok)

    def encode(self, text: str) -> np.ndarray:
        """int32 [n] ids of `text`, without start/end; unseen characters become `<unk>`."""
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int32)

    def encode_record(self, record: dict) -> np.ndarray:
        """The targets of a prepared record (what the input pipeline calls): `encode(text)`, or
        with timestamps `<|start|> text <|end|>` around the speech (`timed_window`)."""
        if self.timestamp_begin is None:
            return self.encode(record["text"])
        return self.encode_window([record], len(record["features"]))

    def encode_window(self, records: list[dict], frames: int) -> np.ndarray:
        """Timed targets int32 [n] of `records` joined into one window cut at `frames` feature
        frames (`jaxseq.text.timed_targets.timed_window`); needs timestamp tokens."""
        begin = self.timestamp_begin
        if begin is None:
            raise JaxseqError(
                "joining utterances into windows (data.pack_utterances > 1) needs timed targets: "
                "set model.timestamps=true (family seq2seq)"
            )
        return timed_window(records, frames, self.encode, begin, self.num_timestamps)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of `ids` [n], skipping every special id (pad, start, end, unk)."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def token(self, i: int) -> str:
        """The piece of id `i` (whitespace shown as `▁`), for debugging."""
        return self._tok.id_to_token(i)

    def save(self, path: str | Path) -> Path:
        """Writes the tokenizer to `path` (a .json file) or `path/tokenizer.json`; returns it."""
        file = _tokenizer_file(path)
        file.parent.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(file), pretty=True)
        return file

    @classmethod
    def load(cls, path: str | Path) -> BpeTokenizer:
        """Reads what `save` wrote (a .json file, or a workdir holding tokenizer.json)."""
        file = _tokenizer_file(path)
        if not file.is_file():
            raise JaxseqError(f"no tokenizer file {file}: train one first (train_bpe + save)")
        return cls(Tokenizer.from_file(str(file)))


def placeholder_bpe(vocab_size: int) -> BpeTokenizer:
    """A tokenizer of exactly `vocab_size` ids whose pieces are placeholders (`<piece_N>`): the
    shapes of a model for a BPE vocabulary that is not trained yet (`Task.from_config`, used by
    `jaxseq compile`). Its special ids are the real ones; it encodes no text usefully."""
    if vocab_size <= len(SPECIALS):
        raise JaxseqError(f"a BPE vocabulary needs more than {len(SPECIALS)} ids, got {vocab_size}")
    pieces = [*SPECIALS, *(f"<piece_{i}>" for i in range(vocab_size - len(SPECIALS)))]
    tok = Tokenizer(
        models.BPE(vocab={p: i for i, p in enumerate(pieces)}, merges=[], unk_token=UNK)
    )
    tok.add_special_tokens(list(SPECIALS))
    return BpeTokenizer(tok)


def train_bpe(texts: Iterable[str], vocab_size: int, *, model: str = "bpe") -> BpeTokenizer:
    """Trains a subword tokenizer of at most `vocab_size` ids on `texts` (normalized).

    Args:
      texts: training transcripts; for "bpe" the same texts in the same order give the same
        tokenizer, byte for byte, in any process ("unigram" may break ties differently).
      vocab_size: the most ids the tokenizer may have, specials and alphabet included; a small
        corpus may give fewer (BPE stops when no pair is left to merge).
      model: "bpe" (byte-pair merges) or "unigram" (SentencePiece-style unigram LM). The
        unigram trainer seeds pieces from substrings repeated across *distinct* words, so on a
        closed vocabulary (the 11 digit words) it learns little beyond characters: use "bpe".

    Raises:
      ValueError: unknown `model`, no text, or `vocab_size` below specials + alphabet.
    """
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("train_bpe needs at least one non-empty text")
    alphabet = {c for t in texts for c in t.replace(" ", "▁")} | {"▁"}
    if vocab_size < len(SPECIALS) + len(alphabet):
        raise ValueError(
            f"vocab_size {vocab_size} is below the {len(SPECIALS)} specials + "
            f"{len(alphabet)} characters of the training texts"
        )
    if model == "bpe":
        tok = Tokenizer(models.BPE(unk_token=UNK))
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False
        )
    else:
        tok = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIALS),
            unk_token=UNK,
            show_progress=False,
        )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.train_from_iterator(texts, trainer=trainer)
    return BpeTokenizer(tok)
