"""The prepared-record schema: one msgpack-encoded dict per ArrayRecord entry.

Fields:
  id:         str, unique within the split
  text:       str, normalized transcript (see jaxseq.text.normalize)
  features:   float16 [num_frames, n_mels], Whisper-style log-mel (stored as float16 to halve disk)
  num_frames: int
  label:      str, the class label, or list[str], the labels of a multi-label item ("" when
              absent)
  speaker:    str, optional speaker/voice name ("" when absent)
  segments:   list of [start_frame, end_frame, label] (int, int, str): per-frame labels, frames
              [start_frame, end_frame) of `features` carry `label`; sorted, not overlapping,
              0 <= start_frame < end_frame <= num_frames (see `segments_to_frames`). Records
              written before segments existed lack the key: `decode_record` gives [] then.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from flax import serialization


def encode_record(
    id: str,
    text: str,
    features: np.ndarray,
    label: str | list[str] = "",
    speaker: str = "",
    segments: Sequence[tuple[int, int, str]] = (),
) -> bytes:
    """Serializes one utterance. `features` is [num_frames, n_mels]; `segments` are in frames."""
    features = np.asarray(features, dtype=np.float16)
    return serialization.msgpack_serialize(
        {
            "id": id,
            "text": text,
            "features": features,
            "num_frames": int(features.shape[0]),
            "label": label if isinstance(label, str) else list(label),
            "speaker": speaker,
            "segments": [[int(a), int(b), str(name)] for a, b, name in segments],
        }
    )


def decode_record(raw: bytes) -> dict[str, Any]:
    """Inverse of `encode_record`; `features` comes back as float16 [num_frames, n_mels].

    A record written before `segments` existed gets `segments` = [].
    """
    record = serialization.msgpack_restore(raw)
    record.setdefault("segments", [])
    return record


def segments_to_frames(
    segments: Sequence[dict[str, Any]], sample_rate: int, hop_length: int, num_frames: int
) -> list[list]:
    """Labelled spans in seconds -> [start_frame, end_frame, label] at the frame rate.

    frame = round(seconds * sample_rate / hop_length) (Python's round: halves to even); the end
    is exclusive and clipped to `num_frames`; spans left empty by rounding or clipping are
    dropped.

    Args:
      segments: [{"start": seconds, "end": seconds, "label": str}], sorted and not overlapping
        (as `jaxseq.data.sources.parse_segments` returns them).
      sample_rate, hop_length: the frontend's; `num_frames`: the item's frame count.
    """
    frames = []
    for seg in segments:
        start = min(round(seg["start"] * sample_rate / hop_length), num_frames)
        end = min(round(seg["end"] * sample_rate / hop_length), num_frames)
        if start < end:
            frames.append([start, end, seg["label"]])
    return frames


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
