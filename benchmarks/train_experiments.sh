#!/usr/bin/env bash
# The training runs reported in docs/training.md and benchmarks/RESULTS.md ("Training runs").
# Each run is one process on one thread (OMP_NUM_THREADS=1), so two can share the 2 cores.
# Usage: bash benchmarks/train_experiments.sh [OUT_DIR] [all|experiments|recipes]
#   (default runs/experiments, all). "recipes" runs only the shipped recipes' measured runs
#   (docs/training.md, "Measured with the recipes").
set -euo pipefail
OUT=${1:-runs/experiments}
GROUP=${2:-all}
SSMKIT=${SSMKIT:-.venv/bin/ssmkit}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT"
run() { local name=$1; shift; rm -rf "$OUT/$name"; "$SSMKIT" train --no-progress --out "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1 || echo "$name failed"; }

if [ "$GROUP" = all ] || [ "$GROUP" = experiments ]; then

# selective copying (Mamba paper §4.1.1 at CPU scale): 8 tokens among 64 noise positions, one
# marker per answer; 40,000 training sequences, 3,000 steps of 64
for layer in mamba s4d s4; do
  run selcopy_$layer --task selective_copying --task-opt n_train=40000 --layer $layer --d-model 64 --n-layers 2 \
      --lr 3e-3 --batch-size 64 --max-steps 3000 --warmup-steps 100 --eval-every 500 --time-budget 900
done
# the same at length 256 with 16 tokens (Mamba stops at its 25-minute budget)
for layer in mamba s4d; do
  run selcopy256_$layer --task selective_copying --task-opt n_train=40000 --task-opt length=256 --task-opt n_tokens=16 \
      --layer $layer --d-model 64 --n-layers 2 --lr 3e-3 --batch-size 64 --max-steps 2500 --warmup-steps 100 \
      --eval-every 500 --time-budget 1500
done
# induction heads: train at length 256, then evaluate at 4096
run induction_mamba --task induction_heads --task-opt n_train=64000 --task-opt length=256 --layer mamba \
    --d-model 64 --n-layers 2 --lr 2e-3 --batch-size 32 --max-steps 4000 --warmup-steps 200 --eval-every 500 \
    --time-budget 1800
"$SSMKIT" evaluate "$OUT/induction_mamba" --task-opt test_length=4096 --task-opt n_test=200 > "$OUT/induction_mamba_4096.json" || true
# induction heads trained at length 64, tested at 256 and 4096; then 1000 steps at length 256 from its weights
run induction64_mamba --task induction_heads --task-opt n_train=64000 --task-opt length=64 --layer mamba \
    --d-model 64 --n-layers 2 --lr 2e-3 --batch-size 32 --max-steps 3000 --warmup-steps 200 --eval-every 500 \
    --time-budget 900
for L in 256 4096; do
  "$SSMKIT" evaluate "$OUT/induction64_mamba" --task-opt test_length=$L --task-opt n_test=200 > "$OUT/induction64_mamba_$L.json" || true
done
run induction_curriculum_mamba --task induction_heads --task-opt n_train=64000 --task-opt length=256 --layer mamba \
    --d-model 64 --n-layers 2 --lr 1e-3 --batch-size 32 --max-steps 1000 --warmup-steps 50 --eval-every 250 \
    --time-budget 900 --init-from "$OUT/induction64_mamba"
"$SSMKIT" evaluate "$OUT/induction_curriculum_mamba" --task-opt test_length=4096 --task-opt n_test=200 \
    > "$OUT/induction_curriculum_mamba_4096.json" || true
# sequential MNIST, 14x14 (length 196), Mamba within the demo's budget
run smnist_mamba --task smnist --task-opt size=14 --layer mamba --d-model 64 --n-layers 2 --lr 3e-3 \
    --batch-size 50 --epochs 4 --time-budget 300
# ListOps at reduced length (20-200 tokens)
run listops_s4d --task listops --layer s4d --d-model 64 --n-layers 4 --lr 3e-3 --batch-size 32 --epochs 8 \
    --pooling mean --time-budget 240
fi

# The shipped recipes (src/ssmkit/recipes/*.yaml), as measured in docs/training.md ("Measured with
# the recipes") and benchmarks/RESULTS.md ("Recipes"): at most two runs at a time, one thread each,
# each within 1800 s. The UCR/UEA runs read the datasets that sktime ships (pip install sktime).
if [ "$GROUP" = all ] || [ "$GROUP" = recipes ]; then
PY=${PY:-.venv/bin/python}
# short (GunPoint, 150), medium (ArrowHead 251, OSULeaf 427) and long (ACSF1, 1460) series, one after
# the other beside the sMNIST run
(for spec in GunPoint:240 ArrowHead:300 ACSF1:600 OSULeaf:420; do
   run recipe_sktime_${spec%%:*} --recipe sktime --task-opt dataset=${spec%%:*} --time-budget ${spec##*:} --threads 1
 done) &
run recipe_smnist --recipe smnist --threads 1 &
wait
# the 1-NN Euclidean baseline on the same splits: the reference is the model's training split, and
# (second figure) the whole shipped training file (training split + the held-out validation series)
"$PY" - <<'PYEOF' > "$OUT/sktime_one_nn.txt"
import torch
from ssmkit.tasks import build_task, pad_collate
from ssmkit.tasks.baselines import one_nn_accuracy
for ds in ("GunPoint", "ArrowHead", "OSULeaf", "ACSF1"):
    t = build_task("sktime", dataset=ds)
    xq, yq, _ = pad_collate([t.test[i] for i in range(len(t.test))])
    xr, yr, _ = pad_collate([t.train[i] for i in range(len(t.train))] + [t.val[i] for i in range(len(t.val))])
    d = torch.cdist(xq.flatten(1).double(), xr.flatten(1).double())
    print(ds, f"{one_nn_accuracy(t):.4f}", f"{(yr[d.argmin(1)] == yq).double().mean().item():.4f}")
PYEOF
run recipe_induction_heads --recipe induction_heads --threads 1 &
run recipe_selective_copying --recipe selective_copying --threads 1 &
wait
# the LTI layer beside each (another --layer drops the recipe's Mamba-only layer options)
run recipe_induction_heads_s4d --recipe induction_heads --layer s4d --time-budget 720 --threads 1 &
run recipe_selective_copying_s4d --recipe selective_copying --layer s4d --batch-size 32 --threads 1 &
wait
# ablation: the induction heads recipe with the default init (state 64 alone)
run recipe_induction_heads_default --recipe induction_heads --layer-opt init=default --time-budget 1200 --threads 1
for L in 256 4096; do
  "$SSMKIT" evaluate "$OUT/recipe_induction_heads" --task-opt test_length=$L --task-opt n_test=200 \
      > "$OUT/recipe_induction_heads_$L.json" || true
done
run recipe_listops --recipe listops --threads 1 &
run recipe_smnist_seed1 --recipe smnist --seed 1 --threads 1 &
wait
run recipe_smnist_seed2 --recipe smnist --seed 2 --threads 1 &
run recipe_smnist_seed3 --recipe smnist --seed 3 --threads 1 &
wait
"$SSMKIT" compare "$OUT/recipe_smnist=seed 0" "$OUT/recipe_smnist_seed1=seed 1" "$OUT/recipe_smnist_seed2=seed 2" \
    "$OUT/recipe_smnist_seed3=seed 3" --out docs/figures/recipe_smnist.png \
    --title "smnist recipe (14x14, 7 shifted copies): validation accuracy"
"$SSMKIT" compare "$OUT/recipe_induction_heads=Mamba (mimetic, N 64)" \
    "$OUT/recipe_induction_heads_default=Mamba (default init, N 64)" "$OUT/recipe_induction_heads_s4d=S4D (N 64)" \
    --out docs/figures/recipe_induction_heads.png --title "induction_heads recipe (length 256, from scratch)"
"$SSMKIT" compare "$OUT/recipe_sktime_GunPoint=GunPoint" "$OUT/recipe_sktime_ArrowHead=ArrowHead" \
    "$OUT/recipe_sktime_OSULeaf=OSULeaf" "$OUT/recipe_sktime_ACSF1=ACSF1" \
    --out docs/figures/recipe_sktime.png --title "sktime recipe (S4D): validation curves"
"$SSMKIT" compare "$OUT/recipe_selective_copying=Mamba (mimetic, batch 16)" "$OUT/recipe_selective_copying_s4d=S4D (batch 32)" \
    --out docs/figures/recipe_selective_copying.png --title "selective_copying recipe (16 tokens among 256)"
"$SSMKIT" compare "$OUT/recipe_listops=S4D" --out docs/figures/recipe_listops.png --title "listops recipe (20-200 tokens)"
fi
