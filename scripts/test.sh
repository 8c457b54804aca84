#!/usr/bin/env bash
# Install (once) and run the whole test suite on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh cpu
VENV="${INTRO_LITE_VENV:-.venv}"
exec "$VENV/bin/python" -m pytest -q "$@"
