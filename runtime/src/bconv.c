/* Binary convolution of the onebit C runtime (interface and semantics: bconv.h).
 *
 * Bit convention: bit = 1 encodes -1, bit = 0 encodes +1. For two {-1,+1} vectors of K bits
 * packed this way, dot = K - 2 * popcount(a XOR w).
 *
 * The convolution is a binary GEMM over receptive fields. A field is kh row windows: the window
 * of kernel row ky holds the kw taps of that row densely, bit kx * cin + c for channel c of tap
 * kx, in nwr = ceil(kw * cin / 64) words (a 3-tap row of 16 channels is one word, of 64
 * channels three). Windows depend only on the input row and the output column, so they are
 * built once per input row and each output row reads kh of them in place. Layouts
 * (little-endian 64-bit words):
 *   weights   [ceil(cout / 8)][kh][nwr][8]  8 output channels ("lanes") interleaved
 *   tap sums  [ceil(cout / 8)][kh kw][8]    sum over cin of the +-1 weights of a tap
 *   scratch   packed input with a zero border as wide as the padding,
 *             [n][h + 2 ph][w + 2 pw][ceil(cin / 64)]; the row windows, [n][h + 2 ph][nwr][wo8]
 *             (word r of the windows of output columns 0.. wo8 - 1 consecutive, wo8 = wo rounded
 *             up to 8); the word offsets of a field from its first word [kh nwr]; and unless
 *             ob_bconv_plan made them for this input size, the border corrections (below).
 * A half-group is 8 consecutive output columns of one output row: word k of its 8 fields are 8
 * consecutive words. A tile is two half-groups (in row-major order, so the pair may span two
 * rows) x one block of 8 output channels: a SIMD register holds the same word of 8 (avx512),
 * 4 (avx2) or 2 (neon) pixels, a weight word is broadcast, and each output channel's results
 * are consecutive floats of its NCHW plane.
 *
 * A padded tap reads the border's 0 bits (+1); an output pixel whose field crosses it then
 * subtracts the tap sums of its out-of-bounds taps, which gives exactly the zero padding of the
 * float model (a padded tap adds 0 there, +1 * w here). These corrections depend on the row
 * class of the output row (interior, or which border row) and the column: a table
 * [row class][half-group column][block][8][8] int32 with a flag per (row class, column).
 *
 * The variants differ only in how a tile counts popcount(field XOR weights): "portable"
 * (__builtin_popcountll; on x86 the same C is also compiled with target("popcnt") and used where
 * the CPU has POPCNT), "avx2" (per-byte popcount with vpshufb nibble lookups, Mula et al. 2018,
 * on the activations' nibbles split once per step and the weights' split at load),
 * "avx512" (vpopcntq of AVX512-VPOPCNTDQ), "neon" (vcntq_u8 and pairwise widening adds). The
 * counts are integers and every variant runs the same epilogue y = (float)dot * scale + bias
 * (two roundings, no FMA: build with -ffp-contract=off), then the same fused element-wise ops
 * (epilogue.h), so all give bit-identical outputs.
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
#define GP 8      /* output pixels per half-group */
#define ALIGN 64  /* bytes: every array starts on a cache line */
#define ITEM_P 2  /* pairs of half-groups per work item: their fields stay in L1 across blocks */
#define ITEM_CB 8 /* weight blocks per work item */

#define INLINE static inline __attribute__((always_inline))

/* Every tile streams its block's weights, word k of 8 lanes (a cache line) per step, from
 * wherever the last layer left them: a model's weights outlive L2 (Bi-Real-Net-18's 512-channel
 * layers read 295 KB each), and a prefetch 32 steps ahead hides the miss (0.18 -> 0.15 ms per
 * such layer, AVX-512). */
#define PREFETCH_WEIGHTS(w) __builtin_prefetch((w) + 32 * LANES)

/* the target of the avx512 variant's functions */
#define AVX512 "avx512f,avx512bw,avx512vl,avx512vpopcntdq"

struct ob_bconv {
    ob_bconv_geom g;
    int variant;
    int kc;          /* words per packed input pixel, ceil(cin / 64) */
    int ntaps;       /* kh * kw */
    int nwr;         /* words per row window, ceil(kw * cin / 64) */
    int nw;          /* words per receptive field, kh * nwr */
    int ncb;         /* weight blocks, ceil(cout / LANES) */
    int32_t kbits;   /* ntaps * cin */
    uint64_t *w;     /* [ncb][nw][LANES]; NULL for avx2 */
    uint64_t *wn;    /* avx2 (instead of w): [ncb][nw][LANES][2], each weight word's low and
                        high nibbles (w & 0x0f.., w >> 4 & 0x0f..); NULL for the others */
    int32_t *tapsum; /* [ncb][ntaps][LANES] */
    float *scale;    /* [ncb * LANES], 0 past cout */
    float *bias;     /* [ncb * LANES] */
    float *act_bias; /* [cin], 0 when none was given */
    void *block;     /* the one allocation all of the above live in */
    /* ob_bconv_plan: the border corrections of a plan_h x plan_w input (0 x 0: none) */
    int plan_h, plan_w;
    int32_t *plan_corr;
    uint8_t *plan_flag;
};

/* ------------------------------------------------------------------------------------ tiles */

typedef struct {
    const uint64_t *a;   /* the half-group's fields: word k of its 8 pixels at a + off[k] */
    const int64_t *off;  /* [nw] */
    const uint64_t *w;   /* the block's weights, [nw][LANES] (NULL for avx2) */
    const uint64_t *wn;  /* avx2: their nibbles, [nw][LANES][2] */
    int64_t nw;
    const int32_t *corr; /* [LANES][GP] border corrections, or NULL when all are 0 */
    int32_t kbits;
    const float *scale, *bias; /* the block's LANES */
    float *out;                /* output of lane 0, pixel 0; lane j at out + j * plane */
    int64_t plane;
    int nl, np;            /* valid lanes (output channels), valid pixels (0: no half-group) */
    const ob_epilogue *ep; /* fused element-wise ops, or NULL */
    int64_t c0;            /* the channel of lane 0 */
    size_t off_out;        /* out - y: the element offset of out in the output */
} Tile;

/* A tile: two half-groups of one block (t1->np may be 0: no second half-group). */
typedef void (*tile_fn)(const Tile *t0, const Tile *t1);

/* The tile's 8 lanes x GP outputs: the fused ops (if any), then the stores of the valid ones.
 * Inlined into the portable and neon tiles. */
INLINE void store_block(const Tile *t, ob_vf8 v[LANES]) {
    if (t->ep)
        ob_ep_block8(t->ep, t->c0, v, t->nl, t->off_out, t->plane, t->np);
    for (int j = 0; j < t->nl; j++) {
        float *o = t->out + j * t->plane;
        if (t->np == GP)
            memcpy(o, &v[j], sizeof v[j]);
        else
            for (int i = 0; i < t->np; i++)
                o[i] = v[j][i];
    }
}

/* dot = kbits - 2 pop - corr, y = (float)dot * scale + bias, per lane GP consecutive floats.
 * Inlined into every variant's tile (the compiler vectorizes it for that target; conversions,
 * products and sums are correctly rounded IEEE operations either way). Lanes past nl have
 * scale and bias 0. */
INLINE void epilogue(const Tile *t, int32_t pop[LANES][GP]) {
    ob_vf8 v[LANES];
    for (int j = 0; j < LANES; j++) {
        const float scale = t->scale[j], bias = t->bias[j];
        for (int i = 0; i < GP; i++) {
            const int32_t corr = t->corr ? t->corr[j * GP + i] : 0;
            const float d = (float)(t->kbits - 2 * pop[j][i] - corr);
            const float prod = d * scale;
            v[j][i] = prod + bias;
        }
    }
    store_block(t, v);
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
            PREFETCH_WEIGHTS(w);
            const uint64_t av = a[t->off[k]];
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

static void tile_portable(const Tile *t0, const Tile *t1) {
    tile_portable_body(t0);
    if (t1->np)
        tile_portable_body(t1);
}

#ifdef OB_X86

/* The same C with the POPCNT instruction (x86-64 baseline has none: a library call instead). */
__attribute__((target("popcnt"))) static void tile_portable_popcnt(const Tile *t0,
                                                                   const Tile *t1) {
    tile_portable_body(t0);
    if (t1->np)
        tile_portable_body(t1);
}

/* The epilogue of the portable C for lane j, eight pixels a vector (pop: its 8 counts), the
 * fused ops, and the store of the valid pixels. */
__attribute__((target("avx2"), always_inline)) static inline void
epilogue_avx2(const Tile *t, int j, __m256i pop) {
    if (j >= t->nl)
        return;
    __m256i dot = _mm256_sub_epi32(_mm256_set1_epi32(t->kbits), _mm256_add_epi32(pop, pop));
    if (t->corr)
        dot = _mm256_sub_epi32(dot, _mm256_loadu_si256((const __m256i *)(t->corr + j * GP)));
    const __m256 prod = _mm256_mul_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(t->scale[j]));
    __m256 res = _mm256_add_ps(prod, _mm256_set1_ps(t->bias[j]));
    if (t->ep)
        res = ob_ep_avx2(t->ep, t->c0 + j, res, t->off_out + (size_t)(j * t->plane), t->np);
    if (t->np == GP) {
        _mm256_storeu_ps(t->out + j * t->plane, res);
    } else {
        const __m256i keep =
            _mm256_cmpgt_epi32(_mm256_set1_epi32(t->np), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        _mm256_maskstore_ps(t->out + j * t->plane, keep, res);
    }
}

/* Byte counts of the 4 pixels' words XOR a broadcast weight word, from the words' nibbles
 * (lo = av & 0x0f.., hi = av >> 4 & 0x0f.., made once for the 4 lanes of a step) and the
 * weight's (wn[0], wn[1]: made at load): a nibble XOR a nibble is a nibble, so the lookups
 * need no mask or shift of their own. */
__attribute__((target("avx2"), always_inline)) static inline __m256i
xor_count_avx2(__m256i lo, __m256i hi, const uint64_t *wn, __m256i lut) {
    const __m256i xlo = _mm256_xor_si256(lo, _mm256_set1_epi64x((long long)wn[0]));
    const __m256i xhi = _mm256_xor_si256(hi, _mm256_set1_epi64x((long long)wn[1]));
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, xlo), _mm256_shuffle_epi8(lut, xhi));
}

/* AVX2: a ymm holds one word of 4 pixels; per half group, 8 byte-count accumulators (one per
 * lane) over chunks of at most 31 words (31 * 8 < 256), summed into 64-bit totals with
 * vpsadbw after each chunk. */
__attribute__((target("avx2"))) static void tile_avx2_half(const Tile *t) {
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
                const __m256i av =
                    _mm256_loadu_si256((const __m256i *)(t->a + t->off[k] + i0));
                const __m256i lo = _mm256_and_si256(av, low);
                const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(av, 4), low);
                const uint64_t *wn = t->wn + (k * LANES + j0) * 2;
                PREFETCH_WEIGHTS(wn);
                acc0 = _mm256_add_epi8(acc0, xor_count_avx2(lo, hi, wn, lut));
                acc1 = _mm256_add_epi8(acc1, xor_count_avx2(lo, hi, wn + 2, lut));
                acc2 = _mm256_add_epi8(acc2, xor_count_avx2(lo, hi, wn + 4, lut));
                acc3 = _mm256_add_epi8(acc3, xor_count_avx2(lo, hi, wn + 6, lut));
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

__attribute__((target("avx2"))) static void tile_avx2(const Tile *t0, const Tile *t1) {
    tile_avx2_half(t0);
    if (t1->np)
        tile_avx2_half(t1);
}

/* AVX-512: a zmm holds one word of a half-group's 8 pixels, two zmm the tile's 16; the weight
 * word is broadcast. The epilogue runs on 16 floats of a lane at once. */
__attribute__((target(AVX512))) static void tile_avx512(const Tile *t0, const Tile *t1) {
    __m512i acc0[LANES], acc1[LANES];
#pragma GCC unroll 8
    for (int j = 0; j < LANES; j++)
        acc0[j] = acc1[j] = _mm512_setzero_si512();
    const uint64_t *a0 = t0->a, *a1 = t1->a;
    const int64_t *off = t0->off;
    if (t1->np) {
        for (int64_t k = 0; k < t0->nw; k++) {
            const __m512i av0 = _mm512_loadu_si512((const void *)(a0 + off[k]));
            const __m512i av1 = _mm512_loadu_si512((const void *)(a1 + off[k]));
            const uint64_t *w = t0->w + k * LANES;
            PREFETCH_WEIGHTS(w);
#pragma GCC unroll 8
            for (int j = 0; j < LANES; j++) {
                const __m512i wv = _mm512_set1_epi64((long long)w[j]);
                acc0[j] = _mm512_add_epi64(acc0[j], _mm512_popcnt_epi64(_mm512_xor_si512(av0, wv)));
                acc1[j] = _mm512_add_epi64(acc1[j], _mm512_popcnt_epi64(_mm512_xor_si512(av1, wv)));
            }
        }
    } else { /* one half-group (an image's last, of an odd count): half the work */
        for (int64_t k = 0; k < t0->nw; k++) {
            const __m512i av0 = _mm512_loadu_si512((const void *)(a0 + off[k]));
            const uint64_t *w = t0->w + k * LANES;
            PREFETCH_WEIGHTS(w);
#pragma GCC unroll 8
            for (int j = 0; j < LANES; j++)
                acc0[j] = _mm512_add_epi64(
                    acc0[j], _mm512_popcnt_epi64(_mm512_xor_si512(
                                 av0, _mm512_set1_epi64((long long)w[j]))));
        }
    }
    const __mmask8 m0 = (__mmask8)((1u << t0->np) - 1), m1 = (__mmask8)((1u << t1->np) - 1);
    const __m512i kbits = _mm512_set1_epi32(t0->kbits);
    const __m256i zero = _mm256_setzero_si256();
    /* the low dwords of the 8 counts of each half (they are below 2^31): one permute */
    const __m512i low =
        _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    __m512 v[LANES];
#pragma GCC unroll 8
    for (int j = 0; j < LANES; j++) { /* lanes past nl have scale and bias 0 */
        const __m512i pop = _mm512_permutex2var_epi32(acc0[j], low, acc1[j]);
        __m512i dot = _mm512_sub_epi32(kbits, _mm512_add_epi32(pop, pop));
        if (t0->corr || t1->corr) {
            const __m256i c0 =
                t0->corr ? _mm256_loadu_si256((const __m256i *)(t0->corr + j * GP)) : zero;
            const __m256i c1 =
                t1->corr ? _mm256_loadu_si256((const __m256i *)(t1->corr + j * GP)) : zero;
            dot = _mm512_sub_epi32(dot, _mm512_inserti64x4(_mm512_castsi256_si512(c0), c1, 1));
        }
        const __m512 prod = _mm512_mul_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps(t0->scale[j]));
        v[j] = _mm512_add_ps(prod, _mm512_set1_ps(t0->bias[j]));
    }
    if (t0->ep && t0->nl == LANES) /* inlined twice: without the lane checks, and with */
        ob_ep_avx512(t0->ep, t0->c0, v, LANES, t0->off_out, m0, t1->off_out, m1, t0->plane);
    else if (t0->ep)
        ob_ep_avx512(t0->ep, t0->c0, v, t0->nl, t0->off_out, m0, t1->off_out, m1, t0->plane);
    const int contig = t1->off_out == t0->off_out + GP;
#pragma GCC unroll 8
    for (int j = 0; j < LANES; j++) {
        if (j >= t0->nl)
            break;
        if (contig) {
            _mm512_mask_storeu_ps(t0->out + j * t0->plane, (__mmask16)(m0 | (unsigned)m1 << 8),
                                  v[j]);
        } else {
            _mm256_mask_storeu_ps(t0->out + j * t0->plane, m0, _mm512_castps512_ps256(v[j]));
            if (m1)
                _mm256_mask_storeu_ps(
                    t1->out + j * t1->plane, m1,
                    _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v[j]), 1)));
        }
    }
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
static void tile_neon_half(const Tile *t) {
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
                const uint64_t *a = t->a + t->off[k], *w = t->w + k * LANES + jh;
                PREFETCH_WEIGHTS(w);
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

static void tile_neon(const Tile *t0, const Tile *t1) {
    tile_neon_half(t0);
    if (t1->np)
        tile_neon_half(t1);
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

#ifdef OB_X86
/* AVX-512: one compare gives a 16-bit mask of 16 pixels of a channel (mask[k]: bit p = pixel
 * x0 + p of channel 64 g + k); pixel p's word is then the bit p of the 64 masks, two vptestmw. */
__attribute__((target(AVX512))) static void pack_row_avx512(const float *src, int64_t plane,
                                                            const float *bias, int64_t cin,
                                                            int64_t w, int64_t kc,
                                                            uint64_t *words) {
    const __m512 zero = _mm512_setzero_ps();
    for (int64_t g = 0; g < kc; g++) {
        const int64_t base = g * 64, nc = cin - base < 64 ? cin - base : 64;
        uint16_t mask[64] __attribute__((aligned(64))) = {0};
        for (int64_t x0 = 0; x0 < w; x0 += 16) {
            const int64_t np = w - x0 < 16 ? w - x0 : 16;
            const __mmask16 valid = (__mmask16)((1u << np) - 1);
            for (int64_t k = 0; k < nc; k++) {
                const __m512 v = _mm512_add_ps(
                    _mm512_maskz_loadu_ps(valid, src + (base + k) * plane + x0),
                    _mm512_set1_ps(bias[base + k]));
                mask[k] = (uint16_t)_mm512_cmp_ps_mask(v, zero, _CMP_NGE_UQ);
            }
            const __m512i lo = _mm512_load_si512((const void *)mask);
            if (nc <= 32) {
                for (int64_t p = 0; p < np; p++)
                    words[(x0 + p) * kc + g] =
                        (uint32_t)_mm512_test_epi16_mask(lo, _mm512_set1_epi16((short)(1 << p)));
            } else {
                const __m512i hi = _mm512_load_si512((const void *)(mask + 32));
                for (int64_t p = 0; p < np; p++) {
                    const __m512i bit = _mm512_set1_epi16((short)(1 << p));
                    words[(x0 + p) * kc + g] =
                        (uint64_t)(uint32_t)_mm512_test_epi16_mask(lo, bit) |
                        (uint64_t)(uint32_t)_mm512_test_epi16_mask(hi, bit) << 32;
                }
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
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vpopcntdq");
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
    if (v == OB_KERNEL_AVX512)
        return pack_row_avx512;
    if (v == OB_KERNEL_AVX2)
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
    int64_t wo8, ngx;               /* output columns rounded up to GP, half-groups per row */
    int64_t nhg, npairs;            /* half-groups per image (ho * ngx), tiles (pairs of them) */
    int64_t rowstride;              /* words per input row of row windows, nwr * wo8 */
    int64_t ylo, yhi, xlo, xhi;     /* output rows / columns whose taps all lie inside */
    int64_t nrc;                    /* row classes: 0 the interior rows, then each border row */
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
    s->wo8 = (s->wo + GP - 1) / GP * GP;
    s->ngx = s->wo8 / GP;
    s->nhg = s->ho * s->ngx;
    s->npairs = (s->nhg + 1) / 2;
    s->rowstride = (int64_t)c->nwr * s->wo8;
    interior(h, s->ho, g->kh, g->sh, g->ph, g->dh, &s->ylo, &s->yhi);
    interior(w, s->wo, g->kw, g->sw, g->pw, g->dw, &s->xlo, &s->xhi);
    s->nrc = 1 + s->ylo + (s->ho - s->yhi);
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

/* int32 entries of the correction table (and bytes of its flags, nrc * ngx) */
static size_t corr_entries(const ob_bconv *c, const Shape *s) {
    return mul_size(mul_size((size_t)s->nrc, (size_t)s->ngx), (size_t)c->ncb * LANES * GP);
}

/* Words of packed input, of row windows, of offsets and of correction tables (with flags);
 * all 0 on overflow. */
static void scratch_words(const ob_bconv *c, const Shape *s, size_t *packed, size_t *windows,
                          size_t *offs, size_t *tables) {
    *packed =
        mul_size(mul_size(mul_size((size_t)s->n, (size_t)s->hp), (size_t)s->wp), (size_t)c->kc);
    *windows = mul_size(mul_size((size_t)s->n, (size_t)s->hp), (size_t)s->rowstride);
    *offs = (size_t)c->nw;
    const size_t entries = corr_entries(c, s);
    *tables = entries == 0 ? 0 : entries / 2 + (size_t)(s->nrc * s->ngx) / 8 + 1;
    if (*packed == 0 || *windows == 0 || *tables == 0)
        *packed = *windows = *tables = 0;
}

size_t ob_bconv_scratch_bytes(const ob_bconv *c, int n, int h, int w) {
    Shape s;
    size_t packed, windows, offs, tables;
    if (c == NULL || shape_of(c, n, h, w, &s) < 0)
        return 0;
    scratch_words(c, &s, &packed, &windows, &offs, &tables);
    const size_t words = packed + windows + offs + tables, bytes = mul_size(words, 8);
    if (packed == 0 || words < packed || words < windows || words < tables || bytes == 0 ||
        bytes > SIZE_MAX - 5 * ALIGN)
        return 0;
    return bytes + 5 * ALIGN; /* each part starts on a cache line */
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

/* The row windows of one packed input row, [nwr][wo8] (columns past wo are 0): word j of tap
 * kx is bits [kx cin + 64 j, + nb) of the stream, so it ors into one window word, or two when it
 * crosses a word boundary. Each (tap, word) is one pass over the output columns with fixed
 * shifts, which the compiler vectorizes (loads at stride sw * kc). */
INLINE void windows_body(const ob_bconv *c, const Shape *s, const uint64_t *restrict row,
                         uint64_t *restrict dst) {
    const ob_bconv_geom *g = &c->g;
    const int64_t kc = c->kc, wo = s->wo, wo8 = s->wo8, step = (int64_t)g->sw * kc;
    const int last_bits = g->cin - 64 * (int)(kc - 1);
    memset(dst, 0, sizeof(uint64_t) * (size_t)(c->nwr * wo8));
    for (int64_t kx = 0; kx < g->kw; kx++) {
        for (int64_t j = 0; j < kc; j++) {
            const int64_t pos = kx * g->cin + 64 * j;
            const int nb = j == kc - 1 ? last_bits : 64, sh = (int)(pos % 64);
            const uint64_t *restrict src = row + kx * g->dw * kc + j;
            uint64_t *restrict d = dst + pos / 64 * wo8;
            if (step == 1)
                for (int64_t ox = 0; ox < wo; ox++)
                    d[ox] |= src[ox] << sh;
            else
                for (int64_t ox = 0; ox < wo; ox++)
                    d[ox] |= src[ox * step] << sh;
            if (sh + nb > 64) { /* the high bits spill into the next word */
                d += wo8;
                for (int64_t ox = 0; ox < wo; ox++)
                    d[ox] |= src[ox * step] >> (64 - sh);
            }
        }
    }
}

/* The row windows of packed input rows [r0, r1) (one call for many rows: a row is short). */
INLINE void windows_rows(const ob_bconv *c, const Shape *s, const uint64_t *packed,
                         uint64_t *windows, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++)
        windows_body(c, s, packed + r * s->wp * c->kc, windows + r * s->rowstride);
}

typedef void (*windows_fn)(const ob_bconv *c, const Shape *s, const uint64_t *packed,
                           uint64_t *windows, int64_t r0, int64_t r1);

static void windows_portable(const ob_bconv *c, const Shape *s, const uint64_t *packed,
                             uint64_t *windows, int64_t r0, int64_t r1) {
    windows_rows(c, s, packed, windows, r0, r1);
}

#ifdef OB_X86
__attribute__((target("avx2"))) static void windows_avx2(const ob_bconv *c, const Shape *s,
                                                          const uint64_t *packed,
                                                          uint64_t *windows, int64_t r0,
                                                          int64_t r1) {
    windows_rows(c, s, packed, windows, r0, r1);
}
#endif

/* The row windows of every packed input row, [n][hp][nwr][wo8]: the rows split in one range
 * per thread. */
static void build_windows(const ob_bconv *c, const Shape *s, const uint64_t *packed,
                          uint64_t *windows, int threads) {
    const int64_t rows = s->n * s->hp;
    windows_fn fn = windows_portable;
#ifdef OB_X86
    if (c->variant == OB_KERNEL_AVX2 || c->variant == OB_KERNEL_AVX512)
        fn = windows_avx2;
#endif
    if (threads < 2 || rows < 2) {
        fn(c, s, packed, windows, 0, rows);
        return;
    }
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads)
#endif
    for (int t = 0; t < threads; t++)
        fn(c, s, packed, windows, rows * t / threads, rows * (t + 1) / threads);
}

static int row_out(const ob_bconv_geom *g, const Shape *s, int64_t oy, int64_t ky) {
    const int64_t iy = oy * g->sh - g->ph + ky * g->dh;
    return iy < 0 || iy >= s->h;
}

static int col_out(const ob_bconv_geom *g, const Shape *s, int64_t ox, int64_t kx) {
    const int64_t ix = ox * g->sw - g->pw + kx * g->dw;
    return ix < 0 || ix >= s->w;
}

/* The row class of output row oy: 0 inside, else 1 + its index among the border rows. */
static int64_t row_class(const Shape *s, int64_t oy) {
    return oy < s->ylo ? 1 + oy : oy >= s->yhi ? 1 + s->ylo + (oy - s->yhi) : 0;
}

/* The correction table: corr [nrc][ngx][ncb][LANES][GP], for each row class and half-group
 * column the tap sums of the taps of each pixel that lie in the padding; flag [nrc][ngx] is 1
 * where any of them is nonzero. */
static void corr_tables(const ob_bconv *c, const Shape *s, int32_t *corr, uint8_t *flag) {
    const ob_bconv_geom *g = &c->g;
    const int64_t block = (int64_t)c->ncb * LANES * GP;
    memset(corr, 0, sizeof(int32_t) * corr_entries(c, s));
    memset(flag, 0, (size_t)(s->nrc * s->ngx));
    for (int64_t rc = 0; rc < s->nrc; rc++) {
        /* a row of the class: the first interior row, or the border row itself */
        const int64_t oy = rc == 0 ? s->ylo : rc <= s->ylo ? rc - 1 : s->yhi + (rc - 1 - s->ylo);
        if (rc == 0 && s->ylo == s->yhi)
            continue; /* no interior rows */
        for (int64_t ox = 0; ox < s->wo; ox++) {
            if (rc == 0 && ox >= s->xlo && ox < s->xhi)
                continue;
            const int64_t gx = ox / GP, i = ox % GP;
            int32_t *t = corr + (rc * s->ngx + gx) * block;
            flag[rc * s->ngx + gx] = 1;
            for (int64_t ky = 0; ky < g->kh; ky++)
                for (int64_t kx = 0; kx < g->kw; kx++) {
                    if (!row_out(g, s, oy, ky) && !col_out(g, s, ox, kx))
                        continue;
                    for (int64_t cb = 0; cb < c->ncb; cb++) {
                        const int32_t *ts = c->tapsum + (cb * c->ntaps + ky * g->kw + kx) * LANES;
                        for (int j = 0; j < LANES; j++)
                            t[(cb * LANES + j) * GP + i] += ts[j];
                    }
                }
        }
    }
}

int ob_bconv_plan(ob_bconv *c, int h, int w) {
    Shape s;
    if (c == NULL || shape_of(c, 1, h, w, &s) < 0)
        return -1;
    free(c->plan_corr);
    c->plan_h = c->plan_w = 0;
    const size_t entries = corr_entries(c, &s);
    c->plan_corr = entries ? malloc(sizeof(int32_t) * entries + (size_t)(s.nrc * s.ngx)) : NULL;
    if (c->plan_corr == NULL)
        return -1;
    c->plan_flag = (uint8_t *)(c->plan_corr + entries);
    corr_tables(c, &s, c->plan_corr, c->plan_flag);
    c->plan_h = h, c->plan_w = w;
    return 0;
}

void ob_bconv_run(const ob_bconv *c, const float *x, int n, int h, int w, float *y, void *scratch,
                  int threads) {
    ob_bconv_run_ep(c, x, n, h, w, y, scratch, threads, NULL);
}

void ob_bconv_run_ep(const ob_bconv *c, const float *x, int n, int h, int w, float *y,
                     void *scratch, int threads, const ob_epilogue *ep) {
    Shape s;
    size_t packed_words, window_words, off_words, table_words;
    if (ep != NULL && ep->n == 0)
        ep = NULL;
    if (c == NULL || x == NULL || y == NULL || scratch == NULL || shape_of(c, n, h, w, &s) < 0)
        return;
    scratch_words(c, &s, &packed_words, &window_words, &off_words, &table_words);
    if (packed_words == 0)
        return;
    if (threads < 1)
        threads = 1;
    uint64_t *packed = (uint64_t *)align_up(scratch);
    uint64_t *windows = (uint64_t *)align_up(packed + packed_words);
    int64_t *off = (int64_t *)align_up(windows + window_words);
    const int32_t *corr = c->plan_corr;
    const uint8_t *flag = c->plan_flag;
    if (c->plan_h != h || c->plan_w != w) {
        int32_t *tables = (int32_t *)align_up(off + off_words);
        uint8_t *flags = (uint8_t *)(tables + corr_entries(c, &s));
        corr_tables(c, &s, tables, flags);
        corr = tables, flag = flags;
    }
    const ob_bconv_geom *g = &c->g;
    for (int64_t ky = 0; ky < g->kh; ky++)
        for (int64_t r = 0; r < c->nwr; r++)
            off[ky * c->nwr + r] = ky * g->dh * s.rowstride + r * s.wo8;
    pack_input(c, &s, x, packed, threads);
    build_windows(c, &s, packed, windows, threads);

    const tile_fn tile = variant_tile(c->variant);
    const int64_t nw = c->nw, cout = c->g.cout, block = (int64_t)c->ncb * LANES * GP;
    const int64_t nitems_p = (s.npairs + ITEM_P - 1) / ITEM_P;
    const int64_t nitems_cb = (c->ncb + ITEM_CB - 1) / ITEM_CB;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads)
#endif
    for (int64_t item = 0; item < s.n * nitems_p * nitems_cb; item++) {
        const int64_t b = item / (nitems_p * nitems_cb), rest = item % (nitems_p * nitems_cb);
        const int64_t p0 = rest / nitems_cb * ITEM_P, cb0 = rest % nitems_cb * ITEM_CB;
        const int64_t p1 = p0 + ITEM_P < s.npairs ? p0 + ITEM_P : s.npairs;
        const int64_t cb1 = cb0 + ITEM_CB < c->ncb ? cb0 + ITEM_CB : c->ncb;
        Tile t[2 * ITEM_P];
        const int32_t *corr_of[2 * ITEM_P];
        size_t base[2 * ITEM_P]; /* the output offset of each half-group's first pixel, lane 0 */
        for (int64_t hg = 2 * p0; hg < 2 * p1; hg++) {
            const int64_t i = hg - 2 * p0;
            Tile *th = &t[i];
            th->off = off, th->nw = nw, th->kbits = c->kbits, th->plane = s.plane, th->ep = ep;
            th->np = 0, th->a = NULL, th->out = NULL;
            corr_of[i] = NULL, base[i] = 0;
            if (hg >= s.nhg)
                continue;
            const int64_t oy = hg / s.ngx, gx = hg % s.ngx, rc = row_class(&s, oy);
            th->a = windows + (b * s.hp + oy * g->sh) * s.rowstride + gx * GP;
            th->np = s.wo - gx * GP < GP ? (int)(s.wo - gx * GP) : GP;
            base[i] = (size_t)(b * cout * s.plane + oy * s.wo + gx * GP);
            if (flag[rc * s.ngx + gx])
                corr_of[i] = corr + (rc * s.ngx + gx) * block;
        }
        for (int64_t cb = cb0; cb < cb1; cb++) {
            const int nl = cout - cb * LANES < LANES ? (int)(cout - cb * LANES) : LANES;
            for (int64_t i = 0; i < 2 * (p1 - p0); i++) {
                Tile *th = &t[i];
                th->w = c->w ? c->w + cb * nw * LANES : NULL;
                th->wn = c->wn ? c->wn + cb * nw * LANES * 2 : NULL;
                th->scale = c->scale + cb * LANES;
                th->bias = c->bias + cb * LANES;
                th->nl = nl;
                th->c0 = cb * LANES;
                th->off_out = base[i] + (size_t)(cb * LANES * s.plane);
                th->out = th->np ? y + th->off_out : NULL;
                th->corr = corr_of[i] ? corr_of[i] + cb * LANES * GP : NULL;
            }
            for (int64_t p = 0; p < p1 - p0; p++)
                tile(&t[2 * p], &t[2 * p + 1]);
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
    const int64_t kc = (g->cin + 63) / 64, kbits = ntaps * g->cin;
    const int64_t nwr = ((int64_t)g->kw * g->cin + 63) / 64, nw = g->kh * nwr;
    const int64_t ncb = (g->cout + LANES - 1) / LANES;

    /* one block: struct, weights, tap sums, scale, bias, act_bias, each cache-line aligned */
    /* the weight words (w), or for avx2 only their nibbles (wn, which its tile reads) */
    const int nibbled = variant == OB_KERNEL_AVX2;
    const size_t sizes[] = {sizeof(ob_bconv),
                            nibbled ? 0 : sizeof(uint64_t) * (size_t)(ncb * nw * LANES),
                            sizeof(int32_t) * (size_t)(ncb * ntaps * LANES),
                            sizeof(float) * (size_t)(ncb * LANES),
                            sizeof(float) * (size_t)(ncb * LANES),
                            sizeof(float) * (size_t)g->cin,
                            nibbled ? sizeof(uint64_t) * (size_t)(ncb * nw * LANES * 2) : 0};
    size_t total = ALIGN;
    for (int i = 0; i < 7; i++)
        total += (sizes[i] + ALIGN - 1) / ALIGN * ALIGN;
    void *block = calloc(1, total);
    if (block == NULL)
        return NULL;
    char *p = (char *)align_up(block);
    void *parts[7];
    for (int i = 0; i < 7; i++) {
        parts[i] = p;
        p += (sizes[i] + ALIGN - 1) / ALIGN * ALIGN;
    }
    ob_bconv *c = (ob_bconv *)parts[0];
    c->g = *g;
    c->variant = variant;
    c->kc = (int)kc;
    c->ntaps = (int)ntaps;
    c->nwr = (int)nwr;
    c->nw = (int)nw;
    c->ncb = (int)ncb;
    c->kbits = (int32_t)kbits;
    c->w = sizes[1] ? (uint64_t *)parts[1] : NULL;
    c->tapsum = (int32_t *)parts[2];
    c->scale = (float *)parts[3];
    c->bias = (float *)parts[4];
    c->act_bias = (float *)parts[5];
    c->wn = sizes[6] ? (uint64_t *)parts[6] : NULL;
    c->block = block;

    uint64_t *window = (uint64_t *)calloc((size_t)nwr + 1, sizeof(uint64_t));
    uint64_t *tap = (uint64_t *)malloc(sizeof(uint64_t) * (size_t)kc);
    if (window == NULL || tap == NULL) {
        free(window);
        free(tap);
        free(block);
        return NULL;
    }
    const uint64_t nibbles = 0x0f0f0f0f0f0f0f0full;
    const uint64_t last_mask = g->cin % 64 ? ((uint64_t)1 << (g->cin % 64)) - 1 : ~(uint64_t)0;
    for (int64_t co = 0; co < g->cout; co++) {
        const int64_t cb = co / LANES, j = co % LANES;
        for (int64_t ky = 0; ky < g->kh; ky++) {
            memset(window, 0, sizeof(uint64_t) * (size_t)(nwr + 1));
            for (int64_t kx = 0; kx < g->kw; kx++) {
                const int64_t t = ky * g->kw + kx;
                memcpy(tap, wbits + (co * ntaps + t) * kc, sizeof(uint64_t) * (size_t)kc);
                tap[kc - 1] &= last_mask; /* bits past cin would count against every pixel */
                int32_t neg = 0;
                for (int64_t i = 0; i < kc; i++)
                    neg += __builtin_popcountll(tap[i]);
                c->tapsum[(cb * ntaps + t) * LANES + j] = g->cin - 2 * neg;
                append_bits_dense(window, kx * g->cin, tap, g->cin);
            }
            for (int64_t r = 0; r < nwr; r++) {
                const int64_t i = (cb * nw + ky * nwr + r) * LANES + j;
                if (c->wn) {
                    c->wn[2 * i] = window[r] & nibbles;
                    c->wn[2 * i + 1] = window[r] >> 4 & nibbles;
                } else {
                    c->w[i] = window[r];
                }
            }
        }
        c->scale[co] = out_scale[co];
        c->bias[co] = out_bias[co];
    }
    if (act_bias != NULL)
        memcpy(c->act_bias, act_bias, sizeof(float) * (size_t)g->cin);
    free(window);
    free(tap);
    return c;
}

const ob_bconv_geom *ob_bconv_geometry(const ob_bconv *c) { return c ? &c->g : NULL; }

int ob_bconv_variant(const ob_bconv *c) { return c ? c->variant : -1; }

void ob_bconv_free(ob_bconv *c) {
    if (c != NULL) {
        free(c->plan_corr);
        free(c->block);
    }
}
