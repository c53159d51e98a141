/* onebit-run: classify images with a .onebit graph file, or time it.
 *
 *   onebit-run MODEL.onebit IMAGES [--labels LABELS] [--threads N] [--kernel NAME] [--batch N]
 *              [--bench REPEATS] [--top K] [--raw N]
 *
 * IMAGES: an IDX file of uint8 images (N, H, W) (Fashion-MNIST's; not gzip-compressed:
 * gunzip it first), a .npy of uint8 or float32 images (N, H, W), (N, C, H, W) or (N, H, W, C),
 * or with --raw N a file of N uint8 images (N, C, H, W) of the model's raw size. Images become
 * the model's input as onebit.input_spec.InputSpec.preprocess makes them: uint8 / 255 (float
 * images are taken as [0, 1]), a centred zero pad to the model's size for transform "pad", the
 * shorter side resized to size / 0.875 and the centre cropped for "resize_crop" (PyTorch's
 * antialiased bilinear resize; "none" resizes to the model's size images of another size),
 * then (x - mean) / std. LABELS: an IDX or .npy file of integer labels.
 *
 * Prints the top K classes of each image (best first), or with --labels the top-1 (and top-K)
 * accuracy; --bench times REPEATS runs of the first batch instead (after one untimed run; it
 * prints their median and the best). Errors are one line,
 * "onebit-run: error: ...", exit status 2.
 */
#include <errno.h>
#include <math.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "onebit.h"

static const char USAGE[] =
    "usage: onebit-run MODEL.onebit IMAGES [--labels LABELS] [--threads N] [--kernel NAME]\n"
    "                  [--batch N] [--bench REPEATS] [--top K] [--raw N]\n"
    "IMAGES: IDX (uncompressed), .npy (uint8 or float32), or raw uint8 (N, C, H, W) with --raw N\n";

__attribute__((noreturn, format(printf, 1, 2))) static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("onebit-run: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static void *xmalloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (p == NULL) die("out of memory (%zu bytes)", bytes);
    return p;
}

static uint8_t *read_all(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) die("%s: %s", path, strerror(errno));
    /* a folder opens, and seeks to an absurd size: reading a byte says what it is */
    if (fgetc(f) == EOF && ferror(f)) die("%s: cannot read it (%s)", path, strerror(errno));
    long len = -1;
    if (fseek(f, 0, SEEK_END) == 0) len = ftell(f);
    if (len < 0 || fseek(f, 0, SEEK_SET) != 0) die("%s: cannot find its size", path);
    uint8_t *data = xmalloc((size_t)len);
    if (fread(data, 1, (size_t)len, f) != (size_t)len || ferror(f)) die("%s: read error", path);
    fclose(f);
    *size = (size_t)len;
    return data;
}

/* ------------------------------------------------------------------------------- arrays */

/* An array read from an IDX or .npy file: kind 'u' (uint8), 'f' (float32) or 'i' (int64,
 * labels only, converted). */
typedef struct {
    char kind;
    int ndim;
    int64_t dims[4];
    const void *data; /* into the file's bytes, or `owned` */
    void *owned;
} array;

static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* IDX (LeCun's MNIST format): 0, 0, type, ndim, ndim big-endian u32 dims, the data. */
static void parse_idx(const char *path, const uint8_t *b, size_t size, array *a) {
    const int ndim = size >= 4 ? b[3] : 0;
    if (size < 4 || b[2] != 0x08 || ndim < 1 || ndim > 4 || size < 4 + 4 * (size_t)ndim)
        die("%s: an IDX file of uint8 (type 0x08) with 1 to 4 dims is expected", path);
    a->kind = 'u', a->ndim = ndim;
    uint64_t count = 1;
    for (int i = 0; i < ndim; i++) {
        a->dims[i] = be32(b + 4 + 4 * i);
        if (a->dims[i] < 1 || a->dims[i] > INT_MAX)
            die("%s: dim %d is %lld", path, i, (long long)a->dims[i]);
        count *= (uint64_t)a->dims[i];
        if (count > SIZE_MAX / 8) die("%s: too large", path);
    }
    if (size - 4 - 4 * (size_t)ndim != count)
        die("%s: %zu bytes of data, its dims need %llu", path, size - 4 - 4 * (size_t)ndim,
            (unsigned long long)count);
    a->data = b + 4 + 4 * ndim;
}

/* .npy (numpy's format, versions 1 to 3): magic, version, header length, a Python dict with
 * descr, fortran_order and shape, then C-order data. */
static void parse_npy(const char *path, const uint8_t *b, size_t size, array *a) {
    if (size < 10 || memcmp(b, "\x93NUMPY", 6) != 0) die("%s: not a .npy file", path);
    const size_t start = b[6] == 1 ? 10 : 12; /* the header length is a u16, then a u32 */
    if (size < start) die("%s: a truncated .npy file", path);
    size_t hlen = (size_t)b[8] | (size_t)b[9] << 8;
    if (start == 12) hlen |= (size_t)b[10] << 16 | (size_t)b[11] << 24;
    if (hlen > size - start) die("%s: the .npy header is truncated", path);
    char header[1024];
    if (hlen >= sizeof header) die("%s: the .npy header is too long", path);
    memcpy(header, b + start, hlen);
    header[hlen] = '\0';
    const char *descr = strstr(header, "'descr':"), *order = strstr(header, "'fortran_order':");
    const char *shape = strstr(header, "'shape':");
    if (descr == NULL || order == NULL || shape == NULL) die("%s: a malformed .npy header", path);
    if (strncmp(order + 16, " False", 6) != 0)
        die("%s: a Fortran-order array; save it in C order", path);
    descr = strchr(descr + 8, '\'');
    size_t item = 0;
    if (descr && (!strncmp(descr, "'|u1'", 5) || !strncmp(descr, "'<u1'", 5)))
        a->kind = 'u', item = 1;
    else if (descr && !strncmp(descr, "'<f4'", 5))
        a->kind = 'f', item = 4;
    else if (descr && !strncmp(descr, "'<i8'", 5))
        a->kind = 'i', item = 8;
    else if (descr && !strncmp(descr, "'<i4'", 5))
        a->kind = 'i', item = 4;
    else {
        const char *close = descr ? strchr(descr + 1, '\'') : NULL;
        const int n = close && close - descr - 1 <= 16 ? (int)(close - descr - 1) : 1;
        die("%s: dtype '%.*s'; images must be uint8 or float32, labels integers", path, n,
            close ? descr + 1 : "?");
    }
    const char *p = strchr(shape, '(');
    a->ndim = 0;
    uint64_t count = 1;
    while (p != NULL && *p && *p != ')') {
        p++;
        while (*p == ' ') p++;
        if (*p == ')') break;
        char *end;
        const long long d = strtoll(p, &end, 10);
        if (end == p || d < 1 || d > INT_MAX || a->ndim == 4)
            die("%s: unsupported shape in the .npy header", path);
        a->dims[a->ndim++] = d;
        count *= (uint64_t)d;
        if (count > SIZE_MAX / 8) die("%s: too large", path);
        p = end;
        while (*p == ' ') p++;
    }
    if (a->ndim == 0) die("%s: a .npy array of 0 dims", path);
    if (size - start - hlen != count * item)
        die("%s: %zu bytes of data, its shape needs %llu", path, size - start - hlen,
            (unsigned long long)(count * item));
    const uint8_t *data = b + start + hlen;
    if (a->kind == 'i') { /* labels: to int64 */
        int64_t *owned = xmalloc(sizeof(int64_t) * count);
        for (uint64_t i = 0; i < count; i++) {
            if (item == 8)
                memcpy(&owned[i], data + 8 * i, 8);
            else {
                int32_t v;
                memcpy(&v, data + 4 * i, 4);
                owned[i] = v;
            }
        }
        a->data = a->owned = owned;
    } else if (a->kind == 'f') { /* copied: the data need not be 4-aligned in the file */
        a->owned = xmalloc(sizeof(float) * count);
        memcpy(a->owned, data, sizeof(float) * count);
        a->data = a->owned;
    } else {
        a->data = data;
    }
}

static void read_array(const char *path, const uint8_t *b, size_t size, array *a) {
    memset(a, 0, sizeof *a);
    if (size >= 2 && b[0] == 0x1f && b[1] == 0x8b)
        die("%s is gzip-compressed: decompress it first (gunzip)", path);
    if (size >= 6 && memcmp(b, "\x93NUMPY", 6) == 0)
        parse_npy(path, b, size, a);
    else
        parse_idx(path, b, size, a);
}

/* ------------------------------------------------------------------------------- images */

/* Images as (n, c, h, w), element (i, c, y, x) at i * si + c * sc + y * sy + x * sx. */
typedef struct {
    const array *a;
    int64_t n, c, h, w;
    int64_t si, sc, sy, sx;
} images;

/* The layouts of InputSpec._batch: (H, W) with one channel, (C, H, W), (H, W, C), (N, H, W)
 * with one channel, (N, C, H, W), (N, H, W, C). */
static images image_view(const char *path, const array *a, int c) {
    images im = {a, 0, c, 0, 0, 0, 0, 0, 0};
    const int64_t *d = a->dims;
    int nhwc = 0;
    if (a->ndim == 2 && c == 1)
        im.n = 1, im.h = d[0], im.w = d[1];
    else if (a->ndim == 3 && d[0] == c)
        im.n = 1, im.h = d[1], im.w = d[2];
    else if (a->ndim == 3 && d[2] == c && c > 1)
        im.n = 1, im.h = d[0], im.w = d[1], nhwc = 1;
    else if (a->ndim == 3 && c == 1)
        im.n = d[0], im.h = d[1], im.w = d[2];
    else if (a->ndim == 4 && d[1] == c)
        im.n = d[0], im.h = d[2], im.w = d[3];
    else if (a->ndim == 4 && d[3] == c)
        im.n = d[0], im.h = d[1], im.w = d[2], nhwc = 1;
    else
        die("%s: images of %d dims (%lld, ...) do not have the model's %d channel(s); give "
            "(N, H, W), (N, C, H, W) or (N, H, W, C)",
            path, a->ndim, (long long)d[0], c);
    im.sx = nhwc ? c : 1;
    im.sy = im.w * im.sx;
    im.sc = nhwc ? 1 : im.h * im.w;
    im.si = (int64_t)c * im.h * im.w;
    return im;
}

static float pixel(const images *im, int64_t i, int64_t c, int64_t y, int64_t x) {
    const int64_t at = i * im->si + c * im->sc + y * im->sy + x * im->sx;
    if (im->a->kind == 'u') return (float)((const uint8_t *)im->a->data)[at] / 255.0f;
    return ((const float *)im->a->data)[at];
}

typedef struct {
    int c, h, w;
    onebit_input_record rec;
} input_info;

/* Images must fit the transform: "pad" takes any size up to the model's; "none" and
 * "resize_crop" take any size (resized below). */
static void check_size(const char *path, const images *im, const input_info *in) {
    if (in->c > 4) die("the model takes %d channels; its header normalises at most 4", in->c);
    if (im->h < 1 || im->w < 1)
        die("%s: images are %lldx%lld: empty", path, (long long)im->h, (long long)im->w);
    if (im->h == in->h && im->w == in->w) return;
    if (in->rec.transform != ONEBIT_TRANSFORM_PAD) return;
    if (im->h > in->h || im->w > in->w)
        die("%s: images are %lldx%lld, larger than the model's %dx%d (raw images are %dx%d, "
            "zero-padded)",
            path, (long long)im->h, (long long)im->w, in->h, in->w, in->rec.raw_h, in->rec.raw_w);
}

/* Whether the images are resized (InputSpec.preprocess: "resize_crop" always, "none" when they
 * are not the model's size). */
static int resizes(const images *im, const input_info *in) {
    return in->rec.transform == ONEBIT_TRANSFORM_RESIZE_CROP ||
           (in->rec.transform == ONEBIT_TRANSFORM_NONE && (im->h != in->h || im->w != in->w));
}

/* One axis of InputSpec's resize, PyTorch's antialiased bilinear (aten UpSample.h,
 * _compute_weights_aa), in float as PyTorch computes it for float images: output i of n_out
 * weighs inputs [lo[i], lo[i] + len[i]) by w[i * taps + j - lo[i]], the triangle filter widened
 * by the scale when shrinking, divided by the weights' sum. Outputs [first, first + count). */
typedef struct {
    int64_t *lo, *len;
    float *w;
    int64_t taps; /* the most inputs an output reads */
} axis;

static axis resize_axis(int64_t n_in, int64_t n_out, int64_t first, int64_t count) {
    axis a = {xmalloc(sizeof(int64_t) * (size_t)count), xmalloc(sizeof(int64_t) * (size_t)count),
              NULL, 1};
    const float scale = (float)n_in / (float)n_out;
    const float support = scale >= 1.0f ? scale : 1.0f, inv = scale >= 1.0f ? 1.0f / scale : 1.0f;
    for (int64_t k = 0; k < count; k++) { /* the taps of each output */
        const float centre = scale * ((float)(first + k) + 0.5f);
        const int64_t lo0 = (int64_t)(centre - support + 0.5f);
        const int64_t hi0 = (int64_t)(centre + support + 0.5f);
        const int64_t lo = lo0 > 0 ? lo0 : 0, hi = hi0 < n_in ? hi0 : n_in;
        a.lo[k] = lo, a.len[k] = hi > lo ? hi - lo : 0;
        if (a.len[k] > a.taps) a.taps = a.len[k];
    }
    a.w = xmalloc(sizeof(float) * (size_t)(count * a.taps));
    for (int64_t k = 0; k < count; k++) { /* their weights */
        const float centre = scale * ((float)(first + k) + 0.5f);
        float *w = a.w + k * a.taps, total = 0.0f;
        for (int64_t j = 0; j < a.len[k]; j++) {
            const float d = ((float)(a.lo[k] + j) - centre + 0.5f) * inv;
            const float t = 1.0f - (d < 0 ? -d : d);
            w[j] = t > 0.0f ? t : 0.0f;
            total += w[j];
        }
        if (total != 0.0f)
            for (int64_t j = 0; j < a.len[k]; j++) w[j] /= total;
    }
    return a;
}

static void free_axis(axis *a) { free(a->lo), free(a->len), free(a->w); }

/* The resize and centre crop of InputSpec._resize_centre_crop: the shorter side to
 * round(size / 0.875) ("resize_crop"; the model's size for "none"), Python's round (half to
 * even, rint), the centre square; width first, then height, as PyTorch. */
typedef struct {
    axis rows, cols;
    float *tmp; /* h x size: the rows after the width pass */
} resizer;

static resizer make_resizer(const images *im, const input_info *in) {
    const int size = in->h;
    const double shorter = im->h < im->w ? (double)im->h : (double)im->w;
    const double target = in->rec.transform == ONEBIT_TRANSFORM_RESIZE_CROP
                              ? rint((double)size / 0.875)
                              : (double)size;
    const double scale = target / shorter;
    int64_t nh = (int64_t)rint((double)im->h * scale), nw = (int64_t)rint((double)im->w * scale);
    nh = nh > size ? nh : size, nw = nw > size ? nw : size;
    resizer r = {resize_axis(im->h, nh, (nh - size) / 2, size),
                 resize_axis(im->w, nw, (nw - size) / 2, size),
                 xmalloc(sizeof(float) * (size_t)(im->h * size))};
    return r;
}

/* Channel c of image i resized into out (size x size). */
static void resize_channel(const resizer *r, const images *im, int64_t i, int c, int size,
                           float *out) {
    /* the width pass on the band of rows the height pass reads (lo is non-decreasing) */
    const int64_t y0 = r->rows.lo[0], y1 = r->rows.lo[size - 1] + r->rows.len[size - 1];
    for (int64_t y = y0; y < y1; y++)
        for (int x = 0; x < size; x++) {
            const float *w = r->cols.w + x * r->cols.taps;
            float t = 0.0f;
            for (int64_t j = 0; j < r->cols.len[x]; j++)
                t += pixel(im, i, c, y, r->cols.lo[x] + j) * w[j];
            r->tmp[y * size + x] = t;
        }
    for (int y = 0; y < size; y++) {
        const float *w = r->rows.w + y * r->rows.taps;
        for (int x = 0; x < size; x++) {
            float t = 0.0f;
            for (int64_t j = 0; j < r->rows.len[y]; j++)
                t += r->tmp[(r->rows.lo[y] + j) * size + x] * w[j];
            out[y * size + x] = t;
        }
    }
}

/* Images [first, first + n) as the model's normalised input (n, C, H, W); rs: the resizer, or
 * NULL where the images are not resized. */
static void preprocess(const images *im, int64_t first, int n, const input_info *in,
                       const resizer *rs, float *out) {
    const int64_t top = (in->h - im->h) / 2, left = (in->w - im->w) / 2;
    for (int i = 0; i < n; i++)
        for (int c = 0; c < in->c; c++) {
            const float mean = in->rec.mean[c], std = in->rec.std[c];
            if (rs) {
                resize_channel(rs, im, first + i, c, in->h, out);
                for (int64_t k = 0; k < (int64_t)in->h * in->w; k++, out++)
                    *out = (*out - mean) / std;
                continue;
            }
            for (int y = 0; y < in->h; y++)
                for (int x = 0; x < in->w; x++) {
                    const int64_t sy = y - top, sx = x - left;
                    const float v = sy >= 0 && sy < im->h && sx >= 0 && sx < im->w
                                        ? pixel(im, first + i, c, sy, sx)
                                        : 0.0f;
                    *out++ = (v - mean) / std;
                }
        }
}

/* ---------------------------------------------------------------------------------- main */

static const char *need(const char *flag, const char *value) {
    if (value == NULL) die("%s needs a value", flag);
    return value;
}

static long parse_int(const char *flag, const char *s, long lo, long hi) {
    char *end;
    errno = 0;
    const long v = s ? strtol(s, &end, 10) : 0;
    if (s == NULL || end == s || *end || errno || v < lo || v > hi)
        die("%s needs an integer in %ld..%ld, got %s", flag, lo, hi, s ? s : "nothing");
    return v;
}

/* The k best classes of a row, best first; ties go to the lower class, as torch.topk. */
static void top_k(const float *row, int classes, int k, int *best) {
    for (int j = 0; j < k; j++) {
        int b = -1;
        for (int c = 0; c < classes; c++) {
            int taken = 0;
            for (int i = 0; i < j; i++) taken |= best[i] == c;
            if (!taken && (b < 0 || row[c] > row[b])) b = c;
        }
        best[j] = b;
    }
}

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int compare_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    const char *model_path = NULL, *images_path = NULL, *labels_path = NULL, *kernel = NULL;
    long threads = 1, batch = 64, bench = 0, top = 1, raw = 0;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(arg, "-h") || !strcmp(arg, "--help")) {
            fputs(USAGE, stdout);
            return 0;
        }
        if (strncmp(arg, "--", 2) != 0) {
            if (images_path != NULL)
                die("one model and one images file, got also %s (see --help)", arg);
            *(model_path == NULL ? &model_path : &images_path) = arg;
            continue;
        }
        if (!strcmp(arg, "--labels"))
            labels_path = need(arg, value);
        else if (!strcmp(arg, "--kernel"))
            kernel = need(arg, value);
        else if (!strcmp(arg, "--threads"))
            threads = parse_int(arg, value, 1, 1024);
        else if (!strcmp(arg, "--batch"))
            batch = parse_int(arg, value, 1, 1 << 20);
        else if (!strcmp(arg, "--bench"))
            bench = parse_int(arg, value, 1, 1 << 20);
        else if (!strcmp(arg, "--top"))
            top = parse_int(arg, value, 1, 1 << 20);
        else if (!strcmp(arg, "--raw"))
            raw = parse_int(arg, value, 1, INT_MAX);
        else
            die("unknown option %s (see --help)", arg);
        i++;
    }
    if (model_path == NULL || images_path == NULL)
        die("a model and an images file are needed (see --help)");

    char err[512];
    onebit_model *m;
    if (onebit_load_file(model_path, &m, err, sizeof err)) die("%s", err); /* names the file */
    int rc = onebit_set_threads(m, (int)threads);
    if (rc == ONEBIT_E_UNSUPPORTED)
        die("--threads %ld: this build has no OpenMP (build with make OPENMP=1)", threads);
    if (kernel && onebit_set_kernel(m, kernel))
        die("--kernel %s: not a kernel this build and CPU run (auto, portable, avx2, avx512, neon)",
            kernel);
    input_info in;
    onebit_input_shape(m, &in.c, &in.h, &in.w);
    onebit_get_input_record(m, &in.rec);
    const int classes = onebit_num_outputs(m);
    if (top > classes) die("--top %ld: the model has %d classes", top, classes);

    size_t size;
    uint8_t *bytes = read_all(images_path, &size);
    array a;
    images im;
    if (raw) {
        const int rh = in.rec.transform == ONEBIT_TRANSFORM_PAD ? in.rec.raw_h : in.h;
        const int rw = in.rec.transform == ONEBIT_TRANSFORM_PAD ? in.rec.raw_w : in.w;
        const uint64_t want = (uint64_t)raw * in.c * rh * rw;
        if (size != want)
            die("%s: %zu bytes, %ld raw images of %dx%dx%d are %llu", images_path, size, raw, in.c,
                rh, rw, (unsigned long long)want);
        a = (array){'u', 4, {raw, in.c, rh, rw}, bytes, NULL};
    } else {
        read_array(images_path, bytes, size, &a);
        if (a.kind == 'i') die("%s: images must be uint8 or float32", images_path);
    }
    im = image_view(images_path, &a, in.c);
    check_size(images_path, &im, &in);
    resizer rs = {0};
    const int resize = resizes(&im, &in);
    if (resize && in.h != in.w)
        die("%s: resizing takes a square model input, this one is %dx%d", model_path, in.h, in.w);
    if (resize) rs = make_resizer(&im, &in);

    int64_t *labels = NULL;
    uint8_t *label_bytes = NULL;
    array la = {0};
    if (labels_path) {
        label_bytes = read_all(labels_path, &size);
        read_array(labels_path, label_bytes, size, &la);
        if (la.ndim != 1 || la.kind == 'f')
            die("%s: labels must be a 1-d integer array", labels_path);
        if (la.dims[0] != im.n)
            die("%s: %lld labels for %lld images", labels_path, (long long)la.dims[0],
                (long long)im.n);
        labels = xmalloc(sizeof(int64_t) * (size_t)im.n);
        for (int64_t i = 0; i < im.n; i++)
            labels[i] =
                la.kind == 'u' ? ((const uint8_t *)la.data)[i] : ((const int64_t *)la.data)[i];
    }

    if (batch > im.n) batch = im.n;
    const size_t per_image = (size_t)in.c * in.h * in.w;
    float *x = xmalloc(sizeof(float) * per_image * (size_t)batch);
    float *logits = xmalloc(sizeof(float) * (size_t)classes * (size_t)batch);
    int *best = xmalloc(sizeof(int) * (size_t)top);

    if (bench) {
        preprocess(&im, 0, (int)batch, &in, resize ? &rs : NULL, x);
        if (onebit_run(m, x, (int)batch, logits, err, sizeof err)) die("%s", err); /* warm-up */
        double *ms = xmalloc(sizeof(double) * (size_t)bench);
        for (long r = 0; r < bench; r++) {
            const double t0 = now_ms();
            onebit_run(m, x, (int)batch, logits, err, sizeof err);
            ms[r] = now_ms() - t0;
        }
        qsort(ms, (size_t)bench, sizeof(double), compare_double);
        const double median = ms[bench / 2];
        printf("batch %ld: %.3f ms per batch, %.4f ms per image (median of %ld, best %.3f ms; "
               "kernel %s, %ld thread%s)\n",
               batch, median, median / batch, bench, ms[0], onebit_kernel(m), threads,
               threads > 1 ? "s" : "");
        free(ms);
    } else {
        int64_t hits1 = 0, hitsk = 0;
        for (int64_t first = 0; first < im.n; first += batch) {
            const int n = (int)(im.n - first < batch ? im.n - first : batch);
            preprocess(&im, first, n, &in, resize ? &rs : NULL, x);
            if (onebit_run(m, x, n, logits, err, sizeof err)) die("%s", err);
            for (int i = 0; i < n; i++) {
                top_k(logits + (size_t)i * classes, classes, (int)top, best);
                if (labels) {
                    hits1 += best[0] == labels[first + i];
                    for (int j = 0; j < top; j++) hitsk += best[j] == labels[first + i];
                    continue;
                }
                for (int j = 0; j < top; j++) printf(j ? " %d" : "%d", best[j]);
                putchar('\n');
            }
        }
        if (labels) {
            printf("top-1 %.2f%% (%lld/%lld)\n", 100.0 * hits1 / im.n, (long long)hits1,
                   (long long)im.n);
            if (top > 1)
                printf("top-%ld %.2f%% (%lld/%lld)\n", top, 100.0 * hitsk / im.n, (long long)hitsk,
                       (long long)im.n);
        }
    }
    if (resize) free_axis(&rs.rows), free_axis(&rs.cols), free(rs.tmp);
    free(best);
    free(logits);
    free(x);
    free(labels);
    free(la.owned);
    free(label_bytes);
    free(a.owned);
    free(bytes);
    onebit_free(m);
    return 0;
}
