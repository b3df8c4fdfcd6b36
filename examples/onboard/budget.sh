#!/usr/bin/env bash
# Where the counts budget goes: at one budget of base-classifier passes
# (about 2 M), more training images at a smaller N against fewer at a larger
# N, each for the fine-tuned copy of the worked example's classifier. Every
# other role is the worked example's (tail map i % 16 == 1, calibration
# i % 16 == 2, evaluation i % 16 == 0, nominal N 10,000), and so are its
# counts and its Monte Carlo evaluation, which run.sh made: only the training
# counts are new. Resumable; everything goes under runs/onboard/budget/.
#
#   bash examples/onboard/budget.sh            # all four (JS alone), and small-cnn from scratch
#   bash examples/onboard/budget.sh 8000x250   # one
#   UNTIL=train-counts bash examples/onboard/budget.sh 8000x250   # its counts only
#   EVAL_OFFSET=3 bash examples/onboard/budget.sh 8000x250   # 125 more images (i % 16 == 3),
#       into reports-o3/ (after EVAL_OFFSET=3 bash examples/onboard/run.sh)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
W=runs/onboard
B=target/release/smoothcert
[ -f "$W/fashion-folder-cnn/model.toml" ] || { echo "run examples/onboard/run.sh first" >&2; exit 1; }

# images x N -> train-n, train-skip, train-shards, train-use (of the 12,000
# training images: skip 1 is all of them, skip 3 every third).
plan() {
    case "$1" in
        8000x250) echo "250 1 3 0,1" ;;
        4000x500) echo "500 3 1 0" ;;
        2000x1000) echo "1000 3 4 0,1" ;;
        1000x2000) echo "2000 3 4 0" ;;
        # Half the budget (1 M passes), from the same count files: one shard of each.
        4000x250) echo "250 1 3 0" ;;
        1000x1000) echo "1000 3 4 0" ;;
        # The earlier worked example's counts (2,000 x 1,000) for a small-cnn trained from scratch
        # (the surrogate a TorchScript base got before it got a copy of itself).
        2000x1000-small-cnn) echo "1000 3 4 0,1 --arch small-cnn" ;;
        # Cheap levers on those counts: no tail map, the
        # soft-label cross-entropy instead of JS.
        2000x1000-no-tail-map) echo "1000 3 4 0,1 --no-tail-map" ;;
        2000x1000-soft-ce) echo "1000 3 4 0,1 --loss soft-ce" ;;
        # The tail map fitted on counts at the nominal N (10,000) rather than
        # 1,000, so that it sees pA near 0.9987, where r = 0.75 is decided.
        2000x1000-tail10k) echo "1000 3 4 0,1 --tail-n 10000" ;;
        # The margin tail: the same 8,000 x 250 passes recording their logit
        # margins, and the copy also taught ln(1 - pA) from them (weight W);
        # the first is what run.sh trains (pipeline's default weight).
        8000x250-margin-tail) echo "250 1 3 0,1 --margin-tail 0.01" ;;
        8000x250-margin-tail-0.1) echo "250 1 3 0,1 --margin-tail 0.1" ;;
        *) echo "unknown plan $1" >&2; exit 2 ;;
    esac
}

for cfg in "${@:-8000x250 4000x500 2000x1000 1000x2000 2000x1000-small-cnn}"; do
  for c in $cfg; do
    read -r n skip shards use extra <<<"$(plan "$c")"
    # A plan may give its own --tail-n; the default is the worked example's.
    case " ${extra:-} " in *" --tail-n "*) tail_n="" ;; *) tail_n="--tail-n 1000" ;; esac
    # Rows without the margin tail say so: it is pipeline's default.
    case " ${extra:-} " in *" --margin-tail "*) margin_tail="" ;; *) margin_tail="--margin-tail 0" ;; esac
    dir="$W/budget/$c"
    mkdir -p "$dir"
    # The same classifier imported afresh (no surrogate yet), under the
    # worked example's name: the Monte Carlo evaluation below is then its own.
    [ -f "$dir/bundle/model.toml" ] || "$B" import --torchscript "$W/model.pt" \
        --image-folder "$W/images" --shape 1,28,28 --sigma 0.25 \
        --name fashion-folder-cnn --out "$dir/bundle"
    # The worked example's Monte Carlo evaluation is this one's: same base,
    # images, seed and N (certify checks its parameters before reusing them).
    off=${EVAL_OFFSET:-0}
    sub="reports$([ "$off" = 0 ] || echo "-o$off")"
    mkdir -p "$dir/$sub"
    # Copied only once finished, and whole: a partial copy would resume.
    mc="$W/fashion-folder-cnn/$sub/n10000"
    if [ -f "$mc/mc.summary.json" ] && [ ! -f "$dir/$sub/mc.summary.json" ]; then
        cp "$mc/mc.tsv" "$mc/mc.params.json" "$mc/mc.summary.json" "$dir/$sub/"
    fi
    "$B" pipeline --bundle "$dir/bundle" --counts-dir "$W/counts" --reports-dir "$dir/$sub" \
        --eval-offset "$off" \
        --nominal-n 10000 --train-n "$n" --train-skip "$skip" --train-shards "$shards" --train-use "$use" \
        --epochs 30 $tail_n $margin_tail --tail-shards 16 --tail-use 1 \
        --calibration-shards 16 --calibration-use 2 --eval-skip 16 \
        --batch 32 --device cpu ${extra:-} ${UNTIL:+--until "$UNTIL"} | tee "$dir/pipeline$([ "$off" = 0 ] || echo "-o$off").md"
  done
done
