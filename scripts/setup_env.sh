#!/usr/bin/env bash
# Create or reuse .venv at the repository root and install the project into it.
# Idempotent: reinstalls only when setup.cfg changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
STAMP="$VENV/.maskproxy-installed"
want="$(sha256sum "$ROOT/setup.cfg" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV"
    "$PY" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
    echo "[setup] installing the project and its pinned dependencies into .venv (first run: ~2 min, ~5 GB)"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[test]" 2>&1 \
        | grep -v "is ignored: it is neither a file nor a directory" || true
    "$VENV/bin/python" -c "import torch, torchaudio, speechbrain, maskproxy_losses" \
        || { echo "[setup] the environment does not import; see the pip output above" >&2; exit 1; }
    echo "$want" > "$STAMP"
else
    echo "[setup] reusing $VENV"
fi
