"""Item sources for `jaxseq prepare`: where utterances come from before they become records.

A source is a random-access sequence of items (`len(source)`, `source[i]`), each a dict:

  id:          str, unique within the source
  text:        str, the raw transcript (normalized later by prepare); None for a manifest
               item with a label or segments and no "text"
  label:       str or list[str], the class label or, for multi-label items, the labels ("" when
               absent)
  speaker:     str, optional speaker name ("" when absent)
  segments:    list of {"start": float, "end": float, "label": str}, time spans in seconds with
               one label each, sorted by start and not overlapping (manifest sources only; a
               missing key means none)
  where:       str, where the item comes from (`manifest.jsonl:3`, `tfds:name:split[7]`)
  and either
  audio_path:  str, an audio file to load (manifest sources), or
  audio + sample_rate: an in-memory waveform [num_samples] or [num_samples, channels] and its
               rate in Hz (TFDS sources)

Sources are built from a spec string by `parse_source`:

  manifest:PATH.jsonl          one JSON object per line (see `ManifestSource`)
  tfds:NAME[/CONFIG]:SPLIT     any TFDS dataset with audio and text, read without TensorFlow
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from jaxseq.audio.io import load_audio, to_mono_resampled
from jaxseq.config import PrepareConfig
from jaxseq.errors import JaxseqError

SOURCE_FORMS = (
    "manifest:PATH.jsonl (a JSONL manifest; audio paths relative to its folder)",
    "tfds:NAME[/CONFIG]:SPLIT (a TFDS dataset; set prepare.tfds_data_dir for its data dir)",
)


class SourceError(JaxseqError, ValueError):
    """A source spec, manifest line or dataset is invalid; the message names it and a fix."""


_SEGMENT_EXAMPLE = '{"start": 0.5, "end": 1.2, "label": "speech"}'


def parse_label(value: Any) -> str | list[str]:
    """A manifest's `label`: a string (an int is taken as its digits), or a list of labels.

    Raises:
      ValueError: a value of another type, or a list holding a non-string, an empty string or
        a repeated label; the message names the field and the fix.
    """
    if value is None:
        return ""
    if isinstance(value, str | int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, list):
        raise ValueError(
            f'"label" must be a string, or a list of strings for several labels (got {value!r})'
        )
    for i, name in enumerate(value):
        if not isinstance(name, str) or not name:
            raise ValueError(
                f'"label"[{i}] is {name!r}; each label in the list must be a non-empty string'
            )
        if name in value[:i]:
            raise ValueError(f'"label"[{i}] repeats {name!r}; list each label once')
    return list(value)


def parse_segments(value: Any) -> list[dict[str, Any]]:
    """A manifest's `segments`: time spans with one label each, returned sorted by start.

    Each is `{"start": seconds, "end": seconds, "label": "name"}` with 0 <= start < end and a
    non-empty label; segments must not overlap (touching is fine), as each frame gets one label.

    Raises:
      ValueError: a malformed segment or an overlap; the message names the field and the fix.
    """
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f'"segments" must be a list like [{_SEGMENT_EXAMPLE}] (got {value!r})')
    segments = []
    for i, seg in enumerate(value):
        where = f'"segments"[{i}]'
        if not isinstance(seg, dict):
            raise ValueError(f"{where} must be an object like {_SEGMENT_EXAMPLE} (got {seg!r})")
        for key in ("start", "end"):
            t = seg.get(key)
            if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
                raise ValueError(f'{where}["{key}"] must be a number of seconds (got {t!r})')
        if not isinstance(seg.get("label"), str) or not seg["label"]:
            raise ValueError(
                f'{where}["label"] must be a non-empty string (got {seg.get("label")!r})'
            )
        start, end = float(seg["start"]), float(seg["end"])
        if not 0 <= start < end:
            raise ValueError(
                f"{where} has start {seg['start']} and end {seg['end']}; "
                "give 0 <= start < end, in seconds"
            )
        segments.append((start, end, seg["label"], i))
    segments.sort()
    for (_, end, _, a), (start, _, _, b) in itertools.pairwise(segments):
        if start < end:
            raise ValueError(
                f'"segments"[{b}] (start {start}) overlaps "segments"[{a}] (end {end}); '
                "segments must not overlap, as each frame gets one label"
            )
    return [{"start": start, "end": end, "label": label} for start, end, label, _ in segments]


def _line_error(path: Path, lineno: int, what: str) -> SourceError:
    return SourceError(f"{path}:{lineno}: {what}")


def parse_manifest_line(
    path: Path, line: str, lineno: int, root: Path, require_text: bool = True
) -> dict[str, Any]:
    """One manifest line -> its item (see the module docstring), `root` being the resolved
    folder of the manifest at `path`.

    Raises:
      SourceError: naming `path:lineno` and the fix (see `ManifestSource`).
    """
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise _line_error(
            path,
            lineno,
            f"not valid JSON ({err.msg} at column {err.colno}); each line must be "
            'one object like {"audio": "clips/a.wav", "text": "hello"}',
        ) from None
    if not isinstance(obj, dict):
        raise _line_error(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
    for key in ("audio", "text"):
        if key == "text" and "text" not in obj and (obj.get("label") or obj.get("segments")):
            continue  # a classification item needs no transcript (its text stays None)
        if key == "text" and "text" not in obj and not require_text:
            continue  # audio to transcribe (its text stays None)
        if not isinstance(obj.get(key), str):
            raise _line_error(path, lineno, f'"{key}" must be a string (got {obj.get(key)!r})')
    if not obj["audio"]:
        raise _line_error(path, lineno, '"audio" is empty; give the path of an audio file')
    for key in ("id", "speaker"):
        value = obj.get(key)
        if value is not None and not isinstance(value, str | int):
            raise _line_error(path, lineno, f'"{key}" must be a string (got {value!r})')
    try:
        label, segments = parse_label(obj.get("label")), parse_segments(obj.get("segments"))
    except ValueError as err:
        raise _line_error(path, lineno, str(err)) from None
    audio_path = root / obj["audio"]  # an absolute path stays as it is
    try:
        default_id = audio_path.relative_to(root).with_suffix("").as_posix()
    except ValueError:  # outside the manifest's folder
        default_id = audio_path.stem
    return {
        "id": str(obj.get("id", default_id)),
        "text": obj.get("text"),
        "label": label,
        "speaker": str(obj.get("speaker") or ""),
        "segments": segments,
        "where": f"{path}:{lineno}",
        "audio_path": str(audio_path),
    }


class ManifestSource:
    """A JSONL manifest: `{"audio": "clips/a.wav", "text": "hello"}` per line.

    Optional keys per line: `id` (default: the audio path relative to the manifest's folder
    without its extension, e.g. `clips/a`, or the file's stem for audio outside that folder),
    `speaker`, `label` (a string, or a list of strings for a multi-label item; see
    `parse_label`) and `segments` (labelled time spans in seconds; see `parse_segments`).
    Relative audio paths resolve against the manifest's folder. Blank lines are ignored. Ids
    must be unique. With `require_text=False` (audio to transcribe) `text` may be left out.

    Raises:
      SourceError: naming `path:line` for a line that is not a JSON object, lacks `audio` or
        `text`, has a value of the wrong type, a bad label or segment, or repeats an id.
    """

    def __init__(self, path: str | Path, *, require_text: bool = True):
        self.path = Path(path)
        self.require_text = require_text
        self.spec = f"manifest:{path}"
        if not self.path.is_file():
            raise SourceError(f"manifest not found: {self.path}. Check the path after 'manifest:'.")
        raw = self.path.read_bytes()
        self.fingerprint = f"manifest:{self.path.resolve()}:{hashlib.sha1(raw).hexdigest()}"
        root = self.path.resolve().parent
        self._items: list[dict[str, Any]] = []
        seen: dict[str, int] = {}
        for lineno, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            item = self._parse_line(line, lineno, root)
            if item["id"] in seen:
                raise self._error(
                    lineno,
                    f"duplicate id {item['id']!r} (first on line {seen[item['id']]}); "
                    'give each line a unique "id"',
                )
            seen[item["id"]] = lineno
            self._items.append(item)

    def _error(self, lineno: int, what: str) -> SourceError:
        return SourceError(f"{self.path}:{lineno}: {what}")

    def _parse_line(self, line: str, lineno: int, root: Path) -> dict[str, Any]:
        return parse_manifest_line(self.path, line, lineno, root, self.require_text)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return dict(self._items[index])


def _as_str(value: Any) -> str:
    """A TFDS text value (bytes, str, or a 0-d array of either) as str."""
    if isinstance(value, np.ndarray):
        value = value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


class TfdsSource:
    """A split of a TFDS dataset, read with `tfds.data_source` (random access, no TensorFlow).

    Each example needs an audio array under `cfg.tfds_audio_key` (float, or integer PCM;
    [samples] or [samples, channels]) and a transcript under `cfg.tfds_text_key` (str or bytes).
    The sample rate is the audio feature's own `sample_rate` if it declares one, else
    `cfg.tfds_sample_rate`. Optional `id`, `label` and `speaker` fields are used when present.
    """

    def __init__(self, name: str, split: str, cfg: PrepareConfig):
        import tensorflow_datasets as tfds  # slow import: only for TFDS sources

        self.name, self.split = name, split
        self.spec = f"tfds:{name}:{split}"
        self.audio_key, self.text_key = cfg.tfds_audio_key, cfg.tfds_text_key
        try:
            self._ds = tfds.data_source(name, split=split, data_dir=cfg.tfds_data_dir)
        except Exception as err:
            raise SourceError(
                f"cannot open TFDS dataset {name!r} split {split!r} "
                f"(data dir {cfg.tfds_data_dir or 'the TFDS default'}): "
                f"{type(err).__name__}: {err}. Check the name and split, and set "
                "prepare.tfds_data_dir to the folder the dataset was built into."
            ) from None
        features = self._ds.dataset_info.features
        for key, cfg_key in ((self.audio_key, "tfds_audio_key"), (self.text_key, "tfds_text_key")):
            if key not in features:
                raise SourceError(
                    f"TFDS dataset {name!r} has no feature {key!r} (it has {sorted(features)}); "
                    f"set prepare.{cfg_key} to the right one"
                )
        self.sample_rate = int(
            getattr(features[self.audio_key], "sample_rate", None) or cfg.tfds_sample_rate
        )
        # A FeaturesDict has no .get.
        self._label_feature = features["label"] if "label" in features else None  # noqa: SIM401
        self.fingerprint = f"{self.spec}:{cfg.tfds_data_dir}:{len(self._ds)}:{self.sample_rate}"

    def __len__(self) -> int:
        return len(self._ds)

    def _label(self, value: Any) -> str:
        if value is None:
            return ""
        if hasattr(self._label_feature, "int2str") and np.issubdtype(
            np.asarray(value).dtype, np.integer
        ):
            return self._label_feature.int2str(int(value))
        return _as_str(value)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self._ds[index]
        return {
            "id": _as_str(example["id"]) if "id" in example else f"{self.split}-{index:07d}",
            "text": _as_str(example[self.text_key]),
            "label": self._label(example.get("label")),
            "speaker": _as_str(example.get("speaker", "")),
            "where": f"{self.spec}[{index}]",
            "audio": np.asarray(example[self.audio_key]),
            "sample_rate": self.sample_rate,
        }


def parse_source(spec: str, cfg: PrepareConfig) -> ManifestSource | TfdsSource:
    """Builds the source named by `spec` (see the module docstring for the forms).

    Raises:
      SourceError: an unknown scheme or a malformed spec, listing the valid forms.
    """
    scheme, sep, rest = spec.partition(":")
    forms = "; ".join(SOURCE_FORMS)
    if scheme == "manifest" and sep and rest:
        return ManifestSource(rest)
    if scheme == "tfds" and sep:
        name, sep, split = rest.partition(":")  # a split may hold ':' (e.g. train[:100])
        if name and sep and split:
            return TfdsSource(name, split, cfg)
    raise SourceError(f"unknown or malformed source {spec!r}; valid forms: {forms}")


def load_item_audio(item: dict[str, Any], sample_rate: int) -> np.ndarray:
    """An item's audio as float32 mono [num_samples] at `sample_rate` (resampled as needed).

    Raises:
      AudioError: a missing, corrupt or empty audio file (jaxseq.audio.io).
      ValueError: an in-memory waveform of an unusable shape.
    """
    if "audio_path" in item:
        return load_audio(item["audio_path"], sample_rate)
    return to_mono_resampled(item["audio"], int(item["sample_rate"]), sample_rate)
