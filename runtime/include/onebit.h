/* onebit runtime: runs a 1-bit network exported as a .onebit graph file (format 2), no Python.
 *
 *     onebit_model *m;
 *     char err[256];
 *     if (onebit_load_file("model.onebit", &m, err, sizeof err) != ONEBIT_OK) { puts(err); ... }
 *     onebit_run(m, input, n, logits, err, sizeof err);  (input n x C x H x W, logits n x classes)
 *     onebit_free(m);
 *
 * Every function that can fail returns an ONEBIT_* code; those taking err write one line naming
 * the problem into it (err may be NULL). A model is used by one thread at a time (onebit_run
 * writes its arena); several models may run in parallel. The file format is specified in
 * src/onebit/deploy/graph.py of the onebit package.
 */
#ifndef ONEBIT_H
#define ONEBIT_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct onebit_model onebit_model;

enum {
    ONEBIT_OK = 0,
    ONEBIT_E_IO,          /* the file cannot be read */
    ONEBIT_E_FORMAT,      /* not a graph file, or a size, offset, index or attribute out of range */
    ONEBIT_E_VERSION,     /* a graph file of another format version */
    ONEBIT_E_CHECKSUM,    /* the crc32 does not match: the file is damaged */
    ONEBIT_E_UNSUPPORTED, /* valid, but beyond this build (a kernel, threads without OpenMP) */
    ONEBIT_E_SHAPE,       /* shapes that do not fit together (a tensor, the input, the output) */
    ONEBIT_E_NOMEM,       /* an allocation failed, or a size above the runtime's limits */
    ONEBIT_E_ARG          /* a bad argument to a function of this API */
};

/* How raw images become the input (onebit.data.spec.InputSpec): x / 255, then for "pad" a
 * centred zero pad from raw_h x raw_w to the input size, then (x - mean[c]) / std[c]. */
enum { ONEBIT_TRANSFORM_NONE = 0, ONEBIT_TRANSFORM_PAD = 1, ONEBIT_TRANSFORM_RESIZE_CROP = 2 };

typedef struct {
    int transform;    /* ONEBIT_TRANSFORM_* */
    int raw_h, raw_w; /* side of the raw images for "pad", else 0 */
    float mean[4];    /* per channel, for the first min(C, 4) channels */
    float std[4];
} onebit_input_record;

/* Load a graph file. On success *out is a model to free with onebit_free. */
int onebit_load_file(const char *path, onebit_model **out, char *err, size_t err_len);
/* The same from memory; the buffer may be freed after the call (what is kept is copied). */
int onebit_load_buffer(const void *data, size_t size, onebit_model **out, char *err,
                       size_t err_len);

void onebit_input_shape(const onebit_model *m, int *c, int *h, int *w);
void onebit_get_input_record(const onebit_model *m, onebit_input_record *out);
int onebit_num_outputs(const onebit_model *m);

/* input: n x C x H x W float32 (NCHW), output: n x num_outputs float32 (the logits). The first
 * run of a batch larger than any before grows the arena; no other run allocates. */
int onebit_run(onebit_model *m, const float *input, int n, float *output, char *err,
               size_t err_len);

/* Threads of the ops (1 by default); ONEBIT_E_UNSUPPORTED above 1 in a build without OpenMP. */
int onebit_set_threads(onebit_model *m, int threads);
/* The binary conv kernel: "auto" (the best this CPU runs), "portable", "avx2", "avx512",
 * "neon"; ONEBIT_E_UNSUPPORTED for one this build or CPU lacks. */
int onebit_set_kernel(onebit_model *m, const char *name);
const char *onebit_kernel(const onebit_model *m); /* the kernel in use, e.g. "avx2" */

void onebit_free(onebit_model *m);
const char *onebit_version(void);
const char *onebit_status_name(int status); /* "ONEBIT_E_FORMAT", ... */

#ifdef __cplusplus
}
#endif

#endif
