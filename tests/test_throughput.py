"""Throughput metrics of the train loop: model FLOPs from the compiled step against an analytic
count, the peak table, and every rate logged in metrics.jsonl."""

import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseq.config import load_config
from jaxseq.train.chips import peak_tflops
from jaxseq.train.loop import train
from jaxseq.train.throughput import Throughput, device_flops
from tests.conftest import TINY_CONFIG


def test_device_flops_counts_a_matmul_chain_and_its_gradient():
    """20 layers tanh(x @ w), x [64, 256], w [256, 256], value and gradient w.r.t. w: forward
    2·64·256·256 per layer; backward twice that (dx and dw) except no dx at the first layer."""
    layers, b, d = 20, 64, 256

    def f(w, x):
        for _ in range(layers):
            x = jnp.tanh(x @ w)
        return x.sum()

    step = jax.jit(jax.value_and_grad(f))
    w, x = jnp.ones((d, d)), jnp.ones((b, d))
    step(w, x)
    matmuls = 2 * b * d * d * (3 * layers - 1)
    flops = device_flops(step, w, x)
    # XLA also counts the elementwise ops (tanh, its derivative, the sum): < 1% here.
    assert matmuls <= flops <= 1.01 * matmuls


@pytest.mark.parametrize(
    "kind, peak",
    [
        ("TPU v4", 275.0),
        ("TPU v5 lite", 197.0),
        ("TPU v5", 459.0),
        ("TPU v6 lite", 918.0),
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("cpu", None),
    ],
)
def test_peak_by_device_kind(kind, peak):
    assert peak_tflops(types.SimpleNamespace(device_kind=kind)) == peak


def test_rates_over_a_window():
    meter = Throughput(num_devices=4, peak=100.0, hop_seconds=0.01)
    meter.add(3e12, 0.5)
    meter.add(3e12, 0.0)
    out = meter.scalars({"audio_frames": 6000.0, "tokens": 800.0}, seconds=2.0)
    assert out == {
        "flops_per_step": 3e12,
        "tflops_per_second": 3.0,
        "audio_seconds_per_second": 30.0,
        "data_wait": 0.25,
        "mfu": 3.0 / 400.0,
        "tokens_per_second": 400.0,
    }
    meter.reset()
    assert "mfu" not in Throughput(1, None, 0.01).scalars({"audio_frames": 0.0}, 1.0)


def test_metrics_jsonl_has_flops_and_rates(tiny_dataset, tmp_path):
    """Every logged train line carries the compiled step's FLOPs (per its padded length), the
    rates and the data-wait share; the audio seconds are the batches' unpadded frames × hop."""
    cfg = load_config(
        TINY_CONFIG,
        [f"data.dataset={tiny_dataset}", "train.num_steps=4", "train.log_every=2"]
        + ["data.eval_split=''", "data.buckets=[512]"],
    )
    summary = train(cfg, tmp_path / "run")
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [m for m in lines if m["split"] == "train"]
    assert [m["step"] for m in logged] == [2, 4] and summary["compiled_shapes"] == [512]
    for m in logged:
        assert m["flops_per_step"] == logged[0]["flops_per_step"] > 1e6  # one program
        assert 0.0 <= m["data_wait"] < 1.0 and "mfu" not in m  # a CPU: no known peak
        seconds = m["tokens"] / m["tokens_per_second"]
        np.testing.assert_allclose(m["tflops_per_second"], 2 * m["flops_per_step"] / seconds / 1e12)
        hop = cfg.prepare.frontend.hop_length / cfg.prepare.frontend.sample_rate
        np.testing.assert_allclose(m["audio_seconds_per_second"] * seconds, m["audio_frames"] * hop)
        assert m["audio_frames"] > 0
