"""docs/adding_a_family.md, run as written: its family registers itself, trains through
`jaxseq.train` and is scored by the one evaluation loop, whose loss and CER are checked against
optax.ctc_loss and jiwer on the same parameters and items."""

from __future__ import annotations

import json
import re
import sys
import types

import jiwer
import numpy as np
import optax
import pytest

import jaxseq
from jaxseq.config import ConfigError
from jaxseq.data.eval_batches import make_eval_batches
from jaxseq.tasks.registry import task_class
from jaxseq.train.trained import load_trained
from tests.conftest import REPO

DOC = REPO / "docs" / "adding_a_family.md"


@pytest.fixture(scope="module")
def family() -> types.ModuleType:
    """The walkthrough's first Python block, executed as a module."""
    code = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)[0]
    module = types.ModuleType("linear_ctc_walkthrough")
    sys.modules[module.__name__] = module  # flax's dataclasses look their module up
    exec(compile(code, str(DOC), "exec"), module.__dict__)
    return module


def test_the_walkthrough_family_trains_and_evaluates(family, tiny_dataset, tmp_path):
    assert task_class("linear_ctc") is family.LinearCTCTask
    cfg = jaxseq.load_config(
        {
            "model": {"family": "linear_ctc"},
            "data": {"dataset": str(tiny_dataset), "batch_size": 8, "eval_batch_size": 3},
            "optim": {"learning_rate": 3e-3, "warmup_steps": 1},
            "train": {"num_steps": 3, "log_every": 1, "eval_every": 3, "checkpoint_every": 3},
        },
        # One bucket as long as the corpus's longest item: one compiled train step and one
        # compiled evaluation; batches of 3 leave the last of 8 utterances' batches with a
        # padding row, which the evaluation must not count (the check below masks it too).
        overrides=["data.buckets=[384]", "data.max_label_length=64"],
    )
    steps = []
    summary = jaxseq.train(cfg, tmp_path / "w", callbacks=[lambda step, m: steps.append(step)])
    assert steps == [1, 2, 3] and summary["step"] == 3 and "wer" in summary["eval"]

    report = jaxseq.evaluate(tmp_path / "w", tiny_dataset, split="test")
    trained = load_trained(tmp_path / "w")
    vocab = trained.task.tokenizer
    loss_sum = tokens = padding_rows = 0.0
    for batch, _, _ in make_eval_batches(tiny_dataset, "test", cfg.data, vocab):
        logits = trained.task.model.apply({"params": trained.params}, batch["features"])
        frames, width = logits.shape[1], batch["labels"].shape[1]
        per_utt = optax.ctc_loss(
            logits,
            (np.arange(frames)[None] >= batch["feature_lengths"][:, None]).astype(np.float32),
            batch["labels"],
            (np.arange(width)[None] >= batch["label_lengths"][:, None]).astype(np.float32),
            blank_id=vocab.blank_id,
        )
        valid = batch["valid"]
        loss_sum += float(np.sum(np.asarray(per_utt)[valid]))
        tokens += float(np.sum(batch["label_lengths"][valid]))
        padding_rows += float(np.sum(~valid))
    assert padding_rows > 0, "no padding row in the evaluation's batches: nothing to mask"
    assert report["loss"] == pytest.approx(loss_sum / tokens, rel=1e-4)
    path = tmp_path / "w" / "eval" / "test-step3.json"
    items = json.loads(path.read_text())["utterances"]
    assert report["num_utterances"] == len(items) == 8
    refs, hyps = [r["ref"] for r in items], [r["hyp"] for r in items]
    assert report["cer"] == pytest.approx(jiwer.cer(refs, hyps), abs=1e-9)


def test_an_unknown_family_names_the_closest(family):
    with pytest.raises(ConfigError, match="model.family='linear_cttc'.*did you mean 'linear_ctc'"):
        task_class("linear_cttc")
