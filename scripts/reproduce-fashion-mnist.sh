#!/usr/bin/env bash
# Reproduces models/fashion-mnist-sigma0.25 and its Monte Carlo report from
# scratch: train-base, certify (N = 10,000, every 20th test image), report, bench.
# About 12 minutes on 2 CPU cores. Writes into OUT (default runs/fashion-mnist).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${OUT:-runs/fashion-mnist}
make build
B=target/release/smoothcert
mkdir -p "$out"
$B train-base --dataset fashion-mnist --arch small-cnn --sigma 0.25 --epochs 20 --seed 0 \
    --name fashion-mnist-sigma0.25 --out "$out/bundle"
$B certify --bundle "$out/bundle" --method monte_carlo --split test --skip 20 \
    --n0 100 --n 10000 --alpha 0.001 --batch 1000 --out "$out/mc-n10k.tsv"
$B report "$out/mc-n10k.tsv" --radii 0,0.1,0.2,0.25,0.3,0.4,0.5,0.6,0.7,0.75,0.8 \
    --out-dir "$out/report" | tee "$out/report.md"
$B bench --bundle "$out/bundle" --batches 1,10,100,1000,4000 --samples 20000 --repeats 5 \
    --out "$out/bench.json" | tee "$out/bench.md"
