/*
 * bench_common.h: helpers shared by the benchmark programs.
 *
 * The programs never link libspanalloc: the allocator under test is chosen
 * with LD_PRELOAD, so one binary is measured under every allocator.  This
 * header finds out at run time which allocator is in place (by the symbols it
 * exports) and which call gives its free memory back to the OS, and offers a
 * clock, a small PRNG and a malloc-free reader of /proc/self/smaps_rollup.
 */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#include <dlfcn.h>
#include <stdbool.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../include/spanalloc.h"

/* ---- time */

static inline uint64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline void bench_sleep_until_ns(uint64_t deadline)
{
    struct timespec ts = {(time_t)(deadline / 1000000000ull), (long)(deadline % 1000000000ull)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) != 0) {
    }
}

/* ---- PRNG: xoshiro256** seeded by splitmix64 (deterministic per seed) */

struct bench_rng {
    uint64_t s[4];
};

static inline uint64_t bench_splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline void bench_rng_seed(struct bench_rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = bench_splitmix64(&seed);
}

static inline uint64_t bench_rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static inline uint64_t bench_rng_next(struct bench_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = bench_rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = bench_rotl(s[3], 45);
    return result;
}

/* Uniform in [lo, hi] (inclusive). */
static inline uint64_t bench_rng_range(struct bench_rng *r, uint64_t lo, uint64_t hi)
{
    return lo + bench_rng_next(r) % (hi - lo + 1);
}

/* About log-uniform in [lo, hi]: as many objects of 16..31 B as of 512..1023 B,
 * which is closer to real programs than a flat distribution. */
static inline uint64_t bench_rng_logsize(struct bench_rng *r, uint64_t lo, uint64_t hi)
{
    int lo_bits = 63 - __builtin_clzll(lo);
    int hi_bits = hi > 1 ? 63 - __builtin_clzll(hi - 1) : 0; /* top octave holds hi-1 */
    int b = (int)bench_rng_range(r, (uint64_t)lo_bits, (uint64_t)hi_bits);
    uint64_t base = 1ull << b;
    uint64_t v = base + bench_rng_next(r) % base;
    return v < lo ? lo : v > hi ? hi : v;
}

/* ---- block stamps: every workload checks a block before freeing it */

/* A block's stamp: its size and a token in the first 16 bytes (when it fits),
 * and a tag byte at the end.  Cheap to write, cheap to check. */
static inline unsigned char bench_tail_tag(uint64_t token)
{
    return (unsigned char)((token * 0x9e3779b97f4a7c15ull) >> 56) | 1u;
}

static inline void bench_stamp(unsigned char *p, uint64_t size, uint64_t token)
{
    if (size > 16) {
        memcpy(p, &size, 8);
        memcpy(p + 8, &token, 8);
    } else {
        p[0] = bench_tail_tag(token);
    }
    p[size - 1] = bench_tail_tag(token);
}

static inline bool bench_stamp_ok(const unsigned char *p, uint64_t size, uint64_t token)
{
    if (size > 16) {
        uint64_t s, t;
        memcpy(&s, p, 8);
        memcpy(&t, p + 8, 8);
        if (s != size || t != token)
            return false;
    } else if (p[0] != bench_tail_tag(token)) {
        return false;
    }
    return p[size - 1] == bench_tail_tag(token);
}

/* ---- which allocator is preloaded, and how to make it release memory */

typedef int (*bench_mallctl_fn)(const char *, void *, size_t *, void *, size_t);

struct bench_alloc {
    const char *name;    /* spanalloc, jemalloc, tcmalloc, mimalloc, glibc */
    const char *release; /* the call release() makes, for the record */
    void (*read_stats)(struct mem_stats *); /* spanalloc only, else NULL */
    void (*free_os)(void);                  /* spanalloc */
    bench_mallctl_fn mallctl;               /* jemalloc */
    void (*tc_release)(void);               /* tcmalloc */
    void (*mi_collect)(int);                /* mimalloc (bool force) */
    int (*trim)(size_t);                    /* glibc */
};

/* Look everything up once, before any thread that must not allocate starts
 * (dlsym may allocate).  spanalloc is tested first: it also exports mallctl. */
static inline void bench_alloc_detect(struct bench_alloc *a)
{
    memset(a, 0, sizeof(*a));
    void *rs = dlsym(RTLD_DEFAULT, "read_mem_stats");
    void *fo = dlsym(RTLD_DEFAULT, "free_os_memory");
    void *mc = dlsym(RTLD_DEFAULT, "mallctl");
    void *tc = dlsym(RTLD_DEFAULT, "MallocExtension_ReleaseFreeMemory");
    void *mi = dlsym(RTLD_DEFAULT, "mi_collect");
    void *tr = dlsym(RTLD_DEFAULT, "malloc_trim");
    memcpy(&a->read_stats, &rs, sizeof(rs));
    if (fo != NULL) {
        a->name = "spanalloc";
        a->release = "free_os_memory()";
        memcpy(&a->free_os, &fo, sizeof(fo));
    } else if (mc != NULL) {
        a->name = "jemalloc";
        a->release = "mallctl(\"thread.tcache.flush\")+mallctl(\"arena.4096.purge\")";
        memcpy(&a->mallctl, &mc, sizeof(mc));
    } else if (tc != NULL) {
        a->name = "tcmalloc";
        a->release = "MallocExtension_ReleaseFreeMemory()";
        memcpy(&a->tc_release, &tc, sizeof(tc));
    } else if (mi != NULL) {
        a->name = "mimalloc";
        a->release = "mi_collect(true)";
        memcpy(&a->mi_collect, &mi, sizeof(mi));
    } else if (tr != NULL) {
        a->name = "glibc";
        a->release = "malloc_trim(0)";
        memcpy(&a->trim, &tr, sizeof(tr));
    } else {
        a->name = "unknown";
        a->release = "none";
    }
    if (fo == NULL)
        a->read_stats = NULL; /* only trust read_mem_stats from spanalloc */
}

/* Ask the allocator to give its free memory back to the OS now. */
static inline void bench_alloc_release(const struct bench_alloc *a)
{
    if (a->free_os != NULL) {
        a->free_os();
    } else if (a->mallctl != NULL) {
        a->mallctl("thread.tcache.flush", NULL, NULL, NULL, 0);
        a->mallctl("arena.4096.purge", NULL, NULL, NULL, 0); /* MALLCTL_ARENAS_ALL */
    } else if (a->tc_release != NULL) {
        a->tc_release();
    } else if (a->mi_collect != NULL) {
        a->mi_collect(1);
    } else if (a->trim != NULL) {
        a->trim(0);
    }
}

/* ---- /proc/self/smaps_rollup without stdio or malloc (safe in a sampler) */

struct bench_mem {
    uint64_t rss;      /* bytes */
    uint64_t lazyfree; /* bytes */
};

static inline uint64_t bench_field_kb(const char *buf, const char *key)
{
    const char *p = strstr(buf, key);
    if (p == NULL)
        return 0;
    p += strlen(key);
    while (*p == ' ' || *p == '\t')
        p++;
    uint64_t v = 0;
    while (*p >= '0' && *p <= '9')
        v = v * 10 + (uint64_t)(*p++ - '0');
    return v;
}

/* Returns 0 on success.  buf must hold a few KiB (the rollup is ~1 KiB). */
static inline int bench_read_mem(struct bench_mem *m, char *buf, size_t cap)
{
    int fd = open("/proc/self/smaps_rollup", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t len = 0;
    for (;;) {
        ssize_t n = read(fd, buf + len, cap - 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
        if (len >= cap - 1)
            break;
    }
    close(fd);
    buf[len] = '\0';
    m->rss = bench_field_kb(buf, "\nRss:") * 1024;
    m->lazyfree = bench_field_kb(buf, "\nLazyFree:") * 1024;
    return 0;
}

/* Parse a non-negative number ("1.5", "200") for option opt; exits on garbage. */
static inline double bench_parse_number(const char *opt, const char *s)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end != '\0' || v < 0) {
        static const char msg[] = "bad number for option ";
        ssize_t ignored = write(2, msg, sizeof(msg) - 1);
        ignored = write(2, opt, strlen(opt));
        ignored = write(2, "\n", 1);
        (void)ignored;
        exit(2);
    }
    return v;
}

/* ---- Shared by the workload programs (workloads.c, threads.c): `prog`
 * names the program in messages. */

/* n scaled by --scale, at least 1. */
static inline uint64_t bench_scaled(uint64_t n, double scale)
{
    uint64_t v = (uint64_t)((double)n * scale);
    return v ? v : 1;
}

/* A block's contents changed: the allocator corrupted it.  Exit status 3. */
static inline _Noreturn void bench_corrupt(const char *prog, const char *wl, const char *alloc_name,
                                           const char *what, const void *p, uint64_t size)
{
    fprintf(stderr, "%s %s [%s]: CONTENT CHECK FAILED: %s (block %p, %" PRIu64 " bytes)\n",
            prog, wl, alloc_name, what, p, size);
    exit(3);
}

/* malloc that never returns NULL: a failure ends the run (exit status 1). */
static inline void *bench_xmalloc(const char *prog, size_t n)
{
    void *p = malloc(n);
    if (p == NULL) {
        fprintf(stderr, "%s: malloc(%zu) failed\n", prog, n);
        exit(1);
    }
    return p;
}

#endif /* BENCH_COMMON_H */
