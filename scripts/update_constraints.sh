#!/usr/bin/env bash
# Re-resolves pyproject.toml's open ranges in a fresh virtual environment, runs the whole test
# suite there, and only if it passes writes the versions it used to constraints.txt.
# Review the diff, then commit it with the CI run that tested it.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(mktemp -d)/venv
export JAXSEQ_VENV="$venv" JAXSEQ_CONSTRAINTS=none
scripts/test.sh "$@"
header=$(grep '^#' constraints.txt)
{ echo "$header"; "$venv/bin/pip" freeze --exclude-editable; } > constraints.txt
echo "[jaxseq] constraints.txt updated from $venv; review with: git diff constraints.txt"
