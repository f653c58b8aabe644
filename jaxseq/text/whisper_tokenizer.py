"""The pretrained Whisper tokenizer, read from a checkpoint folder with the `tokenizers` library.

The folder holds `tokenizer.json` (the HF fast-tokenizer file: byte-level BPE plus the
`<|...|>` added tokens) and, optionally, `generation_config.json` (its `suppress_tokens` and
`begin_suppress_tokens`). Ids and suppression lists mirror openai-whisper (`whisper/tokenizer.py`
and `DecodingTask._get_suppress_tokens` in `whisper/decoding.py`): every special token is looked
up by name, so multilingual, English-only and large-v3 (100 languages) files all work.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, models

from jaxseq.errors import JaxseqError

TOKENIZER_FILE = "tokenizer.json"
GENERATION_CONFIG_FILE = "generation_config.json"
_SPECIAL = re.compile(r"<\|.*\|>")

# openai-whisper's Tokenizer.non_speech_tokens: symbols suppressed so that the model does not
# write speaker tags or annotations; "miscellaneous" symbols are suppressed by their first token.
_SYMBOLS = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』') + (
    [
        "<<",
        ">>",
        "<<<",
        ">>>",
        "--",
        "---",
        "-(",
        "-[",
        "('",
        '("',
        "((",
        "))",
        "(((",
        ")))",
        "[[",
        "]]",
        "{{",
        "}}",
        "♪♪",
        "♪♪♪",
    ]
)
_MISCELLANEOUS = set("♩♪♫♬♭♮♯")


class WhisperTokenizer:
    """Whisper's byte-level BPE with its special tokens; build it with `from_folder`."""

    def __init__(self, tokenizer: Tokenizer, generation_config: dict | None = None):
        self._tok = tokenizer
        self._gen = generation_config or {}
        added = tokenizer.get_added_tokens_decoder()  # {id: AddedToken}
        self._special = frozenset(i for i, t in added.items() if _SPECIAL.fullmatch(t.content))
        self.eot_id = self._id("<|endoftext|>")
        self.sot_id = self._id("<|startoftranscript|>")
        self.transcribe_id = self._id("<|transcribe|>")
        self.translate_id = self._id("<|translate|>")
        self.sot_prev_id = self._id("<|startofprev|>")
        self.sot_lm_id = self._id("<|startoflm|>")
        self.no_timestamps_id = self._id("<|notimestamps|>")
        self.timestamp_begin = self._id("<|0.00|>")
        # Older HF files call <|nospeech|> <|nocaptions|>.
        self.no_speech_id = tokenizer.token_to_id("<|nospeech|>")
        if self.no_speech_id is None:
            self.no_speech_id = tokenizer.token_to_id("<|nocaptions|>")
        # What openai-whisper's DecodingTask suppresses whatever suppress_tokens says.
        self._always_suppressed = [self.transcribe_id, self.translate_id, self.sot_id]
        self._always_suppressed += [self.sot_prev_id, self.sot_lm_id]
        if self.no_speech_id is not None:
            self._always_suppressed.append(self.no_speech_id)

    @classmethod
    def from_folder(cls, path: str | Path) -> WhisperTokenizer:
        """Reads `path/tokenizer.json` and, when present, `path/generation_config.json`."""
        folder = Path(path)
        file = folder / TOKENIZER_FILE
        if not file.is_file():
            raise JaxseqError(
                f"Whisper checkpoint folder {folder} has no {TOKENIZER_FILE}: "
                "copy the checkpoint's tokenizer files there"
            )
        gen_file = folder / GENERATION_CONFIG_FILE
        gen = json.loads(gen_file.read_text()) if gen_file.is_file() else None
        return cls(Tokenizer.from_file(str(file)), gen)

    @classmethod
    def placeholder(cls, vocab_size: int) -> WhisperTokenizer:
        """A tokenizer with openai-whisper's special tokens at their ids for `vocab_size`
        (51864 English-only, 51865 multilingual, 51866 large-v3) and placeholder text pieces:
        a Whisper model's shapes and prompt without its tokenizer files (`Task.from_config`,
        used by `jaxseq compile`). It encodes no text, and suppresses no text token.

        Raises:
          JaxseqError for another vocabulary size (set model.tokenizer to the real files).
        """
        layouts = {51864: (50256, 99), 51865: (50257, 99), 51866: (50257, 100)}
        if vocab_size not in layouts:
            raise JaxseqError(
                f"model.vocab_size={vocab_size} is not one of openai-whisper's vocabularies "
                f"{sorted(layouts)}; set model.tokenizer to a folder with the tokenizer.json"
            )
        text_pieces, languages = layouts[vocab_size]
        specials = ["<|endoftext|>", "<|startoftranscript|>"]
        specials += [f"<|{code}|>" for code in ["en", *(f"l{i}" for i in range(1, languages))]]
        specials += ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>"]
        specials += ["<|nospeech|>", "<|notimestamps|>"]
        specials += [f"<|{i * 0.02:.2f}|>" for i in range(1501)]
        vocab = {f"<piece_{i}>": i for i in range(text_pieces)}
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<piece_0>"))
        tok.add_special_tokens(specials)
        eot = text_pieces
        return cls(tok, {"suppress_tokens": [], "begin_suppress_tokens": [eot]})

    def _id(self, token: str) -> int:
        i = self._tok.token_to_id(token)
        if i is None:
            raise JaxseqError(f"tokenizer.json has no Whisper special token {token}")
        return i

    @property
    def size(self) -> int:
        """Number of ids, added tokens included (the model's vocab_size, 51865 multilingual)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def pad_id(self) -> int:
        """Whisper pads labels with end-of-text, as HF's WhisperTokenizer does."""
        return self.eot_id

    @property
    def end_id(self) -> int:
        return self.eot_id

    @property
    def generation_config(self) -> dict:
        """The checkpoint's `generation_config.json` (empty without one)."""
        return dict(self._gen)

    @property
    def special_ids(self) -> frozenset[int]:
        """Every `<|...|>` token: end-of-text, task, languages, timestamps."""
        return self._special

    @property
    def text_ids(self) -> tuple[int, int]:
        """[first, last + 1) of the text ids: every id below end-of-text."""
        return 0, self.eot_id

    def language_id(self, language: str) -> int:
        """Id of `<|language|>`, e.g. "en" -> 50259."""
        i = self._tok.token_to_id(f"<|{language}|>")
        if i is None or i not in self._special:
            raise JaxseqError(f"unknown Whisper language code {language!r}")
        return i

    def prompt_ids(
        self, language: str | None = "en", task: str | None = "transcribe", timestamps: bool = False
    ) -> list[int]:
        """The decoder's start sequence, e.g. `<|startoftranscript|><|en|><|transcribe|>
        <|notimestamps|>`; pass language=None, task=None for English-only checkpoints."""
        ids = [self.sot_id]
        if language is not None:
            ids.append(self.language_id(language))
        if task is not None:
            if task not in ("transcribe", "translate"):
                raise ValueError(f"task must be 'transcribe' or 'translate', got {task!r}")
            ids.append(self.transcribe_id if task == "transcribe" else self.translate_id)
        if not timestamps:
            ids.append(self.no_timestamps_id)
        return ids

    def encode(self, text: str) -> np.ndarray:
        """int32 [n] ids of `text` without any special token (like tiktoken, a special token
        written out in `text`, e.g. "<|en|>", raises ValueError)."""
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if any(i in self._special for i in ids):
            raise ValueError(f"text {text!r} contains a Whisper special token")
        return np.asarray(ids, dtype=np.int32)

    def decode(self, ids: Sequence[int] | np.ndarray, skip_special: bool = True) -> str:
        """Text of `ids`; with `skip_special`, every `<|...|>` id (timestamps too) is dropped."""
        ids = [int(i) for i in ids]
        if skip_special:
            ids = [i for i in ids if i not in self._special]
        return self._tok.decode(ids, skip_special_tokens=False)

    def non_speech_ids(self) -> tuple[int, ...]:
        """openai-whisper's `Tokenizer.non_speech_tokens`, computed with this vocabulary."""

        def enc(s: str) -> list[int]:
            return self._tok.encode(s, add_special_tokens=False).ids

        result = {enc(" -")[0], enc(" '")[0]}
        for symbol in _SYMBOLS + sorted(_MISCELLANEOUS):
            for tokens in (enc(symbol), enc(" " + symbol)):
                if len(tokens) == 1 or symbol in _MISCELLANEOUS:
                    result.add(tokens[0])
        return tuple(sorted(result))

    def suppress_ids(self, suppress_tokens: str | Iterable[int] | None = None) -> tuple[int, ...]:
        """Ids never to generate, as openai-whisper's `DecodingTask._get_suppress_tokens`.

        Args:
          suppress_tokens: "-1" (or a list holding -1) adds `non_speech_ids()`; other ids are
            kept as given; a comma-separated string is split. None uses the checkpoint's
            `generation_config.json` `suppress_tokens` when present, else "-1".

        Returns:
          Sorted ids: the above plus transcribe, translate, startoftranscript, startofprev,
          startoflm and nospeech (end-of-text stays allowed; timestamp rules are separate).
        """
        if suppress_tokens is None:
            suppress_tokens = self._gen.get("suppress_tokens")
            suppress_tokens = "-1" if suppress_tokens is None else suppress_tokens
        if isinstance(suppress_tokens, str):
            suppress_tokens = [int(t) for t in suppress_tokens.split(",") if t.strip()]
        ids = [int(t) for t in suppress_tokens]
        if -1 in ids:
            ids = [t for t in ids if t >= 0] + list(self.non_speech_ids())
        ids += self._always_suppressed
        return tuple(sorted(set(ids)))

    def begin_suppress_ids(self) -> tuple[int, ...]:
        """Ids suppressed at the first sampled step: the checkpoint's `begin_suppress_tokens`
        when present, else openai-whisper's `SuppressBlank` (" " and end-of-text)."""
        if self._gen.get("begin_suppress_tokens") is not None:
            return tuple(sorted(int(t) for t in self._gen["begin_suppress_tokens"]))
        return tuple(sorted({*self._tok.encode(" ", add_special_tokens=False).ids, self.eot_id}))
