"""PNG figures for evaluation reports: log-mel spectrograms and attention alignments.

Figures are drawn on a `matplotlib.figure.Figure` with its own Agg canvas, never through pyplot:
no global backend is selected, nothing is left open, and it works without a display.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # matplotlib is imported by the functions that plot (about 0.3 s)
    from matplotlib.figure import Figure

_DPI = 100


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    """Writes `fig` as a PNG at `path`, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).print_png(path)
    return path


def plot_spectrograms(
    path: str | os.PathLike, panels: list[tuple[str, np.ndarray]], title: str = ""
) -> Path:
    """Stacks log-mel spectrograms, one row each, on a shared colour scale.

    Args:
      path: the PNG to write (parent folders are created).
      panels: (name, float [frames, n_mels]) pairs; lengths may differ (x axes are shared).
      title: figure title.

    Returns:
      `path`.
    """
    if not panels:
        raise ValueError("plot_spectrograms needs at least one panel")
    arrays = [np.asarray(mel, dtype=np.float32) for _, mel in panels]
    for (name, _), mel in zip(panels, arrays, strict=True):
        if mel.ndim != 2 or mel.size == 0:
            raise ValueError(
                f"panel {name!r} must be a non-empty [frames, n_mels], got {mel.shape}"
            )
    vmin = min(float(m.min()) for m in arrays)
    vmax = max(float(m.max()) for m in arrays)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 2.5 * len(panels) + 0.5), dpi=_DPI, layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (name, _), mel in zip(axes, panels, arrays, strict=True):
        image = ax.imshow(
            mel.T,  # [n_mels, frames]: mel bins up the y axis
            origin="lower",
            aspect="auto",
            interpolation="nearest",
            vmin=vmin,
            vmax=vmax,
            cmap="magma",
        )
        ax.set_title(name)
        ax.set_ylabel("mel bin")
    axes[-1].set_xlabel("frame")
    fig.colorbar(image, ax=list(axes), label="log-mel")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_alignment(
    path: str | os.PathLike,
    weights: np.ndarray,
    title: str = "",
    xlabel: str = "decoder step",
    ylabel: str = "encoder position",
) -> Path:
    """Draws attention weights as an image, encoder positions up the y axis.

    Args:
      path: the PNG to write (parent folders are created).
      weights: float [steps, positions].
      title, xlabel, ylabel: labels.

    Returns:
      `path`.
    """
    weights = np.asarray(weights, dtype=np.float32)
    if weights.ndim != 2 or weights.size == 0:
        raise ValueError(f"weights must be a non-empty [steps, positions], got {weights.shape}")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 6), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(
        weights.T,  # [positions, steps]
        origin="lower",
        aspect="auto",
        interpolation="nearest",
        cmap="viridis",
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    fig.colorbar(image, ax=ax, label="weight")
    return _save(fig, path)
