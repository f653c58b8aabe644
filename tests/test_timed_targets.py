"""Timestamp tokens for seq2seq models trained here (`model.timestamps`): where speech is in an
utterance (against librosa's trim of the waveform), the timed targets of joined utterances
(known answers), the training windows of `data.pack_utterances`, the tokenizer's timestamp
tokens, and a tiny timed model through training and sequential long-form transcription, whose
first window equals the chunked decoding of the same audio."""

from __future__ import annotations

import json

import librosa
import numpy as np
import pytest
import soundfile as sf

from jaxseq import api, cli
from jaxseq.audio.frontend import log_mel_numpy
from jaxseq.config import ConfigError, DataConfig, load_config
from jaxseq.data.packing import MAX_GAP_FRAMES, NO_RECORD, plan_windows
from jaxseq.data.pipeline import load_dataset_info, make_train_iterator
from jaxseq.data.reading import Split
from jaxseq.errors import JaxseqError
from jaxseq.inference.word_timing import split_to_word_tokens
from jaxseq.tasks.seq2seq import Seq2SeqTask
from jaxseq.text.bpe import BpeTokenizer, train_bpe
from jaxseq.text.timed_targets import speech_span, timed_window
from tests.conftest import REPO

CONFIG = REPO / "configs" / "seq2seq_tiny.yaml"
TIMED = ["model.timestamps=true", "data.pack_utterances=3", "data.max_label_length=48"]
SILENCE, SPEECH = -0.5, 1.5  # log-mel feature values: 80 dB apart


def test_speech_spans_match_librosa_trim_of_the_waveform(tiny_dataset):
    """The first and last speech frames from the log-mel are where `librosa.effects.trim`
    (40 dB, the same 25 ms frames and 10 ms hop) finds them in the waveform, within a frame."""
    frontend = load_config(CONFIG).prepare.frontend
    wavs = sorted((tiny_dataset.parent / "audio" / "train" / "wav").glob("*.wav"))[:12]
    for wav in wavs:
        audio, rate = sf.read(wav, dtype="float32")
        start, end = speech_span(log_mel_numpy(audio, frontend))
        _, (first, last) = librosa.effects.trim(audio, top_db=40, frame_length=400, hop_length=160)
        assert abs(start * 160 - first) <= 160 and abs(end * 160 - last) <= 160, wav.name


def _record(text: str, frames: int, speech: tuple[int, int]) -> dict:
    features = np.full((frames, 4), SILENCE, np.float32)
    features[speech[0] : speech[1]] = SPEECH
    return {"text": text, "features": features}


RECORDS = [_record("a", 30, (6, 20)), _record("b c", 40, (8, 34)), _record("d", 20, (2, 18))]
TEXT_IDS = {"a": [7], "b c": [8, 9], "d": [10]}
BEGIN = 100  # <|0.00|>; a timestamp per 2 frames


@pytest.mark.parametrize(
    ("frames", "want"),
    [
        # whole: each utterance's speech between its start and end (frames / 2)
        (90, [103, 7, 110, 119, 8, 9, 132, 136, 10, 144]),
        # the second utterance's speech ends past the cut: its start alone
        (60, [103, 7, 110, 119]),
        # the cut falls before the second utterance's speech starts: nothing of it
        (35, [103, 7, 110]),
        # cut inside the first
        (15, [103]),
    ],
)
def test_timed_window_known_answers(frames, want):
    assert [speech_span(r["features"]) for r in RECORDS] == [(6, 20), (8, 34), (2, 18)]
    got = timed_window(RECORDS, frames, lambda t: np.asarray(TEXT_IDS[t]), BEGIN, 100)
    assert got.tolist() == want
    # Times past the last timestamp token are written as the last.
    late = timed_window(RECORDS, 90, lambda t: np.asarray(TEXT_IDS[t]), BEGIN, 20)
    assert late.tolist() == [103, 7, 110, 119, 8, 9, 119, 119, 10, 119]


def test_tokenizer_timestamp_tokens_round_trip(tmp_path):
    base = train_bpe(["one two", "three four five", "six"], 40)
    tok = base.with_timestamps(11)
    assert (tok.timestamp_begin, tok.num_timestamps, tok.size) == (base.size, 11, base.size + 11)
    assert [tok.token(tok.timestamp_begin + i) for i in (0, 3, 10)] == [
        "<|0.00|>",
        "<|0.06|>",
        "<|0.20|>",
    ]
    assert tok.text_ids == (4, base.size) and base.text_ids == (4, base.size)
    ids = tok.encode("three four")
    assert tok.decode([tok.timestamp_begin + 2, *ids, tok.timestamp_begin + 9]) == "three four"
    loaded = BpeTokenizer.load(tok.save(tmp_path))
    assert (loaded.timestamp_begin, loaded.num_timestamps) == (base.size, 11)
    assert base.timestamp_begin is None and base.num_timestamps == 0
    record = _record("six", 24, (4, 16))
    assert loaded.encode_record(record).tolist() == [
        base.size + 2,
        *base.encode("six").tolist(),
        base.size + 8,
    ]
    assert base.encode_record(record).tolist() == base.encode("six").tolist()
    with pytest.raises(JaxseqError, match="already has timestamp tokens"):
        tok.with_timestamps(3)
    with pytest.raises(JaxseqError, match="model.timestamps=true"):
        base.encode_window([record], 24)
    # Word times split a BPE transcript at its metaspace pieces, timestamps being words apart.
    words, word_tokens = split_to_word_tokens(tok, [*ids, tok.eot_id])
    assert words == [" three", " four", ""] and sum(word_tokens, []) == [*ids, tok.eot_id]


def test_windows_follow_the_epoch_order_and_fit_their_limits():
    rng = np.random.default_rng(0)
    frames = rng.integers(100, 400, 50)
    labels = rng.integers(4, 20, 50)
    windows, gaps, lengths = plan_windows(frames, labels, 3, 512, 40, seed=1, epoch=0)
    again = plan_windows(frames, labels, 3, 512, 40, seed=1, epoch=0)
    other = plan_windows(frames, labels, 3, 512, 40, seed=1, epoch=1)
    assert all(np.array_equal(a, b) for a, b in zip((windows, gaps, lengths), again, strict=True))
    assert not np.array_equal(windows, other[0])
    assert (windows[:, 0] == np.arange(50)).all()  # every item starts a window
    used = windows != NO_RECORD
    assert (used[:, :-1] >= used[:, 1:]).all()  # filled from the left
    follower = {}  # the item after each one, the same in every window of the epoch
    for row, gap, length in zip(windows, gaps, lengths, strict=True):
        items = row[row != NO_RECORD]
        for a, b in zip(items, items[1:], strict=False):
            assert follower.setdefault(a, b) == b
        assert labels[items].sum() <= 40 and len(set(items)) == len(items)
        assert (gap <= MAX_GAP_FRAMES).all() and (gap[row == NO_RECORD] == 0).all()
        assert length == min(frames[items].sum() + gap.sum(), 512)
        # An item is only added while the window is not full yet.
        assert (np.cumsum(frames[items] + gap[: len(items)])[:-1] < 512).all()
    assert used.sum(1).max() == 3 and (lengths == 512).any()  # windows of 3, and cut ones


def test_packed_batches_join_the_planned_records(tiny_dataset):
    cfg = load_config(CONFIG, [f"data.dataset={tiny_dataset}", "data.buckets=[512]", *TIMED])
    info = load_dataset_info(tiny_dataset)
    task = Seq2SeqTask.from_dataset(cfg, info)
    data = make_train_iterator(
        tiny_dataset,
        "train",
        cfg.data,
        task.tokenizer,
        seed=0,
        label_lengths=task.label_lengths(tiny_dataset, info, "train"),
    )
    element = data._plan[0]
    batch = next(data)
    split = Split(tiny_dataset, "train")
    joined = 0
    for r, (row, gaps) in enumerate(zip(element["records"], element["gaps"], strict=True)):
        records = split.read(row[row != NO_RECORD])
        pieces = [
            np.repeat(rec["features"][:1], g, 0) for rec, g in zip(records, gaps, strict=False)
        ]
        features = np.concatenate(
            [x for p, rec in zip(pieces, records, strict=True) for x in (p, rec["features"])]
        )
        n = int(batch["feature_lengths"][r])
        assert n == min(len(features), 512)
        np.testing.assert_array_equal(batch["features"][r, :n], features[:n])
        ids = batch["labels"][r, : batch["label_lengths"][r]]
        stamps = ids >= task.tokenizer.timestamp_begin
        assert task.tokenizer.decode(ids) == " ".join(
            rec["text"] for rec in records[: stamps.sum() // 2]
        )
        joined += len(records) > 1
    assert joined > 0


def test_pack_utterances_needs_timed_targets(tiny_dataset):
    cfg = load_config(CONFIG, [f"data.dataset={tiny_dataset}", "data.pack_utterances=2"])
    with pytest.raises(ValueError, match="model.timestamps=true"):
        make_train_iterator(tiny_dataset, "train", cfg.data, object(), seed=0)
    with pytest.raises(ConfigError, match="data.pack_utterances"):
        load_config(CONFIG, ["data.pack_utterances=0"])
    with pytest.raises(ConfigError, match="eval.longform"):
        load_config(CONFIG, ["eval.longform=sequential"])
    with pytest.raises(ConfigError, match="model.timestamps"):
        load_config(REPO / "configs" / "ctc_tiny.yaml", ["model.timestamps=true"])
    assert DataConfig().pack_utterances == 1


def test_a_timed_model_trains_and_transcribes_sequentially(tiny_dataset, tmp_path, capsys):
    workdir = tmp_path / "run"
    overrides = [f"data.dataset={tiny_dataset}", "data.buckets=[512]", *TIMED]
    cli.main(["train", "--workdir", str(workdir), "--config", str(CONFIG), *overrides])
    assert json.loads((workdir / "tokenizer.json").read_text())["added_tokens"][-1]["content"] == (
        "<|5.12|>"
    )
    wavs = sorted((tiny_dataset.parent / "audio" / "test" / "wav").glob("*.wav"))[:3]
    waves = [sf.read(w, dtype="float32")[0] for w in wavs]
    recording = tmp_path / "joined.wav"
    sf.write(recording, np.concatenate([np.concatenate([w, np.zeros(8000)]) for w in waves]), 16000)
    capsys.readouterr()

    chunked = api.load(workdir)
    # Greedy alone: a model trained 10 steps fails every fallback threshold.
    greedy = ["eval.temperatures=[0.0]", "eval.logprob_threshold=null"]
    sequential = api.load(workdir, overrides=["eval.longform=sequential", *greedy])
    short = [str(wavs[0])]  # within one window: the same features, masks and greedy search
    want = chunked.transcribe(short, return_timestamps=True)[0]["segments"]
    got = sequential.transcribe(short, return_timestamps=True)[0]["segments"]
    seconds = len(waves[0]) / 16000  # chunked decoding moves times past the end to it

    def clamp(t):
        return round(min(t, seconds), 2)

    # The last segment may be open (no closing timestamp): chunked decoding keeps its text,
    # sequential decoding leaves it to a next window (past this recording's end).
    closed = min(len(got), len(want)) - 1
    assert closed >= 1
    assert [(clamp(s["start"]), clamp(s["end"]), s["text"]) for s in got[:closed]] == [
        (s["start"], s["end"], s["text"]) for s in want[:closed]
    ]

    out = tmp_path / "out"
    cli.main(
        ["transcribe", "--workdir", str(workdir), str(recording), "--output-format", "json"]
        + ["--output-dir", str(out), "--set", "eval.longform=sequential"]
        + [x for o in greedy for x in ("--set", o)]
    )
    result = json.loads((out / "joined.json").read_text())
    seconds = sum(len(w) + 8000 for w in waves) / 16000
    for segment in result["segments"]:
        assert 0 <= segment["start"] <= segment["end"] <= seconds + 1e-6
        for word in segment["words"]:
            assert segment["start"] - 1e-6 <= word["start"] <= word["end"] <= segment["end"] + 1e-6
    starts = [s["start"] for s in result["segments"]]
    assert starts == sorted(starts)
