"""The package's imports, read from its source with `ast`: no cycles, and every folder imports
only the layers below it (docs/architecture.md). Function-level imports count too."""

from __future__ import annotations

import ast
import functools
import inspect
import struct
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "jaxseq"

# Lowest first; a module may import its own layer and the layers before it.
LAYERS = [
    {"errors", "config", "config_checks", "config_families", "config_data", "config_wav2vec2"},
    {"audio", "text", "parallel"},
    {"data"},
    {"models", "losses", "decoding"},
    {"tasks"},
    {"train"},
    {"evaluation"},
    {"inference"},
    {"convert"},
    {"api", "__init__"},
    {"cli", "cli_parser", "launch"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


@functools.cache  # the source is read once per test run
def _modules() -> dict[str, Path]:
    """Dotted module name → file, for every module of the package."""
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = list(f.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


@functools.cache
def _package_imports() -> dict[str, frozenset[str]]:
    """`_imports` of the package's own modules, parsed once per test run."""
    return {m: frozenset(t) for m, t in _imports(_modules()).items()}


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module → the package's modules it imports (the longest known prefix of each name)."""

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, f in modules.items():
        package = module if f.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                if name.split(".")[0] == "jaxseq" and (target := resolve(name)) != module:
                    graph[module].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), leaving out a
    package's __init__ importing its own submodules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            component.append(v)
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return [c for c in found if not all(m == c[0] or m.startswith(c[0] + ".") for m in c)]


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "p": {"p.x"}, "p.x": {"p"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert _cycles(_package_imports()) == []


def test_every_folder_is_in_a_layer():
    assert {_layer(m) for m in _modules()} == set(LAYER)


@pytest.mark.parametrize("layer", sorted(LAYER))
def test_imports_point_down_the_layers(layer):
    graph = _package_imports()
    upward = sorted(
        f"{m} imports {t}"
        for m, targets in graph.items()
        if _layer(m) == layer
        for t in targets
        if LAYER[_layer(t)] > LAYER[layer]
    )
    assert upward == []


def test_the_api_names_are_not_shadowed_by_subpackages():
    """`jaxseq.train` is the function after `jaxseq.train.*` modules are imported (a lazily
    imported API name would be shadowed by the subpackage of the same name)."""
    import jaxseq
    import jaxseq.train.steps  # noqa: F401

    for name in jaxseq.__all__:
        assert not inspect.ismodule(getattr(jaxseq, name)), name
    assert callable(jaxseq.train) and jaxseq.train.__module__ == "jaxseq.api"


def test_workers_import_no_jax_and_the_api_names_resolve_in_a_fresh_process(tmp_path):
    """A `prepare` or `synth` worker (a spawned process that imports only its module) loads
    neither JAX nor the augmentation libraries; in a process whose first import is a
    subpackage module, `jaxseq.train` is still the API function; and a training process's
    metric writer imports no torch (tensorboardX would) and still writes TensorBoard scalars,
    read back here with tensorboardX's own Event proto, after which torch imports."""
    check = (
        "import sys, jaxseq.data.prepare, jaxseq.data.synth\n"
        "heavy = {'jax', 'flax', 'grain', 'torch', 'audiomentations', 'pyroomacoustics'}\n"
        "assert not heavy & set(sys.modules), sorted(heavy & set(sys.modules))\n"
        "import jaxseq.train.loop, jaxseq\n"
        "assert jaxseq.train.__module__ == 'jaxseq.api', jaxseq.train\n"
        "assert jaxseq.load_config.__module__ == 'jaxseq.api'\n"
        "from jaxseq.train.writers import MetricWriter\n"
        f"writer = MetricWriter({str(tmp_path)!r})\n"
        "writer.write(3, 'train', {'loss': 1.5, 'tokens': 7})\n"
        "writer.close()\n"
        "assert 'torch' not in sys.modules\n"
        "import torch\n"
    )
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    (events,) = (tmp_path / "tensorboard").glob("events.*")
    scalars = {
        (value.tag, event.step): value.simple_value
        for event in _tensorboard_events(events.read_bytes())
        for value in event.summary.value
    }
    assert scalars == {("train/loss", 3): 1.5, ("train/tokens", 3): 7.0}


def _tensorboard_events(data: bytes) -> list:
    """TFRecord framing (length u64, its crc u32, payload, its crc u32) of Event protos."""
    from tensorboardX.proto.event_pb2 import Event

    events, at = [], 0
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at : at + 8])
        events.append(Event.FromString(data[at + 12 : at + 12 + length]))
        at += 12 + length + 4
    return events
