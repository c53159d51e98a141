/* Per-node profiling: with ONEBIT_PROFILE set (and not "0") when a model is loaded, run.c
 * times every node and onebit_free prints to stderr, per op type and per node, the mean time
 * per image over all the model's runs and the least time per image of one chunk (on a busy
 * machine the best is the repeatable figure). ONEBIT_PROFILE=2 lists every node, else the
 * 25 slowest. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model.h"

double ob_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static const onebit_model *sort_model; /* qsort has no context argument */

static int by_time(const void *a, const void *b) {
    const double ta = sort_model->prof_min[*(const int *)a];
    const double tb = sort_model->prof_min[*(const int *)b];
    return ta < tb ? 1 : ta > tb ? -1 : 0;
}

void ob_profile_report(const onebit_model *m) {
    if (m == NULL || !m->profile || m->prof_ns == NULL || m->prof_images == 0) return;
    const double per = 1e6 * (double)m->prof_images; /* ns -> ms per image */
    double total = 0, total_min = 0, op_ns[OP_COUNT] = {0}, op_min[OP_COUNT] = {0};
    int op_nodes[OP_COUNT] = {0};
    for (int k = 0; k < m->n_nodes; k++) {
        const int op = m->nodes[m->nodes[k].exec].op; /* a fused node counts as its conv */
        if (!m->nodes[k].run) continue;
        total += m->prof_ns[k];
        total_min += m->prof_min[k];
        op_ns[op] += m->prof_ns[k];
        op_min[op] += m->prof_min[k];
        op_nodes[op]++;
    }
    fprintf(stderr,
            "onebit profile: %ld runs, %ld images (chunks of up to %ld), ms per image: mean %.4f, "
            "sum of the nodes' best %.4f; %d element-wise nodes fused into convs\n",
            m->prof_runs, m->prof_images, m->prof_chunk, total / per, total_min / 1e6, m->fused);
    int order[OP_COUNT], n_ops = 0;
    for (int op = 1; op < OP_COUNT; op++)
        if (op_nodes[op]) order[n_ops++] = op;
    for (int i = 0; i < n_ops; i++) /* few ops: insertion sort by best time */
        for (int j = i; j > 0 && op_min[order[j]] > op_min[order[j - 1]]; j--) {
            const int t = order[j];
            order[j] = order[j - 1], order[j - 1] = t;
        }
    fprintf(stderr, "  %-16s %5s %10s %10s %6s\n", "op", "nodes", "mean ms", "best ms", "best%");
    for (int i = 0; i < n_ops; i++)
        fprintf(stderr, "  %-16s %5d %10.4f %10.4f %6.1f\n", ob_op_name(order[i]),
                op_nodes[order[i]], op_ns[order[i]] / per, op_min[order[i]] / 1e6,
                100 * op_min[order[i]] / total_min);
    int *idx = malloc(sizeof(int) * (size_t)m->n_nodes);
    if (idx == NULL) return;
    int n_run = 0;
    for (int k = 0; k < m->n_nodes; k++)
        if (m->nodes[k].run) idx[n_run++] = k;
    sort_model = m;
    qsort(idx, (size_t)n_run, sizeof(int), by_time);
    const char *env = getenv("ONEBIT_PROFILE");
    const int shown = env && strcmp(env, "2") == 0 ? n_run : n_run < 25 ? n_run : 25;
    fprintf(stderr, "  %-5s %-24s %-14s %-14s %10s %10s %6s\n", "node", "op", "in (c h w)",
            "out (c h w)", "mean ms", "best ms", "best%");
    for (int i = 0; i < shown; i++) {
        const ob_node *at = &m->nodes[idx[i]], *nd = &m->nodes[at->exec];
        const ob_shape x = ob_value_shape(m, nd->inputs[0]);
        char in[32], out[32], name[64];
        snprintf(name, sizeof name, "%s", ob_op_name(nd->op));
        for (int e = 0; e < at->ep.n; e++) {
            static const char *const kinds[] = {"?",        "affine", "add",       "relu",
                                                "hardtanh", "prelu",  "leaky_clip"};
            const int kind = at->ep.op[e].kind;
            const size_t len = strlen(name);
            snprintf(name + len, sizeof name - len, "+%s",
                     kinds[kind >= 1 && kind <= 6 ? kind : 0]);
        }
        snprintf(in, sizeof in, "%d %d %d", x.c, x.h, x.w);
        snprintf(out, sizeof out, "%d %d %d", nd->out.c, nd->out.h, nd->out.w);
        fprintf(stderr, "  %-5d %-24s %-14s %-14s %10.4f %10.4f %6.1f\n", idx[i], name, in, out,
                m->prof_ns[idx[i]] / per, m->prof_min[idx[i]] / 1e6,
                100 * m->prof_min[idx[i]] / total_min);
    }
    free(idx);
}
