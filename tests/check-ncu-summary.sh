#!/bin/sh
# tools/ncu-summary on the Nsight Compute output kept in docs/benchmarks
# (ViT-B/16's and MobileNetV2's BF16 steps on an H100 at 5e08e19): the families, calls and
# times that docs/benchmarks/README.md quotes from it, and a clean failure
# on a file without kernel times.
set -eu
root=${1:?usage: check-ncu-summary.sh SOURCE_DIR}
tool="$root/tools/ncu-summary"
out=$("$tool" "$root/docs/benchmarks/cuda-h100/ncu-vit_base-5e08e19.txt")
fail=0
for want in 'cuBLAS\(Lt\) products +162 +10\.764 +66\.4$' 'colsum_kernel +50 +3\.165 ' \
  'fused_backward_dkv_kernel +12 +3\.081 +256\.8$' 'layernorm_rows_backward_kernel +25 +2\.223 ' \
  'adamw_step_kernel +152 +1\.239 ' 'to_bf16_x4_kernel +103 +0\.670 ' '^total +28\.307$'; do
  if ! printf '%s\n' "$out" | grep -Eq "$want"; then
    echo "FAIL: no line matching '$want' in:"
    printf '%s\n' "$out"
    fail=1
  fi
done
# MobileNetV2's profile, from which the docs quote the depthwise weight
# gradient and the total.
cnn=$("$tool" "$root/docs/benchmarks/cuda-h100/ncu-mobilenetv2_100-5e08e19.txt")
for want in 'depthwise_backward_weight_kernel +17 +7\.855 +462\.1$' '^total +28\.692$'; do
  if ! printf '%s\n' "$cnn" | grep -Eq "$want"; then
    echo "FAIL: no line matching '$want' in:"
    printf '%s\n' "$cnn"
    fail=1
  fi
done
# The same file read as 1 step doubles every time.
if ! "$tool" "$root/docs/benchmarks/cuda-h100/ncu-vit_base-5e08e19.txt" 1 | grep -Eq '^total +56\.615$'; then
  echo "FAIL: STEPS 1 does not double the total"
  fail=1
fi
if "$tool" "$root/README.md" > /dev/null 2>&1; then
  echo "FAIL: a file without kernel times did not fail"
  fail=1
fi
[ $fail -eq 0 ] && echo "ncu-summary: the quoted families and total, STEPS, and the failure all check"
exit $fail
