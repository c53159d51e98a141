/* The float32 ops of the onebit runtime, with PyTorch's semantics (graph.py documents each).
 * Tensors are NCHW; n is the batch; every size has been checked at load. Internal. */
#ifndef ONEBIT_OPS_H
#define ONEBIT_OPS_H

#include <stddef.h>

#include "model.h"

/* The output side of a convolution (floor mode) or pooling window; < 1 if it does not fit. */
int64_t ob_conv_out(int64_t in, int k, int s, int p, int d);
int64_t ob_pool_out(int64_t in, int k, int s, int p, int ceil_mode);

/* y (n, cout, oh, ow) = conv2d(x (n, cin, h, w)); weight (cout, cin / groups, kh, kw), then the
 * fused ops of ep (NULL or none: nothing). scratch: ob_conv2d_scratch_floats floats, 64-byte
 * aligned (SIZE_MAX if that overflows). variant: a kernel variant of bconv.h (its GEMM tile;
 * every tile gives the same bits). */
size_t ob_conv2d_scratch_floats(ob_shape in, int groups, const ob_window *k, ob_shape out);
void ob_conv2d(const float *x, int n, ob_shape in, const float *weight, const float *bias,
               int groups, const ob_window *k, ob_shape out, float *y, float *scratch, int variant,
               int threads, const ob_epilogue *ep);
/* y (n, out) = x (n, in) weight (out, in)^T + bias */
void ob_linear(const float *x, int n, int in, const float *weight, const float *bias, int out,
               float *y, int variant, int threads);
void ob_affine(const float *x, int n, ob_shape s, const float *scale, const float *bias, float *y);
void ob_add(const float *a, const float *b, size_t count, float *y);
/* b is (n, c, h, w) when b_plane is h * w, (n, c, 1, 1) when it is 1 */
void ob_mul(const float *a, const float *b, int n, ob_shape s, int b_plane, float *y);
void ob_relu(const float *x, size_t count, float *y);
void ob_sigmoid(const float *x, size_t count, float *y);
void ob_hardtanh(const float *x, size_t count, float lo, float hi, float *y);
/* slope: c values, or one (n_slopes 1) */
void ob_prelu(const float *x, int n, ob_shape s, const float *slope, int n_slopes, float *y);
void ob_leaky_clip(const float *x, size_t count, float *y);
void ob_maxpool2d(const float *x, int n, ob_shape in, const ob_window *k, ob_shape out, float *y,
                  int variant, int threads);
void ob_avgpool2d(const float *x, int n, ob_shape in, const ob_window *k, int count_include_pad,
                  ob_shape out, float *y, int variant, int threads);
void ob_global_avgpool(const float *x, int n, ob_shape in, float *y);
/* inputs k = 0..count-1 of shapes s[k] (one h, w) stacked along the channels */
void ob_concat(const float *const *x, const ob_shape *s, int count, int n, float *y);
void ob_channel_shuffle(const float *x, int n, ob_shape s, int groups, float *y);
void ob_subsample_pad(const float *x, int n, ob_shape in, int sh, int sw, int pad_before,
                      ob_shape out, float *y);
/* y = x * scale, scale (c, h, w) the same for every image */
void ob_rescale_hw(const float *x, int n, ob_shape s, const float *scale, float *y);

#endif
