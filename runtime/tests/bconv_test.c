/* Every kernel variant of runtime/src/bconv.c against a naive reference convolution, bit for
 * bit, on fixed and random shapes; plus the argument checks of the interface.
 *
 *   bconv_test [random_cases [seed]]      exit status 0 when every case matches
 *
 * Built and run by tests/test_bconv_kernels.py (with -fsanitize=address,undefined, and for
 * aarch64 under qemu when a cross compiler is installed).
 */
#include "../src/bconv.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng(void) { /* splitmix64 */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int rand_int(int lo, int hi) { return lo + (int)(rng() % (uint64_t)(hi - lo + 1)); }

/* Mostly uniform in [-1, 1), with exact zeros (sign(0) = +1), negative zeros and NaN (-1). */
static float rand_input(void) {
    const int r = (int)(rng() % 64);
    if (r == 0)
        return 0.0f;
    if (r == 1)
        return -0.0f;
    if (r == 2)
        return NAN;
    return (float)((double)(rng() >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

typedef struct {
    int n, h, w;
    ob_bconv_geom g;
    int with_act_bias;
} Case;

/* y[b][co][oy][ox] = (float)dot * scale + bias, dot over the in-bounds taps only. */
static void reference(const Case *t, const float *x, const uint64_t *wbits, const float *scale,
                      const float *bias, const float *act_bias, int ho, int wo, float *y) {
    const ob_bconv_geom *g = &t->g;
    const int kc = (g->cin + 63) / 64;
    for (int b = 0; b < t->n; b++)
        for (int co = 0; co < g->cout; co++)
            for (int oy = 0; oy < ho; oy++)
                for (int ox = 0; ox < wo; ox++) {
                    int dot = 0;
                    for (int ky = 0; ky < g->kh; ky++)
                        for (int kx = 0; kx < g->kw; kx++) {
                            const int iy = oy * g->sh - g->ph + ky * g->dh;
                            const int ix = ox * g->sw - g->pw + kx * g->dw;
                            if (iy < 0 || iy >= t->h || ix < 0 || ix >= t->w)
                                continue;
                            for (int ci = 0; ci < g->cin; ci++) {
                                const float v = x[((b * g->cin + ci) * t->h + iy) * t->w + ix] +
                                                (act_bias ? act_bias[ci] : 0.0f);
                                const int a = v >= 0.0f ? 1 : -1;
                                const uint64_t word =
                                    wbits[((co * g->kh + ky) * g->kw + kx) * kc + ci / 64];
                                dot += a * ((word >> (ci % 64)) & 1 ? -1 : 1);
                            }
                        }
                    volatile float prod = (float)dot * scale[co]; /* two roundings, no FMA */
                    y[((b * g->cout + co) * ho + oy) * wo + ox] = prod + bias[co];
                }
}

static int failures = 0;

static void check(int ok, const char *what, const Case *t) {
    if (ok)
        return;
    failures++;
    const ob_bconv_geom *g = &t->g;
    fprintf(stderr,
            "FAIL %s: n %d h %d w %d cin %d cout %d k %dx%d s %d,%d p %d,%d d %d,%d act_bias %d\n",
            what, t->n, t->h, t->w, g->cin, g->cout, g->kh, g->kw, g->sh, g->sw, g->ph, g->pw,
            g->dh, g->dw, t->with_act_bias);
}

/* Runs one case through every runnable variant (1 and 3 threads); 1 if it was valid. */
static int run_case(const Case *t) {
    const ob_bconv_geom *g = &t->g;
    const int kc = (g->cin + 63) / 64;
    const int hp = t->h + 2 * g->ph, wp = t->w + 2 * g->pw;
    if (g->dh * (g->kh - 1) >= hp || g->dw * (g->kw - 1) >= wp)
        return 0;
    const int ho = (hp - g->dh * (g->kh - 1) - 1) / g->sh + 1;
    const int wo = (wp - g->dw * (g->kw - 1) - 1) / g->sw + 1;
    const size_t nx = (size_t)t->n * g->cin * t->h * t->w, ny = (size_t)t->n * g->cout * ho * wo;
    const size_t nwb = (size_t)g->cout * g->kh * g->kw * kc;
    float *x = malloc(sizeof(float) * nx), *ref = malloc(sizeof(float) * ny);
    float *y = malloc(sizeof(float) * ny);
    uint64_t *wbits = malloc(sizeof(uint64_t) * nwb);
    float *scale = malloc(sizeof(float) * g->cout), *bias = malloc(sizeof(float) * g->cout);
    float *act_bias = malloc(sizeof(float) * g->cin);
    if (!x || !ref || !y || !wbits || !scale || !bias || !act_bias) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    for (size_t i = 0; i < nx; i++)
        x[i] = rand_input();
    for (size_t i = 0; i < nwb; i++) {
        wbits[i] = rng();
        const int valid = g->cin - (int)(i % kc) * 64; /* bits past cin are 0 */
        if (valid < 64)
            wbits[i] &= ((uint64_t)1 << valid) - 1;
    }
    for (int i = 0; i < g->cout; i++) {
        scale[i] = (float)(rng() % 1000) / 997.0f + 0.001f;
        bias[i] = (float)((int)(rng() % 2001) - 1000) / 313.0f;
    }
    for (int i = 0; i < g->cin; i++)
        act_bias[i] = (float)((int)(rng() % 201) - 100) / 150.0f;
    const float *ab = t->with_act_bias ? act_bias : NULL;
    reference(t, x, wbits, scale, bias, ab, ho, wo, ref);

    const char *names[] = {"portable", "avx2", "avx512", "neon"};
    for (int k = 0; k < 4; k++) {
        const int v = ob_kernel_variant(names[k]);
        if (v < 0)
            continue;
        ob_bconv *c = ob_bconv_prepare(g, wbits, scale, bias, ab, v);
        check(c != NULL, "prepare", t);
        if (c == NULL)
            continue;
        int gho = 0, gwo = 0;
        check(ob_bconv_out_hw(c, t->h, t->w, &gho, &gwo) == 0 && gho == ho && gwo == wo, "out_hw",
              t);
        const size_t bytes = ob_bconv_scratch_bytes(c, t->n, t->h, t->w);
        check(bytes > 0, "scratch size", t);
        void *scratch = malloc(bytes);
        for (int threads = 1; threads <= 3; threads += 2) {
            memset(y, 0xff, sizeof(float) * ny); /* NaN: an unwritten output cannot match */
            ob_bconv_run(c, x, t->n, t->h, t->w, y, scratch, threads);
            char what[64];
            snprintf(what, sizeof what, "%s, %d thread(s)", names[k], threads);
            check(memcmp(y, ref, sizeof(float) * ny) == 0, what, t);
        }
        free(scratch);
        ob_bconv_free(c);
    }
    free(x), free(ref), free(y), free(wbits), free(scale), free(bias), free(act_bias);
    return 1;
}

static void interface_checks(void) {
    const Case none = {0};
    const ob_bconv_geom good = {3, 5, 3, 3, 1, 1, 1, 1, 1, 1};
    uint64_t wbits[5 * 9] = {0};
    float scale[5] = {1, 1, 1, 1, 1}, bias[5] = {0};
    check(ob_kernel_variant("portable") == OB_KERNEL_PORTABLE, "portable is runnable", &none);
    const int best = ob_kernel_variant("auto");
    check(best >= 0 && strcmp(ob_kernel_name(best), "unknown") != 0, "auto names a variant", &none);
    check(ob_kernel_variant("sse9") == -1 && ob_kernel_variant(NULL) == -1, "unknown name", &none);
    check(strcmp(ob_kernel_name(-1), "unknown") == 0 && strcmp(ob_kernel_name(99), "unknown") == 0,
          "name of a bad index", &none);
    for (int field = 0; field < 10; field++) { /* every entry out of range is refused */
        ob_bconv_geom bad = good;
        ((int *)&bad)[field] = field == 6 || field == 7 ? -1 : 0;
        check(ob_bconv_prepare(&bad, wbits, scale, bias, NULL, 0) == NULL, "bad geometry", &none);
    }
    check(ob_bconv_prepare(&good, wbits, scale, bias, NULL, 99) == NULL, "bad variant", &none);
    check(ob_bconv_prepare(&good, NULL, scale, bias, NULL, 0) == NULL, "NULL weights", &none);
    ob_bconv *c = ob_bconv_prepare(&good, wbits, scale, bias, NULL, 0);
    check(c != NULL, "good geometry", &none);
    int ho, wo;
    check(ob_bconv_scratch_bytes(c, 0, 4, 4) == 0 && ob_bconv_scratch_bytes(c, 1, 0, 4) == 0,
          "scratch of an empty input", &none);
    const ob_bconv_geom big = {3, 5, 9, 9, 1, 1, 0, 0, 1, 1}; /* 9x9 kernel, 8x8 input */
    uint64_t big_bits[5 * 81] = {0};
    ob_bconv *cb = ob_bconv_prepare(&big, big_bits, scale, bias, NULL, 0);
    check(cb != NULL && ob_bconv_out_hw(cb, 8, 8, &ho, &wo) == -1, "kernel larger than input",
          &none);
    check(ob_bconv_scratch_bytes(cb, 1, 8, 8) == 0, "scratch when the kernel does not fit", &none);
    check(ob_bconv_scratch_bytes(c, 1 << 30, 1 << 30, 1 << 30) == 0 || sizeof(size_t) > 8,
          "scratch size overflow", &none);
    ob_bconv_free(c);
    ob_bconv_free(cb);
    ob_bconv_free(NULL);
}

int main(int argc, char **argv) {
    const int random_cases = argc > 1 ? atoi(argv[1]) : 300;
    if (argc > 2)
        rng_state = strtoull(argv[2], NULL, 10);
    interface_checks();
    /* fixed cases: the channel counts around word boundaries, every kernel size, padding,
     * stride and dilation, the ResNet shapes */
    const int cins[] = {1, 3, 16, 63, 64, 65, 130};
    const int ks[][2] = {{1, 1}, {3, 3}, {5, 5}, {7, 7}, {1, 3}, {3, 1}, {3, 5}, {7, 3}};
    int cases = 0;
    for (int i = 0; i < 7; i++)
        for (int j = 0; j < 8; j++) {
            const int s = 1 + (i + j) % 2, p = (i + j) % 3, d = 1 + (j % 3 == 2);
            Case t = {1 + (i + j) % 2,
                      9 + j,
                      7 + i,
                      {cins[i], 1 + (i * 5 + j * 3) % 19, ks[j][0], ks[j][1], s, 3 - s, p,
                       (p + 1) % 3, d, 3 - d},
                      (i + j) % 2};
            cases += run_case(&t);
        }
    const Case resnet[] = {
        {1, 32, 32, {16, 16, 3, 3, 1, 1, 1, 1, 1, 1}, 1},
        {1, 16, 16, {32, 32, 3, 3, 1, 1, 1, 1, 1, 1}, 0},
        {2, 8, 8, {64, 64, 3, 3, 1, 1, 1, 1, 1, 1}, 1},
        {1, 14, 14, {128, 256, 3, 3, 2, 2, 1, 1, 1, 1}, 1},
        {1, 7, 7, {512, 24, 3, 3, 1, 1, 1, 1, 1, 1}, 0},
        {1, 9, 9, {64, 128, 1, 1, 2, 2, 0, 0, 1, 1}, 1},
        {3, 1, 1, {300, 10, 1, 1, 1, 1, 0, 0, 1, 1}, 1},
        {1, 12, 12, {16, 16, 3, 3, 1, 1, 2, 2, 2, 2}, 1},
    };
    for (size_t i = 0; i < sizeof resnet / sizeof resnet[0]; i++)
        cases += run_case(&resnet[i]);
    /* wide rows: groups of 8 output pixels inside one row, with and without border taps */
    for (int i = 0; i < 7; i++)
        for (int v = 0; v < 4; v++) {
            const int s = 1 + v % 2, d = 1 + v / 2, k = 1 + 2 * ((i + v) % 3);
            Case t = {1, 4 + v, 30 + 3 * i, {cins[i], 9 + i, k, 3, s, s, v % 3, v, d, d}, v % 2};
            cases += run_case(&t);
        }
    for (int r = 0; r < random_cases; r++) {
        const int ksz[] = {1, 3, 5, 7};
        Case t = {rand_int(1, 2),
                  rand_int(1, 12),
                  rand_int(1, 12),
                  {cins[rand_int(0, 6)], rand_int(1, 20), ksz[rand_int(0, 3)], ksz[rand_int(0, 3)],
                   rand_int(1, 2), rand_int(1, 2), rand_int(0, 2), rand_int(0, 2), rand_int(1, 2),
                   rand_int(1, 2)},
                  rand_int(0, 1)};
        if (rng() % 4 == 0)
            t.g.cin = rand_int(1, 200);
        cases += run_case(&t);
    }
    const char *names[] = {"portable", "avx2", "avx512", "neon"};
    printf("bconv_test: %d cases, variants:", cases);
    for (int k = 0; k < 4; k++)
        if (ob_kernel_variant(names[k]) >= 0)
            printf(" %s", names[k]);
    printf("; %d failure(s)\n", failures);
    return failures != 0;
}
