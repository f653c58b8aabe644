"""The text policy shared by `prepare` (what to keep) and evaluation (what WER compares).

Normalization: Unicode NFKC, optional lowercasing, every whitespace run collapsed to one space,
leading/trailing space stripped. Nothing else is rewritten: characters outside the charset are
reported, never silently deleted, so a transcript either fits the vocabulary or is skipped with
its reason.

Scoring may instead use openai-whisper's normalizers (`eval.normalizer`), as published WERs
are scored (the Open ASR Leaderboard, distil-whisper): `whisper_english` spells out
contractions and titles, writes numbers as digits and drops punctuation; `whisper_basic` drops
punctuation and bracketed text. Both come from the `whisper-normalizer` package, a copy of
openai-whisper's `whisper.normalizers` without its torch dependency.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable

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


@functools.cache
def scoring_normalizer(name: str, cfg: TextConfig) -> Callable[[str], str]:
    """The function both sides of a WER/CER comparison go through (`eval.normalizer`):
    "model" (`normalize_text` under the training text policy `cfg`), "whisper_english",
    "whisper_basic" or "none" (whitespace collapsed only). Built once per (name, policy)."""
    if name == "model":
        return functools.partial(normalize_text, cfg=cfg)
    if name == "whisper_english":
        from whisper_normalizer.english import EnglishTextNormalizer

        base: Callable[[str], str] = EnglishTextNormalizer()
    elif name == "whisper_basic":
        from whisper_normalizer.basic import BasicTextNormalizer

        base = BasicTextNormalizer()
    elif name == "none":
        base = str
    else:
        raise ValueError(f"unknown normalizer {name!r}")  # the config's choices are checked
    return lambda text: _SPACES.sub(" ", base(text)).strip()
