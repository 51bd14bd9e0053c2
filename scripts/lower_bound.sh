#!/usr/bin/env bash
# The lower-bound job: the fast tests (not `slow`) in a second environment, .venv-lowest
# (git-ignored), holding the lowest version of every direct dependency
# (requirements/lock-lowest.txt: torch / torchaudio 2.7.1, the lowest SpeechBrain 1.1.2
# allows; numpy 1.26, scipy 1.11, scikit-learn 1.3, ...). The upper end of every range is
# requirements/lock.txt, which ./run_tests.sh tests. Extra arguments go to pytest.
# Cost on this project's 2-core machines: see README.md, "Installing".
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-lowest" LOCK="$ROOT/requirements/lock-lowest.txt" \
    bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
"$ROOT/.venv-lowest/bin/python" -c \
    "import torch, torchaudio, speechbrain; print('[lower bound] torch', torch.__version__, \
'torchaudio', torchaudio.__version__, 'speechbrain', speechbrain.__version__)"
if [ "$#" -gt 0 ]; then
    exec "$ROOT/.venv-lowest/bin/python" -m pytest "$@"
fi
exec "$ROOT/.venv-lowest/bin/python" -m pytest -q -m "not slow"
