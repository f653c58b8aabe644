"""Shared test set-up: offline hubs, and a tiny synthesized + prepared digits dataset."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "ctc_tiny.yaml"


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A prepared dataset from a tiny espeak-ng digits corpus (train/valid/test)."""
    from jaxseq.config import load_config
    from jaxseq.data.prepare import prepare_corpus
    from jaxseq.data.synth import synthesize_corpus

    root = tmp_path_factory.mktemp("tiny")
    cfg = load_config(TINY_CONFIG)
    synthesize_corpus(root / "audio", cfg.synth, num_workers=1, progress=False)
    prepare_corpus(root / "audio", root / "prepared", cfg.prepare, num_workers=1, progress=False)
    return root / "prepared"
