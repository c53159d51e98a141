/* The float32 ops of the onebit runtime (ops.h). Each follows PyTorch's CPU kernel closely
 * enough that results agree to float rounding; the comments say where the order of a sum or a
 * rule (pool window clipping, NaN in max) was taken from PyTorch. */
#include "ops.h"

#include "bconv.h"

#include <math.h>
#include <string.h>

#ifdef ONEBIT_CBLAS
#include <cblas.h>
#endif
#if defined(__aarch64__)
#include <arm_neon.h>
#endif

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi" /* fma8's vf8 arguments: always inlined */
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

/* The widest x86 vector ISA the float ops (linear, pools) may use under kernel variant
 * `variant`, as gemm_kernel does for the conv tile: `--kernel avx2` runs AVX2 code only, as on
 * an AVX2-only CPU (deploy_speed.py's AVX2 race relies on it), portable the base
 * ISA. ISA_COPIES compiles a body once per ISA; ISA_PICK takes the copy. */
enum { ISA_BASE, ISA_AVX2, ISA_AVX512 };

#if defined(__x86_64__) && defined(__GNUC__)
#define ISA_X86 1
#define ISA_COPIES(name, params, body)                                                         \
    __attribute__((target("avx512f"))) static void name##_avx512 params { body; }              \
    __attribute__((target("avx2"))) static void name##_avx2 params { body; }                   \
    static void name##_base params { body; }
#define ISA_PICK(name, isa)                                                                    \
    ((isa) == ISA_AVX512 ? name##_avx512 : (isa) == ISA_AVX2 ? name##_avx2 : name##_base)
#else
#define ISA_COPIES(name, params, body) static void name##_base params { body; }
#define ISA_PICK(name, isa) ((void)(isa), name##_base)
#endif

static int float_isa(int variant) {
#ifdef ISA_X86
    __builtin_cpu_init();
    if (variant == OB_KERNEL_AVX512 && __builtin_cpu_supports("avx512f")) return ISA_AVX512;
    if (variant == OB_KERNEL_AVX2 || variant == OB_KERNEL_AVX512)
        return __builtin_cpu_supports("avx2") ? ISA_AVX2 : ISA_BASE;
#endif
    (void)variant;
    return ISA_BASE;
}

/* -------------------------------------------------------------------------------- conv2d */

/* A conv2d is a GEMM per image and group: C (cout_g, P) = A (cout_g, K) B (K, P) + bias, with
 * K = cin_g kh kw in (c, ky, kx) order and B row k the input each output pixel sees through tap
 * k. Each C element is the sum over k in that order of a * b, from 0, as fused multiply-adds
 * (one rounding each: fmaf, as PyTorch's oneDNN and XNNPACK kernels use FMA), then + bias: every
 * path below gives the same bits: AVX-512, AVX2 (with FMA), aarch64 NEON and the portable C
 * (fmaf, which is slow only on a CPU without FMA).
 *
 * B is read in place where it can be: a pointwise conv reads the input itself; a conv whose
 * output rows are wide reads a zero-padded copy of the input whose columns are split by
 * phase (column ix of a row at [ix % sw][ix / sw]), so the row of tap k for the wo outputs of
 * one output row is contiguous; a conv with narrow output rows gathers B (im2col). */

static int pointwise(const ob_window *k) {
    return k->kh == 1 && k->kw == 1 && k->sh == 1 && k->sw == 1 && k->ph == 0 && k->pw == 0;
}

/* Output rows at least this wide read the padded copy (one GEMM segment per output row). */
#define WIDE_ROW 16

/* The padded, phase-split input of one image and group: per channel hp rows of sw phases of
 * wq floats. */
typedef struct {
    int64_t hp, wq, rowlen, plane; /* rowlen = sw wq, plane = hp rowlen */
} padded;

static padded padded_of(ob_shape in, const ob_window *k) {
    padded p;
    p.hp = (int64_t)in.h + 2 * k->ph;
    const int64_t wp = (int64_t)in.w + 2 * k->pw;
    p.wq = (wp + k->sw - 1) / k->sw;
    p.rowlen = p.wq * k->sw;
    p.plane = p.hp * p.rowlen;
    return p;
}

static int conv_mode(const ob_window *k, ob_shape out) {
#ifdef ONEBIT_CBLAS
    (void)out;
    return pointwise(k) ? 0 : 2; /* the BLAS reads B in place or from im2col */
#else
    return pointwise(k) ? 0 : out.w >= WIDE_ROW ? 1 : 2; /* in place, padded copy, im2col */
#endif
}

/* Whether the GEMM reads A packed (pack_a, once per call and group): where the tiles read it
 * often, that is where the output has at least 16 of the widest tiles' columns (the tiles
 * re-read A per column tile; each reads 8 rows of it at once, which packed are one stream). */
static int a_packed(ob_shape out, const ob_window *k, int64_t m) {
#ifdef ONEBIT_CBLAS
    (void)out, (void)k, (void)m;
    return 0;
#else
    (void)k;
    return m > 1 && (int64_t)out.h * out.w >= 512;
#endif
}

/* The scratch of a conv2d in floats: B's int64 row offsets (2 K + 16: the data after them starts
 * on a cache line), B's data (the padded copy or im2col's columns; 0 in place), and A packed
 * (rows rounded up to a tile, at most 8 more, + 16 to align). UINT64_MAX where one overflows. */
static void conv_scratch(ob_shape in, int groups, const ob_window *k, ob_shape out,
                         uint64_t *offs, uint64_t *data, uint64_t *packed) {
    /* cin, kh, kw < 2^26, 2^17, 2^17: the rows fit 64 bits; the product may not */
    const uint64_t K = (uint64_t)(in.c / groups) * k->kh * k->kw, m = (uint64_t)(out.c / groups);
    *offs = 2 * K + 16;
    *data = 0;
    const int mode = conv_mode(k, out);
    if (mode == 1) {
        const padded p = padded_of(in, k);
        const uint64_t c = (uint64_t)(in.c / groups);
        *data = (uint64_t)p.plane > UINT64_MAX / c ? UINT64_MAX : c * (uint64_t)p.plane;
    } else if (mode == 2) {
        const uint64_t plane = (uint64_t)out.h * out.w;
        *data = K > UINT64_MAX / plane ? UINT64_MAX : K * plane;
    }
    *packed = !a_packed(out, k, (int64_t)m) ? 0
              : K > (UINT64_MAX - 16) / (m + 8) ? UINT64_MAX
                                                : (m + 8) * K + 16;
}

size_t ob_conv2d_scratch_floats(ob_shape in, int groups, const ob_window *k, ob_shape out) {
    uint64_t offs, data, packed;
    conv_scratch(in, groups, k, out, &offs, &data, &packed);
    if (data > SIZE_MAX / 8 || offs > SIZE_MAX / 8 || packed > SIZE_MAX / 8) return SIZE_MAX;
    return (size_t)(offs + data + packed);
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

#ifndef ONEBIT_CBLAS
/* The padded, phase-split copy of cin channels of x (h x w each). */
static void pad_split(const float *x, int cin, int h, int w, const ob_window *k, padded p,
                      float *dst, int threads) {
    (void)threads;
    OB_OMP(omp parallel for num_threads(threads) schedule(static))
    for (int c = 0; c < cin; c++) {
        float *d = dst + (size_t)c * p.plane;
        memset(d, 0, sizeof(float) * (size_t)p.plane);
        for (int y = 0; y < h; y++) {
            float *row = d + (size_t)(y + k->ph) * p.rowlen;
            const float *src = x + ((size_t)c * h + y) * w;
            if (k->sw == 1) {
                memcpy(row + k->pw, src, sizeof(float) * (size_t)w);
                continue;
            }
            /* phase f holds columns col = q sw + f of the padded row: input ix = col - pw */
            for (int64_t f = 0; f < k->sw; f++) {
                const int64_t first = f - k->pw, stride = k->sw;
                int64_t q0 = first >= 0 ? 0 : (-first + stride - 1) / stride;
                int64_t q1 = w - 1 - first < 0 ? 0 : (w - 1 - first) / stride + 1; /* ix < w */
                if (q1 > p.wq) q1 = p.wq;
                float *ph = row + f * p.wq;
                if (stride == 2)
                    for (int64_t q = q0; q < q1; q++) ph[q] = src[2 * q + first];
                else
                    for (int64_t q = q0; q < q1; q++) ph[q] = src[q * stride + first];
            }
        }
    }
}
#endif

#ifdef ONEBIT_CBLAS
static void ob_gemm(int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                    const float *bias, float *C, int ldc, int threads) {
    (void)threads; /* the BLAS has its own */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, A, lda, B, ldb, 0.0f, C,
                ldc);
    if (bias)
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] += bias[i];
}

void ob_conv2d(const float *x, int n, ob_shape in, const float *weight, const float *bias,
               int groups, const ob_window *k, ob_shape out, float *y, float *scratch, int variant,
               int threads, const ob_epilogue *ep) {
    (void)variant; /* the BLAS has its own */
    const int cin_g = in.c / groups, cout_g = out.c / groups;
    const int K = cin_g * k->kh * k->kw, P = out.h * out.w;
    float *col = scratch + 2 * (size_t)K + 16;
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
#else

/* One GEMM: C rows i < M (row stride ldc; channel c0 + i of the epilogue), in segments of N
 * columns: segment s reads B row k at b + s * bseg + boff[k] and writes C at c + s * cseg; C
 * element (i, j) of segment s is output element ep0 + i ldc + s cseg + j. */
typedef struct {
    int64_t M, K, N;
    const float *A;  /* (M, K), row stride K */
    const float *Ap; /* or NULL: A packed by pack_a for the tile's mr */
    const float *bias;
    const float *b;
    const int64_t *boff;
    int64_t bseg;
    float *c;
    int64_t ldc, cseg;
    const ob_epilogue *ep;
    int64_t c0;
    size_t ep0;
} gemm_job;

/* B is copied panel by panel (the nr columns of a tile, KC rows of K at a time) into a
 * contiguous, zero-padded buffer on the stack of the thread that runs the panel's tiles; the
 * first row tile copies the rows as it reads them (its loads were needed anyway), the others
 * read the copy at one stride from L1, where B's own rows lie a plane apart (a TLB miss per row
 * on large maps, and every row in one cache set when the plane is a multiple of 4 KiB).
 * Over K chunks a tile resumes from the sums it stored in C: the same fused multiply-adds in
 * the same order; the bias and the epilogue come with the last chunk. */
#define KC 256

/* A tile: rows i0 .. i0 + mr - 1 and the nr columns from j0 of segment s, taps k0 .. k0 + kc - 1
 * read from panel (row k - k0 at panel + (k - k0) * its width). */
typedef void (*gemm_tile_fn)(const gemm_job *g, float *panel, int pack, int64_t k0, int kc,
                             int64_t s, int64_t i0, int mr, int64_t j0, int nr);

typedef float vf8 __attribute__((vector_size(32)));

/* a * b + c per lane, one rounding: NEON's fmla on aarch64; elsewhere fmaf per lane, which GCC
 * turns into one vfmadd231ps where the function is compiled for FMA (the AVX2 tile). Always
 * inlined: no vf8 crosses a call (GCC's -Wpsabi warning that one would, built without AVX, is
 * off for this file at its top). */
static inline __attribute__((always_inline)) vf8 fma8(vf8 a, vf8 b, vf8 c) {
#if defined(__aarch64__)
    float32x4_t h[3][2];
    memcpy(h[0], &a, sizeof a), memcpy(h[1], &b, sizeof b), memcpy(h[2], &c, sizeof c);
    h[2][0] = vfmaq_f32(h[2][0], h[0][0], h[1][0]);
    h[2][1] = vfmaq_f32(h[2][1], h[0][1], h[1][1]);
    memcpy(&c, h[2], sizeof c);
    return c;
#else
    vf8 r;
#pragma GCC unroll 8
    for (int l = 0; l < 8; l++) r[l] = __builtin_fmaf(a[l], b[l], c[l]);
    return r;
#endif
}

#define MR8 6 /* the portable and avx2 tile: 6 rows x 16 columns in 12 8-float vectors */
#define NR8 16
#define NR_MAX 32 /* the widest tile's columns (NR16) */

/* One k of the portable tile: B's row (two vectors) times each row's A (through a, or the
 * packed block ap: row i at ap[k * MR8 + i]). */
static inline __attribute__((always_inline)) void tile8_step(vf8 acc[MR8][2],
                                                             const float *const *a,
                                                             const float *ap, const int packed,
                                                             int k, const float *brow) {
    vf8 b0, b1;
    memcpy(&b0, brow, sizeof b0);
    memcpy(&b1, brow + 8, sizeof b1);
#pragma GCC unroll 6
    for (int i = 0; i < MR8; i++) {
        const float x = packed ? ap[k * MR8 + i] : a[i][k];
        const vf8 av = {x, x, x, x, x, x, x, x};
        acc[i][0] = fma8(av, b0, acc[i][0]);
        acc[i][1] = fma8(av, b1, acc[i][1]);
    }
}

/* The sums of the portable tile over kc taps (with pack, B's rows copied into the panel as they
 * are read). Always inlined with a constant packed. */
static inline __attribute__((always_inline)) void tile8_sums(vf8 acc[MR8][2],
                                                             const float *const *a,
                                                             const float *ap, const int packed,
                                                             const float *b, const int64_t *boff,
                                                             float *panel, int pack, int kc,
                                                             int nr) {
    if (pack) {
        for (int k = 0; k < kc; k++) {
            float *row = panel + k * NR8;
            if (nr == NR8)
                memcpy(row, b + boff[k], sizeof(float) * NR8);
            else
                for (int j = 0; j < NR8; j++) row[j] = j < nr ? b[boff[k] + j] : 0.0f;
            tile8_step(acc, a, ap, packed, k, row);
        }
    } else {
        for (int k = 0; k < kc; k++) tile8_step(acc, a, ap, packed, k, panel + k * NR8);
    }
}

/* The portable tile (also compiled for AVX2). Rows past mr repeat the last row; columns past
 * nr are 0 in the panel and are not stored. With pack, B's rows are read from the input and
 * copied into the panel as they are used (the first row tile of a panel). */
static inline __attribute__((always_inline)) void gemm_tile8_body(const gemm_job *g, float *panel,
                                                                  int pack, int64_t k0, int kc,
                                                                  int64_t s, int64_t i0, int mr,
                                                                  int64_t j0, int nr) {
    /* every loop over acc is unrolled to its constant count: it stays in registers */
    vf8 acc[MR8][2];
    float *c[MR8];
#pragma GCC unroll 6
    for (int i = 0; i < MR8; i++)
        c[i] = g->c + (i0 + (i < mr ? i : mr - 1)) * g->ldc + s * g->cseg + j0;
    if (k0 == 0) {
#pragma GCC unroll 6
        for (int i = 0; i < MR8; i++) acc[i][0] = acc[i][1] = (vf8){0, 0, 0, 0, 0, 0, 0, 0};
    } else {
#pragma GCC unroll 6
        for (int i = 0; i < MR8; i++) {
            float t[NR8] = {0};
            memcpy(t, c[i], sizeof(float) * (size_t)nr);
            memcpy(acc[i], t, sizeof t);
        }
    }
    const float *b = g->b + s * g->bseg + j0;
    const int64_t *boff = g->boff + k0;
    if (g->Ap) {
        const float *ap = g->Ap + ((size_t)(i0 / MR8) * g->K + k0) * MR8;
        tile8_sums(acc, NULL, ap, 1, b, boff, panel, pack, kc, nr);
    } else {
        const float *a[MR8];
#pragma GCC unroll 6
        for (int i = 0; i < MR8; i++)
            a[i] = g->A + (size_t)(i0 + (i < mr ? i : mr - 1)) * g->K + k0;
        tile8_sums(acc, a, NULL, 0, b, boff, panel, pack, kc, nr);
    }
    const int last = k0 + kc == g->K;
    if (last && g->bias)
#pragma GCC unroll 6
        for (int i = 0; i < MR8; i++) {
            const float bi = g->bias[i0 + (i < mr ? i : mr - 1)];
            acc[i][0] += bi;
            acc[i][1] += bi;
        }
    const size_t off = g->ep0 + (size_t)(i0 * g->ldc + s * g->cseg + j0);
#pragma GCC unroll 2
    for (int v = 0; v < 2; v++) {
        const int nv = nr - 8 * v < 8 ? nr - 8 * v : 8;
        vf8 col[MR8];
#pragma GCC unroll 6
        for (int i = 0; i < MR8; i++) col[i] = acc[i][v];
        if (nv <= 0) break;
        if (last && g->ep) ob_ep_block8(g->ep, g->c0 + i0, col, mr, off + 8 * v, g->ldc, nv);
        for (int i = 0; i < mr; i++) {
            if (nv == 8)
                memcpy(c[i] + 8 * v, &col[i], sizeof col[i]);
            else
                for (int j = 0; j < nv; j++) c[i][8 * v + j] = col[i][j];
        }
    }
}

static void gemm_tile8(const gemm_job *g, float *panel, int pack, int64_t k0, int kc, int64_t s,
                       int64_t i0, int mr, int64_t j0, int nr) {
    gemm_tile8_body(g, panel, pack, k0, kc, s, i0, mr, j0, nr);
}

#if defined(__x86_64__) && defined(__GNUC__)
#define GEMM_X86 1
__attribute__((target("avx2,fma"))) static void gemm_tile8_avx2(const gemm_job *g,
                                                                float *panel, int pack, int64_t k0,
                                                                int kc, int64_t s, int64_t i0,
                                                                int mr, int64_t j0, int nr) {
    gemm_tile8_body(g, panel, pack, k0, kc, s, i0, mr, j0, nr);
}

/* The portable tile where a CPU without AVX2 has FMA (and for ONEBIT_KERNEL=portable on one
 * with AVX2): fmaf per lane is then one instruction, not a call into libm. */
__attribute__((target("fma"))) static void gemm_tile8_fma(const gemm_job *g, float *panel,
                                                          int pack, int64_t k0, int kc,
                                                          int64_t s, int64_t i0, int mr,
                                                          int64_t j0, int nr) {
    gemm_tile8_body(g, panel, pack, k0, kc, s, i0, mr, j0, nr);
}

#define MR16 8 /* the avx512 tile: 8 rows x 32 columns in 16 zmm */
#define NR16 32

/* The sums of the AVX-512 tile over kc taps: A's rows through a (packed 0) or the packed block
 * ap (packed 1: row i of tap k at ap[k * MR16 + i]); with pack, B's rows from b + boff[k],
 * copied into the panel, else from the panel. Always inlined with a constant packed. */
__attribute__((target("avx512f,avx512vl"), always_inline)) static inline void
tile16_sums(__m512 acc[MR16][2], const float *const *a, const float *ap, const int packed,
            const float *b, const int64_t *boff, float *panel, int pack, int kc, __mmask16 m0,
            __mmask16 m1, int nr) {
#define A16(i, k) (packed ? ap[(k) * MR16 + (i)] : a[i][k])
    if (pack) {
        for (int k = 0; k < kc; k++) {
            const __m512 b0 = _mm512_maskz_loadu_ps(m0, b + boff[k]);
            const __m512 b1 = _mm512_maskz_loadu_ps(m1, b + boff[k] + 16);
            _mm512_store_ps(panel + k * NR16, b0);
            _mm512_store_ps(panel + k * NR16 + 16, b1);
#pragma GCC unroll 8
            for (int i = 0; i < MR16; i++) {
                const __m512 av = _mm512_set1_ps(A16(i, k));
                acc[i][0] = _mm512_fmadd_ps(av, b0, acc[i][0]);
                acc[i][1] = _mm512_fmadd_ps(av, b1, acc[i][1]);
            }
        }
    } else if (nr > 16) {
        for (int k = 0; k < kc; k++) {
            const __m512 b0 = _mm512_load_ps(panel + k * NR16);
            const __m512 b1 = _mm512_load_ps(panel + k * NR16 + 16);
#pragma GCC unroll 8
            for (int i = 0; i < MR16; i++) {
                const __m512 av = _mm512_set1_ps(A16(i, k));
                acc[i][0] = _mm512_fmadd_ps(av, b0, acc[i][0]);
                acc[i][1] = _mm512_fmadd_ps(av, b1, acc[i][1]);
            }
        }
    } else { /* 16 columns or fewer: one vector (the second is not stored) */
        for (int k = 0; k < kc; k++) {
            const __m512 b0 = _mm512_load_ps(panel + k * NR16);
#pragma GCC unroll 8
            for (int i = 0; i < MR16; i++)
                acc[i][0] = _mm512_fmadd_ps(_mm512_set1_ps(A16(i, k)), b0, acc[i][0]);
        }
    }
#undef A16
}

/* The same sums on 16-float vectors (one vector when nr <= 16). */
__attribute__((target("avx512f,avx512vl"))) static void
gemm_tile16_avx512(const gemm_job *g, float *panel, int pack, int64_t k0, int kc, int64_t s,
                   int64_t i0, int mr, int64_t j0, int nr) {
    __m512 acc[MR16][2];
    float *c[MR16];
    const __mmask16 m0 = (__mmask16)(nr >= 16 ? 0xffff : (1u << nr) - 1);
    const __mmask16 m1 = (__mmask16)(nr >= 32 ? 0xffff : nr <= 16 ? 0 : (1u << (nr - 16)) - 1);
#pragma GCC unroll 8
    for (int i = 0; i < MR16; i++) {
        c[i] = g->c + (i0 + (i < mr ? i : mr - 1)) * g->ldc + s * g->cseg + j0;
        acc[i][0] = k0 ? _mm512_maskz_loadu_ps(m0, c[i]) : _mm512_setzero_ps();
        acc[i][1] = k0 ? _mm512_maskz_loadu_ps(m1, c[i] + 16) : _mm512_setzero_ps();
    }
    const float *b = g->b + s * g->bseg + j0;
    const int64_t *boff = g->boff + k0;
    if (g->Ap) {
        const float *ap = g->Ap + ((size_t)(i0 / MR16) * g->K + k0) * MR16;
        tile16_sums(acc, NULL, ap, 1, b, boff, panel, pack, kc, m0, m1, nr);
    } else {
        const float *a[MR16];
#pragma GCC unroll 8
        for (int i = 0; i < MR16; i++)
            a[i] = g->A + (size_t)(i0 + (i < mr ? i : mr - 1)) * g->K + k0;
        tile16_sums(acc, a, NULL, 0, b, boff, panel, pack, kc, m0, m1, nr);
    }
    /* every loop over acc runs its full constant count (unrolled), so acc stays in registers */
    const int last = k0 + kc == g->K;
    const size_t off = g->ep0 + (size_t)(i0 * g->ldc + s * g->cseg + j0);
#pragma GCC unroll 2
    for (int v = 0; v < 2; v++) {
        const __mmask16 m = v ? m1 : m0;
        __m512 col[MR16];
#pragma GCC unroll 8
        for (int i = 0; i < MR16; i++) {
            col[i] = acc[i][v];
            if (last && g->bias)
                col[i] = _mm512_add_ps(col[i], _mm512_set1_ps(g->bias[i0 + (i < mr ? i : mr - 1)]));
        }
        if (!m) break;
        if (last && g->ep)
            ob_ep_avx512(g->ep, g->c0 + i0, col, mr, off + 16 * v, (__mmask8)m,
                         off + 16 * v + 8, (__mmask8)(m >> 8), g->ldc);
#pragma GCC unroll 8
        for (int i = 0; i < MR16; i++)
            if (i < mr) _mm512_mask_storeu_ps(c[i] + 16 * v, m, col[i]);
    }
}
#endif

/* The tile of a kernel variant (bconv.h: the one the model's binary convs use, so that
 * ONEBIT_KERNEL and onebit_set_kernel choose the float GEMM's tile too) and its size: avx512 the
 * 16-float tile, avx2 the AVX2 + FMA copy of the portable tile, portable and neon the portable
 * tile (NEON's fmla on aarch64; on x86-64 its FMA copy where the CPU has FMA, else fmaf through
 * libm, exact and slow: x86-64 CPUs before 2013). */
static gemm_tile_fn gemm_kernel(int variant, int *mr, int *nr) {
    *mr = MR8, *nr = NR8;
#ifdef GEMM_X86
    __builtin_cpu_init();
    if (variant == OB_KERNEL_AVX512 && __builtin_cpu_supports("avx512f") &&
        __builtin_cpu_supports("avx512vl")) {
        *mr = MR16, *nr = NR16;
        return gemm_tile16_avx512;
    }
    if (variant >= OB_KERNEL_AVX2 && __builtin_cpu_supports("avx2") &&
        __builtin_cpu_supports("fma"))
        return gemm_tile8_avx2;
    if (__builtin_cpu_supports("fma")) return gemm_tile8_fma;
#else
    (void)variant;
#endif
    return gemm_tile8;
}

/* A (M, K) into blocks of mr rows, each K x mr (row i of tap k at k mr + i); rows past M
 * repeat row M - 1, as the tiles' own rows past mr do. */
static void pack_a(const float *A, int64_t M, int64_t K, int mr, float *ap) {
    for (int64_t b = 0; b < (M + mr - 1) / mr; b++)
        for (int64_t k = 0; k < K; k++)
            for (int i = 0; i < mr; i++) {
                const int64_t row = b * mr + i < M ? b * mr + i : M - 1;
                ap[(b * K + k) * mr + i] = A[row * K + k];
            }
}

/* Per panel (a segment's nr columns, KC taps at a time): the row tiles, all on one thread. */
static void gemm_run(const gemm_job *g, int64_t nseg, gemm_tile_fn tile, int mr, int nr,
                     int threads) {
    (void)threads; /* without OpenMP */
    const int64_t mt = (g->M + mr - 1) / mr, nt = (g->N + nr - 1) / nr;
    OB_OMP(omp parallel for num_threads(threads) schedule(static))
    for (int64_t t = 0; t < nseg * nt; t++) {
        float panel[KC * NR_MAX] __attribute__((aligned(64)));
        const int64_t s = t / nt, j0 = t % nt * nr;
        const int nc = g->N - j0 < nr ? (int)(g->N - j0) : nr;
        for (int64_t k0 = 0; k0 < g->K; k0 += KC) {
            const int kc = g->K - k0 < KC ? (int)(g->K - k0) : KC;
            for (int64_t i = 0; i < mt; i++) {
                const int rows = g->M - i * mr < mr ? (int)(g->M - i * mr) : mr;
                tile(g, panel, i == 0, k0, kc, s, i * mr, rows, j0, nc);
            }
        }
    }
}

void ob_conv2d(const float *x, int n, ob_shape in, const float *weight, const float *bias,
               int groups, const ob_window *k, ob_shape out, float *y, float *scratch, int variant,
               int threads, const ob_epilogue *ep) {
    const int cin_g = in.c / groups, cout_g = out.c / groups;
    const int64_t K = (int64_t)cin_g * k->kh * k->kw, P = (int64_t)out.h * out.w;
    const int mode = conv_mode(k, out);
    const padded pd = padded_of(in, k);
    int64_t *boff = (int64_t *)(void *)scratch;
    float *data = scratch + 2 * K; /* after the offsets, on a cache line (16 floats spare) */
    data = (float *)(((uintptr_t)data + 63) & ~(uintptr_t)63);
    /* B's row offsets: tap (c, ky, kx) */
    for (int64_t r = 0; r < K; r++) {
        const int64_t kx = r % k->kw, ky = r / k->kw % k->kh, c = r / ((int64_t)k->kw * k->kh);
        const int64_t t = kx * k->dw;
        boff[r] = mode == 1 ? c * pd.plane + ky * k->dh * pd.rowlen + t % k->sw * pd.wq + t / k->sw
                            : r * P;
    }
    if (ep && ep->n == 0) ep = NULL;
    int mr, nr;
    const gemm_tile_fn tile = gemm_kernel(variant, &mr, &nr);
    uint64_t offs_floats, data_floats, packed_floats;
    conv_scratch(in, groups, k, out, &offs_floats, &data_floats, &packed_floats);
    float *ap = NULL; /* after B's data, on a cache line */
    if (packed_floats) ap = (float *)(((uintptr_t)(data + data_floats) + 63) & ~(uintptr_t)63);
    for (int g = 0; g < groups; g++) {
        const float *wg = weight + (size_t)g * cout_g * K;
        if (ap) pack_a(wg, cout_g, K, mr, ap);
        for (int img = 0; img < n; img++) {
            const float *xg = x + ((size_t)img * in.c + (size_t)g * cin_g) * in.h * in.w;
            gemm_job job = {cout_g, K, P, wg, ap, bias ? bias + (size_t)g * cout_g : NULL, xg,
                            boff, 0, y + ((size_t)img * out.c + (size_t)g * cout_g) * P, P, 0, ep,
                            (int64_t)g * cout_g, ((size_t)img * out.c + (size_t)g * cout_g) * P};
            int64_t nseg = 1;
            if (mode == 1) {
                pad_split(xg, cin_g, in.h, in.w, k, pd, data, threads);
                job.b = data, job.N = out.w, job.bseg = (int64_t)k->sh * pd.rowlen;
                job.cseg = out.w, nseg = out.h;
            } else if (mode == 2) {
                im2col(xg, cin_g, in.h, in.w, k, out, data, threads);
                job.b = data;
            }
            gemm_run(&job, nseg, tile, mr, nr, threads);
        }
    }
}
#endif

/* ---------------------------------------------------------------------------------- linear */

#ifdef ONEBIT_CBLAS
void ob_linear(const float *x, int n, int in, const float *weight, const float *bias, int out,
               float *y, int variant, int threads) {
    (void)threads, (void)variant;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, 1.0f, x, in, weight, in, 0.0f,
                y, out);
    if (bias)
        for (int img = 0; img < n; img++)
            for (int o = 0; o < out; o++) y[(size_t)img * out + o] += bias[o];
}
#else
/* Eight partial sums per row (part[j] of the elements i = j mod 8, then a fixed tree), so the
 * loop vectorises without -ffast-math; four rows at a time share the loads of x. 64-bit
 * indices (-fwrapv builds), and on x86-64 AVX2 / AVX-512 copies (the same sums). */
typedef float lin8 __attribute__((vector_size(32)));

static inline __attribute__((always_inline)) void
dot4_body(const float *r0, const float *r1, const float *r2, const float *r3, const float *x,
          int64_t len, float out[4]) {
    const float *rows[4] = {r0, r1, r2, r3};
    lin8 part[4];
    memset(part, 0, sizeof part);
    int64_t i = 0;
    for (; i + 8 <= len; i += 8) {
        lin8 xv;
        memcpy(&xv, x + i, sizeof xv);
        for (int r = 0; r < 4; r++) {
            lin8 av;
            memcpy(&av, rows[r] + i, sizeof av);
            part[r] += av * xv;
        }
    }
    for (int r = 0; r < 4; r++) {
        float s = 0.0f;
        for (int64_t k = i; k < len; k++) s += rows[r][k] * x[k];
        const lin8 p = part[r];
        out[r] = s + ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
    }
}

ISA_COPIES(dot4,
           (const float *r0, const float *r1, const float *r2, const float *r3, const float *x,
            int64_t len, float out[4]),
           dot4_body(r0, r1, r2, r3, x, len, out))

void ob_linear(const float *x, int n, int in, const float *weight, const float *bias, int out,
               float *y, int variant, int threads) {
    (void)threads; /* without OpenMP */
    __typeof__(dot4_base) *const dot4 = ISA_PICK(dot4, float_isa(variant));
    const int64_t groups = ((int64_t)out + 3) / 4;
    OB_OMP(omp parallel for num_threads(threads) schedule(static))
    for (int64_t q = 0; q < groups; q++) {
        const int64_t o = q * 4, rows = out - o < 4 ? out - o : 4;
        const float *r[4];
        for (int64_t k = 0; k < 4; k++)
            r[k] = weight + (size_t)(o + (k < rows ? k : rows - 1)) * in;
        for (int64_t img = 0; img < n; img++) {
            float s[4];
            dot4(r[0], r[1], r[2], r[3], x + (size_t)img * in, in, s);
            for (int64_t k = 0; k < rows; k++)
                y[(size_t)img * out + o + k] = bias ? s[k] + bias[o + k] : s[k];
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
 * compare). Each output still sees its taps in PyTorch's order, rows outer, columns inner.
 * Indices are 64-bit (with -fwrapv, as Python builds the extension, int ones do not
 * vectorize); strides 1 and 2 get their own copies of the pass (a constant stride 2 loads two
 * vectors and deinterleaves them), and on x86-64 the passes are also compiled for AVX2 and
 * AVX-512 (the same operations, wider; ISA_COPIES). */

/* The taps of a row: output columns [lo, hi) read tap kx at input column ox sw + kx - pw. Up to
 * POOL_TAPS of them are computed once per call (the divisions cost more than a short pass). */
#define POOL_TAPS 16
typedef struct {
    int n; /* kw, if at most POOL_TAPS */
    int lo[POOL_TAPS], hi[POOL_TAPS];
} pool_taps;

static void pool_taps_of(const ob_window *k, ob_shape in, ob_shape out, pool_taps *t) {
    t->n = k->kw <= POOL_TAPS ? k->kw : 0;
    for (int kx = 0; kx < t->n; kx++)
        tap_columns(kx, k->sw, k->pw, in.w, out.w, &t->lo[kx], &t->hi[kx]);
}

/* One output row of a max pool over input rows [y0, y1) of the plane src (sum: of an average
 * pool's sums); sw is the column stride (a constant where inlined). */
static inline __attribute__((always_inline)) void
pool_row_body(float *restrict dst, const float *restrict src, const pool_taps *t,
              const ob_window *k, int y0, int y1, ob_shape in, ob_shape out, int sum, int64_t sw) {
    for (int64_t ox = 0; ox < out.w; ox++) dst[ox] = sum ? 0.0f : -INFINITY;
    for (int64_t iy = y0; iy < y1; iy++) {
        for (int kx = 0; kx < k->kw; kx++) {
            int lo, hi;
            if (t->n)
                lo = t->lo[kx], hi = t->hi[kx];
            else
                tap_columns(kx, k->sw, k->pw, in.w, out.w, &lo, &hi);
            const int64_t at = iy * in.w + kx - k->pw; /* + ox sw: inside the row */
            if (sum) {
                for (int64_t ox = lo; ox < hi; ox++) dst[ox] += src[at + ox * sw];
            } else {
                for (int64_t ox = lo; ox < hi; ox++) {
                    const float v = src[at + ox * sw];
                    dst[ox] = v > dst[ox] || v != v ? v : dst[ox];
                }
            }
        }
    }
}

ISA_COPIES(pool_row_s1,
           (float *dst, const float *src, const pool_taps *t, const ob_window *k, int y0, int y1,
            ob_shape in, ob_shape out, int sum),
           pool_row_body(dst, src, t, k, y0, y1, in, out, sum, 1))
ISA_COPIES(pool_row_s2,
           (float *dst, const float *src, const pool_taps *t, const ob_window *k, int y0, int y1,
            ob_shape in, ob_shape out, int sum),
           pool_row_body(dst, src, t, k, y0, y1, in, out, sum, 2))
ISA_COPIES(pool_row_sn,
           (float *dst, const float *src, const pool_taps *t, const ob_window *k, int y0, int y1,
            ob_shape in, ob_shape out, int sum),
           pool_row_body(dst, src, t, k, y0, y1, in, out, sum, k->sw))

/* The tap masks of every 16-output chunk of a row, made once per call: for chunk c and tap kx,
 * valid (the outputs whose tap lies in the row) and, with stride 2, lo and hi (the floats of
 * the two loads they read, bit 2i for output i). Rows up to POOL_CHUNKS chunks wide. */
#define POOL_CHUNKS 64
typedef struct {
    int chunks;
    uint16_t valid[POOL_CHUNKS][POOL_TAPS], lo[POOL_CHUNKS][POOL_TAPS], hi[POOL_CHUNKS][POOL_TAPS];
} pool_masks;

/* The 3x3 stride-2 max pool with padding 1 (the ResNet stem's) of a plane without NaN, rows
 * first: each input row's 3-tap maxes (hmax) once, then each output row the max of its 3 rows'
 * (an input row serves two output rows). Per tap about a third of the general pass's work, and
 * no mask loads. Folding "v > m ? v : m" keeps the first of equal values, so taps in row-major
 * order folded per row, then the rows in order, give the bits of PyTorch's loop (only -0 and +0
 * compare equal with different bits; a NaN-free plane has no other such pair). */
#define POOL3_COLS (16 * POOL_CHUNKS)

static int pool3s2_fits(const ob_window *k, ob_shape out) {
    return k->kh == 3 && k->kw == 3 && k->sh == 2 && k->sw == 2 && k->ph == 1 && k->pw == 1 &&
           k->dh == 1 && k->dw == 1 && out.w <= POOL3_COLS;
}

/* The same in C for the other ISAs (ISA_COPIES: the compiler vectorises the passes): h[i] of
 * pool3_hmax below as max(max(x[2i - 1], x[2i]), x[2i + 1]), the same fold. */
static inline __attribute__((always_inline)) void pool3_hmax_body(const float *restrict x,
                                                                  int64_t w, int64_t ow,
                                                                  float *restrict h) {
    int64_t i = 0;
    const int64_t inner = w / 2 < ow ? w / 2 : ow; /* i < inner: 2i + 1 < w */
    if (ow > 0) { /* i = 0: no x[-1] */
        const float o = w > 1 ? x[1] : -INFINITY;
        h[0] = o > x[0] ? o : x[0];
        i = 1;
    }
    for (; i < inner; i++) {
        const float l = x[2 * i - 1], e = x[2 * i], o = x[2 * i + 1];
        const float m = e > l ? e : l;
        h[i] = o > m ? o : m;
    }
    for (; i < ow; i++) { /* the last: taps past the row are -inf */
        const float l = x[2 * i - 1], e = 2 * i < w ? x[2 * i] : -INFINITY;
        h[i] = e > l ? e : l;
    }
}

static inline __attribute__((always_inline)) void
pool3s2_plane_body(const float *x, ob_shape in, ob_shape out, float *dst, float *rows) {
    int64_t have = -2;
    for (int64_t oy = 0; oy < out.h; oy++) {
        const int64_t r0 = 2 * oy - 1 < 0 ? 0 : 2 * oy - 1;
        const int64_t r1 = 2 * oy + 2 > in.h ? in.h : 2 * oy + 2;
        for (int64_t r = have + 1 > r0 ? have + 1 : r0; r < r1; r++)
            pool3_hmax_body(x + r * in.w, in.w, out.w, rows + r % 3 * POOL3_COLS);
        if (r1 - 1 > have) have = r1 - 1;
        float *restrict d = dst + oy * out.w;
        const float *restrict a = rows + r0 % 3 * POOL3_COLS;
        for (int64_t i = 0; i < out.w; i++) d[i] = a[i];
        for (int64_t r = r0 + 1; r < r1; r++) {
            const float *restrict b = rows + r % 3 * POOL3_COLS;
            for (int64_t i = 0; i < out.w; i++) d[i] = b[i] > d[i] ? b[i] : d[i];
        }
    }
}

ISA_COPIES(pool3s2_plane_c, (const float *x, ob_shape in, ob_shape out, float *dst, float *rows),
           pool3s2_plane_body(x, in, out, dst, rows))

static inline __attribute__((always_inline)) int nan_free_body(const float *x, size_t count) {
    int any = 0;
    for (size_t i = 0; i < count; i++) any |= x[i] != x[i];
    return !any;
}

ISA_COPIES(nan_free_c, (const float *x, size_t count, int *free), *free = nan_free_body(x, count))

#if defined(__x86_64__) && defined(__GNUC__)
#define POOL_AVX512 1
/* The masks of a window's taps over a row of ow outputs (pool_masks). */
__attribute__((target("avx512f,bmi2"))) static void pool_masks_of(const pool_taps *t,
                                                                  const ob_window *k, int64_t ow,
                                                                  pool_masks *pm) {
    pm->chunks = (int)((ow + 15) / 16);
    for (int c = 0; c < pm->chunks; c++) {
        const int64_t ox0 = 16 * (int64_t)c, left = ow - ox0;
        const uint32_t chunk = left >= 16 ? 0xffffu : (1u << left) - 1;
        for (int kx = 0; kx < k->kw; kx++) {
            const int64_t l = t->lo[kx] - ox0, h = t->hi[kx] - ox0;
            const uint32_t below = l <= 0 ? 0 : l >= 16 ? 0xffffu : (1u << l) - 1;
            const uint32_t upto = h <= 0 ? 0 : h >= 16 ? 0xffffu : (1u << h) - 1;
            const uint32_t m = chunk & upto & ~below;
            const uint32_t wide = k->sw == 2 ? _pdep_u32(m, 0x55555555u) : m;
            pm->valid[c][kx] = (uint16_t)m, pm->lo[c][kx] = (uint16_t)wide;
            pm->hi[c][kx] = (uint16_t)(wide >> 16);
        }
    }
}

/* sum / (float)(rows * cols[i]) per output i of a chunk (m: its outputs), 0 where the count is
 * 0: the division of ob_avgpool2d's generic pass, 16 at a time. */
__attribute__((target("avx512f"))) static inline __m512 avg_divide(__m512 sum, const int *cols,
                                                                   int rows, __mmask16 m) {
    const __m512i count =
        _mm512_mullo_epi32(_mm512_set1_epi32(rows), _mm512_maskz_loadu_epi32(m, cols));
    const __mmask16 some = _mm512_cmpgt_epi32_mask(count, _mm512_setzero_si512());
    return _mm512_maskz_div_ps(some, sum, _mm512_cvtepi32_ps(count));
}

/* Tap kx of chunk c of a row (p: its first float): 16 floats, 0 where masked off (a zeroing
 * load is one operation, a merging one two). */
__attribute__((target("avx512f"))) static inline __m512 pool_tap(const float *p, int s2,
                                                                 const pool_masks *pm, int c,
                                                                 int kx) {
    const __m512i even =
        _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    if (!s2) return _mm512_maskz_loadu_ps((__mmask16)pm->valid[c][kx], p);
    const __m512 a = _mm512_maskz_loadu_ps((__mmask16)pm->lo[c][kx], p);
    const __m512 b = _mm512_maskz_loadu_ps((__mmask16)pm->hi[c][kx], p + 16);
    return _mm512_permutex2var_ps(a, even, b);
}

/* The fold of chunk c (into *a0) and, with two, of chunk c + 1 (into *a1) over rows [y0, y1):
 * sums, or maxes of the valid taps. Always inlined with a constant two. */
__attribute__((target("avx512f,bmi2"), always_inline)) static inline void
pool_fold(__m512 *a0, __m512 *a1, const int two, const float *src, const pool_masks *pm,
          const ob_window *k, int y0, int y1, ob_shape in, int c, int sum) {
    const int s2 = k->sw == 2;
    for (int64_t iy = y0; iy < y1; iy++) {
        const float *row = src + iy * in.w + 16 * (int64_t)c * k->sw - k->pw;
        const float *row1 = row + 16 * (int64_t)k->sw;
        for (int kx = 0; kx < k->kw; kx++) {
            const __m512 v0 = pool_tap(row + kx, s2, pm, c, kx);
            const __m512 v1 = two ? pool_tap(row1 + kx, s2, pm, c + 1, kx) : v0;
            if (sum) {
                *a0 = _mm512_add_ps(*a0, v0);
                if (two) *a1 = _mm512_add_ps(*a1, v1);
            } else {
                *a0 = _mm512_mask_max_ps(*a0, (__mmask16)pm->valid[c][kx], v0, *a0);
                if (two) *a1 = _mm512_mask_max_ps(*a1, (__mmask16)pm->valid[c + 1][kx], v1, *a1);
            }
        }
    }
}

/* AVX-512, strides 1 and 2, up to POOL_TAPS columns and POOL_CHUNKS chunks: 16 outputs at a
 * time with every tap of the window in a register (a tap outside the row is masked off its
 * load), so each output sees the same taps in the same order as the passes above. A sum adds 0
 * for a masked tap (x + 0 = x: a sum from +0 is never -0). A max of a plane without NaN
 * (nan_free) folds the valid taps with vmaxps, which keeps the earlier of equal values as the
 * select does; these two run two chunks at once (two chains of dependent adds or maxes).
 * A max with a NaN tracks them per tap: the last NaN wins (PyTorch's rule). */
__attribute__((target("avx512f,bmi2"))) static void
pool_row_avx512(float *dst, const float *src, const pool_masks *pm, const ob_window *k, int y0,
                int y1, ob_shape in, ob_shape out, int sum, int nan_free, const int *cols,
                int rows) {
    const __m512 init = _mm512_set1_ps(sum ? 0.0f : -INFINITY);
    const int s2 = k->sw == 2;
    for (int c = 0; c < pm->chunks; c += 2) {
        const int64_t ox0 = 16 * (int64_t)c, left = out.w - ox0;
        const __mmask16 m0 = (__mmask16)(left >= 16 ? 0xffffu : (1u << left) - 1);
        if (sum || nan_free) {
            const int c1 = c + 1 < pm->chunks ? c + 1 : c; /* an odd last chunk: alone */
            __m512 a0 = init, a1 = init;
            if (c1 > c)
                pool_fold(&a0, &a1, 1, src, pm, k, y0, y1, in, c, sum);
            else
                pool_fold(&a0, &a1, 0, src, pm, k, y0, y1, in, c, sum);
            const __mmask16 m1 =
                (__mmask16)(left >= 32 ? 0xffffu : left <= 16 ? 0 : (1u << (left - 16)) - 1);
            if (cols) { /* an average pool's divisors */
                a0 = avg_divide(a0, cols + ox0, rows, m0);
                a1 = avg_divide(a1, cols + ox0 + 16, rows, m1);
            }
            _mm512_mask_storeu_ps(dst + ox0, m0, a0);
            if (c1 > c) _mm512_mask_storeu_ps(dst + ox0 + 16, m1, a1);
            continue;
        }
        for (int h = c; h < c + 2 && h < pm->chunks; h++) {
            /* m folds the taps that are not NaN (vmaxps v, m: v where v > m, else m, also where
             * v is NaN); the last NaN, if any, is the result (a NaN wins and stays) */
            const int64_t x0 = 16 * (int64_t)h, lh = out.w - x0;
            __m512 m = init, nan = init;
            __mmask16 any_nan = 0;
            for (int64_t iy = y0; iy < y1; iy++) {
                const float *row = src + iy * in.w + x0 * k->sw - k->pw;
                for (int kx = 0; kx < k->kw; kx++) {
                    const __mmask16 ok = (__mmask16)pm->valid[h][kx];
                    if (!ok) continue;
                    const __m512 v = pool_tap(row + kx, s2, pm, h, kx);
                    m = _mm512_mask_max_ps(m, ok, v, m);
                    const __mmask16 is_nan = ok & _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
                    nan = _mm512_mask_mov_ps(nan, is_nan, v);
                    any_nan |= is_nan;
                }
            }
            m = _mm512_mask_mov_ps(m, any_nan, nan);
            _mm512_mask_storeu_ps(dst + x0, (__mmask16)(lh >= 16 ? 0xffffu : (1u << lh) - 1), m);
        }
    }
}

/* h[i] = max(x[2i - 1], x[2i], x[2i + 1]) of one input row of w floats (-inf outside it), in that
 * order, for i < ow. */
__attribute__((target("avx512f"))) static void pool3_hmax(const float *x, int64_t w, int64_t ow,
                                                          float *h) {
    const __m512i even =
        _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd =
        _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    __m512 prev = ninf; /* the last chunk's odd taps: element 15 is x[2i - 1] of this one's i = 0 */
    for (int64_t i0 = 0; i0 < ow; i0 += 16) {
        const int64_t at = 2 * i0, left = w - at; /* floats of the row from here */
        const __mmask16 ma = (__mmask16)(left >= 16 ? 0xffffu : left <= 0 ? 0 : (1u << left) - 1);
        const __mmask16 mb =
            (__mmask16)(left >= 32 ? 0xffffu : left <= 16 ? 0 : (1u << (left - 16)) - 1);
        const __m512 a = _mm512_mask_loadu_ps(ninf, ma, x + at);
        const __m512 b = _mm512_mask_loadu_ps(ninf, mb, x + at + 16);
        const __m512 e = _mm512_permutex2var_ps(a, even, b);            /* x[2i] */
        const __m512 o = _mm512_permutex2var_ps(a, odd, b);             /* x[2i + 1] */
        const __m512 l = _mm512_castsi512_ps(_mm512_alignr_epi32(       /* x[2i - 1] */
            _mm512_castps_si512(o), _mm512_castps_si512(prev), 15));
        const __m512 r = _mm512_max_ps(o, _mm512_max_ps(e, l));
        const int64_t n = ow - i0;
        _mm512_mask_storeu_ps(h + i0, (__mmask16)(n >= 16 ? 0xffffu : (1u << n) - 1), r);
        prev = o;
    }
}

/* The pool of one plane (in.h x in.w) into out.h x out.w at dst; rows: 3 buffers of out.w. */
__attribute__((target("avx512f"))) static void pool3s2_plane(const float *x, ob_shape in,
                                                             ob_shape out, float *dst,
                                                             float *rows) {
    int64_t have = -2; /* the input row whose hmax is in rows[have % 3] (rows before it too) */
    for (int64_t oy = 0; oy < out.h; oy++) {
        const int64_t r0 = 2 * oy - 1 < 0 ? 0 : 2 * oy - 1;
        const int64_t r1 = 2 * oy + 2 > in.h ? in.h : 2 * oy + 2; /* rows [r0, r1) */
        for (int64_t r = have + 1 > r0 ? have + 1 : r0; r < r1; r++)
            pool3_hmax(x + r * in.w, in.w, out.w, rows + r % 3 * POOL3_COLS);
        if (r1 - 1 > have) have = r1 - 1;
        float *d = dst + oy * out.w;
        for (int64_t i0 = 0; i0 < out.w; i0 += 16) {
            const int64_t n = out.w - i0;
            const __mmask16 m = (__mmask16)(n >= 16 ? 0xffffu : (1u << n) - 1);
            __m512 acc = _mm512_set1_ps(-INFINITY);
            for (int64_t r = r0; r < r1; r++)
                acc = _mm512_max_ps(_mm512_maskz_loadu_ps(m, rows + r % 3 * POOL3_COLS + i0), acc);
            _mm512_mask_storeu_ps(d + i0, m, acc);
        }
    }
}
#endif

/* The AVX-512 pass's masks for this window and row, if it runs here under isa (else NULL). */
static const pool_masks *pool_avx512(const pool_taps *t, const ob_window *k, ob_shape out,
                                     int isa, pool_masks *pm) {
#ifdef POOL_AVX512
    static int bmi2 = -1;
    if (bmi2 < 0) {
        __builtin_cpu_init();
        bmi2 = __builtin_cpu_supports("bmi2");
    }
    if (isa != ISA_AVX512 || !bmi2 || !t->n || k->sw > 2 || out.w > 16 * POOL_CHUNKS) return NULL;
    pool_masks_of(t, k, out.w, pm);
    return pm;
#else
    (void)t, (void)k, (void)out, (void)isa, (void)pm;
    return NULL;
#endif
}

/* pm: the AVX-512 masks or NULL; nan_free: the plane has no NaN (a max pool may then skip
 * tracking them; 0 is always right); isa: float_isa's. */
static void pool_row(float *dst, const float *src, const pool_taps *t, const pool_masks *pm,
                     const ob_window *k, int y0, int y1, ob_shape in, ob_shape out, int sum,
                     int nan_free, int isa) {
#ifdef POOL_AVX512
    if (pm) {
        pool_row_avx512(dst, src, pm, k, y0, y1, in, out, sum, nan_free, NULL, 0);
        return;
    }
#endif
    (void)pm, (void)nan_free;
    __typeof__(pool_row_s1_base) *const pass = k->sw == 1   ? ISA_PICK(pool_row_s1, isa)
                                               : k->sw == 2 ? ISA_PICK(pool_row_s2, isa)
                                                            : ISA_PICK(pool_row_sn, isa);
    pass(dst, src, t, k, y0, y1, in, out, sum);
}

/* PyTorch's max_pool2d: padding is -inf, and a NaN in the window wins. */
void ob_maxpool2d(const float *x, int n, ob_shape in, const ob_window *k, ob_shape out, float *y,
                  int variant, int threads) {
    (void)threads; /* without OpenMP */
    pool_taps t;
    pool_taps_of(k, in, out, &t);
    pool_masks masks;
    const int isa = float_isa(variant);
    const pool_masks *pm = pool_avx512(&t, k, out, isa, &masks);
    const int stem = pool3s2_fits(k, out);
    __typeof__(nan_free_c_base) *const nan_free_c = ISA_PICK(nan_free_c, isa);
    __typeof__(pool3s2_plane_c_base) *pool3s2 = ISA_PICK(pool3s2_plane_c, isa);
#ifdef POOL_AVX512
    if (pm) pool3s2 = pool3s2_plane; /* the AVX-512 pass where its masks run */
#endif
    OB_OMP(omp parallel for num_threads(threads) schedule(static))
    for (size_t nc = 0; nc < (size_t)n * in.c; nc++) {
        const float *plane = x + nc * in.h * in.w;
        int nan_free = 0; /* the AVX-512 pass and the rows-first one skip NaN where none is */
        if (pm || stem) nan_free_c(plane, (size_t)in.h * in.w, &nan_free);
        if (nan_free && stem) { /* rows first */
            float rows[3 * POOL3_COLS] __attribute__((aligned(64)));
            pool3s2(plane, in, out, y + nc * out.h * out.w, rows);
            continue;
        }
        for (int oy = 0; oy < out.h; oy++) {
            int y0, y1;
            window(oy, k->kh, k->sh, k->ph, in.h, &y0, &y1);
            pool_row(y + (nc * out.h + oy) * out.w, plane, &t, pm, k, y0, y1, in, out, 0,
                     nan_free, isa);
        }
    }
}

/* PyTorch's avg_pool2d: the divisor counts the padding (count_include_pad) but not the part of
 * a ceil-mode window past it. */
/* The column factor of avg_pool2d's divisor (its count is a row factor times a column factor). */
static int avg_columns(const ob_window *k, ob_shape in, int count_include_pad, int ox) {
    const int xs = ox * k->sw - k->pw;
    const int xe = xs + k->kw < in.w + k->pw ? xs + k->kw : in.w + k->pw;
    int x0, x1;
    window(ox, k->kw, k->sw, k->pw, in.w, &x0, &x1);
    return count_include_pad ? xe - xs : x1 - x0;
}

#define POOL_COLS 1024 /* output columns whose divisor factors are kept on the stack */

void ob_avgpool2d(const float *x, int n, ob_shape in, const ob_window *k, int count_include_pad,
                  ob_shape out, float *y, int variant, int threads) {
    (void)threads; /* without OpenMP */
    pool_taps t;
    pool_taps_of(k, in, out, &t);
    pool_masks masks;
    const int isa = float_isa(variant);
    const pool_masks *pm = pool_avx512(&t, k, out, isa, &masks);
    int cols[POOL_COLS];
    const int kept = out.w <= POOL_COLS;
    for (int ox = 0; kept && ox < out.w; ox++)
        cols[ox] = avg_columns(k, in, count_include_pad, ox);
    OB_OMP(omp parallel for num_threads(threads) schedule(static))
    for (size_t nc = 0; nc < (size_t)n * in.c; nc++) {
        for (int oy = 0; oy < out.h; oy++) {
            float *dst = y + (nc * out.h + oy) * out.w;
            int y0, y1;
            window(oy, k->kh, k->sh, k->ph, in.h, &y0, &y1);
            const int ys = oy * k->sh - k->ph;
            const int ye = ys + k->kh < in.h + k->ph ? ys + k->kh : in.h + k->ph;
            const int rows = count_include_pad ? ye - ys : y1 - y0;
#ifdef POOL_AVX512
            if (pm) { /* the sums and their division in one pass (pm: out.w <= POOL_COLS) */
                pool_row_avx512(dst, x + nc * in.h * in.w, pm, k, y0, y1, in, out, 1, 0, cols,
                                rows);
                continue;
            }
#endif
            pool_row(dst, x + nc * in.h * in.w, &t, pm, k, y0, y1, in, out, 1, 0, isa);
            for (int64_t ox = 0; ox < out.w; ox++) {
                const int count =
                    rows * (kept ? cols[ox] : avg_columns(k, in, count_include_pad, (int)ox));
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
    /* output channel o is input channel o - pad_before, or zeros outside the input's: a
     * negative pad removes channels (a channel slice), as F.pad does */
    const size_t in_plane = (size_t)in.h * in.w, out_plane = (size_t)out.h * out.w;
    for (int img = 0; img < n; img++) {
        for (int o = 0; o < out.c; o++) {
            const int c = o - pad_before;
            float *dst = y + ((size_t)img * out.c + o) * out_plane;
            if (c < 0 || c >= in.c) {
                memset(dst, 0, sizeof(float) * out_plane);
                continue;
            }
            const float *src = x + ((size_t)img * in.c + c) * in_plane;
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
