"""A transcription job over a manifest (`jaxseq transcribe --manifest`): sharded over the
processes, resumable, every unreadable file listed with its reason, and a WER report where the
manifest has transcripts.

OUT_DIR/results.jsonl gets one line per manifest item, in manifest order: {"id", "audio",
"seconds", "text"} (+ "ref" where the manifest has text, + "segments" with timestamps), or
{"id", "audio", "error"} for a file that could not be read. Items go in groups of
`batch_size` per process: each process reads and decodes its contiguous part of a group, and
process 0 appends the group's lines once all are gathered. A rerun skips the ids already in
the file (a torn last line, from a job killed while writing, is dropped and redone), so an
interrupted job, rerun, ends with the same file as one that ran straight through.
OUT_DIR/report.json scores the transcribed items that have a reference.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax
from jax.experimental import multihost_utils
from tqdm import tqdm

from jaxseq.audio.io import AudioError, load_audio
from jaxseq.data.sources import ManifestSource
from jaxseq.evaluation.scoring import error_counts, error_rates
from jaxseq.evaluation.split import gather_records
from jaxseq.inference.transcribe import transcribe_waveforms
from jaxseq.train.trained import Trained

RESULTS, REPORT = "results.jsonl", "report.json"


def _repair(path: Path) -> None:
    """Drops a torn last line (a job killed while writing) from a results file."""
    if path.is_file():
        raw = path.read_bytes()
        complete = raw[: raw.rfind(b"\n") + 1]
        if len(complete) < len(raw):
            path.write_bytes(complete)


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _record(
    item: dict[str, Any], wave_or_error: Any, output: Any, rate: int, timestamps: bool
) -> dict:
    record: dict[str, Any] = {"id": item["id"], "audio": item["audio_path"]}
    if isinstance(wave_or_error, str):
        return {**record, "error": wave_or_error}
    record["seconds"] = round(len(wave_or_error) / rate, 3)
    record["text"] = output["text"]
    if output["language"] is not None:  # a Whisper model's, given or detected
        record["language"] = output["language"]
    if timestamps:
        record["segments"] = output["segments"]
    if item["text"] is not None:
        record["ref"] = item["text"]
    return record


def transcribe_manifest(
    trained: Trained,
    manifest: str | Path,
    out_dir: str | Path,
    *,
    batch_size: int = 32,
    return_timestamps: bool | str = False,
    **options: Any,
) -> dict[str, Any]:
    """Transcribes every item of `manifest` not yet in OUT_DIR/results.jsonl and writes the
    report; returns it. `options`: decoder, beam_size, chunk_seconds, stride_seconds, vad (see
    `transcribe_waveforms`). A collective: call on every process, with the same arguments
    (OUT_DIR on storage they share)."""
    out_dir = Path(out_dir)
    source = ManifestSource(manifest, require_text=False)
    results = out_dir / RESULTS
    p, count = jax.process_index(), jax.process_count()
    if p == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        _repair(results)
    if count > 1:  # every process then reads the same lines: the same groups to run
        multihost_utils.sync_global_devices("jaxseq manifest job: results repaired")
    done = {r["id"] for r in _lines(results)}
    todo = [source[i] for i in range(len(source)) if source[i]["id"] not in done]
    rate = trained.frontend.sample_rate
    group = batch_size * count
    t0, audio_seconds = time.time(), 0.0
    bar = tqdm(total=len(todo), desc="transcribe", disable=p != 0, dynamic_ncols=True)
    for start in range(0, len(todo), group):
        items = todo[start : start + group]
        share = -(-len(items) // count)
        mine = items[p * share : (p + 1) * share]
        loaded = []
        for item in mine:
            try:
                loaded.append(load_audio(item["audio_path"], rate))
            except AudioError as err:
                loaded.append(str(err))
        waves = [w for w in loaded if not isinstance(w, str)]
        outputs = iter(
            transcribe_waveforms(
                trained,
                waves,
                batch_size=batch_size,
                return_timestamps=return_timestamps,
                return_language=True,
                **options,
            )
        )
        records = [
            _record(
                item,
                w,
                None if isinstance(w, str) else next(outputs),
                rate,
                bool(return_timestamps),
            )
            for item, w in zip(mine, loaded, strict=True)
        ]
        gathered = gather_records(records, [len(records)])  # manifest order
        audio_seconds += sum(r.get("seconds", 0.0) for r in gathered)
        if p == 0:
            with results.open("a", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in gathered)
        bar.update(len(items))
        rtfx = audio_seconds / max(time.time() - t0, 1e-9)
        bar.set_postfix_str(f"{audio_seconds / 3600:.2f} h of audio, RTFx {rtfx:.1f}")
    bar.close()
    if p == 0:
        report = _report(trained, _lines(results), manifest)
        seconds = time.time() - t0
        report.update(
            new_items=len(todo),
            new_audio_seconds=round(audio_seconds, 3),
            wall_seconds=round(seconds, 3),
            rtfx=audio_seconds / max(seconds, 1e-9),  # this run's, loading and compiling included
        )
        (out_dir / REPORT).write_text(json.dumps(report, indent=1))
    if count > 1:
        multihost_utils.sync_global_devices("jaxseq manifest job: report written")
    return json.loads((out_dir / REPORT).read_text())


def _report(trained: Trained, records: list[dict], manifest: str | Path) -> dict[str, Any]:
    """Counts, the skipped files with their reasons, and WER/CER where there are references."""
    skipped = [
        {"id": r["id"], "audio": r["audio"], "reason": r["error"]} for r in records if "error" in r
    ]
    scored = [r for r in records if "ref" in r and "error" not in r]
    report: dict[str, Any] = {
        "manifest": str(manifest),
        "num_items": len(records),
        "num_transcribed": len(records) - len(skipped),
        "num_skipped": len(skipped),
        "skipped": skipped,
        "audio_seconds": round(sum(r.get("seconds", 0.0) for r in records), 3),
    }
    if scored:
        normalizer = trained.cfg.eval.normalizer
        counts = error_counts(
            [r["ref"] for r in scored], [r["text"] for r in scored], trained.text, normalizer
        )
        report.update(num_scored=len(scored), normalizer=normalizer, **error_rates(counts))
    return report
