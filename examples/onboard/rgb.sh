#!/usr/bin/env bash
# The worked example at RGB scale: a ResNet (PyTorch, CIFAR-style, 3 x 32 x 32)
# through import, pipeline and serve, with the memory and time of every stage.
# No public RGB dataset reaches the machine this was written on, so the images
# are Fashion-MNIST padded to 32 x 32 and tinted, a colour per image
# (make_image_folder.py --rgb 32): a stand-in with RGB's shape, not its content.
# Resumable; everything goes under runs/rgb/ (git-ignored).
#
#   PY=/path/to/python-with-torch bash examples/onboard/rgb.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
PY=${PY:-python3}
W=runs/rgb
mkdir -p "$W"
B=target/release/smoothcert
[ -x "$B" ] || make build
# Peak memory (KB) and seconds of one command, appended to $W/stages.tsv.
measure() {
    local stage=$1; shift
    grep -q "^$stage	" "$W/stages.tsv" 2>/dev/null && return 0
    /usr/bin/time -f "$stage	%M	%e" -a -o "$W/stages.tsv.part" "$@"
    tail -n1 "$W/stages.tsv.part" >>"$W/stages.tsv"
}

[ -d "$W/images" ] || "$PY" examples/onboard/make_image_folder.py --out "$W/images" --every 10 --rgb 32
[ -f "$W/model.pt" ] || measure train-classifier "$PY" examples/onboard/train_classifier.py \
    --data "$W/images" --channels 3 --arch resnet --sigma 0.25 --epochs 8 --out "$W/model.pt"
[ -f "$W/fashion-rgb-resnet/model.toml" ] || measure import "$B" import --torchscript "$W/model.pt" \
    --image-folder "$W/images" --shape 3,32,32 --sigma 0.25 --out "$W/fashion-rgb-resnet"

# 6,000 training and 1,000 test images. The surrogate: a fine-tuned copy of the
# ResNet on 500 training images (every 12th) at N = 300; tail map i % 16 == 1,
# calibration i % 16 == 2 at the nominal N of 1,000, evaluation i % 16 == 0
# (63 images each): a size that runs in minutes on a 2-core CPU. One stage
# at a time, so each gets its own peak memory.
plan=(--bundle "$W/fashion-rgb-resnet" --counts-dir "$W/counts"
      --nominal-n 1000 --train-n 300 --train-skip 12 --train-shards 1 --train-use 0
      --epochs 20 --tail-n 300 --tail-shards 16 --tail-use 1
      --calibration-shards 16 --calibration-use 2 --eval-skip 16 --batch 32 --device cpu)
for stage in train-counts train-surrogate tail-counts fit-tail-map calibration-counts calibrate \
    certify-monte_carlo certify-surrogate certify-calibrated certify-auto report; do
    measure "$stage" "$B" pipeline "${plan[@]}" --until "$stage" >"$W/pipeline-$stage.md"
done
"$B" pipeline "${plan[@]}" | tee "$W/pipeline.md"
printf 'stage\tpeak RSS (KB)\tseconds\n'; cat "$W/stages.tsv"
