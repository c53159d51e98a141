/* Fused CPU passes of training (onebit.quant.fused): the binarizers, RPReLU, 2x2 average pool.
 *
 * PyTorch computes a binarizer's forward and surrogate backward as a chain of elementwise
 * operators, each one a pass over the activation; ReCU's per-sample standardisation adds a
 * Welford variance and the backward of a division. Here each binarizer is one pass forward
 * (ReCU's per-sample sums ride along with the sign) and one or two backward. Arrays are flat
 * buffers in the tensor's memory order: elementwise work does not care about the layout, and
 * ReCU's per-sample work needs only that each sample is a contiguous block (NCHW or NHWC).
 *
 *   sign(x)                 out = x >= 0 ? +1 : -1          (sign(0) = sign(-0) = +1)
 *   clip_backward           dx = g * 1{|x| <= 1}
 *   approx_backward         dx = g * max(0, 2 - 2|x|)
 *   recu_forward            per sample b: mean_b, s_b = sqrt(var_b + 1e-5) (unbiased); out = sign(x)
 *   recu_backward           h = g * max(0, 2 - 2|x| / s); dx = h / s - (x - mean) / ((n-1) s^3) * sum(h x)
 *
 * float32 and bfloat16. And ReActNet's RPReLU (a PReLU when both shifts are 0), float32 only,
 * per channel c of an NCHW or channels-last tensor, one pass each way where PyTorch takes
 * three forward and six backward (its PReLU backward alone is ~6x its forward):
 *
 *   rprelu_forward          z = x + b1_c; y = (z > 0 ? z : a_c z) + b2_c
 *   rprelu_backward         dx = z > 0 ? g : a_c g; per channel, in float64: sum dx (d b1),
 *                           sum g z 1{z <= 0} (d a), sum g (d b2)
 *
 * And the 2x2 stride-2 average pool of NCHW float32 (ResNet-20's and FIRNet's downsampling
 * shortcuts), where PyTorch's NCHW kernel is ~8x slower than its channels-last one:
 *
 *   avgpool2_forward        y = (((x00 + x01) + x10) + x11) / 4     (PyTorch's order: equal bits)
 *   avgpool2_backward       dx = g / 4 in each window; 0 in an odd last row / column
 *
 * And the last pass of the exact binary convolution (onebit.nn.exact_conv): the integer
 * partial sums a bfloat16 convolution of +-1 operands returns, widened (exactly), added and
 * scaled per output channel c, NCHW or channels-last:
 *
 *   bf16_accumulate         out = ((accumulate ? out : 0) + part) * (scale ? s_c : 1)
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

/* One clone per x86 vector width, picked when the module loads (GCC/clang ifunc). */
#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
#define VECTORISED __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VECTORISED
#endif

/* bfloat16 is the upper half of a float32: widening is exact; narrowing rounds to nearest even
 * (as PyTorch does), keeping NaNs NaN. Every kernel computes in float32 and rounds once. */
static inline float bf16_load(uint16_t v) {
    uint32_t u = (uint32_t)v << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t bf16_store(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float f32_load(float v) { return v; }
static inline float f32_store(float f) { return f; }

/* The kernels, once per element type T with LOAD(T) -> float and STORE(float) -> T. */
#define KERNELS(SUFFIX, T, LOAD, STORE)                                                         \
    VECTORISED static void sign_##SUFFIX(const T *x, T *out, int64_t count, int threads) {      \
        _Pragma("omp parallel for schedule(static) num_threads(threads)")                       \
        for (int64_t i = 0; i < count; i++) out[i] = STORE(LOAD(x[i]) >= 0.0f ? 1.0f : -1.0f);  \
    }                                                                                           \
                                                                                                \
    VECTORISED static void clip_backward_##SUFFIX(const T *x, const T *g, T *dx, int64_t count, \
                                                  int threads) {                                \
        _Pragma("omp parallel for schedule(static) num_threads(threads)")                       \
        for (int64_t i = 0; i < count; i++)                                                     \
            dx[i] = fabsf(LOAD(x[i])) <= 1.0f ? g[i] : STORE(0.0f);                             \
    }                                                                                           \
                                                                                                \
    VECTORISED static void approx_backward_##SUFFIX(const T *x, const T *g, T *dx,              \
                                                    int64_t count, int threads) {               \
        _Pragma("omp parallel for schedule(static) num_threads(threads)")                       \
        for (int64_t i = 0; i < count; i++) {                                                   \
            float t = 2.0f - 2.0f * fabsf(LOAD(x[i]));                                          \
            dx[i] = STORE(LOAD(g[i]) * (t > 0.0f ? t : 0.0f));                                  \
        }                                                                                       \
    }                                                                                           \
                                                                                                \
    VECTORISED static void recu_forward_##SUFFIX(const T *x, T *out, float *mean, float *std,   \
                                                 int64_t batch, int64_t n, int threads) {       \
        _Pragma("omp parallel for schedule(static) num_threads(threads)")                       \
        for (int64_t b = 0; b < batch; b++) {                                                   \
            const T *xb = x + b * n;                                                            \
            T *ob = out + b * n;                                                                \
            double sum = 0.0, squares = 0.0;                                                    \
            _Pragma("omp simd reduction(+ : sum, squares)")                                     \
            for (int64_t i = 0; i < n; i++) {                                                   \
                float v = LOAD(xb[i]);                                                          \
                sum += v;                                                                       \
                squares += (double)v * v;                                                       \
                ob[i] = STORE(v >= 0.0f ? 1.0f : -1.0f);                                        \
            }                                                                                   \
            double m = sum / (double)n;                                                         \
            double var = n > 1 ? (squares - sum * m) / (double)(n - 1) : 0.0;                   \
            mean[b] = (float)m;                                                                 \
            std[b] = (float)sqrt((var > 0.0 ? var : 0.0) + 1e-5);                               \
        }                                                                                       \
    }                                                                                           \
                                                                                                \
    /* dx is written twice per sample (h, then the result): for bf16 the first pass keeps h  */ \
    /* in float32 scratch so that the result is rounded once. */                                \
    VECTORISED static void recu_backward_##SUFFIX(const T *x, const T *g, const float *mean,    \
                                                  const float *std, T *dx, float *scratch,      \
                                                  int64_t batch, int64_t n, int threads) {      \
        _Pragma("omp parallel for schedule(static) num_threads(threads)")                       \
        for (int64_t b = 0; b < batch; b++) {                                                   \
            const T *xb = x + b * n, *gb = g + b * n;                                           \
            T *db = dx + b * n;                                                                 \
            float *hb = scratch + b * n;                                                        \
            float inv = 1.0f / std[b], slope = 2.0f * inv;                                      \
            double dot = 0.0;                                                                   \
            _Pragma("omp simd reduction(+ : dot)")                                              \
            for (int64_t i = 0; i < n; i++) {                                                   \
                float t = 2.0f - slope * fabsf(LOAD(xb[i]));                                    \
                float h = LOAD(gb[i]) * (t > 0.0f ? t : 0.0f);                                  \
                hb[i] = h;                                                                      \
                dot += (double)h * LOAD(xb[i]);                                                 \
            }                                                                                   \
            double s = std[b];                                                                  \
            float c = n > 1 ? (float)(dot / ((double)(n - 1) * s * s * s)) : 0.0f;              \
            float m = mean[b];                                                                  \
            for (int64_t i = 0; i < n; i++) db[i] = STORE(hb[i] * inv - c * (LOAD(xb[i]) - m)); \
        }                                                                                       \
    }

KERNELS(f32, float, f32_load, f32_store)
KERNELS(bf16, uint16_t, bf16_load, bf16_store)

/* RPReLU over `batch` samples of `channels` x `spatial` items: NCHW planes (channel p % C) or,
 * with channels_last, rows of `channels` items. */
VECTORISED static void rprelu_forward_f32(const float *x, float *y, const float *b1, const float *a,
                                          const float *b2, int64_t batch, int64_t channels,
                                          int64_t spatial, int channels_last, int threads) {
    if (!channels_last) {
#pragma omp parallel for schedule(static) num_threads(threads)
        for (int64_t p = 0; p < batch * channels; p++) {
            int64_t c = p % channels;
            float shift = b1[c], slope = a[c], bias = b2[c];
            const float *xp = x + p * spatial;
            float *yp = y + p * spatial;
            for (int64_t i = 0; i < spatial; i++) {
                float z = xp[i] + shift;
                yp[i] = (z > 0.0f ? z : slope * z) + bias;
            }
        }
        return;
    }
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < batch * spatial; r++) {
        const float *xr = x + r * channels;
        float *yr = y + r * channels;
        for (int64_t c = 0; c < channels; c++) {
            float z = xr[c] + b1[c];
            yr[c] = (z > 0.0f ? z : a[c] * z) + b2[c];
        }
    }
}

#define RPRELU_BLOCK 1024

/* sums: 3 x channels float64 (d b1, d a, d b2), summed in float over blocks of about
 * RPRELU_BLOCK items, the blocks in float64. Channels-last rows are split in one static chunk
 * per thread, each summing into its own 3 x channels of `scratch` (threads x 3 x channels
 * float64, then threads x 3 x channels float32 block sums), added in thread order: the same
 * sums for the same thread count. */
VECTORISED static void rprelu_backward_f32(const float *x, const float *g, const float *b1,
                                           const float *a, float *dx, double *sums,
                                           double *scratch, int64_t batch, int64_t channels,
                                           int64_t spatial, int channels_last, int threads) {
    if (!channels_last) {
#pragma omp parallel for schedule(static) num_threads(threads)
        for (int64_t c = 0; c < channels; c++) {
            float shift = b1[c], slope = a[c];
            double s_dx = 0.0, s_gz = 0.0, s_g = 0.0;
            for (int64_t n = 0; n < batch; n++) {
                int64_t p = (n * channels + c) * spatial;
                const float *xp = x + p, *gp = g + p;
                float *dp = dx + p;
                /* float sums over blocks of RPRELU_BLOCK items (vectorised), float64 across */
                for (int64_t lo = 0; lo < spatial; lo += RPRELU_BLOCK) {
                    int64_t hi = lo + RPRELU_BLOCK < spatial ? lo + RPRELU_BLOCK : spatial;
                    float f_dx = 0.0f, f_gz = 0.0f, f_g = 0.0f;
#pragma omp simd reduction(+ : f_dx, f_gz, f_g)
                    for (int64_t i = lo; i < hi; i++) {
                        float z = xp[i] + shift, gi = gp[i];
                        float d = z > 0.0f ? gi : slope * gi;
                        dp[i] = d;
                        f_dx += d;
                        f_gz += z > 0.0f ? 0.0f : gi * z;
                        f_g += gi;
                    }
                    s_dx += f_dx;
                    s_gz += f_gz;
                    s_g += f_g;
                }
            }
            sums[c] = s_dx;
            sums[channels + c] = s_gz;
            sums[2 * channels + c] = s_g;
        }
        return;
    }
    if (channels == 0) return; /* no sums; and the row blocks below divide by it */
    int64_t rows = batch * spatial;
    int used = 1;
#pragma omp parallel num_threads(threads)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        if (t == 0) used = nt;
        double *acc = scratch + (int64_t)t * 3 * channels;
        float *part = (float *)(scratch + (int64_t)nt * 3 * channels) + (int64_t)t * 3 * channels;
        for (int64_t c = 0; c < 3 * channels; c++) acc[c] = 0.0;
        int64_t lo = rows * t / nt, hi = rows * (t + 1) / nt;
        /* float sums over blocks of rows (about RPRELU_BLOCK items), float64 across */
        int64_t block = RPRELU_BLOCK / channels > 0 ? RPRELU_BLOCK / channels : 1;
        for (int64_t r0 = lo; r0 < hi; r0 += block) {
            int64_t r1 = r0 + block < hi ? r0 + block : hi;
            for (int64_t c = 0; c < 3 * channels; c++) part[c] = 0.0f;
            float *restrict p_dx = part, *restrict p_gz = part + channels,
                            *restrict p_g = part + 2 * channels;
            for (int64_t r = r0; r < r1; r++) {
                const float *restrict xr = x + r * channels, *restrict gr = g + r * channels;
                float *restrict dr = dx + r * channels;
#pragma omp simd
                for (int64_t c = 0; c < channels; c++) {
                    float z = xr[c] + b1[c], gi = gr[c];
                    float d = z > 0.0f ? gi : a[c] * gi;
                    dr[c] = d;
                    p_dx[c] += d;
                    p_gz[c] += z > 0.0f ? 0.0f : gi * z;
                    p_g[c] += gi;
                }
            }
            for (int64_t c = 0; c < 3 * channels; c++) acc[c] += part[c];
        }
    }
    for (int64_t c = 0; c < 3 * channels; c++) sums[c] = 0.0;
    for (int t = 0; t < used; t++)
        for (int64_t c = 0; c < 3 * channels; c++) sums[c] += scratch[(int64_t)t * 3 * channels + c];
}

/* 2x2 stride-2 average pool over `planes` NCHW planes of h x w (output h/2 x w/2, floor). */
VECTORISED static void avgpool2_forward_f32(const float *x, float *y, int64_t planes, int64_t h,
                                            int64_t w, int threads) {
    int64_t oh = h / 2, ow = w / 2;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t p = 0; p < planes; p++) {
        for (int64_t i = 0; i < oh; i++) {
            const float *restrict r0 = x + (p * h + 2 * i) * w, *restrict r1 = r0 + w;
            float *restrict out = y + (p * oh + i) * ow;
            for (int64_t j = 0; j < ow; j++)
                out[j] = (((r0[2 * j] + r0[2 * j + 1]) + r1[2 * j]) + r1[2 * j + 1]) / 4.0f;
        }
    }
}

VECTORISED static void avgpool2_backward_f32(const float *g, float *dx, int64_t planes, int64_t h,
                                             int64_t w, int threads) {
    int64_t oh = h / 2, ow = w / 2;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t p = 0; p < planes; p++) {
        for (int64_t i = 0; i < oh; i++) {
            const float *restrict gr = g + (p * oh + i) * ow;
            float *restrict r0 = dx + (p * h + 2 * i) * w, *restrict r1 = r0 + w;
            for (int64_t j = 0; j < ow; j++) {
                float v = gr[j] / 4.0f;
                r0[2 * j] = r0[2 * j + 1] = r1[2 * j] = r1[2 * j + 1] = v;
            }
            if (w & 1) r0[w - 1] = r1[w - 1] = 0.0f;
        }
        if (h & 1) memset(dx + (p * h + h - 1) * w, 0, (size_t)w * sizeof(float));
    }
}

/* out = ((accumulate ? out : 0) + widen(part)) * (s ? s[c] : 1) over batch x channels x spatial
 * items in NCHW or channels-last order (part bfloat16, out and s float32). */
VECTORISED static void bf16_accumulate_f32(const uint16_t *part, float *out, const float *s,
                                           int64_t batch, int64_t channels, int64_t spatial,
                                           int channels_last, int accumulate, int threads) {
    if (!channels_last) {
#pragma omp parallel for schedule(static) num_threads(threads)
        for (int64_t p = 0; p < batch * channels; p++) {
            const uint16_t *restrict src = part + p * spatial;
            float *restrict dst = out + p * spatial;
            float k = s ? s[p % channels] : 1.0f;
            if (accumulate)
                for (int64_t i = 0; i < spatial; i++) dst[i] = (dst[i] + bf16_load(src[i])) * k;
            else
                for (int64_t i = 0; i < spatial; i++) dst[i] = bf16_load(src[i]) * k;
        }
        return;
    }
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < batch * spatial; r++) {
        const uint16_t *restrict src = part + r * channels;
        float *restrict dst = out + r * channels;
        if (accumulate && s)
            for (int64_t c = 0; c < channels; c++) dst[c] = (dst[c] + bf16_load(src[c])) * s[c];
        else if (accumulate)
            for (int64_t c = 0; c < channels; c++) dst[c] += bf16_load(src[c]);
        else if (s)
            for (int64_t c = 0; c < channels; c++) dst[c] = bf16_load(src[c]) * s[c];
        else
            for (int64_t c = 0; c < channels; c++) dst[c] = bf16_load(src[c]);
    }
}

/* BatchNorm + shortcut + activation (onebit.nn.bn_act), float32, per channel c of an NCHW or
 * channels-last tensor of `batch` x `channels` x `spatial` items, M = batch x spatial:
 *
 *   z = x scale_c + shift_c (+ s)          the BatchNorm as an affine map, s the shortcut
 *   zp = z + b1_c; v = zp > 0 ? zp : a_c zp; y = min(max(v, lo), hi) + b2_c
 *
 * which is the identity (b1 = b2 = 0, a = 1, no bounds), ReLU (lo = 0), hardtanh (lo, hi),
 * PReLU or RPReLU (b1, a, b2). The gradient at z, as PyTorch's hardtanh_backward /
 * threshold_backward / PReLU backward give it: gv = (v <= lo || v >= hi) ? 0 : g, and
 * dz = zp > 0 ? gv : a_c gv.
 *
 *   bn_stats           per channel: sum (x - k_c), sum (x - k_c)^2 (k_c a shift near the mean)
 *   bn_act_forward     y from x (and s)
 *   bn_act_backward    dz (written), and per channel: sum dz, sum dz (x - m_c),
 *                      sum gv zp 1{zp <= 0} (d a), sum g (d b2)
 *   bn_input_backward  dx = dz A_c + (x - m_c) B_c + C_c  (the BatchNorm's input gradient)
 *
 * Sums are float over blocks of about BN_BLOCK items, float64 across blocks; channels-last rows
 * are split in one static chunk per thread, added in thread order: the same sums for the same
 * thread count. */
typedef struct {
    const float *x, *s, *g; /* s: the shortcut or NULL; g: the gradient (backward) */
    float *out;             /* forward: y; backward: dz; input backward: dx */
    const float *k;         /* stats: the shift k; backward: the mean m */
    const float *scale, *shift, *b1, *a, *b2;
    float lo, hi;
    int64_t batch, channels, spatial;
} BnPass;

#define BN_BLOCK 1024

/* The fields of a BnPass as restrict locals: stores to `out` then cannot alias them, which
 * keeps the loops below vectorised. */
#define BN_LOCALS(p)                                                                           \
    const float *restrict scale = (p)->scale, *restrict shift = (p)->shift,                    \
                          *restrict b1 = (p)->b1, *restrict slope = (p)->a,                    \
                          *restrict b2 = (p)->b2, *restrict kk = (p)->k;                       \
    const float lo = (p)->lo, hi = (p)->hi;                                                    \
    (void)scale, (void)shift, (void)b1, (void)slope, (void)b2, (void)kk, (void)lo, (void)hi

static inline float bn_act_y(float z, float b1, float a, float b2, float lo, float hi) {
    float zp = z + b1;
    float v = zp > 0.0f ? zp : a * zp;
    v = v < lo ? lo : v;
    return (v > hi ? hi : v) + b2;
}

VECTORISED static void bn_act_forward_f32(const BnPass *p, int channels_last, int threads) {
    int64_t C = p->channels, S = p->spatial;
    BN_LOCALS(p);
    if (!channels_last) {
#pragma omp parallel for schedule(static) num_threads(threads)
        for (int64_t q = 0; q < p->batch * C; q++) {
            int64_t c = q % C;
            const float *restrict x = p->x + q * S, *restrict s = p->s ? p->s + q * S : NULL;
            float *restrict y = p->out + q * S;
            float k = scale[c], h = shift[c], e1 = b1[c], a = slope[c], e2 = b2[c];
            if (s)
                for (int64_t i = 0; i < S; i++) y[i] = bn_act_y(x[i] * k + h + s[i], e1, a, e2, lo, hi);
            else
                for (int64_t i = 0; i < S; i++) y[i] = bn_act_y(x[i] * k + h, e1, a, e2, lo, hi);
        }
        return;
    }
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < p->batch * S; r++) {
        const float *restrict x = p->x + r * C, *restrict s = p->s ? p->s + r * C : NULL;
        float *restrict y = p->out + r * C;
        if (s)
            for (int64_t c = 0; c < C; c++)
                y[c] = bn_act_y(x[c] * scale[c] + shift[c] + s[c], b1[c], slope[c], b2[c], lo, hi);
        else
            for (int64_t c = 0; c < C; c++)
                y[c] = bn_act_y(x[c] * scale[c] + shift[c], b1[c], slope[c], b2[c], lo, hi);
    }
}

/* dz of one item at z, and its terms of the d a sum */
static inline float bn_act_dz(float z, float g, float b1, float a, float lo, float hi,
                              float *t_a) {
    float zp = z + b1;
    float v = zp > 0.0f ? zp : a * zp;
    float gv = (v <= lo || v >= hi) ? 0.0f : g;
    *t_a = zp > 0.0f ? 0.0f : gv * zp;
    return zp > 0.0f ? gv : a * gv;
}

/* The per-channel sums of bn_stats (2) or bn_act_backward (4) over items [i0, i1) of NCHW
 * plane q (channel c) into acc (float), writing dz in the backward. */
VECTORISED static void bn_sums_run(const BnPass *p, int backward, int64_t q, int64_t c, int64_t i0,
                                   int64_t i1, float *acc) {
    int64_t off = q * p->spatial;
    const float *restrict x = p->x + off;
    BN_LOCALS(p);
    float k = kk[c], s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
    if (!backward) {
#pragma omp simd reduction(+ : s0, s1)
        for (int64_t i = i0; i < i1; i++) {
            float d = x[i] - k;
            s0 += d;
            s1 += d * d;
        }
        acc[0] += s0;
        acc[1] += s1;
        return;
    }
    const float *restrict s = p->s ? p->s + off : NULL, *restrict g = p->g + off;
    float *restrict dz = p->out + off;
    float sc = scale[c], sh = shift[c], e1 = b1[c], a = slope[c];
    if (s) {
#pragma omp simd reduction(+ : s0, s1, s2, s3)
        for (int64_t i = i0; i < i1; i++) {
            float t_a, d = bn_act_dz(x[i] * sc + sh + s[i], g[i], e1, a, lo, hi, &t_a);
            dz[i] = d;
            s0 += d;
            s1 += d * (x[i] - k);
            s2 += t_a;
            s3 += g[i];
        }
    } else {
#pragma omp simd reduction(+ : s0, s1, s2, s3)
        for (int64_t i = i0; i < i1; i++) {
            float t_a, d = bn_act_dz(x[i] * sc + sh, g[i], e1, a, lo, hi, &t_a);
            dz[i] = d;
            s0 += d;
            s1 += d * (x[i] - k);
            s2 += t_a;
            s3 += g[i];
        }
    }
    acc[0] += s0;
    acc[1] += s1;
    acc[2] += s2;
    acc[3] += s3;
}

/* The same over channels-last rows [r0, r1) into part[k * channels + c]. */
VECTORISED static void bn_sums_rows(const BnPass *p, int backward, int64_t r0, int64_t r1,
                                    float *part) {
    int64_t C = p->channels;
    BN_LOCALS(p);
    float *restrict p0 = part, *restrict p1 = part + C, *restrict p2 = part + 2 * C,
                    *restrict p3 = part + 3 * C;
    for (int64_t r = r0; r < r1; r++) {
        const float *restrict x = p->x + r * C;
        if (!backward) {
#pragma omp simd
            for (int64_t c = 0; c < C; c++) {
                float d = x[c] - kk[c];
                p0[c] += d;
                p1[c] += d * d;
            }
            continue;
        }
        const float *restrict s = p->s ? p->s + r * C : NULL, *restrict g = p->g + r * C;
        float *restrict dz = p->out + r * C;
        if (s) {
#pragma omp simd
            for (int64_t c = 0; c < C; c++) {
                float t_a, d = bn_act_dz(x[c] * scale[c] + shift[c] + s[c], g[c], b1[c], slope[c], lo,
                                         hi, &t_a);
                dz[c] = d;
                p0[c] += d;
                p1[c] += d * (x[c] - kk[c]);
                p2[c] += t_a;
                p3[c] += g[c];
            }
        } else {
#pragma omp simd
            for (int64_t c = 0; c < C; c++) {
                float t_a, d = bn_act_dz(x[c] * scale[c] + shift[c], g[c], b1[c], slope[c], lo, hi,
                                         &t_a);
                dz[c] = d;
                p0[c] += d;
                p1[c] += d * (x[c] - kk[c]);
                p2[c] += t_a;
                p3[c] += g[c];
            }
        }
    }
}

/* sums: nsums x channels float64; scratch (channels-last): threads x nsums x channels float64,
 * then threads x nsums x channels float32. */
static void bn_sums_f32(const BnPass *p, int backward, double *sums, double *scratch,
                        int channels_last, int threads) {
    int nsums = backward ? 4 : 2;
    int64_t C = p->channels, S = p->spatial;
    if (!channels_last) {
#pragma omp parallel for schedule(static) num_threads(threads)
        for (int64_t c = 0; c < C; c++) {
            double total[4] = {0.0, 0.0, 0.0, 0.0};
            for (int64_t n = 0; n < p->batch; n++)
                for (int64_t lo = 0; lo < S; lo += BN_BLOCK) {
                    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                    bn_sums_run(p, backward, n * C + c, c, lo, lo + BN_BLOCK < S ? lo + BN_BLOCK : S,
                                acc);
                    for (int k = 0; k < nsums; k++) total[k] += acc[k];
                }
            for (int k = 0; k < nsums; k++) sums[k * C + c] = total[k];
        }
        return;
    }
    for (int64_t i = 0; i < nsums * C; i++) sums[i] = 0.0;
    if (C == 0) return;
    int64_t rows = p->batch * S;
    int used = 1;
#pragma omp parallel num_threads(threads)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        if (t == 0) used = nt;
        double *acc = scratch + (int64_t)t * nsums * C;
        float *part = (float *)(scratch + (int64_t)nt * nsums * C) + (int64_t)t * nsums * C;
        for (int64_t i = 0; i < nsums * C; i++) acc[i] = 0.0;
        int64_t lo = rows * t / nt, hi = rows * (t + 1) / nt;
        int64_t block = BN_BLOCK / C > 0 ? BN_BLOCK / C : 1;
        for (int64_t r0 = lo; r0 < hi; r0 += block) {
            for (int64_t i = 0; i < nsums * C; i++) part[i] = 0.0f;
            bn_sums_rows(p, backward, r0, r0 + block < hi ? r0 + block : hi, part);
            for (int64_t i = 0; i < nsums * C; i++) acc[i] += part[i];
        }
    }
    for (int t = 0; t < used; t++)
        for (int64_t i = 0; i < nsums * C; i++) sums[i] += scratch[(int64_t)t * nsums * C + i];
}

/* dx = dz A_c + (x - m_c) B_c + C_c: p->g is dz, p->scale A, p->shift B, p->b2 C, p->k m. */
VECTORISED static void bn_input_backward_f32(const BnPass *p, int channels_last, int threads) {
    int64_t C = p->channels, S = p->spatial;
    BN_LOCALS(p);
    if (!channels_last) {
#pragma omp parallel for schedule(static) num_threads(threads)
        for (int64_t q = 0; q < p->batch * C; q++) {
            int64_t c = q % C;
            const float *restrict x = p->x + q * S, *restrict dz = p->g + q * S;
            float *restrict dx = p->out + q * S;
            float ka = scale[c], kb = shift[c], kc = b2[c], m = kk[c];
            for (int64_t i = 0; i < S; i++) dx[i] = dz[i] * ka + (x[i] - m) * kb + kc;
        }
        return;
    }
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < p->batch * S; r++) {
        const float *restrict x = p->x + r * C, *restrict dz = p->g + r * C;
        float *restrict dx = p->out + r * C;
        for (int64_t c = 0; c < C; c++) dx[c] = dz[c] * scale[c] + (x[c] - kk[c]) * shift[c] + b2[c];
    }
}

/* ------------------------------------------------------------------------------ Python glue */

typedef struct {
    Py_buffer view;
    int held;
} Buf;

/* Element types of the activations and gradients: float32 (format "f"), or bfloat16 passed
 * as its 16 bits (an int16/uint16 view, format "h"/"H"). Statistics are always float32. */
enum { F32 = 4, BF16 = 2, F64 = 8 };

static int elem_ok(const Py_buffer *v, int elem) {
    if (v->itemsize != elem) return 0;
    if (!v->format) return 1;
    if (elem == F32) return strcmp(v->format, "f") == 0;
    if (elem == F64) return strcmp(v->format, "d") == 0;
    return strcmp(v->format, "h") == 0 || strcmp(v->format, "H") == 0;
}

/* A C-contiguous buffer of exactly `count` items of `elem` bytes. */
static int get_buf(PyObject *obj, Buf *buf, const char *name, int64_t count, int elem,
                   int writable) {
    buf->held = 0;
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, &buf->view, flags) != 0) return -1;
    buf->held = 1;
    if (!elem_ok(&buf->view, elem) || count < 0 || buf->view.len != (Py_ssize_t)count * elem) {
        PyErr_Format(PyExc_ValueError, "%s: expected %lld %s items, got %zd bytes", name,
                     (long long)count, elem == F32 ? "float32" : elem == F64 ? "float64" : "bfloat16",
                     buf->view.len);
        return -1;
    }
    return 0;
}

/* Any C-contiguous float32 or bfloat16 buffer; returns its item count (and sets *elem), -1 on
 * error. */
static int64_t get_input(PyObject *obj, Buf *buf, int *elem) {
    buf->held = 0;
    if (PyObject_GetBuffer(obj, &buf->view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) return -1;
    buf->held = 1;
    *elem = buf->view.itemsize == BF16 ? BF16 : F32;
    if (!elem_ok(&buf->view, *elem)) {
        PyErr_SetString(PyExc_ValueError, "input: expected float32 or bfloat16 items");
        PyBuffer_Release(&buf->view);
        buf->held = 0;
        return -1;
    }
    return buf->view.len / *elem;
}

static void release(Buf *bufs, int n) {
    for (int i = 0; i < n; i++)
        if (bufs[i].held) PyBuffer_Release(&bufs[i].view);
}

/* ReCU's input: `count` float32 or bfloat16 items (batch x per-sample); 0, or -1 with the
 * buffer released on error. */
static int get_samples(PyObject *obj, Buf *buf, int *elem, int64_t count) {
    int64_t got = get_input(obj, buf, elem);
    if (got == count) return 0;
    if (got >= 0) {
        PyErr_Format(PyExc_ValueError, "recu input: expected %lld items, got %lld",
                     (long long)count, (long long)got);
        release(buf, 1);
    }
    return -1;
}

static int check_sizes(long long batch, long long n, int threads) {
    if (batch < 0 || n < 0 || (n > 0 && batch > INT64_MAX / n)) {
        PyErr_SetString(PyExc_ValueError, "sizes must be non-negative");
        return -1;
    }
    if (threads < 1 || threads > 4096) {
        PyErr_Format(PyExc_ValueError, "threads must be in [1, 4096], got %d", threads);
        return -1;
    }
    return 0;
}

/* sign(x, out, threads) */
static PyObject *py_sign(PyObject *self, PyObject *args) {
    PyObject *x, *out;
    int threads, elem;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOi", &x, &out, &threads)) return NULL;
    Buf bufs[2];
    memset(bufs, 0, sizeof(bufs));
    int64_t count = get_input(x, &bufs[0], &elem);
    if (count < 0) return NULL;
    if (check_sizes(1, count, threads) < 0 ||
        get_buf(out, &bufs[1], "sign out", count, elem, 1) < 0) {
        release(bufs, 2);
        return NULL;
    }
    void *px = bufs[0].view.buf, *po = bufs[1].view.buf;
    Py_BEGIN_ALLOW_THREADS
    if (elem == F32)
        sign_f32(px, po, count, threads);
    else
        sign_bf16(px, po, count, threads);
    Py_END_ALLOW_THREADS
    release(bufs, 2);
    Py_RETURN_NONE;
}

/* clip_backward / approx_backward(x, g, dx, threads) */
static PyObject *surrogate(PyObject *args, int approx) {
    PyObject *x, *g, *dx;
    int threads, elem;
    if (!PyArg_ParseTuple(args, "OOOi", &x, &g, &dx, &threads)) return NULL;
    Buf bufs[3];
    memset(bufs, 0, sizeof(bufs));
    int64_t count = get_input(x, &bufs[0], &elem);
    if (count < 0) return NULL;
    if (check_sizes(1, count, threads) < 0 ||
        get_buf(g, &bufs[1], "gradient", count, elem, 0) < 0 ||
        get_buf(dx, &bufs[2], "input gradient", count, elem, 1) < 0) {
        release(bufs, 3);
        return NULL;
    }
    void *px = bufs[0].view.buf, *pg = bufs[1].view.buf, *pd = bufs[2].view.buf;
    Py_BEGIN_ALLOW_THREADS
    if (elem == F32 && approx)
        approx_backward_f32(px, pg, pd, count, threads);
    else if (elem == F32)
        clip_backward_f32(px, pg, pd, count, threads);
    else if (approx)
        approx_backward_bf16(px, pg, pd, count, threads);
    else
        clip_backward_bf16(px, pg, pd, count, threads);
    Py_END_ALLOW_THREADS
    release(bufs, 3);
    Py_RETURN_NONE;
}

static PyObject *py_clip_backward(PyObject *self, PyObject *args) {
    (void)self;
    return surrogate(args, 0);
}

static PyObject *py_approx_backward(PyObject *self, PyObject *args) {
    (void)self;
    return surrogate(args, 1);
}

/* recu_forward(x, out, mean, std, (batch, n), threads) */
static PyObject *py_recu_forward(PyObject *self, PyObject *args) {
    PyObject *x, *out, *mean, *std;
    long long batch, n;
    int threads, elem;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOO(LL)i", &x, &out, &mean, &std, &batch, &n, &threads))
        return NULL;
    if (check_sizes(batch, n, threads) < 0) return NULL;
    Buf bufs[4];
    memset(bufs, 0, sizeof(bufs));
    if (get_samples(x, &bufs[0], &elem, batch * n) < 0) return NULL;
    if (get_buf(out, &bufs[1], "recu out", batch * n, elem, 1) < 0 ||
        get_buf(mean, &bufs[2], "recu mean", batch, F32, 1) < 0 ||
        get_buf(std, &bufs[3], "recu std", batch, F32, 1) < 0) {
        release(bufs, 4);
        return NULL;
    }
    void *px = bufs[0].view.buf, *po = bufs[1].view.buf;
    float *pm = bufs[2].view.buf, *ps = bufs[3].view.buf;
    Py_BEGIN_ALLOW_THREADS
    if (elem == F32)
        recu_forward_f32(px, po, pm, ps, batch, n, threads);
    else
        recu_forward_bf16(px, po, pm, ps, batch, n, threads);
    Py_END_ALLOW_THREADS
    release(bufs, 4);
    Py_RETURN_NONE;
}

/* recu_backward(x, g, mean, std, dx, (batch, n), threads) */
static PyObject *py_recu_backward(PyObject *self, PyObject *args) {
    PyObject *x, *g, *mean, *std, *dx;
    long long batch, n;
    int threads, elem;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOO(LL)i", &x, &g, &mean, &std, &dx, &batch, &n, &threads))
        return NULL;
    if (check_sizes(batch, n, threads) < 0) return NULL;
    Buf bufs[5];
    memset(bufs, 0, sizeof(bufs));
    if (get_samples(x, &bufs[0], &elem, batch * n) < 0) return NULL;
    if (get_buf(g, &bufs[1], "gradient", batch * n, elem, 0) < 0 ||
        get_buf(mean, &bufs[2], "recu mean", batch, F32, 0) < 0 ||
        get_buf(std, &bufs[3], "recu std", batch, F32, 0) < 0 ||
        get_buf(dx, &bufs[4], "input gradient", batch * n, elem, 1) < 0) {
        release(bufs, 5);
        return NULL;
    }
    /* float32 writes h into dx itself; bfloat16 keeps it in float32 scratch */
    float *scratch = NULL;
    if (elem == BF16 && batch * n > 0) {
        scratch = PyMem_RawMalloc((size_t)(batch * n) * sizeof(float));
        if (!scratch) {
            release(bufs, 5);
            return PyErr_NoMemory();
        }
    }
    void *px = bufs[0].view.buf, *pg = bufs[1].view.buf, *pd = bufs[4].view.buf;
    const float *pm = bufs[2].view.buf, *ps = bufs[3].view.buf;
    Py_BEGIN_ALLOW_THREADS
    if (elem == F32)
        recu_backward_f32(px, pg, pm, ps, pd, pd, batch, n, threads);
    else
        recu_backward_bf16(px, pg, pm, ps, pd, scratch, batch, n, threads);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(scratch);
    release(bufs, 5);
    Py_RETURN_NONE;
}

/* The float32 input of RPReLU and its sizes ((batch, channels, spatial), threads); 0, or -1
 * with the buffer released on error. */
static int get_rprelu_input(PyObject *x, Buf *buf, long long batch, long long channels,
                            long long spatial, int threads) {
    buf->held = 0;
    if (check_sizes(batch, channels, threads) < 0 || check_sizes(batch * channels, spatial, 1) < 0)
        return -1;
    return get_buf(x, buf, "rprelu input", batch * channels * spatial, F32, 0);
}

/* rprelu_forward(x, y, b1, a, b2, (batch, channels, spatial), channels_last, threads) */
static PyObject *py_rprelu_forward(PyObject *self, PyObject *args) {
    PyObject *x, *y, *b1, *a, *b2;
    long long batch, channels, spatial;
    int channels_last, threads;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOO(LLL)pi", &x, &y, &b1, &a, &b2, &batch, &channels,
                          &spatial, &channels_last, &threads))
        return NULL;
    Buf bufs[5];
    memset(bufs, 0, sizeof(bufs));
    if (get_rprelu_input(x, &bufs[0], batch, channels, spatial, threads) < 0 ||
        get_buf(y, &bufs[1], "rprelu out", batch * channels * spatial, F32, 1) < 0 ||
        get_buf(b1, &bufs[2], "rprelu b1", channels, F32, 0) < 0 ||
        get_buf(a, &bufs[3], "rprelu slope", channels, F32, 0) < 0 ||
        get_buf(b2, &bufs[4], "rprelu b2", channels, F32, 0) < 0) {
        release(bufs, 5);
        return NULL;
    }
    const float *px = bufs[0].view.buf, *p1 = bufs[2].view.buf, *pa = bufs[3].view.buf,
                *p2 = bufs[4].view.buf;
    float *py = bufs[1].view.buf;
    Py_BEGIN_ALLOW_THREADS
    rprelu_forward_f32(px, py, p1, pa, p2, batch, channels, spatial, channels_last, threads);
    Py_END_ALLOW_THREADS
    release(bufs, 5);
    Py_RETURN_NONE;
}

/* rprelu_backward(x, g, b1, a, dx, sums, (batch, channels, spatial), channels_last, threads) */
static PyObject *py_rprelu_backward(PyObject *self, PyObject *args) {
    PyObject *x, *g, *b1, *a, *dx, *sums;
    long long batch, channels, spatial;
    int channels_last, threads;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOOO(LLL)pi", &x, &g, &b1, &a, &dx, &sums, &batch, &channels,
                          &spatial, &channels_last, &threads))
        return NULL;
    int64_t count = batch * channels * spatial;
    Buf bufs[6];
    memset(bufs, 0, sizeof(bufs));
    if (get_rprelu_input(x, &bufs[0], batch, channels, spatial, threads) < 0 ||
        get_buf(g, &bufs[1], "gradient", count, F32, 0) < 0 ||
        get_buf(b1, &bufs[2], "rprelu b1", channels, F32, 0) < 0 ||
        get_buf(a, &bufs[3], "rprelu slope", channels, F32, 0) < 0 ||
        get_buf(dx, &bufs[4], "input gradient", count, F32, 1) < 0 ||
        get_buf(sums, &bufs[5], "rprelu sums", 3 * channels, F64, 1) < 0) {
        release(bufs, 6);
        return NULL;
    }
    double *scratch = NULL;
    if (channels_last && channels > 0) {
        scratch = PyMem_RawMalloc((size_t)threads * 3 * (size_t)channels *
                                  (sizeof(double) + sizeof(float)));
        if (!scratch) {
            release(bufs, 6);
            return PyErr_NoMemory();
        }
    }
    const float *px = bufs[0].view.buf, *pg = bufs[1].view.buf, *p1 = bufs[2].view.buf,
                *pa = bufs[3].view.buf;
    float *pd = bufs[4].view.buf;
    double *ps = bufs[5].view.buf;
    Py_BEGIN_ALLOW_THREADS
    rprelu_backward_f32(px, pg, p1, pa, pd, ps, scratch, batch, channels, spatial, channels_last,
                        threads);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(scratch);
    release(bufs, 6);
    Py_RETURN_NONE;
}

/* avgpool2_forward(x, y, (planes, h, w), threads) and avgpool2_backward(g, dx, (planes, h, w),
 * threads): x and dx hold planes x h x w float32 items, y and g planes x h/2 x w/2. */
static PyObject *avgpool2(PyObject *args, int backward) {
    PyObject *src, *dst;
    long long planes, h, w;
    int threads;
    if (!PyArg_ParseTuple(args, "OO(LLL)i", &src, &dst, &planes, &h, &w, &threads)) return NULL;
    if (check_sizes(planes, h, threads) < 0 || check_sizes(planes * h, w, 1) < 0) return NULL;
    int64_t full = planes * h * w, half = planes * (h / 2) * (w / 2);
    Buf bufs[2];
    memset(bufs, 0, sizeof(bufs));
    if (get_buf(src, &bufs[0], backward ? "gradient" : "pool input", backward ? half : full, F32,
                0) < 0 ||
        get_buf(dst, &bufs[1], backward ? "input gradient" : "pool out", backward ? full : half,
                F32, 1) < 0) {
        release(bufs, 2);
        return NULL;
    }
    const float *ps = bufs[0].view.buf;
    float *pd = bufs[1].view.buf;
    Py_BEGIN_ALLOW_THREADS
    if (backward)
        avgpool2_backward_f32(ps, pd, planes, h, w, threads);
    else
        avgpool2_forward_f32(ps, pd, planes, h, w, threads);
    Py_END_ALLOW_THREADS
    release(bufs, 2);
    Py_RETURN_NONE;
}

static PyObject *py_avgpool2_forward(PyObject *self, PyObject *args) {
    (void)self;
    return avgpool2(args, 0);
}

static PyObject *py_avgpool2_backward(PyObject *self, PyObject *args) {
    (void)self;
    return avgpool2(args, 1);
}

/* bf16_accumulate(part, out, scale, (batch, channels, spatial), channels_last, accumulate,
 * threads): scale is float32 of `channels` items, or None for no scale. */
static PyObject *py_bf16_accumulate(PyObject *self, PyObject *args) {
    PyObject *part, *out, *scale;
    long long batch, channels, spatial;
    int channels_last, accumulate, threads;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOO(LLL)ppi", &part, &out, &scale, &batch, &channels, &spatial,
                          &channels_last, &accumulate, &threads))
        return NULL;
    if (check_sizes(batch, channels, threads) < 0 || check_sizes(batch * channels, spatial, 1) < 0)
        return NULL;
    int64_t count = batch * channels * spatial;
    Buf bufs[3];
    memset(bufs, 0, sizeof(bufs));
    if (get_buf(part, &bufs[0], "partial sums", count, BF16, 0) < 0 ||
        get_buf(out, &bufs[1], "convolution out", count, F32, 1) < 0 ||
        (scale != Py_None && get_buf(scale, &bufs[2], "scale", channels, F32, 0) < 0)) {
        release(bufs, 3);
        return NULL;
    }
    const uint16_t *pp = bufs[0].view.buf;
    float *po = bufs[1].view.buf;
    const float *ps = scale != Py_None ? bufs[2].view.buf : NULL;
    Py_BEGIN_ALLOW_THREADS
    bf16_accumulate_f32(pp, po, ps, batch, channels, spatial, channels_last, accumulate, threads);
    Py_END_ALLOW_THREADS
    release(bufs, 3);
    Py_RETURN_NONE;
}

/* The per-channel float32 vectors of a BatchNorm pass (`names` of `n`), into p's fields in
 * order: k, scale, shift, b1, a, b2. 0, or -1 with an error set. */
static int get_bn_vectors(PyObject **objs, const char **names, const float **dst[], int n,
                          Buf *bufs, int64_t channels) {
    for (int i = 0; i < n; i++) {
        if (get_buf(objs[i], &bufs[i], names[i], channels, F32, 0) < 0) return -1;
        *dst[i] = bufs[i].view.buf;
    }
    return 0;
}

/* The sizes and tensors of a BatchNorm pass: x (count items), the optional shortcut s and
 * gradient g (None: absent), the written out. */
static int get_bn_tensors(BnPass *p, PyObject *x, PyObject *s, PyObject *g, PyObject *out,
                          long long batch, long long channels, long long spatial, int threads,
                          Buf *bufs) {
    if (check_sizes(batch, channels, threads) < 0 || check_sizes(batch * channels, spatial, 1) < 0)
        return -1;
    int64_t count = batch * channels * spatial;
    p->batch = batch;
    p->channels = channels;
    p->spatial = spatial;
    if (get_buf(x, &bufs[0], "batchnorm input", count, F32, 0) < 0) return -1;
    p->x = bufs[0].view.buf;
    p->s = p->g = NULL;
    p->out = NULL;
    if (s != Py_None) {
        if (get_buf(s, &bufs[1], "shortcut", count, F32, 0) < 0) return -1;
        p->s = bufs[1].view.buf;
    }
    if (g != Py_None) {
        if (get_buf(g, &bufs[2], "gradient", count, F32, 0) < 0) return -1;
        p->g = bufs[2].view.buf;
    }
    if (out != Py_None) {
        if (get_buf(out, &bufs[3], "batchnorm out", count, F32, 1) < 0) return -1;
        p->out = bufs[3].view.buf;
    }
    return 0;
}

/* bn_stats(x, k, sums, (batch, channels, spatial), channels_last, threads): sums float64 of
 * 2 x channels. bn_act_backward(x, s, g, dz, m, scale, shift, b1, a, b2, lo, hi, sums, sizes,
 * channels_last, threads): sums float64 of 4 x channels. */
static PyObject *bn_sums(PyObject *args, int backward) {
    PyObject *x, *s = Py_None, *g = Py_None, *dz = Py_None, *sums, *vec[6];
    long long batch, channels, spatial;
    int channels_last, threads, ok;
    float lo = 0.0f, hi = 0.0f;
    if (backward)
        ok = PyArg_ParseTuple(args, "OOOOOOOOOOffO(LLL)pi", &x, &s, &g, &dz, &vec[0], &vec[1],
                              &vec[2], &vec[3], &vec[4], &vec[5], &lo, &hi, &sums, &batch,
                              &channels, &spatial, &channels_last, &threads);
    else
        ok = PyArg_ParseTuple(args, "OOO(LLL)pi", &x, &vec[0], &sums, &batch, &channels, &spatial,
                              &channels_last, &threads);
    if (!ok) return NULL;
    BnPass p;
    memset(&p, 0, sizeof(p));
    p.lo = lo;
    p.hi = hi;
    Buf bufs[11];
    memset(bufs, 0, sizeof(bufs));
    static const char *names[6] = {"mean", "scale", "shift", "b1", "slope", "b2"};
    const float **dst[6] = {&p.k, &p.scale, &p.shift, &p.b1, &p.a, &p.b2};
    int nsums = backward ? 4 : 2;
    if (get_bn_tensors(&p, x, s, g, dz, batch, channels, spatial, threads, bufs) < 0 ||
        (backward && (p.g == NULL || p.out == NULL)) ||
        get_bn_vectors(vec, names, dst, backward ? 6 : 1, bufs + 4, channels) < 0 ||
        get_buf(sums, &bufs[10], "batchnorm sums", nsums * channels, F64, 1) < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "bn_act_backward: g and dz");
        release(bufs, 11);
        return NULL;
    }
    double *scratch = NULL;
    if (channels_last && channels > 0) {
        scratch = PyMem_RawMalloc((size_t)threads * nsums * (size_t)channels *
                                  (sizeof(double) + sizeof(float)));
        if (!scratch) {
            release(bufs, 11);
            return PyErr_NoMemory();
        }
    }
    double *ps = bufs[10].view.buf;
    Py_BEGIN_ALLOW_THREADS
    bn_sums_f32(&p, backward, ps, scratch, channels_last, threads);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(scratch);
    release(bufs, 11);
    Py_RETURN_NONE;
}

static PyObject *py_bn_stats(PyObject *self, PyObject *args) {
    (void)self;
    return bn_sums(args, 0);
}

static PyObject *py_bn_act_backward(PyObject *self, PyObject *args) {
    (void)self;
    return bn_sums(args, 1);
}

/* bn_act_forward(x, s, y, scale, shift, b1, a, b2, lo, hi, sizes, channels_last, threads) and
 * bn_input_backward(x, dz, dx, m, A, B, C, sizes, channels_last, threads). */
static PyObject *bn_elementwise(PyObject *args, int backward) {
    PyObject *x, *s = Py_None, *g = Py_None, *out, *vec[6];
    long long batch, channels, spatial;
    int channels_last, threads, ok;
    BnPass p;
    memset(&p, 0, sizeof(p));
    if (backward)
        ok = PyArg_ParseTuple(args, "OOOOOOO(LLL)pi", &x, &g, &out, &vec[0], &vec[1], &vec[2],
                              &vec[3], &batch, &channels, &spatial, &channels_last, &threads);
    else
        ok = PyArg_ParseTuple(args, "OOOOOOOOff(LLL)pi", &x, &s, &out, &vec[0], &vec[1], &vec[2],
                              &vec[3], &vec[4], &p.lo, &p.hi, &batch, &channels, &spatial,
                              &channels_last, &threads);
    if (!ok) return NULL;
    Buf bufs[9];
    memset(bufs, 0, sizeof(bufs));
    static const char *f_names[5] = {"scale", "shift", "b1", "slope", "b2"};
    static const char *b_names[4] = {"mean", "A", "B", "C"};
    const float **f_dst[5] = {&p.scale, &p.shift, &p.b1, &p.a, &p.b2};
    const float **b_dst[4] = {&p.k, &p.scale, &p.shift, &p.b2};
    if (get_bn_tensors(&p, x, s, g, out, batch, channels, spatial, threads, bufs) < 0 ||
        (backward && p.g == NULL) || p.out == NULL ||
        get_bn_vectors(vec, backward ? b_names : f_names, backward ? b_dst : f_dst,
                       backward ? 4 : 5, bufs + 4, channels) < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "batchnorm: a tensor is None");
        release(bufs, 9);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    if (backward)
        bn_input_backward_f32(&p, channels_last, threads);
    else
        bn_act_forward_f32(&p, channels_last, threads);
    Py_END_ALLOW_THREADS
    release(bufs, 9);
    Py_RETURN_NONE;
}

static PyObject *py_bn_act_forward(PyObject *self, PyObject *args) {
    (void)self;
    return bn_elementwise(args, 0);
}

static PyObject *py_bn_input_backward(PyObject *self, PyObject *args) {
    (void)self;
    return bn_elementwise(args, 1);
}

static PyMethodDef METHODS[] = {
    {"sign", py_sign, METH_VARARGS, "sign(x, out, threads): out = x >= 0 ? 1 : -1."},
    {"clip_backward", py_clip_backward, METH_VARARGS,
     "clip_backward(x, g, dx, threads): dx = g * 1{|x| <= 1}."},
    {"approx_backward", py_approx_backward, METH_VARARGS,
     "approx_backward(x, g, dx, threads): dx = g * max(0, 2 - 2|x|)."},
    {"recu_forward", py_recu_forward, METH_VARARGS,
     "recu_forward(x, out, mean, std, (batch, n), threads): per-sample mean and "
     "sqrt(unbiased var + 1e-5), out = sign(x)."},
    {"recu_backward", py_recu_backward, METH_VARARGS,
     "recu_backward(x, g, mean, std, dx, (batch, n), threads): ReCU's approx-sign gradient "
     "through the per-sample standardisation."},
    {"rprelu_forward", py_rprelu_forward, METH_VARARGS,
     "rprelu_forward(x, y, b1, a, b2, (batch, channels, spatial), channels_last, threads): "
     "y = PReLU_a(x + b1) + b2 per channel, float32."},
    {"rprelu_backward", py_rprelu_backward, METH_VARARGS,
     "rprelu_backward(x, g, b1, a, dx, sums, (batch, channels, spatial), channels_last, "
     "threads): dx and the float64 per-channel sums (d b1, d a, d b2)."},
    {"avgpool2_forward", py_avgpool2_forward, METH_VARARGS,
     "avgpool2_forward(x, y, (planes, h, w), threads): 2x2 stride-2 average pool, NCHW float32."},
    {"avgpool2_backward", py_avgpool2_backward, METH_VARARGS,
     "avgpool2_backward(g, dx, (planes, h, w), threads): its input gradient."},
    {"bf16_accumulate", py_bf16_accumulate, METH_VARARGS,
     "bf16_accumulate(part, out, scale, (batch, channels, spatial), channels_last, accumulate, "
     "threads): out = ((accumulate ? out : 0) + part) * scale_c, part bfloat16."},
    {"bn_stats", py_bn_stats, METH_VARARGS,
     "bn_stats(x, k, sums, (batch, channels, spatial), channels_last, threads): per channel "
     "sum (x - k) and sum (x - k)^2, float64."},
    {"bn_act_forward", py_bn_act_forward, METH_VARARGS,
     "bn_act_forward(x, s, y, scale, shift, b1, a, b2, lo, hi, sizes, channels_last, threads): "
     "y = act(x scale + shift + s) per channel."},
    {"bn_act_backward", py_bn_act_backward, METH_VARARGS,
     "bn_act_backward(x, s, g, dz, m, scale, shift, b1, a, b2, lo, hi, sums, sizes, "
     "channels_last, threads): dz and the float64 sums (dz, dz (x - m), d a, d b2)."},
    {"bn_input_backward", py_bn_input_backward, METH_VARARGS,
     "bn_input_backward(x, dz, dx, m, A, B, C, sizes, channels_last, threads): "
     "dx = dz A + (x - m) B + C per channel."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_fused",
                                    "fused CPU passes of training: binarizers, RPReLU, 2x2 average pool, exact binary "
                                    "convolution, BatchNorm + shortcut + activation (binarize.c).",
                                    -1, METHODS, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__fused(void) { return PyModule_Create(&MODULE); }
