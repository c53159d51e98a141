/* Speed of every runnable bconv variant on ResNet-18 and ResNet-20 layer shapes (batch 1, 3x3,
 * stride 1, padding 1), best of repeats: microseconds and binary GMAC/s per layer.
 *
 *   bconv_bench [threads [seconds_per_cell]]
 */
#include <stdio.h>
#include <stdlib.h>

#include "../src/bconv.h"
#include "bconv_timing.h"

int main(int argc, char **argv) {
    const int threads = argc > 1 ? atoi(argv[1]) : 1;
    const double secs = argc > 2 ? atof(argv[2]) : 0.3;
    const struct {
        const char *net;
        int c, hw;
    } layers[] = {
        {"resnet18", 64, 56}, {"resnet18", 128, 28}, {"resnet18", 256, 14}, {"resnet18", 512, 7},
        {"resnet20", 16, 32}, {"resnet20", 32, 16},  {"resnet20", 64, 8},
    };
    const char *names[] = {"portable", "avx2", "avx512", "neon"};
    printf("bconv_bench: %d thread(s), 3x3 stride 1 pad 1, batch 1; us per run (binary GMAC/s)\n",
           threads);
    printf("%-8s %-11s", "net", "layer");
    for (int v = 0; v < 4; v++)
        if (ob_kernel_variant(names[v]) >= 0)
            printf(" %20s", names[v]);
    printf("\n");
    for (size_t i = 0; i < sizeof layers / sizeof layers[0]; i++) {
        const int c = layers[i].c, hw = layers[i].hw;
        const double macs = (double)c * c * 9 * hw * hw;
        char name[32];
        snprintf(name, sizeof name, "%dx%dx%d", c, hw, hw);
        printf("%-8s %-11s", layers[i].net, name);
        for (int v = 0; v < 4; v++) {
            if (ob_kernel_variant(names[v]) < 0)
                continue;
            const double t = ob_bench_seconds(v, 1, c, c, hw, hw, 3, 1, 1, threads, secs);
            printf(" %10.1f (%7.1f)", t * 1e6, macs / t * 1e-9);
        }
        printf("\n");
        fflush(stdout);
    }
    return 0;
}
