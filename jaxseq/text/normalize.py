"""The text policy shared by `prepare` (what to keep) and evaluation (what WER compares).

Normalization: Unicode NFKC, optional lowercasing, every whitespace run collapsed to one space,
leading/trailing space stripped. Nothing else is rewritten: characters outside the charset are
reported, never silently deleted, so a transcript either fits the vocabulary or is skipped with
its reason.
"""

from __future__ import annotations

import re
import unicodedata

from jaxseq.config import TextConfig

_SPACES = re.compile(r"\s+")


def normalize_text(text: str, cfg: TextConfig) -> str:
    """Returns `text` normalized under the policy `cfg`."""
    text = unicodedata.normalize("NFKC", text)
    if cfg.lowercase:
        text = text.lower()
    return _SPACES.sub(" ", text).strip()


def unknown_characters(text: str, cfg: TextConfig) -> list[str]:
    """Characters of (normalized) `text` outside `cfg.charset`, sorted, without repeats."""
    allowed = set(cfg.charset)
    return sorted({c for c in text if c not in allowed})
