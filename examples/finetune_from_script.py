"""Fine-tune a converted Hugging Face Whisper checkpoint on a manifest, from a script.

    python examples/finetune_from_script.py --hf PATH/TO/whisper-tiny \
        --train my/train.jsonl --test my/test.jsonl --workdir runs/ft train.num_steps=200

A manifest is JSONL, one {"audio": "clips/a.wav", "text": "..."} per line. Trailing a.b=c
arguments override configs/whisper_finetune.yaml.
"""

import argparse
from pathlib import Path

import jaxseq
from jaxseq.convert.workdir import convert_to_workdir
from jaxseq.data.prepare import prepare_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hf", required=True, help="a transformers Whisper folder")
    parser.add_argument("--train", required=True, help="the training manifest (.jsonl)")
    parser.add_argument("--test", required=True, help="the test manifest (.jsonl)")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.num_steps=200")
    args = parser.parse_args()

    pretrained = convert_to_workdir(args.hf, args.workdir / "pretrained")
    config = Path(__file__).resolve().parents[1] / "configs" / "whisper_finetune.yaml"
    data, run = args.workdir / "data", args.workdir / "run"
    cfg = jaxseq.load_config(
        config,
        overrides=[f"train.init_from={pretrained}", f"data.dataset={data}", "data.eval_split=''"]
        + args.overrides,
    )
    prepare_split(f"manifest:{args.train}", data, "train", cfg.prepare)  # log-mel features, once

    losses = []  # every step's loss (reading it waits for the step: fine for a small run)
    summary = jaxseq.train(cfg, run, callbacks=[lambda step, m: losses.append(float(m["loss"]))])
    print(f"step {summary['step']}: train loss {losses[0]:.4f} -> {losses[-1]:.4f}")

    model = jaxseq.load(run)
    report = jaxseq.evaluate(run, args.test)  # also writes run/eval/eval-step<N>.{json,md}
    print(f"{model}: {report['headline']} on {report['num_utterances']} utterances")


if __name__ == "__main__":  # prepare's worker processes import this file again
    main()
