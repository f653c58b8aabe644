"""`tfds:NAME:SPLIT` sources: a tiny TFDS dataset built offline (no TensorFlow) and prepared."""

from __future__ import annotations

import dataclasses
import json

import grain
import librosa
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxseq.audio.frontend import log_mel_numpy
from jaxseq.config import PrepareConfig
from jaxseq.data.prepare import prepare_split
from jaxseq.data.records import decode_record, index_name, read_index
from jaxseq.data.sources import SourceError, parse_source

TEXTS = ["one two", "three", "", "Four  Five six"]  # the empty one is skipped


def _audio(i: int) -> np.ndarray:
    """Float32 [samples] at 16 kHz: a tone plus noise, 0.5 s to 1.25 s long."""
    rng = np.random.default_rng(i)
    t = np.arange(8000 + 4000 * i) / 16000
    return (
        0.3 * np.sin(2 * np.pi * 300 * (i + 1) * t) + 0.05 * rng.standard_normal(t.size)
    ).astype(np.float32)


def _pcm(i: int) -> np.ndarray:
    """The same signal as int16 PCM at 8 kHz."""
    return (np.clip(_audio(i)[::2], -1, 1) * 32767).astype(np.int16)


class JaxseqToySpeech(tfds.core.GeneratorBasedBuilder):
    """Four utterances with float audio, int16 PCM audio, a transcript, an id and a label."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "audio": tfds.features.Tensor(shape=(None,), dtype=np.float32),
                    "pcm": tfds.features.Tensor(shape=(None,), dtype=np.int16),
                    "text": tfds.features.Text(),
                    "id": tfds.features.Text(),
                    "label": tfds.features.ClassLabel(names=["even", "odd"]),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i, text in enumerate(TEXTS):
            example = {"audio": _audio(i), "pcm": _pcm(i), "text": text, "id": f"utt{i}"}
            yield i, {**example, "label": i % 2}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tfds")
    JaxseqToySpeech(data_dir=path, file_format="array_record").download_and_prepare()
    return path


def _records(out, split="train"):
    shards = json.loads((out / "dataset.json").read_text())["splits"][split]["shards"]
    source = grain.sources.ArrayRecordDataSource([str(out / s) for s in shards])
    return [decode_record(source[i]) for i in range(len(source))]


def test_source_items(data_dir):
    cfg = PrepareConfig(tfds_data_dir=str(data_dir))
    source = parse_source("tfds:jaxseq_toy_speech:train", cfg)
    assert len(source) == 4
    items = {item["id"]: item for item in (source[i] for i in range(4))}  # TFDS shuffles
    item = items["utt3"]
    assert (item["text"], item["label"], item["sample_rate"]) == ("Four  Five six", "odd", 16000)
    np.testing.assert_array_equal(item["audio"], _audio(3))
    assert len(parse_source("tfds:jaxseq_toy_speech:train[:2]", cfg)) == 2


def test_prepare_float_audio(data_dir, tmp_path):
    cfg = PrepareConfig(tfds_data_dir=str(data_dir), num_shards=2, max_bad_fraction=0.5)
    out = tmp_path / "out"
    # In-process: a TFDS source is read in this process either way, and what a worker pool
    # would receive (dicts of arrays and strings) is what tests/test_prepare.py's 2-worker
    # preparation sends; spawned workers would only add their start-up (importing jaxseq).
    summary = prepare_split("tfds:jaxseq_toy_speech:train", out, "train", cfg, num_workers=1)
    assert summary["num_utterances"] == 3 and summary["skipped_by_reason"] == {"empty_text": 1}
    source = parse_source("tfds:jaxseq_toy_speech:train", cfg)
    order = [source[i]["id"] for i in range(len(source))]  # the dataset's (shuffled) order
    assert summary["skipped"][0]["audio"] == f"tfds:jaxseq_toy_speech:train[{order.index('utt2')}]"
    records = _records(out)
    kept = [i for i in order if i != "utt2"]
    assert [r["id"] for r in records] == kept
    assert list(read_index(out / index_name("train"))["ids"]) == kept
    for record in records:
        i = int(record["id"][3:])
        assert record["text"] == " ".join(TEXTS[i].lower().split())
        assert record["label"] == ["even", "odd"][i % 2]
        expected = log_mel_numpy(_audio(i), cfg.frontend)
        np.testing.assert_allclose(record["features"].astype(np.float32), expected, atol=2e-3)


def test_prepare_int_pcm_at_another_rate(data_dir, tmp_path):
    cfg = PrepareConfig(
        tfds_data_dir=str(data_dir),
        tfds_audio_key="pcm",
        tfds_sample_rate=8000,
        num_shards=1,
        max_bad_fraction=0.5,
    )
    prepare_split("tfds:jaxseq_toy_speech:train", tmp_path, "train", cfg, num_workers=1)
    record = {r["id"]: r for r in _records(tmp_path)}["utt0"]
    audio = librosa.resample(_pcm(0).astype(np.float32) / 32768, orig_sr=8000, target_sr=16000)
    expected = log_mel_numpy(audio, cfg.frontend)
    assert record["features"].shape == expected.shape == (50, 80)
    np.testing.assert_allclose(record["features"].astype(np.float32), expected, atol=2e-3)


def test_missing_key_and_dataset_are_clear_errors(data_dir):
    cfg = PrepareConfig(tfds_data_dir=str(data_dir), tfds_text_key="transcript")
    with pytest.raises(SourceError, match="no feature 'transcript'.*prepare.tfds_text_key"):
        parse_source("tfds:jaxseq_toy_speech:train", cfg)
    cfg = dataclasses.replace(cfg, tfds_text_key="text")
    with pytest.raises(SourceError, match="cannot open TFDS dataset 'no_such_dataset_xyz'"):
        parse_source("tfds:no_such_dataset_xyz:train", cfg)
