#!/usr/bin/env bash
# Set up .venv (reused when present) and run the test suite. Extra arguments go to pytest,
# e.g. `./run_tests.sh -m slow` for the end-to-end runs.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest "$@"
