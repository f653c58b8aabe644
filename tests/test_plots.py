"""Report figures: real PNG files that matplotlib reads back, in folders created on the way."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest

from jaxseq.evaluation.plots import plot_alignment, plot_spectrograms

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _read_png(path) -> np.ndarray:
    assert path.read_bytes()[:8] == _PNG_MAGIC
    image = matplotlib.image.imread(path)  # [height, width, channels]
    assert image.ndim == 3 and image.shape[0] > 0 and image.shape[1] > 0
    return image


def test_plot_spectrograms(tmp_path):
    rng = np.random.default_rng(0)
    panels = [
        ("reference", rng.uniform(-1.0, 1.5, size=(120, 80)).astype(np.float32)),
        ("predicted", rng.uniform(-1.0, 1.5, size=(97, 80)).astype(np.float32)),
    ]
    path = plot_spectrograms(tmp_path / "report" / "mels" / "utt0.png", panels, title="utt0")
    assert path == tmp_path / "report" / "mels" / "utt0.png"
    image = _read_png(path)
    assert image[..., :3].std() > 0.05  # something was drawn, not a blank canvas
    one = _read_png(plot_spectrograms(tmp_path / "one.png", panels[:1]))
    assert image.shape[0] > one.shape[0]  # one row per panel


def test_plot_alignment(tmp_path):
    steps, positions = 50, 30
    weights = np.zeros((steps, positions), np.float32)
    weights[np.arange(steps), np.arange(steps) * positions // steps] = 1.0  # a diagonal
    path = plot_alignment(tmp_path / "a" / "b" / "align.png", weights, title="cross-attention")
    assert path.parent.is_dir()
    assert _read_png(path)[..., :3].std() > 0.05


def test_bad_inputs_raise(tmp_path):
    with pytest.raises(ValueError, match="at least one panel"):
        plot_spectrograms(tmp_path / "x.png", [])
    with pytest.raises(ValueError, match=r"'flat'.*\(80,\)"):
        plot_spectrograms(tmp_path / "x.png", [("flat", np.zeros(80))])
    with pytest.raises(ValueError, match=r"\(5,\)"):
        plot_alignment(tmp_path / "x.png", np.zeros(5))
    assert not (tmp_path / "x.png").exists()
