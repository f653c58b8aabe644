"""Benchmark: long-form transcription, jaxseq's chunked path against transformers' pipeline.

A random whisper-tiny-sized Whisper (d_model 384, 4 + 4 layers, vocabulary 51,865, Whisper's
real tokenizer built offline from openai-whisper's tiktoken files) is built in transformers,
saved, and converted with `jaxseq convert`. A recording of at least `--minutes` of espeak-ng
speech (digit strings over several voices, 0.3-1.2 s pauses) is transcribed by both, in one
run, in 30 s windows with 5 s strides, greedy:
  * jaxseq: `jaxseq.load(workdir).transcribe([audio], batch_size=B)` (windows decoded in
    batches, tokens merged as the pipeline merges them);
  * transformers: `pipeline("automatic-speech-recognition", chunk_length_s=30,
    batch_size=B)` with the same prompt (English, transcribe, no timestamps).
The end token is suppressed on both sides (in the generation config jaxseq reads too), so that
every window decodes exactly `--tokens` tokens, a fixed workload whatever the random weights
say. Reported: RTFx (audio seconds per wall second) of a warm run of each, jaxseq's first
call (compiling included), and how far the two texts agree (jiwer WER of one against the
other). Torch uses as many threads as the machine has cores, like XLA.

    .venv/bin/python scripts/bench_longform.py [--minutes 10] [--batch 8] [--device gpu]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.hf_whisper

import jiwer  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

import jaxseq  # noqa: E402
from jaxseq import cli  # noqa: E402
from jaxseq.audio.espeak import synthesize  # noqa: E402
from jaxseq.audio.io import to_mono_resampled  # noqa: E402
from jaxseq.text.whisper_tokenizer import WhisperTokenizer  # noqa: E402
from tests.hf_whisper import WHISPER_TINY, random_whisper, write_whisper_tokenizer  # noqa: E402

RATE = 16000
EOT, SOT, EN, TRANSCRIBE, NO_TIMESTAMPS = 50257, 50258, 50259, 50359, 50363
VOICES = ["en-us", "en-gb-x-rp", "en-us+m3", "en-029", "en+f2", "en-gb-scotland"]
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def log(message: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    print(message, file=sys.stderr, flush=True)


def recording(minutes: float, seed: int = 0) -> np.ndarray:
    """Digit strings spoken by several voices, with pauses: float32 [samples] at 16 kHz."""
    rng = np.random.default_rng(seed)
    parts, samples = [], 0
    while samples < minutes * 60 * RATE:
        text = " ".join(rng.choice(DIGITS, int(rng.integers(3, 10))))
        wave, rate = synthesize(text, voice=VOICES[int(rng.integers(len(VOICES)))])
        wave = to_mono_resampled(wave[:, None], rate, RATE)
        pause = np.zeros(int(rng.uniform(0.3, 1.2) * RATE), np.float32)
        parts += [wave, pause]
        samples += len(wave) + len(pause)
    return np.concatenate(parts).astype(np.float32)


def build(folder: Path) -> transformers.WhisperForConditionalGeneration:
    """The random whisper-tiny-sized checkpoint in `folder`, with tokenizer and generation
    config (the end token suppressed)."""
    model = random_whisper(
        0.1,
        **WHISPER_TINY,
        pad_token_id=EOT,
        bos_token_id=EOT,
        eos_token_id=EOT,
        decoder_start_token_id=SOT,
    )
    write_whisper_tokenizer(folder)
    tokenizer = WhisperTokenizer.from_folder(folder)
    model.generation_config = transformers.GenerationConfig(
        decoder_start_token_id=SOT,
        eos_token_id=EOT,
        pad_token_id=EOT,
        bos_token_id=EOT,
        max_length=448,
        suppress_tokens=sorted({*tokenizer.non_speech_ids(), EOT, SOT, 50358, 50360, 50361}),
        begin_suppress_tokens=[220, EOT],
        is_multilingual=True,
        lang_to_id={"<|en|>": EN},
        task_to_id={"translate": 50358, "transcribe": TRANSCRIBE},
        no_timestamps_token_id=NO_TIMESTAMPS,
    )
    model.save_pretrained(folder)
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="length of the recording")
    p.add_argument("--batch", type=int, default=8, help="windows per batch, both sides")
    p.add_argument("--tokens", type=int, default=96, help="tokens decoded per window")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    audio = recording(args.minutes)
    seconds = len(audio) / RATE
    log(f"recording: {seconds / 60:.2f} min")
    with tempfile.TemporaryDirectory() as tmp:
        hf_folder, workdir = Path(tmp) / "hf", Path(tmp) / "workdir"
        hf_model = build(hf_folder).to("cuda" if args.device == "gpu" else "cpu")
        cli.main(["convert", "--hf", str(hf_folder), "--workdir", str(workdir)])
        model = jaxseq.load(workdir, overrides=[f"data.max_label_length={args.tokens - 1}"])
        options = {"decoder": "greedy", "batch_size": args.batch}

        start = time.perf_counter()
        model.transcribe([audio], **options)
        first = time.perf_counter() - start
        start = time.perf_counter()
        (ours,) = model.transcribe([audio], **options)
        jax_seconds = time.perf_counter() - start
        log(f"jaxseq: {jax_seconds:.1f} s (first call {first:.1f} s)")

        tokenizer = transformers.WhisperTokenizerFast.from_pretrained(hf_folder)
        tokenizer.pad_token = "<|endoftext|>"
        pipe = transformers.pipeline(
            "automatic-speech-recognition",
            model=hf_model,
            tokenizer=tokenizer,
            feature_extractor=transformers.WhisperFeatureExtractor(),
            chunk_length_s=30,
            batch_size=args.batch,
            device=0 if args.device == "gpu" else "cpu",
        )
        kwargs = {  # greedy: the pipeline would otherwise search with its default 5 beams
            "language": "en",
            "task": "transcribe",
            "max_new_tokens": args.tokens,
            "num_beams": 1,
            "do_sample": False,
        }
        with torch.inference_mode():
            pipe(audio[: 40 * RATE], generate_kwargs=kwargs)  # warm-up
            start = time.perf_counter()
            theirs = pipe(audio, generate_kwargs=kwargs)["text"].strip()
            torch_seconds = time.perf_counter() - start
        log(f"transformers: {torch_seconds:.1f} s")

    words = max(len(theirs.split()), 1)
    print(
        f"long-form, {seconds / 60:.1f} min recording, 30 s windows / 5 s strides, greedy, "
        f"{args.tokens} tokens per window, batch {args.batch}, {args.device} "
        f"({os.cpu_count()} cores)\n"
    )
    print("| transcriber | wall s | RTFx | speed vs transformers |")
    print("|---|---:|---:|---:|")
    print(
        f"| transformers {transformers.__version__} pipeline (PyTorch {torch.__version__}) "
        f"| {torch_seconds:.1f} | {seconds / torch_seconds:.1f} | 1.00x |"
    )
    print(
        f"| jaxseq chunked | {jax_seconds:.1f} | {seconds / jax_seconds:.1f} | "
        f"{torch_seconds / jax_seconds:.2f}x |"
    )
    print(
        f"\njaxseq first call (compiling included): {first:.1f} s. Texts: {words} words; "
        f"WER of jaxseq's against transformers': {jiwer.wer(theirs, ours):.2%}"
    )


if __name__ == "__main__":
    main()
