#!/usr/bin/env bash
# The demo of `make demo`: the strongest real thing qtune does today. It
# validates the shipped search spaces, draws an initial Sobol design and
# uniform samples, shows the encoding the surrogates will see (with a decode
# round-trip check), and, when Quick-Tune's meta-dataset is beside the clone,
# imports it and compares the baseline optimizers on its replayed learning
# curves. Every number printed is computed here; nothing is canned. The
# end-to-end `qtune search` replaces this once it exists.
set -euo pipefail
qtune=${1:-build/qtune}
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n$ %s\n' "$1" "${*:2}"; "${@:2}"; }

step "Validate the shipped search spaces" \
  "$qtune" space check configs/spaces/quicktune-v1.yaml configs/spaces/default.yaml
step "An initial design of 6 pipelines for this project's engine (Sobol, seed 1)" \
  "$qtune" space sample configs/spaces/default.yaml --sobol --n 6 --seed 1
step "Uniform samples from Quick-Tune's space, as CSV (seed 2)" \
  "$qtune" space sample configs/spaces/quicktune-v1.yaml --n 5 --format csv --seed 2
step "What the surrogate sees: the encoding of one configuration, and its round trip" \
  "$qtune" space encode configs/spaces/default.yaml --n 1 --seed 3
shared=../shared/benchmarks/quicktune-extended
if [ -d "$shared" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  step "Import Quick-Tune's meta-dataset (read in place from ../shared)" \
    "$qtune" meta import --format quicktune "$shared" --out "$work/quicktune-extended"
  step "Baselines on its replayed learning curves: 18 datasets x 5 seeds, budget 4h each" \
    "$qtune" bench --meta-dataset "$work/quicktune-extended" \
    --optimizers random,sh,hyperband,asha,bohb --budget 4h --seeds 0-4 --out "$work/bench"
else
  printf '\n(%s is absent: skipping the optimizer benchmark)\n' "$shared"
fi
printf '\nThe Quick-Tune optimizer and the fine-tuning engine are next: try "%s search --help".\n' "$qtune"
