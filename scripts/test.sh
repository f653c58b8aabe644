#!/usr/bin/env bash
# Sets up the environment (with the test references) and runs lint + the whole test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k ctc.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
ensure_env dev

ruff check jaxseq tests scripts examples
python -m pytest -q -n 2 --dist loadfile --durations=15 "$@"  # a file per worker: module fixtures run once
