/* Binary convolution of the onebit C runtime (interface and semantics: bconv.h).
 *
 * Bit convention: bit = 1 encodes -1, bit = 0 encodes +1. For two {-1,+1} vectors of K bits
 * packed this way, dot = K - 2 * popcount(a XOR w).
 *
 * The convolution is a binary GEMM over receptive fields packed densely along taps x channels:
 * bit t * cin + c of an output pixel's field is channel c of its tap t (taps in (ky, kx) order),
 * so a field of K = kh * kw * cin bits takes nw = ceil(K / 64) words whatever cin is (a 3x3x16
 * field is 3 words, not 9 words of 16 useful bits). Layouts (little-endian 64-bit words):
 *   weights   [ceil(cout / 8)][nw][8]    8 output channels ("lanes") interleaved, at prepare
 *   tap sums  [ceil(cout / 8)][kh kw][8] sum over cin of the +-1 weights of a tap
 *   scratch   packed input with a zero border as wide as the padding,
 *             [n][h + 2 ph][w + 2 pw][ceil(cin / 64)], then the fields of groups of 8
 *             consecutive output pixels of one image, [n][ceil(ho wo / 8)][nw][8], then
 *             the border tables [ho + wo][ceil(cout / 8) * 8] int32
 * A tile is one group x one block: 8 pixels x 8 output channels, so a SIMD register holds the
 * same word of 8 (avx512), 4 (avx2) or 2 (neon) pixels, a weight word is broadcast, and each
 * output channel's 8 results are consecutive floats of its NCHW plane.
 *
 * A padded tap reads the border's 0 bits (+1); an output pixel whose field crosses it then
 * subtracts the tap sums of its out-of-bounds taps, which gives exactly the zero padding of the
 * float model (a padded tap adds 0 there, +1 * w here).
 *
 * The variants differ only in how a tile counts popcount(field XOR weights): "portable"
 * (__builtin_popcountll; on x86 the same C is also compiled with target("popcnt") and used where
 * the CPU has POPCNT), "avx2" (per-byte popcount with vpshufb nibble lookups, Mula et al. 2018),
 * "avx512" (vpopcntq of AVX512-VPOPCNTDQ), "neon" (vcntq_u8 and pairwise widening adds). The
 * counts are integers and every variant runs the same epilogue y = (float)dot * scale + bias
 * (two roundings, no FMA: build with -ffp-contract=off), so all give bit-identical outputs.
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

#if defined(__aarch64__) && defined(__ARM_NEON)
#define OB_NEON 1
#include <arm_neon.h>
#endif

#define LANES 8   /* output channels per weight block */
#define GP 8      /* output pixels per group */
#define ALIGN 64  /* bytes: every array starts on a cache line */
#define ITEM_G 4  /* groups per work item: their fields stay in L1 across the item's blocks */
#define ITEM_CB 8 /* weight blocks per work item */

#define INLINE static inline __attribute__((always_inline))

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

typedef struct {
    const uint64_t *a; /* the group's fields, [nw][GP] */
    const uint64_t *w; /* the block's weights, [nw][LANES] */
    int64_t nw;
    const int32_t *corr; /* [LANES][GP] border corrections, or NULL when all are 0 */
    int32_t kbits;
    const float *scale, *bias; /* the block's LANES */
    float *out;                /* output of lane 0, pixel 0; lane j at out + j * plane */
    int64_t plane;
    int nl, np; /* valid lanes (output channels), valid pixels */
} Tile;

typedef void (*tile_fn)(const Tile *t);

/* dot = kbits - 2 pop - corr, y = (float)dot * scale + bias, per lane GP consecutive floats.
 * Inlined into every variant's tile (the compiler vectorizes it for that target; conversions,
 * products and sums are correctly rounded IEEE operations either way). */
INLINE void epilogue(const Tile *t, int32_t pop[LANES][GP]) {
    for (int j = 0; j < t->nl; j++) {
        float res[GP];
        const float scale = t->scale[j], bias = t->bias[j];
        for (int i = 0; i < GP; i++) {
            const int32_t corr = t->corr ? t->corr[j * GP + i] : 0;
            const float d = (float)(t->kbits - 2 * pop[j][i] - corr);
            const float prod = d * scale;
            res[i] = prod + bias;
        }
        float *o = t->out + j * t->plane;
        if (t->np == GP)
            memcpy(o, res, sizeof res);
        else
            for (int i = 0; i < t->np; i++)
                o[i] = res[i];
    }
}

/* One pixel against the block's 8 lanes at a time: each loaded activation word is used 8 times
 * and the 8 counts stay in registers. */
INLINE void tile_portable_body(const Tile *t) {
    int32_t pop[LANES][GP];
    const int64_t nw = t->nw;
    for (int i = 0; i < t->np; i++) {
        uint64_t c0 = 0, c1 = 0, c2 = 0, c3 = 0, c4 = 0, c5 = 0, c6 = 0, c7 = 0;
        const uint64_t *a = t->a + i, *w = t->w;
        for (int64_t k = 0; k < nw; k++, w += LANES) {
            const uint64_t av = a[k * GP];
            c0 += (uint64_t)__builtin_popcountll(av ^ w[0]);
            c1 += (uint64_t)__builtin_popcountll(av ^ w[1]);
            c2 += (uint64_t)__builtin_popcountll(av ^ w[2]);
            c3 += (uint64_t)__builtin_popcountll(av ^ w[3]);
            c4 += (uint64_t)__builtin_popcountll(av ^ w[4]);
            c5 += (uint64_t)__builtin_popcountll(av ^ w[5]);
            c6 += (uint64_t)__builtin_popcountll(av ^ w[6]);
            c7 += (uint64_t)__builtin_popcountll(av ^ w[7]);
        }
        pop[0][i] = (int32_t)c0, pop[1][i] = (int32_t)c1, pop[2][i] = (int32_t)c2;
        pop[3][i] = (int32_t)c3, pop[4][i] = (int32_t)c4, pop[5][i] = (int32_t)c5;
        pop[6][i] = (int32_t)c6, pop[7][i] = (int32_t)c7;
    }
    for (int i = t->np; i < GP; i++)
        for (int j = 0; j < LANES; j++)
            pop[j][i] = 0;
    epilogue(t, pop);
}

static void tile_portable(const Tile *t) { tile_portable_body(t); }

#ifdef OB_X86

/* The same C with the POPCNT instruction (x86-64 baseline has none: a library call instead). */
__attribute__((target("popcnt"))) static void tile_portable_popcnt(const Tile *t) {
    tile_portable_body(t);
}

/* The epilogue of the portable C for lane j, eight pixels a vector (pop: its 8 counts). */
__attribute__((target("avx2"), always_inline)) static inline void
epilogue_avx2(const Tile *t, int j, __m256i pop) {
    if (j >= t->nl)
        return;
    __m256i dot = _mm256_sub_epi32(_mm256_set1_epi32(t->kbits), _mm256_add_epi32(pop, pop));
    if (t->corr)
        dot = _mm256_sub_epi32(dot, _mm256_loadu_si256((const __m256i *)(t->corr + j * GP)));
    const __m256 prod = _mm256_mul_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(t->scale[j]));
    const __m256 res = _mm256_add_ps(prod, _mm256_set1_ps(t->bias[j]));
    if (t->np == GP) {
        _mm256_storeu_ps(t->out + j * t->plane, res);
    } else {
        const __m256i keep =
            _mm256_cmpgt_epi32(_mm256_set1_epi32(t->np), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        _mm256_maskstore_ps(t->out + j * t->plane, keep, res);
    }
}

/* Per-byte popcount of x with two 4-bit table lookups (vpshufb). */
__attribute__((target("avx2"), always_inline)) static inline __m256i
popcount_bytes(__m256i x, __m256i lut, __m256i low) {
    const __m256i lo = _mm256_and_si256(x, low);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), low);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

/* Byte counts of the 4 pixels' words av XOR the broadcast weight word w. */
__attribute__((target("avx2"), always_inline)) static inline __m256i
xor_count_avx2(__m256i av, uint64_t w, __m256i lut, __m256i low) {
    return popcount_bytes(_mm256_xor_si256(av, _mm256_set1_epi64x((long long)w)), lut, low);
}

/* AVX2: a ymm holds one word of 4 pixels; per half group, 8 byte-count accumulators (one per
 * lane) over chunks of at most 31 words (31 * 8 < 256), summed into 64-bit totals with
 * vpsadbw after each chunk. */
__attribute__((target("avx2"))) static void tile_avx2(const Tile *t) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2,
                                         1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    const __m256i even = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    int32_t pop[LANES][GP] = {{0}}; /* totals in memory: the 16 ymm registers hold the counts */
    for (int part = 0; part < 4; part++) { /* 4 lanes x 4 pixels each: no register spills */
        const int j0 = part / 2 * 4, i0 = part % 2 * 4;
        for (int64_t k0 = 0; k0 < t->nw; k0 += 31) {
            const int64_t k1 = k0 + 31 < t->nw ? k0 + 31 : t->nw;
            __m256i acc0 = _mm256_setzero_si256(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
            for (int64_t k = k0; k < k1; k++) {
                const __m256i av = _mm256_loadu_si256((const __m256i *)(t->a + k * GP + i0));
                const uint64_t *w = t->w + k * LANES + j0;
                acc0 = _mm256_add_epi8(acc0, xor_count_avx2(av, w[0], lut, low));
                acc1 = _mm256_add_epi8(acc1, xor_count_avx2(av, w[1], lut, low));
                acc2 = _mm256_add_epi8(acc2, xor_count_avx2(av, w[2], lut, low));
                acc3 = _mm256_add_epi8(acc3, xor_count_avx2(av, w[3], lut, low));
            }
            const __m256i acc[4] = {acc0, acc1, acc2, acc3};
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) { /* the 4 byte-count sums, as int32 */
                const __m256i sums = _mm256_sad_epu8(acc[j], _mm256_setzero_si256());
                const __m128i s32 = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(sums, even));
                __m128i *p = (__m128i *)(pop[j0 + j] + i0);
                _mm_storeu_si128(p, _mm_add_epi32(_mm_loadu_si128(p), s32));
            }
        }
    }
#pragma GCC unroll 8
    for (int j = 0; j < LANES; j++)
        epilogue_avx2(t, j, _mm256_loadu_si256((const __m256i *)pop[j]));
}

/* AVX-512: a zmm holds one word of the group's 8 pixels; the weight word is broadcast. */
__attribute__((target("avx512f,avx512bw,avx512vpopcntdq"))) static void tile_avx512(const Tile *t) {
    __m512i acc[LANES];
#pragma GCC unroll 8
    for (int j = 0; j < LANES; j++)
        acc[j] = _mm512_setzero_si512();
    for (int64_t k = 0; k < t->nw; k++) {
        const __m512i av = _mm512_loadu_si512((const void *)(t->a + k * GP));
        const uint64_t *w = t->w + k * LANES;
#pragma GCC unroll 8
        for (int j = 0; j < LANES; j++)
            acc[j] = _mm512_add_epi64(acc[j], _mm512_popcnt_epi64(_mm512_xor_si512(
                                                  av, _mm512_set1_epi64((long long)w[j]))));
    }
#pragma GCC unroll 8
    for (int j = 0; j < LANES; j++)
        epilogue_avx2(t, j, _mm512_cvtepi64_epi32(acc[j]));
}

#endif /* OB_X86 */

#ifdef OB_NEON

/* Byte counts of 2 pixels' words a XOR the weight word in both halves of w. */
INLINE uint8x16_t xor_count_neon(uint64x2_t a, uint64x2_t w) {
    return vcntq_u8(vreinterpretq_u8_u64(veorq_u64(a, w)));
}

/* NEON: a q register holds one word of 2 pixels; 8 pixels x 4 lanes of byte counts (vcntq_u8)
 * accumulate in 16 registers over chunks of at most 31 words, then widen pairwise
 * (vpaddlq_u8, vpaddlq_u16, vpadalq_u32) into 64-bit totals. */
static void tile_neon(const Tile *t) {
    int32_t pop[LANES][GP];
    for (int jh = 0; jh < LANES; jh += 4) {
        uint64x2_t tot[4][4];
        for (int j = 0; j < 4; j++)
            for (int q = 0; q < 4; q++)
                tot[j][q] = vdupq_n_u64(0);
        for (int64_t k0 = 0; k0 < t->nw; k0 += 31) {
            const int64_t k1 = k0 + 31 < t->nw ? k0 + 31 : t->nw;
            uint8x16_t acc[4][4];
            for (int j = 0; j < 4; j++)
                for (int q = 0; q < 4; q++)
                    acc[j][q] = vdupq_n_u8(0);
            for (int64_t k = k0; k < k1; k++) {
                const uint64_t *a = t->a + k * GP, *w = t->w + k * LANES + jh;
                const uint64x2_t a0 = vld1q_u64(a), a1 = vld1q_u64(a + 2);
                const uint64x2_t a2 = vld1q_u64(a + 4), a3 = vld1q_u64(a + 6);
                for (int j = 0; j < 4; j++) {
                    const uint64x2_t wv = vld1q_dup_u64(w + j);
                    acc[j][0] = vaddq_u8(acc[j][0], xor_count_neon(a0, wv));
                    acc[j][1] = vaddq_u8(acc[j][1], xor_count_neon(a1, wv));
                    acc[j][2] = vaddq_u8(acc[j][2], xor_count_neon(a2, wv));
                    acc[j][3] = vaddq_u8(acc[j][3], xor_count_neon(a3, wv));
                }
            }
            for (int j = 0; j < 4; j++)
                for (int q = 0; q < 4; q++)
                    tot[j][q] = vpadalq_u32(tot[j][q], vpaddlq_u16(vpaddlq_u8(acc[j][q])));
        }
        for (int j = 0; j < 4; j++)
            for (int q = 0; q < 4; q++) {
                pop[jh + j][2 * q] = (int32_t)vgetq_lane_u64(tot[j][q], 0);
                pop[jh + j][2 * q + 1] = (int32_t)vgetq_lane_u64(tot[j][q], 1);
            }
    }
    epilogue(t, pop);
}

#endif /* OB_NEON */

/* ------------------------------------------------------------------------------- packing */

/* Bits of one input row of w pixels (channel c of pixel x at src[c * plane + x]) into kc words
 * per pixel: bit k of word g is !(x + bias >= 0) for channel 64 g + k (NaN gives 1, i.e. -1,
 * as x >= 0 is false for it). */
typedef void (*pack_row_fn)(const float *src, int64_t plane, const float *bias, int64_t cin,
                            int64_t w, int64_t kc, uint64_t *words);

/* Eight pixels at a time in two 4-float vectors (GCC / clang vector extensions: SSE2 on x86-64,
 * NEON on aarch64, scalar code elsewhere); a channel's bit is set in a 32-bit lane with one
 * compare and an and-not, then two lanes' halves make a pixel's word. */
typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));

static void pack_row_portable(const float *src, int64_t plane, const float *bias, int64_t cin,
                              int64_t w, int64_t kc, uint64_t *words) {
    for (int64_t g = 0; g < kc; g++) {
        const int64_t base = g * 64, nc = cin - base < 64 ? cin - base : 64;
        int64_t x0 = 0;
        for (; x0 + 8 <= w; x0 += 8) {
            uint64_t word[8] = {0};
            for (int64_t half = 0; half < nc; half += 32) {
                v4i m0 = {0, 0, 0, 0}, m1 = m0;
                for (int64_t k = 0; k < 32 && half + k < nc; k++) {
                    const float *s = src + (base + half + k) * plane + x0;
                    v4f x0v, x1v;
                    memcpy(&x0v, s, sizeof x0v);
                    memcpy(&x1v, s + 4, sizeof x1v);
                    const float b = bias[base + half + k];
                    const v4i bit = (v4i){1, 1, 1, 1} << (int)k;
                    m0 |= ~((x0v + b) >= 0.0f) & bit; /* the compare is -1 where x + b >= 0 */
                    m1 |= ~((x1v + b) >= 0.0f) & bit;
                }
                for (int p = 0; p < 4; p++) {
                    word[p] |= (uint64_t)(uint32_t)m0[p] << half;
                    word[p + 4] |= (uint64_t)(uint32_t)m1[p] << half;
                }
            }
            for (int p = 0; p < 8; p++)
                words[(x0 + p) * kc + g] = word[p];
        }
        for (; x0 < w; x0++) {
            uint64_t m = 0;
            for (int64_t k = 0; k < nc; k++)
                m |= (uint64_t)!(src[(base + k) * plane + x0] + bias[base + k] >= 0.0f) << k;
            words[x0 * kc + g] = m;
        }
    }
}

#ifdef OB_X86
/* AVX2: one movemask gives 8 pixels of a channel (mask[k]: bit p = pixel x0 + p of channel
 * 64 g + k); the 64 x 8 bit block of a channel group is then transposed with byte shifts and
 * movemask_epi8 (the top bit of every byte). */
__attribute__((target("avx2"))) static void pack_row_avx2(const float *src, int64_t plane,
                                                          const float *bias, int64_t cin, int64_t w,
                                                          int64_t kc, uint64_t *words) {
    const __m256 zero = _mm256_setzero_ps();
    for (int64_t g = 0; g < kc; g++) {
        const int64_t base = g * 64, nc = cin - base < 64 ? cin - base : 64;
        for (int64_t x0 = 0; x0 < w; x0 += 8) {
            const int64_t np = w - x0 < 8 ? w - x0 : 8;
            uint8_t mask[64] = {0};
            for (int64_t k = 0; k < nc; k++) {
                const float *s = src + (base + k) * plane + x0;
                const float b = bias[base + k];
                if (np == 8) {
                    const __m256 v = _mm256_add_ps(_mm256_loadu_ps(s), _mm256_set1_ps(b));
                    mask[k] = (uint8_t)_mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_NGE_UQ));
                } else {
                    for (int64_t p = 0; p < np; p++)
                        mask[k] |= (uint8_t)(!(s[p] + b >= 0.0f) << p);
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

/* ------------------------------------------------------------------------------ variants */

static const char *const NAMES[] = {"portable", "avx2", "avx512", "neon"};
#define NVARIANTS 4

static int variant_runnable(int v) {
    if (v == OB_KERNEL_PORTABLE)
        return 1;
#ifdef OB_X86
    __builtin_cpu_init();
    if (v == OB_KERNEL_AVX2)
        return __builtin_cpu_supports("avx2");
    if (v == OB_KERNEL_AVX512)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vpopcntdq");
#endif
#ifdef OB_NEON
    if (v == OB_KERNEL_NEON)
        return 1;
#endif
    return 0;
}

static tile_fn variant_tile(int v) {
#ifdef OB_X86
    if (v == OB_KERNEL_AVX2)
        return tile_avx2;
    if (v == OB_KERNEL_AVX512)
        return tile_avx512;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("popcnt"))
        return tile_portable_popcnt;
#endif
#ifdef OB_NEON
    if (v == OB_KERNEL_NEON)
        return tile_neon;
#endif
    return tile_portable;
}

static pack_row_fn variant_pack(int v) {
#ifdef OB_X86
    if (v == OB_KERNEL_AVX2 || v == OB_KERNEL_AVX512)
        return pack_row_avx2;
#endif
    (void)v;
    return pack_row_portable;
}

int ob_kernel_variant(const char *name) {
    if (name == NULL)
        return -1;
    if (strcmp(name, "auto") == 0) {
        const int order[] = {OB_KERNEL_AVX512, OB_KERNEL_AVX2, OB_KERNEL_NEON, OB_KERNEL_PORTABLE};
        for (int i = 0; i < NVARIANTS; i++)
            if (variant_runnable(order[i]))
                return order[i];
        return -1;
    }
    for (int v = 0; v < NVARIANTS; v++)
        if (strcmp(name, NAMES[v]) == 0)
            return variant_runnable(v) ? v : -1;
    return -1;
}

const char *ob_kernel_name(int variant) {
    return variant >= 0 && variant < NVARIANTS ? NAMES[variant] : "unknown";
}

/* ---------------------------------------------------------------------------------- shape */

typedef struct {
    int64_t n, h, w, ho, wo, plane; /* plane = ho * wo */
    int64_t hp, wp;                 /* the padded input, h + 2 ph, w + 2 pw */
    int64_t ngroups;                /* groups per image, ceil(plane / GP) */
    int64_t ylo, yhi, xlo, xhi;     /* output rows / columns whose taps all lie inside */
} Shape;

/* First output index whose first tap is inside, and one past the last whose last tap is. */
static void interior(int64_t in, int64_t out, int64_t k, int64_t s, int64_t p, int64_t d,
                     int64_t *lo, int64_t *hi) {
    const int64_t last = in - 1 + p - (k - 1) * d; /* o * s <= last */
    *lo = (p + s - 1) / s;
    *hi = last >= 0 ? last / s + 1 : 0;
    if (*hi > out)
        *hi = out;
    if (*lo > *hi)
        *lo = *hi;
}

static int shape_of(const ob_bconv *c, int n, int h, int w, Shape *s) {
    if (n < 1 || h < 1 || w < 1)
        return -1;
    const ob_bconv_geom *g = &c->g;
    const int64_t hp = (int64_t)h + 2 * g->ph, wp = (int64_t)w + 2 * g->pw;
    const int64_t span_h = (int64_t)g->dh * (g->kh - 1), span_w = (int64_t)g->dw * (g->kw - 1);
    if (span_h >= hp || span_w >= wp)
        return -1;
    s->n = n, s->h = h, s->w = w, s->hp = hp, s->wp = wp;
    s->ho = (hp - span_h - 1) / g->sh + 1;
    s->wo = (wp - span_w - 1) / g->sw + 1;
    if (s->ho > INT32_MAX || s->wo > INT32_MAX)
        return -1;
    s->plane = s->ho * s->wo;
    s->ngroups = (s->plane + GP - 1) / GP;
    interior(h, s->ho, g->kh, g->sh, g->ph, g->dh, &s->ylo, &s->yhi);
    interior(w, s->wo, g->kw, g->sw, g->pw, g->dw, &s->xlo, &s->xhi);
    return 0;
}

int ob_bconv_out_hw(const ob_bconv *c, int h, int w, int *ho, int *wo) {
    Shape s;
    if (c == NULL || shape_of(c, 1, h, w, &s) < 0)
        return -1;
    *ho = (int)s.ho;
    *wo = (int)s.wo;
    return 0;
}

/* a * b, or 0 if either is 0 or the product overflows size_t (a scratch of 0 is invalid) */
static size_t mul_size(size_t a, size_t b) { return a != 0 && b > SIZE_MAX / a ? 0 : a * b; }

/* Words of packed input, of fields and of border tables (int32 pairs); all 0 on overflow. */
static void scratch_words(const ob_bconv *c, const Shape *s, size_t *packed, size_t *fields,
                          size_t *tables) {
    *packed =
        mul_size(mul_size(mul_size((size_t)s->n, (size_t)s->hp), (size_t)s->wp), (size_t)c->kc);
    *fields = mul_size(mul_size(mul_size((size_t)s->n, (size_t)s->ngroups), (size_t)c->nw), GP);
    *tables = mul_size((size_t)(s->ho + s->wo), (size_t)c->ncb * LANES / 2);
    if (*packed == 0 || *fields == 0 || *tables == 0)
        *packed = *fields = *tables = 0;
}

size_t ob_bconv_scratch_bytes(const ob_bconv *c, int n, int h, int w) {
    Shape s;
    size_t packed, fields, tables;
    if (c == NULL || shape_of(c, n, h, w, &s) < 0)
        return 0;
    scratch_words(c, &s, &packed, &fields, &tables);
    const size_t words = packed + fields + tables, bytes = mul_size(words, 8);
    if (packed == 0 || words < packed || words < fields || bytes == 0 ||
        bytes > SIZE_MAX - 3 * ALIGN)
        return 0;
    return bytes + 3 * ALIGN; /* each part starts on a cache line */
}

static void *align_up(void *p) {
    return (void *)(((uintptr_t)p + ALIGN - 1) & ~(uintptr_t)(ALIGN - 1));
}

/* ------------------------------------------------------------------------------------ run */

/* The packed input with a border of zero words (+1) as wide as the padding, [n][hp][wp][kc]:
 * every tap of every output pixel is then a valid address (a padded tap reads +1 bits, which
 * the border correction takes back out). */
static void pack_input(const ob_bconv *c, const Shape *s, const float *x, uint64_t *packed,
                       int threads) {
    const ob_bconv_geom *g = &c->g;
    const int64_t rows = s->n * s->hp, cin = g->cin, plane = s->h * s->w, kc = c->kc;
    const pack_row_fn pack_row = variant_pack(c->variant);
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads)
#endif
    for (int64_t r = 0; r < rows; r++) {
        const int64_t b = r / s->hp, y = r % s->hp - g->ph;
        uint64_t *dst = packed + r * s->wp * kc;
        if (y < 0 || y >= s->h) {
            memset(dst, 0, sizeof(uint64_t) * (size_t)(s->wp * kc));
            continue;
        }
        memset(dst, 0, sizeof(uint64_t) * (size_t)(g->pw * kc));
        memset(dst + (g->pw + s->w) * kc, 0, sizeof(uint64_t) * (size_t)(g->pw * kc));
        pack_row(x + b * cin * plane + y * s->w, plane, c->act_bias, cin, s->w, kc,
                 dst + g->pw * kc);
    }
}

/* One tap-word of the 8 pixels into the field bit stream: pixel i's word is img[at + i] when
 * contig, else img[at + off[i]]; nb bits of it (the rest 0) go at bit `shift` of the current
 * words cur, which are stored to *f once full. Loads, shifts and stores are the same for the 8
 * pixels (the compiler vectorizes them) and nothing is read back. */
INLINE void put_word(const uint64_t *img, int64_t at, const int64_t off[GP], int contig, int nb,
                     uint64_t cur[GP], int *shift, uint64_t **f) {
#define OB_LOAD(i) (contig ? img[at + (i)] : img[at + off[i]])
    const int sh = *shift, ns = sh + nb - 64; /* ns >= 0: the words are full, ns bits spill */
    if (ns < 0) {
        for (int i = 0; i < GP; i++)
            cur[i] |= OB_LOAD(i) << sh;
        *shift = sh + nb;
        return;
    }
    uint64_t *d = *f;
    if (ns == 0) {
        for (int i = 0; i < GP; i++) {
            d[i] = cur[i] | OB_LOAD(i) << sh;
            cur[i] = 0;
        }
    } else {
        for (int i = 0; i < GP; i++) {
            const uint64_t v = OB_LOAD(i);
            d[i] = cur[i] | v << sh;
            cur[i] = v >> (nb - ns);
        }
    }
#undef OB_LOAD
    *f = d + GP;
    *shift = ns;
}

/* The fields of one group of 8 output pixels (plane pixels r0 ..; those past the plane read
 * the image's first pixel, their outputs are not stored), as a bit stream over the taps and
 * their words. When the 8 pixels lie in one output row at stride 1 with one word per tap, a
 * tap's 8 words are consecutive: one vector load. */
INLINE void gather_group_body(const ob_bconv *c, const Shape *s, const uint64_t *img, int64_t r0,
                              uint64_t *f) {
    const ob_bconv_geom *g = &c->g;
    const int64_t kc = c->kc, wp = s->wp;
    int64_t off[GP], oy = r0 / s->wo, ox = r0 % s->wo;
    for (int i = 0; i < GP; i++) {
        off[i] = r0 + i < s->plane ? (oy * g->sh * wp + ox * g->sw) * kc : 0;
        if (++ox == s->wo)
            ox = 0, oy++;
    }
    const int contig = kc == 1 && g->sw == 1 && off[GP - 1] == off[0] + GP - 1;
    const int last_bits = g->cin - 64 * (int)(kc - 1);
    uint64_t cur[GP] = {0};
    int shift = 0;
    for (int64_t ky = 0; ky < g->kh; ky++) {
        for (int64_t kx = 0; kx < g->kw; kx++) {
            const int64_t tap = (ky * g->dh * wp + kx * g->dw) * kc;
            for (int64_t j = 0; j < kc; j++) {
                const int nb = j == kc - 1 ? last_bits : 64;
                if (contig)
                    put_word(img, off[0] + tap, off, 1, nb, cur, &shift, &f);
                else
                    put_word(img, tap + j, off, 0, nb, cur, &shift, &f);
            }
        }
    }
    if (shift)
        memcpy(f, cur, sizeof cur);
}

typedef void (*gather_group_fn)(const ob_bconv *c, const Shape *s, const uint64_t *img, int64_t r0,
                                uint64_t *f);

static void gather_group_portable(const ob_bconv *c, const Shape *s, const uint64_t *img,
                                  int64_t r0, uint64_t *f) {
    gather_group_body(c, s, img, r0, f);
}

#ifdef OB_X86
__attribute__((target("avx2"))) static void
gather_group_avx2(const ob_bconv *c, const Shape *s, const uint64_t *img, int64_t r0, uint64_t *f) {
    gather_group_body(c, s, img, r0, f);
}
#endif

/* The receptive fields of every group of output pixels, [n][ngroups][nw][GP]. */
static void gather_fields(const ob_bconv *c, const Shape *s, const uint64_t *packed,
                          uint64_t *fields, int threads) {
    const int64_t ngroups = s->n * s->ngroups, nw = c->nw;
    gather_group_fn group = gather_group_portable;
#ifdef OB_X86
    if (c->variant == OB_KERNEL_AVX2 || c->variant == OB_KERNEL_AVX512)
        group = gather_group_avx2;
#endif
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads)
#endif
    for (int64_t gi = 0; gi < ngroups; gi++) {
        const int64_t b = gi / s->ngroups;
        const uint64_t *img = packed + b * s->hp * s->wp * c->kc;
        group(c, s, img, gi % s->ngroups * GP, fields + gi * nw * GP);
    }
}

static int row_out(const ob_bconv_geom *g, const Shape *s, int64_t oy, int64_t ky) {
    const int64_t iy = oy * g->sh - g->ph + ky * g->dh;
    return iy < 0 || iy >= s->h;
}

static int col_out(const ob_bconv_geom *g, const Shape *s, int64_t ox, int64_t kx) {
    const int64_t ix = ox * g->sw - g->pw + kx * g->dw;
    return ix < 0 || ix >= s->w;
}

/* Border tables, [ho][ncb * LANES] and [wo][ncb * LANES]: for output row oy the tap sums of the
 * taps whose input row lies in the padding (all their columns), for column ox alike (only the
 * border rows and columns are nonzero). */
static void border_tables(const ob_bconv *c, const Shape *s, int32_t *rows, int32_t *cols) {
    const ob_bconv_geom *g = &c->g;
    const int64_t L = (int64_t)c->ncb * LANES;
    memset(rows, 0, sizeof(int32_t) * (size_t)(s->ho * L));
    memset(cols, 0, sizeof(int32_t) * (size_t)(s->wo * L));
    for (int64_t oy = 0; oy < s->ho; oy++) {
        if (oy == s->ylo)
            oy = s->yhi; /* the interior rows have no padded tap */
        if (oy >= s->ho)
            break;
        for (int64_t ky = 0; ky < g->kh; ky++)
            if (row_out(g, s, oy, ky))
                for (int64_t cb = 0; cb < c->ncb; cb++)
                    for (int64_t kx = 0; kx < g->kw; kx++) {
                        const int32_t *ts = c->tapsum + (cb * c->ntaps + ky * g->kw + kx) * LANES;
                        for (int j = 0; j < LANES; j++)
                            rows[oy * L + cb * LANES + j] += ts[j];
                    }
    }
    for (int64_t ox = 0; ox < s->wo; ox++) {
        if (ox == s->xlo)
            ox = s->xhi;
        if (ox >= s->wo)
            break;
        for (int64_t kx = 0; kx < g->kw; kx++)
            if (col_out(g, s, ox, kx))
                for (int64_t cb = 0; cb < c->ncb; cb++)
                    for (int64_t ky = 0; ky < g->kh; ky++) {
                        const int32_t *ts = c->tapsum + (cb * c->ntaps + ky * g->kw + kx) * LANES;
                        for (int j = 0; j < LANES; j++)
                            cols[ox * L + cb * LANES + j] += ts[j];
                    }
    }
}

/* The border pixels of a group: their index in it, output row and column, and whether they have
 * taps out in both row and column (whose tap sums both tables hold). */
typedef struct {
    int count, i[GP], corner[GP];
    int64_t oy[GP], ox[GP];
} Border;

static void group_border(const Shape *s, int64_t r0, int np, Border *bd) {
    int64_t oy = r0 / s->wo, ox = r0 % s->wo;
    bd->count = 0;
    for (int i = 0; i < np; i++) {
        const int row_border = oy < s->ylo || oy >= s->yhi;
        const int col_border = ox < s->xlo || ox >= s->xhi;
        if (row_border || col_border) {
            bd->i[bd->count] = i, bd->oy[bd->count] = oy, bd->ox[bd->count] = ox;
            bd->corner[bd->count++] = row_border && col_border;
        }
        if (++ox == s->wo)
            ox = 0, oy++;
    }
}

/* corr[j][i]: the tap sums of the taps of border pixel i that lie in the padding: its row's and
 * column's table entries, less the taps out in both. */
static void border_corrections(const ob_bconv *c, const Shape *s, const int32_t *rows,
                               const int32_t *cols, const Border *bd, int64_t cb,
                               int32_t corr[LANES][GP]) {
    const ob_bconv_geom *g = &c->g;
    const int64_t L = (int64_t)c->ncb * LANES;
    memset(corr, 0, sizeof(int32_t) * LANES * GP);
    for (int k = 0; k < bd->count; k++) {
        const int i = bd->i[k];
        const int64_t oy = bd->oy[k], ox = bd->ox[k];
        const int32_t *r = rows + oy * L + cb * LANES, *cl = cols + ox * L + cb * LANES;
        for (int j = 0; j < LANES; j++)
            corr[j][i] = r[j] + cl[j];
        if (!bd->corner[k])
            continue;
        for (int64_t ky = 0; ky < g->kh; ky++) {
            if (!row_out(g, s, oy, ky))
                continue;
            for (int64_t kx = 0; kx < g->kw; kx++) {
                if (!col_out(g, s, ox, kx))
                    continue;
                const int32_t *ts = c->tapsum + (cb * c->ntaps + ky * g->kw + kx) * LANES;
                for (int j = 0; j < LANES; j++)
                    corr[j][i] -= ts[j];
            }
        }
    }
}

void ob_bconv_run(const ob_bconv *c, const float *x, int n, int h, int w, float *y, void *scratch,
                  int threads) {
    Shape s;
    size_t packed_words, field_words, table_words;
    if (c == NULL || x == NULL || y == NULL || scratch == NULL || shape_of(c, n, h, w, &s) < 0)
        return;
    scratch_words(c, &s, &packed_words, &field_words, &table_words);
    if (packed_words == 0)
        return;
    if (threads < 1)
        threads = 1;
    uint64_t *packed = (uint64_t *)align_up(scratch);
    uint64_t *fields = (uint64_t *)align_up(packed + packed_words);
    int32_t *rows = (int32_t *)align_up(fields + field_words);
    int32_t *cols = rows + s.ho * c->ncb * LANES;
    pack_input(c, &s, x, packed, threads);
    gather_fields(c, &s, packed, fields, threads);
    border_tables(c, &s, rows, cols);

    const tile_fn tile = variant_tile(c->variant);
    const int64_t nw = c->nw, cout = c->g.cout, ngroups = s.n * s.ngroups;
    const int64_t nitems_g = (ngroups + ITEM_G - 1) / ITEM_G;
    const int64_t nitems_cb = (c->ncb + ITEM_CB - 1) / ITEM_CB;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads)
#endif
    for (int64_t item = 0; item < nitems_g * nitems_cb; item++) {
        const int64_t g0 = item / nitems_cb * ITEM_G, cb0 = item % nitems_cb * ITEM_CB;
        const int64_t g1 = g0 + ITEM_G < ngroups ? g0 + ITEM_G : ngroups;
        const int64_t cb1 = cb0 + ITEM_CB < c->ncb ? cb0 + ITEM_CB : c->ncb;
        Border border[ITEM_G];
        for (int64_t gi = g0; gi < g1; gi++) {
            const int64_t r0 = gi % s.ngroups * GP;
            group_border(&s, r0, s.plane - r0 < GP ? (int)(s.plane - r0) : GP, &border[gi - g0]);
        }
        for (int64_t cb = cb0; cb < cb1; cb++) {
            Tile t;
            int32_t corr[LANES][GP];
            t.w = c->w + cb * nw * LANES;
            t.nw = nw;
            t.kbits = c->kbits;
            t.scale = c->scale + cb * LANES;
            t.bias = c->bias + cb * LANES;
            t.plane = s.plane;
            t.nl = cout - cb * LANES < LANES ? (int)(cout - cb * LANES) : LANES;
            for (int64_t gi = g0; gi < g1; gi++) {
                const int64_t b = gi / s.ngroups, r0 = gi % s.ngroups * GP;
                t.np = s.plane - r0 < GP ? (int)(s.plane - r0) : GP;
                t.a = fields + gi * nw * GP;
                t.out = y + (b * cout + cb * LANES) * s.plane + r0;
                t.corr = NULL;
                if (border[gi - g0].count) {
                    border_corrections(c, &s, rows, cols, &border[gi - g0], cb, corr);
                    t.corr = &corr[0][0];
                }
                tile(&t);
            }
        }
    }
}

/* -------------------------------------------------------------------------------- prepare */

/* Ors nbits bits of src into the contiguous words of dst from bit pos. */
static void append_bits_dense(uint64_t *dst, int64_t pos, const uint64_t *src, int64_t nbits) {
    const int shift = (int)(pos & 63);
    uint64_t *d = dst + (pos >> 6);
    for (int64_t j = 0; j * 64 < nbits; j++) {
        d[j] |= src[j] << shift;
        if (shift != 0 && shift + (nbits - j * 64 < 64 ? nbits - j * 64 : 64) > 64)
            d[j + 1] |= src[j] >> (64 - shift);
    }
}

ob_bconv *ob_bconv_prepare(const ob_bconv_geom *g, const uint64_t *wbits, const float *out_scale,
                           const float *out_bias, const float *act_bias, int variant) {
    if (g == NULL || wbits == NULL || out_scale == NULL || out_bias == NULL)
        return NULL;
    if (g->cin < 1 || g->cout < 1 || g->kh < 1 || g->kw < 1 || g->sh < 1 || g->sw < 1 ||
        g->dh < 1 || g->dw < 1 || g->ph < 0 || g->pw < 0)
        return NULL;
    if (variant < 0 || variant >= NVARIANTS || !variant_runnable(variant))
        return NULL;
    const int64_t ntaps = (int64_t)g->kh * g->kw;
    if (ntaps >= ((int64_t)1 << 30) || ntaps * g->cin >= ((int64_t)1 << 30))
        return NULL;
    const int64_t kc = (g->cin + 63) / 64, kbits = ntaps * g->cin, nw = (kbits + 63) / 64;
    const int64_t ncb = (g->cout + LANES - 1) / LANES;

    /* one block: struct, weights, tap sums, scale, bias, act_bias, each cache-line aligned */
    const size_t sizes[] = {sizeof(ob_bconv),
                            sizeof(uint64_t) * (size_t)(ncb * nw * LANES),
                            sizeof(int32_t) * (size_t)(ncb * ntaps * LANES),
                            sizeof(float) * (size_t)(ncb * LANES),
                            sizeof(float) * (size_t)(ncb * LANES),
                            sizeof(float) * (size_t)g->cin};
    size_t total = ALIGN;
    for (int i = 0; i < 6; i++)
        total += (sizes[i] + ALIGN - 1) / ALIGN * ALIGN;
    void *block = calloc(1, total);
    if (block == NULL)
        return NULL;
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
            for (int64_t i = 0; i < kc; i++)
                neg += __builtin_popcountll(tap[i]);
            c->tapsum[(cb * ntaps + t) * LANES + j] = g->cin - 2 * neg;
            append_bits_dense(field, t * g->cin, tap, g->cin);
        }
        for (int64_t k = 0; k < nw; k++)
            c->w[(cb * nw + k) * LANES + j] = field[k];
        c->scale[co] = out_scale[co];
        c->bias[co] = out_bias[co];
    }
    if (act_bias != NULL)
        memcpy(c->act_bias, act_bias, sizeof(float) * (size_t)g->cin);
    free(field);
    free(tap);
    return c;
}

const ob_bconv_geom *ob_bconv_geometry(const ob_bconv *c) { return c ? &c->g : NULL; }

int ob_bconv_variant(const ob_bconv *c) { return c ? c->variant : -1; }

void ob_bconv_free(ob_bconv *c) {
    if (c != NULL)
        free(c->block);
}
