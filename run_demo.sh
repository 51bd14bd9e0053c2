#!/usr/bin/env bash
# Set up .venv (reused when present) and run the main job on the built-in corpus.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" benchmarks/bench_losses.py "$@"
