"""Waveform augmentation for `jaxseq prepare` (`prepare.augment`): float32 mono audio in, audio out.

The signal work is done by well-kept libraries: librosa/soxr (resampling), audiomentations
(time stretch, pitch shift, colored noise, parametric EQ), pyroomacoustics (simulated rooms),
scipy (filters). Each function is deterministic given its `rng` (a `np.random.Generator`):
the libraries' own random draws (Python's `random`, NumPy's global generator, pyroomacoustics'
ray tracer) are seeded from it. Outputs are rescaled to a peak of at most 1 where an effect can
clip, so the signal-to-noise ratio and the spectrum's shape survive.

  speed        resampling, as Kaldi/ESPnet speed perturbation: duration x 1/factor, pitch x factor
  tempo        time stretch (duration x 1/factor, pitch kept)
  pitch_shift  pitch in semitones (duration kept)
  gain         level in dB
  add_noise    white, pink or brown noise, or babble (other utterances), at an exact SNR
  reverberate  a simulated shoebox room of a given RT60, output aligned with the input
  telephone    the 300-3400 Hz telephone band through an 8 kHz round trip
  random_eq    seven bands of random gain (audiomentations' SevenBandParametricEQ)
  mu_law       8-bit (or `bits`) mu-law companding and quantization, as a G.711-like codec

`apply` runs one `prepare.augment` spec (jaxseq.config.AugmentSpec), drawing its value
uniformly from the spec's [low, high].
"""

from __future__ import annotations

import contextlib
import functools
import random
from collections.abc import Iterator, Sequence

import librosa
import numpy as np

from jaxseq.config import AugmentSpec
from jaxseq.config_checks import NOISE_COLORS

# audiomentations, pyroomacoustics and scipy.signal are imported in the functions that use them:
# a `prepare` worker that augments nothing does without them (about 1.5 s of imports each).

TELEPHONE_BAND = (300.0, 3400.0)  # Hz
TELEPHONE_RATE = 8000  # Hz


@contextlib.contextmanager
def _seeded_globals(rng: np.random.Generator) -> Iterator[None]:
    """Seeds Python's `random` and NumPy's global generator (which audiomentations draws from)
    from `rng` for the block, then restores both."""
    seed = int(rng.integers(2**32))
    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def _unclipped(audio: np.ndarray) -> np.ndarray:
    """float32 audio scaled down to a peak of 1 if it goes beyond."""
    peak = float(np.max(np.abs(audio), initial=0.0))
    return (audio / max(peak, 1.0)).astype(np.float32)


def _rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))


def speed(audio: np.ndarray, sample_rate: int, factor: float) -> np.ndarray:
    """Speed perturbation (Kaldi's `sox speed`): plays the audio `factor` times faster.

    The audio is resampled from `sample_rate * factor` to `sample_rate` (soxr), so duration
    scales by 1/factor and every frequency by `factor`.

    Args:
      audio: float32 [num_samples].
      factor: > 1 faster and higher, < 1 slower and lower.

    Returns:
      float32 [ceil(num_samples / factor)].
    """
    out = librosa.resample(audio, orig_sr=sample_rate * factor, target_sr=sample_rate)
    return _unclipped(out)


def tempo(
    audio: np.ndarray, sample_rate: int, factor: float, rng: np.random.Generator
) -> np.ndarray:
    """Time stretch keeping the pitch (audiomentations' TimeStretch, Signalsmith Stretch).

    Returns:
      float32 [about num_samples / factor].
    """
    import audiomentations as am

    stretch = am.TimeStretch(min_rate=factor, max_rate=factor, leave_length_unchanged=False, p=1.0)
    with _seeded_globals(rng):
        return _unclipped(stretch(audio, sample_rate))


def pitch_shift(
    audio: np.ndarray, sample_rate: int, semitones: float, rng: np.random.Generator
) -> np.ndarray:
    """Shifts the pitch by `semitones` keeping the duration (audiomentations' PitchShift).

    Returns:
      float32 [num_samples].
    """
    import audiomentations as am

    shift = am.PitchShift(min_semitones=semitones, max_semitones=semitones, p=1.0)
    with _seeded_globals(rng):
        return _unclipped(shift(audio, sample_rate))


def gain(audio: np.ndarray, db: float) -> np.ndarray:
    """Scales the level by `db` decibels (then down to a peak of 1 if it would clip)."""
    return _unclipped(audio * np.float32(10.0 ** (db / 20.0)))


def add_noise(
    audio: np.ndarray,
    sample_rate: int,
    snr_db: float,
    color: str,
    rng: np.random.Generator,
    babble: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """Adds noise at a signal-to-noise ratio of `snr_db` (RMS over the whole utterance).

    Args:
      audio: float32 [num_samples].
      color: "white", "pink", "brown" (audiomentations' AddColorNoise: 0, -3 and -6 dB per
        octave) or "babble": the `babble` utterances, each from a random offset and repeated
        to the audio's length, summed.
      babble: float32 [any length] waveforms of other utterances at `sample_rate`.

    Returns:
      float32 [num_samples]; scaled as a whole if it would clip, so the SNR is kept.
    """
    import audiomentations as am

    if color not in NOISE_COLORS:
        raise ValueError(f"noise color {color!r}: choose one of {list(NOISE_COLORS)}")
    if color != "babble":
        decay = am.NOISE_COLOR_DECAYS[color]
        noise = am.AddColorNoise(
            min_snr_db=snr_db, max_snr_db=snr_db, min_f_decay=decay, max_f_decay=decay, p=1.0
        )
        with _seeded_globals(rng):
            return _unclipped(noise(audio, sample_rate))
    if not babble:
        raise ValueError("babble noise needs other utterances: pass babble=[waveform, ...]")
    mix = np.zeros(audio.shape[0], np.float64)  # [num_samples]
    for other in babble:
        start = int(rng.integers(other.shape[0]))
        mix += np.resize(np.roll(other, -start), audio.shape[0])  # tiled from `start`
    scale = _rms(audio) / (max(_rms(mix), 1e-12) * 10.0 ** (snr_db / 20.0))
    return _unclipped(audio + scale * mix)


def room_impulse_response(
    sample_rate: int, rt60: float, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """A shoebox room's impulse response (pyroomacoustics: image sources up to order 3, then
    ray tracing for the tail), with the wall absorption Sabine's formula gives for `rt60`.

    The room is 3-10 x 3-8 x 2.5-4 m (shrunk where it is too large for so short an RT60: walls
    absorb at most everything), the talker and the microphone at random places at least 0.5 m
    (or a quarter of the room) from the walls. Seeds pyroomacoustics' ray tracer from `rng`.

    Returns:
      (float64 [ir_length], scaled to a peak of 1; the direct path's sample index).
    """
    import pyroomacoustics as pra

    dims = rng.uniform([3.0, 3.0, 2.5], [10.0, 8.0, 4.0])  # [3] metres
    volume, surface = np.prod(dims), 2 * (dims[0] * dims[1] + dims[1] * dims[2] + dims[0] * dims[2])
    c = pra.constants.get("c")
    shortest_rt60 = 24 * np.log(10) * volume / (c * surface)  # Sabine, full absorption
    dims *= min(1.0, 0.95 * rt60 / shortest_rt60)  # V/S scales with the size
    margin = np.minimum(0.5, dims / 4)
    talker, mic = rng.uniform(margin, dims - margin, size=(2, 3))
    absorption, _ = pra.inverse_sabine(rt60, dims)
    pra.random.seed(numpy=int(rng.integers(2**63)), libroom=int(rng.integers(2**63)))
    room = pra.ShoeBox(
        dims, fs=sample_rate, materials=pra.Material(absorption), max_order=3, ray_tracing=True
    )
    room.set_ray_tracing(n_rays=5000, receiver_radius=0.5, energy_thres=1e-5)
    room.add_source(talker)
    room.add_microphone(mic)
    room.compute_rir()
    rir = np.asarray(room.rir[0][0], np.float64)
    # pyroomacoustics centres each arrival in a fractional-delay filter of this many taps.
    delay = round(np.linalg.norm(talker - mic) / c * sample_rate)
    delay += pra.constants.get("frac_delay_length") // 2
    return rir / np.max(np.abs(rir)), delay


def convolve(audio: np.ndarray, ir: np.ndarray, delay: int) -> np.ndarray:
    """`audio` convolved with the impulse response `ir`, advanced by `delay` samples (the
    direct path's) so the output is aligned with the input and as long.

    Returns:
      float32 [num_samples]: (audio * ir)[delay : delay + num_samples].
    """
    import scipy.signal

    wet = scipy.signal.oaconvolve(audio.astype(np.float64), ir)  # [num_samples + ir_length - 1]
    return wet[delay : delay + audio.shape[0]].astype(np.float32)


# Reverberation draws its room from a bank: RT60 rounded to RT60_STEP seconds, one of
# ROOMS_PER_RT60 rooms for each, each impulse response simulated once per process (0.02-0.11 s
# each at RT60 0.2-0.9 s) and cached, so a reverberated copy costs a convolution (about 1 ms
# for 2 s of audio) and a split of thousands of items prepares in seconds.
RT60_STEP = 0.05  # seconds
ROOMS_PER_RT60 = 8


@functools.lru_cache(maxsize=512)
def _bank_impulse_response(sample_rate: int, rt60_steps: int, room: int) -> tuple[np.ndarray, int]:
    """Room `room` of the bank at RT60 `rt60_steps * RT60_STEP` (`room_impulse_response`,
    seeded by the two indices)."""
    rng = np.random.default_rng([rt60_steps, room])
    return room_impulse_response(sample_rate, rt60_steps * RT60_STEP, rng)


def reverberate(
    audio: np.ndarray, sample_rate: int, rt60: float, rng: np.random.Generator
) -> np.ndarray:
    """Reverberation with reverberation time `rt60` seconds (rounded to `RT60_STEP`) in one of
    the bank's `ROOMS_PER_RT60` simulated rooms, drawn with `rng` (`room_impulse_response`);
    the direct path's delay is removed, so word times stay valid, and the tail past the input's
    end is cut.

    Returns:
      float32 [num_samples].
    """
    steps = max(1, round(rt60 / RT60_STEP))
    ir, delay = _bank_impulse_response(sample_rate, steps, int(rng.integers(ROOMS_PER_RT60)))
    return _unclipped(convolve(audio, ir, delay))


def telephone(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Telephone band: resampled to 8 kHz, band-passed to 300-3400 Hz (4th-order Butterworth,
    forward and backward, so no delay), resampled back.

    Returns:
      float32 [num_samples].
    """
    import scipy.signal

    narrow = librosa.resample(audio, orig_sr=sample_rate, target_sr=TELEPHONE_RATE)
    band = scipy.signal.butter(4, TELEPHONE_BAND, btype="bandpass", fs=TELEPHONE_RATE, output="sos")
    narrow = scipy.signal.sosfiltfilt(band, narrow)
    out = librosa.resample(narrow, orig_sr=TELEPHONE_RATE, target_sr=sample_rate)
    return _unclipped(librosa.util.fix_length(out, size=audio.shape[0]))


def random_eq(
    audio: np.ndarray,
    sample_rate: int,
    rng: np.random.Generator,
    min_gain_db: float = -6.0,
    max_gain_db: float = 6.0,
) -> np.ndarray:
    """A random equalizer: a low shelf, five peaking filters and a high shelf, each with a gain
    drawn from [min_gain_db, max_gain_db] and a random centre frequency within its band
    (audiomentations' SevenBandParametricEQ).

    Returns:
      float32 [num_samples].
    """
    import audiomentations as am

    eq = am.SevenBandParametricEQ(min_gain_db=min_gain_db, max_gain_db=max_gain_db, p=1.0)
    with _seeded_globals(rng):
        return _unclipped(eq(audio, sample_rate))


def mu_law(audio: np.ndarray, bits: int = 8) -> np.ndarray:
    """Codec-like distortion: mu-law companding with mu = 2**bits - 1, quantized to `bits` bits
    and expanded back (librosa.mu_compress / mu_expand). Audio beyond [-1, 1] is scaled in.

    Returns:
      float32 [num_samples].
    """
    mu = 2**bits - 1
    codes = librosa.mu_compress(_unclipped(audio), mu=mu, quantize=True)  # int [num_samples]
    return librosa.mu_expand(codes, mu=mu, quantize=True).astype(np.float32)


def apply(
    audio: np.ndarray,
    sample_rate: int,
    spec: AugmentSpec,
    rng: np.random.Generator,
    babble: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """Applies one `prepare.augment` spec, its value drawn uniformly from `spec.span()`
    (mulaw: an integer number of bits; noise: also a color from `spec.colors`).

    Args:
      audio: float32 [num_samples].
      babble: other utterances' waveforms, needed when the noise color drawn is "babble".

    Returns:
      float32 audio; as long as the input except for speed and tempo.
    """
    low, high = spec.span()
    value = float(rng.uniform(low, high))  # the kind's value (unused by telephone, eq, mulaw)
    match spec.kind:
        case "speed":
            return speed(audio, sample_rate, value)
        case "tempo":
            return tempo(audio, sample_rate, value, rng)
        case "pitch":
            return pitch_shift(audio, sample_rate, value, rng)
        case "gain":
            return gain(audio, value)
        case "noise":
            color = spec.colors[int(rng.integers(len(spec.colors)))]
            return add_noise(audio, sample_rate, value, color, rng, babble)
        case "reverb":
            return reverberate(audio, sample_rate, value, rng)
        case "telephone":
            return telephone(audio, sample_rate)
        case "eq":
            return random_eq(audio, sample_rate, rng, low, high)
        case "mulaw":
            return mu_law(audio, int(rng.integers(int(low), int(high) + 1)))
    raise ValueError(f"unknown augmentation kind {spec.kind!r}")
