/*
 * qt_cpu_vmath.c - the loops of qt_cpu_vmath.h that are not inline.
 */
#include "finetune/cpu/qt_cpu_vmath.h"

#include "finetune/cpu/qt_cpu_sums.h"

QT_VECTOR_CLONES void qt__cpu_softmax_rows(float *a, size_t rows, size_t n) {
  for (size_t i = 0; i < rows; i++) {
    float *row = a + i * n;
    float max = qt__max(row, n);
    for (size_t j = 0; j < n; j++) row[j] = qt_vexpf(row[j] - max);
    float inv = (float)(1.0 / qt__sum(row, n));
    for (size_t j = 0; j < n; j++) row[j] *= inv;
  }
}

QT_VECTOR_CLONES void qt__cpu_softmax_backward_rows(float *da, const float *a, size_t rows,
                                                    size_t n) {
  for (size_t i = 0; i < rows; i++) {
    const float *arow = a + i * n;
    float *drow = da + i * n;
    float dot = (float)qt__dot(arow, drow, n);
    for (size_t j = 0; j < n; j++) drow[j] = arow[j] * (drow[j] - dot);
  }
}
