#!/usr/bin/env bash
# Prints every GPU figure of docs/MEASUREMENTS.md ("On a GPU") in one call and
# leaves the JSON under $OUT (default /tmp/gpu-out). Run it on a machine with an
# NVIDIA GPU (nvidia-smi), a python3 that imports torch 2.11.0 built with CUDA
# (the binary is built against libtorch 2.11.0; that torch's lib folder gives
# it libtorch and CUDA), coreutils' timeout, and write access to
# /usr/share/datasets/fashion-mnist, from a folder holding this script as
# scripts/gpu-run.sh and the .dev/gpu/ that scripts/gpu-prepare.sh filled (the
# repository root is one, once gpu-prepare.sh has run there). Each step has its
# own time limit (450 s in all), so one slow step cannot cost the others.
#   1. engine rate by forward batch, noisy passes against plain forward passes
#   2. Monte Carlo (N = 100,000) against the surrogate on the same inputs
#   3. served throughput, dynamic batching against batch size 1 (the server in
#      a child process, tonic clients in this one)
#   4. GPU memory: the peak over the whole run, sampled every 200 ms
set -u
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
torchlib=$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')/lib
export LD_LIBRARY_PATH=$torchlib:${LD_LIBRARY_PATH:-}
G=.dev/gpu
S=$G/smoothcert
B=$G/bundle
# The default dataset location, which every command reads.
mkdir -p /usr/share/datasets/fashion-mnist && cp $G/data/* /usr/share/datasets/fashion-mnist/
date -u +"date: %Y-%m-%dT%H:%MZ"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$OUT/memory.csv" 2>/dev/null &
sampler=$!
$S info
echo "== 1. engine rate by forward batch (noisy vs plain)"
timeout 120 $S bench --bundle $B --batches 100,1000,4096,16384 --samples 200000 --repeats 3 \
    --device cuda --out "$OUT/bench.json"
echo "== 2. Monte Carlo (N = 100,000) against the surrogate, same inputs, one run"
timeout 150 $S bench-certify --bundle $B --inputs 20 --n 100000 --device cuda \
    --out "$OUT/bench-certify.json"
echo "== 3. served: dynamic batching against batch size 1 (server in a child process)"
timeout 180 $S bench-serve --bundle $B --device cuda --concurrency 1,64,256 --requests 2048 \
    --out "$OUT/bench-serve.json"
kill $sampler 2>/dev/null
echo "== 4. GPU memory (MiB): peak over the run, and now"
sort -n "$OUT/memory.csv" | tail -1
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv
