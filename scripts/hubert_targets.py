"""HuBERT's cluster targets for a prepared waveform dataset: fits MiniBatchKMeans (seeded) on
one split's frames and writes DATASET/{split}.targets.npz for each split, one target per frame
of the conv feature encoder, which model.family=ssl with ssl.objective=hubert reads (and
DATASET/kmeans.npz, the centroids).

Iteration 1 clusters MFCCs; iteration 2 (--workdir, --layer) the hidden states of a layer of
the model an earlier run pre-trained (fairseq's HuBERT base: layer 6 of iteration 1, 500
clusters):

  .venv/bin/python scripts/hubert_targets.py --dataset data/libri-wave --splits train dev \
      --clusters 100 [--seed 0] [--fit-split train] [--max-frames 1000000]
  .venv/bin/python scripts/hubert_targets.py --dataset data/libri-wave --splits train dev \
      --clusters 500 --workdir runs/hubert-it1 --layer 6
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import numpy as np

from jaxseq.data.ssl_targets import write_dataset_targets

PAD_SAMPLES = 16000  # waveforms are padded to a multiple of this: one compile per length


def encoder_layer_features(
    workdir: str, layer: int
) -> tuple[Callable[[np.ndarray], np.ndarray], dict[str, Any]]:
    """(waveform float32 [samples] → hidden states float32 [frames, hidden] of encoder layer
    `layer` (0: the layers' input) of an ssl workdir's model; its settings).

    Raises:
      SystemExit naming --workdir or --layer when the workdir is not pre-training or the layer
        is out of range.
    """
    import jax

    from jaxseq.data.waveform_batch import normalize_waveform
    from jaxseq.train.trained import load_trained

    trained = load_trained(workdir)
    cfg, task = trained.cfg, trained.task
    if cfg.model.family != "ssl":
        raise SystemExit(f"--workdir {workdir} trains model.family={cfg.model.family}, not ssl")
    if not 0 <= layer <= task.dims.num_hidden_layers:
        raise SystemExit(f"--layer {layer}: the encoder has {task.dims.num_hidden_layers} layers")
    params = jax.device_get(trained.params)

    @jax.jit
    def hidden(wave: jax.Array, length: jax.Array) -> jax.Array:
        out = task.model.apply({"params": params}, wave, length)
        return out.encoder.hidden_states[layer][0]  # [frames, hidden]

    def features(wave: np.ndarray) -> np.ndarray:
        n = len(wave)
        if cfg.data.normalize_waveform:
            wave = normalize_waveform(wave)
        padded = np.zeros((1, -(-n // PAD_SAMPLES) * PAD_SAMPLES), np.float32)  # [1, samples]
        padded[0, :n] = wave
        states = hidden(padded, np.array([n], np.int32))
        return np.asarray(states[: task.frames(n)], np.float32)

    settings = {"features": "encoder_layer", "workdir": str(workdir), "layer": layer}
    return features, settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="a folder written by `jaxseq prepare`")
    parser.add_argument("--splits", nargs="+", default=["train", "valid"])
    parser.add_argument("--clusters", type=int, default=100, help="k (ssl.num_classes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fit-split", default=None, help="default: the first of --splits")
    parser.add_argument("--max-frames", type=int, default=1_000_000, help="frames clustered")
    parser.add_argument("--workdir", default=None, help="iteration 2: an ssl run's workdir")
    parser.add_argument("--layer", type=int, default=6, help="iteration 2: its encoder layer")
    args = parser.parse_args()
    extra: dict[str, Any] = {}
    if args.workdir:
        features, settings = encoder_layer_features(args.workdir, args.layer)
        extra = {"features": features, "feature_settings": settings}
    written = write_dataset_targets(
        args.dataset,
        tuple(args.splits),
        args.clusters,
        seed=args.seed,
        fit_split=args.fit_split,
        max_frames=args.max_frames,
        **extra,
    )
    for split, path in written.items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
