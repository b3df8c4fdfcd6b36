#!/usr/bin/env bash
# Prepares the GPU figures' run (docs/MEASUREMENTS.md, "On a GPU"):
#   bash scripts/gpu-prepare.sh [BUNDLE]
# builds the release binary here, where `make build` works, and puts into
# .dev/gpu/ (git-ignored) the stripped binary, the bundle (default: the
# shipped one, without its reports/) and the Fashion-MNIST test files, so the
# GPU machine needs no Rust, no build and no dataset package. Then copy
# scripts/gpu-run.sh and .dev/gpu/ side by side to a machine with an NVIDIA
# GPU and a python3 that imports torch 2.11.0 built with CUDA, and run
# `bash scripts/gpu-run.sh` there: it prints every GPU figure
# docs/MEASUREMENTS.md reports.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bundle=${1:-models/fashion-mnist-sigma0.25}
cargo build --release
dest=.dev/gpu
rm -rf "$dest" && mkdir -p "$dest/data"
cp target/release/smoothcert "$dest/smoothcert"
strip "$dest/smoothcert" 2>/dev/null || true
cp -r "$bundle" "$dest/bundle" && rm -rf "$dest/bundle/reports"
cp /usr/share/datasets/fashion-mnist/t10k-* "$dest/data/"
grep -qx ".dev" .git/info/exclude 2>/dev/null || echo ".dev" >>.git/info/exclude
du -sh "$dest"
echo 'prepared .dev/gpu: copy it and scripts/gpu-run.sh to the GPU machine, then run there: bash scripts/gpu-run.sh'
