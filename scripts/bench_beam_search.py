"""Benchmark: jaxseq beam search against transformers' PyTorch `generate` (CPU or GPU).

A random whisper-tiny-sized model (d_model 384, 4 + 4 layers, 6 heads, ffn 1536, vocab 51865,
80 mels, 3000 input frames) is built in transformers, saved, and converted with
`load_hf_whisper`; both sides then decode the same random log-mel batch (8 utterances, 4 beams,
exactly 64 new tokens: EOS is suppressed in jaxseq and `min_new_tokens=64` in transformers).
Timings are features → tokens (encoder included), median of a few runs after a warm-up (which
also compiles the jaxseq search). Torch uses as many threads as the machine has cores, like XLA.
Whisper-specific parts of transformers' generate are switched off
(`jaxseq.convert.hf_generate`), so both run plain beam search.

    .venv/bin/python scripts/bench_beam_search.py [--runs 3] [--device gpu]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.hf_whisper

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from jaxseq.convert import load_hf_whisper  # noqa: E402
from jaxseq.convert.hf_generate import plain_config_kwargs, plain_generate_kwargs  # noqa: E402
from jaxseq.decoding.beam_search import LengthPenalty, beam_search  # noqa: E402
from jaxseq.models.whisper import WhisperModel, search_setup  # noqa: E402
from tests.hf_whisper import WHISPER_TINY, random_whisper  # noqa: E402

BATCH, BEAMS, NEW_TOKENS = 8, 4, 64
EOS, START = 50257, 50258


def build_model(seed: int = 0) -> transformers.WhisperForConditionalGeneration:
    """A random whisper-tiny-sized model; weights redrawn wider than HF's init (std 0.02), so the
    next-token distributions are peaked and float32 rounding does not decide between near-ties."""
    return random_whisper(
        0.1,
        seed=seed,
        **WHISPER_TINY,
        pad_token_id=EOS,
        bos_token_id=EOS,
        eos_token_id=EOS,
        decoder_start_token_id=START,
        **plain_config_kwargs(),
    )


def hf_generate(model, features: torch.Tensor) -> torch.Tensor:
    """transformers' generate, plain beam search: generated ids [batch, NEW_TOKENS]."""
    with torch.inference_mode():
        # a ModelOutput, whose sequences keep the prompt (the start token) before the ids
        out = model.generate(
            features, **plain_generate_kwargs(BEAMS, NEW_TOKENS, min_new_tokens=NEW_TOKENS)
        )
    assert (out.sequences[:, 0] == START).all(), out.sequences[:, :2]
    return out.sequences[:, 1:]  # drop the start token


def jax_search_fn(model: WhisperModel, params):
    """jit: features [batch, frames, mels] → best hypothesis ids [batch, NEW_TOKENS]."""

    @jax.jit
    def run(params, features):
        lengths = jnp.full((features.shape[0],), features.shape[1])
        encoded, mask = model.apply(
            {"params": params}, features, lengths, method=WhisperModel.encode
        )
        cache, step_fn = search_setup(model, params, encoded, mask, max_length=1 + NEW_TOKENS)
        prompt = jnp.full((features.shape[0], 1), START, jnp.int32)
        out = beam_search(
            step_fn,
            cache,
            prompt,
            beam_size=BEAMS,
            max_new_tokens=NEW_TOKENS,
            eos_id=EOS,
            length_penalty=LengthPenalty.transformers(1.0),
            early_stopping=False,
            suppress_ids=[EOS],
        )
        return out.sequences[:, 0]

    return lambda features: run(params, features)


def log(message: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    print(message, file=sys.stderr, flush=True)


def median_ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs per side (median)")
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    with jax.default_device(jax.devices(args.device)[0]):
        run(args)


def run(args: argparse.Namespace) -> None:
    """Both searches on `args.device` (jax: the default device set by the caller)."""
    torch_device = "cuda" if args.device == "gpu" else "cpu"

    hf_model = build_model()
    with tempfile.TemporaryDirectory() as folder:
        hf_model.save_pretrained(folder)
        params, dims = load_hf_whisper(folder)
    hf_model = hf_model.to(torch_device)
    params = jax.tree.map(jnp.asarray, params)
    search = jax_search_fn(WhisperModel(dims), params)

    rng = np.random.default_rng(0)
    features = rng.normal(0.0, 1.0, (BATCH, dims.num_frames, dims.n_mels)).astype(np.float32)
    jax_features = jnp.asarray(features)
    torch_features = torch.from_numpy(np.ascontiguousarray(features.transpose(0, 2, 1)))
    torch_features = torch_features.to(torch_device)

    start = time.perf_counter()
    ours = np.asarray(jax.block_until_ready(search(jax_features)))  # compiles
    compile_s = time.perf_counter() - start
    log(f"jaxseq first call (compile + run): {compile_s:.1f} s")
    start = time.perf_counter()
    theirs = hf_generate(hf_model, torch_features).cpu().numpy()  # warm-up
    log(f"transformers warm-up call: {time.perf_counter() - start:.1f} s")
    jax_ms = median_ms(lambda: jax.block_until_ready(search(jax_features)), args.runs)
    log(f"jaxseq: {jax_ms:.0f} ms")
    hf_ms = median_ms(lambda: hf_generate(hf_model, torch_features).cpu(), args.runs)
    log(f"transformers: {hf_ms:.0f} ms")

    same_rows = 0
    if ours.shape == theirs.shape:
        same_rows = int((ours == theirs).all(axis=1).sum())
    else:
        log(f"shapes differ: jaxseq {ours.shape}, transformers {theirs.shape}")
    print(
        f"whisper-tiny-sized random model, batch {BATCH}, {BEAMS} beams, {NEW_TOKENS} new "
        f"tokens, {args.device} ({os.cpu_count()} cores; torch threads "
        f"{torch.get_num_threads()}), "
        f"median of {args.runs}; jaxseq first call (compile + run) {compile_s:.1f} s\n"
    )
    print("| decoder | ms / batch | speed vs transformers | tokens match |")
    print("|---|---:|---:|---|")
    print(f"| transformers generate (PyTorch) | {hf_ms:.0f} | 1.00x | (reference) |")
    print(
        f"| jaxseq beam_search (jit) | {jax_ms:.0f} | {hf_ms / jax_ms:.2f}x | "
        f"{same_rows}/{BATCH} utterances |"
    )


if __name__ == "__main__":
    main()
