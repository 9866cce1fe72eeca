/*
 * soak.c: a steady mixed workload for N minutes, to show that memory stays
 * flat once the heap has reached its working size (no creeping
 * fragmentation, no leak in the tiers, no growth of metadata).
 *
 * Two threads each keep a pool of slots whose sizes are drawn once (80%
 * 16..512 B, 18% 512 B..16 KiB, 2% 32..256 KiB); every step takes two random
 * slots, swaps their sizes and gives each a new block (written in full, its
 * tag checked when it is freed).  One block in 64 is handed to the other
 * thread through a mailbox and freed there (the slot gets a fresh one).  The
 * live heap is therefore constant but for the mailboxes' few MiB, while sizes
 * keep moving between addresses: RSS and heap_sys must stay flat, and any
 * growth is the allocator's (fragmentation, a leak in the tiers, metadata).
 *
 * Every --interval seconds (default 10) the main thread prints RSS (from
 * /proc/self/statm), sys, heap_sys, heap_sys - heap_released ("resident"),
 * heap_inuse, heap_alloc, heap_released and the operations per second.
 * Samples after the warm-up (--warmup, default 60 s) must stay within
 * --tolerance percent (default 5) of their maximum, for RSS and heap_sys;
 * otherwise the exit status is 1.  Not part of CI.
 *
 *   ninja -C build tests/fuzz/soak && ./build/tests/fuzz/soak --minutes 5
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "spanalloc.h"

#define NTHREADS 2
#define SLOTS 10000
#define MAILBOX 1024
#define MiB (1024.0 * 1024.0)

struct block_hdr {
    uint64_t tag;
    uint64_t size;
};

static _Atomic bool stop;
static _Atomic uint64_t ops_done[NTHREADS];
static _Atomic(void *) mailbox[NTHREADS][MAILBOX]; /* [receiver][i] */
static _Atomic uint64_t failures;

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static size_t pick_size(uint64_t *rng)
{
    uint64_t r = xorshift(rng);
    unsigned pct = (unsigned)(r % 100);
    uint64_t v = r >> 8;
    if (pct < 80)
        return 16 + v % (512 - 16 + 1);
    if (pct < 98)
        return 512 + v % (16 * 1024 - 512 + 1);
    return 32 * 1024 + v % (224 * 1024 + 1);
}

static uint64_t tag_of(const void *p, size_t size)
{
    return ((uint64_t)(uintptr_t)p * 0x9e3779b97f4a7c15ull) ^ size;
}

static void *make_block(size_t size)
{
    unsigned char *p = spanalloc_malloc(size);
    if (p == NULL) {
        atomic_fetch_add(&failures, 1);
        return NULL;
    }
    memset(p + sizeof(struct block_hdr), (int)(size & 0xff), size - sizeof(struct block_hdr));
    struct block_hdr *h = (struct block_hdr *)p;
    h->tag = tag_of(p, size);
    h->size = size;
    return p;
}

static void drop_block(void *p)
{
    if (p == NULL)
        return;
    struct block_hdr *h = p;
    unsigned char *bytes = p;
    if (h->tag != tag_of(p, h->size) ||
        (h->size > sizeof(*h) && bytes[h->size - 1] != (unsigned char)(h->size & 0xff))) {
        fprintf(stderr, "soak: block %p corrupted\n", p);
        abort();
    }
    spanalloc_free(p);
}

/* Replace one slot's block; n counts the steps (every 64th hands the new
 * block to the other thread and takes a fresh one of the same size). */
static void refill_slot(void **slots, size_t i, size_t size, int self, int other, uint64_t *rng,
                        uint64_t n)
{
    drop_block(slots[i]);
    slots[i] = make_block(size);
    if ((n & 63) == 0 && slots[i] != NULL) {
        /* Hand this one to the other thread; free what it handed us. */
        size_t m = xorshift(rng) % MAILBOX;
        drop_block(atomic_exchange(&mailbox[other][m], slots[i]));
        drop_block(atomic_exchange(&mailbox[self][m], NULL));
        slots[i] = make_block(size);
    }
}

/* Each step takes two slots and gives each a new block of the other's size:
 * the multiset of sizes drawn at the start never changes, so the live heap
 * is constant but for the mailboxes (a few MiB, half full on average), while
 * every size keeps moving to new addresses. */
static void *worker(void *arg)
{
    int self = (int)(intptr_t)arg;
    int other = (self + 1) % NTHREADS;
    uint64_t rng = 0x243f6a8885a308d3ull * (uint64_t)(self + 1);
    void **slots = calloc(SLOTS, sizeof(void *));
    size_t *sizes = calloc(SLOTS, sizeof(size_t));
    if (slots == NULL || sizes == NULL)
        abort();
    for (size_t i = 0; i < SLOTS; i++)
        sizes[i] = pick_size(&rng);
    uint64_t n = 0;
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        size_t i = xorshift(&rng) % SLOTS, j = xorshift(&rng) % SLOTS;
        size_t size_i = sizes[i];
        sizes[i] = sizes[j];
        sizes[j] = size_i;
        refill_slot(slots, i, sizes[i], self, other, &rng, n++);
        refill_slot(slots, j, sizes[j], self, other, &rng, n++);
        if ((n & 1023) == 0)
            atomic_store_explicit(&ops_done[self], n, memory_order_relaxed);
    }
    for (size_t i = 0; i < SLOTS; i++)
        drop_block(slots[i]);
    free(slots);
    free(sizes);
    return NULL;
}

static double rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long size = 0, resident = 0;
    if (f != NULL) {
        if (fscanf(f, "%lu %lu", &size, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    return (double)resident * (double)sysconf(_SC_PAGESIZE);
}

static void usage(void)
{
    fprintf(stderr, "usage: soak [--minutes N] [--interval S] [--warmup S] [--tolerance PCT]\n");
    exit(2);
}

struct range {
    double min, max;
    int n;
};

static void range_add(struct range *r, double v)
{
    if (r->n == 0 || v < r->min)
        r->min = v;
    if (r->n == 0 || v > r->max)
        r->max = v;
    r->n++;
}

static double spread_pct(const struct range *r)
{
    return r->max > 0 ? 100.0 * (r->max - r->min) / r->max : 0.0;
}

int main(int argc, char **argv)
{
    double minutes = 5, interval = 10, warmup = 60, tolerance = 5;
    for (int i = 1; i < argc; i++) {
        double *dst = NULL;
        if (strcmp(argv[i], "--minutes") == 0)
            dst = &minutes;
        else if (strcmp(argv[i], "--interval") == 0)
            dst = &interval;
        else if (strcmp(argv[i], "--warmup") == 0)
            dst = &warmup;
        else if (strcmp(argv[i], "--tolerance") == 0)
            dst = &tolerance;
        if (dst == NULL || i + 1 >= argc)
            usage();
        char *end;
        *dst = strtod(argv[++i], &end);
        if (*end != '\0' || *dst < 0)
            usage();
    }
    if (interval <= 0 || minutes * 60 <= warmup)
        usage();

    printf("soak: %d threads, %.1f min, sample every %.0f s, warm-up %.0f s, tolerance %.1f%%\n",
           NTHREADS, minutes, interval, warmup, tolerance);
    printf("%6s %10s %10s %10s %10s %10s %10s %10s %12s\n", "t(s)", "rss MiB", "sys MiB",
           "heapsys", "resident", "inuse", "alloc", "released", "ops/s");
    fflush(stdout);

    pthread_t threads[NTHREADS];
    for (int t = 0; t < NTHREADS; t++)
        if (pthread_create(&threads[t], NULL, worker, (void *)(intptr_t)t) != 0) {
            perror("pthread_create");
            return 2;
        }

    struct range rss_r = {0}, sys_r = {0}, res_r = {0};
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    uint64_t last_ops = 0;
    int samples = (int)(minutes * 60 / interval + 0.5);
    for (int k = 1; k <= samples; k++) {
        struct timespec next = start;
        double at = k * interval;
        next.tv_sec += (time_t)at;
        next.tv_nsec += (long)((at - (double)(time_t)at) * 1e9);
        if (next.tv_nsec >= 1000000000L) {
            next.tv_sec++;
            next.tv_nsec -= 1000000000L;
        }
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR)
            ;
        struct mem_stats st;
        read_mem_stats(&st);
        double rss = rss_bytes();
        uint64_t ops = 0;
        for (int t = 0; t < NTHREADS; t++)
            ops += atomic_load(&ops_done[t]);
        double resident = (double)(st.heap_sys - st.heap_released);
        printf("%6.0f %10.1f %10.1f %10.1f %10.1f %10.1f %10.1f %10.1f %12.0f\n", at, rss / MiB,
               (double)st.sys / MiB, (double)st.heap_sys / MiB, resident / MiB,
               (double)st.heap_inuse / MiB,
               (double)st.heap_alloc / MiB, (double)st.heap_released / MiB,
               (double)(ops - last_ops) / interval);
        fflush(stdout);
        last_ops = ops;
        if (at > warmup) {
            range_add(&rss_r, rss);
            range_add(&sys_r, (double)st.heap_sys);
            range_add(&res_r, resident);
        }
    }
    atomic_store(&stop, true);
    for (int t = 0; t < NTHREADS; t++)
        pthread_join(threads[t], NULL);
    for (int r = 0; r < NTHREADS; r++)
        for (int i = 0; i < MAILBOX; i++)
            drop_block(atomic_exchange(&mailbox[r][i], NULL));

    struct mem_stats end;
    read_mem_stats(&end);
    bool ok = spread_pct(&rss_r) <= tolerance && spread_pct(&sys_r) <= tolerance &&
              atomic_load(&failures) == 0 && end.heap_objects == 0;
    printf("after warm-up (%d samples): rss %.1f..%.1f MiB (spread %.2f%%), "
           "heap_sys %.1f..%.1f MiB (spread %.2f%%); for information: heap_sys - "
           "heap_released %.1f..%.1f MiB (spread %.2f%%); failed allocations %llu; "
           "objects left %llu\n",
           rss_r.n, rss_r.min / MiB, rss_r.max / MiB, spread_pct(&rss_r), sys_r.min / MiB,
           sys_r.max / MiB, spread_pct(&sys_r), res_r.min / MiB, res_r.max / MiB,
           spread_pct(&res_r), (unsigned long long)atomic_load(&failures),
           (unsigned long long)end.heap_objects);
    printf("soak: %s\n", ok ? "PASS (flat)" : "FAIL");
    return ok ? 0 : 1;
}
