"""`eval.normalizer`: WER/CER after openai-whisper's normalizers, as published WERs are scored,
checked against openai-whisper's own `whisper.normalizers` and jiwer."""

from __future__ import annotations

import jiwer
import pytest
from whisper.normalizers import BasicTextNormalizer, EnglishTextNormalizer

from jaxseq.config import TextConfig, load_config
from jaxseq.errors import ConfigError
from jaxseq.evaluation.scoring import error_counts, error_rates
from jaxseq.text.normalize import scoring_normalizer

TEXTS = [
    "Mr. Smith didn't go to the U.S. on the 3rd of May, did he?",
    "It costs $1,250.50 — about twenty-one hundred euros!",
    "Hello,   World! [laughs] (aside) okay",
    "They're colour-blind; we'll organise it in nineteen ninety-nine.",
    "one two three four five six seven eight nine oh zero",
    "ÉCOLE   Ünïcödé  ﬁne",
]


@pytest.mark.parametrize(
    ("name", "reference"),
    [("whisper_english", EnglishTextNormalizer()), ("whisper_basic", BasicTextNormalizer())],
)
def test_whisper_normalizers_match_openai_whispers(name, reference):
    normalize = scoring_normalizer(name, TextConfig())
    for text in TEXTS:
        assert normalize(text) == " ".join(reference(text).split()), text


def test_the_counts_are_jiwers_on_normalized_text():
    refs, hyps = TEXTS[:4], [t.upper().replace(",", "") for t in TEXTS[1:5]]
    english = EnglishTextNormalizer()
    got = error_rates(error_counts(refs, hyps, TextConfig(), "whisper_english"))
    assert got["wer"] == pytest.approx(
        jiwer.wer([english(r) for r in refs], [english(h) for h in hyps])
    )
    assert got["cer"] == pytest.approx(
        jiwer.cer([english(r) for r in refs], [english(h) for h in hyps])
    )
    # "none": only whitespace is collapsed, so case and punctuation count as errors.
    assert error_rates(error_counts(["A b"], ["a  b."], TextConfig(), "none"))["wer"] == 1.0
    assert error_rates(error_counts(["A b"], ["a  b"], TextConfig(), "model"))["wer"] == 0.0


def test_an_unknown_normalizer_is_a_config_error_naming_the_choices():
    with pytest.raises(ConfigError, match="whisper_english"):
        load_config(None, ["eval.normalizer=whisper"])
