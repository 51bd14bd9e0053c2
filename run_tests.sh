#!/usr/bin/env bash
# Set up .venv (reused when present), check the code style (ruff), then run the test suite.
# With no arguments: every test, then the tests marked `precision` twice more, as if the CPU
# had and lacked native bfloat16 (MASKPROXY_CPU_BF16=1 / 0), so that neither kind of machine
# can surprise a change. Extra arguments go to a single pytest run instead, e.g.
# `./run_tests.sh -m "not slow"` to skip the slow runs.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
echo "[lint] ruff check + ruff format --check"
"$ROOT/.venv/bin/ruff" check .
"$ROOT/.venv/bin/ruff" format --check .
if [ "$#" -gt 0 ]; then
    exec "$PY" -m pytest "$@"
fi
"$PY" -m pytest
for native in 1 0; do
    echo "[precision] the precision-sensitive tests with MASKPROXY_CPU_BF16=$native"
    MASKPROXY_CPU_BF16=$native "$PY" -m pytest -q -m precision
done
