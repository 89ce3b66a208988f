/* libdyninfer_rt: the dyninfer runtime behind a C API. No torch, no Python.
 *
 *   dyninfer_model* m = dyninfer_load_file("model.dyninfer", 1);
 *   if (!m) { fprintf(stderr, "%s\n", dyninfer_last_error()); return 1; }
 *   dyninfer_run(m, x, batch, logits, path_or_NULL, 1);
 *   dyninfer_free(m);
 *
 * Functions that fail return NULL or a non-zero status and set a message that
 * dyninfer_last_error() returns (per thread, valid until the next call on that thread).
 * A model may be run from several threads at once. */
#ifndef DYNINFER_RT_H
#define DYNINFER_RT_H

#include <stddef.h>
#include <stdint.h>

#if defined(DYNINFER_RT_BUILD)
#define DYNINFER_API __attribute__((visibility("default")))
#else
#define DYNINFER_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dyninfer_model dyninfer_model;

/* verify: 1 checks the artefact's sha256 digest (0 skips only that; every structural check runs). */
DYNINFER_API dyninfer_model* dyninfer_load_file(const char* path, int verify);
DYNINFER_API dyninfer_model* dyninfer_load_bytes(const void* data, size_t size, int verify);
DYNINFER_API void dyninfer_free(dyninfer_model* model);

/* One sample's input is C x H x W float32; shape[0..2] receives C, H, W. */
DYNINFER_API int dyninfer_input_shape(const dyninfer_model* model, int64_t shape[3]);
DYNINFER_API int64_t dyninfer_output_numel(const dyninfer_model* model); /* logits per sample */
DYNINFER_API int64_t dyninfer_path_len(const dyninfer_model* model);     /* gate decisions per sample */
DYNINFER_API const char* dyninfer_digest(const dyninfer_model* model);   /* lower-case hex sha256 */
DYNINFER_API const char* dyninfer_isa(void);                             /* kernels this CPU dispatches to */
/* "fp32" or "bf16": the precision the model runs in. It starts as the artefact's ("precision"
 * metadata, fp32 when absent) where this CPU supports it, else fp32. */
DYNINFER_API const char* dyninfer_precision(const dyninfer_model* model);
/* Switch to "fp32" or "bf16" (bf16 needs avx512_bf16 and the AVX-512 kernels). Returns 0, or 1 with
 * dyninfer_last_error() naming the reason (the model is unchanged). Not while another thread runs it. */
DYNINFER_API int dyninfer_set_precision(dyninfer_model* model, const char* precision);

/* x: batch x C x H x W contiguous float32; logits: batch x output_numel; path: batch x path_len
 * (0.0 / 1.0 per gated channel) or NULL. threads <= 0: every core. Returns 0 on success. */
DYNINFER_API int dyninfer_run(const dyninfer_model* model, const float* x, int64_t batch, float* logits, float* path,
                 int threads);

DYNINFER_API const char* dyninfer_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* DYNINFER_RT_H */
