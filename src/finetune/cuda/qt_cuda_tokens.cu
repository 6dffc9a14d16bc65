/*
 * qt_cuda_tokens.cu - the input side of a ViT on a CUDA device, the twin of
 * cpu/qt_cpu_tokens.c: patch extraction and the token sequence (class token
 * and position embedding). The backward sums over the batch in float in
 * the CPU's order (batch 0 first, starting from the gradient's value), so
 * its results are the CPU's bit for bit. See qt_finetune.h.
 */
#include <cuda_runtime.h>

#include "finetune/qt_finetune.h"
#include "finetune/cuda/qt_cuda_internal.h"

/* The three elementwise kernels below split a flat index into
 * coordinates with several divisions per element: in unsigned (I) where
 * every index fits (qt__cuda_int_indices), since a 64-bit division costs
 * several times a 32-bit one (patchify took 114 us for ViT-B's batch of
 * 64 in size_t, about 0.7 TB/s, by Nsight Compute at 481738e). */

/* One thread per element of patches (batch, grid * grid, channels * patch *
 * patch); images has as many. */
template <typename I>
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    patchify_kernel(float *__restrict__ patches, const float *__restrict__ images, I batch,
                    I channels, I size, I patch) {
  I grid = size / patch, pp = patch * patch, row = channels * pp;
  I total = batch * grid * grid * row, stride = (I)gridDim.x * blockDim.x;
  for (I e = (I)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += stride) {
    I within = e % row, cell = e / row; /* cell = b * grid * grid + gy * grid + gx */
    I ch = within / pp, i = (within % pp) / patch, jx = within % patch;
    I gx = cell % grid, gy = (cell / grid) % grid, b = cell / (grid * grid);
    patches[e] = images[((b * channels + ch) * size + gy * patch + i) * size + gx * patch + jx];
  }
}

/* One thread per element of x (batch, 1 + patches, c), the largest array. */
template <typename I>
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    tokens_forward_kernel(float *__restrict__ x, const float *__restrict__ patch_tokens,
                          const float *__restrict__ cls_token, const float *__restrict__ pos,
                          int class_in_pos, I batch, I patches, I c) {
  I tokens = patches + 1, total = batch * tokens * c, stride = (I)gridDim.x * blockDim.x;
  for (I e = (I)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += stride) {
    I j = e % c, t = (e / c) % tokens, b = e / (tokens * c);
    if (t == 0) {
      x[e] = class_in_pos ? __fadd_rn(cls_token[j], pos[j]) : cls_token[j] + 0.0f;
    } else {
      I i = t - 1;
      const float *pos_patches = pos + (class_in_pos ? c : 0);
      x[e] = __fadd_rn(patch_tokens[(b * patches + i) * c + j], pos_patches[i * c + j]);
    }
  }
}

/* dpatch_tokens += the patch rows of dx (batch, 1 + patches, c, the
 * larger), elementwise. */
template <typename I>
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    tokens_backward_patches_kernel(float *__restrict__ dpatch_tokens, const float *__restrict__ dx,
                                   I batch, I patches, I c) {
  I tokens = patches + 1, total = batch * patches * c, stride = (I)gridDim.x * blockDim.x;
  for (I e = (I)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += stride) {
    I j = e % c, i = (e / c) % patches, b = e / (patches * c);
    dpatch_tokens[e] += dx[(b * tokens + 1 + i) * c + j];
  }
}

/* One thread per (token, feature): dcls (c) and dpos (tokens or patches
 * rows) += the sums over the batch of dx, in float, batch 0 first. */
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    tokens_backward_params_kernel(float *__restrict__ dcls_token, float *__restrict__ dpos,
                                  const float *__restrict__ dx, int class_in_pos, size_t batch,
                                  size_t patches, size_t c) {
  size_t tokens = patches + 1, total = tokens * c, stride = (size_t)gridDim.x * blockDim.x;
  for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += stride) {
    size_t t = e / c;
    if (t == 0) {
      size_t j = e;
      if (dcls_token) {
        float acc = dcls_token[j];
        for (size_t b = 0; b < batch; b++) acc += dx[b * tokens * c + j];
        dcls_token[j] = acc;
      }
      if (dpos && class_in_pos) {
        float acc = dpos[j];
        for (size_t b = 0; b < batch; b++) acc += dx[b * tokens * c + j];
        dpos[j] = acc;
      }
    } else if (dpos) {
      /* Patch token t - 1: row t of dpos with the class row, t - 1 without. */
      float *d = dpos + (class_in_pos ? e : e - c);
      float acc = *d;
      for (size_t b = 0; b < batch; b++) acc += dx[b * tokens * c + e];
      *d = acc;
    }
  }
}

extern "C" int qt_cuda_patchify(float *patches, const float *images, size_t batch, size_t channels,
                                size_t size, size_t patch, qt_err *err) {
  if (patch == 0 || size % patch != 0) {
    return qt_err_set(err, QT_EINVAL, "qt_cuda_patchify: patch %zu does not divide size %zu", patch,
                      size);
  }
  size_t total = batch * channels * size * size;
  if (total == 0) return 0;
  if (!patches || !images) return qt_err_set(err, QT_EINVAL, "qt_cuda_patchify: NULL array");
  if (qt__cuda_int_indices(total))
    patchify_kernel<unsigned><<<qt__cuda_blocks(total), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(
        patches, images, (unsigned)batch, (unsigned)channels, (unsigned)size, (unsigned)patch);
  else
    patchify_kernel<size_t><<<qt__cuda_blocks(total), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(
        patches, images, batch, channels, size, patch);
  return qt__cuda_check_launch(err, "qt_cuda_patchify", "the patchify kernel");
}

extern "C" int qt_cuda_tokens_forward(float *x, const float *patch_tokens, const float *cls_token,
                                      const float *pos, int class_in_pos, size_t batch,
                                      size_t patches, size_t c, qt_err *err) {
  size_t total = batch * (patches + 1) * c;
  if (total == 0) return 0;
  if (!x || !cls_token || !pos || (patches > 0 && !patch_tokens)) {
    return qt_err_set(err, QT_EINVAL, "qt_cuda_tokens_forward: NULL array");
  }
  if (qt__cuda_int_indices(total))
    tokens_forward_kernel<unsigned>
        <<<qt__cuda_blocks(total), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(
            x, patch_tokens, cls_token, pos, class_in_pos, (unsigned)batch, (unsigned)patches,
            (unsigned)c);
  else
    tokens_forward_kernel<size_t>
        <<<qt__cuda_blocks(total), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(
            x, patch_tokens, cls_token, pos, class_in_pos, batch, patches, c);
  return qt__cuda_check_launch(err, "qt_cuda_tokens_forward", "the tokens kernel");
}

extern "C" int qt_cuda_tokens_backward(float *dpatch_tokens, float *dcls_token, float *dpos,
                                       const float *dx, int class_in_pos, size_t batch,
                                       size_t patches, size_t c, qt_err *err) {
  const char *who = "qt_cuda_tokens_backward";
  if (batch == 0 || c == 0) return 0;
  if (!dx) return qt_err_set(err, QT_EINVAL, "%s: dx is NULL", who);
  if (dpatch_tokens && patches > 0) {
    size_t total = batch * patches * c;
    if (qt__cuda_int_indices(batch * (patches + 1) * c))
      tokens_backward_patches_kernel<unsigned>
          <<<qt__cuda_blocks(total), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(
              dpatch_tokens, dx, (unsigned)batch, (unsigned)patches, (unsigned)c);
    else
      tokens_backward_patches_kernel<size_t>
          <<<qt__cuda_blocks(total), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(dpatch_tokens, dx,
                                                                              batch, patches, c);
    int rc = qt__cuda_check_launch(err, who, "the patch token gradient");
    if (rc < 0) return rc;
  }
  if (dcls_token || dpos) {
    tokens_backward_params_kernel<<<qt__cuda_blocks((patches + 1) * c), QT_CUDA_THREADS, 0,
                                    qt__cuda_stream()>>>(dcls_token, dpos, dx, class_in_pos, batch,
                                                         patches, c);
    return qt__cuda_check_launch(err, who, "the class token and position gradients");
  }
  return 0;
}
