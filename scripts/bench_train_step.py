"""Benchmark: one full training step of jaxseq against transformers + PyTorch.

The same Whisper-shaped model on both sides (whisper-tiny dimensions by default: d_model 384,
4 + 4 layers, 6 heads, ffn 1536, vocab 51865, 80 mels; `--size base` for whisper-base), a batch
of `--batch` utterances of 3,000 log-mel frames (30 s) and 48 target tokens, fp32 by default,
AdamW with global-norm clipping at 1.0 and no dropout. A step is forward, backward and the
optimizer update, timed to completion (jax: `block_until_ready`; torch: the update has
returned, `torch.cuda.synchronize()` on a GPU).

jaxseq runs its real train step (`jaxseq.train.steps.jit_train_step` with the config's task
and optimizer, state donated) on a one-device mesh; transformers runs
`WhisperForConditionalGeneration` with `torch.optim.AdamW` and `clip_grad_norm_`. Steps are
interleaved (jax, torch, jax, torch, ...) so that both see the same machine load; each side's
median over `--steps` steps after `--warmup` steps is reported, with jaxseq's compile time.
Torch uses as many threads as the machine has cores, like XLA.

    .venv/bin/python scripts/bench_train_step.py                    # CPU, whisper-tiny, fp32
    .venv/bin/python scripts/bench_train_step.py --device gpu --size base --dtype bfloat16
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SIZES = {  # d_model, layers (encoder = decoder), heads, ffn
    "tiny": (384, 4, 6, 1536),
    "base": (512, 6, 8, 2048),
}
VOCAB, N_MELS, FRAMES = 51865, 80, 3000


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--size", choices=sorted(SIZES), default="tiny")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--tokens", type=int, default=48, help="target tokens per utterance")
    p.add_argument("--steps", type=int, default=5, help="timed steps per side")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
    p.add_argument("--only", choices=["jax", "torch"], help="time one side only")
    return p.parse_args()


def jax_side(args: argparse.Namespace):
    """jaxseq's train step on the config's whisper model: (step(), compile seconds, FLOPs)."""
    import jax
    import numpy as np

    from jaxseq.config import load_config
    from jaxseq.parallel.batch import to_global
    from jaxseq.parallel.mesh import make_mesh
    from jaxseq.parallel.sharding import sharding_context
    from jaxseq.tasks.registry import task_class
    from jaxseq.train.optimizer import make_optimizer
    from jaxseq.train.state import abstract_train_state, create_train_state
    from jaxseq.train.steps import jit_train_step

    d, layers, heads, ffn = SIZES[args.size]
    cfg = load_config(
        {
            "model": {
                "family": "whisper",
                "d_model": d,
                "num_heads": heads,
                "num_layers": layers,
                "decoder_layers": layers,
                "mlp_dim": ffn,
                "vocab_size": VOCAB,
                "dropout": 0.0,
                "label_smoothing": 0.0,
            },
            "data": {
                "batch_size": args.batch,
                "buckets": [FRAMES],
                "max_label_length": args.tokens,
            },
            "optim": {"weight_decay": 0.01, "warmup_steps": 0},
            "train": {"compute_dtype": args.dtype},
            "mesh": {"data": 1},
        }
    )
    task = task_class("whisper").from_config(cfg)
    device = jax.devices(args.device)[0]
    mesh = make_mesh(cfg.mesh, [device])
    tx = make_optimizer(cfg.optim, 1000)
    rng = np.random.default_rng(0)
    host = task.dummy_batch(args.batch, FRAMES)
    host["features"] = rng.standard_normal(host["features"].shape).astype(np.float32)
    host["labels"] = rng.integers(0, 50000, host["labels"].shape).astype(np.int32)
    host["label_lengths"][:] = args.tokens
    _, shardings = abstract_train_state(task, tx, host, mesh)
    state = create_train_state(task, tx, host, mesh, seed=0)
    step_fn = jit_train_step(task, tx, mesh, shardings)
    streak = jax.device_put(np.zeros((), np.int32), device)
    with sharding_context(mesh):
        batch = to_global(host, mesh)
        start = time.perf_counter()
        compiled = step_fn.lower(state, batch, streak).compile()
        compile_seconds = time.perf_counter() - start
    cost = compiled.cost_analysis()
    flops = float((cost[0] if isinstance(cost, list) else cost).get("flops", 0.0))
    holder = {"state": state}

    def step() -> None:
        with sharding_context(mesh):
            holder["state"], metrics, _ = step_fn(holder["state"], batch, streak)
        jax.block_until_ready((holder["state"], metrics))

    return step, compile_seconds, flops


def torch_side(args: argparse.Namespace):
    """transformers' WhisperForConditionalGeneration + torch AdamW: step()."""
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count() or 1)
    d, layers, heads, ffn = SIZES[args.size]
    config = transformers.WhisperConfig(
        vocab_size=VOCAB,
        num_mel_bins=N_MELS,
        d_model=d,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_ffn_dim=ffn,
        decoder_ffn_dim=ffn,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
    )
    device = "cuda" if args.device == "gpu" else "cpu"
    model = transformers.WhisperForConditionalGeneration(config).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(args.batch, N_MELS, FRAMES, generator=gen).to(device)
    # The same decoder length as jaxseq's: the 4-token prompt, then the target tokens and end.
    labels = torch.randint(0, 50000, (args.batch, args.tokens + 4), generator=gen).to(device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

    def step() -> None:
        with autocast:
            loss = model(input_features=features, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    return step


def timed(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def main() -> None:
    args = parse_args()
    if args.device == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sides = {}
    if args.only != "torch":
        jax_step, compile_seconds, flops = jax_side(args)
        sides["jaxseq"] = jax_step
    if args.only != "jax":
        sides["transformers"] = torch_side(args)
    for _ in range(args.warmup):
        for step in sides.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.steps):
        for name, step in sides.items():
            times[name].append(timed(step))
    median = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"train step, whisper-{args.size} dims, batch {args.batch} x {FRAMES} frames x "
        f"{args.tokens} tokens, {args.dtype}, AdamW, {args.device} ({os.cpu_count()} cores); "
        f"median of {args.steps} after {args.warmup} warm-up"
    )
    for name, t in times.items():
        steps = ", ".join(f"{x * 1e3:.0f}" for x in t)
        print(f"  {name:<13} {median[name] * 1e3:9.1f} ms   (steps: {steps})")
    if "jaxseq" in median:
        print(f"  jaxseq compile {compile_seconds:.1f} s; {flops / 1e12:.3f} TFLOP per step")
        print(f"  jaxseq achieved {flops / median['jaxseq'] / 1e12:.3f} TFLOP/s")
    if len(median) == 2:
        ratio = median["transformers"] / median["jaxseq"]
        print(f"  speed-up jaxseq vs transformers: {ratio:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
