"""The built-in corpora: spoken digit strings synthesized with espeak-ng (`jaxseq synth`).

Each split speaks with its own voices, so the test split measures generalization to voices never
heard in training; `synth.voices` instead gives every split the same voices (one voice with a
fixed rate and pitch is a single-speaker corpus for TTS). Every utterance is drawn from its own
generator seeded by (seed, split, index), and every chunk of `_CHUNK` utterances is spoken by
a fresh copy of the engine, so the corpus is byte-identical for a seed whatever the number of
worker processes or utterances per split.

Voices: `synth.voice_space` "demo" (`VOICES`: 8 English base voices x 16 variants) or "all"
(every English base voice x every variant espeak-ng ships, `english_voices()`; the `mb-*`
voices need mbrola and are left out), split by `split_voices`. Each turn also draws espeak-ng's
pitch range and word gap from `synth.pitch_range` and `synth.word_gap` (fixed by default, and
then drawing nothing: the corpora of earlier versions are unchanged).

Presets (`synth.preset`):

  digits       one voice says `synth.words` digit words; `synth.label` = "speaker" or "text"
               adds the voice or the text as the manifest's `label` (speaker ID, word
               classification with words=[1, 1]). The manifest's `words` give where each word
               is spoken, from espeak-ng's word events (`jaxseq.audio.espeak.word_extents`).
  diarization  `synth.turns` turns by different voices of the split, each `synth.words` digit
               words with its own rate and pitch, trimmed and joined with `_PAD_SECONDS` of
               silence between and around them; the manifest's `segments` give each turn's
               voice and its exact extent in the wav (per-frame labels). `synth.label` is unused.
  stress       `synth.num_test` digits utterances by voices held out of training, at the
               extremes of espeak-ng's rates and pitches, written once per listening
               condition (jaxseq.data.stress: which voices, which conditions, the layout).

Layout written under `out_dir`:

    corpus.json                  settings and per-split counts (used to skip finished splits)
    {split}/manifest.jsonl       per line {"id", "audio": "wav/<id>.wav", "text", "speaker"},
                                 plus (digits) "words": [{"word", "start", "end"}, ...] in
                                 seconds of the wav (rounded to 1e-4) and "label" (with
                                 synth.label set), or "segments":
                                 [{"start": s, "end": s, "label": voice}, ...] in seconds
                                 (rounded to 1e-4) and "speaker": the voices joined by ","
                                 (diarization)
    {split}/wav/{id}.wav         16-bit PCM mono at `SynthConfig.sample_rate`

(stress: one folder per condition instead of one per split.)
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.pool
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from jaxseq.config import SynthConfig
from jaxseq.data.stress import (
    CONDITIONS,
    PITCH_LIMITS,
    RATE_LIMITS,
    STRESS_PITCHES,
    STRESS_RATES,
    draw_extreme,
    in_conditions,
)

if TYPE_CHECKING:
    from jaxseq.audio.espeak import Word

DIGIT_WORDS = ("zero", "oh", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# espeak-ng English base voices ("en" is British English) x voice variants (timbre and pitch).
_BASES = (
    "en",
    "en-us",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
_VARIANTS = tuple(f"m{i}" for i in range(1, 9)) + tuple(f"f{i}" for i in range(1, 6))
_VARIANTS += ("klatt", "klatt2", "klatt3")
VOICES = tuple(f"{base}+{variant}" for base in _BASES for variant in _VARIANTS)

SPLITS = ("train", "valid", "test")
STRESS = "stress"  # the stress preset's one split (its ids and seeds)
_SPLIT_IDS = {**{s: i for i, s in enumerate(SPLITS)}, STRESS: len(SPLITS)}
PRESETS = ("digits", "diarization", STRESS)
VOICE_SPACES = ("demo", "all")
LABELS = ("", "speaker", "text")
_SPLIT_FRACTIONS = {"train": 0.7, "valid": 0.1}  # the test split gets the rest
_TRIM_TOP_DB = 40.0
_PAD_SECONDS = 0.1
_FORMAT_VERSION = 2  # 2: digits manifests have words
_CHUNK = 32  # utterances per task sent to a worker


def english_voices() -> tuple[str, ...]:
    """Every English espeak-ng base voice with every variant (the "all" voice space)."""
    from jaxseq.audio import espeak

    bases = [b for b in espeak.list_voices() if b == "en" or b.startswith("en-")]
    return tuple(f"{base}+{variant}" for base in bases for variant in espeak.list_variants())


def _partition(voices: Sequence[str], seed: list[int]) -> dict[str, list[str]]:
    """`voices` split ~70/10/20 % into train/valid/test by a permutation seeded with `seed`."""
    order = np.random.default_rng(seed).permutation(len(voices))
    n_train = round(_SPLIT_FRACTIONS["train"] * len(voices))
    n_valid = round(_SPLIT_FRACTIONS["valid"] * len(voices))
    bounds = {"train": (0, n_train), "valid": (n_train, n_train + n_valid)}
    bounds["test"] = (n_train + n_valid, len(voices))
    return {s: sorted(voices[i] for i in order[lo:hi]) for s, (lo, hi) in bounds.items()}


def split_voices(seed: int, space: str = "demo") -> dict[str, list[str]]:
    """Disjoint train/valid/test voice sets of a voice space, deterministic in `seed`.

    "demo" splits `VOICES` ~70/10/20 %; "all" keeps those sets and adds the other English
    voices, split alike by their own permutation, so a demo voice is in the same split in both.
    """
    splits = _partition(VOICES, [seed, 0xC0FFEE])
    if space == "all":
        others = _partition(sorted(set(english_voices()) - set(VOICES)), [seed, 0xC0FFEE, 1])
        splits = {s: sorted(splits[s] + others[s]) for s in SPLITS}
    return splits


def corpus_voices(cfg: SynthConfig) -> dict[str, list[str]]:
    """The voices of each split: `cfg.voices` (voices of `cfg.voice_space`) for all of them,
    else `split_voices(cfg.seed, cfg.voice_space)`; the stress preset's one split gets the test
    voices."""
    if cfg.preset == STRESS:
        if cfg.voices:
            raise ValueError(
                "synth.preset=stress speaks with the voices held out of training; leave "
                f"synth.voices empty (it is {list(cfg.voices)})"
            )
        return {STRESS: split_voices(cfg.seed, cfg.voice_space)["test"]}
    if not cfg.voices:
        return split_voices(cfg.seed, cfg.voice_space)
    known = VOICES if cfg.voice_space == "demo" else english_voices()
    unknown = sorted(set(cfg.voices) - set(known))
    if unknown:
        raise ValueError(
            f"synth.voices has unknown voices {unknown}; choose from the voices of "
            f"synth.voice_space={cfg.voice_space} (jaxseq.data.synth.VOICES for demo, "
            f"english_voices() for all), e.g. {list(known[:3])}"
        )
    return {s: sorted(set(cfg.voices)) for s in SPLITS}


def _check_range(name: str, bounds: tuple[int, int], lo: int, hi: int) -> None:
    if len(bounds) != 2 or not lo <= bounds[0] <= bounds[1] <= hi:
        raise ValueError(
            f"synth.{name} is {list(bounds)}; give [low, high] with {lo} <= low <= high <= {hi}"
        )


def _checked_voices(cfg: SynthConfig) -> dict[str, list[str]]:
    """Validates the settings of `cfg`; returns the voices of each split."""
    if cfg.preset not in PRESETS:
        raise ValueError(f"unknown synth preset {cfg.preset!r}; choose one of {list(PRESETS)}")
    if cfg.label not in LABELS:
        raise ValueError(f"unknown synth label {cfg.label!r}; choose one of {list(LABELS)}")
    if cfg.voice_space not in VOICE_SPACES:
        raise ValueError(
            f"unknown synth voice_space {cfg.voice_space!r}; choose one of {list(VOICE_SPACES)}"
        )
    _check_range("rate", cfg.rate, *RATE_LIMITS)
    _check_range("pitch", cfg.pitch, *PITCH_LIMITS)
    _check_range("pitch_range", cfg.pitch_range, 0, 100)
    _check_range("word_gap", cfg.word_gap, 0, 100)
    _check_range("words", cfg.words, 1, 100)
    voices = corpus_voices(cfg)
    if cfg.preset == "diarization":
        _check_range("turns", cfg.turns, 1, len(VOICES))
        fewest = min(SPLITS, key=lambda s: len(voices[s]))
        if len(voices[fewest]) < cfg.turns[1]:
            raise ValueError(
                f"synth.turns is {list(cfg.turns)}, but split {fewest!r} has only "
                f"{len(voices[fewest])} voices and each turn needs its own; lower synth.turns "
                f"or give synth.voices at least {cfg.turns[1]} voices"
            )
    return voices


def _digits(rng: np.random.Generator, words: tuple[int, int]) -> str:
    """Draws a string of `words` digit words ("oh" or "zero" for 0)."""
    digits = rng.integers(0, 10, size=rng.integers(words[0], words[1] + 1))
    return " ".join(
        DIGIT_WORDS[rng.integers(0, 2)] if d == 0 else DIGIT_WORDS[d + 1] for d in digits
    )


def _draw(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    return int(rng.integers(bounds[0], bounds[1] + 1))


def _intonation(rng: np.random.Generator, cfg: SynthConfig) -> tuple[int, int]:
    """(pitch range, word gap) of a turn; a fixed one (low == high) draws nothing from `rng`."""
    return tuple(
        lo if lo == hi else _draw(rng, (lo, hi)) for lo, hi in (cfg.pitch_range, cfg.word_gap)
    )


def _utterance(cfg: SynthConfig, split: str, index: int, voices: Sequence[str]) -> dict:
    """Draws one utterance: its id and its turns, each an espeak `Request`
    (text, voice, rate, pitch, pitch range, word gap).

    A digits (or stress) utterance is one turn; a diarization one is `cfg.turns` turns by
    distinct voices.
    """
    rng = np.random.default_rng([cfg.seed, _SPLIT_IDS[split], index])
    if cfg.preset == "diarization":
        picks = rng.choice(len(voices), size=_draw(rng, cfg.turns), replace=False)
        turns = [
            (_digits(rng, cfg.words), voices[i], _draw(rng, cfg.rate), _draw(rng, cfg.pitch))
            + _intonation(rng, cfg)
            for i in picks
        ]
    else:
        text = _digits(rng, cfg.words)
        voice = voices[rng.integers(len(voices))]
        if cfg.preset == STRESS:
            rate, pitch = draw_extreme(rng, STRESS_RATES), draw_extreme(rng, STRESS_PITCHES)
        else:
            rate, pitch = _draw(rng, cfg.rate), _draw(rng, cfg.pitch)
        turns = [(text, voice, rate, pitch, *_intonation(rng, cfg))]
    return {"id": f"{split}-{index:06d}", "turns": turns}


def _manifest_record(
    cfg: SynthConfig, utt: dict, audio: str, segments: list[dict], words: list[dict]
) -> dict:
    texts, voices = zip(*[(text, voice) for text, voice, *_ in utt["turns"]], strict=True)
    record = {"id": utt["id"], "audio": audio, "text": " ".join(texts), "speaker": ",".join(voices)}
    if cfg.preset == "diarization":
        record["segments"] = segments
    elif cfg.preset == STRESS:
        names = ("voice", "rate", "pitch", "pitch_range", "word_gap")
        record.update(zip(names, utt["turns"][0][1:], strict=True))
    else:
        record["words"] = words
        if cfg.label:
            record["label"] = record["speaker" if cfg.label == "speaker" else "text"]
    return record


def _word_times(
    text: str, words: list[Word], kept: tuple[int, int], sr: int, start: float
) -> list[dict]:
    """The manifest's words of one turn, in seconds of the written wav.

    Args:
      text: the turn's text (digit words joined by spaces).
      words: espeak-ng's `Word`s of the turn's waveform as synthesized, at `sr`.
      kept: the samples [lo, hi) of that waveform that librosa.effects.trim kept.
      sr: the synthesis's sample rate.
      start: where the trimmed turn starts in the written wav, in seconds. Resampling keeps
        times, so sample s of the synthesis is at start + (s - lo) / sr there.

    Raises:
      RuntimeError: when espeak-ng's words are not the words of `text`.
    """
    if [w.text for w in words] != text.split(" "):
        raise RuntimeError(f"espeak-ng spoke the words {[w.text for w in words]} for {text!r}")
    lo, hi = int(kept[0]), int(kept[1])
    return [
        {
            "word": w.text,
            "start": round(start + (min(max(w.start, lo), hi) - lo) / sr, 4),
            "end": round(start + (min(max(w.end, lo), hi) - lo) / sr, 4),
        }
        for w in words
    ]


def _folders(split: str, cfg: SynthConfig) -> tuple[str, ...]:
    """The folders a split is written to: its own, or (stress) one per condition."""
    return CONDITIONS if cfg.preset == STRESS else (split,)


def _to_pcm(wave: np.ndarray) -> np.ndarray:
    return np.round(np.clip(wave, -1.0, 1.0) * 32767.0).astype(np.int16)


def _render(job: tuple[str, str, SynthConfig, list[str], list[int]]) -> dict[str, list[dict]]:
    """Synthesizes and writes the wavs for a chunk of indices; returns their manifest records
    per folder (`_folders`).

    The chunk is spoken by one fresh copy of the engine (see `synthesize_isolated`), so its audio
    depends only on (seed, split, indices): chunks start at fixed multiples of `_CHUNK`. A
    stress utterance's conditions transform its written (16-bit) clean samples.
    """
    import librosa
    import soundfile as sf

    from jaxseq.audio.espeak import synthesize_isolated_words

    out_dir, split, cfg, voices, indices = job
    seed, sample_rate = cfg.seed, cfg.sample_rate
    utts = [_utterance(cfg, split, index, voices) for index in indices]
    requests = [turn for utt in utts for turn in utt["turns"]]
    noise_seed = np.random.SeedSequence([seed, _SPLIT_IDS[split], indices[0]]).generate_state(1)
    waves, words, sr = synthesize_isolated_words(
        requests, seed=int(noise_seed[0]), top_db=_TRIM_TOP_DB
    )
    spoken = zip(waves, words, strict=True)
    pad = np.zeros(round(_PAD_SECONDS * sample_rate), np.float32)
    records: dict[str, list[dict]] = {folder: [] for folder in _folders(split, cfg)}
    for index, utt in zip(indices, utts, strict=True):
        pieces, segments, timed, offset = [pad], [], [], pad.size  # offset: samples so far
        for turn in utt["turns"]:
            wave, turn_words = next(spoken)
            wave, kept = librosa.effects.trim(wave, top_db=_TRIM_TOP_DB)
            if wave.size == 0:
                raise RuntimeError(f"espeak-ng produced silence for {utt['id']}: {turn}")
            wave = librosa.resample(wave, orig_sr=sr, target_sr=sample_rate)
            start, offset = offset, offset + wave.size
            timed += _word_times(turn[0], turn_words, kept, sr, start / sample_rate)
            segments.append(
                {
                    "start": round(start / sample_rate, 4),
                    "end": round(offset / sample_rate, 4),
                    "label": turn[1],
                }
            )
            pieces += [wave, pad]
            offset += pad.size
        pcm = _to_pcm(np.concatenate(pieces))  # [samples]
        audio = f"wav/{utt['id']}.wav"
        record = _manifest_record(cfg, utt, audio, segments, timed)
        pcms, labelled = {split: pcm}, {split: record}
        if cfg.preset == STRESS:
            clean = pcm.astype(np.float32) / 32767.0
            heard = in_conditions(clean, sample_rate, [seed, _SPLIT_IDS[split], index])
            pcms = {condition: _to_pcm(wave) for condition, wave in heard.items()}
            labelled = {condition: {**record, "condition": condition} for condition in heard}
        for folder, samples in pcms.items():
            path = Path(out_dir) / folder / audio
            sf.write(path, samples, sample_rate, subtype="PCM_16", format="WAV")
            records[folder].append(labelled[folder])
    return records


def _chunks(n: int) -> Iterator[list[int]]:
    for start in range(0, n, _CHUNK):
        yield list(range(start, min(start + _CHUNK, n)))


def _manifests(out_dir: Path, split: str, cfg: SynthConfig) -> dict[str, Path]:
    """{folder: its manifest.jsonl} of a split (see `_folders`)."""
    return {folder: out_dir / folder / "manifest.jsonl" for folder in _folders(split, cfg)}


def _write_split(
    out_dir: Path,
    split: str,
    n: int,
    cfg: SynthConfig,
    voices: list[str],
    pool: multiprocessing.pool.Pool | None,
    progress: bool,
) -> dict[str, Path]:
    from tqdm.auto import tqdm

    manifests = _manifests(out_dir, split, cfg)
    for manifest in manifests.values():
        if manifest.parent.exists():
            shutil.rmtree(manifest.parent)
        (manifest.parent / "wav").mkdir(parents=True)
    jobs = [(str(out_dir), split, cfg, voices, c) for c in _chunks(n)]
    results = pool.imap(_render, jobs) if jobs else []
    tmps = {folder: manifest.with_suffix(".jsonl.tmp") for folder, manifest in manifests.items()}
    with ExitStack() as stack:
        bar = stack.enter_context(tqdm(total=n, desc=f"synth {split}", disable=not progress))
        files = {folder: stack.enter_context(tmp.open("w")) for folder, tmp in tmps.items()}
        for chunk in results:  # in index order, whatever the worker count
            for folder, records in chunk.items():
                files[folder].writelines(json.dumps(record) + "\n" for record in records)
            bar.update(len(records))  # every folder has one record per utterance
    for folder, tmp in tmps.items():  # a manifest appears only once every wav is written
        tmp.replace(manifests[folder])
    return manifests


def _settings(cfg: SynthConfig) -> dict:
    """What a corpus depends on; the keys added since version 2 only where not their default
    (so that the corpus.json of an earlier version's corpus still matches)."""
    default = SynthConfig()
    added = {
        key: value if isinstance(value, str) else list(value)
        for key in ("voice_space", "pitch_range", "word_gap")
        if (value := getattr(cfg, key)) != getattr(default, key)
    }
    return {
        **added,
        "version": _FORMAT_VERSION,
        "preset": cfg.preset,
        "seed": cfg.seed,
        "sample_rate": cfg.sample_rate,
        "voices": sorted(cfg.voices),
        "rate": list(cfg.rate),
        "pitch": list(cfg.pitch),
        "words": list(cfg.words),
        "label": cfg.label,
        "turns": list(cfg.turns),
    }


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def synthesize_corpus(
    out_dir: str | Path, cfg: SynthConfig, num_workers: int = 0, progress: bool = True
) -> dict[str, Path]:
    """Writes the corpus of `cfg.preset` (see the module docstring for the presets and layout).

    Splits whose manifest was already written with the same settings and count are skipped.

    Args:
      out_dir: output folder (created if missing).
      cfg: preset, utterances per split, seed, output sample rate, the voices (or voice
        space), rate, pitch, pitch range, word gap, words (and turns) utterances are drawn
        from, and the manifest label.
      num_workers: worker processes, started with `spawn` (so a script calling this needs an
        `if __name__ == "__main__":` guard); 0 = os.cpu_count().
      progress: show a tqdm progress bar per split.

    Returns:
      {split: path of its manifest.jsonl} for train, valid and test; for the stress preset
      {condition: path of its manifest.jsonl} for each of `jaxseq.data.stress.CONDITIONS`.

    Raises:
      ValueError: an unknown preset, label or voice, a range out of bounds, or (diarization)
        a split with fewer voices than `cfg.turns` may ask for; nothing is written then.
    """
    voices = _checked_voices(cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {"train": cfg.num_train, "valid": cfg.num_valid, "test": cfg.num_test}
    if cfg.preset == STRESS:
        counts = {STRESS: cfg.num_test}
    settings = _settings(cfg)
    corpus_json = out_dir / "corpus.json"
    state = json.loads(corpus_json.read_text()) if corpus_json.exists() else {}
    done = state.get("splits", {}) if state.get("settings") == settings else {}

    todo = [
        s
        for s in counts
        if done.get(s) != counts[s]
        or not all(p.exists() for p in _manifests(out_dir, s, cfg).values())
    ]
    num_chunks = max((len(list(_chunks(counts[s]))) for s in todo), default=0)
    num_workers = min(num_workers or os.cpu_count() or 1, num_chunks)
    pool = None
    if num_workers:  # always worker processes: they fork the engine, which needs a single thread
        pool = multiprocessing.get_context("spawn").Pool(num_workers)
    try:
        manifests = {}
        for split in counts:
            if split not in todo:
                manifests.update(_manifests(out_dir, split, cfg))
                continue
            done.pop(split, None)  # not done until its manifest is complete
            _write_json(corpus_json, {"settings": settings, "splits": done, "voices": voices})
            manifests.update(
                _write_split(out_dir, split, counts[split], cfg, voices[split], pool, progress)
            )
            done[split] = counts[split]
            _write_json(corpus_json, {"settings": settings, "splits": done, "voices": voices})
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return manifests
