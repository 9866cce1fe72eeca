/*
 * insn_driver.c: runs one allocation workload a given number of times, for
 * counting instructions under `valgrind --tool=callgrind` (callgrind.sh).
 *
 *   insn_driver WORKLOAD PAIRS [--stub]
 *
 * WORKLOAD is live64 (64 live blocks of 16, 32, ..., 256 B, cycling, freed
 * in LIFO order, repeated), pair32, pair1k or pair64k (malloc+free of one
 * size).  PAIRS malloc+free pairs run after a fixed warm-up, through plain
 * malloc/free, so LD_PRELOAD chooses the allocator.  callgrind.sh runs it
 * with PAIRS = K and 2K: the difference in instructions / K is the exact
 * cost of one pair, startup and warm-up cancelled.  --stub runs the same
 * loops against a do-nothing allocator: the driver's own share of a pair.
 *
 * On stderr it says which object's malloc the process calls (dladdr), and,
 * if read_mem_stats is visible (spanalloc), how many mallocs it counted:
 * evidence that the preloaded allocator, not valgrind, served the calls.
 */
#include <dlfcn.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spanalloc.h" /* struct mem_stats only; read_mem_stats via dlsym */

static inline void escape(void *p)
{
    __asm__ volatile("" : : "r"(p) : "memory");
}

static _Alignas(64) char stub_block[65536];

__attribute__((noinline)) static void *stub_malloc(size_t size)
{
    (void)size;
    void *p = stub_block;
    escape(p);
    return p;
}

__attribute__((noinline)) static void stub_free(void *p)
{
    escape(p);
}

#define LIVE 64

/* One set of workloads per allocator function pair; noinline so the
 * counted loop is the same code whatever is around it. */
#define DEFINE_WORKLOADS(SUFFIX, MALLOC, FREE)                                 \
    __attribute__((noinline)) static void live64_##SUFFIX(size_t pairs)        \
    {                                                                          \
        void *ptrs[LIVE];                                                      \
        for (size_t r = 0; r < pairs / LIVE; r++) {                            \
            for (size_t i = 0; i < LIVE; i++) {                                \
                char *p = MALLOC(16 + 16 * (i % 16));                          \
                p[0] = 1;                                                      \
                ptrs[i] = p;                                                   \
            }                                                                  \
            escape(ptrs);                                                      \
            for (size_t i = LIVE; i-- > 0;)                                    \
                FREE(ptrs[i]);                                                 \
        }                                                                      \
    }                                                                          \
    __attribute__((noinline)) static void pair_##SUFFIX(size_t size,           \
                                                        size_t pairs)          \
    {                                                                          \
        for (size_t i = 0; i < pairs; i++) {                                   \
            char *p = MALLOC(size);                                            \
            p[0] = 1;                                                          \
            escape(p);                                                         \
            FREE(p);                                                           \
        }                                                                      \
    }

DEFINE_WORKLOADS(real, malloc, free)
DEFINE_WORKLOADS(stub, stub_malloc, stub_free)

static int run(const char *workload, size_t pairs, int stub)
{
    if (strcmp(workload, "live64") == 0) {
        (stub ? live64_stub : live64_real)(pairs);
        return 0;
    }
    size_t size;
    if (strcmp(workload, "pair32") == 0)
        size = 32;
    else if (strcmp(workload, "pair1k") == 0)
        size = 1024;
    else if (strcmp(workload, "pair64k") == 0)
        size = 65536;
    else if (strcmp(workload, "pair1m") == 0)
        size = 1 << 20;
    else
        return -1;
    (stub ? pair_stub : pair_real)(size, pairs);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s live64|pair32|pair1k|pair64k|pair1m PAIRS [--stub]\n", argv[0]);
        return 2;
    }
    const char *workload = argv[1];
    size_t pairs = strtoull(argv[2], NULL, 10);
    int stub = argc > 3 && strcmp(argv[3], "--stub") == 0;
    if (pairs % LIVE != 0) {
        fprintf(stderr, "PAIRS must be a multiple of %d\n", LIVE);
        return 2;
    }

    void (*rms)(struct mem_stats *) =
        (void (*)(struct mem_stats *))(uintptr_t)dlsym(RTLD_DEFAULT, "read_mem_stats");
    static struct mem_stats before, after;
    if (rms)
        rms(&before);

    /* One small block stays live throughout, as in any real program: a
     * heap that never served anything else can take paths a used one
     * does not (spanalloc's large pair costs ~850 insns on a pristine heap
     * and ~30x that once one small span exists). */
    void *keep = malloc(100);
    escape(keep);

    /* Warm-up: the same workload, a fixed amount, so both runs start from
     * the same steady state. */
    size_t warmup = strcmp(workload, "pair64k") == 0 || strcmp(workload, "pair1m") == 0 ? 4096 : 64 * 1024;
    if (run(workload, warmup, stub) != 0) {
        fprintf(stderr, "unknown workload %s\n", workload);
        return 2;
    }
    run(workload, pairs, stub);

    Dl_info info;
    void *sym = dlsym(RTLD_DEFAULT, "malloc");
    const char *from = sym && dladdr(sym, &info) && info.dli_fname ? info.dli_fname : "?";
    void *probe = malloc(100);
    fprintf(stderr, "insn_driver: %s pairs=%zu%s malloc_from=%s usable(100)=%zu", workload,
            pairs, stub ? " (stub)" : "", from, malloc_usable_size(probe));
    free(probe);
    if (rms) {
        rms(&after);
        fprintf(stderr, " spanalloc_mallocs_delta=%llu",
                (unsigned long long)(after.mallocs - before.mallocs));
    }
    fputc('\n', stderr);
    free(keep);
    return 0;
}
