/* Timing of one binary conv layer (bconv_timing.h). */
#define _POSIX_C_SOURCE 199309L
#include "bconv_timing.h"

#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "../src/bconv.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

double ob_bench_seconds(int variant, int n, int cin, int cout, int h, int w, int k, int stride,
                        int pad, int threads, double min_total_s) {
    const ob_bconv_geom g = {cin, cout, k, k, stride, stride, pad, pad, 1, 1};
    const size_t kc = (size_t)(cin + 63) / 64, nwb = (size_t)cout * k * k * kc;
    const size_t nx = (size_t)n * cin * h * w;
    uint64_t *wbits = malloc(sizeof(uint64_t) * nwb);
    float *scale = malloc(sizeof(float) * cout), *bias = malloc(sizeof(float) * cout);
    float *x = malloc(sizeof(float) * nx);
    double best = -1.0;
    ob_bconv *c = NULL;
    float *y = NULL;
    void *scratch = NULL;
    if (!wbits || !scale || !bias || !x)
        goto done;
    uint64_t s = 12345;
    for (size_t i = 0; i < nwb; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        wbits[i] = s;
        if (cin % 64 && i % kc == kc - 1)
            wbits[i] &= ((uint64_t)1 << (cin % 64)) - 1;
    }
    for (int i = 0; i < cout; i++) {
        scale[i] = 0.01f * (float)(i % 7 + 1);
        bias[i] = 0.1f * (float)(i % 5);
    }
    for (size_t i = 0; i < nx; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        x[i] = (float)(int64_t)(s >> 40) / (float)(1 << 23) - 1.0f;
    }
    c = ob_bconv_prepare(&g, wbits, scale, bias, NULL, variant);
    int ho, wo;
    if (c == NULL || ob_bconv_out_hw(c, h, w, &ho, &wo) < 0)
        goto done;
    const size_t bytes = ob_bconv_scratch_bytes(c, n, h, w);
    y = malloc(sizeof(float) * (size_t)n * cout * ho * wo);
    scratch = malloc(bytes);
    if (!y || !scratch)
        goto done;
    ob_bconv_run(c, x, n, h, w, y, scratch, threads);
    const double start = now();
    for (int rep = 0; rep < 5 || now() - start < min_total_s; rep++) {
        const double t0 = now();
        ob_bconv_run(c, x, n, h, w, y, scratch, threads);
        const double t = now() - t0;
        if (best < 0 || t < best)
            best = t;
    }
done:
    ob_bconv_free(c);
    free(wbits), free(scale), free(bias), free(x), free(y), free(scratch);
    return best;
}
