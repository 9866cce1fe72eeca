/*
 * tls.h: the per-thread words the fast path reads, in one initial-exec TLS
 * object.  In a shared library each such object costs malloc a load of its
 * offset from the GOT: the cache's two pointers (alloc/percpu.h) and the heap
 * profile's countdown (profile/sampler.h) share that one load.
 */
#ifndef SPANALLOC_TLS_H
#define SPANALLOC_TLS_H

#include <stdint.h>

/* The first words of an rseq area (glibc's struct rseq) that we use. */
struct sa_rseq_view {
    uint32_t cpu_id_start;
    uint32_t cpu_id;
    uint64_t rseq_cs;
};

/* Each thread's own: read and written by that thread only (its slow path
 * points cpu and table at the CPU slabs or at its own slab, and back at the
 * zero table at its exit; the sampler moves the countdown).  No lock. */
struct sa_tls_cache {
    struct sa_rseq_view *cpu;
    char *const *table;      /* slab of cpu c: table[c] (alloc/percpu.h) */
    uint64_t prof_countdown; /* bytes to the next heap-profile sample (profile/sampler.h) */
};
extern __thread struct sa_tls_cache sa_tls __attribute__((tls_model("initial-exec")));

#endif /* SPANALLOC_TLS_H */
