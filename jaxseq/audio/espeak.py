"""Speech synthesis with espeak-ng through ctypes (library and voice data from `espeakng-loader`).

The engine is a process-wide singleton: it is initialized lazily on first use, in synchronous
mode at 22050 Hz, and every call holds a module lock, so threads of one process may share it.

espeak-ng keeps synthesis state across calls (pitch-flutter phase, sample counters, noise
generators), so `synthesize` may give slightly different samples for the same arguments depending
on what this process spoke before. `synthesize_isolated` is the reproducible path: it speaks in a
forked child of a process whose engine has never spoken (the corpus writer's workers use it).
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_RATE = 1
_ESPEAK_PITCH = 3
_EE_OK = 0

_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class _Voice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


class _Engine:
    """The loaded library, its sample rate and the buffer its callback fills."""

    def __init__(self) -> None:
        import espeakng_loader

        self.data_path = Path(espeakng_loader.get_data_path())
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed.restype = None
        self.libc = ctypes.CDLL(None)
        self.libc.srand.argtypes = [ctypes.c_uint]
        lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(self.data_path).encode(), 0)
        if rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed (returned {rate})")
        self.lib = lib
        self.sample_rate = int(rate)
        self.chunks: list[np.ndarray] = []
        self.spoken = False  # whether this process's engine state has advanced past its init
        self._callback = _CALLBACK(self._on_audio)  # keep a reference: C holds only a pointer
        lib.espeak_SetSynthCallback(self._callback)

    def seed(self, seed: int) -> None:
        """Seeds espeak-ng's noise generator and libc's `rand` (which the Klatt voices use)."""
        self.lib.espeak_ng_SetRandSeed(seed)
        self.libc.srand(seed & 0xFFFFFFFF)

    def _on_audio(self, wav, num_samples: int, events) -> int:
        if num_samples > 0 and wav:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0  # 0 = continue synthesis


_LOCK = threading.Lock()
_ENGINE: _Engine | None = None


def _engine() -> _Engine:
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _Engine()
    return _ENGINE


def list_voices() -> list[str]:
    """Names of the installed base voices, lower case (e.g. "en", "en-us", "en-gb-scotland").

    Any of them may be combined with a variant from `list_variants()` as "en-us+m3".
    """
    return sorted(_voice_names())


@cache
def _voice_names() -> frozenset[str]:
    with _LOCK:
        voices = _engine().lib.espeak_ListVoices(None)
        names = set()
        i = 0
        while voices[i]:
            names.add(voices[i].contents.identifier.decode().rsplit("/", 1)[-1].lower())
            i += 1
    return frozenset(names)


@cache
def list_variants() -> list[str]:
    """Names of the voice variants ("m1".."m8", "f1".."f5", "klatt", ...) in the shipped data."""
    with _LOCK:
        variant_dir = _engine().data_path / "voices" / "!v"
    return sorted(p.name for p in variant_dir.iterdir() if p.is_file())


@cache
def _check_voice(voice: str) -> None:
    base, _, variant = voice.partition("+")
    if base.lower() not in _voice_names():
        raise ValueError(f"unknown espeak-ng voice {base!r} in {voice!r}; see list_voices()")
    if variant and variant not in list_variants():
        raise ValueError(f"unknown espeak-ng variant {variant!r} in {voice!r}; see list_variants()")


def synthesize(
    text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50
) -> tuple[np.ndarray, int]:
    """Speaks `text` with espeak-ng (samples may depend on earlier calls; see the module doc).

    Args:
      text: plain UTF-8 text.
      voice: a base voice from `list_voices()`, optionally with a variant: "en-gb-scotland+f2".
      rate: speaking rate in words per minute (espeak accepts ~80..450).
      pitch: base pitch, 0..100 (50 is the voice's default).

    Returns:
      (waveform, sample_rate): float32 mono samples in [-1, 1], shape [num_samples], and the
      engine's sample rate (22050).

    Raises:
      ValueError: when the voice or variant does not exist.
    """
    _check_voice(voice)
    with _LOCK:
        engine = _engine()
        engine.spoken = True
        pcm = _speak(engine, text, voice, rate, pitch)
    return pcm.astype(np.float32) / 32768.0, engine.sample_rate


def synthesize_isolated(
    requests: Sequence[tuple[str, str, int, int]], seed: int = 0
) -> tuple[list[np.ndarray], int]:
    """Speaks (text, voice, rate, pitch) requests in a forked child, reproducibly.

    The child starts from this process's freshly initialized engine, which never speaks itself,
    seeds the noise generators with `seed` and speaks the requests in order: the samples depend
    only on `requests` and `seed`, in any process and whatever was spoken before. One request per
    call makes every waveform a function of its own arguments. Costs one fork per call (a few ms).
    POSIX only; call it from a single-threaded process (a worker, not a process running jax).

    Returns:
      (waveforms, sample_rate): one float32 array in [-1, 1] per request, and 22050.

    Raises:
      ValueError: when a voice does not exist.
      RuntimeError: when `synthesize` has already spoken in this process (its engine state is no
        longer the fresh one), or when synthesis fails in the child.
    """
    for _, voice, _, _ in requests:
        _check_voice(voice)
    with _LOCK:
        engine = _engine()
        if engine.spoken:
            raise RuntimeError(
                "synthesize_isolated needs a process in which synthesize() was never called: "
                "espeak-ng's state has advanced and results would depend on that history"
            )
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: speak, send length-prefixed samples, exit without Python cleanup
            status = 1
            try:
                os.close(read_fd)
                engine.seed(seed)
                for text, voice, rate, pitch in requests:
                    pcm = _speak(engine, text, voice, rate, pitch)
                    data = memoryview(np.int64(pcm.size).tobytes() + pcm.tobytes())
                    while data:
                        data = data[os.write(write_fd, data) :]
                status = 0
            finally:
                os._exit(status)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            data = pipe.read()
        _, status = os.waitpid(pid, 0)
    if status != 0:
        raise RuntimeError(f"espeak-ng failed in a child process on {list(requests)}")
    waves, offset = [], 0
    for _ in requests:
        (size,) = np.frombuffer(data, np.int64, count=1, offset=offset)
        pcm = np.frombuffer(data, np.int16, count=size, offset=offset + 8)
        waves.append(pcm.astype(np.float32) / 32768.0)
        offset += 8 + 2 * int(size)
    return waves, engine.sample_rate


def _speak(engine: _Engine, text: str, voice: str, rate: int, pitch: int) -> np.ndarray:
    """Runs one synthesis (the caller holds the lock); returns int16 samples."""
    lib = engine.lib
    if lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
        raise ValueError(f"espeak-ng could not load voice {voice!r}")
    lib.espeak_SetParameter(_ESPEAK_RATE, int(rate), 0)
    lib.espeak_SetParameter(_ESPEAK_PITCH, int(pitch), 0)
    data = text.encode("utf-8")
    engine.chunks = []
    err = lib.espeak_Synth(
        data, len(data) + 1, 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None
    )
    chunks, engine.chunks = engine.chunks, []
    if err != _EE_OK:
        raise RuntimeError(f"espeak_Synth failed (error {err}) for {text!r}")
    return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
