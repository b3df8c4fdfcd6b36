#!/usr/bin/env bash
# Builds the second shipped bundle, Fashion-MNIST under uniform noise (L1
# certificates), with the whole pipeline at a nominal N of 10,000, resumably:
# rerun after any stop and it goes on from the last finished chunk. Counts
# shards land in counts/<bundle>/ (commit finished ones: they cost hours).
#
#   bash scripts/uniform-model.sh [choose|base|all] [pipeline flags, e.g. --until train-counts]
#
# choose: lambda 0.5 and 1.0 bases (20 epochs each) certified by Monte Carlo
#   at N = 1,000 on the 100 test images i % 100 == 49 (no role of the bundle
#   uses them); the table says which lambda keeps good accuracy over a useful
#   range of L1 radii.
# base:   the chosen lambda's base classifier (LAMBDA, default 1.0: see docs/PIPELINE.md).
# all:    the base, then the pipeline (resumable; extra flags go to it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
B=${SMOOTHCERT_BIN:-target/release/smoothcert}
lambda=${LAMBDA:-1.0}
bundle=models/fashion-mnist-uniform-lambda$lambda
counts=counts/fashion-mnist-uniform-lambda$lambda
reports=$bundle/reports/n10000
device=${DEVICE:-cpu}
what=${1:-all}
if [ $# -gt 0 ]; then shift; fi

train() { # train LAMBDA OUT
    [ -f "$2/base.safetensors" ] && return 0
    $B train-base --dataset fashion-mnist --arch small-cnn --noise uniform --lambda "$1" \
        --epochs 20 --seed 0 --name "$(basename "$2")" --device "$device" --out "$2"
}

if [ "$what" = choose ]; then
    for l in 0.5 1.0; do
        out=runs/uniform/lambda$l
        train "$l" "$out"
        tsv=runs/uniform/choose-lambda$l.tsv
        [ -f "${tsv%.tsv}.summary.json" ] ||
            $B certify --bundle "$out" --method monte_carlo --split test --offset 49 --skip 100 \
                --n0 100 --n 1000 --alpha 0.001 --device "$device" --out "$tsv"
    done
    $B report runs/uniform/choose-lambda0.5.tsv runs/uniform/choose-lambda1.0.tsv \
        --radii 0,0.1,0.2,0.3,0.4,0.5,0.75 --out-dir runs/uniform/choose
    exit 0
fi

train "$lambda" "$bundle"
[ "$what" = base ] && exit 0

# Roles on the test split, disjoint (the pipeline checks): tail map i % 5 == 0
# in shards 1 and 3 of 20 (200 images), calibration i % 50 in {1, 2} (400
# images), evaluation i % 50 == 0 (200 images). The surrogate trains on 4,000
# training images at N = 1,000 (every 15th), the budget docs/PIPELINE.md's
# table favours. Counts on the CPU with a forward batch of 32, so that any
# machine reproduces (and resumes) them.
extra=("$@")
pipeline() {
    # --margin-tail 0: the shipped bundle predates it (its counts have no margins).
    $B pipeline --bundle "$bundle" --counts-dir "$counts" --nominal-n 10000 \
        --train-n 1000 --train-skip 15 --train-shards 8 --train-use 0,1,2,3,4,5,6,7 --margin-tail 0 \
        --tail-n 10000 --tail-skip 5 --tail-shards 20 --tail-use 1,3 \
        --calibration-skip 1 --calibration-shards 50 --calibration-use 1,2 \
        --eval-skip 50 --eval-offset 0 --eval-n 10000 \
        --chunk 50 --calibration-chunk 10 --counts-batch 32 --counts-device cpu \
        --score p-gap --margin-threshold 2 --auto-band-low 0.45 --auto-band-high 0.5 --delta 0.05 --n0 100 --alpha 0.001 --seed 0 \
        --radii 0,0.25,0.5,0.75 --device "$device" --reports-dir "$reports" \
        "$@"
}

mkdir -p "$reports"
# The selection split (i % 50 == 25, 200 images at N = 10,000; disjoint from
# every role below) chooses the score, the margin threshold and AUTO's band
# after the tail map and before any calibration: the pipeline's --score and
# --margin-threshold and AUTO band below are what it chose ($reports/selection.txt).
sel_counts="$counts/test-n10000-skip25/shard-1-of-2.safetensors"
if [ ! -f "$bundle/selection_summary.json" ]; then
    pipeline --until fit-tail-map
    $B sample-counts --bundle "$bundle" --split test --n 10000 --skip 25 --shard 1/2 \
        --chunk 10 --batch 32 --seed 0 --device cpu --out "$sel_counts"
    $B select-calibration --bundle "$bundle" --counts "$sel_counts" --delta 0.05 \
        --scores p-gap,log-miss,root-miss,probit --bins "none;0.99" --n0 100 --alpha 0.001 \
        --seed 0 --device "$device" | tee "$reports/selection.txt"
fi
# A calibration of another score or threshold is redone (with its evaluations).
recalibrate=()
if ! grep -q '^score = "p_gap"' "$bundle/model.toml" ||
    ! grep -q '^margin_threshold = 2.0$' "$bundle/model.toml"; then
    recalibrate=(--recalibrate)
fi
pipeline "${recalibrate[@]+"${recalibrate[@]}"}" "${extra[@]+"${extra[@]}"}"
