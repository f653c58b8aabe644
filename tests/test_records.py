"""The record codec against flax.serialization, whose msgpack format it writes without JAX:
the same bytes for every kind of record, and records written by flax decode unchanged."""

from __future__ import annotations

import numpy as np
import pytest
from flax import serialization

from jaxseq.data.records import decode_record, encode_record

RNG = np.random.default_rng(0)
RECORDS = {
    "log-mel": dict(id="a", text="one two", features=RNG.normal(size=(37, 80))),
    "int16 waveform": dict(
        id="b", text="", features=RNG.integers(-32768, 32767, size=801).astype(np.int16)
    ),
    "float16 waveform, labels, speaker, segments": dict(
        id="c",
        text="x",
        features=RNG.normal(size=400).astype(np.float16),
        label=["en", "fr"],
        speaker="en-us+m3",
        segments=[(0, 120, "s1"), (150, 400, "s2")],
    ),
    "empty": dict(id="d", text="", features=np.zeros((0, 80), np.float32), label="neg"),
}


@pytest.mark.parametrize("kind", RECORDS)
def test_records_are_flax_msgpack_bytes(kind):
    fields = RECORDS[kind]
    raw = encode_record(**fields)
    flax_raw = serialization.msgpack_serialize(decode_record(raw))  # what encode_record wrote
    assert raw == flax_raw  # when it called flax (the fields are checked against the input)
    for record in (decode_record(raw), serialization.msgpack_restore(raw)):
        expected = np.asarray(fields["features"])
        want_dtype = np.int16 if expected.dtype == np.int16 else np.float16
        assert record["features"].dtype == want_dtype
        np.testing.assert_array_equal(record["features"], expected.astype(want_dtype))
        assert record["num_frames"] == expected.shape[0]
        assert (record["id"], record["text"]) == (fields["id"], fields["text"])
        label = fields.get("label", "")
        assert record["label"] == (label if isinstance(label, str) else list(label))
        assert record["speaker"] == fields.get("speaker", "")
        assert record["segments"] == [list(s) for s in fields.get("segments", ())]


def test_a_record_without_segments_decodes_with_none():
    raw = serialization.msgpack_serialize(
        {"id": "old", "text": "", "features": np.zeros((2, 3), np.float16), "num_frames": 2}
    )
    assert decode_record(raw)["segments"] == []
