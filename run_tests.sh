#!/usr/bin/env bash
# Set up .venv (reused when present), check the code style (ruff), then run the test suite.
# Extra arguments go to pytest, e.g. `./run_tests.sh -m "not slow"` to skip the slow runs.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
echo "[lint] ruff check + ruff format --check"
"$ROOT/.venv/bin/ruff" check .
"$ROOT/.venv/bin/ruff" format --check .
exec "$ROOT/.venv/bin/python" -m pytest "$@"
