#!/usr/bin/env bash
# Create or reuse a virtual environment and install the project into it, from a lock file:
# every package at the exact version the tests ran with (requirements/lock.txt, made by
# scripts/lock.sh), then the project itself (editable, no further dependencies).
# Idempotent: reinstalls only when setup.cfg, pyproject.toml or the lock changed.
#   scripts/setup_env.sh                      .venv from requirements/lock.txt
#   VENV=.venv-lowest LOCK=requirements/lock-lowest.txt scripts/setup_env.sh
#                                             the lower-bound environment (torch 2.7.1 ...)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
LOCK="${LOCK:-$ROOT/requirements/lock.txt}"
case "$LOCK" in /*) ;; *) LOCK="$ROOT/$LOCK" ;; esac
PY="${PYTHON:-python3}"
STAMP="$VENV/.maskproxy-installed"
want="$(sha256sum "$ROOT/setup.cfg" "$ROOT/pyproject.toml" "$LOCK" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV"
    "$PY" -m venv "$VENV"
fi
quiet() { grep -v "is ignored: it is neither a file nor a directory" || true; }
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
    echo "[setup] installing $(basename "$LOCK") and the project into $VENV (first run: a few minutes, ~5 GB)"
    pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
    "${pip[@]}" -r "$LOCK" 2>&1 | quiet
    "${pip[@]}" --no-deps -e "$ROOT" 2>&1 | quiet
    "$VENV/bin/python" -m pip check --disable-pip-version-check 2>&1 | quiet
    "$VENV/bin/python" -c "import torch, torchaudio, speechbrain, maskproxy_losses" \
        || { echo "[setup] the environment does not import; see the pip output above" >&2; exit 1; }
    echo "$want" > "$STAMP"
else
    echo "[setup] reusing $VENV"
fi
