#!/usr/bin/env bash
# Set up .venv (reused when present), then the main job: generate the built-in corpus
# (first run only), train ResNetSE34L + SAP with the MP-balance loss, validate every
# epoch, export the best model and print the test EER / minDCF.
# Extra arguments are recipe overrides, e.g. `./run_demo.sh --seed 2`;
# HPARAMS=mmp.yaml ./run_demo.sh picks another loss.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" recipes/VoxCeleb/MaskProxy/train_speaker_embeddings.py \
    "recipes/VoxCeleb/MaskProxy/hparams/${HPARAMS:-mp_balance.yaml}" "$@"
