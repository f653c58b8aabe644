"""The prepared-record schema: one msgpack-encoded dict per ArrayRecord entry.

Fields:
  id:         str, unique within the split
  text:       str, normalized transcript (see jaxseq.text.normalize)
  features:   float16 [num_frames, n_mels], Whisper-style log-mel (stored as float16 to halve disk)
  num_frames: int
  label:      str, optional class label ("" when absent)
  speaker:    str, optional speaker/voice name ("" when absent)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flax import serialization


def encode_record(
    id: str,
    text: str,
    features: np.ndarray,
    label: str = "",
    speaker: str = "",
) -> bytes:
    """Serializes one utterance. `features` is [num_frames, n_mels]."""
    features = np.asarray(features, dtype=np.float16)
    return serialization.msgpack_serialize(
        {
            "id": id,
            "text": text,
            "features": features,
            "num_frames": int(features.shape[0]),
            "label": label,
            "speaker": speaker,
        }
    )


def decode_record(raw: bytes) -> dict[str, Any]:
    """Inverse of `encode_record`; `features` comes back as float16 [num_frames, n_mels]."""
    return serialization.msgpack_restore(raw)


def shard_name(split: str, index: int, num_shards: int) -> str:
    """File name of shard `index` of a split, e.g. `train-00001-of-00004.array_record`."""
    return f"{split}-{index:05d}-of-{num_shards:05d}.array_record"


def index_name(split: str) -> str:
    """File name of a split's index (see `write_index`)."""
    return f"{split}.index.npz"


def write_index(path, ids, num_frames, text_lengths) -> None:
    """Writes a split's index: one row per record, in shard order then record order.

    The pipeline reads it to filter and bucket by length without touching the features.
    Arrays: ids str [N], num_frames int32 [N], text_lengths int32 [N].
    """
    np.savez(
        path,
        ids=np.asarray(ids, dtype=str),
        num_frames=np.asarray(num_frames, dtype=np.int32),
        text_lengths=np.asarray(text_lengths, dtype=np.int32),
    )


def read_index(path) -> dict[str, np.ndarray]:
    """Inverse of `write_index`: {"ids", "num_frames", "text_lengths"}."""
    with np.load(path) as z:
        return {k: z[k] for k in ("ids", "num_frames", "text_lengths")}
