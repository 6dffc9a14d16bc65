/*
 * qt_cuda_stub.c - the CUDA half of the finetune module when qtune is built
 * without CUDA (QT_CUDA=OFF, or no toolkit found). Every qt_cuda_* function
 * exists so that callers and tests need no #ifdef: the device query reports
 * no device and every op returns QT_ENODEV.
 */
#include "finetune/qt_finetune.h"

#define QT_CUDA_STUB_MESSAGE "qtune was built without CUDA (QT_CUDA=OFF or no toolkit)"

int qt_cuda_device_count(int *count, qt_err *err) {
  if (!count) return qt_err_set(err, QT_EINVAL, "qt_cuda_device_count: count is NULL");
  *count = 0;
  QT_LOG_DEBUG("no CUDA device: %s", QT_CUDA_STUB_MESSAGE);
  return 0;
}

int qt_cuda_adamw_step(float *params, const float *grads, float *m, float *v, size_t n,
                       const qt_adamw_params *hp, long step, qt_err *err) {
  return qt_err_set(err, QT_ENODEV, "qt_cuda_adamw_step: " QT_CUDA_STUB_MESSAGE);
}

int qt_cuda_adamw_step_host(float *params, const float *grads, float *m, float *v, size_t n,
                            const qt_adamw_params *hp, long step, qt_err *err) {
  return qt_err_set(err, QT_ENODEV, "qt_cuda_adamw_step_host: " QT_CUDA_STUB_MESSAGE);
}
