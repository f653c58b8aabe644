"""Transcription results written as files: txt, json, srt, vtt, tsv (openai-whisper's set).

A result is a dict in openai-whisper's layout, {"text", "language", "segments": [{"id",
"start", "end", "text", "words"?}]} with times in seconds, and each format is written the way
openai-whisper's `whisper.utils` writers write it, so that tools made for those files read
these: SRT cues numbered from 1 with `HH:MM:SS,mmm` times, WebVTT with a `WEBVTT` header and
`HH:MM:SS.mmm` times, TSV with integer milliseconds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

FORMATS = ("txt", "json", "srt", "vtt", "tsv")


def _clock(seconds: float, marker: str) -> str:
    """HH:MM:SS<marker>mmm."""
    ms = round(seconds * 1000)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{marker}{ms:03d}"


def _txt(result: dict[str, Any]) -> str:
    """One line per segment (the whole text on one line where there are no segments)."""
    lines = [s["text"].strip() for s in result["segments"]] or [result["text"].strip()]
    return "\n".join(lines) + "\n"


def _json(result: dict[str, Any]) -> str:
    return json.dumps(result, ensure_ascii=False, indent=1) + "\n"


def _srt(result: dict[str, Any]) -> str:
    cues = [
        f"{i}\n{_clock(s['start'], ',')} --> {_clock(s['end'], ',')}\n{s['text'].strip()}\n"
        for i, s in enumerate(result["segments"], start=1)
    ]
    return "\n".join(cues)


def _vtt(result: dict[str, Any]) -> str:
    cues = [
        f"{_clock(s['start'], '.')} --> {_clock(s['end'], '.')}\n{s['text'].strip()}\n"
        for s in result["segments"]
    ]
    return "\n".join(["WEBVTT\n", *cues])


def _tsv(result: dict[str, Any]) -> str:
    rows = ["start\tend\ttext"] + [
        f"{round(s['start'] * 1000)}\t{round(s['end'] * 1000)}\t"
        + s["text"].strip().replace("\t", " ")
        for s in result["segments"]
    ]
    return "\n".join(rows) + "\n"


_WRITERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "txt": _txt,
    "json": _json,
    "srt": _srt,
    "vtt": _vtt,
    "tsv": _tsv,
}


def render(result: dict[str, Any], fmt: str) -> str:
    """`result` as the text of a `fmt` file (one of FORMATS)."""
    return _WRITERS[fmt](result)


def write_result(result: dict[str, Any], out_dir: Path, name: str, formats: list[str]) -> list:
    """Writes OUT_DIR/NAME.<fmt> for each format; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out_dir / f"{name}.{fmt}"
        path.write_text(render(result, fmt), encoding="utf-8")
        paths.append(path)
    return paths
