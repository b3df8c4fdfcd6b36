#!/usr/bin/env bash
# Laplace noise through Monte Carlo and the surrogate, at a CPU's scale:
# a base trained under Laplace noise of scale lambda = 0.4 (the variance
# of the uniform bundle's noise on [-1, 1]: 2 lambda^2 = 1/3), its surrogate
# (a copy of the base's weights) on 2,000 training images at N = 1,000, and
# both certified on the 100 test images i % 100 == 0 at N = 10,000. Not a
# shipped bundle: runs/laplace/ (git-ignored). Resumable: rerun after a stop.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
B=${SMOOTHCERT_BIN:-target/release/smoothcert}
W=runs/laplace
b=$W/fashion-mnist-laplace-lambda0.4
mkdir -p "$W"
[ -f "$b/base.safetensors" ] ||
    $B train-base --dataset fashion-mnist --arch small-cnn --noise laplace --lambda 0.4 \
        --epochs 20 --seed 0 --name "$(basename "$b")" --device cpu --out "$b"
counts=$W/counts/train-n1000-skip30.safetensors
[ -f "$counts" ] ||
    $B sample-counts --bundle "$b" --split train --n 1000 --skip 30 --chunk 50 --batch 32 \
        --seed 0 --device cpu --out "$counts"
grep -q '^\[surrogate\]' "$b/model.toml" ||
    $B train-surrogate --bundle "$b" --counts "$counts" --nominal-n 10000 --epochs 30 \
        --seed 0 --device cpu
for m in monte_carlo surrogate; do
    out=$W/eval/$m.tsv
    [ -f "${out%.tsv}.summary.json" ] ||
        $B certify --bundle "$b" --method "$m" --split test --skip 100 --n0 100 --n 10000 \
            --alpha 0.001 --device cpu --out "$out"
done
$B report "$W/eval/monte_carlo.tsv" "$W/eval/surrogate.tsv" --radii 0,0.25,0.5,0.75,1.0 \
    --out-dir "$W/eval/report" | tee "$W/eval/report.md"
