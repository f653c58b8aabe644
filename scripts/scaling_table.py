"""The scaling table of docs/scaling.md: which sharding preset and remat policy make each shipped
config's train step fit a TPU topology, compiled for it with `jaxseq compile` (libtpu, no TPU).

For every config and topology it tries, in order, the config's own mesh and remat, then
`mesh.preset=data`, `mesh.preset=fsdp`, and `mesh.preset=fsdp model.remat=full`, and keeps the
first that fits. Each result is appended to a JSON-lines file as soon as it is known, so a
rerun skips what is done (large configs take many minutes each on a small machine). It then
prints the markdown table.

    .venv/bin/python scripts/scaling_table.py --out runs/scaling.jsonl
    .venv/bin/python scripts/scaling_table.py --configs whisper_tiny --topologies v5p:2x2x2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

from jaxseq.config import load_config  # noqa: E402
from jaxseq.parallel.mesh import mesh_shape  # noqa: E402
from jaxseq.train.compile import GIB, compile_config, topology_devices  # noqa: E402

CONFIGS = [
    "whisper_tiny",
    "whisper_base",
    "whisper_small",
    "whisper_medium",
    "whisper_large_v3",
    "ctc_base",
]
TOPOLOGIES = ["v5p:2x2x2", "v5e:4x4", "v6e:2x4"]
NAMES = {"v5p:2x2x2": "v5p-8", "v5e:4x4": "v5e-16", "v6e:2x4": "v6e-8"}
CANDIDATES = [  # overrides; [] = the config as shipped
    [],
    ["mesh.preset=data"],
    ["mesh.preset=fsdp"],
    ["mesh.preset=fsdp", "model.remat=full"],
]
REPO = Path(__file__).resolve().parents[1]


def fit(config: str, topology: str, mfu: float) -> dict:
    """The first candidate whose train step fits, else the last one tried (fits: false)."""
    tried, seen = [], set()
    devices = len(topology_devices(topology))
    for overrides in CANDIDATES:
        path = REPO / "configs" / f"{config}.yaml"
        cfg = load_config(path, ["data.dataset=/nonexistent", *overrides])
        setting = (mesh_shape(cfg.mesh, devices), cfg.model.remat)
        if setting in seen:  # e.g. the shipped mesh is already preset=data
            continue
        seen.add(setting)
        report = compile_config(cfg, topology, mfu=mfu, evaluation=False)
        train = report["train"]
        row = {
            "config": config,
            "topology": topology,
            "overrides": overrides,
            "mesh": report["mesh"],
            "remat": report["remat"],
            "fits": train["fits"],
            "peak_bytes": train["peak_bytes"],
            "parameter_bytes": train["parameter_bytes"],
            "optimizer_bytes": train["optimizer_bytes"],
            "flops_per_step": train.get("flops_per_step"),
            "step_seconds": report.get("at_mfu", {}).get("step_seconds"),
            "global_batch": report["global_batch"],
            "compile_seconds": train["compile_seconds"],
            "parameters": report["parameters"],
        }
        tried.append(row)
        print(f"  {config} on {topology} with {overrides or 'as shipped'}: fits={train['fits']}")
        if train["fits"]:
            break
    return {**tried[-1], "tried": len(tried)}


def markdown(rows: list[dict]) -> str:
    head = (
        "| config | params | topology | fits | mesh (data x fsdp x tensor) | remat | GiB per "
        "device | TFLOP per step | step at 40% MFU |\n|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        mesh = "x".join(str(r["mesh"][k]) for k in ("data", "fsdp", "tensor"))
        peak = "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / GIB:.1f}"
        flops = "-" if r["flops_per_step"] is None else f"{r['flops_per_step'] / 1e12:.1f}"
        step = "-" if r["step_seconds"] is None else f"{r['step_seconds'] * 1e3:.0f} ms"
        name = NAMES.get(r["topology"], r["topology"])
        lines.append(
            f"| {r['config']} | {r['parameters'] / 1e6:.0f}M | {name} | "
            f"{'yes' if r['fits'] else 'no'} | {mesh} | {r['remat']} | {peak} | {flops} | {step} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/scaling.jsonl"))
    p.add_argument("--configs", nargs="+", default=CONFIGS)
    p.add_argument("--topologies", nargs="+", default=TOPOLOGIES)
    p.add_argument("--mfu", type=float, default=0.4)
    args = p.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = []
    if args.out.exists():
        done = [json.loads(line) for line in args.out.read_text().splitlines() if line]
    have = {(r["config"], r["topology"]) for r in done}
    for config in args.configs:
        for topology in args.topologies:
            if (config, topology) in have:
                continue
            row = fit(config, topology, args.mfu)
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            done.append(row)
    wanted = [r for r in done if r["config"] in args.configs and r["topology"] in args.topologies]
    print(markdown(wanted))


if __name__ == "__main__":
    sys.exit(main())
