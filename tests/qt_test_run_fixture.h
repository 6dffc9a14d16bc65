/*
 * qt_test_run_fixture.h - a run spec on small real data for the tests of
 * runs on a backend (test_run_backend, test_gpu_run_backend): 8x8 pattern
 * images of three classes (qt_test_patterns, 8 per class, a quarter for
 * validation) and a tiny random ViT (width 8, depth 2, 2 heads, a 5-class
 * head the run replaces) written once to a temporary checkpoint; and for
 * the MLP, a CSV of 48 rows of 5 features in three classes with an MLP
 * checkpoint (width 8, depth 3, LayerNorm, GELU, a 5-class head the run
 * replaces). Include after qt_test.h and qt_test_patterns.h.
 */
#ifndef QT_TEST_RUN_FIXTURE_H
#define QT_TEST_RUN_FIXTURE_H

#include <stdio.h>
#include <unistd.h>

static qt_data_splits run_fixture_splits;
static char run_fixture_vit_path[256];
static qt_data_splits run_fixture_mlp_splits;
static char run_fixture_mlp_path[256];

/* The ViT run spec: AdamW at 3e-3, 4 planned epochs, batch 6, seed 5. */
static inline qt_run_spec run_fixture_vit_spec(void) {
  if (!run_fixture_splits.train) {
    qt_dataset *all = qt_test_patterns(8, 7);
    CU_ASSERT_FATAL(qt_dataset_split(all, 0.25, 0.0, 3, &run_fixture_splits.train,
                                     &run_fixture_splits.val, NULL, NULL) == 0);
    qt_dataset_free(all);
    qt_vit_config c = qt_vit_default_config();
    c.image_size = 8;
    c.patch_size = 4;
    c.width = 8;
    c.depth = 2;
    c.heads = 2;
    c.mlp_hidden = 16;
    c.num_classes = 5;
    qt_rng_t *rng = NULL;
    CU_ASSERT_FATAL(qt_rng_init(&rng, 11, NULL) == 0);
    qt_vit_t *vit = NULL;
    CU_ASSERT_FATAL(qt_vit_init(&c, 4, rng, &vit, NULL) == 0);
    qt_test_temp_path("pretrained.safetensors", run_fixture_vit_path, sizeof run_fixture_vit_path);
    CU_ASSERT_FATAL(qt_vit_save(vit, run_fixture_vit_path, NULL) == 0);
    qt_vit_free(vit);
    qt_rng_free(rng);
  }
  qt_run_spec s = qt_run_default_spec();
  s.checkpoint = run_fixture_vit_path;
  s.family = QT_MODEL_FAMILY_VIT;
  s.heads = 2;
  for (int c = 0; c < 3; c++) s.mean[c] = s.std[c] = 0.5;
  s.data = &run_fixture_splits;
  s.epochs = 4;
  s.batch_size = 6;
  s.seed = 5;
  s.optim.lr = 3e-3;
  return s;
}

/* The ViT spec with most of a pipeline on: L2-SP (sp_reg 0.01) and SFA,
 * clipping at 0.5, layer decay 0.8, half of the blocks frozen, mixup 0.4,
 * head dropout 0.2 (label smoothing stays the default 0.1). */
static inline qt_run_spec run_fixture_vit_pipeline_spec(void) {
  qt_run_spec s = run_fixture_vit_spec();
  s.optim.sp_reg = 0.01;
  s.optim.clip_grad = 0.5;
  s.optim.layer_decay = 0.8;
  s.pct_to_freeze = 0.5;
  s.sfa = 1;
  s.mixup = 0.4;
  s.drop = 0.2;
  return s;
}

/* The same spec on a CNN fixture of tests/fixtures/cnn/ at 32 px. */
static inline qt_run_spec run_fixture_cnn_spec(const char *checkpoint, qt_model_family family) {
  qt_run_spec s = run_fixture_vit_spec();
  s.checkpoint = checkpoint;
  s.family = family;
  s.heads = 0;
  s.image_size = 32;
  return s;
}

/* The spec of an MLP run on the tabular fixture (AdamW at 3e-3, 4 planned
 * epochs, batch 6, seed 5, as the ViT's). The class of a row is which of
 * three fixed directions its features lie along most, drawn by an LCG. */
static inline qt_run_spec run_fixture_mlp_spec(void) {
  if (!run_fixture_mlp_splits.train) {
    char csv[256];
    qt_test_temp_path("tabular.csv", csv, sizeof csv);
    FILE *f = fopen(csv, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fprintf(f, "a,b,c,d,e,label\n");
    unsigned long long state = 12345;
    for (int row = 0; row < 48; row++) {
      double x[5];
      for (int j = 0; j < 5; j++) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        x[j] = (double)(state >> 11) / 9007199254740992.0 * 4.0 - 2.0;
      }
      double score[3] = {x[0] + x[1], x[2] - x[3], x[4] - x[0]};
      int label = score[1] > score[0] ? 1 : 0;
      if (score[2] > score[label]) label = 2;
      fprintf(f, "%.4f,%.4f,%.4f,%.4f,%.4f,%d\n", 10.0 * x[0], x[1], x[2], x[3], x[4], label);
    }
    fclose(f);
    qt_dataset *all = NULL;
    CU_ASSERT_FATAL(qt_dataset_load_csv(csv, NULL, NULL, 0, &all, NULL) == 0);
    CU_ASSERT_FATAL(qt_dataset_split(all, 0.25, 0.0, 3, &run_fixture_mlp_splits.train,
                                     &run_fixture_mlp_splits.val, NULL, NULL) == 0);
    qt_dataset_free(all);
    unlink(csv);
    qt_mlp_arch a = qt_mlp_default_arch();
    a.n_features = 5;
    a.width = 8;
    a.depth = 3;
    a.num_classes = 5;
    a.activation = QT_MLP_ACTIVATION_GELU;
    qt_test_temp_path("pretrained-mlp.safetensors", run_fixture_mlp_path,
                      sizeof run_fixture_mlp_path);
    CU_ASSERT_FATAL(qt_mlp_write_init(&a, 13, run_fixture_mlp_path, NULL) == 0);
  }
  qt_run_spec s = run_fixture_vit_spec();
  s.checkpoint = run_fixture_mlp_path;
  s.family = QT_MODEL_FAMILY_MLP;
  s.heads = 0;
  for (int c = 0; c < 3; c++) {
    s.mean[c] = 0.0;
    s.std[c] = 1.0;
  }
  s.data = &run_fixture_mlp_splits;
  return s;
}

/* The MLP spec with most of a pipeline on: L2-SP (sp_reg 0.01), clipping at
 * 0.5, half of the blocks frozen, mixup 0.4, head dropout 0.2 and BSS
 * (0.01: the feature hook). */
static inline qt_run_spec run_fixture_mlp_pipeline_spec(void) {
  qt_run_spec s = run_fixture_mlp_spec();
  s.optim.sp_reg = 0.01;
  s.optim.clip_grad = 0.5;
  s.pct_to_freeze = 0.5;
  s.mixup = 0.4;
  s.drop = 0.2;
  s.bss_reg = 0.01;
  return s;
}

static inline void run_fixture_free(void) {
  qt_data_splits_free(&run_fixture_splits);
  qt_data_splits_free(&run_fixture_mlp_splits);
}

#endif /* QT_TEST_RUN_FIXTURE_H */
