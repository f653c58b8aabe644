"""Word and character error rates with jiwer, after text normalization.

References and hypotheses both go through the normalizer `eval.normalizer` names
(jaxseq.text.normalize.scoring_normalizer): by default ("model") jaxseq's normalize_text (NFKC,
optional lowercasing, whitespace collapsed) under the text policy the model was trained with;
or openai-whisper's English or basic normalizer; or none. Counts (not rates) are what gets
summed over processes; rates come from summed counts.
"""

from __future__ import annotations

import jiwer
import numpy as np

from jaxseq.config import TextConfig
from jaxseq.text.normalize import scoring_normalizer

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


def error_counts(
    refs: list[str], hyps: list[str], text: TextConfig, normalizer: str = "model"
) -> np.ndarray:
    """int64 [len(COUNT_NAMES)] word and character edit counts over all pairs, both sides
    normalized by `normalizer` (see `scoring_normalizer`; `text`: the training text policy)."""
    if not refs:
        return np.zeros(len(COUNT_NAMES), np.int64)
    normalize = scoring_normalizer(normalizer, text)
    refs = [normalize(r) for r in refs]
    hyps = [normalize(h) for h in hyps]
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


def utterance_alignment(
    ref: str, hyp: str, text: TextConfig, normalizer: str = "model"
) -> tuple[float, str]:
    """(utterance WER, jiwer's printable word alignment) for one pair."""
    normalize = scoring_normalizer(normalizer, text)
    out = jiwer.process_words(normalize(ref), normalize(hyp))
    return out.wer, jiwer.visualize_alignment(out, show_measures=False)
