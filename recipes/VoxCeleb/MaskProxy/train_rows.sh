# Shared by run_all_losses.sh and run_dev_analysis.sh (sourced from the repository root):
#   train NAME ROW SEED [overrides...]  trains hparams/NAME.yaml into $results/ROW/SEED in
#   the background, at most $jobs at a time, and prints the run's test EER line.
# Expects: py, results, jobs, common (array of overrides for every run).
train() {
    local name=$1 row=$2 seed=$3
    shift 3
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
    ( "$py" recipes/VoxCeleb/MaskProxy/train_speaker_embeddings.py \
        "recipes/VoxCeleb/MaskProxy/hparams/$name.yaml" --seed "$seed" \
        --output_folder "$results/$row/$seed" "${common[@]}" "$@" 2>&1 \
        | grep -E "test EER|error" | sed "s|^|$row seed $seed: |" || true ) &
}
