/* xnor-popcount kernels of the onebit deployment engine (Python extension onebit.deploy._kernels).
 *
 * Bit convention: bit = 1 encodes -1, bit = 0 encodes +1. For two {-1,+1} vectors of length K
 * packed this way, dot(a, w) = K - 2 * popcount(a XOR w).
 *
 * Layouts (all little-endian 64-bit words; channel c of a pixel is bit c % 64 of word c / 64,
 * bits past the last channel are 0):
 *   packed activations  [n][h + 2 ph][w + 2 pw][kc]          kc = ceil(cin / 64)
 *   packed weights      [cout / 8][kh][kw][kc][8]           8 output channels interleaved
 *   tap sums            [cout / 8][kh][kw][8]               sum over cin of the +-1 weight
 *   input / output      float32 NCHW or NHWC (a flag each)
 * The padding border of the packed activations is all zero words, i.e. +1: the kernel runs one
 * branch-free loop over every tap, and an output pixel whose receptive field crosses the border
 * subtracts the tap sums of its out-of-bounds taps, which gives exactly the zero padding of the
 * float model (a padded tap contributes 0 there, +1 * w here).
 *
 * Three variants of the inner tile, chosen at run time: "portable" (__builtin_popcountll),
 * "avx2" (per-byte popcount with vpshufb nibble lookups, Mula et al. 2018), "avx512" (native
 * vpopcntq of AVX512-VPOPCNTDQ). They give bit-identical results: integer counts, then the same
 * float epilogue out = (float)dot * scale + bias (two roundings, no FMA; built with
 * -ffp-contract=off).
 *
 * Every size is checked against the buffers here as well as in Python, so a malformed call
 * raises ValueError instead of reading out of bounds.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define ONEBIT_X86 1
#include <immintrin.h>
#endif

#define LANES 8  /* output channels per weight block */
#define TILE_P 4 /* output pixels per tile */

enum { V_PORTABLE = 0, V_AVX2 = 1, V_AVX512 = 2, V_COUNT = 3 };
static const char *VARIANT_NAMES[V_COUNT] = {"portable", "avx2", "avx512"};

/* ------------------------------------------------------------------------------------ tile */

typedef struct {
    const uint64_t *in;     /* first word of the first tap of the first pixel */
    int64_t pix_stride;     /* words between the receptive fields of neighbouring pixels */
    const int64_t *word_off; /* offset from `in` of the k-th word of a receptive field */
    int64_t nwords;          /* words per receptive field, ntaps * kc, in (kh, kw, kc) order */
    const uint64_t *w;       /* this block's weights: nwords * LANES words, same order */
    const int32_t *corr;    /* TILE_P x LANES border corrections, or NULL if all are 0 */
    int32_t kbits;          /* ntaps * cin */
    const float *scale, *bias; /* LANES each */
    float *out;             /* first output channel of the first pixel */
    int64_t pix_out;        /* floats between neighbouring output pixels (cout, or 1 in NCHW) */
    int64_t lane_out;       /* floats between neighbouring output channels (1, or oh * ow) */
    int nlanes;             /* valid output channels in this block (the last one may be short) */
} Tile;

typedef void (*tile_fn)(const Tile *t, int P);

static void epilogue_scalar(const Tile *t, int P, const uint64_t pop[TILE_P][LANES]) {
    for (int i = 0; i < P; i++) {
        for (int j = 0; j < t->nlanes; j++) {
            int32_t corr = t->corr ? t->corr[i * LANES + j] : 0;
            int32_t dot = t->kbits - 2 * (int32_t)pop[i][j] - corr;
            float d = (float)dot;
            float prod = d * t->scale[j];
            t->out[i * t->pix_out + j * t->lane_out] = prod + t->bias[j];
        }
    }
}

static void tile_portable(const Tile *t, int P) {
    uint64_t pop[TILE_P][LANES] = {{0}};
    for (int64_t k = 0; k < t->nwords; k++) {
        const uint64_t *a = t->in + t->word_off[k], *w = t->w + k * LANES;
        for (int i = 0; i < P; i++) {
            const uint64_t av = a[i * t->pix_stride];
            for (int j = 0; j < LANES; j++) pop[i][j] += __builtin_popcountll(av ^ w[j]);
        }
    }
    epilogue_scalar(t, P, pop);
}

#ifdef ONEBIT_X86

/* dot = kbits - 2 pop - corr, out = dot * scale + bias for P pixels x 8 lanes (pop as int32),
 * stored NHWC (one vector per pixel) or NCHW (4 x 8 transpose, 4 pixels per channel store). */
__attribute__((target("avx2"), always_inline)) static inline void epilogue_avx2(
    const Tile *t, const int P, const __m256i pop[TILE_P]) {
    const __m256i kbits = _mm256_set1_epi32(t->kbits);
    const __m256 scale = _mm256_loadu_ps(t->scale), bias = _mm256_loadu_ps(t->bias);
    __m256 res[TILE_P];
    for (int i = 0; i < P; i++) {
        __m256i dot = _mm256_sub_epi32(kbits, _mm256_add_epi32(pop[i], pop[i]));
        if (t->corr) dot = _mm256_sub_epi32(dot, _mm256_loadu_si256((const __m256i *)(t->corr + i * LANES)));
        res[i] = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(dot), scale), bias);
    }
    if (t->nlanes == LANES && t->lane_out == 1) {
        for (int i = 0; i < P; i++) _mm256_storeu_ps(t->out + i * t->pix_out, res[i]);
    } else if (t->nlanes == LANES && t->pix_out == 1 && P == TILE_P) {
        const __m256 t0 = _mm256_unpacklo_ps(res[0], res[1]), t1 = _mm256_unpackhi_ps(res[0], res[1]);
        const __m256 t2 = _mm256_unpacklo_ps(res[2], res[3]), t3 = _mm256_unpackhi_ps(res[2], res[3]);
        const __m256 lanes[4] = {_mm256_shuffle_ps(t0, t2, 0x44), _mm256_shuffle_ps(t0, t2, 0xEE),
                                 _mm256_shuffle_ps(t1, t3, 0x44), _mm256_shuffle_ps(t1, t3, 0xEE)};
        for (int j = 0; j < 4; j++) { /* lanes[j] holds channel j (low half) and j + 4 (high) */
            _mm_storeu_ps(t->out + j * t->lane_out, _mm256_castps256_ps128(lanes[j]));
            _mm_storeu_ps(t->out + (j + 4) * t->lane_out, _mm256_extractf128_ps(lanes[j], 1));
        }
    } else {
        float tmp[TILE_P][LANES];
        for (int i = 0; i < P; i++) _mm256_storeu_ps(tmp[i], res[i]);
        for (int i = 0; i < P; i++)
            for (int j = 0; j < t->nlanes; j++) t->out[i * t->pix_out + j * t->lane_out] = tmp[i][j];
    }
}

/* Per-byte popcount of x with two 4-bit table lookups (vpshufb). */
__attribute__((target("avx2"), always_inline)) static inline __m256i popcount_bytes(__m256i x,
                                                                                  __m256i lut,
                                                                                  __m256i low) {
    __m256i lo = _mm256_and_si256(x, low);
    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), low);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

/* Byte-wise popcounts of the words [k0, k1) (at most 31: 31 * 8 < 256) of P pixels' receptive
 * fields XOR the block's weights, added to acc (lanes 0-3 and 4-7 of the block in two ymm
 * registers; the activation word of a pixel is broadcast to all lanes). */
__attribute__((target("avx2"), always_inline)) static inline void count_words_avx2(
    const Tile *t, const int P, int64_t k0, int64_t k1, __m256i acc[TILE_P][2]) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2,
                                         1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    const int64_t ps = t->pix_stride;
    for (int64_t k = k0; k < k1; k++) {
        const uint64_t *a = t->in + t->word_off[k];
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)(t->w + k * LANES));
        const __m256i w1 = _mm256_loadu_si256((const __m256i *)(t->w + k * LANES + 4));
        for (int i = 0; i < P; i++) {
            const __m256i av = _mm256_set1_epi64x((long long)a[i * ps]);
            acc[i][0] = _mm256_add_epi8(acc[i][0], popcount_bytes(_mm256_xor_si256(av, w0), lut, low));
            acc[i][1] = _mm256_add_epi8(acc[i][1], popcount_bytes(_mm256_xor_si256(av, w1), lut, low));
        }
    }
}

/* AVX2 tile: the words are counted in groups of 31, each group's byte counts summed into
 * 64-bit totals with vpsadbw (a single group, the common case, skips the totals). */
__attribute__((target("avx2"), always_inline)) static inline void tile_avx2_p(const Tile *t,
                                                                            const int P) {
    const __m256i zero = _mm256_setzero_si256();
    __m256i tot[TILE_P][2], acc[TILE_P][2];
    for (int i = 0; i < P; i++) acc[i][0] = acc[i][1] = zero;
    if (t->nwords <= 31) {
        count_words_avx2(t, P, 0, t->nwords, acc);
        for (int i = 0; i < P; i++) {
            tot[i][0] = _mm256_sad_epu8(acc[i][0], zero);
            tot[i][1] = _mm256_sad_epu8(acc[i][1], zero);
        }
    } else {
        for (int i = 0; i < P; i++) tot[i][0] = tot[i][1] = zero;
        for (int64_t k0 = 0; k0 < t->nwords; k0 += 31) {
            for (int i = 0; i < P; i++) acc[i][0] = acc[i][1] = zero;
            count_words_avx2(t, P, k0, k0 + 31 < t->nwords ? k0 + 31 : t->nwords, acc);
            for (int i = 0; i < P; i++) {
                tot[i][0] = _mm256_add_epi64(tot[i][0], _mm256_sad_epu8(acc[i][0], zero));
                tot[i][1] = _mm256_add_epi64(tot[i][1], _mm256_sad_epu8(acc[i][1], zero));
            }
        }
    }
    const __m256i even = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    __m256i pop[TILE_P];
    for (int i = 0; i < P; i++) {
        /* the low 32 bits of the eight 64-bit sums, in lane order */
        __m256i lo = _mm256_permutevar8x32_epi32(tot[i][0], even);
        __m256i hi = _mm256_permutevar8x32_epi32(tot[i][1], even);
        pop[i] = _mm256_permute2x128_si256(lo, hi, 0x20);
    }
    epilogue_avx2(t, P, pop);
}

__attribute__((target("avx2"))) static void tile_avx2(const Tile *t, int P) {
    switch (P) {
    case 4: tile_avx2_p(t, 4); break;
    case 3: tile_avx2_p(t, 3); break;
    case 2: tile_avx2_p(t, 2); break;
    default: tile_avx2_p(t, 1); break;
    }
}

/* AVX-512 tile: the block's eight 64-bit lanes in one zmm register, native vpopcntq. */
__attribute__((target("avx512f,avx512vpopcntdq,avx2"), always_inline)) static inline void
tile_avx512_p(const Tile *t, const int P) {
    __m512i acc[TILE_P];
    for (int i = 0; i < P; i++) acc[i] = _mm512_setzero_si512();
    for (int64_t k = 0; k < t->nwords; k++) {
        const uint64_t *a = t->in + t->word_off[k];
        const __m512i wv = _mm512_loadu_si512((const void *)(t->w + k * LANES));
        for (int i = 0; i < P; i++) {
            const __m512i av = _mm512_set1_epi64((long long)a[i * t->pix_stride]);
            acc[i] = _mm512_add_epi64(acc[i], _mm512_popcnt_epi64(_mm512_xor_si512(av, wv)));
        }
    }
    __m256i pop[TILE_P];
    for (int i = 0; i < P; i++) pop[i] = _mm512_cvtepi64_epi32(acc[i]);
    epilogue_avx2(t, P, pop);
}

__attribute__((target("avx512f,avx512vpopcntdq,avx2"))) static void tile_avx512(const Tile *t,
                                                                                int P) {
    switch (P) {
    case 4: tile_avx512_p(t, 4); break;
    case 3: tile_avx512_p(t, 3); break;
    case 2: tile_avx512_p(t, 2); break;
    default: tile_avx512_p(t, 1); break;
    }
}

#endif /* ONEBIT_X86 */

static int variant_supported(int v) {
    if (v == V_PORTABLE) return 1;
#ifdef ONEBIT_X86
    __builtin_cpu_init();
    if (v == V_AVX2) return __builtin_cpu_supports("avx2");
    if (v == V_AVX512)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq") &&
               __builtin_cpu_supports("avx2");
#endif
    return 0;
}

static int variant_compiled(int v) {
#ifdef ONEBIT_X86
    return v >= 0 && v < V_COUNT;
#else
    return v == V_PORTABLE;
#endif
}

static tile_fn variant_tile(int v) {
#ifdef ONEBIT_X86
    if (v == V_AVX2) return tile_avx2;
    if (v == V_AVX512) return tile_avx512;
#endif
    return tile_portable;
}

/* ------------------------------------------------------------------------------------ conv */

typedef struct {
    int64_t n, h, w, cin, cout, kh, kw, sh, sw, ph, pw, dh, dw;
    int64_t kc, hp, wp, oh, ow, ncb, ntaps;
} Geometry;

/* Border correction tables: for output row y (column x) and block cb, the tap sums of the taps
 * whose input row (column) lies in the padding, summed over the other kernel axis. A pixel's
 * correction is row[y] + col[x] minus the taps counted twice (corner: both out of bounds). */
static int tap_row_out(const Geometry *g, int64_t y, int64_t ky) {
    int64_t iy = y * g->sh - g->ph + ky * g->dh;
    return iy < 0 || iy >= g->h;
}

static int tap_col_out(const Geometry *g, int64_t x, int64_t kx) {
    int64_t ix = x * g->sw - g->pw + kx * g->dw;
    return ix < 0 || ix >= g->w;
}

static void border_tables(const Geometry *g, const int32_t *tapsum, int32_t *row, int32_t *col) {
    memset(row, 0, sizeof(int32_t) * (size_t)(g->oh * g->ncb * LANES));
    memset(col, 0, sizeof(int32_t) * (size_t)(g->ow * g->ncb * LANES));
    for (int64_t cb = 0; cb < g->ncb; cb++) {
        for (int64_t ky = 0; ky < g->kh; ky++) {
            for (int64_t kx = 0; kx < g->kw; kx++) {
                const int32_t *s = tapsum + (cb * g->ntaps + ky * g->kw + kx) * LANES;
                for (int64_t y = 0; y < g->oh; y++)
                    if (tap_row_out(g, y, ky))
                        for (int j = 0; j < LANES; j++) row[(y * g->ncb + cb) * LANES + j] += s[j];
                for (int64_t x = 0; x < g->ow; x++)
                    if (tap_col_out(g, x, kx))
                        for (int j = 0; j < LANES; j++) col[(x * g->ncb + cb) * LANES + j] += s[j];
            }
        }
    }
}

static void border_correction(const Geometry *g, const int32_t *tapsum, const int32_t *row,
                              const int32_t *col, int64_t cb, int64_t y, int64_t x, int32_t *corr) {
    const int32_t *r = row + (y * g->ncb + cb) * LANES, *c = col + (x * g->ncb + cb) * LANES;
    for (int j = 0; j < LANES; j++) corr[j] = r[j] + c[j];
    for (int64_t ky = 0; ky < g->kh; ky++) {
        if (!tap_row_out(g, y, ky)) continue;
        for (int64_t kx = 0; kx < g->kw; kx++) {
            if (!tap_col_out(g, x, kx)) continue;
            const int32_t *s = tapsum + (cb * g->ntaps + ky * g->kw + kx) * LANES;
            for (int j = 0; j < LANES; j++) corr[j] -= s[j];
        }
    }
}

static int col_border(const Geometry *g, int64_t x) {
    return tap_col_out(g, x, 0) || tap_col_out(g, x, g->kw - 1);
}

/* One work item = one output row of one image for one block of 8 output channels, so that a
 * thread reuses the row's input words and the block's weights from L1. Pixels [lo, hi) of a
 * row are interior (no tap in the padding); the others get their border correction. */
static void conv_run(const Geometry *g, const uint64_t *in, const uint64_t *wts,
                     const int32_t *tapsum, const float *scale, const float *bias, float *out,
                     const int64_t *word_off, const int32_t *row_corr, const int32_t *col_corr,
                     int out_nhwc, tile_fn tile, int threads) {
    const int64_t items = g->n * g->oh * g->ncb, plane = g->oh * g->ow;
    int64_t lo = 0, hi = 0;
    while (lo < g->ow && col_border(g, lo)) lo++;
    hi = lo;
    while (hi < g->ow && !col_border(g, hi)) hi++;
    (void)threads;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t it = 0; it < items; it++) {
        const int64_t cb = it % g->ncb, row = it / g->ncb;
        const int64_t b = row / g->oh, y = row % g->oh;
        int32_t corr[TILE_P * LANES];
        Tile t;
        t.pix_stride = g->sw * g->kc;
        t.word_off = word_off;
        t.nwords = g->ntaps * g->kc;
        t.w = wts + cb * g->ntaps * g->kc * LANES;
        t.kbits = (int32_t)(g->ntaps * g->cin);
        t.scale = scale + cb * LANES;
        t.bias = bias + cb * LANES;
        t.pix_out = out_nhwc ? g->cout : 1;
        t.lane_out = out_nhwc ? 1 : plane;
        t.nlanes = (int)(g->cout - cb * LANES < LANES ? g->cout - cb * LANES : LANES);
        const uint64_t *in_row = in + ((b * g->hp + y * g->sh) * g->wp) * g->kc;
        float *out_row = out_nhwc ? out + ((b * g->oh + y) * g->ow) * g->cout + cb * LANES
                                  : out + (b * g->cout + cb * LANES) * plane + y * g->ow;
        const int row_border = tap_row_out(g, y, 0) || tap_row_out(g, y, g->kh - 1);
        for (int64_t x0 = 0; x0 < g->ow; x0 += TILE_P) {
            const int P = (int)(g->ow - x0 < TILE_P ? g->ow - x0 : TILE_P);
            t.corr = NULL;
            if (row_border || x0 < lo || x0 + P > hi) {
                for (int i = 0; i < P; i++) {
                    const int64_t x = x0 + i;
                    if (row_border || x < lo || x >= hi)
                        border_correction(g, tapsum, row_corr, col_corr, cb, y, x, corr + i * LANES);
                    else
                        memset(corr + i * LANES, 0, sizeof(int32_t) * LANES);
                }
                t.corr = corr;
            }
            t.in = in_row + x0 * t.pix_stride;
            t.out = out_row + x0 * t.pix_out;
            tile(&t, P);
        }
    }
}

/* ------------------------------------------------------------------------------------ pack */

/* One image row of w pixels into packed words (kc per pixel): bit k of word g of pixel x is
 * !(src[x * pix + (64 g + k) * chan] + bias[64 g + k] >= 0), i.e. set for -1 (NaN included, as
 * torch.where(x >= 0, 1, -1) does). pix / chan: floats between pixels / between channels. */
typedef void (*pack_row_fn)(const float *src, int64_t pix, int64_t chan, const float *bias,
                            int64_t c, int64_t w, int64_t kc, uint64_t *words);

static void pack_row_portable(const float *src, int64_t pix, int64_t chan, const float *bias,
                              int64_t c, int64_t w, int64_t kc, uint64_t *words) {
    memset(words, 0, sizeof(uint64_t) * (size_t)(w * kc));
    for (int64_t ch = 0; ch < c; ch++) {
        const float *s = src + ch * chan;
        const float b = bias[ch];
        uint64_t *dst = words + ch / 64;
        const int shift = (int)(ch % 64);
        for (int64_t x = 0; x < w; x++) dst[x * kc] |= (uint64_t)!(s[x * pix] + b >= 0.0f) << shift;
    }
}

#ifdef ONEBIT_X86
/* AVX2: channels contiguous (NHWC): one movemask gives 8 channels of a pixel. Pixels
 * contiguous (NCHW): one movemask gives 8 pixels of a channel, and the 64 x 8 bit block of a
 * channel group is transposed with byte shifts + movemask_epi8 (bit p of every byte). */
__attribute__((target("avx2"))) static void pack_row_avx2(const float *src, int64_t pix,
                                                          int64_t chan, const float *bias,
                                                          int64_t c, int64_t w, int64_t kc,
                                                          uint64_t *words) {
    const __m256 zero = _mm256_setzero_ps();
    if (chan != 1 && pix != 1) {
        pack_row_portable(src, pix, chan, bias, c, w, kc, words);
        return;
    }
    for (int64_t g = 0; g < kc; g++) {
        const int64_t base = g * 64, n = c - base < 64 ? c - base : 64;
        if (chan == 1) {
            for (int64_t x = 0; x < w; x++) {
                const float *s = src + x * pix + base;
                uint64_t word = 0;
                int64_t k = 0;
                for (; k + 8 <= n; k += 8) {
                    __m256 v = _mm256_add_ps(_mm256_loadu_ps(s + k), _mm256_loadu_ps(bias + base + k));
                    word |= (uint64_t)_mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_NGE_UQ)) << k;
                }
                for (; k < n; k++) word |= (uint64_t)!(s[k] + bias[base + k] >= 0.0f) << k;
                words[x * kc + g] = word;
            }
            continue;
        }
        for (int64_t x0 = 0; x0 < w; x0 += 8) {
            const int64_t np = w - x0 < 8 ? w - x0 : 8;
            uint8_t mask[64] = {0}; /* mask[k]: bit p = pixel x0 + p of channel base + k */
            for (int64_t k = 0; k < n; k++) {
                const float *s = src + (base + k) * chan + x0;
                const float b = bias[base + k];
                if (np == 8) {
                    __m256 v = _mm256_add_ps(_mm256_loadu_ps(s), _mm256_set1_ps(b));
                    mask[k] = (uint8_t)_mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_NGE_UQ));
                } else {
                    for (int64_t p = 0; p < np; p++) mask[k] |= (uint8_t)(!(s[p] + b >= 0.0f) << p);
                }
            }
            __m256i lo = _mm256_loadu_si256((const __m256i *)mask);
            __m256i hi = _mm256_loadu_si256((const __m256i *)(mask + 32));
            for (int64_t p = 7; p >= 0; p--) { /* bit p of each byte is now its top bit */
                if (p < np) {
                    uint64_t word = (uint32_t)_mm256_movemask_epi8(lo);
                    word |= (uint64_t)(uint32_t)_mm256_movemask_epi8(hi) << 32;
                    words[(x0 + p) * kc + g] = word;
                }
                lo = _mm256_add_epi8(lo, lo);
                hi = _mm256_add_epi8(hi, hi);
            }
        }
    }
}
#endif

static void pack_run(const float *x, int nhwc, int64_t n, int64_t c, int64_t h, int64_t w,
                     int64_t ph, int64_t pw, const float *bias, uint64_t *out, int variant,
                     int threads) {
    const int64_t kc = (c + 63) / 64, hp = h + 2 * ph, wp = w + 2 * pw;
    const int64_t pix = nhwc ? c : 1, chan = nhwc ? 1 : h * w;
    pack_row_fn pack_row = pack_row_portable;
#ifdef ONEBIT_X86
    if (variant != V_PORTABLE) pack_row = pack_row_avx2;
#endif
    (void)variant;
    (void)threads;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t row = 0; row < n * hp; row++) {
        const int64_t b = row / hp, y = row % hp - ph;
        uint64_t *dst = out + row * wp * kc;
        if (y < 0 || y >= h) {
            memset(dst, 0, sizeof(uint64_t) * (size_t)(wp * kc));
            continue;
        }
        memset(dst, 0, sizeof(uint64_t) * (size_t)(pw * kc));
        memset(dst + (pw + w) * kc, 0, sizeof(uint64_t) * (size_t)(pw * kc));
        const float *src = x + b * c * h * w + y * (nhwc ? w * c : w);
        pack_row(src, pix, chan, bias, c, w, kc, dst + pw * kc);
    }
}

/* ------------------------------------------------------------------------------ Python glue */

#define MAX_DIM ((int64_t)1 << 31)

/* a * b, or -1 if it overflows or either is negative */
static int64_t mul(int64_t a, int64_t b) {
    int64_t r;
    if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &r)) return -1;
    return r;
}

static int64_t mul_all(const int64_t *v, int n) {
    int64_t r = 1;
    for (int i = 0; i < n && r >= 0; i++) r = mul(r, v[i]);
    return r;
}

typedef struct {
    Py_buffer view;
    int held;
} Buf;

/* Acquire a C-contiguous buffer of exactly `count` items of `itemsize` bytes. */
static int get_buf(PyObject *obj, Buf *buf, const char *name, int64_t count, Py_ssize_t itemsize,
                   int writable) {
    buf->held = 0;
    int flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, &buf->view, flags) != 0) return -1;
    buf->held = 1;
    if (buf->view.itemsize != itemsize || count < 0 ||
        buf->view.len != (Py_ssize_t)count * itemsize) {
        PyErr_Format(PyExc_ValueError,
                     "%s: expected %lld items of %zd bytes, got a buffer of %zd bytes (itemsize %zd)",
                     name, (long long)count, itemsize, buf->view.len, buf->view.itemsize);
        return -1;
    }
    return 0;
}

static void release(Buf *bufs, int n) {
    for (int i = 0; i < n; i++)
        if (bufs[i].held) PyBuffer_Release(&bufs[i].view);
}

static int parse_variant(int variant, int threads) {
    if (!variant_compiled(variant) || !variant_supported(variant)) {
        PyErr_Format(PyExc_ValueError, "kernel variant %d is not available on this machine", variant);
        return -1;
    }
    if (threads < 1 || threads > 4096) {
        PyErr_Format(PyExc_ValueError, "threads must be in [1, 4096], got %d", threads);
        return -1;
    }
    return 0;
}

static PyObject *py_pack(PyObject *self, PyObject *args) {
    PyObject *x_obj, *bias_obj, *out_obj;
    int nhwc, variant, threads;
    long long n, c, h, w, ph, pw;
    (void)self;
    if (!PyArg_ParseTuple(args, "Op(LLLL)(LL)OOii", &x_obj, &nhwc, &n, &c, &h, &w, &ph, &pw,
                          &bias_obj, &out_obj, &variant, &threads))
        return NULL;
    if (parse_variant(variant, threads) < 0) return NULL;
    if (n < 1 || c < 1 || h < 1 || w < 1 || ph < 0 || pw < 0 || n > MAX_DIM || c > MAX_DIM ||
        h > MAX_DIM || w > MAX_DIM || ph > MAX_DIM || pw > MAX_DIM) {
        PyErr_SetString(PyExc_ValueError, "pack: sizes must be positive (padding >= 0)");
        return NULL;
    }
    int64_t kc = (c + 63) / 64;
    int64_t in_dims[4] = {n, c, h, w};
    int64_t out_dims[4] = {n, h + 2 * ph, w + 2 * pw, kc};
    Buf bufs[3];
    memset(bufs, 0, sizeof(bufs));
    if (get_buf(x_obj, &bufs[0], "pack input", mul_all(in_dims, 4), 4, 0) < 0 ||
        get_buf(bias_obj, &bufs[1], "pack bias", c, 4, 0) < 0 ||
        get_buf(out_obj, &bufs[2], "pack output", mul_all(out_dims, 4), 8, 1) < 0) {
        release(bufs, 3);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    pack_run((const float *)bufs[0].view.buf, nhwc, n, c, h, w, ph, pw,
             (const float *)bufs[1].view.buf, (uint64_t *)bufs[2].view.buf, variant, threads);
    Py_END_ALLOW_THREADS
    release(bufs, 3);
    Py_RETURN_NONE;
}

static PyObject *py_conv(PyObject *self, PyObject *args) {
    PyObject *in_obj, *w_obj, *ts_obj, *scale_obj, *bias_obj, *out_obj;
    int out_nhwc, variant, threads;
    long long v[13];
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOOOp(LLLLLLLLLLLLL)ii", &in_obj, &w_obj, &ts_obj, &scale_obj,
                          &bias_obj, &out_obj, &out_nhwc, &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
                          &v[6], &v[7], &v[8], &v[9], &v[10], &v[11], &v[12], &variant, &threads))
        return NULL;
    if (parse_variant(variant, threads) < 0) return NULL;
    Geometry g = {v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12],
                  0, 0, 0, 0, 0, 0, 0};
    for (int i = 0; i < 13; i++) {
        int is_pad = i == 9 || i == 10;
        if (v[i] < (is_pad ? 0 : 1) || v[i] > MAX_DIM) {
            PyErr_Format(PyExc_ValueError, "conv: geometry entry %d is %lld, out of range", i, v[i]);
            return NULL;
        }
    }
    g.kc = (g.cin + 63) / 64;
    g.hp = g.h + 2 * g.ph;
    g.wp = g.w + 2 * g.pw;
    g.ncb = (g.cout + LANES - 1) / LANES;
    g.ntaps = mul(g.kh, g.kw);
    int64_t span_h = mul(g.dh, g.kh - 1), span_w = mul(g.dw, g.kw - 1);
    if (g.ntaps < 0 || span_h < 0 || span_w < 0 || span_h >= g.hp || span_w >= g.wp ||
        mul(g.ntaps, g.cin) < 0 || mul(g.ntaps, g.cin) >= ((int64_t)1 << 30)) {
        PyErr_SetString(PyExc_ValueError, "conv: the kernel does not fit the padded input");
        return NULL;
    }
    g.oh = (g.hp - span_h - 1) / g.sh + 1;
    g.ow = (g.wp - span_w - 1) / g.sw + 1;
    int64_t in_dims[4] = {g.n, g.hp, g.wp, g.kc};
    int64_t w_dims[4] = {g.ncb, g.ntaps, g.kc, LANES};
    int64_t ts_dims[3] = {g.ncb, g.ntaps, LANES};
    int64_t out_dims[4] = {g.n, g.oh, g.ow, g.cout}; /* either layout: same count */
    Buf bufs[6];
    memset(bufs, 0, sizeof(bufs));
    if (get_buf(in_obj, &bufs[0], "conv input", mul_all(in_dims, 4), 8, 0) < 0 ||
        get_buf(w_obj, &bufs[1], "conv weights", mul_all(w_dims, 4), 8, 0) < 0 ||
        get_buf(ts_obj, &bufs[2], "conv tap sums", mul_all(ts_dims, 3), 4, 0) < 0 ||
        get_buf(scale_obj, &bufs[3], "conv scale", g.ncb * LANES, 4, 0) < 0 ||
        get_buf(bias_obj, &bufs[4], "conv bias", g.ncb * LANES, 4, 0) < 0 ||
        get_buf(out_obj, &bufs[5], "conv output", mul_all(out_dims, 4), 4, 1) < 0) {
        release(bufs, 6);
        return NULL;
    }
    int64_t *word_off = (int64_t *)malloc(sizeof(int64_t) * (size_t)(g.ntaps * g.kc));
    int32_t *row_corr = (int32_t *)malloc(sizeof(int32_t) * (size_t)(g.oh * g.ncb * LANES));
    int32_t *col_corr = (int32_t *)malloc(sizeof(int32_t) * (size_t)(g.ow * g.ncb * LANES));
    if (word_off == NULL || row_corr == NULL || col_corr == NULL) {
        free(word_off);
        free(row_corr);
        free(col_corr);
        release(bufs, 6);
        return PyErr_NoMemory();
    }
    for (int64_t ky = 0; ky < g.kh; ky++)
        for (int64_t kx = 0; kx < g.kw; kx++)
            for (int64_t c = 0; c < g.kc; c++)
                word_off[(ky * g.kw + kx) * g.kc + c] = (ky * g.dh * g.wp + kx * g.dw) * g.kc + c;
    tile_fn tile = variant_tile(variant);
    Py_BEGIN_ALLOW_THREADS
    border_tables(&g, (const int32_t *)bufs[2].view.buf, row_corr, col_corr);
    conv_run(&g, (const uint64_t *)bufs[0].view.buf, (const uint64_t *)bufs[1].view.buf,
             (const int32_t *)bufs[2].view.buf, (const float *)bufs[3].view.buf,
             (const float *)bufs[4].view.buf, (float *)bufs[5].view.buf, word_off, row_corr, col_corr, out_nhwc, tile, threads);
    Py_END_ALLOW_THREADS
    free(word_off);
    free(row_corr);
    free(col_corr);
    release(bufs, 6);
    Py_RETURN_NONE;
}

static PyObject *py_variants(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    PyObject *list = PyList_New(0);
    if (list == NULL) return NULL;
    for (int v = 0; v < V_COUNT; v++) {
        if (!variant_compiled(v)) continue;
        PyObject *item = Py_BuildValue("(sO)", VARIANT_NAMES[v], variant_supported(v) ? Py_True : Py_False);
        if (item == NULL || PyList_Append(list, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(item);
    }
    return list;
}

static PyObject *py_openmp(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
#ifdef _OPENMP
    Py_RETURN_TRUE;
#else
    Py_RETURN_FALSE;
#endif
}

static PyMethodDef METHODS[] = {
    {"pack", py_pack, METH_VARARGS,
     "pack(x, nhwc, (n, c, h, w), (ph, pw), bias, out, variant, threads): sign-binarize x + bias "
     "into padded NHWC words."},
    {"conv", py_conv, METH_VARARGS,
     "conv(packed, weights, tapsum, scale, bias, out, out_nhwc, (n, h, w, cin, cout, kh, kw, sh, "
     "sw, ph, pw, dh, dw), variant, threads): xnor-popcount convolution, out = dot * scale + "
     "bias, written NHWC or NCHW."},
    {"variants", py_variants, METH_NOARGS,
     "variants() -> [(name, supported on this CPU)], in index order."},
    {"openmp", py_openmp, METH_NOARGS, "openmp() -> whether the kernels were built with OpenMP."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_kernels",
                                    "xnor-popcount kernels of onebit.deploy (see bitconv.c).", -1,
                                    METHODS, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&MODULE); }
