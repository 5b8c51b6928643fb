#!/usr/bin/env bash
# The training runs reported in docs/training.md, each bounded by --time-budget (seconds).
# Usage: bash benchmarks/train_experiments.sh [OUT_DIR]   (default runs/experiments)
set -euo pipefail
OUT=${1:-runs/experiments}
SSMKIT=${SSMKIT:-.venv/bin/ssmkit}
mkdir -p "$OUT"
run() { local name=$1; shift; rm -rf "$OUT/$name"; "$SSMKIT" train --no-progress --out "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1 || echo "$name failed"; }

# selective copying (Mamba paper §4.1.1 at CPU scale): 8 tokens among 64 positions
for layer in mamba s4d s4; do
  run selcopy_$layer --task selective_copying --layer $layer --d-model 64 --n-layers 2 --lr 3e-3 \
      --batch-size 32 --epochs 20 --eval-every 250 --time-budget 240
done
# sequential MNIST, 14x14 (length 196)
run smnist_mamba --task smnist --task-opt size=14 --layer mamba --d-model 64 --n-layers 2 --lr 3e-3 \
    --batch-size 50 --epochs 4 --time-budget 240
# induction heads: train at length 256, then evaluate at 4096
run induction_mamba --task induction_heads --task-opt length=256 --task-opt test_length=256 --layer mamba \
    --d-model 64 --n-layers 2 --lr 3e-3 --batch-size 32 --epochs 10 --eval-every 250 --time-budget 300
"$SSMKIT" evaluate "$OUT/induction_mamba" --task-opt test_length=4096 --task-opt n_test=100 > "$OUT/induction_mamba_4096.json" || true
# ListOps at reduced length (20-200 tokens)
run listops_s4d --task listops --layer s4d --d-model 64 --n-layers 4 --lr 3e-3 --batch-size 32 --epochs 8 \
    --pooling mean --time-budget 240
