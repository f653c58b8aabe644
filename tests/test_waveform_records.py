"""Waveform records (prepare.frontend.kind=waveform) and their batches: `prepare` stores the
samples (int16 exactly as 16-bit PCM, or float16) with num_frames counted in samples and the
usual bad-input accounting; the grain pipeline buckets them by samples and hands float32
[batch, samples] batches, each utterance normalized as Wav2Vec2FeatureExtractor does."""

import json

import numpy as np
import pytest
import soundfile as sf
from transformers import Wav2Vec2FeatureExtractor

from jaxseq.config import load_config
from jaxseq.data.eval_batches import make_eval_batches
from jaxseq.data.pipeline import make_train_iterator
from jaxseq.data.prepare import prepare_split
from jaxseq.data.reading import Split
from jaxseq.data.records import record_waveform, waveform_samples
from jaxseq.text.vocab import CharVocab

SECONDS = [0.5, 0.8, 1.1, 0.3, 0.9, 0.6]
RATE = 16000


def _manifest(folder):
    """Six 16-bit PCM clips of noise at different levels, one with a labelled segment, plus one
    unreadable file and one too long for training."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    lines = []
    for i, seconds in enumerate(SECONDS):
        wave = 0.1 * (i + 1) * rng.standard_normal(int(seconds * RATE)) + 0.05 * i
        sf.write(folder / f"{i}.wav", np.clip(wave, -1, 1), RATE, subtype="PCM_16")
        lines.append({"id": f"u{i}", "audio": f"{i}.wav", "text": "one two"[: 3 + i]})
    lines[0]["segments"] = [{"start": 0.1, "end": 0.25, "label": "a"}]
    (folder / "bad.wav").write_text("not audio")
    lines.append({"id": "bad", "audio": "bad.wav", "text": "one"})
    sf.write(folder / "long.wav", np.zeros(3 * RATE), RATE, subtype="PCM_16")
    lines.append({"id": "long", "audio": "long.wav", "text": "one"})
    (folder / "manifest.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return folder / "manifest.jsonl"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("waveform")
    manifest = _manifest(root / "audio")
    cfg = load_config(
        None,
        [
            "model.frontend=waveform",
            "prepare.frontend.kind=waveform",
            "prepare.max_seconds=2",
            "prepare.max_bad_fraction=0.5",
            "prepare.num_shards=2",
        ],
    )
    prepare_split(f"manifest:{manifest}", root / "prepared", "train", cfg.prepare, num_workers=1)
    return root


def test_records_hold_the_pcm_samples(dataset):
    info = json.loads((dataset / "prepared" / "dataset.json").read_text())
    assert info["frontend"]["kind"] == "waveform" and info["frontend"]["waveform_dtype"] == "int16"
    split = info["splits"]["train"]
    assert split["num_utterances"] == 6
    assert sorted(s["id"] for s in split["skipped"]) == ["bad", "long"]
    assert split["skipped_by_reason"] == {"bad_audio": 1, "too_long": 1}
    data = Split(dataset / "prepared", "train")
    records = {r["id"]: r for r in data.read(np.arange(len(data.index["ids"])))}
    for i, seconds in enumerate(SECONDS):
        pcm, _ = sf.read(dataset / "audio" / f"{i}.wav", dtype="int16")
        record = records[f"u{i}"]
        assert record["features"].dtype == np.int16
        np.testing.assert_array_equal(record["features"], pcm)  # bit-exact
        assert record["num_frames"] == len(pcm) == int(seconds * RATE)
        np.testing.assert_array_equal(record_waveform(record["features"]), pcm / 32768.0)
    ids = list(data.index["ids"])
    assert data.index["num_frames"][ids.index("u2")] == int(1.1 * RATE)  # samples, in the index
    assert records["u0"]["segments"] == [[1600, 4000, "a"]]  # in samples


def test_float16_and_int16_storage():
    audio = np.array([-1.0, -0.5, 0.0, 0.25, 32767 / 32768, 1.0], np.float32)
    pcm = waveform_samples(audio, "int16")
    np.testing.assert_array_equal(pcm, [-32768, -16384, 0, 8192, 32767, 32767])  # 1.0 clipped
    half = waveform_samples(audio, "float16")
    assert half.dtype == np.float16
    np.testing.assert_allclose(record_waveform(half), audio, atol=1e-3)


@pytest.mark.parametrize("normalize", [True, False])
def test_batches_are_normalized_waveforms(dataset, normalize):
    cfg = load_config(
        None,
        [
            "data.batch_size=3",
            "data.eval_batch_size=4",
            "data.buckets=[12000,20000]",
            f"data.normalize_waveform={normalize}",
        ],
    ).data
    vocab = CharVocab.from_charset("abcdefghijklmnopqrstuvwxyz' ")
    data = Split(dataset / "prepared", "train")
    by_id = {r["id"]: r for r in data.read(np.arange(len(data.index["ids"])))}
    extractor = Wav2Vec2FeatureExtractor(do_normalize=True)

    def expected(record):
        wave = record_waveform(record["features"])
        return extractor(wave, sampling_rate=RATE).input_values[0] if normalize else wave

    it = make_train_iterator(dataset / "prepared", "train", cfg, vocab, seed=0)
    assert [d["id"] for d in it.dropped] == []  # the longest, 17,600 samples, fits
    for _ in range(2):
        batch = next(it)
        assert batch["features"].dtype == np.float32 and batch["features"].ndim == 2
        assert batch["features"].shape[1] in (12000, 20000)
        for row, n in zip(batch["features"], batch["feature_lengths"], strict=True):
            assert not row[n:].any()  # padding stays 0
            matches = [r for r in by_id.values() if len(r["features"]) == n]
            np.testing.assert_allclose(row[:n], expected(matches[0]), atol=1e-5)
    it.close()
    batches = list(make_eval_batches(dataset / "prepared", "train", cfg, vocab))
    batch, ids, _ = batches[0]
    assert batch["features"].shape == (4, 20000) and batch["valid"].all()
    for row, n, item in zip(batch["features"], batch["feature_lengths"], ids, strict=True):
        np.testing.assert_allclose(row[:n], expected(by_id[item]), atol=1e-5)


def test_log_mel_augmentation_is_refused_on_waveforms(dataset):
    cfg = load_config(None, ["data.batch_size=2", "data.augment.vtlp=[0.9,1.1]"]).data
    vocab = CharVocab.from_charset("abcdefghijklmnopqrstuvwxyz' ")
    with pytest.raises(ValueError, match="holds waveforms, but data.augment"):
        make_train_iterator(dataset / "prepared", "train", cfg, vocab, seed=0)
