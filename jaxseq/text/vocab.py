"""Character vocabulary for CTC: id 0 is the blank, then one id per charset character."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BLANK = "<blank>"


@dataclass(frozen=True)
class CharVocab:
    """Maps characters to ids (blank = 0) and back."""

    chars: tuple[str, ...]

    @classmethod
    def from_charset(cls, charset: str) -> CharVocab:
        if len(set(charset)) != len(charset):
            raise ValueError(f"charset {charset!r} repeats a character")
        return cls(tuple(charset))

    @property
    def blank_id(self) -> int:
        return 0

    @property
    def size(self) -> int:
        return len(self.chars) + 1

    def encode(self, text: str) -> np.ndarray:
        """int32 [len(text)] ids; raises KeyError naming the first unknown character."""
        index = {c: i + 1 for i, c in enumerate(self.chars)}
        try:
            return np.array([index[c] for c in text], dtype=np.int32)
        except KeyError as err:
            raise KeyError(
                f"character {err.args[0]!r} of {text!r} is not in the vocabulary"
            ) from None

    def decode(self, ids) -> str:
        """Text for `ids`, skipping blanks (no CTC collapsing: see jaxseq.decoding.ctc)."""
        return "".join(self.chars[i - 1] for i in ids if i != self.blank_id)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(
            json.dumps({"type": "char", "blank": BLANK, "chars": list(self.chars)})
        )

    @classmethod
    def load(cls, path: str | Path) -> CharVocab:
        spec = json.loads(Path(path).read_text())
        return cls(tuple(spec["chars"]))
