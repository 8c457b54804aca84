#!/usr/bin/env bash
# Install (once) and run the embedded demo: build the tiny model and task, then train it with InTRO on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh cpu
VENV="${INTRO_LITE_VENV:-.venv}"
exec "$VENV/bin/intro-lite" train recipes/tiny.toml "$@"
