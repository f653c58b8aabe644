"""The rnn family through the real CLI: train → evaluate (greedy and beam, with attention
plots) → transcribe, on the tiny synthesized corpus."""

import json

import jiwer
import numpy as np
import pytest

from jaxseq import cli
from jaxseq.config import TextConfig
from jaxseq.text.normalize import normalize_text
from tests.conftest import REPO
from tests.test_train import assert_logged_like_recomputed

CONFIG = REPO / "configs" / "rnn_tiny.yaml"


def test_train_evaluate_transcribe(tiny_dataset, tmp_path, capsys):
    workdir = tmp_path / "run"
    cli.main(
        [
            "train",
            "--workdir",
            str(workdir),
            "--config",
            str(CONFIG),
            f"data.dataset={tiny_dataset}",
            "train.log_every=1",
        ]
    )
    tokenizer = json.loads((workdir / "tokenizer.json").read_text())
    assert len(tokenizer["model"]["vocab"]) == 4 + 28  # specials + the charset, no merges
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in lines if m["split"] == "train"]
    assert [m["step"] for m in train] == list(range(1, 11))
    # Step 6 is checkpoint 5's loss (scheduled sampling included) on the batch that followed;
    # and the last five steps' mean loss is below the first five's.
    assert_logged_like_recomputed(workdir, 5)
    losses = [m["loss"] for m in train]
    assert np.mean(losses[5:]) < np.mean(losses[:5])
    valid = [m for m in lines if m["split"] == "valid"]
    assert valid[-1]["step"] == 10 and valid[-1]["num_utterances"] == 8
    capsys.readouterr()

    reports = {}
    for decoder in ("greedy", "beam"):
        report = tmp_path / decoder / "test.json"
        cli.main(
            [
                "evaluate",
                "--workdir",
                str(workdir),
                "--split",
                "test",
                "--decoder",
                decoder,
                "--beam-size",
                "3",
                "--report",
                str(report),
            ]
        )
        out = reports[decoder] = json.loads(report.read_text())
        items = out["utterances"]
        assert out["num_utterances"] == len(items) == 8 and out["decoder"] == decoder
        # jiwer's rates after jaxseq's normalization (an untrained model emits stray spaces).
        refs = [normalize_text(r["ref"], TextConfig()) for r in items]
        hyps = [normalize_text(r["hyp"], TextConfig()) for r in items]
        assert out["wer"] == pytest.approx(jiwer.wer(refs, hyps))
        assert out["cer"] == pytest.approx(jiwer.cer(refs, hyps))
        # rnn.plots = 2: the first two utterances' attention, as PNGs beside the report.
        plotted = [r for r in items if "plots" in r]
        assert [r["id"] for r in plotted] == [r["id"] for r in items[:2]]
        for r in plotted:
            png = report.parent / r["plots"]["alignment"]
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        markdown = report.with_suffix(".md").read_text()
        assert "## Attention alignments" in markdown and "(plots/" in markdown
    # The teacher-forced loss does not depend on the decoder.
    assert reports["greedy"]["loss"] == pytest.approx(reports["beam"]["loss"])
    assert np.isfinite(reports["beam"]["loss"])

    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--workdir", str(workdir), "--decoder", "prefix_beam"])
    assert "rnn decodes with one of" in capsys.readouterr().err

    wav = sorted((tiny_dataset.parent / "audio" / "test" / "wav").glob("*.wav"))[:2]
    cli.main(["transcribe", "--workdir", str(workdir), "--decoder", "greedy", *map(str, wav)])
    out = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in out] == [str(w) for w in wav]
