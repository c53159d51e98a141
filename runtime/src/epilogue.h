/* Element-wise ops fused into the output of a conv2d or bconv2d (an epilogue): load.c finds a
 * chain conv -> affine / add / relu / hardtanh / prelu / leaky_clip whose intermediate values
 * have no other reader, and the conv applies the chain to each output while it is still in
 * registers, instead of one pass over memory per op. Every op is the same float expression as
 * its unfused kernel in ops.c (build with -ffp-contract=off), so fused and unfused outputs are
 * bit for bit the same.
 *
 * Header only (static inline), so bconv.c stays buildable on its own. Internal. */
#ifndef ONEBIT_EPILOGUE_H
#define ONEBIT_EPILOGUE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum {
    OB_EP_AFFINE = 1, /* v * scale[c] + bias[c] (either may be absent) */
    OB_EP_ADD,        /* v + res[i], or res[i] + v when swap */
    OB_EP_RELU,
    OB_EP_HARDTANH, /* clamp to [lo, hi], NaN kept */
    OB_EP_PRELU,    /* v > 0 ? v : slope * v, slope scale[c] (scale[0] when n_slopes is 1) */
    OB_EP_LEAKY_CLIP
};
#define OB_EP_MAX 4

typedef struct {
    int kind;
    int swap;     /* add: the other value is the first operand */
    int n_slopes; /* prelu: 1, or one per channel */
    float lo, hi; /* hardtanh */
    const float *scale, *bias;
    const float *res; /* add: the other value, laid out as the conv's output (set per run) */
} ob_ep_op;

typedef struct {
    int n; /* ops, 0 to OB_EP_MAX */
    ob_ep_op op[OB_EP_MAX];
} ob_epilogue;

typedef float ob_vf8 __attribute__((vector_size(32)));
typedef float ob_vf4 __attribute__((vector_size(16)));
typedef int32_t ob_vi4 __attribute__((vector_size(16)));

#define OB_EP_INLINE static inline __attribute__((always_inline))

/* The portable code works on 4-float vectors, which SSE2 and NEON hold in one register (a wider
 * compare would be split element by element). ob_ep_select4: m ? a : b per lane (m: -1 or 0
 * per lane, as a vector compare gives). */
#define ob_ep_splat4(x) ((ob_vf4){(x), (x), (x), (x)})
#define ob_ep_select4(m, a, b) ((ob_vf4)(((ob_vi4)(a) & (m)) | ((ob_vi4)(b) & ~(m))))

/* Op o on 4 outputs v of channel c; r: their other values (add). */
OB_EP_INLINE void ob_ep_op4(const ob_ep_op *o, int64_t c, ob_vf4 *pv, const ob_vf4 *r) {
    ob_vf4 v = *pv;
    const ob_vf4 zero = {0, 0, 0, 0};
    switch (o->kind) {
    case OB_EP_AFFINE:
        if (o->scale) v = v * ob_ep_splat4(o->scale[c]);
        if (o->bias) v = v + ob_ep_splat4(o->bias[c]);
        break;
    case OB_EP_ADD:
        v = o->swap ? *r + v : v + *r;
        break;
    case OB_EP_RELU:
        v = ob_ep_select4(v < zero, zero, v);
        break;
    case OB_EP_HARDTANH: {
        const ob_vf4 lo = ob_ep_splat4(o->lo), hi = ob_ep_splat4(o->hi);
        v = ob_ep_select4(v < lo, lo, ob_ep_select4(v > hi, hi, v));
        break;
    }
    case OB_EP_PRELU: {
        const ob_vf4 a = ob_ep_splat4(o->scale[o->n_slopes == 1 ? 0 : c]);
        v = ob_ep_select4(v > zero, v, a * v);
        break;
    }
    case OB_EP_LEAKY_CLIP: {
        const ob_vf4 one = ob_ep_splat4(1.0f), minus = ob_ep_splat4(-1.0f);
        const ob_vf4 cl = ob_ep_select4(v < minus, minus, ob_ep_select4(v > one, one, v));
        v = cl + ob_ep_splat4(0.1f) * (v - cl);
        break;
    }
    }
    *pv = v;
}

/* The np (0 to 4) valid floats at p as a vector, the rest 0. */
OB_EP_INLINE void ob_ep_load4(ob_vf4 *v, const float *p, int np) {
    if (np >= 4) {
        memcpy(v, p, sizeof *v);
    } else {
        *v = (ob_vf4){0, 0, 0, 0};
        for (int k = 0; k < np; k++) (*v)[k] = p[k];
    }
}

/* The chain on a block of nr rows of 8 outputs (np of each valid): row j is channel c0 + j, at
 * output element off + j * stride. One dispatch per op for the whole block. */
OB_EP_INLINE void ob_ep_block8(const ob_epilogue *e, int64_t c0, ob_vf8 *v, int nr, size_t off,
                               int64_t stride, int np) {
    for (int i = 0; i < e->n; i++) {
        const ob_ep_op *o = &e->op[i];
        for (int j = 0; j < nr; j++) {
            float *row = (float *)&v[j];
            for (int h = 0; h < 2; h++) {
                ob_vf4 x, r = {0, 0, 0, 0};
                memcpy(&x, row + 4 * h, sizeof x);
                if (o->kind == OB_EP_ADD)
                    ob_ep_load4(&r, o->res + off + (size_t)(j * stride) + 4 * h, np - 4 * h);
                ob_ep_op4(o, c0 + j, &x, &r);
                memcpy(row + 4 * h, &x, sizeof x);
            }
        }
    }
}

/* The chain in place on count consecutive outputs y of channel c (y[0] is output element off). */
OB_EP_INLINE void ob_ep_row(const ob_epilogue *e, int64_t c, float *y, size_t off, int64_t count) {
    for (int64_t i = 0; i < count; i += 4) {
        const int np = count - i < 4 ? (int)(count - i) : 4;
        ob_vf4 v;
        ob_ep_load4(&v, y + i, np);
        for (int k = 0; k < e->n; k++) {
            ob_vf4 r = {0, 0, 0, 0};
            if (e->op[k].kind == OB_EP_ADD) ob_ep_load4(&r, e->op[k].res + off + i, np);
            ob_ep_op4(&e->op[k], c, &v, &r);
        }
        if (np == 4)
            memcpy(y + i, &v, sizeof v);
        else
            for (int k = 0; k < np; k++) y[i + k] = v[k];
    }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

/* The chain on 8 outputs of channel c in an AVX register (np valid, at output element off).
 * vmaxps / vminps return their second operand unless the first is greater / less, which is
 * exactly the unfused select (x < lo ? lo : x keeps a NaN x). */
__attribute__((target("avx2"), always_inline)) static inline __m256
ob_ep_avx2(const ob_epilogue *e, int64_t c, __m256 v, size_t off, int np) {
    const __m256 zero = _mm256_setzero_ps();
    for (int i = 0; i < e->n; i++) {
        const ob_ep_op *o = &e->op[i];
        switch (o->kind) {
        case OB_EP_AFFINE:
            if (o->scale) v = _mm256_mul_ps(v, _mm256_set1_ps(o->scale[c]));
            if (o->bias) v = _mm256_add_ps(v, _mm256_set1_ps(o->bias[c]));
            break;
        case OB_EP_ADD: {
            __m256 r;
            if (np == 8) {
                r = _mm256_loadu_ps(o->res + off);
            } else {
                const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(np),
                                                        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
                r = _mm256_maskload_ps(o->res + off, keep);
            }
            v = o->swap ? _mm256_add_ps(r, v) : _mm256_add_ps(v, r);
            break;
        }
        case OB_EP_RELU:
            v = _mm256_max_ps(zero, v);
            break;
        case OB_EP_HARDTANH:
            v = _mm256_min_ps(_mm256_set1_ps(o->hi), _mm256_max_ps(_mm256_set1_ps(o->lo), v));
            break;
        case OB_EP_PRELU: {
            const __m256 a = _mm256_set1_ps(o->scale[o->n_slopes == 1 ? 0 : c]);
            v = _mm256_blendv_ps(_mm256_mul_ps(a, v), v, _mm256_cmp_ps(v, zero, _CMP_GT_OQ));
            break;
        }
        case OB_EP_LEAKY_CLIP: {
            const __m256 cl = _mm256_min_ps(_mm256_set1_ps(1.0f),
                                            _mm256_max_ps(_mm256_set1_ps(-1.0f), v));
            v = _mm256_add_ps(cl, _mm256_mul_ps(_mm256_set1_ps(0.1f), _mm256_sub_ps(v, cl)));
            break;
        }
        }
    }
    return v;
}

/* The chain on nl lanes v[j] of 16 outputs of channels c0 + j: the low 8 of lane j at output
 * element off0 + j * stride (mask m0 of the valid ones), the high 8 at off1 + j * stride (m1).
 * One dispatch per op for all lanes. */
__attribute__((target("avx512f,avx512vl"), always_inline)) static inline void
ob_ep_avx512(const ob_epilogue *e, int64_t c0, __m512 v[8], int nl, size_t off0, __mmask8 m0,
             size_t off1, __mmask8 m1, int64_t stride) {
    const __m512 zero = _mm512_setzero_ps();
    const int contig = off1 == off0 + 8;
    const __mmask16 m = (__mmask16)(m0 | (unsigned)m1 << 8);
    for (int i = 0; i < e->n; i++) {
        const ob_ep_op *o = &e->op[i];
        switch (o->kind) {
        case OB_EP_AFFINE:
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++) {
                if (j >= nl) break;
                if (o->scale) v[j] = _mm512_mul_ps(v[j], _mm512_set1_ps(o->scale[c0 + j]));
                if (o->bias) v[j] = _mm512_add_ps(v[j], _mm512_set1_ps(o->bias[c0 + j]));
            }
            break;
        case OB_EP_ADD:
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++) {
                if (j >= nl) break;
                const float *r0 = o->res + off0 + (size_t)(j * stride);
                __m512 r;
                if (contig) {
                    r = _mm512_maskz_loadu_ps(m, r0);
                } else {
                    const __m256 lo = _mm256_maskz_loadu_ps(m0, r0);
                    const __m256 hi =
                        _mm256_maskz_loadu_ps(m1, o->res + off1 + (size_t)(j * stride));
                    r = _mm512_castpd_ps(_mm512_insertf64x4(
                        _mm512_castpd256_pd512(_mm256_castps_pd(lo)), _mm256_castps_pd(hi), 1));
                }
                v[j] = o->swap ? _mm512_add_ps(r, v[j]) : _mm512_add_ps(v[j], r);
            }
            break;
        case OB_EP_RELU:
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++) v[j] = _mm512_max_ps(zero, v[j]);
            break;
        case OB_EP_HARDTANH: {
            const __m512 lo = _mm512_set1_ps(o->lo), hi = _mm512_set1_ps(o->hi);
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++) v[j] = _mm512_min_ps(hi, _mm512_max_ps(lo, v[j]));
            break;
        }
        case OB_EP_PRELU:
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++) {
                if (j >= nl) break;
                const __m512 a = _mm512_set1_ps(o->scale[o->n_slopes == 1 ? 0 : c0 + j]);
                v[j] = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v[j], zero, _CMP_GT_OQ),
                                            _mm512_mul_ps(a, v[j]), v[j]);
            }
            break;
        case OB_EP_LEAKY_CLIP: {
            const __m512 one = _mm512_set1_ps(1.0f), minus = _mm512_set1_ps(-1.0f);
            const __m512 tenth = _mm512_set1_ps(0.1f);
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++) {
                const __m512 cl = _mm512_min_ps(one, _mm512_max_ps(minus, v[j]));
                v[j] = _mm512_add_ps(cl, _mm512_mul_ps(tenth, _mm512_sub_ps(v[j], cl)));
            }
            break;
        }
        }
    }
}
#endif

#endif
