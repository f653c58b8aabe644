"""The `jaxseq` command: parses arguments and calls library functions; nothing else.

Verbs: synth, prepare, train, compile, evaluate, transcribe, classify, synthesize, convert,
export. Config overrides are trailing `a.b=c` arguments, e.g.
`jaxseq train --config configs/ctc_demo.yaml --workdir runs/x train.num_steps=10`.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

from jaxseq import api
from jaxseq.errors import JaxseqError
from jaxseq.tasks.base import ASRTask
from jaxseq.tasks.seq2seq import Seq2SeqTask


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML config (configs/*.yaml)")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. train.num_steps=100")


def _cmd_synth(args: argparse.Namespace) -> None:
    from jaxseq.data.synth import synthesize_corpus

    cfg = api.load_config(args.config, args.overrides)
    manifests = synthesize_corpus(args.out, cfg.synth, num_workers=args.workers)
    for split, path in manifests.items():
        print(f"{split}: {path}")


def _cmd_prepare(args: argparse.Namespace) -> None:
    from jaxseq.data.prepare import prepare_corpus, prepare_split

    cfg = api.load_config(args.config, args.overrides)
    engine = {"runner": args.runner, "beam_options": shlex.split(args.beam_options or "")}
    if args.source.startswith("synth:"):
        summaries = prepare_corpus(
            args.source[len("synth:") :], args.out, cfg.prepare, num_workers=args.workers, **engine
        )
    else:
        if not args.split:
            raise SystemExit("prepare: --split is required for manifest: and tfds: sources")
        summaries = {
            args.split: prepare_split(
                args.source,
                args.out,
                args.split,
                cfg.prepare,
                evaluation=args.eval,
                num_workers=args.workers,
                **engine,
            )
        }
    for split, s in summaries.items():
        print(
            f"{split}: {s['num_utterances']} utterances, {s['hours']:.2f} h, "
            f"{s['num_skipped']} skipped (see {Path(args.out) / 'dataset.json'})"
        )


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


def _init_distributed(args: argparse.Namespace) -> None:
    """Joins the other processes, if any; before anything touches a JAX backend."""
    from jaxseq.parallel.distributed import initialize

    initialize(args.coordinator, args.num_processes, args.process_id)


def _checkpoint(workdir: Path, step: int | None) -> Path:
    """The workdir (its best checkpoint, else the latest) or its checkpoint `step`."""
    return workdir if step is None else workdir / "checkpoints" / str(step)


def _cmd_train(args: argparse.Namespace) -> None:
    _init_distributed(args)
    summary = api.train(api.load_config(args.config, args.overrides), args.workdir)
    print(json.dumps(summary, indent=2, default=str))


def _cmd_evaluate(args: argparse.Namespace) -> None:
    _init_distributed(args)
    m = api.evaluate(
        args.workdir,
        args.manifest or args.dataset,
        split=args.split,
        report=args.report,
        step=args.step,
        decoder=args.decoder,
        beam_size=args.beam_size,
        overrides=tuple(args.overrides)
        + (() if args.length_penalty is None else (f"eval.length_penalty={args.length_penalty}",)),
        robustness=args.robustness,
    )
    if args.robustness:
        print(f"{m['headline']}  on {m['dataset']}, step {m['step']}")
        print(f"wrote {args.workdir / 'eval' / 'robustness.md'} and robustness.json")
        return
    print(
        f"{m['headline']}  on {m['num_utterances']} utterances ({m['num_skipped']} skipped"
        + (f", {len(m['too_long'])} too long for the model" if m["too_long"] else "")
        + f") of {m['dataset']}:{m['split']}, step {m['step']}"
    )


def _cmd_compile(args: argparse.Namespace) -> None:
    from jaxseq.train.compile import fit_error, format_report

    cfg = api.load_config(args.config, args.overrides)
    report = api.compile(
        cfg,
        args.topology,
        num_slices=args.num_slices,
        mfu=args.mfu,
        workdir=args.workdir,
        evaluation=not args.train_only,
    )
    print(format_report(report))
    if args.workdir:
        print(f"report and HLO: {args.workdir / 'compile'}")
    error = fit_error(report, cfg)
    if error is not None:
        raise error


def _cmd_transcribe(args: argparse.Namespace) -> None:
    from jaxseq.inference.formats import FORMATS, write_result

    _init_distributed(args)
    overrides = list(args.set or ())
    if args.language is not None:
        overrides.append(f"model.language={args.language}")
    if args.task is not None:
        overrides.append(f"model.task={args.task}")
    model = api.load(_checkpoint(args.workdir, args.step), overrides=overrides)
    options = {
        "decoder": args.decoder,
        "beam_size": args.beam_size,
        "chunk_seconds": args.chunk_seconds,
        "stride_seconds": args.stride_seconds,
        "vad": args.vad,
    }
    # Times from a CTC model's alignment, or a seq2seq model's timestamp tokens (words from
    # its cross-attention) where it decodes with them: sequentially, or always (a model
    # trained with model.timestamps); chunked Whisper decodes with them for subtitles only.
    task = model.trained.task
    stamped = isinstance(task, ASRTask) and task.has_timestamps
    sequential = model.trained.cfg.eval.longform == "sequential"
    words = model.family == "ctc" or (
        isinstance(task, Seq2SeqTask) and stamped and (sequential or task.timed)
    )
    if args.manifest is not None:
        if args.audio or args.output_dir is None:
            raise JaxseqError(
                "transcribe --manifest writes OUT/results.jsonl: give --output-dir OUT, and no "
                "audio files besides the manifest"
            )
        report = model.transcribe_manifest(
            args.manifest,
            args.output_dir,
            return_timestamps="word" if words else False,
            **options,
        )
        print(json.dumps({k: v for k, v in report.items() if k != "skipped"}, indent=1))
        for item in report["skipped"]:
            print(f"skipped {item['id']} ({item['audio']}): {item['reason']}")
        return
    if not args.audio:
        raise JaxseqError("transcribe: give audio files, or --manifest M.jsonl --output-dir OUT")
    formats = list(FORMATS) if args.output_format == "all" else [args.output_format]
    subtitles = args.output_dir is not None and not set(formats) <= {"txt", "json"}
    if subtitles and not (model.family == "ctc" or stamped):
        raise JaxseqError(
            f"--output-format {args.output_format}: srt, vtt and tsv need timestamps, which "
            "come from a CTC model's frame alignment or a seq2seq model's timestamp tokens "
            "(Whisper, or trained with model.timestamps=true), and this workdir holds a "
            f"{model.family} model without them; use --output-format txt or json"
        )
    # Segment and word times whenever they are written (json, srt, vtt, tsv) where `words`,
    # else (chunked Whisper) with subtitles.
    timed = args.output_dir is not None and formats != ["txt"]
    timestamps = "word" if (timed if words else subtitles) else False
    results = model.transcribe(
        args.audio,
        return_timestamps=timestamps,
        return_language=True,
        **options,
    )
    for path, result in zip(args.audio, results, strict=True):
        print(f"{path}\t{result['text']}")
        if args.output_dir is not None:
            for written in write_result(result, args.output_dir, path.stem, formats):
                print(f"  wrote {written}")


def _cmd_classify(args: argparse.Namespace) -> None:
    model = api.load(_checkpoint(args.workdir, args.step))
    for r in model.classify(args.audio, frames=args.frames, top_k=args.top_k):
        if "segments" in r:
            turns = "  ".join(f"{a:.2f}-{b:.2f}s {name}" for a, b, name in r["segments"])
            print(f"{r['path']}\t{turns}")
        elif "labels" in r:
            print(f"{r['path']}\t{','.join(r['labels']) or '(none)'}\t{r['top']}")
        else:
            print(f"{r['path']}\t{r['label']}\t{r['confidence']:.4f}")


def _cmd_synthesize(args: argparse.Namespace) -> None:
    from jaxseq.convert.speecht5_synthesizer import synthesize_speecht5
    from jaxseq.inference.synthesize import synthesize

    if args.hf is not None:
        if args.hf_vocoder is None or args.speaker_embedding is None:
            raise JaxseqError(
                "--hf (a SpeechT5ForTextToSpeech folder) needs --hf-vocoder (a SpeechT5HifiGan "
                "folder) and --speaker-embedding (a .npy x-vector of 512 floats)"
            )
        results = synthesize_speecht5(
            args.hf, args.hf_vocoder, args.speaker_embedding, args.texts, args.out, seed=args.seed
        )
    else:
        results = synthesize(
            args.workdir,
            args.texts,
            args.out,
            step=args.step,
            seed=args.seed,
            vocoder=args.vocoder,
            overrides=tuple(args.set or ()),
        )
    for r in results:
        flag = "" if r["stopped"] else "  (never predicted stop: cut at tts.max_frames)"
        print(f"{r['path']}\t{r['seconds']:.2f} s\t{r['text']}{flag}")


def _cmd_convert(args: argparse.Namespace) -> None:
    from jaxseq.convert.workdir import convert_to_workdir

    workdir = convert_to_workdir(args.hf, args.workdir, language=args.language, task=args.task)
    print(f"converted {args.hf} into {workdir}")


def _cmd_export(args: argparse.Namespace) -> None:
    from jaxseq.convert.workdir import export_workdir

    out = export_workdir(args.workdir, args.out, step=args.step)
    print(f"exported {args.workdir} to {out}")


def _decoding_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--step", type=int, help="checkpoint step (default: best, else latest)")
    p.add_argument(
        "--decoder",
        choices=["greedy", "prefix_beam", "beam", "exhaustive"],
        help="ctc: greedy | prefix_beam; seq2seq, whisper: greedy | beam; rnn: greedy | beam "
        "| exhaustive; tts: the recognizer's",
    )
    p.add_argument("--beam-size", type=int)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxseq", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("synth", help="synthesize the built-in espeak-ng speech corpus")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--workers", type=int, default=0, help="processes (0 = all cores)")
    _add_config_args(p)
    p.set_defaults(fn=_cmd_synth)

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
    p.add_argument("--workers", type=int, default=0, help="processes (0 = all cores)")
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
    p.set_defaults(fn=_cmd_prepare)

    p = sub.add_parser("train", help="train (resumes from the workdir)")
    p.add_argument("--workdir", type=Path, required=True)
    _add_config_args(p)
    _add_distributed_args(p)
    p.set_defaults(fn=_cmd_train)

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
    p.set_defaults(fn=_cmd_evaluate)

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
    p.set_defaults(fn=_cmd_compile)

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
    p.set_defaults(fn=_cmd_transcribe)

    p = sub.add_parser("classify", help="print class labels of audio files")
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("audio", nargs="+", type=Path)
    p.add_argument("--frames", action="store_true", help="per-frame labels (a frame-level model)")
    p.add_argument("--top-k", type=int, default=3, help="labels kept in the JSON-like top list")
    p.add_argument("--step", type=int, help="checkpoint step (default: best, else latest)")
    p.set_defaults(fn=_cmd_classify)

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
    p.set_defaults(fn=_cmd_synthesize)

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
    p.set_defaults(fn=_cmd_convert)

    p = sub.add_parser("export", help="write a transformers checkpoint folder from a workdir")
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="folder for from_pretrained")
    p.add_argument("--step", type=int, help="checkpoint step (default: best, else latest)")
    p.set_defaults(fn=_cmd_export)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # A library imported with the API may have set up the root logger already (then
    # basicConfig does nothing): the level still has to be ours.
    logging.getLogger().setLevel(level)
    for noisy in ("absl", "jax._src", "orbax", "grain"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        args.fn(args)
    except (JaxseqError, FileNotFoundError, ValueError) as err:
        if args.verbose:
            raise
        print(f"jaxseq {args.verb}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
