/* An LD_PRELOAD library that makes a process see an AVX2-only x86-64 CPU on a CPU with
 * AVX-512: the peer race of benchmarks/deploy_speed.py (--as-avx2) runs Larq Compute Engine
 * and onebit-run under it, so that each side's own CPU detection (XNNPack's and ruy's cpuinfo,
 * GCC's __builtin_cpu_supports) picks its AVX2 code, as on the AVX2-only CPUs the goal is set
 * for (AMD Zen 3).
 *
 * How: Linux's CPUID faulting (arch_prctl ARCH_SET_CPUID, /proc/cpuinfo flag cpuid_fault; kept
 * across fork and clone, reset by execve) makes every CPUID instruction of the process raise
 * SIGSEGV; the handler turns faulting off, runs the CPUID, turns it back on, clears the
 * AVX-512 and AMX feature bits of leaf 7 and steps over the instruction. Any other SIGSEGV
 * gets the default action (the process dies as it would have). Code that ran CPUID before
 * this library's constructor keeps what it saw: glibc (its string functions), so run the
 * process with GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX512F,... as deploy_speed.py does, and
 * ifunc resolvers of the executable (onebit-run's float ops follow --kernel instead). A process
 * that installs its own SIGSEGV handler later (Python's faulthandler, a JVM) takes the CPUID
 * faults itself and dies: neither LCE's interpreter nor onebit-run does.
 *
 * Build: gcc -O2 -shared -fPIC -o hide_avx512.so benchmarks/hide_avx512.c
 * Check: HIDE_AVX512_REPORT=1 LD_PRELOAD=./hide_avx512.so <program> prints one line on stderr
 * when it is active and one at exit with the number of CPUIDs it emulated. Without CPUID faulting the constructor prints why and exits 3.
 */
#define _GNU_SOURCE
#include <cpuid.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#ifndef ARCH_GET_CPUID
#define ARCH_GET_CPUID 0x1011
#define ARCH_SET_CPUID 0x1012
#endif

/* Leaf 7 sub-leaf 0: EBX AVX512F 16, DQ 17, IFMA 21, PF 26, ER 27, CD 28, BW 30, VL 31. */
#define L7_EBX ((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | \
                (1u << 30) | (1u << 31))
/* ECX: VBMI 1, VBMI2 6, VNNI 11, BITALG 12, VPOPCNTDQ 14. */
#define L7_ECX ((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14))
/* EDX: 4VNNIW 2, 4FMAPS 3, VP2INTERSECT 8, AVX10 19, AMX-BF16 22, AVX512-FP16 23, AMX-TILE 24,
 * AMX-INT8 25. */
#define L7_EDX ((1u << 2) | (1u << 3) | (1u << 8) | (1u << 19) | (1u << 22) | (1u << 23) | \
                (1u << 24) | (1u << 25))
/* Sub-leaf 1 EAX: AVX512-BF16 5, AMX-FP16 21. */
#define L7_1_EAX ((1u << 5) | (1u << 21))

static volatile unsigned long emulated; /* CPUID instructions run by the handler */

static long set_cpuid(int enabled) {
    return syscall(SYS_arch_prctl, ARCH_SET_CPUID, enabled);
}

static void on_segv(int sig, siginfo_t *info, void *context) {
    ucontext_t *uc = context;
    greg_t *r = uc->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)r[REG_RIP];
    if (ip[0] != 0x0f || ip[1] != 0xa2) { /* not CPUID: die as without this library */
        (void)info;
        signal(sig, SIG_DFL);
        return; /* the instruction faults again, now with the default action */
    }
    const unsigned leaf = (unsigned)r[REG_RAX], sub = (unsigned)r[REG_RCX];
    unsigned a, b, c, d;
    set_cpuid(1);
    __cpuid_count(leaf, sub, a, b, c, d);
    set_cpuid(0);
    if (leaf == 7 && sub == 0) b &= ~L7_EBX, c &= ~L7_ECX, d &= ~L7_EDX;
    if (leaf == 7 && sub == 1) a &= ~L7_1_EAX;
    if (leaf == 0x24) a = b = c = d = 0; /* AVX10 */
    r[REG_RAX] = a, r[REG_RBX] = b, r[REG_RCX] = c, r[REG_RDX] = d;
    r[REG_RIP] += 2;
    emulated++;
}

static void report(void) {
    fprintf(stderr, "hide_avx512: %lu CPUID instructions emulated in process %d\n", emulated,
            (int)getpid());
}

__attribute__((constructor)) static void hide_avx512(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGSEGV, &sa, NULL) != 0 || set_cpuid(0) != 0) {
        fprintf(stderr, "hide_avx512: this kernel or CPU has no CPUID faulting (/proc/cpuinfo "
                        "flag cpuid_fault); cannot hide AVX-512\n");
        exit(3);
    }
    if (getenv("HIDE_AVX512_REPORT")) {
        unsigned a, b, c, d;
        __cpuid_count(7, 0, a, b, c, d);
        fprintf(stderr, "hide_avx512: active (leaf 7 ebx %08x: avx512f %u, avx2 %u)\n", b,
                (b >> 16) & 1, (b >> 5) & 1);
        atexit(report);
    }
}
