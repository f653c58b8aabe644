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

from jaxseq import api, cli_parser
from jaxseq.errors import JaxseqError
from jaxseq.tasks.base import ASRTask
from jaxseq.tasks.seq2seq import Seq2SeqTask


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


COMMANDS = {
    "synth": _cmd_synth,
    "prepare": _cmd_prepare,
    "train": _cmd_train,
    "compile": _cmd_compile,
    "evaluate": _cmd_evaluate,
    "transcribe": _cmd_transcribe,
    "classify": _cmd_classify,
    "synthesize": _cmd_synthesize,
    "convert": _cmd_convert,
    "export": _cmd_export,
}


def build_parser() -> argparse.ArgumentParser:
    """The `jaxseq` argument parser (jaxseq.cli_parser) with this module's verbs."""
    return cli_parser.build_parser(COMMANDS)


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
