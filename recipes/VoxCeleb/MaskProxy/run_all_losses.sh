#!/usr/bin/env bash
# Train every hparams file on the built-in corpus with the same budget for each seed, plus
# the issue-16 rows on chosen losses, then print the results table. Usage (repository root):
#   bash recipes/VoxCeleb/MaskProxy/run_all_losses.sh [SEED ...]      (default seeds: 1 2)
# Environment:
#   EPOCHS=N        budget of every first-stage run (default: the yaml's built-in value, 30)
#   EXTRA_LOSSES    losses that get the extra rows (default "mp_balance aam"; "" for none):
#                     <loss>+avgN  average_checkpoints N = AVG (default 5), the N best dev EERs
#                     <loss>+sp    speed_perturb True (3 speeds, each its own class)
#                     <loss>+ft    second stage from results/table/<loss>/<seed>: 600-frame crops,
#                                  FT_EPOCHS (default 3) more epochs, lr x 0.1 (aam: WeSpeaker's
#                                  large-margin stage: lr 1e-4 -> 2.5e-5, margin 0.5)
#   PER_SPEAKER=0   skip the mmp_balance+per_speaker row (MMP with pos_reduction per_speaker)
#   RESULTS         output root (default results/table); PYTHON (default .venv/bin/python)
#   JOBS=N          runs at a time (default 1); the fine-tuning rows start after the first stage
#   ARGS            extra overrides for every run, e.g. ARGS="--device cuda:0 --num_workers 1"
set -euo pipefail
cd "$(dirname "$0")/../../.."
if [ $# -gt 0 ]; then seeds=("$@"); else seeds=(1 2); fi
py=${PYTHON:-.venv/bin/python}
results=${RESULTS:-results/table}
extra_losses=${EXTRA_LOSSES-mp_balance aam}
avg=${AVG:-5}
ft_epochs=${FT_EPOCHS:-3}
budget=()
[ -n "${EPOCHS:-}" ] && budget=(--number_of_epochs "$EPOCHS")

jobs=${JOBS:-1}
read -r -a common <<< "${ARGS:-}"

# shellcheck source=train_rows.sh
source recipes/VoxCeleb/MaskProxy/train_rows.sh  # train NAME ROW SEED [overrides...]

ft_opts() {  # the second stage's learning rate (and margin) for loss $1; README "Fine-tuning"
    case "$1" in
        aam) echo --lr 0.0001 --final_lr 0.000025 --aam_margin 0.5 --initial_margin 0.5 \
                  --warmup_epochs "$(awk "BEGIN {print $ft_epochs / 5}")" ;;
        ap) echo --lr 0.0001 --lr_decay 1.0 ;;
        *) echo --lr 0.02 ;;
    esac
}

for seed in "${seeds[@]}"; do  # first stage
    for name in mp_balance mmp_balance mp mmp ap aam; do
        train "$name" "$name" "$seed" "${budget[@]}"
    done
    for loss in $extra_losses; do
        train "$loss" "$loss+avg$avg" "$seed" "${budget[@]}" --average_checkpoints "$avg"
        train "$loss" "$loss+sp" "$seed" "${budget[@]}" --speed_perturb True
    done
    if [ "${PER_SPEAKER:-1}" != 0 ]; then
        train mmp_balance mmp_balance+per_speaker "$seed" "${budget[@]}" --pos_reduction per_speaker
    fi
done
wait
for seed in "${seeds[@]}"; do  # second stage, from the first stage's output folders
    for loss in $extra_losses; do
        # shellcheck disable=SC2046
        train "$loss" "$loss+ft" "$seed" --pretrained "$results/$loss/$seed" --crop_frames 600 \
            --number_of_epochs "$ft_epochs" $(ft_opts "$loss")
    done
done
wait
"$py" recipes/VoxCeleb/MaskProxy/summarize_results.py "$results"
