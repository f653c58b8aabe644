"""One source item of `jaxseq prepare` -> its record and its augmented copies' records, or the
reason each is skipped (runs in prepare's workers; jaxseq.data.prepare lists the reasons)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxseq.audio.frontend import log_mel_numpy
from jaxseq.audio.io import AudioError
from jaxseq.config import PrepareConfig
from jaxseq.data.prepare_augment import Copy, augment_copy
from jaxseq.data.records import encode_record, segments_to_frames, waveform_samples
from jaxseq.data.sources import load_item_audio
from jaxseq.text.normalize import normalize_text, unknown_characters


def _skip(item: dict[str, Any], kind: str, reason: str, copy: Copy | None = None) -> dict[str, Any]:
    audio = item.get("audio_path") or item["where"]
    if copy is None:
        return {"id": item["id"], "audio": audio, "kind": kind, "reason": reason}
    reason = f"augmented copy ({copy.spec.kind}): {reason}"
    return {"id": copy.id, "audio": audio, "kind": kind, "reason": reason, "copy_of": item["id"]}


def process_item(
    item: dict[str, Any], cfg: PrepareConfig, evaluation: bool
) -> list[dict[str, Any]]:
    """Turns one source item into its record and those of its augmented copies (the `Copy`s in
    `item["copies"]`, if any), or says why each is skipped.

    Returns:
      The item's result, then its copies' (none when the item itself is skipped). A kept one:
      {"id", "record": bytes, "num_frames", "text_length", "seconds", "label",
      "segment_frames": {label: frames}} (frames are samples with `cfg.frontend.kind`
      "waveform"); a skipped one: {"id", "audio", "kind", "reason"}. A copy's result also has
      "copy_of": the item's id.
    """
    text = "" if item["text"] is None else normalize_text(item["text"], cfg.text)
    if not text and item["text"] is not None:  # None: a labelled item without a transcript
        return [_skip(item, "empty_text", "the transcript is empty after normalization")]
    unknown = unknown_characters(text, cfg.text)
    if unknown:
        chars = " ".join(repr(c) for c in unknown)
        reason = f"characters outside prepare.text.charset: {chars} (in {text!r})"
        return [_skip(item, "unknown_characters", reason)]
    sample_rate = cfg.frontend.sample_rate
    try:
        audio = load_item_audio(item, sample_rate)
    except (AudioError, ValueError) as err:
        return [_skip(item, "bad_audio", str(err))]
    if not np.all(np.isfinite(audio)):
        return [_skip(item, "bad_audio", "the audio holds NaN or infinite samples")]
    results = [_record(item, text, audio, item.get("segments", ()), cfg, evaluation)]
    if "record" not in results[0]:
        return results
    for copy in item.get("copies", ()):
        try:
            copied, segments = augment_copy(audio, item, copy, sample_rate)
        except ValueError as err:  # babble noise without a loadable utterance
            results.append(_skip(item, "augment_failed", str(err), copy))
            continue
        results.append(_record(item, text, copied, segments, cfg, evaluation, copy))
    return results


def _record(
    item: dict[str, Any],
    text: str,
    audio: np.ndarray,
    segments: Sequence[dict[str, Any]],
    cfg: PrepareConfig,
    evaluation: bool,
    copy: Copy | None = None,
) -> dict[str, Any]:
    """The record of `item` (or of its augmented `copy`) from its float32 [num_samples] audio
    and segments in seconds, or why it is skipped (too long or too short). The record holds
    log-mel features or, with `cfg.frontend.kind` "waveform", the samples themselves (one
    frame per sample: num_frames and segments count samples)."""
    sample_rate = cfg.frontend.sample_rate
    seconds = audio.shape[0] / sample_rate
    if not evaluation and seconds > cfg.max_seconds:
        reason = f"{seconds:.2f} s is longer than prepare.max_seconds={cfg.max_seconds}"
        return _skip(item, "too_long", reason, copy)
    min_samples = max(cfg.frontend.n_fft // 2 + 1, cfg.frontend.hop_length)
    if audio.shape[0] < min_samples:
        reason = f"{audio.shape[0]} samples; at least {min_samples} are needed"
        return _skip(item, "too_short", reason, copy)
    if cfg.frontend.kind == "waveform":
        features = waveform_samples(audio, cfg.frontend.waveform_dtype)  # [num_samples]
        hop = 1
    else:
        features = log_mel_numpy(audio, cfg.frontend)  # [num_frames, n_mels]
        hop = cfg.frontend.hop_length
    num_frames = int(features.shape[0])
    frames = segments_to_frames(segments, sample_rate, hop, num_frames)
    item_id = item["id"] if copy is None else copy.id
    label = item.get("label", "")
    record = encode_record(
        item_id, text, features, label=label, speaker=item.get("speaker", ""), segments=frames
    )
    segment_frames: Counter[str] = Counter()
    for start, end, name in frames:
        segment_frames[name] += end - start
    result = {
        "id": item_id,
        "record": record,
        "num_frames": num_frames,
        "text_length": len(text),
        "seconds": float(seconds),
        "label": label,
        "segment_frames": dict(segment_frames),
    }
    return result if copy is None else {**result, "copy_of": item["id"]}
