/* Fuzz driver of the loader: loads every file named on the command line and, when one loads,
 * runs it on a batch of 1 and of 3 with each kernel. Prints "STATUS PATH" per file (STATUS is
 * onebit_status_name's); exits 0 unless a run of a loaded model fails. Built with the
 * sanitizers (make -C runtime asan), any out-of-bounds access, leak or undefined behaviour
 * aborts it with a report instead. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "onebit.h"

static int run(onebit_model *m, int n, const char *path) {
    int c, h, w;
    char err[512];
    onebit_input_shape(m, &c, &h, &w);
    const size_t count = (size_t)n * c * h * w;
    float *x = malloc(sizeof(float) * count);
    float *y = malloc(sizeof(float) * (size_t)n * onebit_num_outputs(m));
    if (x == NULL || y == NULL) return ONEBIT_E_NOMEM;
    for (size_t i = 0; i < count; i++) x[i] = sinf((float)i * 0.37f) * 2.0f;
    const int rc = onebit_run(m, x, n, y, err, sizeof err);
    if (rc) fprintf(stderr, "%s: run of batch %d: %s\n", path, n, err);
    free(x);
    free(y);
    return rc;
}

int main(int argc, char **argv) {
    int failed = 0;
    for (int i = 1; i < argc; i++) {
        onebit_model *m = NULL;
        char err[512];
        const int rc = onebit_load_file(argv[i], &m, err, sizeof err);
        printf("%s %s\n", onebit_status_name(rc), argv[i]);
        if (rc != ONEBIT_OK) {
            if (err[0] == '\0') {
                fprintf(stderr, "%s: %s without a message\n", argv[i], onebit_status_name(rc));
                failed = 1;
            }
            continue;
        }
        static const char *const kernels[] = {"auto", "portable"};
        for (int k = 0; k < 2; k++) {
            if (onebit_set_kernel(m, kernels[k]) != ONEBIT_OK) continue;
            failed |= run(m, 1, argv[i]) != ONEBIT_OK;
            failed |= run(m, 3, argv[i]) != ONEBIT_OK;
        }
        onebit_free(m);
    }
    return failed;
}
