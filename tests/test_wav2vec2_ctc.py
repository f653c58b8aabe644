"""CTC with model.frontend=waveform (Wav2Vec2/HuBERT): its config section is Wav2Vec2Dims one
for one, the base configs have transformers' Wav2Vec2ForCTC/HubertForCTC parameters exactly,
the time mask acts in training only, and the tiny config prepares waveform records, trains
(feature encoder frozen bit for bit) and evaluates through the CLI."""

import dataclasses
import json

import flax.linen as nn
import jax
import numpy as np
import pytest

from jaxseq import cli
from jaxseq.config import Wav2Vec2Config, load_config
from jaxseq.models.wav2vec2 import Wav2Vec2Dims
from jaxseq.parallel.mesh import make_mesh
from jaxseq.tasks import build_task
from jaxseq.tasks.registry import task_class
from jaxseq.train.checkpoint import restore_workdir_params
from jaxseq.train.optimizer import make_optimizer
from jaxseq.train.state import abstract_train_state, create_train_state
from jaxseq.train.trained import load_trained
from tests.conftest import REPO

TINY = REPO / "configs" / "wav2vec2_tiny_ctc.yaml"
HEAD_FIELDS = {"vocab_size", "num_labels", "classifier_proj_size", "use_weighted_layer_sum"}


def test_config_section_is_wav2vec2_dims():
    ours = {f.name: f.default for f in dataclasses.fields(Wav2Vec2Config)}
    theirs = {f.name: f.default for f in dataclasses.fields(Wav2Vec2Dims)}
    assert ours.pop("model_type") == "wav2vec2"
    assert ours == {k: v for k, v in theirs.items() if k not in HEAD_FIELDS | {"remat"}}


@pytest.mark.parametrize("name", ["wav2vec2_base_ctc", "hubert_base_ctc"])
def test_base_configs_have_transformers_parameters(name):
    import torch
    import transformers

    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    task = task_class(cfg.model.family).from_config(cfg)  # characters of prepare.text
    mesh = make_mesh(cfg.mesh.__class__(data=1, fsdp=1, tensor=1))
    tx = make_optimizer(cfg.optim, cfg.train.num_steps)
    abstract, _ = abstract_train_state(task, tx, task.dummy_batch(1, 16000), mesh)
    ours = sum(x.size for x in jax.tree.leaves(abstract.params))
    config_cls, model_cls = {
        "wav2vec2": (transformers.Wav2Vec2Config, transformers.Wav2Vec2ForCTC),
        "hubert": (transformers.HubertConfig, transformers.HubertForCTC),
    }[cfg.wav2vec2.model_type]
    with torch.device("meta"):
        model = model_cls(config_cls(vocab_size=task.tokenizer.size))
    assert ours == sum(p.numel() for p in model.parameters())  # 94.4M


def _info(cfg):
    return {
        "frontend": dataclasses.asdict(cfg.prepare.frontend),
        "text": dataclasses.asdict(cfg.prepare.text),
    }


def test_time_mask_in_training_only():
    """Without dropout and LayerDrop, training logits are the evaluation ones unless
    wav2vec2.mask_time_prob masks frames (with the learned embedding)."""
    off = ["wav2vec2.layerdrop=0.0", "wav2vec2.mask_time_min_masks=0"]
    batch = {
        "features": np.random.default_rng(0).standard_normal((2, 16000)).astype(np.float32),
        "feature_lengths": np.array([16000, 12000], np.int32),
    }
    outputs = {}
    for prob in (0.0, 0.5):
        cfg = load_config(TINY, [*off, f"wav2vec2.mask_time_prob={prob}"])
        task = build_task(cfg, _info(cfg))
        params = nn.meta.unbox(task.init_variables(jax.random.PRNGKey(0), batch)["params"])
        train, lengths = task.logits(params, batch, jax.random.PRNGKey(1), train=True)
        evaluated, _ = task.logits(params, batch, None, train=False)
        outputs[prob] = np.abs(np.asarray(train) - np.asarray(evaluated)).max()
        assert lengths.tolist() == [49, 37]
    assert outputs[0.0] < 1e-5 and outputs[0.5] > 1e-2


def test_tiny_config_trains_evaluates_and_transcribes(tiny_dataset, tmp_path, capsys):
    data, workdir = tmp_path / "wave", tmp_path / "run"
    audio = tiny_dataset.parent / "audio"
    config = ["--config", str(TINY)]
    cli.main(
        ["prepare", *config, "--source", f"synth:{audio}", "--out", str(data), "--workers", "1"]
    )
    info = json.loads((data / "dataset.json").read_text())
    assert info["frontend"]["kind"] == "waveform"
    overrides = [f"data.dataset={data}", "train.num_steps=4", "train.checkpoint_every=4"]
    # One bucket as long as the corpus's longest clip: one train and one eval step to compile.
    overrides += ["train.eval_every=4", "train.log_every=2", "data.buckets=[96000]"]
    cli.main(["train", *config, "--workdir", str(workdir), *overrides])
    metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [m for m in metrics if m["split"] == "train"]
    assert [m["step"] for m in train_rows] == [2, 4] and all(
        m["infeasible"] == 0 for m in train_rows
    )
    assert [m["step"] for m in metrics if m["split"] == "valid" and "wer" in m] == [4]

    # The conv feature encoder is frozen: bit-identical to its initialization after 4 steps.
    trained = load_trained(workdir)
    task, cfg = trained.task, trained.cfg
    tx = make_optimizer(cfg.optim, cfg.train.num_steps)
    init = create_train_state(
        task, tx, task.dummy_batch(1, cfg.data.buckets[0]), trained.mesh, cfg.train.seed
    ).params
    params, step = restore_workdir_params(workdir, jax.tree.map(np.asarray, init), 4)
    assert step == 4
    frozen = jax.tree.leaves(init["encoder"]["feature_encoder"])
    after = jax.tree.leaves(params["encoder"]["feature_encoder"])
    assert all(np.array_equal(a, b) for a, b in zip(frozen, after, strict=True))
    assert not np.array_equal(
        init["encoder"]["layer0"]["mlp"]["wi"]["kernel"],
        params["encoder"]["layer0"]["mlp"]["wi"]["kernel"],
    )

    capsys.readouterr()
    cli.main(["evaluate", "--workdir", str(workdir), "--split", "test"])
    report = json.loads(sorted((workdir / "eval").glob("test-step4*.json"))[0].read_text())
    assert report["num_utterances"] == 8 and report["cer"] >= 0.0
