"""Shared test set-up: offline hubs, and a tiny synthesized + prepared digits dataset."""

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# PyTorch (the transformers and openai-whisper references) and NumPy's BLAS on one thread, here
# and in every subprocess: the references are tiny models whose ops are too small to split,
# and with two OpenMP threads on the 2-core test machine, beside the other xdist worker and
# XLA's own threads, a thread waits for one that is not running (transformers' long-form
# generate of 40 s: 20 CPU seconds with two threads, 1.4 with one, the same results).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# libtpu (the tpu extra, for `jaxseq compile --topology`) takes a lock file per machine; the
# test processes only compile for TPU topologies, so several may load it at once.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
if os.environ.get("JAXSEQ_TEST_FAST", "1") == "1":
    # The tests' models are tiny, so compiling dominates: XLA's backend optimizations are off
    # (the same numerics, about half the compile time) and fusions are emitted by XLA's
    # classic LLVM emitters rather than the MLIR fusion emitters (compiling the tiny CTC, seq2seq
    # and RNN train and eval steps: 8.1 CPU s instead of 18.7), in this process and every
    # subprocess; and one persistent compilation cache for the test run serves every test, so
    # a program that many tests build (a tiny config's train step) compiles once.
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + " --xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
    ).strip()
    # Made by the first process (pytest, or xdist's controller); its workers inherit it.
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        _CACHE = tempfile.mkdtemp(prefix="jaxseq-test-xla-cache-")
        os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    # flax names every module call's ops (jax.named_scope) for profiles; the names make larger
    # programs to lower, hash and compile (a tiny seq2seq train step: 1.6-2.0 s to compile
    # instead of 2.2-2.6) and change no number.
    os.environ.setdefault("FLAX_PROFILE", "false")

# librosa's numba gufuncs cache their machine code beside librosa. Two processes that compile
# different functions of one module at the same time (the xdist workers: Griffin-Lim's phasor
# in one, `librosa.yin`'s localmin in the other) can write cache files that disagree, and the
# next call segfaults (numba#10128, seen on a fresh .venv). Each test process (pytest, each
# xdist worker; their subprocesses inherit it) keeps its own numba cache. Compiling librosa's
# kernels takes 5-20 CPU seconds a process (the ufuncs `import librosa.feature` builds, then
# each jitted function at its first call), so every private cache starts as a copy of one
# that the first process filled, alone, before any worker started.
_NUMBA_SEED_ENV = "JAXSEQ_TEST_NUMBA_SEED"
_WARM_LIBROSA = """
import numpy as np, librosa, librosa.feature, librosa.effects, librosa.sequence
for dtype in (np.float32, np.float64):
    y = np.random.default_rng(0).normal(size=8000).astype(dtype) * 0.1
    librosa.effects.trim(y, top_db=40)
    librosa.effects.split(y, top_db=40)
    librosa.yin(y, fmin=60, fmax=500, sr=16000, frame_length=1024)
    m = librosa.feature.melspectrogram(y=y, sr=16000, n_fft=400, hop_length=160, n_mels=20)
    librosa.feature.inverse.mel_to_audio(m, sr=16000, n_fft=400, hop_length=160, n_iter=2)
    librosa.griffinlim(np.abs(librosa.stft(y, n_fft=400)), n_iter=2)
    librosa.feature.mfcc(y=y, sr=16000, n_mfcc=13)
    librosa.mu_expand(librosa.mu_compress(np.clip(y, -1, 1)))
    librosa.sequence.dtw(X=m[:, :20], Y=m[:, 5:30])
"""
if _NUMBA_SEED_ENV not in os.environ:  # the first process (pytest, or xdist's controller)
    _NUMBA_SEED = tempfile.mkdtemp(prefix="jaxseq-test-numba-seed-")
    subprocess.run(
        [sys.executable, "-c", _WARM_LIBROSA],
        env={**os.environ, "NUMBA_CACHE_DIR": _NUMBA_SEED},
        check=True,
    )
    os.environ[_NUMBA_SEED_ENV] = _NUMBA_SEED
_NUMBA_CACHE = tempfile.mkdtemp(prefix="jaxseq-test-numba-")
shutil.copytree(os.environ[_NUMBA_SEED_ENV], _NUMBA_CACHE, dirs_exist_ok=True)
os.environ["NUMBA_CACHE_DIR"] = _NUMBA_CACHE


def pytest_unconfigure(config):
    """Removes the caches this process made (a compilation cache given by the user stays)."""
    shutil.rmtree(_NUMBA_CACHE, ignore_errors=True)
    for made in ("_CACHE", "_NUMBA_SEED"):
        if made in globals():
            shutil.rmtree(globals()[made], ignore_errors=True)


REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "ctc_tiny.yaml"


def quick_config(tiny_dataset, *extra):
    """An in-process run's config: no evaluation, a log line per step, and one bucket as long
    as the corpus's longest item (nothing dropped): one compiled train step."""
    from jaxseq.config import load_config  # after the environment above is set

    return load_config(
        TINY_CONFIG,
        [
            f"data.dataset={tiny_dataset}",
            "data.eval_split=''",
            "data.buckets=[512]",
            "train.log_every=1",
            *extra,
        ],
    )


def built_once(tmp_path_factory, worker_id: str, name: str, build) -> Path:
    """The folder `name` that `build(folder)` fills, built once per test run: xdist's workers
    share their base temporary directory, and the first worker to take the lock builds it
    while the others wait. What is built there is read-only for the tests."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if worker_id != "master" else base  # the run's, under xdist
    root = shared / name
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (root / ".complete").exists():
            shutil.rmtree(root, ignore_errors=True)
            build(root)
            (root / ".complete").touch()
    return root


def _tiny_corpus(root: Path) -> None:
    from jaxseq.config import load_config
    from jaxseq.data.prepare import prepare_corpus
    from jaxseq.data.synth import synthesize_corpus

    cfg = load_config(TINY_CONFIG)
    synthesize_corpus(root / "audio", cfg.synth, num_workers=1, progress=False)
    prepare_corpus(root / "audio", root / "prepared", cfg.prepare, num_workers=1, progress=False)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, worker_id) -> Path:
    """A prepared dataset from a tiny espeak-ng digits corpus (train/valid/test)."""
    return built_once(tmp_path_factory, worker_id, "tiny-dataset", _tiny_corpus) / "prepared"


def _classify_corpus(root: Path, *overrides: str) -> None:
    from jaxseq import cli

    config = str(REPO / "configs" / "classify_tiny.yaml")
    cli.main(["synth", "--config", config, "--out", str(root / "audio"), *overrides])
    cli.main(
        ["prepare", "--config", config, "--source", f"synth:{root / 'audio'}"]
        + ["--out", str(root / "prepared"), "--workers", "1"]  # in-process: a tiny corpus
    )


@pytest.fixture(scope="session")
def speaker_corpus(tmp_path_factory, worker_id) -> Path:
    """configs/classify_tiny.yaml's corpus (digit strings with their speakers as labels),
    synthesized and prepared by the `jaxseq synth` and `jaxseq prepare` commands: the folder
    with audio/ and prepared/."""
    return built_once(tmp_path_factory, worker_id, "speaker-corpus", _classify_corpus)


@pytest.fixture(scope="session")
def diarization_corpus(tmp_path_factory, worker_id) -> Path:
    """The same with synth.preset=diarization (2-3 turns by different voices per recording,
    each turn's voice its segment's label), prepared as log-mel: audio/ and prepared/."""
    return built_once(
        tmp_path_factory,
        worker_id,
        "diarization-corpus",
        lambda root: _classify_corpus(root, "synth.preset=diarization"),
    )


@pytest.fixture(scope="session")
def reference():
    """openai-whisper's own multilingual tokenizer (tiktoken), the reference for Whisper's."""
    import whisper.tokenizer

    return whisper.tokenizer.get_tokenizer(multilingual=True, language="en", task="transcribe")


@pytest.fixture(scope="session")
def whisper_folder(tmp_path_factory, reference) -> Path:
    """A checkpoint folder with the real multilingual tokenizer.json, derived offline from the
    tiktoken vocabulary openai-whisper ships (tests/hf_whisper.py)."""
    from tests.hf_whisper import write_whisper_tokenizer

    folder = tmp_path_factory.mktemp("whisper")
    write_whisper_tokenizer(folder, reference.encoding)
    return folder


# The files whose tests take longest (about 30 s to 2 minutes each on the 2-core CI machine), run
# first: pytest-xdist (scripts/test.sh: -n 2 --dist loadfile) hands whole files to its workers
# in collection order, so the long ones start early and the short ones even out the finish.
LONGEST_FIRST = (
    "test_ssl_pretrain.py",
    "test_whisper_sequential.py",
    "test_whisper_finetune.py",
    "test_multiprocess.py",
    "test_multiprocess_families.py",
    "test_compile.py",
    "test_fault_tolerance.py",
    "test_train_options.py",
    "test_whisper_language.py",
    "test_tts_cli.py",
    "test_input_path.py",
    "test_synth.py",
    "test_wav2vec2_classify.py",
    "test_config.py",
    "test_train.py",
    "test_seq2seq_task.py",
    "test_sharding_presets.py",
)


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order in a file kept
