"""Tokenizers: the from-scratch BPE, and the Whisper tokenizer against openai-whisper's own.

The Whisper tokenizer.json is built offline from the tiktoken vocabulary that openai-whisper
ships (transformers' TikTokenConverter), with HF's Whisper post-processor, in a session tmp dir;
openai-whisper's tiktoken-based `get_tokenizer(multilingual=True)` is the independent reference.
"""

import json
import random
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import whisper.tokenizer
from whisper.decoding import DecodingOptions, DecodingTask

from jaxseq.errors import JaxseqError
from jaxseq.text.bpe import BpeTokenizer, train_bpe
from jaxseq.text.whisper_tokenizer import WhisperTokenizer

DIGITS = ["zero", "oh", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def digit_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(DIGITS) for _ in range(rng.randint(1, 7))) for _ in range(n)]


# ---------------------------------------------------------------- BPE


@pytest.mark.parametrize("model", ["bpe", "unigram"])
def test_bpe_round_trips_and_fixes_special_ids(model):
    texts = digit_texts(300)
    tok = train_bpe(texts, 64, model=model)
    assert (tok.pad_id, tok.start_id, tok.end_id, tok.unk_id) == (0, 1, 2, 3)
    assert tok.special_ids == {0, 1, 2, 3}
    assert [tok.token(i) for i in range(4)] == ["<pad>", "<s>", "</s>", "<unk>"]
    assert tok.prompt_ids() == [1]
    for text in [*texts[:50], *digit_texts(50, seed=1)]:
        ids = tok.encode(text)
        assert ids.dtype == np.int32 and ids.ndim == 1
        assert ids.min() >= 4 and ids.max() < tok.size  # no specials in encode
        assert tok.decode(ids) == text
    # decode skips specials wherever they sit
    ids = tok.encode("three oh five")
    assert tok.decode([1, *ids.tolist(), 2, 0, 0]) == "three oh five"


def test_bpe_merges_frequent_words_into_single_tokens():
    tok = train_bpe(digit_texts(300), 64)
    # 11 distinct words: a 64-id BPE has room for every whole word (with its ▁).
    assert [tok.token(i) for i in tok.encode("three oh five")] == ["▁three", "▁oh", "▁five"]


def test_bpe_vocab_size_is_an_upper_bound():
    texts = digit_texts(300)
    alphabet = len(set("".join(texts)))  # ' ' becomes '▁'
    for vocab_size in [4 + alphabet, 30, 40]:
        assert train_bpe(texts, vocab_size).size == vocab_size
    # A closed 11-word corpus runs out of merges: fewer ids than allowed, never more.
    big = train_bpe(texts, 500)
    assert big.size < 500
    assert big.size == train_bpe(texts, 1000).size
    with pytest.raises(ValueError, match="below the 4 specials"):
        train_bpe(texts, 3 + alphabet)
    with pytest.raises(ValueError, match="model must be"):
        train_bpe(texts, 64, model="wordpiece")


_TRAIN_AND_PRINT = """
import random, sys
from jaxseq.text.bpe import train_bpe
words = "zero oh one two three four five six seven eight nine".split()
rng = random.Random(0)
texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 7))) for _ in range(200)]
sys.stdout.write(train_bpe(texts, 48)._tok.to_str())
"""


def test_bpe_training_is_deterministic_across_processes():
    # Rust hash maps are seeded per process: compare two fresh interpreters, not two calls.
    runs = [
        subprocess.run(
            [sys.executable, "-c", _TRAIN_AND_PRINT], capture_output=True, text=True, check=True
        ).stdout
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    assert json.loads(runs[0])["model"]["type"] == "BPE"


def test_bpe_save_load_gives_identical_encodings(tmp_path):
    tok = train_bpe(digit_texts(200), 48)
    file = tok.save(tmp_path / "run")
    assert file == tmp_path / "run" / "tokenizer.json"
    json.loads(file.read_text())  # one plain JSON file
    tok.save(tmp_path / "other.json")
    for loaded in [BpeTokenizer.load(tmp_path / "run"), BpeTokenizer.load(tmp_path / "other.json")]:
        assert loaded.size == tok.size
        for text in digit_texts(30, seed=2):
            np.testing.assert_array_equal(loaded.encode(text), tok.encode(text))
    with pytest.raises(JaxseqError, match="no tokenizer file .*missing"):
        BpeTokenizer.load(tmp_path / "missing")


def test_bpe_unknown_characters_become_unk():
    tok = train_bpe(digit_texts(200), 48)
    ids = tok.encode("three q five")  # 'q' is in no digit word
    assert tok.unk_id in ids.tolist()
    assert tok.decode(ids) == "three  five"  # <unk> is a special: decode drops it


# ---------------------------------------------------------------- Whisper

SENTENCES = [
    "three oh five",
    " Hello, world! How's it going?",
    "It costs $1,234.56 (about 20%) -- really?!",
    "Ça va? naïve café, Straße, Ελληνικά, русский, 日本語の文章, 한국어",
    "  spaces   and\ttabs\nnewlines ",
    "emoji 🎵🎶 and music ♪♪ [laughs] <noise> {x}",
    "don't, I'll, we're - 'quoted'",
    "",
]


@pytest.fixture(scope="session")
def whisper_tok(whisper_folder) -> WhisperTokenizer:
    return WhisperTokenizer.from_folder(whisper_folder)


def test_whisper_ids_match_openai_whisper(whisper_tok, reference):
    tok = whisper_tok
    assert tok.size == 51865 == reference.encoding.n_vocab
    assert tok.eot_id == tok.end_id == tok.pad_id == reference.eot == 50257
    assert tok.prompt_ids() == list(reference.sot_sequence_including_notimestamps)
    assert tok.prompt_ids(timestamps=True) == list(reference.sot_sequence)
    assert tok.prompt_ids(language=None, task=None) == [reference.sot, reference.no_timestamps]
    fr = whisper.tokenizer.get_tokenizer(multilingual=True, language="fr", task="translate")
    assert tok.prompt_ids("fr", "translate") == list(fr.sot_sequence_including_notimestamps)
    assert tok.timestamp_begin == reference.timestamp_begin
    assert tok.no_speech_id == reference.no_speech
    assert tok.special_ids == set(range(reference.eot, reference.encoding.n_vocab))
    with pytest.raises(JaxseqError, match="language code 'xx'"):
        tok.prompt_ids(language="xx")


@pytest.mark.parametrize("text", SENTENCES)
def test_whisper_encode_decode_match_openai_whisper(whisper_tok, reference, text):
    ids = whisper_tok.encode(text)
    assert ids.dtype == np.int32
    assert ids.tolist() == reference.encode(text)
    assert whisper_tok.decode(ids) == reference.decode(ids.tolist()) == text
    # decode drops specials and timestamps, as openai-whisper's decode does
    wrapped = [*reference.sot_sequence, reference.timestamp_begin, *ids.tolist(), reference.eot]
    assert whisper_tok.decode(wrapped) == text
    full = whisper_tok.decode(wrapped, skip_special=False)
    assert full.startswith("<|startoftranscript|><|en|><|transcribe|><|0.00|>")


def test_whisper_refuses_special_tokens_in_text(whisper_tok):
    with pytest.raises(ValueError, match="special token"):
        whisper_tok.encode("hello <|en|> world")


def test_whisper_suppress_ids_match_openai_whisper(whisper_tok, reference):
    def openai_suppress(value):
        task = SimpleNamespace(options=DecodingOptions(suppress_tokens=value), tokenizer=reference)
        return DecodingTask._get_suppress_tokens(task)

    assert whisper_tok.non_speech_ids() == reference.non_speech_tokens
    assert whisper_tok.suppress_ids("-1") == openai_suppress("-1")
    assert whisper_tok.suppress_ids() == openai_suppress("-1")  # no generation_config.json
    assert whisper_tok.suppress_ids("11,13") == openai_suppress("11,13")
    assert whisper_tok.suppress_ids([-1, 5]) == openai_suppress([-1, 5])
    assert whisper_tok.suppress_ids([]) == openai_suppress([])
    assert whisper_tok.suppress_ids("") == openai_suppress([])  # openai-whisper fails on ""
    assert whisper_tok.eot_id not in whisper_tok.suppress_ids()
    assert whisper_tok.begin_suppress_ids() == (*reference.encode(" "), reference.eot)


def test_whisper_reads_generation_config(whisper_folder, tmp_path):
    (tmp_path / "tokenizer.json").write_bytes((whisper_folder / "tokenizer.json").read_bytes())
    gen = {"suppress_tokens": [1, 2, 7], "begin_suppress_tokens": [220, 50257]}
    (tmp_path / "generation_config.json").write_text(json.dumps(gen))
    tok = WhisperTokenizer.from_folder(tmp_path)
    specials = [50258, 50358, 50359, 50360, 50361, 50362]  # sot, tasks, lm, prev, nospeech
    assert tok.suppress_ids() == tuple(sorted([1, 2, 7, *specials]))
    assert tok.suppress_ids("-1") == tok.suppress_ids([-1])  # an explicit list wins
    assert tok.begin_suppress_ids() == (220, 50257)
    (tmp_path / "generation_config.json").write_text(json.dumps({"suppress_tokens": []}))
    tok = WhisperTokenizer.from_folder(tmp_path)  # an empty checkpoint list is kept empty
    assert tok.suppress_ids() == tuple(specials)
    assert tok.begin_suppress_ids() == (220, 50257)  # absent: openai-whisper's SuppressBlank


def test_whisper_missing_tokenizer_file_is_named(tmp_path):
    with pytest.raises(JaxseqError, match=f"{tmp_path}.* has no tokenizer.json"):
        WhisperTokenizer.from_folder(tmp_path)
