#!/usr/bin/env bash
# The lower-bound job: a cross-section of the fast tests in a second environment, .venv-lowest
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
# `pip install .` into an environment that has a supported torch keeps it: resolving the
# project's ranges against .venv-lowest must change nothing (torch stays 2.7.1).
"$ROOT/.venv-lowest/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
want="$(grep -E '^(torch|torchaudio|speechbrain)==' "$ROOT/requirements/lock-lowest.txt" \
    | cut -d' ' -f1 | sort)"
have="$("$ROOT/.venv-lowest/bin/python" -m pip freeze --disable-pip-version-check 2>/dev/null \
    | grep -E '^(torch|torchaudio|speechbrain)==' | sed 's/+.*//' | sort)"
if [ "$want" != "$have" ]; then
    printf '[lower bound] pip install . changed the installed stack:\n%s\nexpected:\n%s\n' \
        "$have" "$want" >&2
    exit 1
fi
"$ROOT/.venv-lowest/bin/python" -c \
    "import torch, torchaudio, speechbrain; print('[lower bound] torch', torch.__version__, \
'torchaudio', torchaudio.__version__, 'speechbrain', speechbrain.__version__)"
if [ "$#" -gt 0 ]; then
    exec "$ROOT/.venv-lowest/bin/python" -m pytest "$@"
fi
# The tests that touch every dependency: packaging, the SpeechBrain hooks and Brain, the
# losses, encoders and front ends, model directories, precision, data (crops, sampler,
# shards, audio conversion), scoring and calibration (scikit-learn), the command line and
# the object API, and one tiny training run per loss. The
# whole fast suite (`scripts/lower_bound.sh -m "not slow"`) took 20 minutes on loaded ones.
exec "$ROOT/.venv-lowest/bin/python" -m pytest -q -m "not slow" \
    tests/test_packaging.py tests/test_brain.py tests/test_losses.py tests/test_encoder.py \
    tests/test_model_dir.py tests/test_precision.py tests/test_training_data.py \
    tests/test_sampler.py tests/test_shards.py tests/test_audio_conversion.py \
    tests/test_scoring.py tests/test_calibration.py tests/test_cli.py \
    tests/test_inference_api.py tests/test_extract.py "tests/test_recipe.py::test_tiny_run_per_loss"
