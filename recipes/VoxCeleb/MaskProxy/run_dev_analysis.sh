#!/usr/bin/env bash
# The dev-split analysis behind the README's MMP and AAM choices: MMP-balance with one
# factor changed at a time (learned vs fixed w / b, initial b, learning rate, speakers per
# batch vs the 60 classes, per-speaker positives), MP-balance beside it, and AAM's peak
# and final learning rates; then the table with the dev EERs and the last w / b of every row
# (summarize_results.py --dev).
# Choices are made on the dev EER only. Usage (repository root):
#   bash recipes/VoxCeleb/MaskProxy/run_dev_analysis.sh [SEED ...]     (default seed: 1)
# Environment: EPOCHS (default 15), JOBS (default 1), ARGS, PYTHON as in
# run_all_losses.sh; RESULTS (default results/dev_analysis).
set -euo pipefail
cd "$(dirname "$0")/../../.."
if [ $# -gt 0 ]; then seeds=("$@"); else seeds=(1); fi
py=${PYTHON:-.venv/bin/python}
results=${RESULTS:-results/dev_analysis}
jobs=${JOBS:-1}
read -r -a common <<< "${ARGS:-} --number_of_epochs ${EPOCHS:-15}"
# shellcheck source=train_rows.sh
source recipes/VoxCeleb/MaskProxy/train_rows.sh  # train NAME ROW SEED [overrides...]

for seed in "${seeds[@]}"; do
    train mmp_balance mmp_balance "$seed"
    train mmp_balance mmp_balance+fixed_b "$seed" --learn_bias False
    train mmp_balance mmp_balance+fixed_wb "$seed" --learn_bias False --learn_scale False
    train mmp_balance mmp_balance+b0 "$seed" --init_b 0
    train mmp_balance mmp_balance+lr0.05 "$seed" --lr 0.05
    train mmp_balance mmp_balance+spk10 "$seed" --speakers_per_batch 10
    train mmp_balance mmp_balance+spk40 "$seed" --speakers_per_batch 40
    train mmp_balance mmp_balance+per_speaker "$seed" --pos_reduction per_speaker
    train mp_balance mp_balance "$seed"
    # AAM with WeSpeaker's 2000x decay (the yaml's built-in value before this analysis chose
    # final_lr 0.005, the +final_lr0.005 row); peaks 0.0625, 0.2 and 0.02 after batch / 64
    wespeaker=(--final_lr 0.00005)
    train aam aam "$seed" "${wespeaker[@]}"
    train aam aam+lr0.32 "$seed" "${wespeaker[@]}" --lr 0.32
    train aam aam+lr0.032 "$seed" "${wespeaker[@]}" --lr 0.032
    train aam aam+final_lr0.005 "$seed" --final_lr 0.005  # decay 20x: aam.yaml's default now
done
wait
"$py" recipes/VoxCeleb/MaskProxy/summarize_results.py --dev "$results"
