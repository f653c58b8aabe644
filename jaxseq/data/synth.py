"""The built-in corpus: spoken digit strings synthesized with espeak-ng (`jaxseq synth`).

Each split speaks with its own voices, so the test split measures generalization to voices never
heard in training. Every utterance is drawn from its own generator seeded by (seed, split, index),
and every chunk of `_CHUNK` utterances is spoken by a fresh copy of the engine, so the corpus is
byte-identical for a seed whatever the number of worker processes or utterances per split.

Layout written under `out_dir`:

    corpus.json                  settings and per-split counts (used to skip finished splits)
    {split}/manifest.jsonl       {"id", "audio": "wav/<id>.wav", "text", "speaker"} per line
    {split}/wav/{id}.wav         16-bit PCM mono at `SynthConfig.sample_rate`
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.pool
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from jaxseq.config import SynthConfig

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
_SPLIT_FRACTIONS = {"train": 0.7, "valid": 0.1}  # the test split gets the rest
_MIN_DIGITS, _MAX_DIGITS = 1, 7
_RATE_WPM = (130, 210)
_PITCH = (25, 75)
_TRIM_TOP_DB = 40.0
_PAD_SECONDS = 0.1
_FORMAT_VERSION = 1
_CHUNK = 32  # utterances per task sent to a worker


def split_voices(seed: int) -> dict[str, list[str]]:
    """Disjoint train/valid/test voice sets (~70/10/20 % of `VOICES`), deterministic in `seed`."""
    order = np.random.default_rng([seed, 0xC0FFEE]).permutation(len(VOICES))
    n_train = round(_SPLIT_FRACTIONS["train"] * len(VOICES))
    n_valid = round(_SPLIT_FRACTIONS["valid"] * len(VOICES))
    bounds = {"train": (0, n_train), "valid": (n_train, n_train + n_valid)}
    bounds["test"] = (n_train + n_valid, len(VOICES))
    return {s: sorted(VOICES[i] for i in order[lo:hi]) for s, (lo, hi) in bounds.items()}


def _utterance(seed: int, split: str, index: int, voices: Sequence[str]) -> dict:
    """Draws the text, voice, rate and pitch of one utterance."""
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    digits = rng.integers(0, 10, size=rng.integers(_MIN_DIGITS, _MAX_DIGITS + 1))
    words = [DIGIT_WORDS[rng.integers(0, 2)] if d == 0 else DIGIT_WORDS[d + 1] for d in digits]
    return {
        "id": f"{split}-{index:06d}",
        "text": " ".join(words),
        "speaker": voices[rng.integers(len(voices))],
        "rate": int(rng.integers(_RATE_WPM[0], _RATE_WPM[1] + 1)),
        "pitch": int(rng.integers(_PITCH[0], _PITCH[1] + 1)),
    }


def _render(job: tuple[str, str, int, int, list[str], list[int]]) -> list[dict]:
    """Synthesizes and writes the wavs for a chunk of indices; returns their manifest records.

    The chunk is spoken by one fresh copy of the engine (see `synthesize_isolated`), so its audio
    depends only on (seed, split, indices): chunks start at fixed multiples of `_CHUNK`.
    """
    import librosa
    import soundfile as sf

    from jaxseq.audio.espeak import synthesize_isolated

    split_dir, split, seed, sample_rate, voices, indices = job
    utts = [_utterance(seed, split, index, voices) for index in indices]
    requests = [(u["text"], u["speaker"], u["rate"], u["pitch"]) for u in utts]
    noise_seed = np.random.SeedSequence([seed, SPLITS.index(split), indices[0]]).generate_state(1)
    waves, sr = synthesize_isolated(requests, seed=int(noise_seed[0]))
    pad = np.zeros(round(_PAD_SECONDS * sample_rate), np.float32)
    records = []
    for utt, wave in zip(utts, waves, strict=True):
        wave, _ = librosa.effects.trim(wave, top_db=_TRIM_TOP_DB)
        if wave.size == 0:
            raise RuntimeError(f"espeak-ng produced silence for {utt}")
        wave = librosa.resample(wave, orig_sr=sr, target_sr=sample_rate)
        wave = np.concatenate([pad, wave, pad])
        pcm = np.round(np.clip(wave, -1.0, 1.0) * 32767.0).astype(np.int16)
        audio = f"wav/{utt['id']}.wav"
        sf.write(Path(split_dir) / audio, pcm, sample_rate, subtype="PCM_16", format="WAV")
        records.append(
            {"id": utt["id"], "audio": audio, "text": utt["text"], "speaker": utt["speaker"]}
        )
    return records


def _chunks(n: int) -> Iterator[list[int]]:
    for start in range(0, n, _CHUNK):
        yield list(range(start, min(start + _CHUNK, n)))


def _write_split(
    split_dir: Path,
    split: str,
    n: int,
    cfg: SynthConfig,
    voices: list[str],
    pool: multiprocessing.pool.Pool | None,
    progress: bool,
) -> Path:
    from tqdm.auto import tqdm

    if split_dir.exists():
        shutil.rmtree(split_dir)
    (split_dir / "wav").mkdir(parents=True)
    jobs = [(str(split_dir), split, cfg.seed, cfg.sample_rate, voices, c) for c in _chunks(n)]
    results = pool.imap(_render, jobs) if jobs else []
    manifest = split_dir / "manifest.jsonl"
    tmp = manifest.with_suffix(".jsonl.tmp")
    with tqdm(total=n, desc=f"synth {split}", disable=not progress) as bar, tmp.open("w") as f:
        for records in results:  # in index order, whatever the worker count
            for record in records:
                f.write(json.dumps(record) + "\n")
            bar.update(len(records))
    tmp.replace(manifest)  # the manifest appears only once every wav is written
    return manifest


def _settings(cfg: SynthConfig) -> dict:
    return {
        "version": _FORMAT_VERSION,
        "preset": cfg.preset,
        "seed": cfg.seed,
        "sample_rate": cfg.sample_rate,
    }


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def synthesize_corpus(
    out_dir: str | Path, cfg: SynthConfig, num_workers: int = 0, progress: bool = True
) -> dict[str, Path]:
    """Writes the digits corpus (see the module docstring for the layout).

    Splits whose manifest was already written with the same settings and count are skipped.

    Args:
      out_dir: output folder (created if missing).
      cfg: preset, utterances per split, seed and output sample rate.
      num_workers: worker processes, started with `spawn` (so a script calling this needs an
        `if __name__ == "__main__":` guard); 0 = os.cpu_count().
      progress: show a tqdm progress bar per split.

    Returns:
      {split: path of its manifest.jsonl} for train, valid and test.
    """
    if cfg.preset != "digits":
        raise ValueError(f"unknown synth preset {cfg.preset!r}; the only preset is 'digits'")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {"train": cfg.num_train, "valid": cfg.num_valid, "test": cfg.num_test}
    voices = split_voices(cfg.seed)
    settings = _settings(cfg)
    corpus_json = out_dir / "corpus.json"
    state = json.loads(corpus_json.read_text()) if corpus_json.exists() else {}
    done = state.get("splits", {}) if state.get("settings") == settings else {}

    todo = [
        s
        for s in SPLITS
        if done.get(s) != counts[s] or not (out_dir / s / "manifest.jsonl").exists()
    ]
    num_chunks = max((len(list(_chunks(counts[s]))) for s in todo), default=0)
    num_workers = min(num_workers or os.cpu_count() or 1, num_chunks)
    pool = None
    if num_workers:  # always worker processes: they fork the engine, which needs a single thread
        pool = multiprocessing.get_context("spawn").Pool(num_workers)
    try:
        manifests = {}
        for split in SPLITS:
            if split not in todo:
                manifests[split] = out_dir / split / "manifest.jsonl"
                continue
            done.pop(split, None)  # not done until its manifest is complete
            _write_json(corpus_json, {"settings": settings, "splits": done, "voices": voices})
            manifests[split] = _write_split(
                out_dir / split, split, counts[split], cfg, voices[split], pool, progress
            )
            done[split] = counts[split]
            _write_json(corpus_json, {"settings": settings, "splits": done, "voices": voices})
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return manifests
