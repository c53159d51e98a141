/* The loaded model of the onebit runtime: what load.c builds from a graph file and run.c
 * executes. Internal; the public API is include/onebit.h, the file format
 * src/onebit/deploy/graph.py. */
#ifndef ONEBIT_MODEL_H
#define ONEBIT_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "bconv.h"
#include "onebit.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the onebit runtime reads tensors in place: it needs a little-endian CPU"
#endif

/* OB_OMP(omp parallel for ...) is the pragma with OpenMP and nothing without (no warning). */
#ifdef _OPENMP
#define OB_OMP(x) _Pragma(#x)
#else
#define OB_OMP(x)
#endif

/* The file format (graph.py: HEADER, TENSOR, NODE, ALIGN, MAX_*). */
#define OB_MAGIC       "ONEBITGR"
#define OB_VERSION     2
#define OB_HEADER_SIZE 152
#define OB_TENSOR_SIZE 40
#define OB_NODE_SIZE   128
#define OB_CRC_FROM    32
#define OB_ALIGN       64
#define OB_MAX_INPUTS  4
#define OB_MAX_TENSORS 6
#define OB_MAX_IATTR   12
#define OB_MAX_FATTR   4

enum { OB_F32 = 1, OB_U64 = 2, OB_I32 = 3 };

/* Op codes (graph.py: OPS). */
enum {
    OP_CONV2D = 1,
    OP_BCONV2D,
    OP_LINEAR,
    OP_AFFINE,
    OP_ADD,
    OP_MUL,
    OP_RELU,
    OP_SIGMOID,
    OP_HARDTANH,
    OP_PRELU,
    OP_LEAKY_CLIP,
    OP_MAXPOOL2D,
    OP_AVGPOOL2D,
    OP_GLOBAL_AVGPOOL,
    OP_FLATTEN,
    OP_CONCAT,
    OP_CHANNEL_SHUFFLE,
    OP_SUBSAMPLE_PAD,
    OP_RESCALE_HW,
    OP_COUNT
};

/* Limits that keep a hostile file from making the runtime allocate or loop without bound. */
#define OB_MAX_NODES        (1 << 14)
#define OB_MAX_TENSOR_COUNT (1 << 16)
#define OB_MAX_DIM          (1 << 24)    /* a tensor or value dimension */
#define OB_MAX_ATTR         (1 << 16)    /* a kernel side, stride, padding, dilation, group count */
#define OB_MAX_VALUE_FLOATS (1u << 26)   /* one value at batch 1 (256 MiB) */
#define OB_MAX_ARENA_BYTES  (1ull << 29) /* the arena at batch 1 (512 MiB) */

typedef struct {
    int dtype, ndim;
    int64_t dims[4]; /* dims past ndim are 1 */
    const void *data;
    size_t nbytes;
} ob_tensor;

typedef struct {
    int c, h, w; /* a value is (N, c, h, w) float32 */
} ob_shape;

/* A convolution or pooling window. */
typedef struct {
    int kh, kw, sh, sw, ph, pw, dh, dw;
} ob_window;

typedef struct {
    int op, n_inputs;
    int inputs[OB_MAX_INPUTS];          /* value ids: 0 the graph input, k + 1 node k */
    const ob_tensor *t[OB_MAX_TENSORS]; /* by slot, NULL where absent */
    int32_t ia[OB_MAX_IATTR];
    float fa[OB_MAX_FATTR];
    ob_shape out;
    ob_window win;   /* conv and pool ops */
    size_t offset;   /* of its value in the arena, floats per image */
    ob_bconv *bconv; /* bconv2d: the prepared kernel */
    /* Fusion (load.c: fuse): a conv2d or bconv2d followed by element-wise ops whose values have
     * no other reader runs as one node at the place of the last op, with the ops as its
     * epilogue; the conv and the ops before the last are skipped and their values never
     * written. */
    int run;                      /* 0: fused into a later node */
    int exec;                     /* the node whose op runs here: itself, or the fused conv */
    ob_epilogue ep;               /* the fused ops (ep.op[i].res is set per run) */
    int ep_value[OB_EP_MAX];      /* an add's other value */
} ob_node;

struct onebit_model {
    ob_shape in;
    int num_classes;
    onebit_input_record record;
    int n_tensors, n_nodes;
    ob_tensor *tensors;
    ob_node *nodes;
    void *data;          /* the file's data section (64-byte aligned); tensors point in it */
    size_t value_floats; /* the values' part of the arena, floats per image */
    void *arena;         /* values (n * value_floats floats), then the ops' scratch */
    size_t arena_bytes;
    int threads, kernel;
    int fused; /* nodes fused away (ONEBIT_FUSE=0 at load: none) */
    /* ONEBIT_PROFILE set (not "0") at load: every node is timed, and onebit_free prints the
     * totals per op and per node to stderr (profile.c). */
    int profile;
    double *prof_ns;  /* [n_nodes] nanoseconds spent in each node over all runs */
    double *prof_min; /* [n_nodes] the least ns per image of one chunk (a noisy machine's best) */
    long prof_runs, prof_images, prof_chunk;
};

/* Memory for the arena and the file's data (free() frees it): 64-byte aligned; past 2 MiB on
 * 2 MiB boundaries and, on Linux, advised into huge pages (where transparent huge pages are
 * "madvise", the default of many distributions), so that a value, scratch or weight tensor of
 * several MiB is a few TLB entries, not hundreds (Bi-Real-Net-18: about 3 % faster). */
void *ob_alloc_big(size_t bytes);
/* Bytes of scratch node needs for a batch of n (0 for most ops, SIZE_MAX if it overflows). */
size_t ob_node_scratch_bytes(const onebit_model *m, const ob_node *node, int n);
/* The arena a batch of n needs: values, then the largest scratch; nonzero if it overflows. */
int ob_arena_bytes(const onebit_model *m, int n, size_t *bytes);
/* Grows the arena to workers arenas of batch n if it is smaller (the only allocation of a run). */
int ob_arena_reserve(onebit_model *m, int n, int workers, char *err, size_t err_len);
/* The values node k reads when it runs (its op's inputs and its epilogue's adds) into v, which
 * has room for OB_MAX_INPUTS + OB_EP_MAX; 0 for a node fused away. */
int ob_node_inputs(const onebit_model *m, int k, int *v);
/* The shape of value v (0: the input). */
ob_shape ob_value_shape(const onebit_model *m, int v);
/* The op's name ("conv2d", ...), "op?" for an unknown code. */
const char *ob_op_name(int op);
/* Profiling (profile.c): the clock in ns; the report to stderr (at onebit_free). */
double ob_now_ns(void);
void ob_profile_report(const onebit_model *m);
/* snprintf into err (which may be NULL); returns code. */
int ob_fail(char *err, size_t err_len, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
