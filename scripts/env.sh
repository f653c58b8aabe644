# Sourced by demo.sh and test.sh: create or reuse .venv and install what is needed, at the
# exact versions of constraints.txt (what CI tested). Usage: ensure_env core|dev.
# Reinstalls only when pyproject.toml or constraints.txt changes. JAXSEQ_CONSTRAINTS=none
# installs from pyproject.toml's open ranges instead (scripts/update_constraints.sh).
ensure_env() {
  local kind="$1" venv="${JAXSEQ_VENV:-.venv}" py="${PYTHON:-python3}"
  local constraints=(-c constraints.txt)
  [ "${JAXSEQ_CONSTRAINTS:-}" = none ] && constraints=()
  if [ ! -x "$venv/bin/python" ]; then
    echo "[jaxseq] creating $venv with $($py --version)"
    "$py" -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
  fi
  local hash; hash=$(cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)
  local stamp="$venv/.jaxseq-$kind-${JAXSEQ_CONSTRAINTS:-pinned}-$hash"
  if [ ! -f "$stamp" ]; then
    echo "[jaxseq] installing jaxseq ($kind) into $venv"
    if [ "$kind" = dev ]; then
      "$venv/bin/pip" install -q "${constraints[@]}" -e '.[dev,tpu]'
      # openai-whisper is a numeric reference only; its own requirements would pull CUDA torch.
      "$venv/bin/pip" install -q "${constraints[@]}" --no-deps openai-whisper
    else
      "$venv/bin/pip" install -q "${constraints[@]}" -e .
    fi
    touch "$stamp"
  fi
  export PATH="$PWD/$venv/bin:$PATH"
}
