"""The `jaxseq` command's arguments: one sub-parser per verb (jaxseq.cli runs them)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

DESCRIPTION = "The `jaxseq` command: parses arguments and calls library functions; nothing else."


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML config (configs/*.yaml)")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. train.num_steps=100")


def _add_distributed_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "multi-process",
        "one process per host, each running the same command; not needed on a Cloud TPU VM "
        "or under SLURM (detected), nor for a single process",
    )
    g.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        help="address of process 0 (default: $JAX_COORDINATOR_ADDRESS)",
    )
    g.add_argument(
        "--num-processes",
        type=int,
        metavar="N",
        help="how many processes (default: $JAX_NUM_PROCESSES)",
    )
    g.add_argument(
        "--process-id",
        type=int,
        metavar="I",
        help="this process, 0..N-1 (default: $JAX_PROCESS_ID)",
    )


def _decoding_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--step", type=int, help="checkpoint step (default: best, else latest)")
    p.add_argument(
        "--decoder",
        choices=["greedy", "prefix_beam", "beam", "exhaustive"],
        help="ctc: greedy | prefix_beam; seq2seq, whisper: greedy | beam; rnn: greedy | beam "
        "| exhaustive; tts: the recognizer's",
    )
    p.add_argument("--beam-size", type=int)


def build_parser(
    commands: dict[str, Callable[[argparse.Namespace], None]],
) -> argparse.ArgumentParser:
    """The `jaxseq` argument parser; each verb's parsed arguments carry `fn`, its entry of
    `commands` (verb → the function that runs it)."""
    parser = argparse.ArgumentParser(prog="jaxseq", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("synth", help="synthesize the built-in espeak-ng speech corpus")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--workers", type=int, default=0, help="processes (0 = all cores)")
    _add_config_args(p)
    p.set_defaults(fn=commands["synth"])

    p = sub.add_parser("prepare", help="audio → log-mel ArrayRecord shards + dataset.json")
    p.add_argument(
        "--source",
        required=True,
        help="manifest:PATH.jsonl | tfds:NAME[/CONFIG]:SPLIT | synth:CORPUS_DIR (a stress "
        "corpus: one evaluation split per condition)",
    )
    p.add_argument("--out", type=Path, required=True, help="prepared dataset folder")
    p.add_argument("--split", help="split name to write (not for synth:)")
    p.add_argument("--eval", action="store_true", help="an evaluation split: no length filter")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes (0 = all cores; the local engine, at most one per 1000 items)",
    )
    p.add_argument(
        "--runner",
        choices=("local", "beam"),
        default="local",
        help="local: a process pool; beam: an Apache Beam pipeline, same output (pip install "
        "jaxseq[beam]; docs/data.md)",
    )
    p.add_argument(
        "--beam-options",
        help="Beam pipeline options after the defaults (DirectRunner, --workers processes), "
        'with "=": --beam-options="--runner=DataflowRunner --project=P --region=R '
        '--temp_location=gs://B/tmp"',
    )
    _add_config_args(p)
    p.set_defaults(fn=commands["prepare"])

    p = sub.add_parser("train", help="train (resumes from the workdir)")
    p.add_argument("--workdir", type=Path, required=True)
    _add_config_args(p)
    _add_distributed_args(p)
    p.set_defaults(fn=commands["train"])

    p = sub.add_parser(
        "evaluate", help="score a workdir's checkpoint (WER/CER; TTS: distortion, intelligibility)"
    )
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--dataset", type=Path, help="prepared dataset (default: the training one)")
    p.add_argument("--manifest", type=Path, help="evaluate a manifest of audio files instead")
    p.add_argument("--report", type=Path, help="JSON report path (a .md is written beside it)")
    p.add_argument(
        "--robustness",
        action="store_true",
        help="score every condition split of a prepared stress dataset (synth.preset=stress; "
        "--dataset) per condition, rate and pitch: WORKDIR/eval/robustness.md and .json",
    )
    _decoding_args(p)
    p.add_argument("--length-penalty", type=float, help="seq2seq beam: score / length ** this")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. mesh.data=1")
    _add_distributed_args(p)
    p.set_defaults(fn=commands["evaluate"])

    p = sub.add_parser(
        "compile",
        help="compile the train and eval steps for a TPU topology (or this machine), run "
        "nothing: memory per device against HBM, FLOPs, step time; non-zero if it won't fit",
    )
    p.add_argument(
        "--topology",
        help="TPU topology, e.g. v5p:2x2x2, v5p:4x4x4, v5e:4x4, v6e:2x4, v4:2x2x1 (needs "
        "pip install 'jaxseq[tpu]'); default: this machine's devices",
    )
    p.add_argument("--num-slices", type=int, default=1, help="slices joined over DCN")
    p.add_argument("--mfu", type=float, default=0.4, help="assumed MFU for the step time")
    p.add_argument("--workdir", type=Path, help="write compile/TOPOLOGY.json and the HLO here")
    p.add_argument("--train-only", action="store_true", help="skip the evaluation step")
    _add_config_args(p)
    p.set_defaults(fn=commands["compile"])

    p = sub.add_parser(
        "transcribe",
        help="transcripts of audio files of any length, with segment and word times (CTC) "
        "or the detected language (Whisper)",
    )
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("audio", nargs="*", type=Path)
    _decoding_args(p)
    p.add_argument(
        "--manifest",
        type=Path,
        help="a JSONL manifest of audio files: OUTPUT_DIR/results.jsonl (resumable) and "
        "report.json (WER where it has text)",
    )
    p.add_argument(
        "--output-dir", type=Path, help="write NAME.<format> files here (else print only)"
    )
    p.add_argument(
        "--output-format",
        default="all",
        choices=["txt", "json", "srt", "vtt", "tsv", "all"],
        help="file format(s) in --output-dir; json is openai-whisper's layout (default: all)",
    )
    p.add_argument(
        "--chunk-seconds",
        type=float,
        help="window length for long audio (default eval.chunk_seconds: the longest bucket)",
    )
    p.add_argument(
        "--stride-seconds",
        type=float,
        help="context kept on each side of a window (default eval.stride_seconds: chunk/6)",
    )
    p.add_argument(
        "--vad",
        action=argparse.BooleanOptionalAction,
        help="decode only the speech regions, each on its own (default eval.vad)",
    )
    p.add_argument(
        "--language",
        metavar="CODE|auto",
        help="Whisper: the spoken language (en, de, ...), or auto to detect it on each "
        "recording's first 30 s (sets model.language)",
    )
    p.add_argument(
        "--task",
        choices=["transcribe", "translate"],
        help="Whisper: transcribe, or translate into English (sets model.task)",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="config override, e.g. eval.normalizer=whisper_english",
    )
    _add_distributed_args(p)
    p.set_defaults(fn=commands["transcribe"])

    p = sub.add_parser("classify", help="print class labels of audio files")
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("audio", nargs="+", type=Path)
    p.add_argument("--frames", action="store_true", help="per-frame labels (a frame-level model)")
    p.add_argument("--top-k", type=int, default=3, help="labels kept in the JSON-like top list")
    p.add_argument("--step", type=int, help="checkpoint step (default: best, else latest)")
    p.set_defaults(fn=commands["classify"])

    p = sub.add_parser(
        "synthesize", help="speech from text with a TTS workdir, or transformers' SpeechT5"
    )
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--workdir", type=Path)
    model.add_argument(
        "--hf",
        type=Path,
        help="a transformers SpeechT5ForTextToSpeech folder (config.json, weights, "
        "spm_char.model), converted on loading",
    )
    p.add_argument("--hf-vocoder", type=Path, help="with --hf: a SpeechT5HifiGan folder")
    p.add_argument(
        "--speaker-embedding", type=Path, help="with --hf: the speaker's x-vector (.npy, 512)"
    )
    p.add_argument("texts", nargs="+", help="one or more texts (quote each)")
    p.add_argument(
        "-o",
        "--out",
        type=Path,
        required=True,
        help="a .wav file for one text, else a folder (000.wav, 001.wav, ...)",
    )
    p.add_argument("--step", type=int, help="checkpoint step (default: best, else latest)")
    p.add_argument("--seed", type=int, default=0, help="pre-net dropout seed")
    p.add_argument("--vocoder", help="griffin_lim | griffin_lim:N_ITER | package.module:factory")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="config override, e.g. tts.max_frames=800",
    )
    p.set_defaults(fn=commands["synthesize"])

    p = sub.add_parser("convert", help="import a transformers checkpoint folder into a workdir")
    p.add_argument(
        "--hf",
        type=Path,
        required=True,
        help="folder with config.json, weights, "
        "tokenizer.json (e.g. a downloaded openai/whisper-small; Wav2Vec2ForCTC, HubertForCTC: "
        "vocab.json; Wav2Vec2ForPreTraining; ASTForAudioClassification, "
        "Wav2Vec2ForSequenceClassification, HubertForSequenceClassification, "
        "Wav2Vec2ForAudioFrameClassification: id2label in config.json)",
    )
    p.add_argument("--workdir", type=Path, required=True, help="new workdir to write")
    p.add_argument("--language", default="en", help="prompt language (multilingual models)")
    p.add_argument("--task", default="transcribe", choices=["transcribe", "translate"])
    p.set_defaults(fn=commands["convert"])

    p = sub.add_parser("export", help="write a transformers checkpoint folder from a workdir")
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="folder for from_pretrained")
    p.add_argument("--step", type=int, help="checkpoint step (default: best, else latest)")
    p.set_defaults(fn=commands["export"])
    return parser
