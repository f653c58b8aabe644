"""Evaluation of a split with items longer than a seq2seq model's fixed encoder context: they are
left out, counted and listed by id, and every other item is scored (it used to stop the whole
evaluation at the first batch holding one)."""

from __future__ import annotations

import dataclasses

import jiwer
import numpy as np
import pytest

from jaxseq.config import load_config
from jaxseq.data.eval_batches import make_eval_batches, num_eval_batches, too_long_items
from jaxseq.data.pipeline import load_dataset_info
from jaxseq.data.reading import Split
from jaxseq.evaluation.loop import evaluate_split
from jaxseq.parallel.mesh import make_mesh
from jaxseq.tasks.registry import build_task
from jaxseq.train.optimizer import make_optimizer
from jaxseq.train.state import create_train_state
from tests.conftest import REPO
from tests.test_pipeline import CFG, N_MELS, VOCAB, write_dataset

CONTEXT = 256  # feature frames: model.max_source_positions=128 encoder frames
# The seq2seq model's buckets end at 192 frames: an evaluation batch whose longest item has 235
# pads to 256 (the context), where beyond the largest bucket it would pad to 384.


def test_items_longer_than_the_context_are_listed_and_the_rest_scored(tiny_dataset, tmp_path):
    frames = Split(tiny_dataset, "test").index["num_frames"]
    ids = Split(tiny_dataset, "test").index["ids"]
    over = frames > CONTEXT
    assert 0 < over.sum() < len(frames)  # the corpus has both
    cfg = load_config(
        REPO / "configs" / "seq2seq_tiny.yaml",
        [f"data.dataset={tiny_dataset}", "model.max_source_positions=128", "data.buckets=[192]"]
        + ["data.eval_batch_size=4"],
    )
    task = build_task(cfg, load_dataset_info(tiny_dataset, "train"), tmp_path)
    assert task.max_input_frames == CONTEXT
    mesh = make_mesh(cfg.mesh)
    tx = make_optimizer(cfg.optim, cfg.train.num_steps)
    state = create_train_state(task, tx, task.dummy_batch(4, CONTEXT), mesh, 0)

    metrics, records = evaluate_split(task, state.params, mesh, tiny_dataset, "test")

    assert metrics["too_long"] == [
        {"id": str(i), "num_frames": int(n)} for i, n in zip(ids[over], frames[over], strict=True)
    ]
    assert [r["id"] for r in records] == list(ids[~over])
    assert metrics["num_utterances"] == len(records) == int((~over).sum())
    refs, hyps = [r["ref"] for r in records], [r["hyp"] for r in records]
    assert metrics["wer"] == pytest.approx(jiwer.wer(refs, hyps))


def test_eval_batches_leave_out_only_the_long_items_on_every_process(tmp_path):
    """Two processes, 2 rows each of every global batch of 4, over the items that fit: both
    agree on the batch count, and together they read each kept item once, in index order."""
    rng = np.random.default_rng(0)
    lengths = [30, 70, 12, 65, 41, 90, 8, 50, 33]  # four over 48 frames
    items = [(f"utt-{i}", "ab", rng.normal(size=(n, N_MELS))) for i, n in enumerate(lengths)]
    write_dataset(tmp_path, "test", items, shards=2)
    cfg = dataclasses.replace(CFG, eval_batch_size=4)
    kept = [f"utt-{i}" for i, n in enumerate(lengths) if n <= 48]
    assert too_long_items(tmp_path, "test", 48) == [
        {"id": f"utt-{i}", "num_frames": n} for i, n in enumerate(lengths) if n > 48
    ]
    per_process = []
    for p in range(2):
        batches = list(
            make_eval_batches(
                tmp_path, "test", cfg, VOCAB, process_index=p, process_count=2, max_frames=48
            )
        )
        assert len(batches) == num_eval_batches(
            tmp_path, "test", cfg, process_count=2, max_frames=48
        )
        # 41 frames pad to no more than 48 (not to the 64 of its bucket)
        assert [b["features"].shape[1] for b, _, _ in batches] == [48, 48]
        per_process.append([ids for _, ids, _ in batches])
    together = [i for a, b in zip(*per_process, strict=True) for i in a + b if i]
    assert together == kept
