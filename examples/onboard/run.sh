#!/usr/bin/env bash
# The worked example, end to end, as a new user runs it: an image folder, a
# classifier trained and exported by PyTorch (not by smoothcert), `import`,
# `pipeline`, then the service. Everything goes under runs/onboard/ (git-ignored);
# rerun after an interruption and every step continues where it stopped.
#
#   PY=/path/to/python-with-torch bash examples/onboard/run.sh
#
# PY needs torch and torchvision (pip install torch torchvision; on a machine
# without a GPU, --index-url https://download.pytorch.org/whl/cpu keeps it small).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
PY=${PY:-python3}
W=runs/onboard
mkdir -p "$W"
make build
smoothcert() { target/release/smoothcert "$@"; }
stamp() { date +%s; }

# 1. Your images: an ImageFolder tree (here every 5th Fashion-MNIST image as PNG).
[ -d "$W/images" ] || "$PY" examples/onboard/make_image_folder.py --out "$W/images" --every 5

# 2. Your classifier, trained under Gaussian noise and exported to TorchScript.
if [ ! -f "$W/model.pt" ]; then
    t=$(stamp)
    "$PY" examples/onboard/train_classifier.py --data "$W/images" --channels 1 --sigma 0.25 \
        --epochs 10 --out "$W/model.pt" | tee "$W/train_classifier.log"
    echo "train_classifier.py: $(( $(stamp) - t )) s" | tee -a "$W/train_classifier.log"
fi

# 3. A bundle from it: the module's contract checked, the folder recorded,
#    clean and noisy accuracy measured (labels: the sorted folder names).
[ -f "$W/fashion-folder-cnn/model.toml" ] || smoothcert import --torchscript "$W/model.pt" \
    --image-folder "$W/images" --shape 1,28,28 --sigma 0.25 --out "$W/fashion-folder-cnn"

# 4. The surrogate, its tail map and calibration, and a held-out evaluation
#    against Monte Carlo, at a nominal N of 10,000 (CPU-sized; the default is
#    100,000). The surrogate is a copy of model.pt fine-tuned on 250-sample
#    counts of 8,000 training images (shards 0 and 1 of 3), with the margin
#    tail (pipeline's default: the counts record their logit margins). Test
#    images by index: i % 16 == 1 fit the tail map, i % 16 == 2 calibrate,
#    i % 16 == 0 are evaluated (125 images each). examples/onboard/budget.sh
#    then compares other splits of the same counts budget (2 M passes).
#    EVAL_OFFSET=3 evaluates the next 125 (i % 16 == 3) into reports-o3/ instead.
off=${EVAL_OFFSET:-0}
smoothcert pipeline --bundle "$W/fashion-folder-cnn" --counts-dir "$W/counts" \
    --reports-dir "$W/fashion-folder-cnn/reports$([ "$off" = 0 ] || echo "-o$off")/n10000" \
    --eval-offset "$off" --nominal-n 10000 --train-n 250 --train-skip 1 --train-shards 3 --train-use 0,1 \
    --epochs 30 --tail-n 1000 --tail-shards 16 --tail-use 1 \
    --calibration-shards 16 --calibration-use 2 --eval-skip 16 \
    --batch 32 --device cpu | tee "$W/pipeline$([ "$off" = 0 ] || echo "-o$off").md"

# 5. Serve it: grpcurl -plaintext -d '{"model": "fashion-folder-cnn", ...}' localhost:50051 ...
echo "serve with: target/release/smoothcert serve --config examples/onboard/smoothcert.toml"
