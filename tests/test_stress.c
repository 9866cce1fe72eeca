/*
 * Threads against the prefixed API.
 *
 * 1. Four threads do random operations (malloc, calloc, realloc, aligned
 *    allocations, usable_size) on blocks that carry a pattern derived from
 *    (thread, serial) over their whole requested size, and hand about a third
 *    of the blocks they dispose of to another thread, which checks the
 *    pattern before freeing (cross-thread frees).  Afterwards every block is
 *    freed and the stats must balance exactly.
 * 2. Waves of short-lived threads that each fill their cache in every size
 *    class: thread exit must hand the cached blocks back, so the heap stops
 *    growing after the first wave and mcache_inuse drops back after joins.
 *
 * cmocka is not thread-safe: workers record the first failure and stop; the
 * main thread asserts.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_helpers.h"

/* mcache_inuse without the CPU caches (set up as threads first run on a
 * CPU, and kept): what the threads' own caches hold, 0 in per-CPU mode. */
uint64_t sa_percpu_sys_bytes(void);
#define THREAD_CACHES_INUSE(st) ((st).mcache_inuse - sa_percpu_sys_bytes())

#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define UNDER_VALGRIND() (RUNNING_ON_VALGRIND != 0)
#else
#define UNDER_VALGRIND() 0
#endif

/* ---- Pattern: byte i depends only on (seed, i) */

static inline uint64_t pattern_word(uint64_t seed, size_t i)
{
    uint64_t x = (seed + 1) * 0x9E3779B97F4A7C15ull ^ (uint64_t)(i >> 3) * 0xD6E8FEB86659FD93ull;
    return x ^ (x >> 29);
}

static void fill(void *p, size_t n, uint64_t seed)
{
    unsigned char *b = p;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w = pattern_word(seed, i);
        memcpy(b + i, &w, 8);
    }
    for (; i < n; i++)
        b[i] = (unsigned char)(pattern_word(seed, i) >> ((i & 7) * 8));
}

static bool intact(const void *p, size_t n, uint64_t seed)
{
    const unsigned char *b = p;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w = pattern_word(seed, i), got;
        memcpy(&got, b + i, 8);
        if (got != w)
            return false;
    }
    for (; i < n; i++)
        if (b[i] != (unsigned char)(pattern_word(seed, i) >> ((i & 7) * 8)))
            return false;
    return true;
}

static bool all_zero(const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != 0)
            return false;
    return true;
}

/* ---- 1. Random operations with cross-thread frees */

enum { NTHREADS = 4, NSLOTS = 512 };

struct block {
    void *p;
    size_t size;   /* requested bytes, all carrying the pattern */
    uint64_t seed; /* (thread << 40) | serial */
};

/* Blocks handed to a thread; storage from glibc's malloc (not measured). */
struct inbox {
    pthread_mutex_t lock;
    struct block *items;
    size_t n, cap;
};

struct worker {
    int id;
    unsigned rng;
    uint64_t rounds;
    uint64_t serial;
    uint64_t sent, received, local_frees, reallocs, ops;
    bool failed;
    char why[256];
};

static struct inbox inboxes[NTHREADS];
static struct worker workers[NTHREADS];
static pthread_barrier_t producers_done;

#define FAIL(w, ...)                                                   \
    do {                                                               \
        if (!(w)->failed) {                                            \
            (w)->failed = true;                                        \
            snprintf((w)->why, sizeof((w)->why), __VA_ARGS__);         \
        }                                                              \
    } while (0)

static unsigned next_rand(struct worker *w)
{
    return (unsigned)rand_r(&w->rng);
}

/* 1 B .. 64 KiB, skewed to small: 70% <= 256 B, 22% <= 4 KiB, 8% above. */
static size_t random_size(struct worker *w)
{
    unsigned r = next_rand(w) % 100;
    if (r < 70)
        return 1 + next_rand(w) % 256;
    if (r < 92)
        return 257 + next_rand(w) % (4096 - 256);
    return 4097 + next_rand(w) % (65536 - 4096);
}

static bool check_block(struct worker *w, const struct block *b, const char *when)
{
    if (!intact(b->p, b->size, b->seed)) {
        FAIL(w, "thread %d: pattern of block %p (size %zu, owner %u, serial %llu) broken %s",
             w->id, b->p, b->size, (unsigned)(b->seed >> 40),
             (unsigned long long)(b->seed & ((1ull << 40) - 1)), when);
        return false;
    }
    if (spanalloc_usable_size(b->p) < b->size) {
        FAIL(w, "thread %d: usable_size %zu < %zu", w->id, spanalloc_usable_size(b->p), b->size);
        return false;
    }
    return true;
}

static bool new_block(struct worker *w, struct block *b)
{
    size_t size = random_size(w);
    void *p = NULL;
    size_t align = 16;
    unsigned kind = next_rand(w) % 10;
    switch (kind) {
    case 5:
    case 6:
        p = spanalloc_calloc(1, size);
        if (p != NULL && !all_zero(p, size)) {
            FAIL(w, "thread %d: calloc(%zu) block %p not zeroed", w->id, size, p);
            return false;
        }
        break;
    case 7:
        align = (size_t)16 << (next_rand(w) % 9); /* 16 .. 4096 */
        p = spanalloc_aligned_alloc(align, size);
        break;
    case 8:
        align = (size_t)16 << (next_rand(w) % 9);
        if (spanalloc_posix_memalign(&p, align, size) != 0)
            p = NULL;
        break;
    case 9:
        p = spanalloc_realloc(NULL, size);
        break;
    default:
        p = spanalloc_malloc(size);
        break;
    }
    if (p == NULL) {
        FAIL(w, "thread %d: allocation of %zu (kind %u) failed", w->id, size, kind);
        return false;
    }
    if (((uintptr_t)p & (align - 1)) != 0) {
        FAIL(w, "thread %d: block %p not aligned to %zu", w->id, p, align);
        return false;
    }
    if (spanalloc_usable_size(p) < size) {
        FAIL(w, "thread %d: usable_size(%p) %zu < %zu", w->id, p, spanalloc_usable_size(p), size);
        return false;
    }
    b->p = p;
    b->size = size;
    b->seed = ((uint64_t)w->id << 40) | w->serial++;
    fill(p, size, b->seed);
    w->ops++;
    return true;
}

static void send_block(struct worker *w, struct block *b)
{
    int to = (w->id + 1 + (int)(next_rand(w) % (NTHREADS - 1))) % NTHREADS;
    struct inbox *in = &inboxes[to];
    pthread_mutex_lock(&in->lock);
    if (in->n == in->cap) {
        size_t cap = in->cap ? in->cap * 2 : 256;
        struct block *items = realloc(in->items, cap * sizeof(*items));
        if (items == NULL)
            abort();
        in->items = items;
        in->cap = cap;
    }
    in->items[in->n++] = *b;
    pthread_mutex_unlock(&in->lock);
    b->p = NULL;
    w->sent++;
}

/* Free what other threads handed us, checking each block first. */
static void drain_inbox(struct worker *w)
{
    struct inbox *in = &inboxes[w->id];
    struct block batch[128];
    for (;;) {
        size_t n = 0;
        pthread_mutex_lock(&in->lock);
        while (in->n > 0 && n < 128)
            batch[n++] = in->items[--in->n];
        pthread_mutex_unlock(&in->lock);
        if (n == 0)
            return;
        for (size_t i = 0; i < n; i++) {
            if ((batch[i].seed >> 40) == (uint64_t)w->id)
                FAIL(w, "thread %d received its own block", w->id);
            check_block(w, &batch[i], "when received");
            spanalloc_free(batch[i].p);
            w->received++;
        }
    }
}

static void *random_worker(void *arg)
{
    struct worker *w = arg;
    struct block *slots = calloc(NSLOTS, sizeof(*slots));
    if (slots == NULL)
        abort();
    for (uint64_t round = 0; round < w->rounds && !w->failed; round++) {
        struct block *b = &slots[next_rand(w) % NSLOTS];
        if (b->p == NULL) {
            new_block(w, b);
        } else {
            unsigned act = next_rand(w) % 10;
            if (act < 4) { /* free here */
                check_block(w, b, "before free");
                spanalloc_free(b->p);
                b->p = NULL;
                w->local_frees++;
            } else if (act < 6) { /* free on another thread: ~1/3 of disposals */
                send_block(w, b);
            } else if (act < 8) { /* grow or shrink */
                if (!check_block(w, b, "before realloc"))
                    break;
                size_t size = random_size(w);
                void *q = spanalloc_realloc(b->p, size);
                if (q == NULL) {
                    FAIL(w, "thread %d: realloc to %zu failed", w->id, size);
                    break;
                }
                size_t keep = size < b->size ? size : b->size;
                if (!intact(q, keep, b->seed))
                    FAIL(w, "thread %d: realloc %zu -> %zu lost content", w->id, b->size, size);
                b->p = q;
                b->size = size;
                b->seed = ((uint64_t)w->id << 40) | w->serial++;
                fill(q, size, b->seed);
                w->reallocs++;
            } else {
                check_block(w, b, "in place");
            }
            w->ops++;
        }
        if ((round & 63) == 0)
            drain_inbox(w);
    }
    for (int i = 0; i < NSLOTS; i++) {
        if (slots[i].p != NULL) {
            check_block(w, &slots[i], "at the end");
            spanalloc_free(slots[i].p);
            w->local_frees++;
        }
    }
    free(slots);
    /* Nobody sends after this point: drain what is left. */
    pthread_barrier_wait(&producers_done);
    drain_inbox(w);
    return NULL;
}

static void random_operations_with_cross_thread_frees(void **state)
{
    (void)state;
    uint64_t rounds = UNDER_VALGRIND() ? 15000 : 300000;
    struct mem_stats base = stats_now();
    const uint64_t base_threads_inuse = THREAD_CACHES_INUSE(base);
    assert_stats_invariants(&base);
    pthread_barrier_init(&producers_done, NULL, NTHREADS);
    pthread_t t[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) /* all before any worker sends to one */
        pthread_mutex_init(&inboxes[i].lock, NULL);
    for (int i = 0; i < NTHREADS; i++) {
        workers[i] = (struct worker){.id = i, .rng = 1000u + (unsigned)i * 7919u, .rounds = rounds};
        assert_int_equal(pthread_create(&t[i], NULL, random_worker, &workers[i]), 0);
    }
    for (int i = 0; i < NTHREADS; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    pthread_barrier_destroy(&producers_done);

    uint64_t sent = 0, received = 0, reallocs = 0, ops = 0;
    for (int i = 0; i < NTHREADS; i++) {
        if (workers[i].failed)
            fail_msg("%s", workers[i].why);
        sent += workers[i].sent;
        received += workers[i].received;
        reallocs += workers[i].reallocs;
        ops += workers[i].ops;
        assert_int_equal(inboxes[i].n, 0);
        free(inboxes[i].items);
        inboxes[i] = (struct inbox){0};
    }
    print_message("%llu operations, %llu blocks freed by another thread, %llu reallocs\n",
                  (unsigned long long)ops, (unsigned long long)sent,
                  (unsigned long long)reallocs);
    assert_int_equal(sent, received);
    assert_true(sent > 0);

    struct mem_stats end = stats_now();
    assert_stats_invariants(&end);
    assert_int_equal(end.heap_objects, base.heap_objects);
    assert_int_equal(end.heap_alloc, base.heap_alloc);
    assert_int_equal(end.mallocs - base.mallocs, end.frees - base.frees);
    assert_true(end.mallocs - base.mallocs >= ops / 4);
    assert_int_equal(THREAD_CACHES_INUSE(end), base_threads_inuse);

    free_os_memory();
    struct mem_stats released = stats_now();
    assert_stats_invariants(&released);
    assert_int_equal(released.heap_objects, base.heap_objects);
}

/* ---- 2. Short-lived threads give their caches back */

static uint64_t class_sizes[SPANALLOC_NUM_SIZE_CLASSES];
static _Atomic int short_lived_failures;

/* Fill the cache in every class (more than a cache holds, then free it all),
 * plus a few large blocks: nothing stays allocated. */
static void *short_lived(void *arg)
{
    unsigned id = (unsigned)(uintptr_t)arg;
    void *blocks[2048];
    for (int c = 1; c < SPANALLOC_NUM_SIZE_CLASSES; c++) {
        size_t size = class_sizes[c];
        size_t n = (size_t)(65536 / size);
        if (n < 4)
            n = 4; /* more than a cache list holds (at most 256, 32 KiB) */
        if (n > 2048)
            n = 2048;
        for (size_t i = 0; i < n; i++) {
            unsigned char *p = spanalloc_malloc(size);
            if (p == NULL) {
                atomic_fetch_add(&short_lived_failures, 1);
                return NULL;
            }
            p[0] = (unsigned char)id;
            p[size - 1] = (unsigned char)i;
            blocks[i] = p;
        }
        for (size_t i = 0; i < n; i++) {
            unsigned char *p = blocks[i];
            if (p[0] != (unsigned char)id || p[size - 1] != (unsigned char)i)
                atomic_fetch_add(&short_lived_failures, 1);
            spanalloc_free(p);
        }
    }
    for (int i = 0; i < 4; i++) {
        void *p = spanalloc_malloc(40000 + (size_t)i * 70000);
        if (p == NULL)
            atomic_fetch_add(&short_lived_failures, 1);
        spanalloc_free(p);
    }
    return NULL;
}

static void short_lived_threads_return_their_caches(void **state)
{
    (void)state;
    int waves = UNDER_VALGRIND() ? 3 : 8;
    int per_wave = UNDER_VALGRIND() ? 6 : 16;
    /* The heap grows in steps of 64 MiB, and 16 threads caching up to
     * 4.95 MiB each (medium classes included) may need one step more when a
     * later wave overlaps more than the first did; a cache not returned by
     * each thread (80 MiB a wave) still shows within two waves. */
    const uint64_t slack = (64 << 20) + (8 << 20);
    struct mem_stats base = stats_now();
    const uint64_t base_threads_inuse = THREAD_CACHES_INUSE(base);
    for (int c = 1; c < SPANALLOC_NUM_SIZE_CLASSES; c++)
        class_sizes[c] = base.by_size[c].size;
    assert_int_equal(class_sizes[SPANALLOC_NUM_SIZE_CLASSES - 1], 262144);

    uint64_t first_heap_sys = 0, first_mcache_sys = 0;
    for (int wave = 0; wave < waves; wave++) {
        pthread_t t[16];
        for (int i = 0; i < per_wave; i++)
            assert_int_equal(pthread_create(&t[i], NULL, short_lived,
                                            (void *)(uintptr_t)(wave * per_wave + i)),
                             0);
        for (int i = 0; i < per_wave; i++)
            assert_int_equal(pthread_join(t[i], NULL), 0);
        assert_int_equal(atomic_load(&short_lived_failures), 0);

        struct mem_stats st = stats_now();
        assert_stats_invariants(&st);
        assert_int_equal(st.heap_objects, base.heap_objects);
        assert_int_equal(st.heap_alloc, base.heap_alloc);
        /* Every exited thread's cache record is back. */
        assert_int_equal(THREAD_CACHES_INUSE(st), base_threads_inuse);
        if (wave == 0) {
            first_heap_sys = st.heap_sys;
            first_mcache_sys = st.mcache_sys - sa_percpu_sys_bytes();
            /* The threads did use memory: small classes mallocs moved. */
            assert_true(st.mallocs - base.mallocs >= (uint64_t)per_wave * 1000);
        } else {
            if (st.heap_sys > first_heap_sys + slack)
                fail_msg("wave %d: heap_sys %llu grew past the first wave's %llu", wave,
                         (unsigned long long)st.heap_sys, (unsigned long long)first_heap_sys);
            assert_true(st.mcache_sys - sa_percpu_sys_bytes() <= first_mcache_sys); /* records are reused */
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(random_operations_with_cross_thread_frees),
        cmocka_unit_test(short_lived_threads_return_their_caches),
    };
    return cmocka_run_group_tests_name("stress", tests, NULL, NULL);
}
