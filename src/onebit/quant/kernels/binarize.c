/* Fused CPU passes of the training binarizers (onebit.quant.fused), float32.
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

VECTORISED static void sign_run(const float *x, float *out, int64_t count, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < count; i++) out[i] = x[i] >= 0.0f ? 1.0f : -1.0f;
}

VECTORISED static void clip_backward_run(const float *x, const float *g, float *dx, int64_t count,
                              int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < count; i++) dx[i] = fabsf(x[i]) <= 1.0f ? g[i] : 0.0f;
}

VECTORISED static void approx_backward_run(const float *x, const float *g, float *dx, int64_t count,
                                int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < count; i++) {
        float t = 2.0f - 2.0f * fabsf(x[i]);
        dx[i] = g[i] * (t > 0.0f ? t : 0.0f);
    }
}

VECTORISED static void recu_forward_run(const float *x, float *out, float *mean, float *std, int64_t batch,
                             int64_t n, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = 0; b < batch; b++) {
        const float *xb = x + b * n;
        float *ob = out + b * n;
        double sum = 0.0, squares = 0.0;
#pragma omp simd reduction(+ : sum, squares)
        for (int64_t i = 0; i < n; i++) {
            float v = xb[i];
            sum += v;
            squares += (double)v * v;
            ob[i] = v >= 0.0f ? 1.0f : -1.0f;
        }
        double m = sum / (double)n;
        double var = n > 1 ? (squares - sum * m) / (double)(n - 1) : 0.0;
        mean[b] = (float)m;
        std[b] = (float)sqrt((var > 0.0 ? var : 0.0) + 1e-5);
    }
}

VECTORISED static void recu_backward_run(const float *x, const float *g, const float *mean,
                              const float *std, float *dx, int64_t batch, int64_t n,
                              int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = 0; b < batch; b++) {
        const float *xb = x + b * n, *gb = g + b * n;
        float *db = dx + b * n;
        float inv = 1.0f / std[b], slope = 2.0f * inv;
        double dot = 0.0;
#pragma omp simd reduction(+ : dot)
        for (int64_t i = 0; i < n; i++) {
            float t = 2.0f - slope * fabsf(xb[i]);
            float h = gb[i] * (t > 0.0f ? t : 0.0f);
            db[i] = h;
            dot += (double)h * xb[i];
        }
        double s = std[b];
        float c = n > 1 ? (float)(dot / ((double)(n - 1) * s * s * s)) : 0.0f;
        float m = mean[b];
        for (int64_t i = 0; i < n; i++) db[i] = db[i] * inv - c * (xb[i] - m);
    }
}

/* ------------------------------------------------------------------------------ Python glue */

typedef struct {
    Py_buffer view;
    int held;
} Buf;

/* A C-contiguous float32 buffer of exactly `count` items. */
static int get_buf(PyObject *obj, Buf *buf, const char *name, int64_t count, int writable) {
    buf->held = 0;
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, &buf->view, flags) != 0) return -1;
    buf->held = 1;
    if (buf->view.itemsize != 4 || (buf->view.format && strcmp(buf->view.format, "f") != 0) ||
        count < 0 || buf->view.len != (Py_ssize_t)count * 4) {
        PyErr_Format(PyExc_ValueError, "%s: expected %lld float32 items, got %zd bytes", name,
                     (long long)count, buf->view.len);
        return -1;
    }
    return 0;
}

/* Any C-contiguous float32 buffer; returns its item count, -1 on error. */
static int64_t get_input(PyObject *obj, Buf *buf) {
    buf->held = 0;
    if (PyObject_GetBuffer(obj, &buf->view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) return -1;
    buf->held = 1;
    if (buf->view.itemsize != 4 || (buf->view.format && strcmp(buf->view.format, "f") != 0)) {
        PyErr_SetString(PyExc_ValueError, "input: expected float32 items");
        PyBuffer_Release(&buf->view);
        buf->held = 0;
        return -1;
    }
    return buf->view.len / 4;
}

static void release(Buf *bufs, int n) {
    for (int i = 0; i < n; i++)
        if (bufs[i].held) PyBuffer_Release(&bufs[i].view);
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
    int threads;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOi", &x, &out, &threads)) return NULL;
    Buf bufs[2];
    memset(bufs, 0, sizeof(bufs));
    int64_t count = get_input(x, &bufs[0]);
    if (count < 0) return NULL;
    if (check_sizes(1, count, threads) < 0 || get_buf(out, &bufs[1], "sign out", count, 1) < 0) {
        release(bufs, 2);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    sign_run(bufs[0].view.buf, bufs[1].view.buf, count, threads);
    Py_END_ALLOW_THREADS
    release(bufs, 2);
    Py_RETURN_NONE;
}

/* clip_backward / approx_backward(x, g, dx, threads) */
static PyObject *surrogate(PyObject *args, int approx) {
    PyObject *x, *g, *dx;
    int threads;
    if (!PyArg_ParseTuple(args, "OOOi", &x, &g, &dx, &threads)) return NULL;
    Buf bufs[3];
    memset(bufs, 0, sizeof(bufs));
    int64_t count = get_input(x, &bufs[0]);
    if (count < 0) return NULL;
    if (check_sizes(1, count, threads) < 0 || get_buf(g, &bufs[1], "gradient", count, 0) < 0 ||
        get_buf(dx, &bufs[2], "input gradient", count, 1) < 0) {
        release(bufs, 3);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    if (approx)
        approx_backward_run(bufs[0].view.buf, bufs[1].view.buf, bufs[2].view.buf, count, threads);
    else
        clip_backward_run(bufs[0].view.buf, bufs[1].view.buf, bufs[2].view.buf, count, threads);
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
    int threads;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOO(LL)i", &x, &out, &mean, &std, &batch, &n, &threads))
        return NULL;
    if (check_sizes(batch, n, threads) < 0) return NULL;
    Buf bufs[4];
    memset(bufs, 0, sizeof(bufs));
    if (get_buf(x, &bufs[0], "recu input", batch * n, 0) < 0 ||
        get_buf(out, &bufs[1], "recu out", batch * n, 1) < 0 ||
        get_buf(mean, &bufs[2], "recu mean", batch, 1) < 0 ||
        get_buf(std, &bufs[3], "recu std", batch, 1) < 0) {
        release(bufs, 4);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    recu_forward_run(bufs[0].view.buf, bufs[1].view.buf, bufs[2].view.buf, bufs[3].view.buf,
                     batch, n, threads);
    Py_END_ALLOW_THREADS
    release(bufs, 4);
    Py_RETURN_NONE;
}

/* recu_backward(x, g, mean, std, dx, (batch, n), threads) */
static PyObject *py_recu_backward(PyObject *self, PyObject *args) {
    PyObject *x, *g, *mean, *std, *dx;
    long long batch, n;
    int threads;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOO(LL)i", &x, &g, &mean, &std, &dx, &batch, &n, &threads))
        return NULL;
    if (check_sizes(batch, n, threads) < 0) return NULL;
    Buf bufs[5];
    memset(bufs, 0, sizeof(bufs));
    if (get_buf(x, &bufs[0], "recu input", batch * n, 0) < 0 ||
        get_buf(g, &bufs[1], "gradient", batch * n, 0) < 0 ||
        get_buf(mean, &bufs[2], "recu mean", batch, 0) < 0 ||
        get_buf(std, &bufs[3], "recu std", batch, 0) < 0 ||
        get_buf(dx, &bufs[4], "input gradient", batch * n, 1) < 0) {
        release(bufs, 5);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    recu_backward_run(bufs[0].view.buf, bufs[1].view.buf, bufs[2].view.buf, bufs[3].view.buf,
                      bufs[4].view.buf, batch, n, threads);
    Py_END_ALLOW_THREADS
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
