# Sourced by demo.sh and test.sh: create or reuse .venv and install what is needed.
# Usage: ensure_env core|dev. Reinstalls only when pyproject.toml changes.
ensure_env() {
  local kind="$1" venv=".venv" py="${PYTHON:-python3}"
  if [ ! -x "$venv/bin/python" ]; then
    echo "[jaxseq] creating $venv with $($py --version)"
    "$py" -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
  fi
  local stamp="$venv/.jaxseq-$kind-$(sha1sum pyproject.toml | cut -c1-12)"
  if [ ! -f "$stamp" ]; then
    echo "[jaxseq] installing jaxseq ($kind) into $venv"
    if [ "$kind" = dev ]; then
      "$venv/bin/pip" install -q -e '.[dev]'
      # openai-whisper is a numeric reference only; its own requirements would pull CUDA torch.
      "$venv/bin/pip" install -q --no-deps openai-whisper
    else
      "$venv/bin/pip" install -q -e .
    fi
    touch "$stamp"
  fi
  export PATH="$PWD/$venv/bin:$PATH"
}
