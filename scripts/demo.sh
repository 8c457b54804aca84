#!/usr/bin/env bash
# Install (once) and run the embedded demo: build the tiny model and task, then train it with InTRO on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh cpu
VENV="${INTRO_LITE_VENV:-.venv}"
# A fresh run name each time, so running the demo again never collides with an earlier run.
exec "$VENV/bin/intro-lite" train recipes/tiny.toml --name "tiny-intro-$(date +%Y%m%d-%H%M%S)" "$@"
