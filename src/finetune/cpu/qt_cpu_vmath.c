/*
 * qt_cpu_vmath.c - the loops of qt_cpu_vmath.h that are not inline.
 */
#include "finetune/cpu/qt_cpu_vmath.h"

QT_VECTOR_CLONES void qt__cpu_exp_shifted(float *x, size_t n, float shift) {
  for (size_t i = 0; i < n; i++) x[i] = qt_vexpf(x[i] - shift);
}
