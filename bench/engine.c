/*
 * engine.c - the fine-tuning engine's training step next to PyTorch's (issue
 * 5's acceptance: images/s and peak memory of a fine-tuning step of
 * ViT-Ti/16 at 224 px, batch 32, with Debian's PyTorch on the same model and
 * threads in the same run, as a ratio; the target is at least 1.0x), and
 * the same for two convolutional networks.
 *
 * Models (--model):
 *   vit_tiny         qt_vit_init with qt_vit_default_config() (timm's
 *                    vit_tiny_patch16_224: width 192, depth 12, 3 heads, MLP
 *                    768, patch 16); vit_small and vit_base the same with
 *                    timm's ViT-S/16 (384, 6 heads, MLP 1536) and ViT-B/16
 *                    (768, 12 heads, MLP 3072); one step is qt_vit_forward,
 *                    qt_vit_loss (cross-entropy, no smoothing),
 *                    qt_vit_zero_grad, qt_vit_backward and qt_vit_adamw_step
 *                    (PyTorch's AdamW defaults).
 *   mobilenetv2_100  timm's mobilenetv2_100 and resnet18, written with
 *   resnet18         random initialization by qt_cnn_write_init to a
 *                    temporary file and loaded by qt_cnn_load (the file is
 *                    removed once loaded); one step is qt_cnn_forward in
 *                    TRAIN batch norm mode (batch statistics, running ones
 *                    updated), qt_cnn_loss (cross-entropy, no smoothing),
 *                    qt_cnn_zero_grad, qt_cnn_backward and one AdamW step
 *                    (qt_optim_tensor_step: lr 1e-3, betas 0.9 / 0.999,
 *                    eps 1e-8, decoupled weight decay 0.01 on the tensors
 *                    of 2 or more dimensions, as timm's
 *                    param_groups_weight_decay) over every trainable
 *                    tensor. The reference builds the same networks with
 *                    torchvision (models.mobilenet_v2 with dropout 0, and
 *                    models.resnet18: timm's structure and parameter
 *                    counts, 3,504,872 and 11,689,512 with 1000 classes)
 *                    and steps torch.optim.AdamW with the same groups.
 * Every model gets a --classes head (default 1000) and --image-size inputs
 * (default 224; the ViT needs a multiple of 16, the CNNs at least 32); the
 * images are random normal values, the labels uniform. Speed does not
 * depend on the weights.
 *
 * Threads. The engine splits most of its ops over OpenBLAS's thread count,
 * on worker threads of its own (src/finetune/cpu/qt_cpu_parallel.h): the
 * products, in blocks of one single-threaded OpenBLAS call each, the norms,
 * activations, attention, residuals, convolutions (im2col, col2im,
 * depthwise loops, bias gradients) and the optimizer. Pooling, the patch
 * extraction and tokens, squeeze-excitation and the loss still run on the
 * calling thread. This program sets the count with
 * openblas_set_num_threads(T) and PyTorch's with torch.set_num_threads(T).
 *
 * Time is wall-clock seconds per timed step (images/s = batch / that), and
 * next to it the CPU seconds per step of the whole process (all threads):
 * on a shared, loaded machine the wall clock also counts other processes'
 * turns, the CPU time much less, so the CPU ratio is the steadier one.
 *
 * Memory is the peak resident set size (getrusage ru_maxrss) of each
 * process after its timed steps, and next to it the resident size before
 * the model was built (for PyTorch, that is the interpreter and torch's
 * libraries, a few hundred MiB that are not the model's).
 *
 * The reference is tools/engine-reference.py run by /usr/bin/python3
 * (--python: a path, or a name looked up on PATH) as a child process
 * with the same model, batch, threads, classes, image size, warm-up and
 * timed steps; it prints a line "RESULT images_per_s=...
 * peak_rss_kib=... base_rss_kib=... step_s=... cpu_step_s=..." that is
 * parsed here. Without python3, torch (or torchvision for the CNNs) the
 * qtune numbers are printed and the reference is reported unavailable
 * (exit status 0).
 *
 * Device (--device cuda, issue 8): the ViTs move to the GPU with
 * qt_vit_to_backend after qt_vit_init and train there in FP32 (--tf32
 * allows TF32 tensor cores in the matrix products, on both sides; --amp
 * bf16 multiplies in BF16, qt_cuda_set_matmul_precision, against PyTorch
 * under torch.autocast with bfloat16; --amp bf16-fast the same with cuBLAS
 * converting the FP32 operands itself, QT_MATMUL_BF16_FAST); the
 * images and labels go up every step as in training (the images from
 * page-locked memory, as a run's batches; the reference's too, from
 * page-locked tensors), and every timed step ends with
 * qt_cuda_synchronize (the reference with torch.cuda.synchronize). As in
 * a run (qt_run.c), the steps run on a stream of their own and the next
 * step's images go up beside the backward pass and the AdamW step
 * (qt_cuda_upload_async after the loss; the forward waits for them);
 * --no-overlap uploads them in the forward instead. Printed next to the throughput: the model FLOP
 * utilization (vit_forward_flops x 3 per image over the device's peak:
 * NVIDIA's dense FP32, TF32 or BF16 figure for a known name, else
 * --peak-tflops)
 * and device memory: for qtune the memory in use after the steps less
 * that before the model (cudaMemGetInfo: the model, its arena and cuBLAS's
 * workspace), for PyTorch torch.cuda.max_memory_reserved. The CNNs move
 * with qt_cnn_to_backend and step AdamW with the op table's optim_steps,
 * as a run does (qt__cuda_optim_steps: a launch per 40 tensors; moments on
 * the device); their FLOPs are not counted. The per-phase
 * split (forward, loss, backward, AdamW) is host time: on the GPU the
 * backward's work is mostly counted under AdamW, whose end waits for it.
 *
 * --profile: after the timed steps (whose numbers it leaves alone), the
 * model moves to the op table of qt__ops_profile, which times every op
 * (on the GPU each op then waits for its work, so the device's time lands
 * on the op that queued it and nothing overlaps), and takes one step
 * plus --steps profiled steps; printed: each op's calls and milliseconds
 * per step and its share of the ops' time, most first.
 *
 *   usage: engine [--model vit_tiny|vit_small|vit_base|mobilenetv2_100|resnet18]
 *                 [--batch 32] [--threads T] [--warmup 1] [--steps 3]
 *                 [--classes 1000] [--image-size 224] [--device cpu|cuda]
 *                 [--tf32 | --amp bf16|bf16-fast] [--peak-tflops X] [--profile]
 *                 [--rounds 1] [--no-overlap]
 *                 [--python /usr/bin/python3]
 *                 [--reference tools/engine-reference.py] [--no-reference]
 *
 * --rounds R: R rounds, each a fresh qtune model and then a fresh
 * reference process with the same warm-up and timed steps, so that both
 * sides meet the machine's slow changes alike; each round's images/s and
 * ratio are printed, and the table reports each side's median round
 * (the lower middle one for an even R) with the spread of its rounds. One
 * PyTorch run can be far off another on the same GPU (37% apart for
 * ViT-B/16 in BF16 on an H100, docs/benchmarks/). --profile profiles the
 * last round's qtune model.
 *
 * Example (2 threads, a short check): engine --model resnet18 --batch 16
 * --threads 2 --warmup 1 --steps 3
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "finetune/qt_finetune.h"
#include "finetune/qt_finetune_internal.h"

/* CPU seconds of the whole process (every thread, OpenBLAS's included). */
static double cpu_now(void) {
  struct timespec now;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now);
  return (double)now.tv_sec + 1e-9 * (double)now.tv_nsec;
}

static double wall_now(void) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (double)now.tv_sec + 1e-9 * (double)now.tv_nsec;
}

/* The peak resident set size of this process so far, KiB. */
static long peak_rss_kib(void) {
  struct rusage usage;
  if (getrusage(RUSAGE_SELF, &usage) != 0) return -1;
  return usage.ru_maxrss;
}

/* The current resident set size (VmRSS of /proc/self/status), KiB; -1 when
 * it cannot be read. */
static long current_rss_kib(void) {
  FILE *f = fopen("/proc/self/status", "r");
  if (!f) return -1;
  char line[256];
  long kib = -1;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "VmRSS: %ld kB", &kib) == 1) break;
  fclose(f);
  return kib;
}

typedef struct bench_options {
  const char *model;
  long batch, threads, warmup, steps, classes, image_size;
  const char *python, *reference;
  int no_reference;
  qt_backend_kind device;
  qt_matmul_precision precision; /* of the matrix products (CUDA) */
  double peak_tflops;            /* the device's peak for the utilization; 0: from its name */
  int profile;                   /* --profile: time per op after the timed steps */
  long rounds;                   /* --rounds: qtune and the reference, in turn */
  int no_overlap;                /* --no-overlap: each step's images go up in its forward */
} bench_options;

typedef struct bench_result {
  double images_per_s, step_s, cpu_step_s;           /* wall and CPU seconds per step */
  double forward_s, loss_s, backward_s, optimizer_s; /* per step */
  long peak_rss_kib, base_rss_kib;
  double device_mib, device_base_mib; /* CUDA: in use after the steps, before the model */
} bench_result;

/* The ViTs of timm (patch 16): width, depth, heads, MLP features. */
typedef struct vit_shape {
  const char *model, *label;
  long width, depth, heads, mlp_hidden;
} vit_shape;

static const vit_shape vit_shapes[] = {
    {"vit_tiny", "ViT-Ti/16", 192, 12, 3, 768},
    {"vit_small", "ViT-S/16", 384, 12, 6, 1536},
    {"vit_base", "ViT-B/16", 768, 12, 12, 3072},
};

static const vit_shape *find_vit(const char *model) {
  for (size_t i = 0; i < sizeof vit_shapes / sizeof vit_shapes[0]; i++)
    if (strcmp(vit_shapes[i].model, model) == 0) return &vit_shapes[i];
  return NULL;
}

/* Multiply-adds of one image's forward pass, times 2 (FLOPs): the patch
 * embedding, per block the qkv, attention (q k^T and att v), projection
 * and MLP products, and the head; norms, softmax and activations are left
 * out (under 1%). A training step is counted as 3 forward passes (the
 * backward computes two products per forward product), the convention of
 * model FLOP utilization (Chowdhery et al., PaLM, 2022). */
static double vit_forward_flops(const vit_shape *v, long image_size, long classes) {
  double n = (double)(image_size / 16) * (double)(image_size / 16), t = n + 1.0;
  double c = (double)v->width, m = (double)v->mlp_hidden;
  double block = t * c * 3.0 * c + 2.0 * t * t * c + t * c * c + 2.0 * t * c * m;
  return 2.0 * (n * 768.0 * c + (double)v->depth * block + c * (double)classes);
}

/* Dense peak FLOP/s of the known data-center GPUs (NVIDIA's data sheets), by
 * a substring of the device name: FP32, TF32 and BF16 tensor cores without
 * sparsity. 0 when the name is not in the table. */
static double device_peak_tflops(const char *name, qt_matmul_precision precision) {
  static const struct {
    const char *name;
    double fp32, tf32, bf16;
  } table[] = {
      {"H200", 67.0, 494.7, 989.4},     {"H100 80GB HBM3", 67.0, 494.7, 989.4},
      {"H100 SXM", 67.0, 494.7, 989.4}, {"H100 PCIe", 51.2, 378.0, 756.5},
      {"H100 NVL", 60.0, 417.5, 835.5}, {"A100", 19.5, 156.0, 312.0},
  };
  for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
    if (!strstr(name, table[i].name)) continue;
    return precision == QT_MATMUL_BF16 || precision == QT_MATMUL_BF16_FAST ? table[i].bf16
           : precision == QT_MATMUL_TF32                                   ? table[i].tf32
                                                                           : table[i].fp32;
  }
  return 0.0;
}

static const char *precision_words(qt_matmul_precision precision) {
  return precision == QT_MATMUL_BF16        ? "BF16 products (amp), FP32 storage"
         : precision == QT_MATMUL_BF16_FAST ? "BF16 products converted by cuBLAS, FP32 storage"
         : precision == QT_MATMUL_TF32      ? "FP32 products with TF32"
                                            : "FP32 products";
}

/* Device memory in use (all processes), MiB; -1 when it cannot be read. */
static double device_used_mib(void) {
  qt_cuda_info info;
  if (qt_cuda_device_info(&info, NULL) != 0) return -1.0;
  return (double)(info.memory_total - info.memory_free) / 1048576.0;
}

static void usage(const char *argv0) {
  fprintf(stderr,
          "usage: %s [--model vit_tiny|vit_small|vit_base|mobilenetv2_100|resnet18]\n"
          "          [--batch 32] [--threads T] [--warmup 1] [--steps 3] [--classes 1000]\n"
          "          [--image-size 224] [--device cpu|cuda] [--tf32 | --amp bf16|bf16-fast]\n"
          "          [--peak-tflops X] [--profile] [--rounds 1] [--no-overlap]\n"
          "          [--python /usr/bin/python3] [--reference PATH] [--no-reference]\n",
          argv0);
}

static int parse_long(const char *flag, const char *text, long min, long *out) {
  char *end = NULL;
  long value = strtol(text, &end, 10);
  if (!end || *end || end == text || value < min) {
    fprintf(stderr, "%s: expected an integer >= %ld, got '%s'\n", flag, min, text);
    return -1;
  }
  *out = value;
  return 0;
}

/* The reference script next to this source file (CMake passes absolute
 * source paths, so __FILE__ is /.../bench/engine.c), else relative to the
 * working directory. */
static const char *default_reference(char *buf, size_t size) {
  const char *file = __FILE__;
  const char *slash = strrchr(file, '/');
  if (slash && file[0] == '/') {
    snprintf(buf, size, "%.*s/../tools/engine-reference.py", (int)(slash - file), file);
    if (access(buf, R_OK) == 0) return buf;
  }
  return "tools/engine-reference.py";
}

static int is_cnn(const char *model) {
  return strcmp(model, "mobilenetv2_100") == 0 || strcmp(model, "resnet18") == 0;
}

/* On the device the batch goes up from page-locked memory, as a run's
 * batches do (qt_run pins its batch iterators' arrays). Returns 1 when the
 * images are pinned (then qt_cuda_host_unregister before free). */
static int pin_images(int cuda, float *images, size_t bytes) {
  if (!cuda) return 0;
  qt_err err;
  qt_err_clear(&err);
  if (qt_cuda_host_register(images, bytes, &err) == 0) return 1;
  fprintf(stderr, "engine: the images upload from pageable memory (%s)\n", qt_err_message(&err));
  return 0;
}

/* The steps' stream and images on the device, as a run's (qt_run.c): a
 * stream of their own, current while the model steps, and (unless
 * --no-overlap) `staged`, where each step's images are uploaded during the
 * step before (the first step's before it). */
typedef struct device_batch {
  qt_cuda_stream_t *stream, *previous;
  float *staged; /* NULL: each forward uploads the images */
  const float *images;
  size_t bytes;
} device_batch;

static int device_batch_init(device_batch *d, const bench_options *o, const float *images,
                             size_t bytes, qt_err *err) {
  *d = (device_batch){.images = images, .bytes = bytes};
  if (o->device != QT_BACKEND_KIND_CUDA) return 0;
  if (qt_cuda_stream_create(&d->stream, err) != 0) return -1;
  d->previous = qt_cuda_stream_use(d->stream);
  if (o->no_overlap) return 0;
  if (qt_cuda_malloc((void **)&d->staged, bytes, err) != 0) return -1;
  return qt_cuda_upload_async(d->staged, images, bytes, err);
}

static void device_batch_free(device_batch *d) {
  if (!d->stream) return;
  qt_cuda_free(d->staged);
  qt_cuda_stream_use(d->previous);
  qt_cuda_stream_destroy(d->stream);
}

/* The images of this step's forward: the staged ones, once the stream
 * waits for them, or the host's; *staged says which. */
static const float *step_images(const device_batch *d, int *staged, qt_err *err) {
  *staged = d->staged != NULL;
  if (!*staged) return d->images;
  return qt_cuda_upload_wait(err) == 0 ? d->staged : NULL;
}

/* After the loss (the forward is done with the staged images): the next
 * step's go up. */
static int stage_next(const device_batch *d, qt_err *err) {
  return d->staged ? qt_cuda_upload_async(d->staged, d->images, d->bytes, err) : 0;
}

/* Wall seconds of the phases of the steps timed so far. */
typedef struct step_times {
  double forward, loss, backward, optimizer;
} step_times;

/* Adds the phases between the time stamps of one step: forward t0-t1, loss
 * (and zero_grad) t1-t2, backward t2-t3, the optimizer (and the device's
 * wait) t3-t4. */
static void add_phases(step_times *t, double t0, double t1, double t2, double t3, double t4) {
  t->forward += t1 - t0;
  t->loss += t2 - t1;
  t->backward += t3 - t2;
  t->optimizer += t4 - t3;
}

/* One training step of a model: forward, loss, zero_grad, backward and an
 * optimizer step, ending (on a device) with the device's work done; adds
 * each phase's wall seconds to *t. */
typedef int (*step_fn)(void *model, step_times *t, double *loss, qt_err *err);

/* The warm-up and timed steps, and r's times from them. */
static int timed_steps(step_fn step, void *model, const bench_options *o, bench_result *r,
                       double *loss, qt_err *err) {
  step_times t = {0};
  double start = 0, cpu_start = 0;
  for (long k = 0; k < o->warmup + o->steps; k++) {
    if (k == o->warmup) {
      t = (step_times){0};
      start = wall_now();
      cpu_start = cpu_now();
    }
    if (step(model, &t, loss, err) != 0) return -1;
  }
  double seconds = wall_now() - start;
  r->cpu_step_s = (cpu_now() - cpu_start) / (double)o->steps;
  r->images_per_s = (double)(o->batch * o->steps) / seconds;
  r->step_s = seconds / (double)o->steps;
  r->forward_s = t.forward / (double)o->steps;
  r->loss_s = t.loss / (double)o->steps;
  r->backward_s = t.backward / (double)o->steps;
  r->optimizer_s = t.optimizer / (double)o->steps;
  r->peak_rss_kib = peak_rss_kib();
  if (o->device == QT_BACKEND_KIND_CUDA) r->device_mib = device_used_mib();
  return 0;
}

/* The profile table over the backend's ops: on the GPU each op waits for
 * its work. */
static const qt__ops *profile_ops(const bench_options *o) {
  int cuda = o->device == QT_BACKEND_KIND_CUDA;
  return qt__ops_profile(qt__ops_for(o->device), cuda ? qt_cuda_synchronize : NULL);
}

/* --profile: `steps` more steps on the profile table (the model already
 * moved there by the caller), then the time per op. */
static int profiled_steps(step_fn step, void *model, const bench_options *o, double *loss,
                          qt_err *err) {
  step_times t = {0};
  if (step(model, &t, loss, err) != 0) return -1; /* the moved model's first step */
  qt__ops_profile_reset();
  double start = wall_now();
  for (long k = 0; k < o->steps; k++)
    if (step(model, &t, loss, err) != 0) return -1;
  double seconds = wall_now() - start, ops = 0.0, steps = (double)o->steps;
  qt__op_time times[QT__OPS_PROFILE_MAX];
  size_t n = qt__ops_profile_read(times, QT__OPS_PROFILE_MAX);
  for (size_t i = 0; i < n; i++) ops += times[i].seconds;
  printf(
      "\nqtune per op (--profile: %ld more steps, %.4f s each with every op waiting for its "
      "work; the ops %.1f%% of that)\n",
      o->steps, seconds / steps, 100.0 * ops / seconds);
  int width = 24; /* the names' column: the longest name, as the BF16 rows' sets lengthen them */
  for (size_t i = 0; i < n; i++)
    if ((int)strlen(times[i].name) > width) width = (int)strlen(times[i].name);
  printf("%-*s %10s %10s %7s\n", width, "op", "calls/step", "ms/step", "share");
  for (size_t i = 0; i < n; i++)
    printf("%-*s %10.1f %10.3f %6.1f%%\n", width, times[i].name, (double)times[i].calls / steps,
           1e3 * times[i].seconds / steps, 100.0 * times[i].seconds / ops);
  return 0;
}

typedef struct vit_model {
  qt_vit_t *vit;
  device_batch dev;
  const int *labels;
  size_t batch;
  qt_adamw_params hp;
  int cuda;
} vit_model;

static int vit_step(void *model, step_times *t, double *loss, qt_err *err) {
  vit_model *v = model;
  double t0 = wall_now();
  int staged;
  const float *images = step_images(&v->dev, &staged, err);
  if (!images) return -1;
  if ((staged ? qt__vit_forward_staged(v->vit, images, v->batch, err)
              : qt_vit_forward(v->vit, images, v->batch, err)) != 0)
    return -1;
  double t1 = wall_now();
  if (qt_vit_loss(v->vit, v->labels, NULL, 0.0, loss, err) != 0) return -1;
  if (stage_next(&v->dev, err) != 0) return -1;
  qt_vit_zero_grad(v->vit);
  double t2 = wall_now();
  if (qt_vit_backward(v->vit, err) != 0) return -1;
  double t3 = wall_now();
  if (qt_vit_adamw_step(v->vit, &v->hp, err) != 0) return -1;
  /* The forward and the loss wait for the device (they copy the logits
   * and losses back); the backward and the step are queued: wait here. */
  if (v->cuda && qt_cuda_synchronize(err) != 0) return -1;
  add_phases(t, t0, t1, t2, t3, wall_now());
  return 0;
}

static int run_qtune_vit(const bench_options *o, bench_result *r) {
  qt_err err;
  qt_err_clear(&err);
  qt_rng_t *rng = NULL;
  qt_vit_t *vit = NULL;
  float *images = NULL;
  int *labels = NULL;
  int status = 1, pinned = 0;
  vit_model model = {0};
  r->base_rss_kib = current_rss_kib();
  int cuda = o->device == QT_BACKEND_KIND_CUDA;
  if (cuda) {
    qt_cuda_set_matmul_precision(o->precision);
    r->device_base_mib = device_used_mib();
  }
  const vit_shape *shape = find_vit(o->model);
  qt_vit_config config = qt_vit_default_config();
  config.width = shape->width;
  config.depth = shape->depth;
  config.heads = shape->heads;
  config.mlp_hidden = shape->mlp_hidden;
  config.num_classes = o->classes;
  config.image_size = o->image_size;
  if (qt_rng_init(&rng, 0, &err) != 0 ||
      qt_vit_init(&config, (size_t)o->batch, rng, &vit, &err) != 0 ||
      qt_vit_to_backend(vit, o->device, &err) != 0) {
    fprintf(stderr, "engine: %s\n", qt_err_message(&err));
    goto done;
  }
  size_t pixels = 3 * (size_t)config.image_size * (size_t)config.image_size;
  images = malloc((size_t)o->batch * pixels * sizeof *images);
  labels = malloc((size_t)o->batch * sizeof *labels);
  if (!images || !labels) {
    fprintf(stderr, "engine: out of memory for the batch\n");
    goto done;
  }
  for (size_t i = 0; i < (size_t)o->batch * pixels; i++)
    images[i] = (float)qt_rng_gaussian(rng, 1.0);
  for (long i = 0; i < o->batch; i++)
    labels[i] = (int)qt_rng_uniform_int(rng, (uint64_t)o->classes);
  pinned = pin_images(cuda, images, (size_t)o->batch * pixels * sizeof *images);
  model = (vit_model){vit, {0}, labels, (size_t)o->batch, qt_adamw_default_params(), cuda};
  double loss = 0;
  if (device_batch_init(&model.dev, o, images, (size_t)o->batch * pixels * sizeof *images, &err) !=
          0 ||
      timed_steps(vit_step, &model, o, r, &loss, &err) != 0)
    goto fail;
  printf("qtune: %zu parameters, activation arena %.1f MiB, last loss %.4f\n",
         qt_vit_parameter_count(vit), (double)qt_vit_activation_bytes(vit) / 1048576.0, loss);
  if (o->profile && (qt__vit_set_ops(vit, profile_ops(o), &err) != 0 ||
                     profiled_steps(vit_step, &model, o, &loss, &err) != 0))
    goto fail;
  status = 0;
  goto done;
fail:
  fprintf(stderr, "engine: %s\n", qt_err_message(&err));
done:
  device_batch_free(&model.dev);
  if (pinned) qt_cuda_host_unregister(images);
  free(images);
  free(labels);
  qt_vit_free(vit);
  qt_rng_free(rng);
  return status;
}

typedef struct cnn_model {
  qt_cnn_t *cnn;
  device_batch dev;
  const int *labels;
  size_t batch;
  qt_optim_params hp;
  const qt__ops *ops;      /* the model's table: the optimizer step runs on it */
  float *state;            /* (2 * trainable parameters) AdamW moments, on the model's backend */
  qt__optim_slice *slices; /* (tensors) the step's trainable tensors, as a run hands them over */
  long step;               /* AdamW steps taken */
  int cuda;
} cnn_model;

static int cnn_step(void *model, step_times *t, double *loss, qt_err *err) {
  cnn_model *c = model;
  double t0 = wall_now();
  int staged;
  const float *images = step_images(&c->dev, &staged, err);
  if (!images) return -1;
  if ((staged ? qt__cnn_forward_staged(c->cnn, images, c->batch, QT_BATCHNORM_MODE_TRAIN, err)
              : qt_cnn_forward(c->cnn, images, c->batch, QT_BATCHNORM_MODE_TRAIN, err)) != 0)
    return -1;
  double t1 = wall_now();
  if (qt_cnn_loss(c->cnn, c->labels, NULL, 0.0, loss, err) != 0) return -1;
  if (stage_next(&c->dev, err) != 0) return -1;
  qt_cnn_zero_grad(c->cnn);
  double t2 = wall_now();
  if (qt_cnn_backward(c->cnn, err) != 0) return -1;
  double t3 = wall_now();
  c->step++;
  float *moments = c->state;
  size_t count = 0;
  for (size_t i = 0; i < qt_cnn_tensor_count(c->cnn); i++) {
    qt_cnn_tensor p;
    qt_cnn_tensor_at(c->cnn, i, &p);
    if (!p.trainable) continue;
    c->slices[count++] = (qt__optim_slice){p.data,  p.grad,   moments, moments + p.numel,
                                           p.numel, c->hp.lr, c->step, p.decay};
    moments += 2 * p.numel;
  }
  if (c->ops->optim_steps(&c->hp, c->slices, count, err) != 0) return -1;
  if (c->cuda && qt_cuda_synchronize(err) != 0) return -1;
  add_phases(t, t0, t1, t2, t3, wall_now());
  return 0;
}

/* The same for a CNN of qt_cnn_arch.c: written to a temporary file, loaded,
 * then forward (TRAIN), loss, zero_grad, backward and an AdamW step of
 * every trainable tensor (the backend's optim_steps, as a run's) per step. */
static int run_qtune_cnn(const bench_options *o, bench_result *r) {
  qt_err err;
  qt_err_clear(&err);
  qt_rng_t *rng = NULL;
  qt_cnn_t *cnn = NULL;
  float *images = NULL;
  int *labels = NULL;
  int status = 1, pinned = 0;
  const qt__ops *ops = qt__ops_for(o->device);
  cnn_model model = {.ops = ops, .hp = qt_optim_default_params()}; /* AdamW, wd 0.01 */
  char dir[] = "/tmp/qtune-engine-XXXXXX", path[64] = "";
  r->base_rss_kib = current_rss_kib();
  if (!mkdtemp(dir)) {
    perror("engine: mkdtemp");
    return 1;
  }
  snprintf(path, sizeof path, "%s/model.safetensors", dir);
  qt_cnn_load_params lp = qt_cnn_default_load_params();
  lp.image_size = o->image_size;
  lp.max_batch = (size_t)o->batch;
  int rc = qt_cnn_arch_family(o->model, &lp.family, &err);
  if (!rc) rc = qt_cnn_write_init(o->model, o->classes, 0, path, &err);
  if (!rc) rc = qt_cnn_load(path, &lp, &cnn, &err);
  remove(path);
  rmdir(dir);
  int cuda = o->device == QT_BACKEND_KIND_CUDA;
  if (cuda) {
    qt_cuda_set_matmul_precision(o->precision);
    r->device_base_mib = device_used_mib();
  }
  if (!rc) rc = qt_cnn_to_backend(cnn, o->device, &err);
  if (!rc) rc = qt_rng_init(&rng, 0, &err);
  if (rc) {
    fprintf(stderr, "engine: %s\n", qt_err_message(&err));
    goto done;
  }
  size_t params = 0;
  for (size_t i = 0; i < qt_cnn_tensor_count(cnn); i++) {
    qt_cnn_tensor t;
    qt_cnn_tensor_at(cnn, i, &t);
    if (t.trainable) params += t.numel;
  }
  /* The moments live where the model does. */
  size_t state_bytes = 2 * params * sizeof(float);
  if (ops->alloc((void **)&model.state, state_bytes, &err) != 0 ||
      ops->zero(model.state, state_bytes, &err) != 0)
    goto fail;
  if (!(model.slices = calloc(qt_cnn_tensor_count(cnn) + 1, sizeof *model.slices))) {
    fprintf(stderr, "engine: out of memory for the optimizer's slices\n");
    goto done;
  }
  size_t pixels = 3 * (size_t)o->image_size * (size_t)o->image_size;
  images = malloc((size_t)o->batch * pixels * sizeof *images);
  labels = malloc((size_t)o->batch * sizeof *labels);
  if (!images || !labels) {
    fprintf(stderr, "engine: out of memory for the batch\n");
    goto done;
  }
  for (size_t i = 0; i < (size_t)o->batch * pixels; i++)
    images[i] = (float)qt_rng_gaussian(rng, 1.0);
  for (long i = 0; i < o->batch; i++)
    labels[i] = (int)qt_rng_uniform_int(rng, (uint64_t)o->classes);
  pinned = pin_images(cuda, images, (size_t)o->batch * pixels * sizeof *images);
  model.cnn = cnn;
  model.labels = labels;
  model.batch = (size_t)o->batch;
  model.cuda = cuda;
  double loss = 0;
  if (device_batch_init(&model.dev, o, images, (size_t)o->batch * pixels * sizeof *images, &err) !=
          0 ||
      timed_steps(cnn_step, &model, o, r, &loss, &err) != 0)
    goto fail;
  printf("qtune: %zu parameters, last loss %.4f\n", params, loss);
  if (o->profile) {
    model.ops = profile_ops(o);
    if (qt__cnn_set_ops(cnn, model.ops, &err) != 0 ||
        profiled_steps(cnn_step, &model, o, &loss, &err) != 0)
      goto fail;
  }
  status = 0;
  goto done;
fail:
  fprintf(stderr, "engine: %s\n", qt_err_message(&err));
done:
  device_batch_free(&model.dev);
  if (pinned) qt_cuda_host_unregister(images);
  free(images);
  free(labels);
  ops->release(model.state);
  free(model.slices);
  qt_cnn_free(cnn);
  qt_rng_free(rng);
  return status;
}

/* The program `name` names: itself when it has a slash, else the first
 * executable of that name in a directory of PATH (as the shell finds it).
 * 0 with path filled, -1 when there is none. */
static int find_program(const char *name, char *path, size_t size) {
  if (strchr(name, '/'))
    return (size_t)snprintf(path, size, "%s", name) < size && access(path, X_OK) == 0 ? 0 : -1;
  const char *dirs = getenv("PATH");
  while (dirs && *dirs) {
    size_t len = strcspn(dirs, ":");
    /* An empty entry is the current directory. */
    int n = len ? snprintf(path, size, "%.*s/%s", (int)len, dirs, name)
                : snprintf(path, size, "./%s", name);
    if (n > 0 && (size_t)n < size && access(path, X_OK) == 0) return 0;
    dirs += len + (dirs[len] == ':');
  }
  return -1;
}

/* Runs the PyTorch reference; 0 with r filled, -1 when it is unavailable
 * (reason in why). */
static int run_reference(const bench_options *o, bench_result *r, char *why, size_t why_size) {
  char python[1024];
  if (find_program(o->python, python, sizeof python) != 0) {
    snprintf(why, why_size, "%s not found", o->python);
    return -1;
  }
  if (access(o->reference, R_OK) != 0) {
    snprintf(why, why_size, "%s not found", o->reference);
    return -1;
  }
  if (strchr(python, '\'') || strchr(o->reference, '\'')) {
    snprintf(why, why_size, "paths with a quote are not supported");
    return -1;
  }
  char command[4096];
  int length = snprintf(
      command, sizeof command,
      "'%s' '%s' --model %s --batch %ld --threads %ld --warmup %ld --steps %ld --classes %ld "
      "--image-size %ld --device %s%s",
      python, o->reference, o->model, o->batch, o->threads, o->warmup, o->steps, o->classes,
      o->image_size, qt_backend_kind_name(o->device),
      o->precision == QT_MATMUL_BF16 || o->precision == QT_MATMUL_BF16_FAST ? " --amp bf16"
      : o->precision == QT_MATMUL_TF32                                      ? " --tf32"
                                                                            : "");
  if (length < 0 || (size_t)length >= sizeof command) {
    snprintf(why, why_size, "the reference's command is too long");
    return -1;
  }
  /* The child's OpenMP and OpenBLAS pools get the same thread count. */
  char threads[32];
  snprintf(threads, sizeof threads, "%ld", o->threads);
  setenv("OMP_NUM_THREADS", threads, 1);
  setenv("OPENBLAS_NUM_THREADS", threads, 1);
  printf("reference: %s\n", command);
  fflush(stdout);
  FILE *pipe = popen(command, "r");
  if (!pipe) {
    snprintf(why, why_size, "cannot start %.200s", python);
    return -1;
  }
  char line[512];
  int found = 0;
  while (fgets(line, sizeof line, pipe)) {
    if (sscanf(line,
               "RESULT images_per_s=%lf peak_rss_kib=%ld base_rss_kib=%ld step_s=%lf "
               "cpu_step_s=%lf device_mib=%lf",
               &r->images_per_s, &r->peak_rss_kib, &r->base_rss_kib, &r->step_s, &r->cpu_step_s,
               &r->device_mib) == 6)
      found = 1;
  }
  int rc = pclose(pipe);
  if (rc != 0) {
    snprintf(why, why_size,
             "the reference failed (exit status %d, its error above; it needs Debian's "
             "python3-torch, and python3-torchvision for the CNNs)",
             WIFEXITED(rc) ? WEXITSTATUS(rc) : -1);
    return -1;
  }
  if (!found) {
    snprintf(why, why_size, "the reference printed no RESULT line");
    return -1;
  }
  return 0;
}

/* The round of median images/s (the lower middle one of an even count). */
static int by_rate(const void *a, const void *b) {
  double x = ((const bench_result *)a)->images_per_s, y = ((const bench_result *)b)->images_per_s;
  return (x > y) - (x < y);
}

static bench_result median_round(const bench_result *rounds, long count) {
  bench_result *sorted = malloc((size_t)count * sizeof *sorted);
  if (!sorted) return rounds[0];
  memcpy(sorted, rounds, (size_t)count * sizeof *sorted);
  qsort(sorted, (size_t)count, sizeof *sorted, by_rate);
  bench_result median = sorted[(count - 1) / 2];
  free(sorted);
  return median;
}

static double lowest_rate(const bench_result *rounds, long count) {
  double rate = rounds[0].images_per_s;
  for (long i = 1; i < count; i++)
    if (rounds[i].images_per_s < rate) rate = rounds[i].images_per_s;
  return rate;
}

static double highest_rate(const bench_result *rounds, long count) {
  double rate = rounds[0].images_per_s;
  for (long i = 1; i < count; i++)
    if (rounds[i].images_per_s > rate) rate = rounds[i].images_per_s;
  return rate;
}

int main(int argc, char **argv) {
  bench_options o = {
      "vit_tiny",     32,  0, 1, 3, 1000, 224, "/usr/bin/python3", NULL, 0, QT_BACKEND_KIND_CPU,
      QT_MATMUL_FP32, 0.0, 0, 1, 0};
  char reference_buf[4096];
  for (int i = 1; i < argc; i++) {
    const char *flag = argv[i];
    if (!strcmp(flag, "--no-reference")) {
      o.no_reference = 1;
      continue;
    }
    if (!strcmp(flag, "--tf32")) {
      o.precision = QT_MATMUL_TF32;
      continue;
    }
    if (!strcmp(flag, "--profile")) {
      o.profile = 1;
      continue;
    }
    if (!strcmp(flag, "--no-overlap")) {
      o.no_overlap = 1;
      continue;
    }
    if (!strcmp(flag, "--help") || !strcmp(flag, "-h")) {
      usage(argv[0]);
      return 0;
    }
    if (i + 1 >= argc) {
      usage(argv[0]);
      return 1;
    }
    const char *value = argv[++i];
    int bad = 0;
    if (!strcmp(flag, "--model"))
      o.model = value;
    else if (!strcmp(flag, "--batch"))
      bad = parse_long(flag, value, 1, &o.batch);
    else if (!strcmp(flag, "--threads"))
      bad = parse_long(flag, value, 1, &o.threads);
    else if (!strcmp(flag, "--warmup"))
      bad = parse_long(flag, value, 0, &o.warmup);
    else if (!strcmp(flag, "--steps"))
      bad = parse_long(flag, value, 1, &o.steps);
    else if (!strcmp(flag, "--rounds"))
      bad = parse_long(flag, value, 1, &o.rounds);
    else if (!strcmp(flag, "--classes"))
      bad = parse_long(flag, value, 1, &o.classes);
    else if (!strcmp(flag, "--image-size"))
      bad = parse_long(flag, value, 1, &o.image_size);
    else if (!strcmp(flag, "--python"))
      o.python = value;
    else if (!strcmp(flag, "--reference"))
      o.reference = value;
    else if (!strcmp(flag, "--device")) {
      qt_err err;
      if (qt_backend_kind_parse(value, &o.device, &err) != 0) {
        fprintf(stderr, "--device: %s\n", qt_err_message(&err));
        return 1;
      }
    } else if (!strcmp(flag, "--amp")) {
      bad = strcmp(value, "bf16") != 0 && strcmp(value, "bf16-fast") != 0;
      if (bad) fprintf(stderr, "--amp: bf16 or bf16-fast, got '%s'\n", value);
      o.precision = strcmp(value, "bf16-fast") == 0 ? QT_MATMUL_BF16_FAST : QT_MATMUL_BF16;
    } else if (!strcmp(flag, "--peak-tflops")) {
      char *end = NULL;
      o.peak_tflops = strtod(value, &end);
      bad = !end || *end || !(o.peak_tflops > 0);
      if (bad) fprintf(stderr, "--peak-tflops: expected a positive number, got '%s'\n", value);
    } else {
      usage(argv[0]);
      return 1;
    }
    if (bad) return 1;
  }
  if (!find_vit(o.model) && !is_cnn(o.model)) {
    fprintf(stderr,
            "engine: model '%s' is not supported: vit_tiny, vit_small, vit_base, mobilenetv2_100 "
            "or resnet18\n",
            o.model);
    return 1;
  }
  qt_err device_err;
  if (qt_backend_kind_check(o.device, &device_err) != 0) {
    fprintf(stderr, "engine: --device %s: %s\n", qt_backend_kind_name(o.device),
            qt_err_message(&device_err));
    return 1;
  }
  if (is_cnn(o.model) ? o.image_size < 32 : o.image_size % 16 != 0) {
    fprintf(stderr, "engine: --image-size %ld: %s\n", o.image_size,
            is_cnn(o.model) ? "the CNNs need at least 32" : "the ViT needs a multiple of 16");
    return 1;
  }
  if (o.threads == 0) {
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    o.threads = online > 0 ? online : 1;
  }
  if (!o.reference) o.reference = default_reference(reference_buf, sizeof reference_buf);
  openblas_set_num_threads((int)o.threads);

  double load[3] = {0, 0, 0};
  if (getloadavg(load, 3) < 0) load[0] = load[1] = load[2] = -1;
  if (is_cnn(o.model))
    printf(
        "%s %ld px (qt_cnn_write_init, TRAIN batch norm), %ld classes, batch %ld, %ld threads "
        "(OpenBLAS %d), %ld warm-up + %ld timed steps of forward, backward, AdamW\n",
        o.model, o.image_size, o.classes, o.batch, o.threads, openblas_get_num_threads(), o.warmup,
        o.steps);
  else
    printf(
        "%s %ld px (random init), %ld classes, batch %ld, %ld threads "
        "(OpenBLAS %d), %ld warm-up + %ld timed steps of forward, backward, AdamW\n",
        find_vit(o.model)->label, o.image_size, o.classes, o.batch, o.threads,
        openblas_get_num_threads(), o.warmup, o.steps);
  qt_cuda_info info = {0};
  if (o.device == QT_BACKEND_KIND_CUDA) {
    if (qt_cuda_device_info(&info, &device_err) != 0) {
      fprintf(stderr, "engine: %s\n", qt_err_message(&device_err));
      return 1;
    }
    if (o.peak_tflops == 0) o.peak_tflops = device_peak_tflops(info.name, o.precision);
    printf("device: %s (compute %d.%d, %d SMs, %.0f MiB), %s, peak %.1f TFLOP/s%s\n", info.name,
           info.major, info.minor, info.multiprocessors, (double)info.memory_total / 1048576.0,
           precision_words(o.precision), o.peak_tflops,
           o.peak_tflops > 0 ? "" : " (unknown: give --peak-tflops)");
    if (is_cnn(o.model)) {
      /* This loads cuDNN (host memory: peak RSS) only where the run could
       * use it. */
      char path[512];
      qt_cuda_describe_convolutions(o.precision, path, sizeof path);
      printf("convolutions: %s\n", path);
    }
  }
  printf("load average before: %.2f %.2f %.2f\n", load[0], load[1], load[2]);
  fflush(stdout);

  bench_result *qs = calloc((size_t)o.rounds, sizeof *qs);
  bench_result *ts = calloc((size_t)o.rounds, sizeof *ts);
  if (!qs || !ts) {
    fprintf(stderr, "engine: out of memory\n");
    return 1;
  }
  char why[512] = "skipped (--no-reference)";
  int have_reference = !o.no_reference;
  for (long round = 0; round < o.rounds; round++) {
    bench_options this_round = o;
    this_round.profile = o.profile && round == o.rounds - 1;
    bench_result *q = &qs[round], *t = &ts[round];
    if ((is_cnn(o.model) ? run_qtune_cnn(&this_round, q) : run_qtune_vit(&this_round, q)) != 0)
      return 1;
    printf("qtune per step: forward %.3f s, loss %.3f s, backward %.3f s, AdamW %.3f s\n",
           q->forward_s, q->loss_s, q->backward_s, q->optimizer_s);
    fflush(stdout);
    /* A reference that failed once is not tried again. */
    if (have_reference) have_reference = run_reference(&o, t, why, sizeof why) == 0;
    if (o.rounds > 1) {
      printf("round %ld of %ld: qtune %.2f images/s", round + 1, o.rounds, q->images_per_s);
      if (have_reference)
        printf(", PyTorch %.2f images/s, ratio %.2fx", t->images_per_s,
               q->images_per_s / t->images_per_s);
      printf("\n");
      fflush(stdout);
    }
  }
  bench_result q = median_round(qs, o.rounds), t = median_round(ts, o.rounds);
  if (o.rounds > 1) {
    printf("\nmedian of %ld rounds; images/s over the rounds: qtune %.2f to %.2f", o.rounds,
           lowest_rate(qs, o.rounds), highest_rate(qs, o.rounds));
    if (have_reference)
      printf(", PyTorch %.2f to %.2f", lowest_rate(ts, o.rounds), highest_rate(ts, o.rounds));
    printf("\n");
  }
  free(qs);
  free(ts);

  printf("\n%-10s %10s %10s %12s %14s %14s\n", "", "images/s", "s/step", "CPU s/step",
         "peak RSS MiB", "base RSS MiB");
  printf("%-10s %10.2f %10.3f %12.3f %14.1f %14.1f\n", "qtune", q.images_per_s, q.step_s,
         q.cpu_step_s, (double)q.peak_rss_kib / 1024.0, (double)q.base_rss_kib / 1024.0);
  if (have_reference) {
    printf("%-10s %10.2f %10.3f %12.3f %14.1f %14.1f\n", "PyTorch", t.images_per_s, t.step_s,
           t.cpu_step_s, (double)t.peak_rss_kib / 1024.0, (double)t.base_rss_kib / 1024.0);
  }
  if (o.device == QT_BACKEND_KIND_CUDA && is_cnn(o.model)) {
    printf("\n%-10s %22s\n", "", "device memory MiB");
    printf("%-10s %22.0f   (in use after the steps, less %.0f before the model)\n", "qtune",
           q.device_mib - q.device_base_mib, q.device_base_mib);
    if (have_reference)
      printf("%-10s %22.0f   (torch.cuda.max_memory_reserved)\n", "PyTorch", t.device_mib);
  } else if (o.device == QT_BACKEND_KIND_CUDA) {
    /* The model FLOP utilization of the ViTs (not counted for the CNNs). */
    const vit_shape *v = find_vit(o.model);
    double step_flops = 3.0 * vit_forward_flops(v, o.image_size, o.classes);
    printf("\nmodel FLOPs per training image %.3g (3 x forward)\n", step_flops);
    printf("%-10s %12s %10s %22s\n", "", "TFLOP/s", "MFU", "device memory MiB");
    printf("%-10s %12.2f %9.1f%% %22.0f   (in use after the steps, less %.0f before the model)\n",
           "qtune", step_flops * q.images_per_s / 1e12,
           o.peak_tflops > 0 ? 100.0 * step_flops * q.images_per_s / (o.peak_tflops * 1e12) : 0.0,
           q.device_mib - q.device_base_mib, q.device_base_mib);
    if (have_reference)
      printf("%-10s %12.2f %9.1f%% %22.0f   (torch.cuda.max_memory_reserved)\n", "PyTorch",
             step_flops * t.images_per_s / 1e12,
             o.peak_tflops > 0 ? 100.0 * step_flops * t.images_per_s / (o.peak_tflops * 1e12) : 0.0,
             t.device_mib);
  }
  if (have_reference) {
    double q_model = (double)(q.peak_rss_kib - q.base_rss_kib);
    double t_model = (double)(t.peak_rss_kib - t.base_rss_kib);
    printf(
        "qtune/PyTorch: throughput %.2fx wall, %.2fx CPU time (target >= 1.0x); "
        "peak memory %.2fx, peak above base %.2fx (lower is better)\n",
        q.images_per_s / t.images_per_s, t.cpu_step_s / q.cpu_step_s,
        (double)q.peak_rss_kib / (double)t.peak_rss_kib, t_model > 0 ? q_model / t_model : 0.0);
  } else {
    printf("PyTorch reference unavailable: %s\n", why);
  }
  if (getloadavg(load, 3) >= 0)
    printf("load average after: %.2f %.2f %.2f\n", load[0], load[1], load[2]);
  return 0;
}
