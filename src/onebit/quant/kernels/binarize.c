/* Fused CPU passes of the training binarizers (onebit.quant.fused), float32 and bfloat16.
 *
 * PyTorch computes a binarizer's forward and surrogate backward as a chain of elementwise
 * operators, each one a pass over the activation; ReCU's per-sample standardisation adds a
 * Welford variance and the backward of a division. Here each binarizer is one pass forward
 * (two for ReCU: statistics, then sign) and one or two passes backward. Arrays are flat
 * buffers in the tensor's memory order: elementwise work does not care about the layout, and
 * ReCU's per-sample work needs only that each sample is a contiguous block (NCHW or NHWC).
 *
 *   sign(x)                 out = x >= 0 ? +1 : -1          (sign(0) = sign(-0) = +1)
 *   clip_backward           dx = g * 1{|x| <= 1}
 *   approx_backward         dx = g * max(0, 2 - 2|x|)
 *   recu_forward            per sample b: mean_b, s_b = sqrt(var_b + 1e-5) (unbiased); out = sign(x)
 *   recu_backward           h = g * max(0, 2 - 2|x| / s); dx = h / s - (x - mean) / ((n-1) s^3) * sum(h x)
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
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

/* ------------------------------------------------------------------------------ Python glue */

typedef struct {
    Py_buffer view;
    int held;
} Buf;

/* Element types of the activations and gradients: float32 (format "f"), or bfloat16 passed
 * as its 16 bits (an int16/uint16 view, format "h"/"H"). Statistics are always float32. */
enum { F32 = 4, BF16 = 2 };

static int elem_ok(const Py_buffer *v, int elem) {
    if (v->itemsize != elem) return 0;
    if (!v->format) return 1;
    if (elem == F32) return strcmp(v->format, "f") == 0;
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
                     (long long)count, elem == F32 ? "float32" : "bfloat16", buf->view.len);
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
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_fused",
                                    "fused CPU passes of the training binarizers (binarize.c).",
                                    -1, METHODS, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__fused(void) { return PyModule_Create(&MODULE); }
