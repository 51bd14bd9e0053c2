#!/usr/bin/env bash
# The encoder x loss table (README "Encoders"): every encoder with mp_balance, mmp_balance,
# aam and ap on the built-in corpus at one budget, each model scored before and after the
# back-end, then the table. Usage (repository root):
#   bash recipes/VoxCeleb/MaskProxy/run_encoder_table.sh [SEED ...]       (default seed: 1)
# Every row <encoder>+<loss>/<seed> is
#   train_speaker_embeddings.py hparams/<loss>.yaml --encoder <encoder> --channels <width>
#       --number_of_epochs $EPOCHS --seed <seed> --output_folder $RESULTS/<encoder>+<loss>/<seed>
#   speaker_verification_cosine.py hparams/verification.yaml --pretrained_path <that>/model
#       --output_folder <that>/cosine                       (cosine; calibration.json, qmf.json)
#   ... --norm asnorm --cohort_utts_per_spk 5 --qmf_fit_trials <manifests>/dev_trials.txt
#       --output_folder <that>/asnorm   (AS-norm, cohort: 5 utterances of each training
#                                        speaker; a QMF fitted on the AS-normed dev trials)
# Environment:
#   EPOCHS=N     budget of every run (default 8)
#   WIDTH=full   the published widths; default "reduced" (CPU-sized): ResNetSE34L
#                [8,16,32,64] (1/2), ResNet34 [8,16,32,64] (1/4), ECAPA [128 x 4, 384] (1/8)
#   ENCODERS     default "resnetse34l resnet34 ecapa_tdnn"; LOSSES default
#                "mp_balance mmp_balance aam ap"
#   RESULTS      output root (default results/encoders); PYTHON (default .venv/bin/python)
#   JOBS=N       rows at a time (default 1); ARGS: overrides for every training run
set -euo pipefail
cd "$(dirname "$0")/../../.."
if [ $# -gt 0 ]; then seeds=("$@"); else seeds=(1); fi
py=${PYTHON:-.venv/bin/python}
results=${RESULTS:-results/encoders}
epochs=${EPOCHS:-8}
jobs=${JOBS:-1}
read -r -a common <<< "${ARGS:-}"
recipe=recipes/VoxCeleb/MaskProxy
manifests=data/demo_corpus/manifests

width() {  # the --channels of encoder $1
    if [ "${WIDTH:-reduced}" = full ]; then
        case "$1" in
            resnetse34l) echo "[16,32,64,128]" ;;
            resnet34) echo "[32,64,128,256]" ;;
            ecapa_tdnn) echo "[1024,1024,1024,1024,3072]" ;;
        esac
    else
        case "$1" in
            resnetse34l | resnet34) echo "[8,16,32,64]" ;;
            ecapa_tdnn) echo "[128,128,128,128,384]" ;;
        esac
    fi
}

row() {  # encoder loss seed: train, then score before / after the back-end
    local encoder=$1 loss=$2 seed=$3 out
    out="$results/$encoder+$loss/$seed"
    "$py" "$recipe/train_speaker_embeddings.py" "$recipe/hparams/$loss.yaml" \
        --encoder "$encoder" --channels "$(width "$encoder")" --number_of_epochs "$epochs" \
        --seed "$seed" --output_folder "$out" "${common[@]}" > "$out.train.log" 2>&1
    local verify=("$py" "$recipe/speaker_verification_cosine.py" "$recipe/hparams/verification.yaml"
        --pretrained_path "$out/model" --cache_dir "$out/embedding_cache")
    "${verify[@]}" --output_folder "$out/cosine" > "$out/cosine.log" 2>&1
    "${verify[@]}" --norm asnorm --cohort_utts_per_spk 5 \
        --qmf_fit_trials "$manifests/dev_trials.txt" --output_folder "$out/asnorm" \
        > "$out/asnorm.log" 2>&1
    grep -h "test EER" "$out.train.log" | sed "s|^|$encoder+$loss seed $seed: |"
}

mkdir -p "$results"
"$py" -c "from data_prep.demo_corpus import prepare_builtin; prepare_builtin('data/demo_corpus')"
for seed in "${seeds[@]}"; do
    for encoder in ${ENCODERS:-resnetse34l resnet34 ecapa_tdnn}; do
        for loss in ${LOSSES:-mp_balance mmp_balance aam ap}; do
            mkdir -p "$results/$encoder+$loss"
            while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
            ( row "$encoder" "$loss" "$seed" || echo "$encoder+$loss seed $seed: failed" ) &
        done
    done
done
wait
"$py" "$recipe/summarize_encoders.py" "$results"
