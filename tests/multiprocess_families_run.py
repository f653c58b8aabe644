"""Run by tests/test_multiprocess_families.py as 1 process (8 CPU devices) or 2 (4 each):
every family's evaluation of an uneven split, the tokenizer files each process ends with, and
a CTC transcription job over a manifest (OUT/job/).

The test split has 8 items and data.eval_batch_size is 16: one global batch, process 0
holding all 8 items and process 1 none (only fillers), the most uneven split there is.
Writes OUT/result.json (process 0) and OUT/tokenizers-p<i>/<family>/ (every process).

    python tests/multiprocess_families_run.py OUT DATASET ASR_WORKDIR [PORT NUM_PROCESSES ID]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from jaxseq.parallel.distributed import initialize

REPO = Path(__file__).resolve().parents[1]
FAMILIES = {
    "ctc": ("ctc_tiny.yaml", []),
    "seq2seq": ("seq2seq_tiny.yaml", []),
    "rnn": ("rnn_tiny.yaml", ["rnn.tokenizer=bpe", "model.bpe_vocab_size=40"]),
    "tts": ("tts_tiny.yaml", []),  # + tts.asr_workdir: intelligibility through a recognizer
    "classify": ("classify_tiny.yaml", []),
}
TIMING = ("decode_seconds", "synthesis_seconds", "real_time_factor")


def main(out: Path, dataset: str, asr_workdir: str) -> None:
    import jax

    from jaxseq.config import load_config
    from jaxseq.data.pipeline import load_dataset_info
    from jaxseq.evaluation.loop import evaluate_split
    from jaxseq.parallel.mesh import make_mesh
    from jaxseq.tasks.registry import build_task
    from jaxseq.train.optimizer import make_optimizer
    from jaxseq.train.state import create_train_state

    p = jax.process_index()
    results = {}
    for family, (config, extra) in FAMILIES.items():
        overrides = [f"data.dataset={dataset}", "data.eval_batch_size=16", *extra]
        if family == "tts":
            overrides.append(f"tts.asr_workdir={asr_workdir}")
        cfg = load_config(REPO / "configs" / config, overrides)
        workdir = out / family
        task = build_task(cfg, load_dataset_info(dataset, "train"), workdir)
        saved = out / f"tokenizers-p{p}" / family
        saved.mkdir(parents=True)
        task.save_tokenizer(saved)
        mesh = make_mesh(cfg.mesh)
        tx = make_optimizer(cfg.optim, cfg.train.num_steps)
        state = create_train_state(task, tx, task.dummy_batch(8, cfg.data.buckets[0]), mesh, 0)
        metrics, records = evaluate_split(task, state.params, mesh, dataset, "test")
        results[family] = {
            "metrics": {k: v for k, v in metrics.items() if k not in TIMING},
            "records": records,
        }
        if family == "ctc":
            transcribe_job(cfg, task, mesh, state.params, dataset, out, p)
    if p == 0:
        (out / "result.json").write_text(json.dumps(results, indent=1, default=float))


def transcribe_job(cfg, task, mesh, params, dataset: str, out: Path, p: int) -> None:
    """A manifest job (`jaxseq transcribe --manifest`) over the test split's 8 recordings and a
    missing file, 4 items per process and group: the second group (1 item) is process 0's
    alone. Writes OUT/job/results.jsonl."""
    from jaxseq.config import FrontendConfig, TextConfig
    from jaxseq.data.pipeline import load_dataset_info
    from jaxseq.inference.manifest_job import transcribe_manifest
    from jaxseq.train.trained import Trained

    info = load_dataset_info(dataset, "train")
    frontend, text = FrontendConfig(**info["frontend"]), TextConfig(**info["text"])
    trained = Trained(cfg, task, mesh, params, 0, frontend, text)
    audio = Path(dataset).parent / "audio" / "test"
    lines = [json.loads(line) for line in (audio / "manifest.jsonl").read_text().splitlines()]
    for line in lines:
        line["audio"] = str(audio / line["audio"])
    lines.insert(3, {"id": "gone", "audio": str(audio / "missing.wav"), "text": "one"})
    manifest = out / f"manifest-p{p}.jsonl"  # the same lines for every process
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    transcribe_manifest(trained, manifest, out / "job", batch_size=4, return_timestamps="word")


if __name__ == "__main__":
    out_dir, data, asr = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    if len(sys.argv) > 4:
        port, count, index = sys.argv[4:7]
        initialize(f"127.0.0.1:{port}", int(count), int(index))
    main(out_dir, data, asr)
