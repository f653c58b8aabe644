"""`jaxseq evaluate --robustness`: a tiny stress corpus prepared with `jaxseq prepare` and scored
per condition, rate and pitch bin by the shared CTC recognizer, checked against jiwer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jiwer
import pytest

from jaxseq import api, cli
from jaxseq.config import TextConfig
from jaxseq.data.stress import CONDITIONS
from jaxseq.errors import JaxseqError
from jaxseq.evaluation.robustness import bin_name
from jaxseq.text.normalize import scoring_normalizer
from tests.conftest import TINY_CONFIG
from tests.test_synth_stress import shared_stress_corpus
from tests.test_tts_cli import shared_recognizer


@pytest.fixture(scope="module")
def report(tiny_dataset, tmp_path_factory, worker_id):
    """The robustness report of a copy of the shared recognizer (its workdir is read only) on
    the prepared shared stress corpus: (robustness.json, robustness.md, the dataset folder,
    the workdir)."""
    corpus = shared_stress_corpus(tmp_path_factory, worker_id)
    recognizer = shared_recognizer(tiny_dataset, tmp_path_factory, worker_id)
    root = tmp_path_factory.mktemp("robustness")
    workdir, dataset = root / "ctc", root / "stress"
    shutil.copytree(recognizer, workdir)
    cli.main(
        ["prepare", "--config", str(TINY_CONFIG), "--source", f"synth:{corpus}"]
        + ["--out", str(dataset), "--workers", "1"]
    )
    cli.main(["evaluate", "--workdir", str(workdir), "--robustness", "--dataset", str(dataset)])
    json_report = json.loads((workdir / "eval" / "robustness.json").read_text())
    return json_report, (workdir / "eval" / "robustness.md").read_text(), dataset, workdir


def test_prepare_writes_one_evaluation_split_per_condition(report):
    _, _, dataset, _ = report
    splits = json.loads((dataset / "dataset.json").read_text())["splits"]
    assert set(splits) == set(CONDITIONS)
    for condition, summary in splits.items():
        assert summary["evaluation"] and summary["num_utterances"] == 2
        assert summary["source"].endswith(f"/{condition}/manifest.jsonl")


def test_report_matches_jiwer_per_condition_and_bin(report):
    """Every WER and CER of the report is jiwer's on its utterances' hypotheses (both sides
    normalized as the scoring does), with rate and pitch from the synthesized manifests."""
    data, markdown, dataset, _ = report
    info = json.loads((dataset / "dataset.json").read_text())
    normalize = scoring_normalizer(data["normalizer"], TextConfig(**info["text"]))
    assert list(data["conditions"]) == list(CONDITIONS)
    for condition, scores in data["conditions"].items():
        source = Path(info["splits"][condition]["source"].removeprefix("manifest:"))
        lines = {r["id"]: r for r in map(json.loads, source.read_text().splitlines())}
        utterances = scores["utterances"]
        assert sorted(u["id"] for u in utterances) == sorted(lines)
        groups = {"all": utterances}
        for u in utterances:
            line = lines[u["id"]]
            assert (u["ref"], u["rate"], u["pitch"]) == (line["text"], line["rate"], line["pitch"])
            groups.setdefault(("by_rate", bin_name(u["rate"], (80, 450), 50)), []).append(u)
            groups.setdefault(("by_pitch", bin_name(u["pitch"], (0, 100), 25)), []).append(u)
        for group, members in groups.items():
            got = scores if group == "all" else scores[group[0]][group[1]]
            refs = [normalize(u["ref"]) for u in members]
            hyps = [normalize(u["hyp"]) for u in members]
            assert got["num_utterances"] == len(members)
            assert got["wer"] == pytest.approx(jiwer.wer(refs, hyps), abs=1e-12)
            assert got["cer"] == pytest.approx(jiwer.cer(refs, hyps), abs=1e-12)
        assert set(scores["by_rate"]) == {g[1] for g in groups if g[0] == "by_rate"}
        row = f"| {condition} | 2 | 0 | 0 | {scores['wer']:.2%} | {scores['cer']:.2%} |"
        assert row in markdown
    assert "## WER by speaking rate" in markdown and "## WER by pitch" in markdown


def test_robustness_needs_a_prepared_stress_dataset(report, tiny_dataset, tmp_path):
    workdir = report[3]
    with pytest.raises(JaxseqError, match="has none of the stress splits"):
        api.evaluate(workdir, tiny_dataset, robustness=True)
    with pytest.raises(JaxseqError, match="leave out the manifest"):
        api.evaluate(workdir, tmp_path / "test.jsonl", robustness=True)


@pytest.mark.parametrize(
    ("value", "limits", "width", "name"),
    [(80, (80, 450), 50, "80-129"), (129, (80, 450), 50, "80-129"), (450, (80, 450), 50, "380-450")]
    + [(379, (80, 450), 50, "330-379"), (100, (0, 100), 25, "75-100"), (24, (0, 100), 25, "0-24")],
)
def test_bins(value, limits, width, name):
    assert bin_name(value, limits, width) == name
