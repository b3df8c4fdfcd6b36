#!/usr/bin/env bash
# Prepares the one GPU call (../shared/GPU.md): builds the release binary here
# and puts into .dev/gpu/ (git-ignored) the stripped binary, the default bundle
# and the Fashion-MNIST test files. Then, with the device tool:
#   run(command="bash scripts/gpu-run.sh", carry=[".dev/gpu"], timeout_s=480)
# and give the machine back when it answers. scripts/gpu-run.sh prints every
# GPU figure the README reports.
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
echo 'prepared: run(command="bash scripts/gpu-run.sh", carry=[".dev/gpu"], timeout_s=480)'
