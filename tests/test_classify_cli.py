"""Audio classification end to end through the CLI: synthesize labelled corpora, prepare,
train (a CTC encoder's sequence and frame heads from `train.init_from`, and AST), evaluate,
classify files, and the bad inputs."""

import json

import jax
import numpy as np
import pytest
import soundfile as sf
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import f1_score

from jaxseq import cli
from jaxseq.evaluation.classify import diarization_error_rate
from jaxseq.train.trained import load_trained
from tests.conftest import REPO
from tests.test_tts_cli import shared_recognizer

CONFIG = REPO / "configs" / "classify_tiny.yaml"
AST = ["classify.encoder=ast", "classify.pooling=cls"]


@pytest.fixture(scope="module")
def speakers(speaker_corpus):
    return speaker_corpus


@pytest.fixture(scope="module")
def turns(diarization_corpus):
    return diarization_corpus


@pytest.fixture(scope="module")
def ctc(tiny_dataset, tmp_path_factory, worker_id):
    """A (barely trained) tiny CTC model on the digits corpus (the same frontend): the one
    test_tts_cli.py scores intelligibility with, trained once per test run."""
    return shared_recognizer(tiny_dataset, tmp_path_factory, worker_id)


def _train(workdir, data, *overrides):
    cli.main(
        ["train", "--config", str(CONFIG), "--workdir", str(workdir)]
        + [f"data.dataset={data / 'prepared'}", *overrides]
    )
    return workdir


@pytest.fixture(scope="module")
def sequence_head(speakers, ctc, tmp_path_factory):
    """A sequence head trained on the CTC model's encoder, which stays frozen (so that the
    checkpoint still holds the encoder that `train.init_from` took)."""
    run = tmp_path_factory.mktemp("seq") / "run"
    return _train(run, speakers, f"train.init_from={ctc}", "optim.freeze=[encoder/.*]")


def _report(workdir, capsys):
    path = workdir / "eval" / "test.json"
    cli.main(["evaluate", "--workdir", str(workdir), "--split", "test", "--report", str(path)])
    return json.loads(path.read_text()), capsys.readouterr().out


def test_init_from_takes_the_ctc_encoder_and_starts_a_fresh_head(sequence_head, ctc):
    params, source = load_trained(sequence_head).params, load_trained(ctc).params
    assert set(params) == {"encoder", "classifier"} and set(source) == {"encoder", "head"}
    same = jax.tree.map(
        lambda a, b: bool(np.array_equal(a, b)), params["encoder"], source["encoder"]
    )
    assert all(jax.tree.leaves(same)), "the frozen encoder is not the CTC model's"


def test_sequence_head_trains_evaluates_and_classifies(sequence_head, speakers, capsys):
    metrics = [json.loads(x) for x in (sequence_head / "metrics.jsonl").read_text().splitlines()]
    valid = [m for m in metrics if m["split"] == "valid"][-1]
    ranked = sequence_head / "checkpoints" / "4" / "metrics" / "metrics"
    assert json.loads(ranked.read_text()) == {"metric": "error_rate", "value": valid["error_rate"]}
    report, out = _report(sequence_head, capsys)
    items = report["items"]
    assert report["num_utterances"] == len(items) == 8 and "macro-F1" in out
    refs, hyps = [r["label"] for r in items], [r["predicted"] for r in items]
    assert report["accuracy"] == pytest.approx(np.mean(np.array(refs) == np.array(hyps)))
    assert report["macro_f1"] == pytest.approx(
        f1_score(refs, hyps, average="macro", labels=sorted(set(refs) | set(hyps)))
    )
    manifest = [json.loads(x) for x in (speakers / "audio/test/manifest.jsonl").open()]
    assert refs == [m["speaker"] for m in manifest]  # the labels are the voices, in order
    # `classify` on the recordings: the same probabilities as the evaluation (which read the
    # prepared float16 features) up to that rounding.
    wavs = [str(speakers / "audio/test" / m["audio"]) for m in manifest[:3]]
    cli.main(["classify", "--workdir", str(sequence_head), "--top-k", "4", *wavs])
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == wavs
    from jaxseq.inference.classify import classify

    for result, item in zip(classify(sequence_head, wavs, top_k=4), items, strict=False):
        probs = dict(result["top"])
        assert probs[item["predicted"]] == pytest.approx(item["confidence"], abs=0.02)
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-3)


def _reference_der(records) -> float:
    """The diarization error rate from first principles: each item's reference and predicted
    turns cut at all their boundaries; where the reference speaks (the prediction is cropped to
    it, no collar), predicted labels mapped one-to-one onto reference labels to maximize the
    time they agree (Hungarian); missed + false alarm + confusion = max(#ref, #predicted) -
    #correct per piece, over the total reference speech."""
    errors = speech = 0.0
    for r in records:
        ref, hyp = r["reference"], r["predicted"]
        cuts = sorted({t for start, end, _ in ref + hyp for t in (start, end)})
        ref_names = sorted({name for *_, name in ref})
        hyp_names = sorted({name for *_, name in hyp})
        agree = np.zeros((len(hyp_names), len(ref_names)))
        pieces = []
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            mid = (a + b) / 2
            here = {name for start, end, name in ref if start < mid < end}
            said = {name for start, end, name in hyp if start < mid < end}
            if here:
                pieces.append((b - a, here, said))
                for h in said:
                    for x in here:
                        agree[hyp_names.index(h), ref_names.index(x)] += b - a
        rows, cols = linear_sum_assignment(-agree)
        mapping = {hyp_names[i]: ref_names[j] for i, j in zip(rows, cols, strict=True)}
        for seconds, here, said in pieces:
            correct = len(here & {mapping.get(h) for h in said})
            errors += seconds * (max(len(here), len(said)) - correct)
            speech += seconds * len(here)
    return errors / speech


def test_diarization_error_rate_on_a_known_case():
    """Item a: 1 s confused (x→a, y→b is the best mapping) and 0.5 s missed of 4 s; item b:
    two predicted labels share 1 s of one speaker (0.5 s confused), and a predicted turn after
    the reference ends is cropped away. (1.5 + 0.5) / (4 + 1) = 0.4."""
    records = [
        {
            "id": "a",
            "reference": [[0.0, 2.0, "a"], [2.0, 4.0, "b"]],
            "predicted": [[0.0, 1.0, "x"], [1.0, 3.5, "y"]],
        },
        {
            "id": "b",
            "reference": [[0.0, 1.0, "a"]],
            "predicted": [[0.0, 0.5, "z"], [0.5, 1.0, "w"], [1.0, 2.0, "z"]],
        },
    ]
    assert _reference_der(records) == pytest.approx(0.4)
    assert diarization_error_rate(records) == pytest.approx(0.4)


def test_frame_head_scores_frames_and_diarization_error(turns, ctc, tmp_path, capsys):
    workdir = _train(tmp_path / "run", turns, f"train.init_from={ctc}", "classify.level=frame")
    report, out = _report(workdir, capsys)
    items = report["items"]
    assert "DER" in out and len(items) == 8
    frames = sum(r["frames"] for r in items)
    assert report["frame_accuracy"] == pytest.approx(sum(r["correct"] for r in items) / frames)
    assert report["der"] == pytest.approx(_reference_der(items))
    assert report["error_rate"] == report["der"]
    manifest = [json.loads(x) for x in (turns / "audio/test/manifest.jsonl").open()]
    for r, m in zip(items, manifest, strict=True):  # the reference turns are the manifest's
        assert [name for _, _, name in r["reference"]] == [s["label"] for s in m["segments"]]
        assert r["reference"][0][0] == pytest.approx(m["segments"][0]["start"], abs=0.04)
    wav = str(turns / "audio/test" / manifest[0]["audio"])
    cli.main(["classify", "--workdir", str(workdir), "--frames", wav])
    line = capsys.readouterr().out.strip()
    assert line.startswith(wav + "\t0.00-") and "s en" in line
    with pytest.raises(SystemExit) as err:
        cli.main(["classify", "--workdir", str(workdir), wav])
    assert err.value.code == 2 and "classifies frames: add --frames" in capsys.readouterr().err


def test_ast_trains_and_refuses_clips_shorter_than_a_patch(speakers, tmp_path, capsys):
    workdir = _train(tmp_path / "ast", speakers, *AST)
    report, out = _report(workdir, capsys)
    assert report["num_utterances"] == 8 and "accuracy" in out
    assert set(load_trained(workdir).params) == {"encoder", "head_norm", "head"}
    short = tmp_path / "short.wav"
    sf.write(short, np.zeros(1600, np.float32), 16000)  # 0.1 s: 11 frames < a 16-frame patch
    with pytest.raises(SystemExit) as err:
        cli.main(["classify", "--workdir", str(workdir), str(short)])
    assert err.value.code == 2
    assert f"{short} is 0.100 s (11 frames)" in capsys.readouterr().err


def test_labels_outside_the_training_set_are_named(sequence_head, speakers, tmp_path, capsys):
    wav = speakers / "audio/test/wav/test-000000.wav"
    lines = [
        {"audio": str(wav), "label": "en-us+m3", "id": "known"},  # no transcript: kept
        {"audio": str(wav), "label": "en-us-nyc+m7", "id": "stranger"},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(SystemExit) as err:
        cli.main(["evaluate", "--workdir", str(sequence_head), "--manifest", str(manifest)])
    msg = capsys.readouterr().err
    assert err.value.code == 2
    assert "labels the model was not trained on: ['en-us-nyc+m7'] (e.g. item" in msg
    assert "'stranger'" in msg
