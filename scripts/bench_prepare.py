"""Throughput of `jaxseq prepare`: the local engine (a process pool) and the Beam engine (the
DirectRunner, multi_processing), on the train split of a synthesized corpus, and the local
engine in-process (one core, no worker start-up: the per-item work alone). All make the same
shards (checked). Prints a markdown table for docs/data.md.

  .venv/bin/python scripts/bench_prepare.py [--corpus DIR | --utterances 1000] [--workers 2]

Without --corpus it synthesizes `--utterances` training utterances (`jaxseq synth`'s digits
corpus) into a temporary folder first. Run it on an otherwise idle machine: the figures are
per core of the cores given to the engines (`--workers`).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from jaxseq.config import PrepareConfig, SynthConfig
from jaxseq.data.prepare import prepare_split
from jaxseq.data.synth import synthesize_corpus


def _shards(out: Path) -> dict[str, bytes]:
    summary = json.loads((out / "dataset.json").read_text())["splits"]["train"]
    return {name: (out / name).read_bytes() for name in summary["shards"]}


def bench(manifest: Path, root: Path, workers: int) -> list[dict]:
    """Prepares the manifest once per engine (into fresh folders); one row per engine."""
    cfg = PrepareConfig(num_shards=8, max_bad_fraction=1.0)
    runs = {  # engine: (workers, prepare_split's engine arguments)
        "local, in-process": (1, {}),  # the per-item work alone, no worker start-up
        "local": (workers, {}),
        "beam (DirectRunner)": (workers, {"runner": "beam"}),
    }
    rows, outputs = [], []
    # A first tiny run warms librosa's numba cache, which both engines' workers then load.
    warm = root / "warm.jsonl"
    with open(manifest) as f:
        lines = [json.loads(next(f)) for _ in range(2)]
    for line in lines:
        line["audio"] = str(manifest.resolve().parent / line["audio"])
    warm.write_text("".join(json.dumps(line) + "\n" for line in lines))
    prepare_split(f"manifest:{warm}", root / "warm", "warm", cfg, num_workers=1, progress=False)
    for engine, (n, kwargs) in runs.items():
        out = root / engine.replace(" ", "_")
        start = time.perf_counter()
        summary = prepare_split(
            f"manifest:{manifest}", out, "train", cfg, num_workers=n, progress=False, **kwargs
        )
        seconds = time.perf_counter() - start
        core_hours = seconds * n / 3600
        rows.append(
            {
                "engine": engine,
                "processes": n,
                "utterances": summary["num_utterances"],
                "audio h": summary["hours"],
                "wall s": round(seconds, 1),
                "utt/s": round(summary["num_utterances"] / seconds, 1),
                "audio h per core-hour": round(summary["hours"] / core_hours, 1),
            }
        )
        outputs.append(_shards(out))
    assert all(o == outputs[0] for o in outputs), "the engines' shards differ"
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, help="a `jaxseq synth` output folder")
    p.add_argument("--utterances", type=int, default=1000, help="to synthesize without --corpus")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        root = Path(tmp)
        corpus = a.corpus
        if corpus is None:
            corpus = root / "corpus"
            synth = SynthConfig(num_train=a.utterances, num_valid=1, num_test=1)
            synthesize_corpus(corpus, synth, num_workers=a.workers, progress=False)
        rows = bench(corpus / "train" / "manifest.jsonl", root, a.workers)
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + "---|" * len(rows[0]))
    for row in rows:
        print("| " + " | ".join(str(v) for v in row.values()) + " |")


if __name__ == "__main__":
    main()
