/*
 * qt_cpu_tokens.c - the input side of a ViT: patch extraction (the im2col of
 * the patch-embedding convolution) and the token sequence (class token and
 * position embedding). See qt_finetune.h.
 */
#include <string.h>

#include "finetune/qt_finetune.h"

void qt_cpu_patchify(float *patches, const float *images, size_t batch, size_t channels,
                     size_t size, size_t patch) {
  QT_ASSERT(patch > 0 && size % patch == 0);
  size_t grid = size / patch, row = channels * patch * patch;
  for (size_t b = 0; b < batch; b++) {
    for (size_t gy = 0; gy < grid; gy++) {
      for (size_t gx = 0; gx < grid; gx++) {
        float *dst = patches + (b * grid * grid + gy * grid + gx) * row;
        for (size_t ch = 0; ch < channels; ch++) {
          const float *src = images + ((b * channels + ch) * size + gy * patch) * size + gx * patch;
          for (size_t i = 0; i < patch; i++) {
            memcpy(dst, src + i * size, patch * sizeof *dst);
            dst += patch;
          }
        }
      }
    }
  }
}

void qt_cpu_tokens_forward(float *x, const float *patch_tokens, const float *cls_token,
                           const float *pos, int class_in_pos, size_t batch, size_t patches,
                           size_t c) {
  size_t tokens = patches + 1;
  /* Rows of pos for the patches start after the class token's, if any. */
  const float *pos_patches = pos + (class_in_pos ? c : 0);
  for (size_t b = 0; b < batch; b++) {
    float *xb = x + b * tokens * c;
    for (size_t j = 0; j < c; j++) xb[j] = cls_token[j] + (class_in_pos ? pos[j] : 0.0f);
    for (size_t i = 0; i < patches; i++) {
      const float *p = patch_tokens + (b * patches + i) * c;
      float *dst = xb + (1 + i) * c;
      for (size_t j = 0; j < c; j++) dst[j] = p[j] + pos_patches[i * c + j];
    }
  }
}

void qt_cpu_tokens_backward(float *dpatch_tokens, float *dcls_token, float *dpos, const float *dx,
                            int class_in_pos, size_t batch, size_t patches, size_t c) {
  size_t tokens = patches + 1;
  float *dpos_patches = dpos ? dpos + (class_in_pos ? c : 0) : NULL;
  for (size_t b = 0; b < batch; b++) {
    const float *dxb = dx + b * tokens * c;
    for (size_t j = 0; j < c; j++) {
      if (dcls_token) dcls_token[j] += dxb[j];
      if (dpos && class_in_pos) dpos[j] += dxb[j];
    }
    for (size_t i = 0; i < patches; i++) {
      const float *src = dxb + (1 + i) * c;
      for (size_t j = 0; j < c; j++) {
        if (dpatch_tokens) dpatch_tokens[(b * patches + i) * c + j] += src[j];
        if (dpos_patches) dpos_patches[i * c + j] += src[j];
      }
    }
  }
}
