/* Timing of one binary conv layer, for bconv_bench.c and benchmarks/runtime_kernels.py (ctypes). */
#ifndef ONEBIT_BCONV_TIMING_H
#define ONEBIT_BCONV_TIMING_H

/* Best seconds of one ob_bconv_run of a (n, cin, h, w) random input through a k x k conv with
 * cout outputs, stride and padding as given, over repeats that last at least min_total_s (5 at
 * least, after one warm-up); -1 if the variant is not runnable or the shape is invalid. */
double ob_bench_seconds(int variant, int n, int cin, int cout, int h, int w, int k, int stride,
                        int pad, int threads, double min_total_s);

#endif
