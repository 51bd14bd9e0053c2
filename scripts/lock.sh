#!/usr/bin/env bash
# Regenerate the lock files from setup.cfg (run after changing a dependency range):
#   requirements/lock.txt         the newest versions in every range (extras test, pyannote):
#                                 what ./run_tests.sh and ./run_demo.sh install, exactly
#   requirements/lock-lowest.txt  the lowest version of each direct dependency (torch 2.7.1,
#                                 ...): the lower-bound job of .ci/run (scripts/lower_bound.sh)
# Both resolve for CPython 3.11 on x86_64 Linux (manylinux_2_28), the project's machines.
# Needs uv (pip install uv); pass uv's path as UV=... if it is not on PATH.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
UV="${UV:-uv}"
common=(setup.cfg --extra test --python-version 3.11 --python-platform x86_64-manylinux_2_28
    --no-header --annotation-style line)
# pyannote.audio 4 needs torch >= 2.8: in the tested environment only (its test skips below)
compile() {  # OUT "what it is" [extra uv options]
    local out="$1" what="$2"
    shift 2
    "$UV" pip compile "${common[@]}" "$@" --quiet -o "$out.tmp"
    { printf '# %s\n' "$what" \
        "Generated from setup.cfg by scripts/lock.sh (uv pip compile --extra test${*:+ $*})." \
        "CPython 3.11, x86_64 Linux. Do not edit by hand."
      cat "$out.tmp"; } > "$out"
    rm -f "$out.tmp"
}
compile requirements/lock.txt \
    "Exact versions of the tested environment (the newest in every range)." --extra pyannote
compile requirements/lock-lowest.txt \
    "The lowest version of each direct dependency: the lower-bound job (scripts/lower_bound.sh)." \
    --resolution lowest-direct
echo "wrote requirements/lock.txt and requirements/lock-lowest.txt"
