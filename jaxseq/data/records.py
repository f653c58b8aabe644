"""The prepared-record schema: one msgpack-encoded dict per ArrayRecord entry.

The encoding is flax.serialization's msgpack format (an array is the extension type 1 holding
msgpack's (shape, dtype name, C-order bytes)), written with msgpack alone so that a `prepare`
worker never imports JAX; tests/test_records.py checks the bytes against flax's.

Fields:
  id:         str, unique within the split
  text:       str, normalized transcript (see jaxseq.text.normalize)
  features:   float16 [num_frames, n_mels], Whisper-style log-mel (stored as float16 to halve disk);
              in a waveform dataset (frontend kind "waveform"), the audio itself: int16
              [num_samples] (x 32768, as 16-bit PCM) or float16 [num_samples] (`waveform_samples`;
              read back with `record_waveform`)
  num_frames: int (samples, in a waveform dataset)
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

import msgpack
import numpy as np

_ARRAY = 1  # flax.serialization's msgpack extension code for an ndarray


def encode_record(
    id: str,
    text: str,
    features: np.ndarray,
    label: str | list[str] = "",
    speaker: str = "",
    segments: Sequence[tuple[int, int, str]] = (),
) -> bytes:
    """Serializes one utterance. `features` is [num_frames, n_mels] (or a waveform's int16 or
    float16 [num_samples]); `segments` are in frames (samples). int16 is kept, the rest stored
    as float16."""
    features = np.asarray(features)
    if features.dtype != np.int16:
        features = features.astype(np.float16)
    fields = {
        "id": id,
        "text": text,
        "features": features,
        "num_frames": int(features.shape[0]),
        "label": label if isinstance(label, str) else list(label),
        "speaker": speaker,
        "segments": [[int(a), int(b), str(name)] for a, b, name in segments],
    }
    # Keys sorted, as flax's serializer (a pytree map) orders them: the same bytes as before.
    return msgpack.packb(dict(sorted(fields.items())), default=_pack_array, strict_types=True)


def _pack_array(x: Any) -> msgpack.ExtType:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"a record holds a {type(x).__name__}, which it cannot encode")
    return msgpack.ExtType(_ARRAY, msgpack.packb((x.shape, x.dtype.name, x.tobytes("C"))))


def _unpack_array(code: int, data: bytes) -> Any:
    if code != _ARRAY:
        return msgpack.ExtType(code, data)
    shape, dtype, buffer = msgpack.unpackb(data, raw=True)
    return np.frombuffer(buffer, dtype=np.dtype(dtype)).reshape(shape)


def decode_record(raw: bytes) -> dict[str, Any]:
    """Inverse of `encode_record`; `features` comes back as float16 [num_frames, n_mels].

    A record written before `segments` existed gets `segments` = [].
    """
    record = msgpack.unpackb(raw, ext_hook=_unpack_array, raw=False, strict_map_key=False)
    record.setdefault("segments", [])
    return record


PCM_SCALE = 32768.0  # int16 sample k stands for k / 32768, as soundfile reads 16-bit PCM


def waveform_samples(audio: np.ndarray, dtype: str) -> np.ndarray:
    """What a waveform record stores of float `audio` [num_samples] (in [-1, 1]): "int16",
    round(audio x 32768) clipped to the int16 range (16-bit PCM audio comes back exactly), or
    "float16"."""
    if dtype == "int16":
        scaled = np.round(np.asarray(audio, np.float64) * PCM_SCALE)
        return np.clip(scaled, -PCM_SCALE, PCM_SCALE - 1).astype(np.int16)
    if dtype == "float16":
        return np.asarray(audio, np.float16)
    raise ValueError(f"waveform dtype {dtype!r}: choose int16 or float16")


def record_waveform(features: np.ndarray) -> np.ndarray:
    """float32 [num_samples] audio of a waveform record's `features` (inverse of
    `waveform_samples`, up to its rounding)."""
    if features.dtype == np.int16:
        return features.astype(np.float32) / np.float32(PCM_SCALE)
    return features.astype(np.float32)


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
