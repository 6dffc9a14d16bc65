#!/bin/sh
# tools/ncu-summary on the Nsight Compute output kept in docs/benchmarks
# (ViT-B/16's BF16 step on an H100 at 572ad8e): the families, calls and
# times that docs/benchmarks/README.md quotes from it, and a clean failure
# on a file without kernel times.
set -eu
root=${1:?usage: check-ncu-summary.sh SOURCE_DIR}
tool="$root/tools/ncu-summary"
out=$("$tool" "$root/docs/benchmarks/cuda-h100/ncu-vit_base-572ad8e.txt")
fail=0
for want in 'cuBLAS\(Lt\) products +162 +10\.737 +66\.3$' 'colsum_kernel +50 +3\.296 ' \
  'fused_backward_dkv_kernel +12 +3\.087 +257\.3$' 'layernorm_rows_backward_kernel +25 +2\.447 ' \
  'adamw_step_kernel +152 +1\.240 ' 'to_bf16_x4_kernel +103 +0\.671 ' '^total +28\.629$'; do
  if ! printf '%s\n' "$out" | grep -Eq "$want"; then
    echo "FAIL: no line matching '$want' in:"
    printf '%s\n' "$out"
    fail=1
  fi
done
# The same file read as 1 step doubles every time.
if ! "$tool" "$root/docs/benchmarks/cuda-h100/ncu-vit_base-572ad8e.txt" 1 | grep -Eq '^total +57\.258$'; then
  echo "FAIL: STEPS 1 does not double the total"
  fail=1
fi
if "$tool" "$root/README.md" > /dev/null 2>&1; then
  echo "FAIL: a file without kernel times did not fail"
  fail=1
fi
[ $fail -eq 0 ] && echo "ncu-summary: the quoted families and total, STEPS, and the failure all check"
exit $fail
