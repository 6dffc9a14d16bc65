#!/bin/sh
# tools/ncu-summary on the Nsight Compute output kept in docs/benchmarks
# (ViT-B/16's and MobileNetV2's BF16 steps on an H100 at dbd7517,
# 66dc338, 481738e and 5e08e19): the families, calls and times that
# docs/benchmarks/README.md quotes from it, and a clean failure on a file
# without kernel times.
set -eu
root=${1:?usage: check-ncu-summary.sh SOURCE_DIR}
tool="$root/tools/ncu-summary"
dir="$root/docs/benchmarks/cuda-h100"
fail=0
# check FILE PATTERN...: every pattern matches a line of FILE's summary.
check() {
  out=$("$tool" "$dir/$1")
  file=$1
  shift
  for want in "$@"; do
    if ! printf '%s\n' "$out" | grep -Eq "$want"; then
      echo "FAIL: no line matching '$want' in the summary of $file:"
      printf '%s\n' "$out"
      fail=1
    fi
  done
}
check ncu-vit_base-dbd7517.txt 'cuBLAS\(Lt\) products +162 +9\.788 ' \
  'to_bf16_x4_kernel +102 +0\.494 ' '^total +22\.018$'
check ncu-mobilenetv2_100-dbd7517.txt 'depthwise_backward_weight_kernel +17 +2\.499 ' \
  'depthwise_backward_input_kernel +17 +2\.313 ' 'adam_jobs_kernel +4 +0\.057 ' '^total +21\.364$'
check ncu-vit_base-66dc338.txt 'cuBLAS\(Lt\) products +162 +9\.867 +60\.9$' \
  'colsum_kernel +50 +2\.257 ' 'fused_backward_dkv_kernel +12 +1\.977 ' \
  'fused_backward_dq_kernel +12 +1\.408 ' 'fused_forward_kernel +12 +1\.137 ' \
  'layernorm_rows_backward_kernel +25 +1\.294 ' 'residual_layernorm_rows_kernel +23 +1\.189 ' \
  'gelu_forward_kernel +12 +0\.929 ' 'adam_jobs_kernel +4 +0\.854 ' \
  'to_bf16_x4_kernel +150 +0\.790 ' '^total +22\.385$'
check ncu-vit_base-481738e.txt 'cuBLAS\(Lt\) products +162 +10\.325 +63\.7$' \
  'to_bf16_x4_kernel +152 +2\.825 +18\.6$' 'colsum_kernel +50 +2\.229 ' \
  'fused_backward_dkv_kernel +12 +2\.024 ' 'fused_forward_kernel +12 +1\.516 ' \
  'layernorm_rows_backward_kernel +25 +2\.121 ' '^total +26\.732$'
check ncu-vit_base-5e08e19.txt 'cuBLAS\(Lt\) products +162 +10\.764 +66\.4$' \
  'colsum_kernel +50 +3\.165 ' 'fused_backward_dkv_kernel +12 +3\.081 +256\.8$' \
  'layernorm_rows_backward_kernel +25 +2\.223 ' 'adamw_step_kernel +152 +1\.239 ' \
  'to_bf16_x4_kernel +103 +0\.670 ' '^total +28\.307$'
# MobileNetV2's profiles, from which the docs quote the depthwise
# gradients and the totals.
check ncu-mobilenetv2_100-481738e.txt 'depthwise_backward_weight_kernel +17 +3\.072 ' \
  'depthwise_backward_input_kernel +17 +2\.300 ' '^total +22\.302$'
check ncu-mobilenetv2_100-5e08e19.txt 'depthwise_backward_weight_kernel +17 +7\.855 +462\.1$' \
  '^total +28\.692$'
# The same file read as 1 step doubles every time.
if ! "$tool" "$dir/ncu-vit_base-5e08e19.txt" 1 | grep -Eq '^total +56\.615$'; then
  echo "FAIL: STEPS 1 does not double the total"
  fail=1
fi
if "$tool" "$root/README.md" > /dev/null 2>&1; then
  echo "FAIL: a file without kernel times did not fail"
  fail=1
fi
[ $fail -eq 0 ] && echo "ncu-summary: the quoted families and totals, STEPS, and the failure all check"
exit $fail
