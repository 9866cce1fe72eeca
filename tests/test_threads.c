/*
 * Many threads and the stats: 64 threads at a time, 256 in all (each one
 * ends after its share of work and a new one takes its place), allocate,
 * free their own blocks and blocks other threads allocated (through a shared
 * exchange), while a monitor thread loops on read_mem_stats():
 *   - between any two reads, no cumulative counter goes back (frees and
 *     the per-class counters included);
 *   - every 64 reads it stops the world (every worker parks at a safe point,
 *     threads that ended are joined, so their caches were flushed), and then
 *     the invariants of docs/api.md hold exactly and heap_objects is the
 *     number of blocks the workers hold.
 * The monitor never asserts (cmocka's asserts belong to the main thread): it
 * records the first problem, which the test reports.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_helpers.h"

#define LIVE_THREADS 64
#define TOTAL_THREADS 256
#define OPS_PER_THREAD 3000
#define LOCAL_SLOTS 48
#define XCHG_SLOTS 4096
#define STOP_EVERY 64

/* ------------------------------------------------------------ blocks -- */

struct header {
    size_t size;
    uint64_t tag;
};

static _Atomic long live_blocks, corrupt_blocks, failed_allocs;

static uint64_t tag_of(size_t size, const void *p)
{
    return (uint64_t)size * 0x9E3779B97F4A7C15ull ^ (uint64_t)(uintptr_t)p;
}

static size_t random_size(unsigned *seed)
{
    unsigned r = rand_r(seed);
    switch (r % 32) {
    case 0:
        return 40000 + r % 160000; /* large: a span of its own */
    case 1: case 2: case 3:
        return 2048 + r % 30000;
    default:
        return sizeof(struct header) + r % 512;
    }
}

static unsigned char *new_block(unsigned *seed)
{
    size_t size = random_size(seed);
    unsigned char *p = spanalloc_malloc(size);
    if (p == NULL) {
        atomic_fetch_add(&failed_allocs, 1);
        return NULL;
    }
    struct header h = {size, tag_of(size, p)};
    memcpy(p, &h, sizeof(h));
    p[size - 1] = (unsigned char)h.tag;
    atomic_fetch_add(&live_blocks, 1);
    return p;
}

static void check_and_free(unsigned char *p)
{
    struct header h;
    memcpy(&h, p, sizeof(h));
    if (h.tag != tag_of(h.size, p) || p[h.size - 1] != (unsigned char)h.tag)
        atomic_fetch_add(&corrupt_blocks, 1);
    atomic_fetch_sub(&live_blocks, 1);
    spanalloc_free(p);
}

/* -------------------------------------------- the world and its stops -- */

enum slot_state { SLOT_EMPTY, SLOT_RUNNING, SLOT_FINISHING };

static pthread_mutex_t world = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t parked_cv = PTHREAD_COND_INITIALIZER; /* the monitor waits */
static pthread_cond_t resume_cv = PTHREAD_COND_INITIALIZER; /* parked workers wait */
static pthread_cond_t slot_cv = PTHREAD_COND_INITIALIZER;   /* the spawner waits */
static _Atomic bool pause_requested, monitor_done;
static int running, parked; /* under world */
static struct {
    pthread_t thread;
    enum slot_state state;
} slots[LIVE_THREADS];
static _Atomic(unsigned char *) exchange[XCHG_SLOTS];

static void park(void)
{
    pthread_mutex_lock(&world);
    parked++;
    pthread_cond_signal(&parked_cv);
    while (atomic_load(&pause_requested))
        pthread_cond_wait(&resume_cv, &world);
    parked--;
    pthread_mutex_unlock(&world);
}

/* Under world: join the threads that ended. */
static void join_finished(void)
{
    for (int i = 0; i < LIVE_THREADS; i++) {
        if (slots[i].state == SLOT_FINISHING) {
            pthread_join(slots[i].thread, NULL);
            slots[i].state = SLOT_EMPTY;
            running--;
        }
    }
}

static void *worker(void *arg)
{
    int slot = (int)((uintptr_t)arg % LIVE_THREADS);
    unsigned seed = (unsigned)(uintptr_t)arg * 2654435761u + 1;
    unsigned char *local[LOCAL_SLOTS] = {0};
    for (int op = 0; op < OPS_PER_THREAD; op++) {
        if (atomic_load_explicit(&pause_requested, memory_order_relaxed))
            park();
        unsigned r = rand_r(&seed);
        if (r % 4 == 0) {
            /* Hand a block to whoever takes this exchange slot next; free the
             * one found there (most likely another thread's). */
            unsigned char *old = atomic_exchange(&exchange[r % XCHG_SLOTS], new_block(&seed));
            if (old != NULL)
                check_and_free(old);
        } else {
            int i = (int)(r % LOCAL_SLOTS);
            if (local[i] != NULL)
                check_and_free(local[i]);
            local[i] = new_block(&seed);
        }
    }
    for (int i = 0; i < LOCAL_SLOTS; i++)
        if (local[i] != NULL)
            check_and_free(local[i]);
    pthread_mutex_lock(&world);
    slots[slot].state = SLOT_FINISHING;
    pthread_cond_signal(&parked_cv);
    pthread_cond_signal(&slot_cv);
    pthread_mutex_unlock(&world);
    return NULL;
}

/* ------------------------------------------------------------ monitor -- */

static char problem[512]; /* the first one; written by the monitor only */
static long reads, stops;
static struct mem_stats baseline;

static void note(const char *what, unsigned long long a, unsigned long long b)
{
    if (problem[0] == '\0')
        snprintf(problem, sizeof(problem), "%s (%llu, %llu) after %ld reads, %ld stops", what,
                 a, b, reads, stops);
}

#define NOT_BACK(field)                                                    \
    do {                                                                   \
        if (now->field < prev->field)                                      \
            note(#field " went back", prev->field, now->field);            \
    } while (0)


static void check_cumulative(const struct mem_stats *prev, const struct mem_stats *now)
{
    NOT_BACK(total_alloc);
    NOT_BACK(mallocs);
    NOT_BACK(num_scavenges);
    NOT_BACK(num_forced_scavenges);
    NOT_BACK(released_total);
    NOT_BACK(reacquired_total);
    NOT_BACK(madvise_failures);
    NOT_BACK(frees);
    for (int c = 1; c < SPANALLOC_NUM_SIZE_CLASSES; c++) {
        NOT_BACK(by_size[c].mallocs);
        NOT_BACK(by_size[c].frees);
    }
}

#define EQ(a, b)                                                           \
    do {                                                                   \
        if ((a) != (b))                                                    \
            note(#a " != " #b, (a), (b));                                  \
    } while (0)
#define LE(a, b)                                                           \
    do {                                                                   \
        if ((a) > (b))                                                     \
            note(#a " > " #b, (a), (b));                                   \
    } while (0)

static void check_stopped(const struct mem_stats *st)
{
    EQ(st->heap_sys, st->heap_idle + st->heap_inuse);
    LE(st->heap_released, st->heap_idle);
    LE(st->heap_alloc, st->heap_inuse);
    EQ(st->alloc, st->heap_alloc);
    EQ(st->heap_objects, st->mallocs - st->frees);
    EQ(st->sys, st->heap_sys + st->mspan_sys + st->mcache_sys + st->other_sys);
    uint64_t m = 0, f = 0;
    for (int c = 1; c < SPANALLOC_NUM_SIZE_CLASSES; c++) {
        m += st->by_size[c].mallocs;
        f += st->by_size[c].frees;
    }
    LE(m, st->mallocs);
    LE(f, st->frees);
    EQ(st->heap_objects - baseline.heap_objects, (uint64_t)atomic_load(&live_blocks));
}

/* Park every worker (and join the ones that ended), check, let them go. */
static void stop_the_world_and_check(void)
{
    pthread_mutex_lock(&world);
    atomic_store(&pause_requested, true);
    for (;;) {
        join_finished();
        if (parked == running)
            break;
        pthread_cond_wait(&parked_cv, &world);
    }
    struct mem_stats st;
    read_mem_stats(&st);
    check_stopped(&st);
    stops++;
    atomic_store(&pause_requested, false);
    pthread_cond_broadcast(&resume_cv);
    pthread_cond_broadcast(&slot_cv);
    pthread_mutex_unlock(&world);
}

static void *monitor(void *arg)
{
    (void)arg;
    static struct mem_stats a, b;
    struct mem_stats *prev = &a, *now = &b;
    read_mem_stats(prev);
    while (!atomic_load(&monitor_done)) {
        read_mem_stats(now);
        reads++;
        check_cumulative(prev, now);
        struct mem_stats *t = prev;
        prev = now;
        now = t;
        if (reads % STOP_EVERY == 0)
            stop_the_world_and_check();
    }
    return NULL;
}

/* ------------------------------------------------------------ the test -- */

static void counters_and_invariants_hold_with_256_threads(void **state)
{
    (void)state;
    baseline = stats_now();
    pthread_t mon;
    assert_int_equal(pthread_create(&mon, NULL, monitor, NULL), 0);
    int started = 0;
    pthread_mutex_lock(&world);
    while (started < TOTAL_THREADS || running > 0) {
        join_finished();
        for (int i = 0; i < LIVE_THREADS && started < TOTAL_THREADS; i++) {
            if (slots[i].state != SLOT_EMPTY || atomic_load(&pause_requested))
                continue;
            /* slot index in the low bits of the argument, a seed above */
            uintptr_t arg = (uintptr_t)i + (uintptr_t)LIVE_THREADS * (uintptr_t)(started + 1);
            int rc = pthread_create(&slots[i].thread, NULL, worker, (void *)arg);
            if (rc != 0) {
                pthread_mutex_unlock(&world);
                fail_msg("pthread_create: %s (thread %d)", strerror(rc), started);
            }
            slots[i].state = SLOT_RUNNING;
            running++;
            started++;
        }
        if (started < TOTAL_THREADS || running > 0)
            pthread_cond_wait(&slot_cv, &world);
    }
    pthread_mutex_unlock(&world);
    atomic_store(&monitor_done, true);
    assert_int_equal(pthread_join(mon, NULL), 0);

    for (int i = 0; i < XCHG_SLOTS; i++) {
        unsigned char *p = atomic_exchange(&exchange[i], NULL);
        if (p != NULL)
            check_and_free(p);
    }
    struct mem_stats end = stats_now();
    print_message("%d threads (%d at a time), %ld reads, %ld stops of the world; "
                  "mallocs %llu\n", started, LIVE_THREADS, reads, stops,
                  (unsigned long long)(end.mallocs - baseline.mallocs));
    if (problem[0] != '\0')
        fail_msg("%s", problem);
    assert_int_equal(atomic_load(&failed_allocs), 0);
    assert_int_equal(atomic_load(&corrupt_blocks), 0);
    assert_int_equal(atomic_load(&live_blocks), 0);
    assert_true(stops >= 4);
    assert_stats_invariants(&end);
    assert_int_equal(end.heap_objects, baseline.heap_objects);
    assert_true(end.mallocs - baseline.mallocs >= (uint64_t)TOTAL_THREADS * OPS_PER_THREAD);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(counters_and_invariants_hold_with_256_threads),
    };
    return cmocka_run_group_tests_name("threads", tests, NULL, NULL);
}
