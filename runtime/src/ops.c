/* The float32 ops of the onebit runtime (ops.h). Each follows PyTorch's CPU kernel closely
 * enough that results agree to float rounding; the comments say where the order of a sum or a
 * rule (pool window clipping, NaN in max) was taken from PyTorch. */
#include "ops.h"

#include <math.h>
#include <string.h>

#ifdef ONEBIT_CBLAS
#include <cblas.h>
#endif

int64_t ob_conv_out(int64_t in, int k, int s, int p, int d) {
    const int64_t span = in + 2 * (int64_t)p - (int64_t)d * (k - 1) - 1;
    return span < 0 ? 0 : span / s + 1;
}

/* PyTorch's pooling_output_shape: ceil mode rounds up, but the last window must start inside
 * the input or its left padding. */
int64_t ob_pool_out(int64_t in, int k, int s, int p, int ceil_mode) {
    const int64_t span = in + 2 * (int64_t)p - (k - 1) - 1 + (ceil_mode ? s - 1 : 0);
    if (span < 0) return 0;
    int64_t out = span / s + 1;
    if (ceil_mode && (out - 1) * s >= in + p) out--;
    return out;
}

/* ---------------------------------------------------------------------------------- gemm */

#ifdef ONEBIT_CBLAS
void ob_gemm(int M, int N, int K, const float *A, int lda, const float *B, int ldb,
             const float *bias, float *C, int ldc, int threads) {
    (void)threads; /* the BLAS has its own */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, A, lda, B, ldb, 0.0f, C,
                ldc);
    if (bias)
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] += bias[i];
}
#else
#define MR 6  /* rows of C per tile */
#define NR 16 /* columns of C per tile: a K x NR panel of B is reused by every row tile */

/* Eight floats in a vector register (GCC / clang vector extensions): 8 lanes of AVX, two SSE or
 * NEON registers. Rows of B are loaded through memcpy, so no alignment is assumed. */
typedef float vf8 __attribute__((vector_size(32)));

/* On x86-64 Linux the full tile is also compiled for AVX2 and picked at run time (ifunc), so
 * the portable build keeps its twelve accumulators in the sixteen ymm registers. */
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__)
#define GEMM_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define GEMM_CLONES
#endif

/* A full MR x NR tile of C = A B + bias: per k, two vectors of B's row times each row's A. */
GEMM_CLONES static void gemm_full_tile(int K, const float *A, int lda, const float *B, int ldb,
                                       const float *bias, float *C, int ldc) {
    vf8 acc[MR][2];
    memset(acc, 0, sizeof acc);
    for (int k = 0; k < K; k++) {
        vf8 b0, b1;
        memcpy(&b0, B + (size_t)k * ldb, sizeof b0);
        memcpy(&b1, B + (size_t)k * ldb + 8, sizeof b1);
        for (int i = 0; i < MR; i++) {
            const float a = A[(size_t)i * lda + k];
            acc[i][0] += a * b0;
            acc[i][1] += a * b1;
        }
    }
    for (int i = 0; i < MR; i++) {
        const float b = bias ? bias[i] : 0.0f;
        for (int j = 0; j < NR; j++) {
            const float v = acc[i][j / 8][j % 8];
            C[(size_t)i * ldc + j] = bias ? v + b : v;
        }
    }
}

/* An edge tile, mr <= MR rows by nr <= NR columns, in the same order of sums. */
static void gemm_edge_tile(int mr, int nr, int K, const float *A, int lda, const float *B, int ldb,
                           const float *bias, float *C, int ldc) {
    float acc[MR][NR] = {{0}};
    for (int k = 0; k < K; k++) {
        const float *b = B + (size_t)k * ldb;
        for (int i = 0; i < mr; i++) {
            const float a = A[(size_t)i * lda + k];
            for (int j = 0; j < nr; j++) acc[i][j] += a * b[j];
        }
    }
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++)
            C[(size_t)i * ldc + j] = bias ? acc[i][j] + bias[i] : acc[i][j];
}

void ob_gemm(int M, int N, int K, const float *A, int lda, const float *B, int ldb,
             const float *bias, float *C, int ldc, int threads) {
    (void)threads; /* without OpenMP */
    const int mt = (M + MR - 1) / MR, nt = (N + NR - 1) / NR;
    /* row tiles vary fastest, so consecutive tiles of a thread share their B panel */
    OB_OMP(omp parallel for num_threads(threads) schedule(static))
    for (int64_t t = 0; t < (int64_t)mt * nt; t++) {
        const int i0 = (int)(t % mt) * MR, j0 = (int)(t / mt) * NR;
        const int mr = M - i0 < MR ? M - i0 : MR, nr = N - j0 < NR ? N - j0 : NR;
        const float *a = A + (size_t)i0 * lda, *b = bias ? bias + i0 : NULL;
        float *c = C + (size_t)i0 * ldc + j0;
        if (mr == MR && nr == NR)
            gemm_full_tile(K, a, lda, B + j0, ldb, b, c, ldc);
        else
            gemm_edge_tile(mr, nr, K, a, lda, B + j0, ldb, b, c, ldc);
    }
}
#endif

/* -------------------------------------------------------------------------------- conv2d */

static int pointwise(const ob_window *k) {
    return k->kh == 1 && k->kw == 1 && k->sh == 1 && k->sw == 1 && k->ph == 0 && k->pw == 0;
}

size_t ob_conv2d_scratch_floats(int cin, int groups, const ob_window *k, ob_shape out) {
    if (pointwise(k)) return 0;
    /* cin, kh, kw < 2^26, 2^17, 2^17: the rows fit 64 bits; the product may not */
    const uint64_t rows = (uint64_t)(cin / groups) * k->kh * k->kw, plane = (uint64_t)out.h * out.w;
    return rows > SIZE_MAX / plane ? SIZE_MAX : (size_t)(rows * plane);
}

/* col (cin kh kw, oh ow): row (c, ky, kx) holds the input pixel each output pixel sees
 * through that tap, 0 in the padding. */
static void im2col(const float *x, int cin, int h, int w, const ob_window *k, ob_shape out,
                   float *col, int threads) {
    (void)threads; /* without OpenMP */
    const int rows = cin * k->kh * k->kw;
    const size_t plane = (size_t)out.h * out.w;
    OB_OMP(omp parallel for num_threads(threads) schedule(static))
    for (int r = 0; r < rows; r++) {
        const int kx = r % k->kw, ky = r / k->kw % k->kh, c = r / (k->kw * k->kh);
        const float *src = x + (size_t)c * h * w;
        for (int oy = 0; oy < out.h; oy++) {
            float *dst = col + (size_t)r * plane + (size_t)oy * out.w;
            const int iy = oy * k->sh - k->ph + ky * k->dh;
            if (iy < 0 || iy >= h) {
                memset(dst, 0, sizeof(float) * (size_t)out.w);
                continue;
            }
            for (int ox = 0; ox < out.w; ox++) {
                const int ix = ox * k->sw - k->pw + kx * k->dw;
                dst[ox] = ix >= 0 && ix < w ? src[(size_t)iy * w + ix] : 0.0f;
            }
        }
    }
}

void ob_conv2d(const float *x, int n, ob_shape in, const float *weight, const float *bias,
               int groups, const ob_window *k, ob_shape out, float *y, float *col, int threads,
               const ob_epilogue *ep) {
    const int cin_g = in.c / groups, cout_g = out.c / groups;
    const int K = cin_g * k->kh * k->kw, P = out.h * out.w;
    for (int img = 0; img < n; img++) {
        for (int g = 0; g < groups; g++) {
            const float *xg = x + ((size_t)img * in.c + (size_t)g * cin_g) * in.h * in.w;
            if (!pointwise(k)) im2col(xg, cin_g, in.h, in.w, k, out, col, threads);
            ob_gemm(cout_g, P, K, weight + (size_t)g * cout_g * K, K, pointwise(k) ? xg : col, P,
                    bias ? bias + (size_t)g * cout_g : NULL,
                    y + ((size_t)img * out.c + (size_t)g * cout_g) * P, P, threads);
        }
    }
    if (ep && ep->n)
        for (size_t r = 0; r < (size_t)n * out.c; r++)
            ob_ep_row(ep, (int64_t)(r % out.c), y + r * P, r * P, P);
}

/* ---------------------------------------------------------------------------------- linear */

#ifdef ONEBIT_CBLAS
void ob_linear(const float *x, int n, int in, const float *weight, const float *bias, int out,
               float *y, int threads) {
    (void)threads;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, 1.0f, x, in, weight, in, 0.0f,
                y, out);
    if (bias)
        for (int img = 0; img < n; img++)
            for (int o = 0; o < out; o++) y[(size_t)img * out + o] += bias[o];
}
#else
/* Eight partial sums, so the loop vectorises without -ffast-math. */
static float dot(const float *a, const float *b, int len) {
    float part[8] = {0};
    int i = 0;
    for (; i + 8 <= len; i += 8)
        for (int j = 0; j < 8; j++) part[j] += a[i + j] * b[i + j];
    float s = 0.0f;
    for (; i < len; i++) s += a[i] * b[i];
    return s + ((part[0] + part[1]) + (part[2] + part[3])) +
           ((part[4] + part[5]) + (part[6] + part[7]));
}

void ob_linear(const float *x, int n, int in, const float *weight, const float *bias, int out,
               float *y, int threads) {
    (void)threads; /* without OpenMP */
    OB_OMP(omp parallel for num_threads(threads) schedule(static))
    for (int o = 0; o < out; o++) {
        const float *row = weight + (size_t)o * in;
        for (int img = 0; img < n; img++) {
            const float s = dot(row, x + (size_t)img * in, in);
            y[(size_t)img * out + o] = bias ? s + bias[o] : s;
        }
    }
}
#endif

/* ------------------------------------------------------------------------- element-wise */

void ob_affine(const float *x, int n, ob_shape s, const float *scale, const float *bias, float *y) {
    const size_t plane = (size_t)s.h * s.w;
    for (int img = 0; img < n; img++) {
        for (int c = 0; c < s.c; c++) {
            const size_t base = ((size_t)img * s.c + c) * plane;
            const float a = scale ? scale[c] : 1.0f, b = bias ? bias[c] : 0.0f;
            if (scale && bias)
                for (size_t i = 0; i < plane; i++) y[base + i] = x[base + i] * a + b;
            else if (scale)
                for (size_t i = 0; i < plane; i++) y[base + i] = x[base + i] * a;
            else if (bias)
                for (size_t i = 0; i < plane; i++) y[base + i] = x[base + i] + b;
            else
                memcpy(y + base, x + base, sizeof(float) * plane);
        }
    }
}

void ob_add(const float *a, const float *b, size_t count, float *y) {
    for (size_t i = 0; i < count; i++) y[i] = a[i] + b[i];
}

void ob_mul(const float *a, const float *b, int n, ob_shape s, int b_plane, float *y) {
    const size_t plane = (size_t)s.h * s.w;
    for (size_t nc = 0; nc < (size_t)n * s.c; nc++) {
        const float *pa = a + nc * plane, *pb = b + nc * b_plane;
        float *py = y + nc * plane;
        if (b_plane == 1)
            for (size_t i = 0; i < plane; i++) py[i] = pa[i] * pb[0];
        else
            for (size_t i = 0; i < plane; i++) py[i] = pa[i] * pb[i];
    }
}

/* x < 0 rather than x > 0, so a NaN stays NaN as in torch.relu */
void ob_relu(const float *x, size_t count, float *y) {
    for (size_t i = 0; i < count; i++) y[i] = x[i] < 0.0f ? 0.0f : x[i];
}

void ob_sigmoid(const float *x, size_t count, float *y) {
    for (size_t i = 0; i < count; i++) y[i] = 1.0f / (1.0f + expf(-x[i]));
}

void ob_hardtanh(const float *x, size_t count, float lo, float hi, float *y) {
    for (size_t i = 0; i < count; i++) y[i] = x[i] < lo ? lo : x[i] > hi ? hi : x[i];
}

void ob_prelu(const float *x, int n, ob_shape s, const float *slope, int n_slopes, float *y) {
    const size_t plane = (size_t)s.h * s.w;
    for (int img = 0; img < n; img++) {
        for (int c = 0; c < s.c; c++) {
            const size_t base = ((size_t)img * s.c + c) * plane;
            const float a = slope[n_slopes == 1 ? 0 : c];
            for (size_t i = 0; i < plane; i++)
                y[base + i] = x[base + i] > 0.0f ? x[base + i] : a * x[base + i];
        }
    }
}

void ob_leaky_clip(const float *x, size_t count, float *y) {
    for (size_t i = 0; i < count; i++) {
        const float c = x[i] < -1.0f ? -1.0f : x[i] > 1.0f ? 1.0f : x[i];
        y[i] = c + 0.1f * (x[i] - c);
    }
}

/* --------------------------------------------------------------------------------- pooling */

/* The window of output index o along one side, clipped to the input: [*lo, *hi). */
static void window(int o, int k, int s, int p, int in, int *lo, int *hi) {
    const int start = o * s - p, end = start + k;
    *lo = start < 0 ? 0 : start;
    *hi = end > in ? in : end;
}

/* The output columns [*lo, *hi) whose tap kx (stride s, padding p) falls inside a row of w. */
static void tap_columns(int kx, int s, int p, int w, int ow, int *lo, int *hi) {
    const int first = p - kx, last = w - 1 + p - kx; /* ox * s in [first, last] */
    *lo = first <= 0 ? 0 : (first + s - 1) / s;
    *hi = last < 0 ? 0 : last / s + 1;
    if (*hi > ow) *hi = ow;
    if (*lo > *hi) *lo = *hi;
}

/* Both pools fill an output row tap by tap: for each input row of the windows and each kx, one
 * branch-free pass over the output columns (PyTorch's per-window loop branches on every
 * compare). Each output still sees its taps in PyTorch's order, rows outer, columns inner. */

/* PyTorch's max_pool2d: padding is -inf, and a NaN in the window wins. */
void ob_maxpool2d(const float *x, int n, ob_shape in, const ob_window *k, ob_shape out, float *y) {
    for (size_t nc = 0; nc < (size_t)n * in.c; nc++) {
        const float *src = x + nc * in.h * in.w;
        for (int oy = 0; oy < out.h; oy++) {
            float *dst = y + (nc * out.h + oy) * out.w;
            for (int ox = 0; ox < out.w; ox++) dst[ox] = -INFINITY;
            int y0, y1;
            window(oy, k->kh, k->sh, k->ph, in.h, &y0, &y1);
            for (int iy = y0; iy < y1; iy++) {
                const float *row = src + (size_t)iy * in.w;
                for (int kx = 0; kx < k->kw; kx++) {
                    int lo, hi;
                    tap_columns(kx, k->sw, k->pw, in.w, out.w, &lo, &hi);
                    for (int ox = lo; ox < hi; ox++) {
                        const float v = row[ox * k->sw + kx - k->pw];
                        dst[ox] = v > dst[ox] || v != v ? v : dst[ox];
                    }
                }
            }
        }
    }
}

/* PyTorch's avg_pool2d: the divisor counts the padding (count_include_pad) but not the part of
 * a ceil-mode window past it. */
void ob_avgpool2d(const float *x, int n, ob_shape in, const ob_window *k, int count_include_pad,
                  ob_shape out, float *y) {
    for (size_t nc = 0; nc < (size_t)n * in.c; nc++) {
        const float *src = x + nc * in.h * in.w;
        for (int oy = 0; oy < out.h; oy++) {
            float *dst = y + (nc * out.h + oy) * out.w;
            for (int ox = 0; ox < out.w; ox++) dst[ox] = 0.0f;
            int y0, y1;
            window(oy, k->kh, k->sh, k->ph, in.h, &y0, &y1);
            for (int iy = y0; iy < y1; iy++) {
                const float *row = src + (size_t)iy * in.w;
                for (int kx = 0; kx < k->kw; kx++) {
                    int lo, hi;
                    tap_columns(kx, k->sw, k->pw, in.w, out.w, &lo, &hi);
                    for (int ox = lo; ox < hi; ox++) dst[ox] += row[ox * k->sw + kx - k->pw];
                }
            }
            const int ys = oy * k->sh - k->ph;
            const int ye = ys + k->kh < in.h + k->ph ? ys + k->kh : in.h + k->ph;
            for (int ox = 0; ox < out.w; ox++) {
                const int xs = ox * k->sw - k->pw;
                const int xe = xs + k->kw < in.w + k->pw ? xs + k->kw : in.w + k->pw;
                int x0, x1;
                window(ox, k->kw, k->sw, k->pw, in.w, &x0, &x1);
                const int count = count_include_pad ? (ye - ys) * (xe - xs) : (y1 - y0) * (x1 - x0);
                dst[ox] = count > 0 ? dst[ox] / (float)count : 0.0f;
            }
        }
    }
}

void ob_global_avgpool(const float *x, int n, ob_shape in, float *y) {
    const size_t plane = (size_t)in.h * in.w;
    for (size_t nc = 0; nc < (size_t)n * in.c; nc++) {
        float sum = 0.0f;
        for (size_t i = 0; i < plane; i++) sum += x[nc * plane + i];
        y[nc] = sum / (float)plane;
    }
}

/* ----------------------------------------------------------------------------- data movement */

void ob_concat(const float *const *x, const ob_shape *s, int count, int n, float *y) {
    const size_t plane = (size_t)s[0].h * s[0].w;
    for (int img = 0; img < n; img++) {
        for (int k = 0; k < count; k++) {
            const size_t len = (size_t)s[k].c * plane;
            memcpy(y, x[k] + img * len, sizeof(float) * len);
            y += len;
        }
    }
}

void ob_channel_shuffle(const float *x, int n, ob_shape s, int groups, float *y) {
    const size_t plane = (size_t)s.h * s.w;
    const int per_group = s.c / groups;
    for (int img = 0; img < n; img++) {
        const float *src = x + (size_t)img * s.c * plane;
        float *dst = y + (size_t)img * s.c * plane;
        for (int g = 0; g < groups; g++)
            for (int i = 0; i < per_group; i++)
                memcpy(dst + ((size_t)i * groups + g) * plane,
                       src + ((size_t)g * per_group + i) * plane, sizeof(float) * plane);
    }
}

void ob_subsample_pad(const float *x, int n, ob_shape in, int sh, int sw, int pad_before,
                      ob_shape out, float *y) {
    const size_t in_plane = (size_t)in.h * in.w, out_plane = (size_t)out.h * out.w;
    memset(y, 0, sizeof(float) * (size_t)n * out.c * out_plane);
    for (int img = 0; img < n; img++) {
        for (int c = 0; c < in.c; c++) {
            const float *src = x + ((size_t)img * in.c + c) * in_plane;
            float *dst = y + ((size_t)img * out.c + pad_before + c) * out_plane;
            for (int oy = 0; oy < out.h; oy++)
                for (int ox = 0; ox < out.w; ox++)
                    dst[(size_t)oy * out.w + ox] = src[(size_t)oy * sh * in.w + (size_t)ox * sw];
        }
    }
}

void ob_rescale_hw(const float *x, int n, ob_shape s, const float *scale, float *y) {
    const size_t len = (size_t)s.c * s.h * s.w;
    for (int img = 0; img < n; img++)
        for (size_t i = 0; i < len; i++) y[img * len + i] = x[img * len + i] * scale[i];
}
