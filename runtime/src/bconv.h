/* Binary (xnor-popcount) 2-D convolution of the onebit C runtime: the bconv2d op of the graph
 * file (src/onebit/deploy/graph.py).
 *
 *   a   = sign(x + act_bias) in {-1, +1}, sign(0) = +1 (NaN gives -1, as x >= 0 is false)
 *   dot = sum over the taps inside the input of a * w (zero padding: a padded tap adds 0)
 *   y   = (float)dot * out_scale + out_bias   (two roundings, no FMA: build with -ffp-contract=off)
 *
 * x and y are float32 NCHW, (n, cin, h, w) -> (n, cout, ho, wo) with PyTorch's output size
 * ho = (h + 2 ph - dh (kh - 1) - 1) / sh + 1 (wo alike). Every kernel variant gives bit-identical
 * outputs: integer popcounts, then the same float epilogue.
 *
 * Use: prepare once at load (weights repacked for the chosen variant), ask the scratch size for
 * the largest input, then run with caller-owned scratch: run allocates nothing.
 * C11, libc only; OpenMP threads when built with -fopenmp, serial otherwise.
 */
#ifndef ONEBIT_BCONV_H
#define ONEBIT_BCONV_H

#include <stddef.h>
#include <stdint.h>

#include "epilogue.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int cin, cout, kh, kw, sh, sw, ph, pw, dh, dw;
} ob_bconv_geom;

typedef struct ob_bconv ob_bconv;

/* Kernel variants (ob_kernel_variant maps names to these). */
enum { OB_KERNEL_PORTABLE = 0, OB_KERNEL_AVX2 = 1, OB_KERNEL_AVX512 = 2, OB_KERNEL_NEON = 3 };

/* "auto" (the best variant this CPU runs), "portable", "avx2", "avx512", "neon"; -1 if the name
 * is unknown or the variant is not compiled in / not runnable on this CPU. */
int ob_kernel_variant(const char *name);
/* The name of a variant index ("portable", ...), or "unknown". */
const char *ob_kernel_name(int variant);

/* At load. wbits [cout][kh][kw][ceil(cin / 64)] uint64: bit c % 64 of word c / 64 is 1 for -1,
 * 0 for +1, bits past cin are 0. out_scale, out_bias [cout]; act_bias [cin] or NULL (all 0).
 * Copies / repacks what it keeps (the arguments may be freed after). NULL on allocation failure,
 * on a geometry entry out of range (cin, cout, kh, kw, sh, sw, dh, dw >= 1; ph, pw >= 0;
 * kh * kw * cin < 2^30) or when the variant is not runnable on this CPU. */
ob_bconv *ob_bconv_prepare(const ob_bconv_geom *g, const uint64_t *wbits, const float *out_scale,
                           const float *out_bias, const float *act_bias, int variant);

/* The output size for an h x w input: 0 and *ho, *wo set, or -1 if h, w < 1 or the (dilated)
 * kernel does not fit the padded input. */
int ob_bconv_out_hw(const ob_bconv *c, int h, int w, int *ho, int *wo);

/* Optional, at load: makes the border corrections of an h x w input once, so that runs on
 * inputs of that size do not recompute them in scratch. 0, or -1 on a bad size or no memory
 * (the runs still work). */
int ob_bconv_plan(ob_bconv *c, int h, int w);

/* Bytes of scratch ob_bconv_run needs for an (n, cin, h, w) input (any alignment will do);
 * 0 if the input is invalid (see ob_bconv_out_hw) or the size overflows. */
size_t ob_bconv_scratch_bytes(const ob_bconv *c, int n, int h, int w);

/* y (n, cout, ho, wo) = bconv(x (n, cin, h, w)). scratch: ob_bconv_scratch_bytes(c, n, h, w)
 * bytes. threads >= 1 (used with OpenMP, ignored without). The caller checks the sizes first
 * (ob_bconv_out_hw / ob_bconv_scratch_bytes); run itself does nothing on an invalid input. */
void ob_bconv_run(const ob_bconv *c, const float *x, int n, int h, int w, float *y, void *scratch,
                  int threads);

/* The same, then the element-wise ops of ep (epilogue.h; NULL or none: as ob_bconv_run) on
 * every output before it is stored; an add reads its other value at the output's offset. */
void ob_bconv_run_ep(const ob_bconv *c, const float *x, int n, int h, int w, float *y,
                     void *scratch, int threads, const ob_epilogue *ep);

/* The geometry and variant c was prepared with. */
const ob_bconv_geom *ob_bconv_geometry(const ob_bconv *c);
int ob_bconv_variant(const ob_bconv *c);

void ob_bconv_free(ob_bconv *c); /* NULL is fine */

#ifdef __cplusplus
}
#endif

#endif /* ONEBIT_BCONV_H */
