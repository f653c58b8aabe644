#!/usr/bin/env bash
# Sets up the environment and runs the demo: synthesize the digits corpus, prepare it, train
# a small CTC model on the CPU, evaluate it on the unseen-voice test split, print the WER.
# The workdir is left at runs/demo-ctc/. Extra arguments are config overrides for training.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
ensure_env core

config=configs/ctc_demo.yaml
start=$(date +%s)
jaxseq synth --config "$config" --out data/digits-audio
jaxseq prepare --config "$config" --source synth:data/digits-audio --out data/digits
jaxseq train --config "$config" --workdir runs/demo-ctc "$@"
jaxseq evaluate --workdir runs/demo-ctc --split test --report runs/demo-ctc/eval/test.json
echo "[jaxseq] demo finished in $(( $(date +%s) - start )) s; report: runs/demo-ctc/eval/test.md"
