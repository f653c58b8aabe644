"""Evaluation labels under Whisper's byte-level BPE, whose ids outnumber the characters of
non-Latin text (Georgian: ~2.5 ids a character; Egyptian hieroglyphs: 4): each eval batch's
labels are the full encoding, which openai-whisper's own tiktoken tokenizer gives."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from jaxseq.data.eval_batches import make_eval_batches, num_eval_batches
from jaxseq.text.whisper_tokenizer import WhisperTokenizer
from tests.test_pipeline import CFG, N_MELS, write_dataset

DATA = dataclasses.replace(CFG, eval_batch_size=4, max_label_length=16)
TEXTS = [
    "the quick brown fox",  # fewer ids (4) than characters
    "𓀀𓀁𓀂𓀃𓀄𓀅",  # 6 characters, 24 ids
    "ქართული ენა",  # 11 characters, 27 ids
    "one two",
    "𓀀𓀁𓀂𓀃𓀄𓀅𓀆𓀇𓀈𓀉𓀊𓀋",  # 12 characters, 48 ids: past the 16 of max_label_length
    "ქართული ენა და დამწერლობა",  # 25 characters, more than 32 ids
    "ǅǈǋ ɐɓɕɖ ʘʬʭ",
    "",
    "hello",
    "𓀀𓀁𓀂𓀃𓀄𓀅𓀆𓀇𓀈𓀉𓀊𓀋𓀌𓀍𓀎𓀏𓀐𓀑𓀒𓀓",  # 20 characters, 80 ids
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    rng = np.random.default_rng(0)
    items = [
        (f"utt-{i}", t, rng.normal(size=(int(rng.integers(3, 60)), N_MELS)))
        for i, t in enumerate(TEXTS)
    ]
    folder = tmp_path_factory.mktemp("bpe_eval")
    write_dataset(folder, "test", items, shards=2)
    return folder


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_labels_are_the_full_token_ids(dataset, whisper_folder, reference, process_count):
    tok = WhisperTokenizer.from_folder(whisper_folder)
    expected = {t: reference.encoding.encode(t) for t in TEXTS}  # openai-whisper (tiktoken)
    assert sum(len(expected[t]) > 2 * len(t) for t in TEXTS) >= 4  # the case under test
    per_process = [
        list(
            make_eval_batches(
                dataset, "test", DATA, tok, process_index=p, process_count=process_count
            )
        )
        for p in range(process_count)
    ]
    num = num_eval_batches(dataset, "test", DATA, process_count=process_count)
    assert [len(batches) for batches in per_process] == [num] * process_count == [3] * process_count
    seen = []
    for i in range(num):
        global_texts = TEXTS[i * DATA.eval_batch_size : (i + 1) * DATA.eval_batch_size]
        longest = max(len(expected[t]) for t in global_texts)
        width = max(DATA.max_label_length, math.ceil(longest / 32) * 32)
        for batches in per_process:
            batch, ids, texts = batches[i]
            assert batch["labels"].shape == (DATA.eval_batch_size // process_count, width)
            for r, text in enumerate(texts):
                n = batch["label_lengths"][r]
                if not batch["valid"][r]:
                    assert n == 0 and not batch["labels"][r].any()
                    continue
                seen.append(text)
                assert n == len(expected[text]), (text, n)
                assert batch["labels"][r, :n].tolist() == expected[text], text
                assert not batch["labels"][r, n:].any()
    assert seen == TEXTS
