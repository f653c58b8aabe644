"""Benchmark jaxseq's CTC loss against optax.ctc_loss (forward + backward, mean loss).

Usage: .venv/bin/python scripts/bench_ctc_loss.py [--batch 16 --frames 400 --labels 60]
       [--device gpu]

Prints a markdown table: wall time (median of --runs, runs of the two losses interleaved so
that background load hits both alike) and XLA's temp + output buffer sizes from
``memory_analysis()`` (the "temp MiB" columns; output includes the [batch, frames, vocab] gradient).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxseq.losses.ctc import ctc_loss


def make_batch(
    rng: np.random.Generator, batch: int, frames: int, labels: int, vocab: int
) -> tuple[jax.Array, ...]:
    """Random logits [batch, frames, vocab]; lengths of 75-100% frames, 67-100% labels."""
    logits = rng.normal(size=(batch, frames, vocab)).astype(np.float32)
    logit_lengths = rng.integers(frames * 3 // 4, frames + 1, size=batch)
    label_ids = rng.integers(1, vocab, size=(batch, labels))
    label_lengths = rng.integers(labels * 2 // 3, labels + 1, size=batch)
    return tuple(
        jnp.asarray(a)
        for a in (
            logits,
            logit_lengths.astype(np.int32),
            label_ids.astype(np.int32),
            label_lengths.astype(np.int32),
        )
    )


def jaxseq_mean(logits, logit_lengths, labels, label_lengths):
    return ctc_loss(logits, logit_lengths, labels, label_lengths).mean()


def optax_mean(logits, logit_lengths, labels, label_lengths):
    logit_paddings = jnp.arange(logits.shape[1])[None, :] >= logit_lengths[:, None]
    label_paddings = jnp.arange(labels.shape[1])[None, :] >= label_lengths[:, None]
    return optax.ctc_loss(
        logits, logit_paddings.astype(jnp.float32), labels, label_paddings.astype(jnp.float32)
    ).mean()


def temp_mib(fn: Callable, args: tuple) -> float:
    """XLA temp + output buffer bytes of the compiled function, in MiB."""
    stats = jax.jit(fn).lower(*args).compile().memory_analysis()
    return (stats.temp_size_in_bytes + stats.output_size_in_bytes) / 2**20


def time_interleaved(fns: dict[str, Callable], args: tuple, runs: int) -> dict[str, float]:
    """Median wall time in ms of each function, alternating between them run by run."""
    for fn in fns.values():  # compile and warm up
        for _ in range(2):
            jax.block_until_ready(fn(*args))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * float(np.median(t)) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--labels", type=int, default=60)
    parser.add_argument("--vocab", type=int, nargs="+", default=[32, 1024])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    args = parser.parse_args()
    with jax.default_device(jax.devices(args.device)[0]):
        run(args)


def run(args: argparse.Namespace) -> None:
    """The table for every vocabulary size, on the default device set by the caller."""

    print(
        f"batch {args.batch}, frames {args.frames}, labels {args.labels}, "
        f"{args.device}, value_and_grad of the mean loss\n"
    )
    print("| vocab | jaxseq ms | optax ms | speed ratio | jaxseq temp MiB | optax temp MiB |")
    print("|---:|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for vocab in args.vocab:
        batch = make_batch(rng, args.batch, args.frames, args.labels, vocab)
        fns = {
            "jaxseq": jax.jit(jax.value_and_grad(jaxseq_mean)),
            "optax": jax.jit(jax.value_and_grad(optax_mean)),
        }
        ms = time_interleaved(fns, batch, args.runs)
        mem = {
            name: temp_mib(jax.value_and_grad(f), batch)
            for name, f in (("jaxseq", jaxseq_mean), ("optax", optax_mean))
        }
        print(
            f"| {vocab} | {ms['jaxseq']:.1f} | {ms['optax']:.1f} | "
            f"{ms['optax'] / ms['jaxseq']:.2f}x | {mem['jaxseq']:.1f} | {mem['optax']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
