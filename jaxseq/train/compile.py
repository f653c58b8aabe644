"""`jaxseq compile`: the pod check before the pod (MaxText's train_compile.py).

Lowers and compiles the real steps of a config, without running them: the train step of
`jit_train_step` (the same task, optimizer, mesh, sharding rules, remat policy, global batch and
microbatches as `jaxseq train`) and the evaluation step of `eval_step`, for a named TPU
topology (libtpu compiles for chips that are not there: `pip install jaxseq[tpu]`) or for the
local devices. XLA's analyses of the compiled programs give the memory of one device, set
against the chip's HBM, and the FLOPs of a step; the step time follows at an assumed MFU.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from jaxseq.config import Config, frontend_settings, to_yaml
from jaxseq.config_data import seconds_per_frame
from jaxseq.data.pipeline import load_dataset_info
from jaxseq.errors import JaxseqError
from jaxseq.parallel.mesh import data_parallel_size, make_mesh
from jaxseq.parallel.sharding import batch_sharding, replicated, sharding_context
from jaxseq.tasks.base import Task
from jaxseq.tasks.registry import build_task, task_class
from jaxseq.train.chips import hbm_bytes, peak_tflops
from jaxseq.train.optimizer import make_optimizer
from jaxseq.train.state import abstract_train_state
from jaxseq.train.steps import check_batch_sizes, eval_step, jit_train_step
from jaxseq.train.throughput import compiled_flops

GIB = 2.0**30
COMPILE_DIR = "compile"  # in a workdir: one JSON report and the HLO per compiled target


def topology_devices(topology: str, num_slices: int = 1) -> list[Any]:
    """The devices of a TPU topology such as "v5p:2x2x2", "v5e:4x4", "v6e:2x4" or "v4:2x2x1"
    (`num_slices` of them joined over the data-center network), with no TPU present.

    Raises:
      JaxseqError: libtpu is missing, or libtpu does not know the topology.
    """
    try:
        import libtpu  # noqa: F401  (jax finds it by itself; imported only to explain its absence)
    except ImportError:
        raise JaxseqError(
            f"--topology {topology} compiles for TPUs with libtpu, which is not installed: "
            "pip install 'jaxseq[tpu]' (or leave out --topology to compile for this machine)"
        ) from None
    from jax.experimental import topologies

    try:
        desc = topologies.get_topology_desc(
            topology_name=topology, platform="tpu", num_slices=num_slices
        )
    except Exception as err:  # libtpu's errors are XlaRuntimeError/ValueError, varying by name
        if "lockfile" in str(err):
            raise JaxseqError(
                f"--topology {topology}: another process holds libtpu ({err}); wait for it, or "
                "set ALLOW_MULTIPLE_LIBTPU_LOAD=1 (harmless where no TPU is attached)"
            ) from None
        raise JaxseqError(
            f"--topology {topology!r} is not a TPU topology libtpu knows ({err}); use "
            "GENERATION:CHIPS such as v5p:2x2x2, v5p:4x4x4, v5e:4x4, v6e:2x4 or v4:2x2x1"
        ) from None
    return list(desc.devices)


def compile_task(cfg: Config) -> Task:
    """The task `jaxseq train` would build when `data.dataset` is a prepared dataset; else the
    family's `Task.from_config` (the same model and shapes, no data needed)."""
    dataset = Path(cfg.data.dataset)
    if (dataset / "dataset.json").is_file():
        return build_task(cfg, load_dataset_info(dataset, cfg.data.train_split))
    return task_class(cfg.model.family).from_config(cfg)


def _abstract(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, Any]:
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding) for k, v in batch.items()}


def _device_bytes(tree: Any) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard)."""
    leaves = [x for x in jax.tree.leaves(tree) if isinstance(x, jax.ShapeDtypeStruct)]
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in leaves)


def _analysis(compiled: Any, devices: int) -> dict[str, Any]:
    """Per-device memory (bytes) of a compiled program and its FLOPs over all devices."""
    mem = compiled.memory_analysis()
    out = {
        "argument_bytes": int(mem.argument_size_in_bytes),
        "output_bytes": int(mem.output_size_in_bytes),
        "alias_bytes": int(mem.alias_size_in_bytes),  # outputs written over donated arguments
        "temp_bytes": int(mem.temp_size_in_bytes),  # activations and XLA's scratch
        "flops_per_step": compiled_flops(compiled) * devices,
    }
    # What MaxText reports as the total: live arguments, outputs and temporaries at once.
    out["peak_bytes"] = (
        out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"] + out["temp_bytes"]
    )
    return out


_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _out_of_memory(message: str) -> dict[str, Any]:
    """What XLA's refusal to compile says of the memory: "... the total memory required for HLO
    temporaries (27.53G) exceeds available HBM (15.75G)" (TPU)."""
    line = next((x for x in message.splitlines() if "RESOURCE_EXHAUSTED" in x), message)
    out: dict[str, Any] = {"xla_error": line.strip(), "peak_bytes": None}
    found = re.search(r"\(([\d.]+)([KMGT])\) exceeds available HBM \(([\d.]+)([KMGT])\)", line)
    if found:
        need, unit, have, have_unit = found.groups()
        out["temp_bytes"] = int(float(need) * _UNITS[unit])
        out["xla_available_bytes"] = int(float(have) * _UNITS[have_unit])
    return out


def _compiled_part(
    jitted: Any, args: tuple, mesh: Any, hlo_file: Path | None, hbm: int | None
) -> dict[str, Any]:
    """Compiles `jitted` for `args` (ShapeDtypeStructs) and reports its memory and FLOPs, and
    whether it fits `hbm` bytes; a compiler that runs out of device memory is a part that does
    not fit (XLA for TPUs rematerializes activations by itself before it gives up)."""
    start = time.time()
    try:
        with sharding_context(mesh):
            compiled = jitted.lower(*args).compile()
    except jax.errors.JaxRuntimeError as err:
        if "RESOURCE_EXHAUSTED" not in str(err):
            raise
        part = {**_out_of_memory(str(err)), "fits": False}
    else:
        part = _analysis(compiled, mesh.size)
        part["fits"] = None if hbm is None else part["peak_bytes"] <= hbm
        if hlo_file is not None:
            hlo_file.write_text(compiled.as_text())
    part["compile_seconds"] = round(time.time() - start, 1)
    return part


def compile_config(
    cfg: Config,
    topology: str | None = None,
    num_slices: int = 1,
    mfu: float = 0.4,
    workdir: str | Path | None = None,
    evaluation: bool = True,
) -> dict[str, Any]:
    """Compiles the train and (with `evaluation`) the evaluation step of `cfg` for `topology`
    (default: the local devices) and returns the report; nothing runs. With `workdir`, process
    0 writes the report as `compile/TAG.json` and each compiled program's HLO as
    `compile/TAG.{train,eval}.hlo.txt`.

    The report (per device unless said otherwise): parameter, optimizer-state, argument,
    output, temporary and peak bytes of each step against the chip's HBM (`fits`), the FLOPs of
    a step over all devices, and at `mfu` of the chips' peak bf16 FLOP/s the step time, label
    tokens and audio hours per second (chips with a known peak).
    """
    if not 0.0 < mfu <= 1.0:
        raise JaxseqError(f"--mfu {mfu} must lie in (0, 1]")
    devices = topology_devices(topology, num_slices) if topology else jax.devices()
    tag = "local" if not topology else topology.replace(":", "-")
    tag += f"-{num_slices}slices" if num_slices > 1 else ""
    out_dir = None
    if workdir is not None and jax.process_index() == 0:
        out_dir = Path(workdir) / COMPILE_DIR
        out_dir.mkdir(parents=True, exist_ok=True)

    task = compile_task(cfg)
    mesh = make_mesh(cfg.mesh, devices)
    check_batch_sizes(cfg, data_parallel_size(mesh))
    tx = make_optimizer(cfg.optim, cfg.train.num_steps)
    init_batch = task.dummy_batch(data_parallel_size(mesh), cfg.data.buckets[0])
    abstract, shardings = abstract_train_state(task, tx, init_batch, mesh)
    frames = max(cfg.data.buckets)  # the longest padded batch: the most memory
    n = len(devices)

    hbm = hbm_bytes(devices[0])
    train_batch = _abstract(task.dummy_batch(cfg.data.batch_size, frames), batch_sharding(mesh))
    streak = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated(mesh))
    step = jit_train_step(task, tx, mesh, shardings, cfg.train.microbatches)
    hlo = None if out_dir is None else out_dir / f"{tag}.train.hlo.txt"
    state_bytes = {
        "parameter_bytes": _device_bytes(abstract.params),
        "optimizer_bytes": _device_bytes(abstract.opt_state),
    }
    if hbm is not None and sum(state_bytes.values()) > hbm:
        # The train state alone outgrows the chip: no need to compile (minutes) to know it.
        train = {"fits": False, "peak_bytes": None, "compile_seconds": 0.0}
        train["state_exceeds_hbm"] = True
    else:
        logging.info("compiling the train step for %d %s devices", n, devices[0].device_kind)
        train = _compiled_part(step, (abstract, train_batch, streak), mesh, hlo, hbm)
    train.update(state_bytes)

    report_eval = None
    if evaluation:
        eval_rows = task.dummy_batch(cfg.data.eval_batch_size, frames)
        eval_rows["features"] = eval_rows["features"].astype(np.float32)  # as evaluation sends
        eval_rows["valid"] = np.ones((cfg.data.eval_batch_size,), bool)
        options = tuple(sorted(task.eval_options().items()))
        hlo = None if out_dir is None else out_dir / f"{tag}.eval.hlo.txt"
        logging.info("compiling the evaluation step (%s)", dict(options))
        eval_args = (abstract.params, _abstract(eval_rows, batch_sharding(mesh)))
        report_eval = _compiled_part(eval_step(task, mesh, options), eval_args, mesh, hlo, hbm)
        report_eval["parameter_bytes"] = train["parameter_bytes"]
        report_eval["options"] = dict(options)

    report = {
        "topology": topology or "local",
        "num_slices": num_slices,
        "devices": n,
        "device_kind": devices[0].device_kind,
        "hbm_bytes": hbm,
        "mesh": dict(mesh.shape),
        "family": cfg.model.family,
        "parameters": int(sum(math.prod(x.shape) for x in jax.tree.leaves(abstract.params))),
        "global_batch": cfg.data.batch_size,
        "eval_batch": cfg.data.eval_batch_size,
        "frames": frames,
        "label_length": cfg.data.max_label_length,
        "microbatches": cfg.train.microbatches,
        "remat": cfg.model.remat,
        "compute_dtype": cfg.train.compute_dtype,
        "train": train,
        "eval": report_eval,
    }
    peak = peak_tflops(devices[0])
    if peak is not None and "flops_per_step" in train:
        step_seconds = train["flops_per_step"] / (n * peak * 1e12 * mfu)
        # a log-mel frame is one hop of audio, a waveform record's frame one sample
        per_frame = seconds_per_frame(frontend_settings(cfg.prepare.frontend))
        audio_seconds = cfg.data.batch_size * frames * per_frame
        report["at_mfu"] = {
            "mfu": mfu,
            "peak_tflops_per_chip": peak,
            "step_seconds": step_seconds,
            "label_tokens_per_second": cfg.data.batch_size
            * cfg.data.max_label_length
            / step_seconds,
            "audio_hours_per_second": audio_seconds / 3600 / step_seconds,
        }
    if out_dir is not None:
        (out_dir / f"{tag}.json").write_text(json.dumps(report, indent=2))
        (out_dir / f"{tag}.config.yaml").write_text(to_yaml(cfg))
    return report


def fit_error(report: dict[str, Any], cfg: Config) -> JaxseqError | None:
    """None when both steps fit the chip's HBM (or the chip's HBM is unknown), else an error
    that names the chip, the bytes short and the levers that lower the memory of a device."""
    short = [k for k in ("train", "eval") if report[k] and report[k]["fits"] is False]
    if not short:
        return None
    part = report[short[0]]
    have = report["hbm_bytes"] / GIB
    state = part["parameter_bytes"] + part.get("optimizer_bytes", 0)
    if part.get("state_exceeds_hbm"):
        shortfall = (
            f"its state alone needs {state / GIB:.2f} GiB per device, {state / GIB - have:.2f} "
            "GiB more (not compiled)"
        )
    elif part["peak_bytes"] is not None:
        need = part["peak_bytes"] / GIB
        shortfall = f"it needs {need:.2f} GiB per device, {need - have:.2f} GiB more"
    elif "xla_available_bytes" in part:  # XLA gave up: its own figures
        need, usable = part["temp_bytes"] / GIB, part["xla_available_bytes"] / GIB
        shortfall = (
            f"XLA could not place it: it needs {need:.2f} GiB per device, {need - usable:.2f} "
            f"GiB more than the {usable:.2f} GiB it may use"
        )
    else:
        shortfall = f"XLA could not place it ({part['xla_error']})"
    mesh = report["mesh"]
    return JaxseqError(
        f"the {short[0]} step does not fit {report['device_kind']} ({report['topology']}, "
        f"{have:.1f} GiB of HBM per chip): {shortfall} (parameters "
        f"{part['parameter_bytes'] / GIB:.2f} GiB, optimizer state "
        f"{part.get('optimizer_bytes', 0) / GIB:.2f} GiB). Levers: shard the parameters and "
        f"optimizer state over more devices (mesh.preset=fsdp, or a larger mesh.fsdp; now "
        f"data={mesh['data']} fsdp={mesh['fsdp']} tensor={mesh['tensor']}), recompute "
        f"activations in the backward pass (model.remat=full; now {cfg.model.remat}), or a "
        f"smaller batch per device (data.batch_size={cfg.data.batch_size}, "
        f"data.eval_batch_size={cfg.data.eval_batch_size}, or train.microbatches="
        f"{cfg.train.microbatches} raised)"
    )


def _size(num_bytes: float | None) -> str:
    if num_bytes is None:
        return "-"
    for unit, scale in (("GiB", GIB), ("MiB", 2.0**20), ("KiB", 2.0**10)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.2f} {unit}"
    return f"{num_bytes:.0f} B"


def _flop(flops: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if flops >= scale:
            return f"{flops / scale:.2f} {unit}"
    return f"{flops:.0f} FLOP"


def format_report(report: dict[str, Any]) -> str:
    """The report as the lines `jaxseq compile` prints."""
    hbm = report["hbm_bytes"]
    mesh = " x ".join(f"{k}={v}" for k, v in report["mesh"].items())
    lines = [
        f"{report['topology']} ({report['num_slices']} slice(s)): {report['devices']} x "
        f"{report['device_kind']}, "
        + (f"{_size(hbm)} HBM each" if hbm else "no known memory limit"),
        f"mesh {mesh}; {report['family']}, {report['parameters'] / 1e6:.1f}M parameters, "
        f"global batch {report['global_batch']} x {report['frames']} frames, microbatches "
        f"{report['microbatches']}, remat {report['remat']}, {report['compute_dtype']}",
    ]
    rows = [
        ("parameters", "parameter_bytes"),
        ("optimizer state", "optimizer_bytes"),
        ("arguments", "argument_bytes"),
        ("outputs", "output_bytes"),
        ("temporaries", "temp_bytes"),
        ("peak", "peak_bytes"),
    ]
    parts = [p for p in ("train", "eval") if report[p]]
    lines.append(f"{'per device':<18}" + "".join(f"{p:>12}" for p in parts))
    for name, key in rows:
        cells = [_size(report[p].get(key)) for p in parts]
        lines.append(f"{name:<18}" + "".join(f"{c:>12}" for c in cells))
    for p in parts:
        part = report[p]
        fits = {True: "fits", False: "DOES NOT FIT", None: "fit unknown"}[part["fits"]]
        if "flops_per_step" in part:
            flops = f"{_flop(part['flops_per_step'])} per step (all devices)"
        elif part.get("state_exceeds_hbm"):
            flops = "parameters and optimizer state alone exceed the HBM (not compiled)"
        else:
            flops = part["xla_error"]
        lines.append(f"{p}: {fits}; {flops}; compiled in {part['compile_seconds']:.1f} s")
    at = report.get("at_mfu")
    if at:
        lines.append(
            f"at {at['mfu']:.0%} MFU ({at['peak_tflops_per_chip']:.0f} bf16 TFLOP/s per chip): "
            f"{at['step_seconds'] * 1e3:.2f} ms per step, {at['label_tokens_per_second']:,.0f} "
            f"label tokens/s, {at['audio_hours_per_second']:,.2f} audio hours/s"
        )
    return "\n".join(lines)
