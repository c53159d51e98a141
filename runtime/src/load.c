/* Loading a graph file: every size, offset, index and attribute is checked against the buffer
 * and the op's needs before use, the shapes of all values are inferred from the input record,
 * and the plan (where each value lives in the arena) is made once, here.
 *
 * Order: header and checksum, section bounds, input record, tensor table, data copy, nodes (op,
 * inputs, tensor slots, attributes, output shape), output shape, arena plan, binary kernels. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "ops.h"

/* ------------------------------------------------------------------------------- helpers */

int ob_fail(char *err, size_t err_len, int code, const char *fmt, ...) {
    if (err != NULL && err_len > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, err_len, fmt, ap);
        va_end(ap);
    }
    return code;
}

static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t rd64(const uint8_t *p) {
    return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32;
}

static int32_t rdi32(const uint8_t *p) {
    const uint32_t u = rd32(p);
    int32_t v;
    memcpy(&v, &u, sizeof v);
    return v;
}

static float rdf32(const uint8_t *p) {
    const uint32_t u = rd32(p);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* zlib's crc32 (reflected polynomial 0xEDB88320); the table is rebuilt per call, which costs
 * nothing next to the bytes it covers and keeps the function free of shared state. */
static uint32_t crc32(const uint8_t *p, size_t len) {
    uint32_t table[256];
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        table[i] = c;
    }
    uint32_t crc = 0xFFFFFFFFu;
    for (size_t i = 0; i < len; i++) crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
    return crc ^ 0xFFFFFFFFu;
}

/* a * b into *out; 0 if it overflows */
static int mul_u64(uint64_t a, uint64_t b, uint64_t *out) {
    if (a != 0 && b > UINT64_MAX / a) return 0;
    *out = a * b;
    return 1;
}

static const char *dtype_name(int dtype) {
    return dtype == OB_F32 ? "f32" : dtype == OB_U64 ? "u64" : dtype == OB_I32 ? "i32" : "?";
}

/* "f32 (16, 3, 3, 3)" */
static const char *describe(const ob_tensor *t, char *buf, size_t len) {
    int at = snprintf(buf, len, "%s (", dtype_name(t->dtype));
    for (int i = 0; i < t->ndim && at > 0 && (size_t)at < len; i++)
        at += snprintf(buf + at, len - at, i ? ", %lld" : "%lld", (long long)t->dims[i]);
    if (at > 0 && (size_t)at < len) snprintf(buf + at, len - at, ")");
    return buf;
}

/* ---------------------------------------------------------------------------------- ops */

typedef struct {
    const char *name;
    int min_inputs, max_inputs;
    const char *slots[OB_MAX_TENSORS]; /* a name ending in '?' may be absent */
} op_spec;

/* graph.py's OPS: the code is the index */
static const op_spec OPS[OP_COUNT] = {
    [OP_CONV2D] = {"conv2d", 1, 1, {"weight", "bias?"}},
    [OP_BCONV2D] = {"bconv2d", 1, 1, {"weight_bits", "out_scale", "out_bias", "act_bias?"}},
    [OP_LINEAR] = {"linear", 1, 1, {"weight", "bias?"}},
    [OP_AFFINE] = {"affine", 1, 1, {"scale?", "bias?"}},
    [OP_ADD] = {"add", 2, 2, {0}},
    [OP_MUL] = {"mul", 2, 2, {0}},
    [OP_RELU] = {"relu", 1, 1, {0}},
    [OP_SIGMOID] = {"sigmoid", 1, 1, {0}},
    [OP_HARDTANH] = {"hardtanh", 1, 1, {0}},
    [OP_PRELU] = {"prelu", 1, 1, {"slope"}},
    [OP_LEAKY_CLIP] = {"leaky_clip", 1, 1, {0}},
    [OP_MAXPOOL2D] = {"maxpool2d", 1, 1, {0}},
    [OP_AVGPOOL2D] = {"avgpool2d", 1, 1, {0}},
    [OP_GLOBAL_AVGPOOL] = {"global_avgpool", 1, 1, {0}},
    [OP_FLATTEN] = {"flatten", 1, 1, {0}},
    [OP_CONCAT] = {"concat", 2, 4, {0}},
    [OP_CHANNEL_SHUFFLE] = {"channel_shuffle", 1, 1, {0}},
    [OP_SUBSAMPLE_PAD] = {"subsample_pad", 1, 1, {0}},
    [OP_RESCALE_HW] = {"rescale_hw", 1, 1, {"scale"}},
};

const char *ob_op_name(int op) {
    return op > 0 && op < OP_COUNT ? OPS[op].name : "op?";
}

static int n_slots(int op) {
    int n = 0;
    while (n < OB_MAX_TENSORS && OPS[op].slots[n] != NULL) n++;
    return n;
}

/* the slot's name without its '?' */
static const char *slot_name(int op, int slot, char *buf, size_t len) {
    snprintf(buf, len, "%s", OPS[op].slots[slot]);
    buf[strcspn(buf, "?")] = '\0';
    return buf;
}

ob_shape ob_value_shape(const onebit_model *m, int v) {
    return v == 0 ? m->in : m->nodes[v - 1].out;
}

/* ------------------------------------------------------------------------- node checking */

typedef struct {
    onebit_model *m;
    int k; /* the node's index */
    ob_node *node;
    char *err;
    size_t err_len;
} check_ctx;

/* "node K (OP): ..." */
__attribute__((format(printf, 3, 4))) static int node_fail(const check_ctx *c, int code,
                                                           const char *fmt, ...) {
    char msg[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return ob_fail(c->err, c->err_len, code, "node %d (%s): %s", c->k, ob_op_name(c->node->op),
                   msg);
}

/* The tensor of slot s must be of dtype with ndim dims equal to want (a want of -1 takes any);
 * absent optional tensors pass. */
static int want_tensor(const check_ctx *c, int s, int dtype, int ndim, const int64_t *want) {
    const ob_tensor *t = c->node->t[s];
    if (t == NULL) return ONEBIT_OK;
    int ok = t->dtype == dtype && t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = want[i] < 0 || t->dims[i] == want[i];
    if (ok) return ONEBIT_OK;
    char name[32], is[96], must[96];
    int at = snprintf(must, sizeof must, "%s (", dtype_name(dtype));
    for (int i = 0; i < ndim && at > 0 && (size_t)at < sizeof must; i++) {
        if (want[i] < 0)
            at += snprintf(must + at, sizeof must - at, i ? ", any" : "any");
        else
            at += snprintf(must + at, sizeof must - at, i ? ", %lld" : "%lld", (long long)want[i]);
    }
    if (at > 0 && (size_t)at < sizeof must) snprintf(must + at, sizeof must - at, ")");
    return node_fail(c, t->dtype == dtype && t->ndim == ndim ? ONEBIT_E_SHAPE : ONEBIT_E_FORMAT,
                     "%s is %s, it must be %s", slot_name(c->node->op, s, name, sizeof name),
                     describe(t, is, sizeof is), must);
}

static int want_attr(const check_ctx *c, const char *name, int64_t v, int64_t lo, int64_t hi) {
    if (v >= lo && v <= hi) return ONEBIT_OK;
    return node_fail(c, ONEBIT_E_FORMAT, "%s is %lld, it must be in %lld..%lld", name, (long long)v,
                     (long long)lo, (long long)hi);
}

/* The output shape of a conv or pool from the attributes in node->win; E_SHAPE if the window
 * does not fit. */
static int window_out(const check_ctx *c, ob_shape x, int pool, int ceil_mode, int64_t *oh,
                      int64_t *ow) {
    const ob_window *k = &c->node->win;
    *oh = pool ? ob_pool_out(x.h, k->kh, k->sh, k->ph, ceil_mode)
               : ob_conv_out(x.h, k->kh, k->sh, k->ph, k->dh);
    *ow = pool ? ob_pool_out(x.w, k->kw, k->sw, k->pw, ceil_mode)
               : ob_conv_out(x.w, k->kw, k->sw, k->pw, k->dw);
    if (*oh >= 1 && *ow >= 1) return ONEBIT_OK;
    return node_fail(c, ONEBIT_E_SHAPE,
                     "its %dx%d window (dilation %dx%d, padding %dx%d) does not fit its %dx%d "
                     "input",
                     k->kh, k->kw, k->dh, k->dw, k->ph, k->pw, x.h, x.w);
}

/* stride_h, stride_w, pad_h, pad_w, dil_h, dil_w of conv2d and bconv2d (kh, kw already set) */
static int conv_window(const check_ctx *c) {
    static const char *const names[] = {"stride_h", "stride_w", "pad_h", "pad_w", "dil_h", "dil_w"};
    const int32_t *a = c->node->ia;
    for (int i = 0; i < 6; i++) {
        const int rc = want_attr(c, names[i], a[i], i / 2 == 1 ? 0 : 1, OB_MAX_ATTR);
        if (rc) return rc;
    }
    ob_window *k = &c->node->win;
    k->sh = a[0], k->sw = a[1], k->ph = a[2], k->pw = a[3], k->dh = a[4], k->dw = a[5];
    return ONEBIT_OK;
}

/* kh, kw, stride_h, stride_w, pad_h, pad_w, ceil_mode of the pools; PyTorch's rule that the
 * padding is at most half the window */
static int pool_window(const check_ctx *c) {
    static const char *const names[] = {"kh", "kw", "stride_h", "stride_w"};
    const int32_t *a = c->node->ia;
    int rc = 0;
    for (int i = 0; i < 4 && !rc; i++) rc = want_attr(c, names[i], a[i], 1, OB_MAX_ATTR);
    if (!rc) rc = want_attr(c, "pad_h", a[4], 0, a[0] / 2);
    if (!rc) rc = want_attr(c, "pad_w", a[5], 0, a[1] / 2);
    if (!rc) rc = want_attr(c, "ceil_mode", a[6], 0, 1);
    ob_window *k = &c->node->win;
    k->kh = a[0], k->kw = a[1], k->sh = a[2], k->sw = a[3], k->ph = a[4], k->pw = a[5];
    k->dh = k->dw = 1;
    return rc;
}

/* Bits past cin in the last word of every tap must be 0 (graph.py). */
static int check_padding_bits(const check_ctx *c, const ob_tensor *t, int cin) {
    if (cin % 64 == 0) return ONEBIT_OK;
    const uint64_t *w = (const uint64_t *)t->data, mask = ~(((uint64_t)1 << (cin % 64)) - 1);
    const int64_t taps = t->dims[0] * t->dims[1] * t->dims[2], words = t->dims[3];
    for (int64_t i = 0; i < taps; i++)
        if (w[i * words + words - 1] & mask)
            return node_fail(c, ONEBIT_E_FORMAT,
                             "weight_bits has bits set past its %d input channels (tap %lld)", cin,
                             (long long)i);
    return ONEBIT_OK;
}

/* Attributes, tensors and the output shape of node c->k, whose inputs are checked. */
static int infer(const check_ctx *c) {
    ob_node *nd = c->node;
    const ob_shape x = ob_value_shape(c->m, nd->inputs[0]);
    int64_t oc = x.c, oh = x.h, ow = x.w;
    const int32_t *a = nd->ia;
    int rc = ONEBIT_OK;
    switch (nd->op) {
    case OP_CONV2D: {
        const ob_tensor *w = nd->t[0];
        if ((rc = want_tensor(c, 0, OB_F32, 4, (const int64_t[]){-1, -1, -1, -1}))) return rc;
        if ((rc = want_attr(c, "groups", a[6], 1, OB_MAX_ATTR))) return rc;
        const int groups = a[6];
        oc = w->dims[0];
        if (x.c % groups || oc % groups)
            return node_fail(c, ONEBIT_E_SHAPE,
                             "groups %d does not divide its %d input and %lld output channels",
                             groups, x.c, (long long)oc);
        if (w->dims[1] * groups != x.c) {
            if (groups == 1)
                return node_fail(c, ONEBIT_E_SHAPE,
                                 "weight has %lld input channels, its input has %d",
                                 (long long)w->dims[1], x.c);
            return node_fail(c, ONEBIT_E_SHAPE,
                             "weight has %lld input channels per group, its input has %d in %d "
                             "groups",
                             (long long)w->dims[1], x.c, groups);
        }
        if ((rc = want_tensor(c, 1, OB_F32, 1, &oc))) return rc;
        if ((rc = want_attr(c, "kh", w->dims[2], 1, OB_MAX_ATTR))) return rc;
        if ((rc = want_attr(c, "kw", w->dims[3], 1, OB_MAX_ATTR))) return rc;
        nd->win.kh = (int)w->dims[2], nd->win.kw = (int)w->dims[3];
        if ((rc = conv_window(c)) || (rc = window_out(c, x, 0, 0, &oh, &ow))) return rc;
        break;
    }
    case OP_BCONV2D: {
        const ob_tensor *w = nd->t[0];
        if ((rc = want_tensor(c, 0, OB_U64, 4, (const int64_t[]){-1, -1, -1, -1}))) return rc;
        oc = w->dims[0];
        if (w->dims[3] != (x.c + 63) / 64)
            return node_fail(c, ONEBIT_E_SHAPE,
                             "weight_bits has %lld words per tap, its input's %d channels take %d",
                             (long long)w->dims[3], x.c, (x.c + 63) / 64);
        const int64_t cin = x.c;
        if ((rc = want_tensor(c, 1, OB_F32, 1, &oc)) || (rc = want_tensor(c, 2, OB_F32, 1, &oc)) ||
            (rc = want_tensor(c, 3, OB_F32, 1, &cin)))
            return rc;
        if ((rc = want_attr(c, "kh", w->dims[1], 1, OB_MAX_ATTR))) return rc;
        if ((rc = want_attr(c, "kw", w->dims[2], 1, OB_MAX_ATTR))) return rc;
        nd->win.kh = (int)w->dims[1], nd->win.kw = (int)w->dims[2];
        if (w->dims[1] * w->dims[2] * x.c >= (int64_t)1 << 30)
            return node_fail(c, ONEBIT_E_UNSUPPORTED, "a receptive field of %lld bits is too large",
                             (long long)(w->dims[1] * w->dims[2] * x.c));
        if ((rc = check_padding_bits(c, w, x.c))) return rc;
        if ((rc = conv_window(c)) || (rc = window_out(c, x, 0, 0, &oh, &ow))) return rc;
        break;
    }
    case OP_LINEAR: {
        if (x.h != 1 || x.w != 1)
            return node_fail(
                c, ONEBIT_E_SHAPE,
                "takes an (N, C, 1, 1) input, its input is (N, %d, %d, %d): flatten it first", x.c,
                x.h, x.w);
        if ((rc = want_tensor(c, 0, OB_F32, 2, (const int64_t[]){-1, -1}))) return rc;
        const ob_tensor *w = nd->t[0];
        oc = w->dims[0], oh = ow = 1;
        if (w->dims[1] != x.c)
            return node_fail(c, ONEBIT_E_SHAPE, "weight has %lld input features, its input has %d",
                             (long long)w->dims[1], x.c);
        if ((rc = want_tensor(c, 1, OB_F32, 1, &oc))) return rc;
        break;
    }
    case OP_AFFINE:
    case OP_PRELU: {
        const int64_t channels = x.c;
        const ob_tensor *slope = nd->op == OP_PRELU ? nd->t[0] : NULL;
        const int64_t one = 1;
        /* prelu takes one slope per channel or one for all */
        const int64_t *want = slope && slope->ndim == 1 && slope->dims[0] == 1 ? &one : &channels;
        if ((rc = want_tensor(c, 0, OB_F32, 1, want))) return rc;
        if (nd->op == OP_AFFINE && (rc = want_tensor(c, 1, OB_F32, 1, &channels))) return rc;
        break;
    }
    case OP_ADD:
    case OP_MUL: {
        const ob_shape b = ob_value_shape(c->m, nd->inputs[1]);
        const int same = b.c == x.c && b.h == x.h && b.w == x.w;
        const int vector = nd->op == OP_MUL && b.c == x.c && b.h == 1 && b.w == 1;
        if (!same && !vector)
            return node_fail(c, ONEBIT_E_SHAPE,
                             "its inputs are (N, %d, %d, %d) and (N, %d, %d, %d): %s", x.c, x.h,
                             x.w, b.c, b.h, b.w,
                             nd->op == OP_ADD ? "they must be of one shape"
                                              : "the second must be of the first's shape or "
                                                "(N, C, 1, 1)");
        break;
    }
    case OP_HARDTANH:
        if (!isfinite(nd->fa[0]) || !isfinite(nd->fa[1]) || nd->fa[0] > nd->fa[1])
            return node_fail(c, ONEBIT_E_FORMAT,
                             "min_val %g and max_val %g must be finite with min_val <= max_val",
                             nd->fa[0], nd->fa[1]);
        break;
    case OP_MAXPOOL2D:
    case OP_AVGPOOL2D:
        if ((rc = pool_window(c))) return rc;
        if (nd->op == OP_AVGPOOL2D && (rc = want_attr(c, "count_include_pad", a[7], 0, 1)))
            return rc;
        if ((rc = window_out(c, x, 1, a[6], &oh, &ow))) return rc;
        break;
    case OP_GLOBAL_AVGPOOL:
        oh = ow = 1;
        break;
    case OP_FLATTEN:
        oc = (int64_t)x.c * x.h * x.w, oh = ow = 1;
        break;
    case OP_CONCAT:
        oc = 0;
        for (int i = 0; i < nd->n_inputs; i++) {
            const ob_shape s = ob_value_shape(c->m, nd->inputs[i]);
            if (s.h != x.h || s.w != x.w)
                return node_fail(c, ONEBIT_E_SHAPE,
                                 "input %d is %dx%d, input 0 is %dx%d: concat needs one height and "
                                 "width",
                                 i, s.h, s.w, x.h, x.w);
            oc += s.c;
        }
        break;
    case OP_CHANNEL_SHUFFLE:
        if ((rc = want_attr(c, "groups", a[0], 1, OB_MAX_ATTR))) return rc;
        if (x.c % a[0])
            return node_fail(c, ONEBIT_E_SHAPE, "groups %d does not divide its input's %d channels",
                             a[0], x.c);
        break;
    case OP_SUBSAMPLE_PAD:
        if ((rc = want_attr(c, "stride_h", a[0], 1, OB_MAX_ATTR)) ||
            (rc = want_attr(c, "stride_w", a[1], 1, OB_MAX_ATTR)) ||
            (rc = want_attr(c, "pad_before", a[2], -OB_MAX_ATTR, OB_MAX_ATTR)) ||
            (rc = want_attr(c, "pad_after", a[3], -OB_MAX_ATTR, OB_MAX_ATTR)))
            return rc;
        oc = (int64_t)a[2] + x.c + a[3]; /* a negative pad removes channels, as F.pad does */
        if (oc < 1)
            return node_fail(c, ONEBIT_E_SHAPE,
                             "pads %d and %d remove all %d channels of its input", a[2], a[3],
                             x.c);
        oh = (x.h - 1) / a[0] + 1, ow = (x.w - 1) / a[1] + 1;
        break;
    case OP_RESCALE_HW:
        if ((rc = want_tensor(c, 0, OB_F32, 4, (const int64_t[]){1, x.c, x.h, x.w}))) return rc;
        break;
    default: /* relu, sigmoid, leaky_clip: element-wise */
        break;
    }
    /* each factor is at most the cap before it is multiplied: no product overflows */
    const int64_t cap = OB_MAX_VALUE_FLOATS;
    if (oc > cap || oh > cap || ow > cap || oc * oh > cap || oc * oh * ow > cap)
        return node_fail(c, ONEBIT_E_NOMEM,
                         "its output (N, %lld, %lld, %lld) is above the runtime's limit of %u "
                         "floats per image",
                         (long long)oc, (long long)oh, (long long)ow, OB_MAX_VALUE_FLOATS);
    nd->out = (ob_shape){(int)oc, (int)oh, (int)ow};
    return ONEBIT_OK;
}

/* Parse node k at p: op code, inputs, tensor slots, attributes; then infer its shape. */
static int parse_node(onebit_model *m, int k, const uint8_t *p, char *err, size_t err_len) {
    ob_node *nd = &m->nodes[k];
    const uint32_t op = rd32(p), n_inputs = rd32(p + 4);
    if (op < 1 || op >= OP_COUNT)
        return ob_fail(err, err_len, ONEBIT_E_FORMAT,
                       "node %d: op code %u is not one this runtime knows (1 to %d)", k, op,
                       OP_COUNT - 1);
    nd->op = (int)op;
    const check_ctx c = {m, k, nd, err, err_len};
    const op_spec *spec = &OPS[op];
    if (n_inputs < (uint32_t)spec->min_inputs || n_inputs > (uint32_t)spec->max_inputs)
        return node_fail(&c, ONEBIT_E_FORMAT, "%u inputs, it takes %d to %d", n_inputs,
                         spec->min_inputs, spec->max_inputs);
    nd->n_inputs = (int)n_inputs;
    for (int i = 0; i < OB_MAX_INPUTS; i++) {
        const int32_t v = rdi32(p + 8 + 4 * i);
        nd->inputs[i] = v;
        if (i >= nd->n_inputs && v != -1)
            return node_fail(&c, ONEBIT_E_FORMAT, "unused input %d is %d, it must be -1", i, v);
        if (i < nd->n_inputs && (v < 0 || v > k))
            return node_fail(&c, ONEBIT_E_FORMAT,
                             "input %d is value %d: node %d reads only values 0 to %d (the input "
                             "and earlier nodes)",
                             i, v, k, k);
    }
    const int slots = n_slots(nd->op);
    for (int s = 0; s < OB_MAX_TENSORS; s++) {
        const int32_t id = rdi32(p + 24 + 4 * s);
        char name[32];
        nd->t[s] = NULL;
        if (s >= slots) {
            if (id != -1)
                return node_fail(&c, ONEBIT_E_FORMAT, "tensor slot %d is %d, %s has %d slots", s,
                                 id, spec->name, slots);
            continue;
        }
        slot_name(nd->op, s, name, sizeof name);
        if (id == -1) {
            if (strchr(spec->slots[s], '?') == NULL)
                return node_fail(&c, ONEBIT_E_FORMAT, "its tensor %s is missing", name);
            continue;
        }
        if (id < 0 || id >= m->n_tensors)
            return node_fail(&c, ONEBIT_E_FORMAT, "%s is tensor %d, the file has %d tensors", name,
                             id, m->n_tensors);
        nd->t[s] = &m->tensors[id];
    }
    for (int i = 0; i < OB_MAX_IATTR; i++) nd->ia[i] = rdi32(p + 48 + 4 * i);
    for (int i = 0; i < OB_MAX_FATTR; i++) nd->fa[i] = rdf32(p + 96 + 4 * i);
    return infer(&c);
}

/* ------------------------------------------------------------------------------- tensors */

static int parse_tensor(onebit_model *m, int i, const uint8_t *p, uint64_t data_size, char *err,
                        size_t err_len) {
    ob_tensor *t = &m->tensors[i];
    const uint32_t dtype = rd32(p), ndim = rd32(p + 4);
    const uint64_t offset = rd64(p + 24), nbytes = rd64(p + 32);
    if (dtype < OB_F32 || dtype > OB_I32)
        return ob_fail(err, err_len, ONEBIT_E_FORMAT,
                       "tensor %d: dtype %u is not f32 (1), u64 (2) or i32 (3)", i, dtype);
    if (ndim < 1 || ndim > 4)
        return ob_fail(err, err_len, ONEBIT_E_FORMAT, "tensor %d: %u dims, it must have 1 to 4", i,
                       ndim);
    t->dtype = (int)dtype, t->ndim = (int)ndim;
    uint64_t count = 1;
    for (int d = 0; d < 4; d++) {
        const uint32_t dim = rd32(p + 8 + 4 * d);
        if (d < t->ndim ? dim < 1 || dim > OB_MAX_DIM : dim != 1)
            return ob_fail(err, err_len, ONEBIT_E_FORMAT,
                           "tensor %d: dim %d is %u, it must be 1 to %d (1 past its %d dims)", i, d,
                           dim, OB_MAX_DIM, t->ndim);
        t->dims[d] = dim;
        if (!mul_u64(count, dim, &count))
            return ob_fail(err, err_len, ONEBIT_E_FORMAT, "tensor %d: its size overflows", i);
    }
    uint64_t want;
    if (!mul_u64(count, dtype == OB_U64 ? 8 : 4, &want) || want != nbytes)
        return ob_fail(err, err_len, ONEBIT_E_FORMAT,
                       "tensor %d: nbytes is %llu, its %s dims need %llu", i,
                       (unsigned long long)nbytes, dtype_name(t->dtype),
                       (unsigned long long)(count * (dtype == OB_U64 ? 8 : 4)));
    if (offset % OB_ALIGN || offset > data_size || nbytes > data_size - offset)
        return ob_fail(err, err_len, ONEBIT_E_FORMAT,
                       "tensor %d: bytes [%llu, +%llu) are not a %d-aligned part of the %llu-byte "
                       "data section",
                       i, (unsigned long long)offset, (unsigned long long)nbytes, OB_ALIGN,
                       (unsigned long long)data_size);
    t->nbytes = (size_t)nbytes;
    t->data = (const uint8_t *)m->data + offset;
    return ONEBIT_OK;
}

/* -------------------------------------------------------------------------------- header */

typedef struct {
    uint32_t n_tensors, n_nodes;
    uint64_t tensor_offset, node_offset, meta_offset, meta_size, data_offset, data_size;
} sections;

/* Magic, version, size, checksum, then the sections in file order, each inside the file. */
static int check_header(const uint8_t *b, size_t size, sections *s, char *err, size_t err_len) {
    if (size < OB_HEADER_SIZE)
        return ob_fail(err, err_len, ONEBIT_E_FORMAT,
                       "the file has %zu bytes, fewer than the %d-byte header", size,
                       OB_HEADER_SIZE);
    if (memcmp(b, OB_MAGIC, 8) != 0)
        return ob_fail(err, err_len, ONEBIT_E_FORMAT,
                       "not a onebit graph file (it does not start with %s)", OB_MAGIC);
    if (rd32(b + 8) != OB_VERSION)
        return ob_fail(err, err_len, ONEBIT_E_VERSION,
                       "graph format version %u, this runtime reads version %d", rd32(b + 8),
                       OB_VERSION);
    if (rd32(b + 12) != OB_HEADER_SIZE)
        return ob_fail(err, err_len, ONEBIT_E_FORMAT, "header_size is %u, it must be %d",
                       rd32(b + 12), OB_HEADER_SIZE);
    if (rd32(b + 28) != 0) /* outside the checksum: must be 0, so no bit of a file goes unchecked */
        return ob_fail(err, err_len, ONEBIT_E_FORMAT,
                       "the reserved header field is %u, it must be 0", rd32(b + 28));
    if (rd64(b + 16) != size)
        return ob_fail(err, err_len, ONEBIT_E_FORMAT,
                       "the header says %llu bytes, the file has %zu (truncated or extended)",
                       (unsigned long long)rd64(b + 16), size);
    const uint32_t crc = crc32(b + OB_CRC_FROM, size - OB_CRC_FROM);
    if (crc != rd32(b + 24))
        return ob_fail(err, err_len, ONEBIT_E_CHECKSUM,
                       "crc32 is %08x, the header says %08x: the file is damaged", crc,
                       rd32(b + 24));
    s->n_tensors = rd32(b + 32), s->n_nodes = rd32(b + 36);
    s->tensor_offset = rd64(b + 40), s->node_offset = rd64(b + 48);
    s->meta_offset = rd64(b + 56), s->meta_size = rd64(b + 64);
    s->data_offset = rd64(b + 72), s->data_size = rd64(b + 80);
    if (s->n_tensors > OB_MAX_TENSOR_COUNT || s->n_nodes < 1 || s->n_nodes > OB_MAX_NODES)
        return ob_fail(err, err_len, ONEBIT_E_FORMAT,
                       "%u tensors and %u nodes: the runtime takes up to %d and 1 to %d",
                       s->n_tensors, s->n_nodes, OB_MAX_TENSOR_COUNT, OB_MAX_NODES);
    /* [start, start + len) must begin at or after `from` and end at or before `to` */
    const struct {
        const char *name;
        uint64_t start, len, from, to;
    } parts[] = {
        {"tensor table", s->tensor_offset, (uint64_t)s->n_tensors * OB_TENSOR_SIZE, OB_HEADER_SIZE,
         s->node_offset},
        {"node table", s->node_offset, (uint64_t)s->n_nodes * OB_NODE_SIZE,
         s->tensor_offset + (uint64_t)s->n_tensors * OB_TENSOR_SIZE, s->meta_offset},
        {"meta", s->meta_offset, s->meta_size, s->node_offset + (uint64_t)s->n_nodes * OB_NODE_SIZE,
         s->data_offset},
        {"data section", s->data_offset, s->data_size, s->meta_offset + s->meta_size, size},
    };
    for (int i = 0; i < 4; i++) {
        const uint64_t start = parts[i].start, len = parts[i].len;
        /* each `to` is checked <= size before its part's end is computed from it */
        if (start < parts[i].from || start > size || parts[i].to > size || len > size - start ||
            start + len > parts[i].to)
            return ob_fail(err, err_len, ONEBIT_E_FORMAT,
                           "the %s [%llu, +%llu) is not inside the file's %zu bytes in order",
                           parts[i].name, (unsigned long long)start, (unsigned long long)len, size);
    }
    if (s->data_offset % OB_ALIGN || s->data_offset + s->data_size != size)
        return ob_fail(err, err_len, ONEBIT_E_FORMAT,
                       "the data section at %llu must be %d-aligned and end the file",
                       (unsigned long long)s->data_offset, OB_ALIGN);
    return ONEBIT_OK;
}

/* in_c, in_h, in_w, transform, raw_h, raw_w, num_classes, mean, std */
static int parse_input_record(onebit_model *m, const uint8_t *b, char *err, size_t err_len) {
    const uint32_t c = rd32(b + 88), h = rd32(b + 92), w = rd32(b + 96);
    const uint32_t transform = rd32(b + 100), raw_h = rd32(b + 104), raw_w = rd32(b + 108);
    const uint32_t classes = rd32(b + 112);
    if (c < 1 || h < 1 || w < 1 || c > OB_MAX_DIM || h > OB_MAX_DIM || w > OB_MAX_DIM ||
        (uint64_t)c * h * w > OB_MAX_VALUE_FLOATS)
        return ob_fail(err, err_len, ONEBIT_E_FORMAT,
                       "input (N, %u, %u, %u): each side must be >= 1, at most %u floats", c, h, w,
                       OB_MAX_VALUE_FLOATS);
    if (transform > ONEBIT_TRANSFORM_RESIZE_CROP)
        return ob_fail(err, err_len, ONEBIT_E_FORMAT,
                       "input transform %u is not none (0), pad (1) or resize_crop (2)", transform);
    if (transform == ONEBIT_TRANSFORM_PAD && (raw_h < 1 || raw_w < 1 || raw_h > h || raw_w > w))
        return ob_fail(err, err_len, ONEBIT_E_FORMAT,
                       "input transform pad: raw size %ux%u must be 1 to the input's %ux%u", raw_h,
                       raw_w, h, w);
    if (raw_h > OB_MAX_DIM || raw_w > OB_MAX_DIM)
        return ob_fail(err, err_len, ONEBIT_E_FORMAT, "raw size %ux%u is too large", raw_h, raw_w);
    if (classes < 1) return ob_fail(err, err_len, ONEBIT_E_FORMAT, "num_classes is 0");
    m->in = (ob_shape){(int)c, (int)h, (int)w};
    m->num_classes = (int)classes;
    m->record.transform = (int)transform;
    m->record.raw_h = (int)raw_h, m->record.raw_w = (int)raw_w;
    for (int i = 0; i < 4; i++) {
        m->record.mean[i] = rdf32(b + 120 + 4 * i);
        m->record.std[i] = rdf32(b + 136 + 4 * i);
        if (!isfinite(m->record.mean[i]) || !isfinite(m->record.std[i]) ||
            (i < (int)c && !(m->record.std[i] > 0.0f)))
            return ob_fail(err, err_len, ONEBIT_E_FORMAT,
                           "input mean[%d] %g, std[%d] %g: both must be finite, std > 0", i,
                           m->record.mean[i], i, m->record.std[i]);
    }
    return ONEBIT_OK;
}

/* ---------------------------------------------------------------------------------- fuse */

/* The ep op of element-wise node nd reading the chain's value v, or 0 if it cannot be fused. */
static int ep_op_of(const ob_node *nd, int v, ob_ep_op *op, int *other) {
    memset(op, 0, sizeof *op);
    *other = -1;
    switch (nd->op) {
    case OP_AFFINE:
        op->kind = OB_EP_AFFINE;
        op->scale = nd->t[0] ? nd->t[0]->data : NULL;
        op->bias = nd->t[1] ? nd->t[1]->data : NULL;
        return 1;
    case OP_ADD:
        op->kind = OB_EP_ADD;
        op->swap = nd->inputs[1] == v; /* the other value is the first operand */
        *other = op->swap ? nd->inputs[0] : nd->inputs[1];
        return 1;
    case OP_RELU:
        op->kind = OB_EP_RELU;
        return 1;
    case OP_HARDTANH:
        op->kind = OB_EP_HARDTANH;
        op->lo = nd->fa[0], op->hi = nd->fa[1];
        return 1;
    case OP_PRELU:
        op->kind = OB_EP_PRELU;
        op->scale = nd->t[0]->data;
        op->n_slopes = (int)nd->t[0]->dims[0];
        return 1;
    case OP_LEAKY_CLIP:
        op->kind = OB_EP_LEAKY_CLIP;
        return 1;
    }
    return 0;
}

/* Chains conv2d / bconv2d -> element-wise ops (epilogue.h) where each value but the last has
 * one reader, the next op of the chain: the last node runs the conv and the ops (at its place,
 * where every input of the chain is computed), the others are skipped. */
static int fuse(onebit_model *m) {
    const int nv = m->n_nodes + 1;
    int *readers = calloc((size_t)nv, sizeof(int)), *reader = calloc((size_t)nv, sizeof(int));
    if (readers == NULL || reader == NULL) {
        free(readers);
        free(reader);
        return ONEBIT_E_NOMEM;
    }
    for (int k = 0; k < m->n_nodes; k++) {
        ob_node *nd = &m->nodes[k];
        nd->run = 1, nd->exec = k, nd->ep.n = 0;
        for (int i = 0; i < nd->n_inputs; i++) readers[nd->inputs[i]]++, reader[nd->inputs[i]] = k;
    }
    readers[nv - 1] += 2; /* the output is read after the last node: never fused away */
    const char *env = getenv("ONEBIT_FUSE");
    m->fused = 0;
    for (int k = 0; k < m->n_nodes && !(env && strcmp(env, "0") == 0); k++) {
        if (m->nodes[k].op != OP_CONV2D && m->nodes[k].op != OP_BCONV2D) continue;
        ob_epilogue ep = {0};
        int values[OB_EP_MAX], cur = k;
        while (ep.n < OB_EP_MAX && readers[cur + 1] == 1) {
            const ob_node *next = &m->nodes[reader[cur + 1]];
            if (!next->run || next->exec != reader[cur + 1] ||
                !ep_op_of(next, cur + 1, &ep.op[ep.n], &values[ep.n]))
                break;
            ep.n++;
            cur = reader[cur + 1];
        }
        if (ep.n == 0) continue;
        for (int v = k + 1; v <= cur; v = reader[v] + 1) m->nodes[v - 1].run = 0;
        ob_node *last = &m->nodes[cur];
        last->run = 1, last->exec = k, last->ep = ep;
        memcpy(last->ep_value, values, sizeof values);
        m->fused += ep.n;
    }
    free(readers);
    free(reader);
    return ONEBIT_OK;
}

/* The values node k reads when it runs: those of its op's node and of its epilogue's adds. */
int ob_node_inputs(const onebit_model *m, int k, int *v) {
    const ob_node *nd = &m->nodes[k], *op = &m->nodes[nd->exec];
    if (!nd->run) return 0;
    int n = 0;
    for (int i = 0; i < op->n_inputs; i++) v[n++] = op->inputs[i];
    for (int i = 0; i < nd->ep.n; i++)
        if (nd->ep.op[i].kind == OB_EP_ADD) v[n++] = nd->ep_value[i];
    return n;
}

/* ---------------------------------------------------------------------------------- plan */

/* Places every value in the arena: value k + 1 (node k's output) takes the lowest gap free
 * while node k runs, i.e. not used by a value defined before it whose last reader is k or
 * later. Offsets are in floats per image, multiples of 16 (64 bytes), so the plan of batch n is
 * this one scaled by n. The graph input is the caller's buffer and takes no space. */
static int plan(onebit_model *m, char *err, size_t err_len) {
    const int nv = m->n_nodes + 1;
    int *last_use = malloc(sizeof(int) * (size_t)nv), *live = malloc(sizeof(int) * (size_t)nv);
    if (last_use == NULL || live == NULL) {
        free(last_use);
        free(live);
        return ob_fail(err, err_len, ONEBIT_E_NOMEM, "out of memory planning the arena");
    }
    for (int v = 1; v < nv; v++) last_use[v] = v - 1;
    for (int k = 0; k < m->n_nodes; k++) {
        int in[OB_MAX_INPUTS + OB_EP_MAX];
        const int n_in = ob_node_inputs(m, k, in);
        for (int i = 0; i < n_in; i++) last_use[in[i]] = k;
    }
    last_use[nv - 1] = m->n_nodes; /* the output is read after the last node */
    int n_live = 0;                /* live values sorted by offset */
    size_t top = 0;
    for (int k = 0; k < m->n_nodes; k++) {
        int kept = 0;
        for (int i = 0; i < n_live; i++)
            if (last_use[live[i]] >= k) live[kept++] = live[i];
        n_live = kept;
        ob_node *nd = &m->nodes[k];
        if (!nd->run) continue; /* its value is never written */
        const size_t need = ((size_t)nd->out.c * nd->out.h * nd->out.w + 15) / 16 * 16;
        size_t at = 0;
        int pos = 0;
        for (; pos < n_live; pos++) {
            const ob_node *o = &m->nodes[live[pos] - 1];
            if (o->offset >= at + need) break;
            const size_t end = o->offset + ((size_t)o->out.c * o->out.h * o->out.w + 15) / 16 * 16;
            if (end > at) at = end;
        }
        nd->offset = at;
        memmove(live + pos + 1, live + pos, sizeof(int) * (size_t)(n_live - pos));
        live[pos] = k + 1;
        n_live++;
        if (at + need > top) top = at + need;
    }
    free(last_use);
    free(live);
    m->value_floats = top;
    return ONEBIT_OK;
}

/* ------------------------------------------------------------------------------- loading */

static int prepare_bconvs(onebit_model *m, int variant, ob_bconv **out) {
    for (int k = 0; k < m->n_nodes; k++) {
        const ob_node *nd = &m->nodes[k];
        out[k] = NULL;
        if (nd->op != OP_BCONV2D) continue;
        const ob_bconv_geom g = {ob_value_shape(m, nd->inputs[0]).c,
                                 nd->out.c,
                                 nd->win.kh,
                                 nd->win.kw,
                                 nd->win.sh,
                                 nd->win.sw,
                                 nd->win.ph,
                                 nd->win.pw,
                                 nd->win.dh,
                                 nd->win.dw};
        out[k] = ob_bconv_prepare(&g, nd->t[0]->data, nd->t[1]->data, nd->t[2]->data,
                                  nd->t[3] ? nd->t[3]->data : NULL, variant);
        int ho = 0, wo = 0;
        const ob_shape x = ob_value_shape(m, nd->inputs[0]);
        if (out[k] != NULL && ob_bconv_plan(out[k], x.h, x.w) != 0) {
            for (int i = 0; i <= k; i++) ob_bconv_free(out[i]);
            return ONEBIT_E_NOMEM;
        }
        if (out[k] != NULL &&
            (ob_bconv_out_hw(out[k], x.h, x.w, &ho, &wo) || ho != nd->out.h || wo != nd->out.w)) {
            for (int i = 0; i <= k; i++) ob_bconv_free(out[i]);
            return ONEBIT_E_SHAPE; /* the kernel and the loader disagree: a bug */
        }
        if (out[k] == NULL) {
            for (int i = 0; i < k; i++) ob_bconv_free(out[i]);
            return ONEBIT_E_NOMEM;
        }
    }
    return ONEBIT_OK;
}

static int load(const uint8_t *b, size_t size, onebit_model *m, char *err, size_t err_len) {
    sections s;
    int rc;
    if ((rc = check_header(b, size, &s, err, err_len))) return rc;
    if ((rc = parse_input_record(m, b, err, err_len))) return rc;
    m->n_tensors = (int)s.n_tensors;
    m->n_nodes = (int)s.n_nodes;
    m->tensors = calloc(s.n_tensors ? s.n_tensors : 1, sizeof(ob_tensor));
    m->nodes = calloc(s.n_nodes, sizeof(ob_node));
    m->data = ob_alloc_big((size_t)(s.data_size + OB_ALIGN) / OB_ALIGN * OB_ALIGN);
    if (m->tensors == NULL || m->nodes == NULL || m->data == NULL)
        return ob_fail(err, err_len, ONEBIT_E_NOMEM, "out of memory for %llu bytes of tensors",
                       (unsigned long long)s.data_size);
    memcpy(m->data, b + s.data_offset, (size_t)s.data_size);
    for (int i = 0; i < m->n_tensors; i++)
        if ((rc = parse_tensor(m, i, b + s.tensor_offset + (size_t)i * OB_TENSOR_SIZE, s.data_size,
                               err, err_len)))
            return rc;
    for (int k = 0; k < m->n_nodes; k++)
        if ((rc = parse_node(m, k, b + s.node_offset + (size_t)k * OB_NODE_SIZE, err, err_len)))
            return rc;
    const ob_shape out = m->nodes[m->n_nodes - 1].out;
    if (out.c != m->num_classes || out.h != 1 || out.w != 1)
        return ob_fail(err, err_len, ONEBIT_E_SHAPE,
                       "the last node's output is (N, %d, %d, %d), the header says (N, %d, 1, 1) "
                       "logits",
                       out.c, out.h, out.w, m->num_classes);
    if ((rc = fuse(m))) return ob_fail(err, err_len, rc, "out of memory fusing the nodes");
    if ((rc = plan(m, err, err_len))) return rc;
    m->kernel = ob_kernel_variant("auto");
    if (m->kernel < 0)
        return ob_fail(err, err_len, ONEBIT_E_UNSUPPORTED,
                       "no binary conv kernel runs on this CPU");
    ob_bconv **kernels = calloc((size_t)m->n_nodes, sizeof(ob_bconv *));
    rc = kernels ? prepare_bconvs(m, m->kernel, kernels) : ONEBIT_E_NOMEM;
    if (rc) {
        free(kernels);
        return ob_fail(err, err_len, rc,
                       rc == ONEBIT_E_SHAPE ? "the binary conv kernel computes another output size"
                                            : "out of memory preparing the binary convs");
    }
    for (int k = 0; k < m->n_nodes; k++) m->nodes[k].bconv = kernels[k];
    free(kernels);
    if (m->profile && ((m->prof_ns = calloc((size_t)m->n_nodes, sizeof(double))) == NULL ||
                       (m->prof_min = calloc((size_t)m->n_nodes, sizeof(double))) == NULL))
        return ob_fail(err, err_len, ONEBIT_E_NOMEM, "out of memory for the profile");
    size_t need;
    if (ob_arena_bytes(m, 1, &need) || need > OB_MAX_ARENA_BYTES)
        return ob_fail(err, err_len, ONEBIT_E_NOMEM,
                       "the values and scratch of one image need more than the runtime's limit of "
                       "%llu MiB",
                       OB_MAX_ARENA_BYTES >> 20);
    return ob_arena_reserve(m, 1, 1, err, err_len);
}

int onebit_load_buffer(const void *data, size_t size, onebit_model **out, char *err,
                       size_t err_len) {
    if (err != NULL && err_len > 0) err[0] = '\0';
    if (out == NULL || (data == NULL && size > 0))
        return ob_fail(err, err_len, ONEBIT_E_ARG, "onebit_load_buffer: NULL data or out");
    *out = NULL;
    onebit_model *m = calloc(1, sizeof(onebit_model));
    if (m == NULL) return ob_fail(err, err_len, ONEBIT_E_NOMEM, "out of memory");
    m->threads = 1;
    const char *profile = getenv("ONEBIT_PROFILE");
    m->profile = profile != NULL && profile[0] != '\0' && strcmp(profile, "0") != 0;
    const int rc = load(data ? data : "", size, m, err, err_len);
    if (rc != ONEBIT_OK) {
        onebit_free(m);
        return rc;
    }
    *out = m;
    return ONEBIT_OK;
}

int onebit_load_file(const char *path, onebit_model **out, char *err, size_t err_len) {
    if (path == NULL || out == NULL)
        return ob_fail(err, err_len, ONEBIT_E_ARG, "onebit_load_file: NULL path or out");
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (f == NULL) return ob_fail(err, err_len, ONEBIT_E_IO, "%s: %s", path, strerror(errno));
    /* a folder opens, and seeks to an absurd size: reading a byte says what it is */
    if (fgetc(f) == EOF && ferror(f)) {
        const int code = errno;
        fclose(f);
        return ob_fail(err, err_len, ONEBIT_E_IO, "%s: cannot read it (%s)", path, strerror(code));
    }
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0) size = ftell(f);
    if (size < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return ob_fail(err, err_len, ONEBIT_E_IO, "%s: cannot find its size", path);
    }
    void *data = malloc(size > 0 ? (size_t)size : 1);
    if (data == NULL) {
        fclose(f);
        return ob_fail(err, err_len, ONEBIT_E_NOMEM, "%s: out of memory for %ld bytes", path, size);
    }
    const size_t got = fread(data, 1, (size_t)size, f);
    const int failed = ferror(f);
    fclose(f);
    if (got != (size_t)size || failed) {
        free(data);
        return ob_fail(err, err_len, ONEBIT_E_IO, "%s: read %zu of %ld bytes", path, got, size);
    }
    const int rc = onebit_load_buffer(data, (size_t)size, out, err, err_len);
    free(data);
    if (rc != ONEBIT_OK && err != NULL && err_len > 0) { /* the file's name first */
        char reason[512];
        snprintf(reason, sizeof reason, "%s", err);
        snprintf(err, err_len, "%s: %s", path, reason);
    }
    return rc;
}

void onebit_free(onebit_model *m) {
    if (m == NULL) return;
    ob_profile_report(m);
    free(m->prof_ns);
    free(m->prof_min);
    for (int k = 0; m->nodes != NULL && k < m->n_nodes; k++) ob_bconv_free(m->nodes[k].bconv);
    free(m->nodes);
    free(m->tensors);
    free(m->data);
    free(m->arena);
    free(m);
}

/* ------------------------------------------------------------------------------ settings */

void onebit_input_shape(const onebit_model *m, int *c, int *h, int *w) {
    if (c) *c = m ? m->in.c : 0;
    if (h) *h = m ? m->in.h : 0;
    if (w) *w = m ? m->in.w : 0;
}

void onebit_get_input_record(const onebit_model *m, onebit_input_record *out) {
    if (m != NULL && out != NULL) *out = m->record;
}

int onebit_num_outputs(const onebit_model *m) {
    return m ? m->num_classes : 0;
}

int onebit_set_threads(onebit_model *m, int threads) {
    if (m == NULL || threads < 1 || threads > 1024) return ONEBIT_E_ARG;
#ifndef _OPENMP
    if (threads > 1) return ONEBIT_E_UNSUPPORTED;
#endif
    m->threads = threads;
    return ONEBIT_OK;
}

/* Re-prepares every binary conv for the variant; the old ones stay if that fails. */
int onebit_set_kernel(onebit_model *m, const char *name) {
    if (m == NULL || name == NULL) return ONEBIT_E_ARG;
    const int variant = ob_kernel_variant(name);
    if (variant < 0) return ONEBIT_E_UNSUPPORTED;
    ob_bconv **kernels = calloc((size_t)m->n_nodes, sizeof(ob_bconv *));
    const int rc = kernels ? prepare_bconvs(m, variant, kernels) : ONEBIT_E_NOMEM;
    if (rc) {
        free(kernels);
        return rc;
    }
    for (int k = 0; k < m->n_nodes; k++) {
        ob_bconv_free(m->nodes[k].bconv);
        m->nodes[k].bconv = kernels[k];
    }
    free(kernels);
    m->kernel = variant;
    return ONEBIT_OK;
}

const char *onebit_kernel(const onebit_model *m) {
    return m ? ob_kernel_name(m->kernel) : "";
}

const char *onebit_version(void) {
    return "0.1.0";
}

const char *onebit_status_name(int status) {
    static const char *const names[] = {
        "ONEBIT_OK",        "ONEBIT_E_IO",       "ONEBIT_E_FORMAT",
        "ONEBIT_E_VERSION", "ONEBIT_E_CHECKSUM", "ONEBIT_E_UNSUPPORTED",
        "ONEBIT_E_SHAPE",   "ONEBIT_E_NOMEM",    "ONEBIT_E_ARG"};
    return status >= 0 && status <= ONEBIT_E_ARG ? names[status] : "ONEBIT_E_?";
}
