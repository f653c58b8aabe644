"""What jaxseq knows of accelerator chips: peak dense bf16 FLOP/s (for MFU) and HBM per chip
(for `jaxseq compile`'s fit check), by `device.device_kind`.

The longest matching prefix of the kind wins: "TPU v5 lite" is v5e, "TPU v5" alone is v5p.
"""

from __future__ import annotations

from typing import Any

# Peak dense bfloat16 TFLOP/s of one chip (one device).
PEAK_BF16_TFLOPS = {
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,  # v5e
    "TPU v5e": 197.0,
    "TPU v5": 459.0,  # v5p
    "TPU v5p": 459.0,
    "TPU v6 lite": 918.0,  # v6e (Trillium)
    "TPU v6e": 918.0,
    "NVIDIA A100": 312.0,
    "NVIDIA H100": 989.0,  # SXM, dense
    "NVIDIA H200": 989.0,
}

# High-bandwidth memory of one chip, GiB (Cloud TPU and NVIDIA data sheets).
HBM_GIB = {
    "TPU v4": 32.0,
    "TPU v5 lite": 16.0,
    "TPU v5e": 16.0,
    "TPU v5": 95.0,
    "TPU v5p": 95.0,
    "TPU v6 lite": 32.0,
    "TPU v6e": 32.0,
    "NVIDIA A100": 80.0,  # the 80 GB part; a GPU present reports its own limit
    "NVIDIA H100": 80.0,
    "NVIDIA H200": 141.0,
}


def _lookup(table: dict[str, float], device: Any) -> float | None:
    kind = getattr(device, "device_kind", "")
    matches = [k for k in table if kind.startswith(k)]
    return table[max(matches, key=len)] if matches else None


def peak_tflops(device: Any) -> float | None:
    """The chip's peak bf16 TFLOP/s from PEAK_BF16_TFLOPS; None for an unknown kind (CPUs)."""
    return _lookup(PEAK_BF16_TFLOPS, device)


def hbm_bytes(device: Any) -> int | None:
    """The memory one device may use: what a local accelerator reports (`memory_stats`), else
    HBM_GIB for its kind; None when unknown (CPUs)."""
    stats = None
    if getattr(device, "platform", "") == "gpu":
        stats = device.memory_stats()
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    gib = _lookup(HBM_GIB, device)
    return None if gib is None else int(gib * 2**30)
