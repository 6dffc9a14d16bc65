#!/bin/sh
# bench/engine's --python: a bare name is looked up on PATH, as the shell
# would (the reference's command then names the program found), and a name
# found nowhere makes the reference unavailable with that name, not a
# failed run.
set -u
engine=${1:?usage: check-engine-python.sh ENGINE}
run() {
  "$engine" --model vit_tiny --batch 1 --threads 1 --warmup 0 --steps 1 --python "$1" 2>&1
}
fail=0
out=$(run qtune-no-such-python) || { echo "FAIL: exit $? for a missing --python"; fail=1; }
printf '%s\n' "$out" | grep -q "PyTorch reference unavailable: qtune-no-such-python not found" ||
  { echo "FAIL: a missing --python is not reported:"; printf '%s\n' "$out"; fail=1; }
# sh is on every PATH; it runs the reference script as a shell script,
# which fails: the point is the command line it was started with.
sh=$(command -v sh)
out=$(run sh)
printf '%s\n' "$out" | grep -q "^reference: '$sh' " ||
  { echo "FAIL: --python sh did not run $sh:"; printf '%s\n' "$out"; fail=1; }
[ $fail -eq 0 ] && echo "engine --python: looked up on PATH, and a missing one reported"
exit $fail
