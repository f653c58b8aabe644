"""The seq2seq family through the one train loop and evaluation path."""

import json
from functools import partial

import jiwer
import numpy as np
import pytest

from jaxseq import cli
from jaxseq.tasks.seq2seq import teacher_forcing
from tests.conftest import REPO
from tests.test_train import assert_logged_like_recomputed

CONFIG = REPO / "configs" / "seq2seq_tiny.yaml"


def test_teacher_forcing_shifts_and_masks():
    labels = np.array([[7, 8, 9, 0], [5, 0, 0, 0], [0, 0, 0, 0]])
    inputs, targets, weights = teacher_forcing(labels, np.array([3, 1, 0]), prompt=[1], end_id=2)
    np.testing.assert_array_equal(inputs, [[1, 7, 8, 9, 2], [1, 5, 2, 0, 0], [1, 2, 0, 0, 0]])
    np.testing.assert_array_equal(targets, [[7, 8, 9, 2, 0], [5, 2, 0, 0, 0], [2, 0, 0, 0, 0]])
    np.testing.assert_array_equal(weights, [[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])


def test_teacher_forcing_with_a_prompt_weights_only_the_transcript():
    labels = np.array([[7, 8, 0], [5, 0, 0]])
    inputs, targets, weights = teacher_forcing(labels, np.array([2, 1]), prompt=[1, 3, 4], end_id=2)
    np.testing.assert_array_equal(inputs, [[1, 3, 4, 7, 8, 2], [1, 3, 4, 5, 2, 0]])
    np.testing.assert_array_equal(targets, [[3, 4, 7, 8, 2, 0], [3, 4, 5, 2, 0, 0]])
    np.testing.assert_array_equal(weights, [[0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 0, 0]])


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
            "data.buckets=[512]",  # one bucket (the corpus's longest item): one compile
            "train.log_every=1",
        ]
    )
    assert (workdir / "tokenizer.json").is_file()
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in lines if m["split"] == "train"]
    assert [m["step"] for m in train] == list(range(1, 11))
    # Step 6 is checkpoint 5's loss on the batch that followed; the last five steps' mean loss
    # is below the first five's.
    assert_logged_like_recomputed(workdir, 5)
    losses = [m["loss"] for m in train]
    assert np.mean(losses[5:]) < np.mean(losses[:5])
    capsys.readouterr()

    reports = {}
    for decoder in ("greedy", "beam"):
        report = tmp_path / f"{decoder}.json"
        cli.main(
            [
                "evaluate",
                "--workdir",
                str(workdir),
                "--decoder",
                decoder,
                "--beam-size",
                "2",
                "--report",
                str(report),
            ]
        )
        out = reports[decoder] = json.loads(report.read_text())
        assert out["num_utterances"] == len(out["utterances"]) == 8
        # The report's rates are jiwer's on its own per-utterance transcripts.
        refs = [u["ref"] for u in out["utterances"]]
        hyps = [u["hyp"] for u in out["utterances"]]
        assert out["wer"] == pytest.approx(jiwer.wer(refs, hyps))
        assert out["cer"] == pytest.approx(jiwer.cer(refs, hyps))
    # The loss does not depend on the decoder; both searches decode every utterance.
    assert reports["greedy"]["loss"] == pytest.approx(reports["beam"]["loss"])

    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--workdir", str(workdir), "--decoder", "prefix_beam"])
    assert "seq2seq decodes with one of" in capsys.readouterr().err

    wav = sorted((tiny_dataset.parent / "audio" / "test" / "wav").glob("*.wav"))[:2]
    cli.main(["transcribe", "--workdir", str(workdir), *map(str, wav)])
    out = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in out] == [str(w) for w in wav]


def test_input_longer_than_the_context_is_a_clear_error(tiny_dataset, tmp_path, capsys):
    """No silent truncation: a batch longer than the encoder's positions stops training."""
    with pytest.raises(SystemExit):
        cli.main(
            [
                "train",
                "--workdir",
                str(tmp_path),
                "--config",
                str(CONFIG),
                f"data.dataset={tiny_dataset}",
                "model.max_source_positions=32",
            ]
        )
    err = capsys.readouterr().err
    assert "model's context is 64" in err and "model.max_source_positions=32" in err
    assert "data.buckets go up to 512 frames" in err


def test_joint_ctc_attention_loss_matches_optax(tiny_dataset):
    """(1 - λ) · cross-entropy + λ · CTC, the CTC part against optax.ctc_loss."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    from jaxseq.config import load_config
    from jaxseq.data.eval_batches import make_eval_batches
    from jaxseq.data.pipeline import load_dataset_info
    from jaxseq.models.whisper import WhisperModel
    from jaxseq.tasks import build_task

    overrides = [f"data.dataset={tiny_dataset}", "model.ctc_weight=0.3", "model.label_smoothing=0"]
    cfg = load_config(CONFIG, overrides)
    task = build_task(cfg, load_dataset_info(tiny_dataset, "train"))
    host, _, _ = next(make_eval_batches(tiny_dataset, "valid", cfg.data, task.tokenizer))
    batch = jax.tree.map(jnp.asarray, host)
    shapes = jax.tree.map(jnp.asarray, task.dummy_batch(2, 128))
    # Jitted: eagerly, every primitive of the model would compile on its own.
    init = jax.jit(lambda rng, b: nn.meta.unbox(task.init_variables(rng, b)["params"]))
    params = init(jax.random.PRNGKey(0), shapes)
    assert params["ctc_head"]["kernel"].shape == (cfg.model.d_model, task.tokenizer.size)
    loss_fn = jax.jit(task.loss_fn, static_argnames="train")
    loss, metrics = loss_fn(params, batch, jax.random.PRNGKey(1), train=False)

    valid = host["valid"].astype(np.float32)
    width = cfg.data.max_label_length
    labels, lengths = host["labels"][:, :width], np.minimum(host["label_lengths"], width)
    inputs, targets, weights = teacher_forcing(labels, lengths, task.prompt, task.tokenizer.end_id)
    joint = jax.jit(partial(task.model.apply, method=WhisperModel.joint))
    logits, ctc_logits, enc_lengths = joint(
        {"params": params}, batch["features"], batch["feature_lengths"], inputs
    )
    weights = np.asarray(weights) * valid[:, None]
    ce = jax.jit(optax.softmax_cross_entropy_with_integer_labels)(logits, targets)
    ce = float(jnp.sum(ce * weights) / weights.sum())
    frames = ctc_logits.shape[1]
    logit_pad = (np.arange(frames)[None] >= np.asarray(enc_lengths)[:, None]).astype(np.float32)
    label_pad = (np.arange(width)[None] >= lengths[:, None]).astype(np.float32)
    ctc_loss = jax.jit(partial(optax.ctc_loss, blank_id=0))
    per_utt = ctc_loss(ctc_logits, logit_pad, labels, label_pad)
    ctc = float(jnp.sum(per_utt * valid) / weights.sum())  # the cross-entropy's tokens
    np.testing.assert_allclose(float(loss), 0.7 * ce + 0.3 * ctc, rtol=1e-5)
    np.testing.assert_allclose(
        float(metrics["ctc_nll"]), float(jnp.sum(per_utt * valid)), rtol=1e-5
    )


def test_joint_ctc_attention_trains_through_the_cli(tiny_dataset, tmp_path, capsys):
    workdir = tmp_path / "joint"
    cli.main(
        [
            "train",
            "--config",
            str(CONFIG),
            "--workdir",
            str(workdir),
            f"data.dataset={tiny_dataset}",
            "model.ctc_weight=0.3",
            "data.buckets=[512]",  # one bucket (the corpus's longest item): one compile
            "train.num_steps=4",
            "train.log_every=1",
            "train.eval_every=4",
            "train.checkpoint_every=2",
        ]
    )
    capsys.readouterr()
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in lines if m["split"] == "train"]
    assert [m["step"] for m in train] == [1, 2, 3, 4]
    # Step 3's joint loss and CTC NLL are checkpoint 2's on the batch that followed (the loss
    # itself is checked against optax above); steps 3-4 average below steps 1-2.
    assert_logged_like_recomputed(workdir, 2)
    losses = [m["loss"] for m in train]
    assert np.mean(losses[2:]) < np.mean(losses[:2])
