"""Every config file parses and builds; bad keys and values are clear errors."""

import jax
import pytest

from jaxseq.config import ConfigError, load_config, save_config
from jaxseq.parallel.mesh import make_mesh
from jaxseq.tasks import build_task
from jaxseq.train.optimizer import make_optimizer
from jaxseq.train.state import abstract_train_state
from tests.conftest import REPO

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
# Parameter counts the README and config comments state, as (low, high) bounds.
EXPECTED_PARAMS = {
    "ctc_tiny": (0.01e6, 0.1e6),
    "ctc_demo": (1.0e6, 1.2e6),
    "ctc_base": (35e6, 45e6),
    "seq2seq_tiny": (0.01e6, 0.1e6),
    "seq2seq_digits": (1.5e6, 2.5e6),
}


def _task(cfg):
    """The config's task, its tokenizer built from the config alone (no dataset needed)."""
    if cfg.model.family == "seq2seq":
        from jaxseq.tasks.seq2seq import Seq2SeqTask
        from jaxseq.text.bpe import train_bpe

        tokenizer = train_bpe(["one two three", "four five six seven"], cfg.model.bpe_vocab_size)
        return Seq2SeqTask(cfg, tokenizer, n_mels=80)
    info = {"frontend": {"n_mels": 80}, "text": {"charset": cfg.prepare.text.charset}}
    return build_task(cfg, info)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_parses_and_builds(path, tmp_path):
    cfg = load_config(path)
    task = _task(cfg)
    mesh = make_mesh(cfg.mesh.__class__(data=1, fsdp=1, tensor=1))
    tx = make_optimizer(cfg.optim, cfg.train.num_steps)
    abstract, _ = abstract_train_state(task, tx, task.dummy_batch(1, cfg.data.buckets[0]), mesh)
    num_params = sum(x.size for x in jax.tree.leaves(abstract.params))
    low, high = EXPECTED_PARAMS[path.stem]
    assert low <= num_params <= high, num_params
    # The saved, resolved config loads back to the same object.
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_overrides_are_typed():
    cfg = load_config(None, ["model.d_model=64", "data.buckets=[100,200]", "optim.b1=0.8"])
    assert cfg.model.d_model == 64 and cfg.data.buckets == (100, 200) and cfg.optim.b1 == 0.8
    hash(cfg)  # frozen and hashable: usable as a static argument


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.d_modle=3", "unknown config key 'model.d_modle'; did you mean 'model.d_model'?"),
        ("trian.num_steps=3", "unknown config key 'trian'; did you mean 'train'?"),
        ("model.d_model=wide", "bad value for config key 'model.d_model'"),
        ("train.compute_dtype=fp8", "'train.compute_dtype' is 'fp8'; choose one of"),
        ("eval.decoder=viterbi", "'eval.decoder' is 'viterbi'"),
        ("model.d_model", "not of the form a.b=c"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("?", r"\?")):
        load_config(None, [override])


def test_bad_key_in_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  num_step: 5\n")
    with pytest.raises(ConfigError, match=rf"{path}.*'train.num_step'.*'train.num_steps'"):
        load_config(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
