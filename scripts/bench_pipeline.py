"""Throughput of the training input pipeline (utterances/second), in-process and with workers.

  .venv/bin/python scripts/bench_pipeline.py [--dataset DIR] [--batches 100] [--batch-size 32]

Without --dataset it writes a synthetic split (2000 utterances of 100-600 frames x 80 mels) into a
temporary folder. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from jaxseq.config import DataConfig, TextConfig
from jaxseq.data.pipeline import load_dataset_info, make_train_iterator
from jaxseq.data.records import encode_record, index_name, shard_name, write_index
from jaxseq.text.vocab import CharVocab


def write_synthetic(
    folder: Path, vocab: CharVocab, num: int = 2000, n_mels: int = 80, shards: int = 4
) -> None:
    """A prepared-looking "train" split of random log-mels [100..600, n_mels] and random texts."""
    from array_record.python.array_record_module import ArrayRecordWriter

    rng = np.random.default_rng(0)
    names = [shard_name("train", i, shards) for i in range(shards)]
    ids, frames, text_lengths = [], [], []
    for s, part in enumerate(np.array_split(np.arange(num), shards)):
        writer = ArrayRecordWriter(str(folder / names[s]), "group_size:1")
        for i in part:
            n = int(rng.integers(100, 601))
            text = "".join(rng.choice(list(vocab.chars), size=int(rng.integers(10, 100))))
            writer.write(encode_record(f"utt-{i:05d}", text, rng.normal(size=(n, n_mels))))
            ids.append(f"utt-{i:05d}")
            frames.append(n)
            text_lengths.append(len(text))
        writer.close()
    write_index(folder / index_name("train"), ids, frames, text_lengths)
    info = {
        "frontend": {"n_mels": n_mels},
        "splits": {"train": {"shards": names, "num_utterances": num}},
    }
    (folder / "dataset.json").write_text(json.dumps(info))


def measure(dataset: Path, split: str, cfg: DataConfig, vocab, batches: int, warmup: int) -> dict:
    """Times `batches` batches after `warmup` (worker start-up excluded)."""
    it = make_train_iterator(dataset, split, cfg, vocab, seed=0)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    utterances = valid_frames = padded_frames = nbytes = 0
    for _ in range(batches):
        batch = next(it)
        utterances += len(batch["feature_lengths"])
        valid_frames += int(batch["feature_lengths"].sum())
        padded_frames += batch["features"].shape[0] * batch["features"].shape[1]
        nbytes += sum(v.nbytes for v in batch.values())
    seconds = time.perf_counter() - start
    it.close()
    del it
    return {
        "utt_per_s": utterances / seconds,
        "mb_per_s": nbytes / seconds / 1e6,
        "pad_efficiency": valid_frames / padded_frames,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, help="a prepared dataset folder")
    parser.add_argument("--split", default="train")
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()

    vocab = CharVocab.from_charset(TextConfig().charset)
    tmp = None
    dataset = args.dataset
    if dataset is None:
        tmp = tempfile.TemporaryDirectory()
        dataset = Path(tmp.name)
        start = time.perf_counter()
        write_synthetic(dataset, vocab)
        print(f"wrote a synthetic dataset to {dataset} in {time.perf_counter() - start:.1f} s")
    info = load_dataset_info(dataset, args.split)
    base = DataConfig(
        dataset=str(dataset), batch_size=args.batch_size, max_label_length=128, worker_buffer_size=2
    )
    print(
        f"\n{info['splits'][args.split]['num_utterances']} utterances, "
        f"{info['frontend']['n_mels']} mels, batch {args.batch_size}, buckets {base.buckets}, "
        f"{args.batches} batches after {args.warmup} warm-up\n"
    )
    print("| workers | utterances/s | MB/s | padding efficiency | seconds |")
    print("|---:|---:|---:|---:|---:|")
    for workers in args.workers:
        cfg = dataclasses.replace(base, worker_count=workers)
        r = measure(dataset, args.split, cfg, vocab, args.batches, args.warmup)
        print(
            f"| {workers} | {r['utt_per_s']:.0f} | {r['mb_per_s']:.0f} | "
            f"{r['pad_efficiency']:.1%} | {r['seconds']:.2f} |"
        )
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
