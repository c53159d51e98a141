/* Binary convolution of the onebit C runtime (interface and semantics: bconv.h).
 *
 * Bit convention: bit = 1 encodes -1, bit = 0 encodes +1. For two {-1,+1} vectors of K bits
 * packed this way, dot = K - 2 * popcount(a XOR w).
 *
 * The convolution is a binary GEMM over receptive fields packed densely along taps x channels:
 * bit t * cin + c of an output pixel's field is channel c of its tap t (taps in (ky, kx) order),
 * so a field of K = kh * kw * cin bits takes nw = ceil(K / 64) words whatever cin is (a 3x3x16
 * field is 3 words, not 9 words of 16 useful bits). Layouts (little-endian 64-bit words):
 *   weights   [cout / 8][nw][8]         8 output channels interleaved, repacked at prepare
 *   tap sums  [cout / 8][kh * kw][8]    sum over cin of the +-1 weights of a tap
 *   scratch   packed input [n][h][w][ceil(cin / 64)], then the fields [n * ho * wo][nw]
 *             (a 1x1 stride-1 unpadded conv reads the packed input as its fields)
 * A padded tap is packed as 0 bits (+1); an output pixel whose field crosses the border then
 * subtracts the tap sums of its out-of-bounds taps, which gives exactly the zero padding of the
 * float model (a padded tap adds 0 there, +1 * w here).
 *
 * The variants differ only in the tile that counts popcount(field XOR weights) for up to TILE_P
 * pixels x 8 output channels: "portable" (__builtin_popcountll), "avx2" (per-byte popcount with
 * vpshufb nibble lookups, Mula et al. 2018), "avx512" (vpopcntq of AVX512-VPOPCNTDQ), "neon"
 * (vcntq_u8 and pairwise widening adds). The counts are integers and the epilogue
 * y = (float)dot * scale + bias is shared, so every variant gives bit-identical outputs.
 */
#include "bconv.h"

#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define OB_X86 1
#include <immintrin.h>
#endif

#if defined(__aarch64__)
#define OB_NEON 1
#include <arm_neon.h>
#endif

#define LANES 8   /* output channels per weight block */
#define TILE_P 4  /* output pixels per tile */
#define ALIGN 64  /* bytes: every array starts on a cache line */
#define GROUP 16  /* output pixels per work item: their fields stay in L1 across the blocks */
#define CB_CHUNK 8 /* weight blocks per work item */

struct ob_bconv {
    ob_bconv_geom g;
    int variant;
    int kc;          /* words per packed input pixel, ceil(cin / 64) */
    int ntaps;       /* kh * kw */
    int nw;          /* words per receptive field, ceil(kbits / 64) */
    int ncb;         /* weight blocks, ceil(cout / LANES) */
    int32_t kbits;   /* ntaps * cin */
    uint64_t *w;     /* [ncb][nw][LANES] */
    int32_t *tapsum; /* [ncb][ntaps][LANES] */
    float *scale;    /* [ncb * LANES], 0 past cout */
    float *bias;     /* [ncb * LANES] */
    float *act_bias; /* [cin], 0 when none was given */
    void *block;     /* the one allocation all of the above live in */
};

/* ------------------------------------------------------------------------------------ tiles */

/* pop[i][j] = popcount(field of pixel i XOR weights of lane j) over the nw words; fields are
 * rows of nw words (a, a + nw, ...), weights the block's [nw][LANES]. */
typedef void (*tile_fn)(const uint64_t *a, int64_t nw, const uint64_t *w, int P,
                        int32_t pop[TILE_P][LANES]);

/* One pixel against the 8 lanes: each loaded activation word is used 8 times, the 8 counts stay
 * in registers. */
static inline __attribute__((always_inline)) void count_portable(const uint64_t *a, int64_t nw,
                                                                 const uint64_t *w,
                                                                 int32_t pop[LANES]) {
    uint64_t c0 = 0, c1 = 0, c2 = 0, c3 = 0, c4 = 0, c5 = 0, c6 = 0, c7 = 0;
    for (int64_t k = 0; k < nw; k++, w += LANES) {
        const uint64_t av = a[k];
        c0 += (uint64_t)__builtin_popcountll(av ^ w[0]);
        c1 += (uint64_t)__builtin_popcountll(av ^ w[1]);
        c2 += (uint64_t)__builtin_popcountll(av ^ w[2]);
        c3 += (uint64_t)__builtin_popcountll(av ^ w[3]);
        c4 += (uint64_t)__builtin_popcountll(av ^ w[4]);
        c5 += (uint64_t)__builtin_popcountll(av ^ w[5]);
        c6 += (uint64_t)__builtin_popcountll(av ^ w[6]);
        c7 += (uint64_t)__builtin_popcountll(av ^ w[7]);
    }
    pop[0] = (int32_t)c0, pop[1] = (int32_t)c1, pop[2] = (int32_t)c2, pop[3] = (int32_t)c3;
    pop[4] = (int32_t)c4, pop[5] = (int32_t)c5, pop[6] = (int32_t)c6, pop[7] = (int32_t)c7;
}

static void tile_portable(const uint64_t *a, int64_t nw, const uint64_t *w, int P,
                          int32_t pop[TILE_P][LANES]) {
    for (int i = 0; i < P; i++) count_portable(a + i * nw, nw, w, pop[i]);
}

/* ------------------------------------------------------------------------------ variants */

static const char *const NAMES[] = {"portable", "avx2", "avx512", "neon"};
#define NVARIANTS 4

static int variant_runnable(int v) {
    if (v == OB_KERNEL_PORTABLE) return 1;
    return 0;
}

static tile_fn variant_tile(int v) {
    (void)v;
    return tile_portable;
}

int ob_kernel_variant(const char *name) {
    if (name == NULL) return -1;
    if (strcmp(name, "auto") == 0) {
        const int order[] = {OB_KERNEL_AVX512, OB_KERNEL_AVX2, OB_KERNEL_NEON, OB_KERNEL_PORTABLE};
        for (int i = 0; i < NVARIANTS; i++)
            if (variant_runnable(order[i])) return order[i];
        return -1;
    }
    for (int v = 0; v < NVARIANTS; v++)
        if (strcmp(name, NAMES[v]) == 0) return variant_runnable(v) ? v : -1;
    return -1;
}

const char *ob_kernel_name(int variant) {
    return variant >= 0 && variant < NVARIANTS ? NAMES[variant] : "unknown";
}

/* ------------------------------------------------------------------------------- packing */

/* Ors the nbits bits of src (whole words, bits past nbits 0) into dst starting at bit pos. */
static void append_bits(uint64_t *dst, int64_t pos, const uint64_t *src, int64_t nbits) {
    const int shift = (int)(pos & 63);
    uint64_t *d = dst + (pos >> 6);
    if (shift == 0) {
        for (int64_t j = 0; j < (nbits + 63) / 64; j++) d[j] |= src[j];
        return;
    }
    for (int64_t j = 0; j * 64 < nbits; j++) {
        const int64_t nb = nbits - j * 64 < 64 ? nbits - j * 64 : 64;
        d[j] |= src[j] << shift;
        if (shift + nb > 64) d[j + 1] |= src[j] >> (64 - shift);
    }
}

/* One input row of w pixels (channel c at src[c * plane + x]) into kc words per pixel: bit k
 * of word g is !(x + bias >= 0) for channel 64 g + k (NaN gives 1, i.e. -1, as x >= 0 is false
 * for it). Eight pixels at a time so the eight words stay in registers. */
static void pack_row_portable(const float *src, int64_t plane, const float *bias, int64_t cin,
                              int64_t w, int64_t kc, uint64_t *words) {
    for (int64_t g = 0; g < kc; g++) {
        const int64_t base = g * 64, nc = cin - base < 64 ? cin - base : 64;
        int64_t x0 = 0;
        for (; x0 + 8 <= w; x0 += 8) {
            uint64_t m[8] = {0};
            for (int64_t k = 0; k < nc; k++) {
                const float *s = src + (base + k) * plane + x0;
                const float b = bias[base + k];
                for (int p = 0; p < 8; p++) m[p] |= (uint64_t)!(s[p] + b >= 0.0f) << k;
            }
            for (int p = 0; p < 8; p++) words[(x0 + p) * kc + g] = m[p];
        }
        for (; x0 < w; x0++) {
            uint64_t m = 0;
            for (int64_t k = 0; k < nc; k++)
                m |= (uint64_t)!(src[(base + k) * plane + x0] + bias[base + k] >= 0.0f) << k;
            words[x0 * kc + g] = m;
        }
    }
}

/* ---------------------------------------------------------------------------------- shape */

typedef struct {
    int64_t n, h, w, ho, wo, plane; /* plane = ho * wo */
    int64_t ylo, yhi, xlo, xhi;     /* output rows / columns whose taps all lie inside */
    int direct;                     /* the packed input is the fields (1x1, stride 1, no pad) */
} Shape;

/* First output index whose first tap is inside, and one past the last whose last tap is. */
static void interior(int64_t in, int64_t out, int64_t k, int64_t s, int64_t p, int64_t d,
                     int64_t *lo, int64_t *hi) {
    const int64_t last = in - 1 + p - (k - 1) * d; /* o * s <= last */
    *lo = (p + s - 1) / s;
    *hi = last >= 0 ? last / s + 1 : 0;
    if (*hi > out) *hi = out;
    if (*lo > *hi) *lo = *hi;
}

static int shape_of(const ob_bconv *c, int n, int h, int w, Shape *s) {
    if (n < 1 || h < 1 || w < 1) return -1;
    const ob_bconv_geom *g = &c->g;
    const int64_t hp = (int64_t)h + 2 * g->ph, wp = (int64_t)w + 2 * g->pw;
    const int64_t span_h = (int64_t)g->dh * (g->kh - 1), span_w = (int64_t)g->dw * (g->kw - 1);
    if (span_h >= hp || span_w >= wp) return -1;
    s->n = n, s->h = h, s->w = w;
    s->ho = (hp - span_h - 1) / g->sh + 1;
    s->wo = (wp - span_w - 1) / g->sw + 1;
    if (s->ho > INT32_MAX || s->wo > INT32_MAX) return -1;
    s->plane = s->ho * s->wo;
    interior(h, s->ho, g->kh, g->sh, g->ph, g->dh, &s->ylo, &s->yhi);
    interior(w, s->wo, g->kw, g->sw, g->pw, g->dw, &s->xlo, &s->xhi);
    s->direct = c->ntaps == 1 && g->sh == 1 && g->sw == 1 && g->ph == 0 && g->pw == 0;
    return 0;
}

int ob_bconv_out_hw(const ob_bconv *c, int h, int w, int *ho, int *wo) {
    Shape s;
    if (c == NULL || shape_of(c, 1, h, w, &s) < 0) return -1;
    *ho = (int)s.ho;
    *wo = (int)s.wo;
    return 0;
}

/* a * b, or 0 if either is 0 or the product overflows size_t (a scratch of 0 is invalid) */
static size_t mul_size(size_t a, size_t b) { return a != 0 && b > SIZE_MAX / a ? 0 : a * b; }

/* Words of packed input and of fields; 0 and 0 on overflow. */
static void scratch_words(const ob_bconv *c, const Shape *s, size_t *packed, size_t *fields) {
    *packed = mul_size(mul_size(mul_size((size_t)s->n, (size_t)s->h), (size_t)s->w), (size_t)c->kc);
    *fields = s->direct ? 0 : mul_size(mul_size((size_t)s->n, (size_t)s->plane), (size_t)c->nw);
    if (*packed == 0 || (!s->direct && *fields == 0)) *packed = *fields = 0;
}

size_t ob_bconv_scratch_bytes(const ob_bconv *c, int n, int h, int w) {
    Shape s;
    size_t packed, fields;
    if (c == NULL || shape_of(c, n, h, w, &s) < 0) return 0;
    scratch_words(c, &s, &packed, &fields);
    const size_t words = packed + fields, bytes = mul_size(words, 8);
    if (packed == 0 || words < packed || bytes == 0 || bytes > SIZE_MAX - 2 * ALIGN) return 0;
    return bytes + 2 * ALIGN; /* the fields start on a cache line too */
}

static void *align_up(void *p) {
    return (void *)(((uintptr_t)p + ALIGN - 1) & ~(uintptr_t)(ALIGN - 1));
}

/* ------------------------------------------------------------------------------------ run */

/* The packed input: row (b, y) of the image into packed[b][y][0..w). */
static void pack_input(const ob_bconv *c, const Shape *s, const float *x, uint64_t *packed,
                       int threads) {
    const int64_t rows = s->n * s->h, cin = c->g.cin, plane = s->h * s->w;
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads)
#endif
    for (int64_t r = 0; r < rows; r++) {
        const int64_t b = r / s->h, y = r % s->h;
        pack_row_portable(x + b * cin * plane + y * s->w, plane, c->act_bias, cin, s->w, c->kc,
                          packed + r * s->w * c->kc);
    }
}

/* The receptive field of every output pixel, densely packed (out-of-bounds taps left 0). */
static void gather_fields(const ob_bconv *c, const Shape *s, const uint64_t *packed,
                          uint64_t *fields, int threads) {
    const ob_bconv_geom *g = &c->g;
    const int64_t npix = s->n * s->plane, kc = c->kc, nw = c->nw;
    const int aligned = g->cin % 64 == 0;
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads)
#endif
    for (int64_t p = 0; p < npix; p++) {
        const int64_t b = p / s->plane, oy = p % s->plane / s->wo, ox = p % s->wo;
        uint64_t *f = fields + p * nw;
        memset(f, 0, sizeof(uint64_t) * (size_t)nw);
        for (int64_t ky = 0; ky < g->kh; ky++) {
            const int64_t iy = oy * g->sh - g->ph + ky * g->dh;
            if (iy < 0 || iy >= s->h) continue;
            for (int64_t kx = 0; kx < g->kw; kx++) {
                const int64_t ix = ox * g->sw - g->pw + kx * g->dw;
                if (ix < 0 || ix >= s->w) continue;
                const uint64_t *src = packed + ((b * s->h + iy) * s->w + ix) * kc;
                const int64_t t = ky * g->kw + kx;
                if (aligned)
                    memcpy(f + t * kc, src, sizeof(uint64_t) * (size_t)kc);
                else
                    append_bits(f, t * g->cin, src, g->cin);
            }
        }
    }
}

/* corr[j] = sum of the tap sums of the taps of output pixel (oy, ox) that lie in the padding. */
static void border_correction(const ob_bconv *c, const Shape *s, int64_t cb, int64_t oy,
                              int64_t ox, int32_t corr[LANES]) {
    const ob_bconv_geom *g = &c->g;
    memset(corr, 0, sizeof(int32_t) * LANES);
    for (int64_t ky = 0; ky < g->kh; ky++) {
        const int64_t iy = oy * g->sh - g->ph + ky * g->dh;
        const int row_out = iy < 0 || iy >= s->h;
        for (int64_t kx = 0; kx < g->kw; kx++) {
            const int64_t ix = ox * g->sw - g->pw + kx * g->dw;
            if (!row_out && ix >= 0 && ix < s->w) continue;
            const int32_t *ts = c->tapsum + (cb * c->ntaps + ky * g->kw + kx) * LANES;
            for (int j = 0; j < LANES; j++) corr[j] += ts[j];
        }
    }
}

/* y = (float)(kbits - 2 pop - corr) * scale + bias for P pixels starting at p0, block cb. */
static void epilogue(const ob_bconv *c, const Shape *s, int64_t p0, int P, int64_t cb,
                     int32_t pop[TILE_P][LANES], float *y) {
    const int nl = c->g.cout - cb * LANES < LANES ? (int)(c->g.cout - cb * LANES) : LANES;
    const float *scale = c->scale + cb * LANES, *bias = c->bias + cb * LANES;
    for (int i = 0; i < P; i++) {
        const int64_t p = p0 + i, b = p / s->plane, r = p % s->plane, oy = r / s->wo, ox = r % s->wo;
        int32_t corr[LANES] = {0};
        if (oy < s->ylo || oy >= s->yhi || ox < s->xlo || ox >= s->xhi)
            border_correction(c, s, cb, oy, ox, corr);
        float *out = y + (b * c->g.cout + cb * LANES) * s->plane + r;
        for (int j = 0; j < nl; j++) {
            const float d = (float)(c->kbits - 2 * pop[i][j] - corr[j]);
            const float prod = d * scale[j];
            out[j * s->plane] = prod + bias[j];
        }
    }
}

void ob_bconv_run(const ob_bconv *c, const float *x, int n, int h, int w, float *y, void *scratch,
                  int threads) {
    Shape s;
    size_t packed_words, field_words;
    if (c == NULL || x == NULL || y == NULL || scratch == NULL || shape_of(c, n, h, w, &s) < 0)
        return;
    scratch_words(c, &s, &packed_words, &field_words);
    if (packed_words == 0) return;
    if (threads < 1) threads = 1;
    uint64_t *packed = (uint64_t *)align_up(scratch);
    uint64_t *fields = packed;
    pack_input(c, &s, x, packed, threads);
    if (!s.direct) {
        fields = (uint64_t *)align_up(packed + packed_words);
        gather_fields(c, &s, packed, fields, threads);
    }
    const tile_fn tile = variant_tile(c->variant);
    const int64_t npix = s.n * s.plane, nw = c->nw;
    const int64_t ngroups = (npix + GROUP - 1) / GROUP, nchunks = (c->ncb + CB_CHUNK - 1) / CB_CHUNK;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads)
#endif
    for (int64_t item = 0; item < ngroups * nchunks; item++) {
        const int64_t g0 = item / nchunks * GROUP, cb0 = item % nchunks * CB_CHUNK;
        const int64_t g1 = g0 + GROUP < npix ? g0 + GROUP : npix;
        const int64_t cb1 = cb0 + CB_CHUNK < c->ncb ? cb0 + CB_CHUNK : c->ncb;
        for (int64_t cb = cb0; cb < cb1; cb++) {
            const uint64_t *wb = c->w + cb * nw * LANES;
            for (int64_t p0 = g0; p0 < g1; p0 += TILE_P) {
                const int P = g1 - p0 < TILE_P ? (int)(g1 - p0) : TILE_P;
                int32_t pop[TILE_P][LANES];
                tile(fields + p0 * nw, nw, wb, P, pop);
                epilogue(c, &s, p0, P, cb, pop, y);
            }
        }
    }
}

/* -------------------------------------------------------------------------------- prepare */

ob_bconv *ob_bconv_prepare(const ob_bconv_geom *g, const uint64_t *wbits, const float *out_scale,
                           const float *out_bias, const float *act_bias, int variant) {
    if (g == NULL || wbits == NULL || out_scale == NULL || out_bias == NULL) return NULL;
    if (g->cin < 1 || g->cout < 1 || g->kh < 1 || g->kw < 1 || g->sh < 1 || g->sw < 1 ||
        g->dh < 1 || g->dw < 1 || g->ph < 0 || g->pw < 0)
        return NULL;
    if (variant < 0 || variant >= NVARIANTS || !variant_runnable(variant)) return NULL;
    const int64_t ntaps = (int64_t)g->kh * g->kw;
    if (ntaps >= ((int64_t)1 << 30) || ntaps * g->cin >= ((int64_t)1 << 30)) return NULL;
    const int64_t kc = (g->cin + 63) / 64, kbits = ntaps * g->cin, nw = (kbits + 63) / 64;
    const int64_t ncb = (g->cout + LANES - 1) / LANES;

    /* one block: struct, weights, tap sums, scale, bias, act_bias, each cache-line aligned */
    const size_t sizes[] = {sizeof(ob_bconv), sizeof(uint64_t) * (size_t)(ncb * nw * LANES),
                            sizeof(int32_t) * (size_t)(ncb * ntaps * LANES),
                            sizeof(float) * (size_t)(ncb * LANES), sizeof(float) * (size_t)(ncb * LANES),
                            sizeof(float) * (size_t)g->cin};
    size_t total = ALIGN;
    for (int i = 0; i < 6; i++) total += (sizes[i] + ALIGN - 1) / ALIGN * ALIGN;
    void *block = calloc(1, total);
    if (block == NULL) return NULL;
    char *p = (char *)align_up(block);
    void *parts[6];
    for (int i = 0; i < 6; i++) {
        parts[i] = p;
        p += (sizes[i] + ALIGN - 1) / ALIGN * ALIGN;
    }
    ob_bconv *c = (ob_bconv *)parts[0];
    c->g = *g;
    c->variant = variant;
    c->kc = (int)kc;
    c->ntaps = (int)ntaps;
    c->nw = (int)nw;
    c->ncb = (int)ncb;
    c->kbits = (int32_t)kbits;
    c->w = (uint64_t *)parts[1];
    c->tapsum = (int32_t *)parts[2];
    c->scale = (float *)parts[3];
    c->bias = (float *)parts[4];
    c->act_bias = (float *)parts[5];
    c->block = block;

    uint64_t *field = (uint64_t *)calloc((size_t)nw + 1, sizeof(uint64_t));
    uint64_t *tap = (uint64_t *)malloc(sizeof(uint64_t) * (size_t)kc);
    if (field == NULL || tap == NULL) {
        free(field);
        free(tap);
        free(block);
        return NULL;
    }
    const uint64_t last_mask = g->cin % 64 ? ((uint64_t)1 << (g->cin % 64)) - 1 : ~(uint64_t)0;
    for (int64_t co = 0; co < g->cout; co++) {
        const int64_t cb = co / LANES, j = co % LANES;
        memset(field, 0, sizeof(uint64_t) * (size_t)nw);
        for (int64_t t = 0; t < ntaps; t++) {
            memcpy(tap, wbits + (co * ntaps + t) * kc, sizeof(uint64_t) * (size_t)kc);
            tap[kc - 1] &= last_mask; /* bits past cin would count against every pixel */
            int32_t neg = 0;
            for (int64_t i = 0; i < kc; i++) neg += __builtin_popcountll(tap[i]);
            c->tapsum[(cb * ntaps + t) * LANES + j] = g->cin - 2 * neg;
            append_bits(field, t * g->cin, tap, g->cin);
        }
        for (int64_t k = 0; k < nw; k++) c->w[(cb * nw + k) * LANES + j] = field[k];
        c->scale[co] = out_scale[co];
        c->bias[co] = out_bias[co];
    }
    if (act_bias != NULL) memcpy(c->act_bias, act_bias, sizeof(float) * (size_t)g->cin);
    free(field);
    free(tap);
    return c;
}

const ob_bconv_geom *ob_bconv_geometry(const ob_bconv *c) { return c ? &c->g : NULL; }

int ob_bconv_variant(const ob_bconv *c) { return c ? c->variant : -1; }

void ob_bconv_free(ob_bconv *c) {
    if (c != NULL) free(c->block);
}
