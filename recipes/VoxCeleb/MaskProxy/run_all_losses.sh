#!/usr/bin/env bash
# Train every hparams file on the built-in corpus with the same budget for each seed,
# then print the results table. Usage (from the repository root):
#   bash recipes/VoxCeleb/MaskProxy/run_all_losses.sh [SEED ...]      (default seeds: 1 2)
# EPOCHS=N sets the budget (default: the yaml's built-in value, 30 epochs).
set -euo pipefail
cd "$(dirname "$0")/../../.."
if [ $# -gt 0 ]; then seeds=("$@"); else seeds=(1 2); fi
extra=()
[ -n "${EPOCHS:-}" ] && extra=(--number_of_epochs "$EPOCHS")
for seed in "${seeds[@]}"; do
    for name in mp_balance mmp_balance mp mmp ap aam; do
        .venv/bin/python recipes/VoxCeleb/MaskProxy/train_speaker_embeddings.py \
            "recipes/VoxCeleb/MaskProxy/hparams/$name.yaml" --seed "$seed" "${extra[@]}" \
            --output_folder "results/table/$name/$seed" 2>&1 | grep -E "test EER|Error" || true
    done
done
.venv/bin/python recipes/VoxCeleb/MaskProxy/summarize_results.py results/table
