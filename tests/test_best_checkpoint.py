"""Keep-best checkpoints when evaluation steps and checkpoint steps do not coincide (as in
configs/ctc_base.yaml: eval every 5,000, checkpoint every 2,000): an evaluated step is always
saved with its score, so the best one is kept whatever the checkpoint cadence."""

from __future__ import annotations

import jaxseq
from jaxseq.train.checkpoint import Checkpointer
from jaxseq.train.loop import train
from tests.conftest import TINY_CONFIG

SCORES = {3: 0.25, 6: 0.75}  # validation WER by step: step 3 is the best


def test_the_best_evaluated_step_is_kept_between_checkpoint_steps(tiny_dataset, tmp_path):
    cfg = jaxseq.load_config(
        TINY_CONFIG,
        [
            f"data.dataset={tiny_dataset}",
            "data.buckets=[512]",  # one compiled train step (the evaluations are stubbed)
            "train.num_steps=6",
            "train.eval_every=3",
            "train.checkpoint_every=4",
            "train.keep_last=1",
            "train.keep_best=1",
        ],
    )
    seen = []

    def evaluator(task, params, mesh):
        step = len(seen) * 3 + 3
        seen.append(step)
        return {"wer": SCORES[step], "loss": 1.0, "headline": f"WER {SCORES[step]}"}

    summary = train(cfg, tmp_path, evaluator=evaluator)
    assert seen == [3, 6] and summary["eval"]["wer"] == SCORES[6]
    ckpt = Checkpointer(tmp_path / "checkpoints", cfg.train, read_only=True)
    # Kept: the latest (6) and the best by validation WER (3, an evaluation-only save); 4,
    # a periodic save without a score, is gone.
    assert ckpt.best_step() == 3
    assert ckpt.all_steps() == [3, 6]
    assert jaxseq.load(tmp_path).step == 3  # load() takes the best
