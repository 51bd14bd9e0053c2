#!/usr/bin/env bash
# The GPU figures of issue 25 in one run (docs/results.md, "Benchmarks"): the recipe /
# bare ratios at 40, 120 and 400 utterances per batch (350-frame crops), eager and
# compiled, float32 (TF32) and bfloat16, then the dev pass per 1,000 files and its share
# of a VoxCeleb2 epoch at the measured training speed (400 per batch, eager, the
# precision `auto` picks there). Prints the GPU's name with every table.
#
#   bash benchmarks/gpu_checks.sh                 # about 25 min on an H100
#   QUICK=1 bash benchmarks/gpu_checks.sh         # 120 and 400, eager, fp32 + bf16: ~6 min
#   DEVICE=cuda:1 WORKERS=8 bash benchmarks/gpu_checks.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEVICE=${DEVICE:-cuda:0}
WORKERS=${WORKERS:-8}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if [ -n "${QUICK:-}" ]; then UTTS=120,400; MODES=eager; STEPS=8; ROUNDS=3; FILES=1000
else UTTS=40,120,400; MODES=both; STEPS=10; ROUNDS=3; FILES=2000; fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -m pytest -q -p no:cacheprovider tests/test_losses.py -m gpu   # the losses on CUDA
$PY benchmarks/bench_recipe.py --device "$DEVICE" --utts "$UTTS" --precision fp32,bf16 \
    --compile "$MODES" --num_workers "$WORKERS" --steps "$STEPS" --rounds "$ROUNDS" \
    | tee /tmp/gpu_checks_recipe.txt
# training speed at 400 per batch, eager, in the precision `auto` picks on this GPU
AUTO=$($PY - "$DEVICE" <<'EOF'
import sys
from maskproxy_losses import ResNetSE34L
from maskproxy_losses.training.precision_probe import choose, time_step
rates = {p: time_step(ResNetSE34L(), (400, 352, 40), sys.argv[1], p) for p in ("fp32", "bf16")}
print(choose(rates)[0])
EOF
)
RATE=$(awk -F'|' -v p="$AUTO" '$2+0 == 400 && $3 ~ p && $4 ~ /eager/ {print $5+0}' \
    /tmp/gpu_checks_recipe.txt | head -1)
echo "auto precision here: $AUTO; recipe at 400 per batch: $RATE utt/s"
$PY benchmarks/bench_dev_pass.py --device "$DEVICE" --files "$FILES" --num_workers "$WORKERS" \
    --batch_seconds 100,400,1000 --train_utt_per_s "$RATE"
