"""Word and character error rates with jiwer, after jaxseq's text normalization.

References and hypotheses both go through jaxseq.text.normalize.normalize_text (NFKC,
optional lowercasing, whitespace collapsed) under the text policy the model was trained with.
Counts (not rates) are what gets summed over processes; rates come from summed counts.
"""

from __future__ import annotations

import jiwer
import numpy as np

from jaxseq.config import TextConfig
from jaxseq.text.normalize import normalize_text

COUNT_NAMES = (
    "substitutions",
    "deletions",
    "insertions",
    "reference_words",
    "char_substitutions",
    "char_deletions",
    "char_insertions",
    "reference_chars",
)


def error_counts(refs: list[str], hyps: list[str], text: TextConfig) -> np.ndarray:
    """int64 [len(COUNT_NAMES)] word and character edit counts over all pairs."""
    if not refs:
        return np.zeros(len(COUNT_NAMES), np.int64)
    refs = [normalize_text(r, text) for r in refs]
    hyps = [normalize_text(h, text) for h in hyps]
    w = jiwer.process_words(refs, hyps)
    c = jiwer.process_characters(refs, hyps)
    return np.array(
        [
            w.substitutions,
            w.deletions,
            w.insertions,
            w.hits + w.substitutions + w.deletions,
            c.substitutions,
            c.deletions,
            c.insertions,
            c.hits + c.substitutions + c.deletions,
        ],
        np.int64,
    )


def error_rates(counts: np.ndarray) -> dict[str, float]:
    """{"wer", "cer"} plus the named counts, from `error_counts` (possibly summed)."""
    named = {k: int(v) for k, v in zip(COUNT_NAMES, counts, strict=True)}
    words = named["substitutions"] + named["deletions"] + named["insertions"]
    chars = named["char_substitutions"] + named["char_deletions"] + named["char_insertions"]
    return {
        "wer": words / max(named["reference_words"], 1),
        "cer": chars / max(named["reference_chars"], 1),
        **named,
    }


def utterance_alignment(ref: str, hyp: str, text: TextConfig) -> tuple[float, str]:
    """(utterance WER, jiwer's printable word alignment) for one pair."""
    out = jiwer.process_words(normalize_text(ref, text), normalize_text(hyp, text))
    return out.wer, jiwer.visualize_alignment(out, show_measures=False)
