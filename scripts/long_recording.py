"""A long recording with known answers, for trying and scoring long-form transcription.

`build` joins the utterances of a manifest (e.g. the demo's unseen test voices) into one WAV
file, with pauses drawn from --pause between them, and writes the truth beside it
(NAME.truth.json, openai-whisper's layout: one segment per utterance with its start, end and
text, and its `words` with their times where the manifest has them, as `jaxseq synth` writes
them for the digits corpus). `score` compares a `jaxseq transcribe --output-format json` result
with the truth: the WER and CER of the whole text, how far each predicted segment starts from
the nearest true utterance start, and, where the truth has word times, how far the predicted
word times are from the true ones (the predicted words aligned to the true words by edit
distance, and the pairs of equal words compared); with --report (`jaxseq evaluate`'s JSON for
the same manifest), also the WER of the same utterances decoded one by one.

    python scripts/long_recording.py build --manifest data/digits-audio/test/manifest.jsonl \\
        --out long.wav --minutes 10
    jaxseq transcribe --workdir runs/demo-ctc long.wav --output-format json --output-dir out
    python scripts/long_recording.py score long.truth.json out/long.json \
        --report runs/demo-ctc/eval/test-step3500.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jiwer
import numpy as np
import soundfile as sf

from jaxseq.audio.io import load_audio


def build(args: argparse.Namespace) -> None:
    rows = [json.loads(line) for line in args.manifest.read_text().splitlines() if line.strip()]
    rng = np.random.default_rng(args.seed)
    parts, segments, samples = [], [], 0
    for row in rows:
        if samples >= args.minutes * 60 * args.rate:
            break
        wave = load_audio(args.manifest.parent / row["audio"], args.rate)
        pause = np.zeros(int(rng.uniform(*args.pause) * args.rate), np.float32)
        start = samples + len(pause)
        segment = {
            "id": len(segments),
            "start": round(start / args.rate, 3),
            "end": round((start + len(wave)) / args.rate, 3),
            "text": row["text"],
            "utterance": row.get("id", row["audio"]),
        }
        if "words" in row:  # times in the utterance's wav, shifted to where it is put
            segment["words"] = [
                {
                    "word": w["word"],
                    "start": round(start / args.rate + w["start"], 4),
                    "end": round(start / args.rate + w["end"], 4),
                }
                for w in row["words"]
            ]
        segments.append(segment)
        parts += [pause, wave]
        samples = start + len(wave)
    parts.append(np.zeros(int(args.pause[1] * args.rate), np.float32))
    audio = np.concatenate(parts)
    sf.write(args.out, audio, args.rate, subtype="PCM_16")
    truth = {"text": " ".join(s["text"] for s in segments), "language": "en", "segments": segments}
    path = args.out.with_suffix(".truth.json")
    path.write_text(json.dumps(truth, indent=1))
    print(
        f"{args.out}: {len(audio) / args.rate / 60:.2f} min, {len(segments)} utterances of "
        f"{args.manifest}; truth in {path}"
    )


def score(args: argparse.Namespace) -> None:
    truth = json.loads(args.truth.read_text())
    result = json.loads(args.result.read_text())
    print(
        f"WER {jiwer.wer(truth['text'], result['text']):.2%}  "
        f"CER {jiwer.cer(truth['text'], result['text']):.2%}  (long-form, {args.result})"
    )
    if args.report:  # `jaxseq evaluate`'s hypotheses for the same utterances, one by one
        hyps = {u["id"]: u["hyp"] for u in json.loads(args.report.read_text())["utterances"]}
        joined = " ".join(hyps[s["utterance"]] for s in truth["segments"])
        print(
            f"WER {jiwer.wer(truth['text'], joined):.2%}  "
            f"CER {jiwer.cer(truth['text'], joined):.2%}  (the utterances one by one, "
            f"{args.report})"
        )
    true_starts = np.array([s["start"] for s in truth["segments"]])
    starts = np.array([s["start"] for s in result["segments"]])
    if starts.size:
        off = np.abs(starts[:, None] - true_starts[None, :]).min(axis=1)
        print(
            f"{len(starts)} segments for {len(true_starts)} utterances; start to the nearest "
            f"true start: median {np.median(off):.3f} s, {np.mean(off <= 0.3):.1%} within "
            f"0.3 s, worst {off.max():.3f} s"
        )
    words = sum(len(s.get("words", [])) for s in result["segments"])
    print(f"{words} words with times")
    true_words = [w for s in truth["segments"] for w in s.get("words", [])]
    if true_words:
        print(_word_timing(true_words, result["segments"], args.tolerance))


def _word_timing(true_words: list[dict], segments: list[dict], tolerance: float) -> str:
    """How close the predicted word times are to the true ones, as one line.

    The predicted words are aligned to the true words by edit distance (jiwer), and each pair
    of equal words in that alignment compares its start and end times.
    """
    predicted = [
        (token, w) for s in segments for w in s.get("words", []) for token in w["word"].split()
    ]
    reference = [w["word"].lower() for w in true_words]
    hypothesis = [token.lower() for token, _ in predicted]
    pairs = []
    if hypothesis:
        out = jiwer.process_words(" ".join(reference), " ".join(hypothesis))
        for chunk in out.alignments[0]:
            if chunk.type == "equal":
                refs = range(chunk.ref_start_idx, chunk.ref_end_idx)
                hyps = range(chunk.hyp_start_idx, chunk.hyp_end_idx)
                pairs += [(true_words[i], predicted[j][1]) for i, j in zip(refs, hyps, strict=True)]
    if not pairs:
        return f"word times: none of the {len(true_words)} true words was matched"
    start = np.array([abs(p["start"] - t["start"]) for t, p in pairs])
    end = np.array([abs(p["end"] - t["end"]) for t, p in pairs])
    within = f"within {tolerance:g} s"
    return (
        f"word times of {len(pairs)} matched words (of {len(true_words)}): start {within} "
        f"{np.mean(start <= tolerance):.1%}, end {within} {np.mean(end <= tolerance):.1%}, "
        f"both {np.mean((start <= tolerance) & (end <= tolerance)):.1%}; |start error| median "
        f"{np.median(start):.3f} s, worst {start.max():.3f} s; |end error| median "
        f"{np.median(end):.3f} s, worst {end.max():.3f} s"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(required=True)
    b = sub.add_parser("build", help="join a manifest's utterances into one recording")
    b.add_argument("--manifest", type=Path, required=True)
    b.add_argument("--out", type=Path, required=True, help="the .wav to write")
    b.add_argument("--minutes", type=float, default=10.0, help="stop after this much audio")
    b.add_argument("--pause", type=float, nargs=2, default=(0.3, 1.2), help="min max seconds")
    b.add_argument("--rate", type=int, default=16000)
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(fn=build)
    s = sub.add_parser("score", help="score a transcription JSON against the truth")
    s.add_argument("truth", type=Path)
    s.add_argument("result", type=Path)
    s.add_argument(
        "--report", type=Path, help="an evaluate report of the manifest: one by one, for comparison"
    )
    s.add_argument(
        "--tolerance", type=float, default=0.2, help="seconds a word time may be off (0.2)"
    )
    s.set_defaults(fn=score)
    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
