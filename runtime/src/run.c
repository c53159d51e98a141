/* The interpreter: the nodes in file order over one arena planned at load (load.c: plan).
 *
 * Arena of a batch of n: [values: n * value_floats floats][scratch: the largest op's]. Value
 * k + 1 (node k's output) is at n * nodes[k].offset floats; value 0 is the caller's input. */
#if defined(__linux__) && !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE /* madvise's MADV_HUGEPAGE */
#endif
#include <stdlib.h>
#include <string.h>
#ifdef __linux__
#include <sys/mman.h>
#endif

#include "model.h"
#include "ops.h"

size_t ob_node_scratch_bytes(const onebit_model *m, const ob_node *nd, int n) {
    const ob_shape x = ob_value_shape(m, nd->inputs[0]);
    if (nd->op == OP_CONV2D) {
        const size_t floats = ob_conv2d_scratch_floats(x, nd->ia[6], &nd->win, nd->out);
        return floats > SIZE_MAX / sizeof(float) ? SIZE_MAX : floats * sizeof(float);
    }
    if (nd->op == OP_BCONV2D) {
        const size_t bytes = ob_bconv_scratch_bytes(nd->bconv, n, x.h, x.w);
        return bytes == 0 ? SIZE_MAX : bytes;
    }
    return 0;
}

static size_t values_bytes(const onebit_model *m, int n) {
    return ((size_t)n * m->value_floats * sizeof(float) + OB_ALIGN - 1) / OB_ALIGN * OB_ALIGN;
}

int ob_arena_bytes(const onebit_model *m, int n, size_t *bytes) {
    /* value_floats <= n_nodes * 2^26 < 2^40, so n * value_floats * 4 fits below 2^63 */
    if ((uint64_t)n * m->value_floats > (SIZE_MAX - OB_ALIGN) / sizeof(float) / 2) return 1;
    size_t scratch = 0;
    for (int k = 0; k < m->n_nodes; k++) {
        const size_t s = ob_node_scratch_bytes(m, &m->nodes[k], n);
        if (s > scratch) scratch = s;
    }
    const size_t values = values_bytes(m, n);
    if (scratch > SIZE_MAX - values - OB_ALIGN) return 1;
    *bytes = (values + scratch + OB_ALIGN - 1) / OB_ALIGN * OB_ALIGN;
    return 0;
}

#define HUGE_PAGE ((size_t)2 << 20)

void *ob_alloc_big(size_t bytes) {
    if (bytes < HUGE_PAGE) return aligned_alloc(OB_ALIGN, bytes);
    const size_t rounded = (bytes + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE;
    if (rounded < bytes) return NULL;
    void *p = aligned_alloc(HUGE_PAGE, rounded);
#ifdef MADV_HUGEPAGE
    if (p != NULL) madvise(p, rounded, MADV_HUGEPAGE); /* advice only: no error to report */
#endif
    return p;
}

int ob_arena_reserve(onebit_model *m, int n, int workers, char *err, size_t err_len) {
    size_t per;
    if (ob_arena_bytes(m, n, &per) || per > SIZE_MAX / (size_t)workers)
        return ob_fail(err, err_len, ONEBIT_E_NOMEM, "a batch of %d overflows the arena's size", n);
    const size_t need = per * (size_t)workers;
    if (need <= m->arena_bytes) return ONEBIT_OK;
    free(m->arena);
    m->arena_bytes = 0;
    m->arena = ob_alloc_big(need);
    if (m->arena == NULL)
        return ob_fail(err, err_len, ONEBIT_E_NOMEM,
                       "out of memory for the %zu MiB arena of a batch of %d", need >> 20, n);
    m->arena_bytes = need;
    return ONEBIT_OK;
}

static void profile_node(onebit_model *m, int k, double ns, int n) {
    m->prof_ns[k] += ns;
    if (m->prof_min[k] == 0 || ns / n < m->prof_min[k]) m->prof_min[k] = ns / n;
}

static const float *value_at(const onebit_model *m, const float *values, const float *input, int n,
                             int v) {
    return v == 0 ? input : values + (size_t)n * m->nodes[v - 1].offset;
}

/* The nodes on n images in the arena at base (values, then scratch), with threads for the ops. */
static void run_nodes(onebit_model *m, void *base, const float *input, int n, float *output,
                      int threads) {
    float *values = base;
    void *scratch = (char *)base + values_bytes(m, n);
    double t_prev = m->profile ? ob_now_ns() : 0;
    int prev = -1; /* the last node run */
    for (int k = 0; k < m->n_nodes; k++) {
        if (!m->nodes[k].run) continue;
        if (m->profile && prev >= 0) {
            const double t = ob_now_ns();
            profile_node(m, prev, t - t_prev, n);
            t_prev = t;
        }
        prev = k;
        const ob_node *nd = &m->nodes[m->nodes[k].exec]; /* the op (a fused conv) */
        const float *in[OB_MAX_INPUTS];
        ob_shape s[OB_MAX_INPUTS];
        for (int i = 0; i < nd->n_inputs; i++) {
            const int v = nd->inputs[i];
            in[i] = value_at(m, values, input, n, v);
            s[i] = ob_value_shape(m, v);
        }
        const ob_node *at = &m->nodes[k]; /* where the value goes; its fused ops */
        ob_epilogue ep = at->ep;
        for (int i = 0; i < ep.n; i++)
            if (ep.op[i].kind == OB_EP_ADD)
                ep.op[i].res = value_at(m, values, input, n, at->ep_value[i]);
        const float *x = in[0];
        const ob_shape xs = s[0], ys = nd->out;
        float *y = values + (size_t)n * at->offset;
        const size_t count = (size_t)n * xs.c * xs.h * xs.w;
        const float *t0 = nd->t[0] ? nd->t[0]->data : NULL;
        const float *t1 = nd->t[1] ? nd->t[1]->data : NULL;
        switch (nd->op) {
        case OP_CONV2D:
            ob_conv2d(x, n, xs, t0, t1, nd->ia[6], &nd->win, ys, y, scratch, m->kernel, threads,
                      &ep);
            break;
        case OP_BCONV2D:
            ob_bconv_run_ep(nd->bconv, x, n, xs.h, xs.w, y, scratch, threads, &ep);
            break;
        case OP_LINEAR:
            ob_linear(x, n, xs.c, t0, t1, ys.c, y, m->kernel, threads);
            break;
        case OP_AFFINE:
            ob_affine(x, n, xs, t0, t1, y);
            break;
        case OP_ADD:
            ob_add(x, in[1], count, y);
            break;
        case OP_MUL:
            ob_mul(x, in[1], n, xs, s[1].h * s[1].w, y);
            break;
        case OP_RELU:
            ob_relu(x, count, y);
            break;
        case OP_SIGMOID:
            ob_sigmoid(x, count, y);
            break;
        case OP_HARDTANH:
            ob_hardtanh(x, count, nd->fa[0], nd->fa[1], y);
            break;
        case OP_PRELU:
            ob_prelu(x, n, xs, t0, (int)nd->t[0]->dims[0], y);
            break;
        case OP_LEAKY_CLIP:
            ob_leaky_clip(x, count, y);
            break;
        case OP_MAXPOOL2D:
            ob_maxpool2d(x, n, xs, &nd->win, ys, y, m->kernel, threads);
            break;
        case OP_AVGPOOL2D:
            ob_avgpool2d(x, n, xs, &nd->win, nd->ia[7], ys, y, m->kernel, threads);
            break;
        case OP_GLOBAL_AVGPOOL:
            ob_global_avgpool(x, n, xs, y);
            break;
        case OP_FLATTEN:
            memcpy(y, x, sizeof(float) * count);
            break;
        case OP_CONCAT:
            ob_concat(in, s, nd->n_inputs, n, y);
            break;
        case OP_CHANNEL_SHUFFLE:
            ob_channel_shuffle(x, n, xs, nd->ia[0], y);
            break;
        case OP_SUBSAMPLE_PAD:
            ob_subsample_pad(x, n, xs, nd->ia[0], nd->ia[1], nd->ia[2], ys, y);
            break;
        case OP_RESCALE_HW:
            ob_rescale_hw(x, n, xs, t0, y);
            break;
        }
    }
    if (m->profile) {
        profile_node(m, prev, ob_now_ns() - t_prev, n);
        m->prof_images += n;
        m->prof_chunk = n > m->prof_chunk ? n : m->prof_chunk;
    }
    const ob_node *last = &m->nodes[m->n_nodes - 1];
    memcpy(output, values + (size_t)n * last->offset, sizeof(float) * (size_t)n * m->num_classes);
}

/* A batch runs in chunks whose values fit about this many bytes: every op streams its input and
 * output through the cache, and a batch of 64 whole values runs from memory (2.4x slower per
 * image than chunks of 1 to 4 on a ResNet-20 of 64 channels). With the fused ops the values of
 * a chunk should stay in L2 beside the scratch: the binary ResNet-20 (16 to 64 channels) at
 * batch 64 takes 0.147 ms an image in 2 MiB chunks (16 images), 0.134 in 512 KiB (4). */
#define CHUNK_BYTES (512u << 10)

int onebit_run(onebit_model *m, const float *input, int n, float *output, char *err,
               size_t err_len) {
    if (err != NULL && err_len > 0) err[0] = '\0';
    if (m == NULL || input == NULL || output == NULL || n < 1)
        return ob_fail(err, err_len, ONEBIT_E_ARG,
                       "onebit_run: needs a model, input and output and a batch n >= 1 (n is %d)",
                       n);
    /* With threads and a batch of several images, each thread runs its own images in its own
     * part of the arena, the ops on one thread: no barrier per op (the ops of one image split
     * over the threads only when there is one image). The profile runs serially. */
    int workers = 1;
#ifdef _OPENMP
    if (m->threads > 1 && n > 1 && !m->profile) workers = m->threads < n ? m->threads : n;
#endif
    const int share = (n + workers - 1) / workers; /* images per worker */
    const size_t fit = CHUNK_BYTES / (m->value_floats * sizeof(float)); /* value_floats >= 16 */
    const int chunk = fit < 1 ? 1 : fit < (size_t)share ? (int)fit : share;
    const int rc = ob_arena_reserve(m, chunk, workers, err, err_len);
    if (rc) return rc;
    const size_t in_floats = (size_t)m->in.c * m->in.h * m->in.w;
    m->prof_runs++;
    if (workers == 1) {
        for (int first = 0; first < n; first += chunk) {
            const int count = n - first < chunk ? n - first : chunk;
            run_nodes(m, m->arena, input + (size_t)first * in_floats, count,
                      output + (size_t)first * m->num_classes, m->threads);
        }
        return ONEBIT_OK;
    }
    size_t per = 0;
    ob_arena_bytes(m, chunk, &per); /* checked by the reserve */
    OB_OMP(omp parallel for num_threads(workers) schedule(static))
    for (int t = 0; t < workers; t++) {
        const int end = (t + 1) * share < n ? (t + 1) * share : n;
        for (int first = t * share; first < end; first += chunk) {
            const int count = end - first < chunk ? end - first : chunk;
            run_nodes(m, (char *)m->arena + (size_t)t * per, input + (size_t)first * in_floats,
                      count, output + (size_t)first * m->num_classes, 1);
        }
    }
    return ONEBIT_OK;
}
