/* Runs a dyninfer runtime artefact (engine.save(path, format="runtime")) with libdyninfer_rt: no
 * torch, no Python, plain C.
 *
 *   dyninfer_run_c MODEL                       load and verify, run one all-zero sample, print a summary
 *   dyninfer_run_c MODEL INPUT.f32 BATCH OUT   run BATCH samples read as raw float32 (B, C, H, W);
 *                                              write OUT.logits.f32 and OUT.path.f32 (raw float32)
 *
 * Exit status 0 on success, 2 with a one-line message on stderr for a bad artefact or input. */
#include <dyninfer_rt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char* what) {
  fprintf(stderr, "dyninfer_run_c: %s\n", what);
  return 2;
}

static int write_file(const char* prefix, const char* suffix, const float* data, size_t n) {
  char name[4096];
  snprintf(name, sizeof name, "%s%s", prefix, suffix);
  FILE* f = fopen(name, "wb");
  if (!f || fwrite(data, sizeof(float), n, f) != n) {
    if (f) fclose(f);
    return 1;
  }
  return fclose(f) != 0;
}

int main(int argc, char** argv) {
  if (argc != 2 && argc != 5) {
    fprintf(stderr, "usage: %s MODEL [INPUT.f32 BATCH OUT_PREFIX]\n", argv[0]);
    return 2;
  }
  dyninfer_model* m = dyninfer_load_file(argv[1], 1);
  if (!m) return fail(dyninfer_last_error());
  int64_t shape[3];
  dyninfer_input_shape(m, shape);
  const int64_t in_n = shape[0] * shape[1] * shape[2];
  const int64_t out_n = dyninfer_output_numel(m), path_n = dyninfer_path_len(m);
  long batch = 1;
  if (argc == 5) {
    char* end = NULL;
    batch = strtol(argv[3], &end, 10);
    if (!end || *end || batch < 1 || batch > 1000000) {
      dyninfer_free(m);
      return fail("BATCH must be a positive integer");
    }
  }
  float* x = calloc((size_t)(batch * in_n), sizeof(float));
  float* logits = malloc(sizeof(float) * (size_t)(batch * out_n));
  float* path = malloc(sizeof(float) * (size_t)(batch * (path_n > 0 ? path_n : 1)));
  int rc = 0;
  if (!x || !logits || !path) {
    rc = fail("out of memory");
    goto done;
  }
  if (argc == 5) {
    FILE* f = fopen(argv[2], "rb");
    if (!f) {
      rc = fail("cannot open the input file");
      goto done;
    }
    const size_t got = fread(x, sizeof(float), (size_t)(batch * in_n), f);
    const int extra = fgetc(f) != EOF;
    fclose(f);
    if (got != (size_t)(batch * in_n) || extra) {
      rc = fail("the input file does not hold BATCH x C x H x W float32 values");
      goto done;
    }
  }
  if (dyninfer_run(m, x, batch, logits, path, 1) != 0) {
    rc = fail(dyninfer_last_error());
    goto done;
  }
  if (argc == 5) {
    if (write_file(argv[4], ".logits.f32", logits, (size_t)(batch * out_n)) ||
        write_file(argv[4], ".path.f32", path, (size_t)(batch * path_n))) {
      rc = fail("cannot write the output files");
      goto done;
    }
  }
  double kept = 0;
  for (int64_t i = 0; i < path_n; ++i) kept += path[i];
  printf("model %s: input %lld x %lld x %lld, %lld logits, %lld gated channels (sample 0 keeps %.0f), isa %s, "
         "precision %s, sha256 %.16s...\n",
         argv[1], (long long)shape[0], (long long)shape[1], (long long)shape[2], (long long)out_n,
         (long long)path_n, kept, dyninfer_isa(), dyninfer_precision(m), dyninfer_digest(m));
done:
  free(x);
  free(logits);
  free(path);
  dyninfer_free(m);
  return rc;
}
