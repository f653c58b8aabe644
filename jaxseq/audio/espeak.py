"""Speech synthesis with espeak-ng through ctypes (library and voice data from `espeakng-loader`).

The engine is a process-wide singleton: it is initialized lazily on first use, in synchronous
mode at 22050 Hz, and every call holds a module lock, so threads of one process may share it.

espeak-ng keeps synthesis state across calls (pitch-flutter phase, sample counters, noise
generators), so `synthesize` may give slightly different samples for the same arguments depending
on what this process spoke before. `synthesize_isolated` is the reproducible path: it speaks in a
forked child of a process whose engine has never spoken (the corpus writer's workers use it).

`synthesize_words` and `synthesize_isolated_words` give the same samples and, with them, where
each word is spoken (`Word`), from the word events espeak-ng reports during synthesis.
"""

from __future__ import annotations

import ctypes
import dataclasses
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
_ESPEAK_RANGE = 4
_ESPEAK_WORDGAP = 7
_EE_OK = 0
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_FRAME = 128  # samples per RMS frame when finding speech in a word (5.8 ms at 22050 Hz)


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    """`espeak_EVENT` of speak_lib.h (API revision 12)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based, in characters of the text
        ("length", ctypes.c_int),  # the word's length in characters (WORD events)
        ("audio_position", ctypes.c_int),  # ms from the start of this synthesis, truncated
        ("sample", ctypes.c_int),  # samples from the start of this synthesis
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


@dataclasses.dataclass(frozen=True)
class Word:
    """One spoken word of a synthesis and where its speech is in the waveform.

    Attributes:
      text: the characters of the text that espeak-ng reports for the word.
      offset: index of its first character in the text.
      start: first sample of the word's speech.
      end: one past its last sample of speech.
    """

    text: str
    offset: int
    start: int
    end: int


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
        self.marks: list[tuple[int, int, int]] = []  # per WORD event: (sample, position, length)
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
        i = 0
        while events and events[i].type != _EVENT_LIST_TERMINATED:
            event = events[i]
            if event.type == _EVENT_WORD:  # `sample` counts from the start of this synthesis
                self.marks.append((event.sample, event.text_position, event.length))
            i += 1
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
    pcm, _ = _speak_shared(text, voice, rate, pitch)
    return pcm.astype(np.float32) / 32768.0, _engine().sample_rate


def synthesize_words(
    text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50, top_db: float = 40.0
) -> tuple[np.ndarray, list[Word], int]:
    """`synthesize`, also giving where each word is spoken (see `word_extents` for the rule).

    Returns:
      (waveform, words, sample_rate): the samples of `synthesize`, the `Word`s in spoken order
      (times in samples of the waveform) and 22050.

    Raises:
      ValueError: as `synthesize`.
    """
    pcm, marks = _speak_shared(text, voice, rate, pitch)
    wave = pcm.astype(np.float32) / 32768.0
    return wave, word_extents(wave, text, marks, top_db), _engine().sample_rate


# (text, voice, rate, pitch) or (text, voice, rate, pitch, pitch range, word gap): the pitch
# range is espeak-ng's espeakRANGE (0-100, 50 by default: the voice's own), the word gap its
# espeakWORDGAP (extra pause between words, in 10 ms units at the normal rate; 0 by default).
Request = tuple[str, str, int, int] | tuple[str, str, int, int, int, int]


def synthesize_isolated(requests: Sequence[Request], seed: int = 0) -> tuple[list[np.ndarray], int]:
    """Speaks `Request`s in a forked child, reproducibly.

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
    spoken = _speak_forked(requests, seed)
    return [pcm.astype(np.float32) / 32768.0 for pcm, _ in spoken], _engine().sample_rate


def synthesize_isolated_words(
    requests: Sequence[Request], seed: int = 0, top_db: float = 40.0
) -> tuple[list[np.ndarray], list[list[Word]], int]:
    """`synthesize_isolated`, also giving where each word is spoken (see `word_extents`).

    Returns:
      (waveforms, words, sample_rate): the samples of `synthesize_isolated`, one list of `Word`s
      per request (times in samples of its waveform) and 22050.

    Raises:
      ValueError, RuntimeError: as `synthesize_isolated`.
    """
    waves, words = [], []
    for (text, *_), (pcm, marks) in zip(requests, _speak_forked(requests, seed), strict=True):
        waves.append(pcm.astype(np.float32) / 32768.0)
        words.append(word_extents(waves[-1], text, marks, top_db))
    return waves, words, _engine().sample_rate


def word_extents(
    wave: np.ndarray,
    text: str,
    marks: Sequence[tuple[int, int, int]] | np.ndarray,
    top_db: float = 40.0,
) -> list[Word]:
    """Where each word of a synthesis is spoken, from espeak-ng's word events and the energy.

    espeak-ng reports where each word begins (the sample at which its first phoneme, or the
    pause before it, starts), not where it ends. A word's span runs from its own event to the
    next word's (the last word's to the end of the audio), and so still holds the silence that
    espeak puts before an utterance and after a clause. Each span is then tightened to its
    speech: from the first to the last of its `_FRAME`-sample frames (5.8 ms at 22050 Hz,
    counted from the span's start, so that no frame sees a neighbour's sound) whose RMS is
    within `top_db` of the loudest such frame of the whole waveform: librosa.effects.trim's
    rule, at a finer grain and with the utterance as reference. So an extent is exact to a
    frame where silence bounds the word, and lies at espeak's own boundary between two words
    spoken without a pause (which can come a few ms before the earlier word's sound ends). A
    span with no such frame is kept whole.

    The text of a word is the slice of `text` the event points at. Numbers and punctuation can
    make that differ from the whitespace-separated tokens: "42" gives two words, spoken "forty"
    and "two", whose slices are "42" and "2 "; after a full stop that starts no sentence
    ("eight. nine") the next word's slice can be a space.

    Args:
      wave: the synthesis's samples, shape [num_samples].
      text: the text that was spoken.
      marks: (sample, 1-based character position, length in characters) of each word event,
        in spoken order, samples counted from the start of the synthesis; triples or an int
        array [num_words, 3].
      top_db: how far below the loudest frame a frame still counts as speech, in dB.

    Returns:
      one `Word` per event.
    """
    if not len(marks):
        return []
    floor = _frame_rms(wave).max(initial=0.0) * 10.0 ** (-top_db / 20.0)
    samples = np.array([sample for sample, _, _ in marks], np.int64)
    starts = np.maximum.accumulate(np.clip(samples, 0, wave.size))
    ends = np.append(starts[1:], wave.size)
    words = []
    for (_, position, length), lo, hi in zip(marks, starts, ends, strict=True):
        loud = np.flatnonzero((_frame_rms(wave[lo:hi]) >= floor) & (floor > 0))
        if loud.size:
            lo, hi = lo + loud[0] * _FRAME, min(hi, lo + (loud[-1] + 1) * _FRAME)
        offset = int(position) - 1
        words.append(Word(text[offset : offset + int(length)], offset, int(lo), int(hi)))
    return words


def _frame_rms(wave: np.ndarray) -> np.ndarray:
    """RMS of consecutive `_FRAME`-sample frames, the last one zero-padded: [ceil(n / _FRAME)]."""
    frames = np.pad(wave, (0, -wave.size % _FRAME)).reshape(-1, _FRAME)  # [frames, _FRAME]
    return np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))


def _speak_shared(text: str, voice: str, rate: int, pitch: int) -> tuple[np.ndarray, list]:
    """Speaks with this process's engine; returns int16 samples and the word events."""
    _check_voice(voice)
    with _LOCK:
        engine = _engine()
        engine.spoken = True
        return _speak(engine, text, voice, rate, pitch)


def _speak_forked(requests: Sequence[Request], seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Speaks the requests in a forked child (see `synthesize_isolated`).

    Returns:
      per request, its int16 samples and its word events as int64 [num_words, 3] rows of
      (sample, position, length).
    """
    for _, voice, *_ in requests:
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
        if pid == 0:  # child: speak, send length-prefixed samples and events, exit at once
            status = 1
            try:
                os.close(read_fd)
                engine.seed(seed)
                for text, voice, *params in requests:
                    pcm, marks = _speak(engine, text, voice, *params)
                    marks = np.array(marks, np.int64).reshape(-1, 3)
                    data = memoryview(
                        np.int64(pcm.size).tobytes()
                        + pcm.tobytes()
                        + np.int64(len(marks)).tobytes()
                        + marks.tobytes()
                    )
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
    spoken, offset = [], 0
    for _ in requests:
        (size,) = np.frombuffer(data, np.int64, count=1, offset=offset)
        pcm = np.frombuffer(data, np.int16, count=size, offset=offset + 8)
        offset += 8 + 2 * int(size)
        (size,) = np.frombuffer(data, np.int64, count=1, offset=offset)
        marks = np.frombuffer(data, np.int64, count=3 * size, offset=offset + 8).reshape(-1, 3)
        offset += 8 + 24 * int(size)
        spoken.append((pcm, marks))
    return spoken


def _speak(
    engine: _Engine,
    text: str,
    voice: str,
    rate: int,
    pitch: int,
    pitch_range: int = 50,
    word_gap: int = 0,
) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """Runs one synthesis (the caller holds the lock); returns int16 samples and word events.

    Every parameter is set on each call (espeak-ng keeps them across calls); the defaults of
    `pitch_range` and `word_gap` are espeak-ng's own.
    """
    lib = engine.lib
    if lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
        raise ValueError(f"espeak-ng could not load voice {voice!r}")
    lib.espeak_SetParameter(_ESPEAK_RATE, int(rate), 0)
    lib.espeak_SetParameter(_ESPEAK_PITCH, int(pitch), 0)
    lib.espeak_SetParameter(_ESPEAK_RANGE, int(pitch_range), 0)
    lib.espeak_SetParameter(_ESPEAK_WORDGAP, int(word_gap), 0)
    data = text.encode("utf-8")
    engine.chunks, engine.marks = [], []
    err = lib.espeak_Synth(
        data, len(data) + 1, 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None
    )
    chunks, marks = engine.chunks, engine.marks
    engine.chunks, engine.marks = [], []
    if err != _EE_OK:
        raise RuntimeError(f"espeak_Synth failed (error {err}) for {text!r}")
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.int16)), marks
