/* The mcache: bounded, flushed at thread exit, usable after its thread's
 * TLS destructors ran, and cross-thread frees that touch no other cache. */
#include <pthread.h>
#include <string.h>

#include "test_helpers.h"
#include "internal.h"
#include "percpu.h"

static void each_list_stays_under_its_cap(void **state)
{
    (void)state;
    enum { N = 4000 };
    static void *blocks[N];
    for (unsigned cls = 1; cls < SA_NUM_CLASSES; cls += 5) {
        size_t size = sa_class_size[cls];
        unsigned n = size > 4096 ? 300 : N;
        for (unsigned i = 0; i < n; i++)
            blocks[i] = spanalloc_malloc(size);
        for (unsigned i = 0; i < n; i++)
            spanalloc_free(blocks[i]);
        /* Every cache (this thread's, or each CPU's) within its cap; under
         * memcheck no thread has a cache at all. */
        uint64_t held = sa_mcache_held_blocks(cls);
        uint64_t caches = sa_mcache_thread_is_percpu() ? sa_percpu_cpus_ready() : 1;
        assert_true(held <= caches * sa_mcache_list_cap(cls));
        /* 32 KiB of a class, or up to 8 blocks within 256 KiB, or 2 (1 above 32 KiB) */
        uint32_t cap = sa_mcache_list_cap(cls);
        assert_true(cap * size <= 32 * 1024 || (cap <= 8 && cap * size <= 256 * 1024) ||
                    cap <= (size <= 32 * 1024 ? 2u : 1u));
        assert_true(sa_mcache_list_cap(cls) >= 1);
    }
    size_t bound = sa_mcache_bound_bytes();
    size_t held = 0;
    for (unsigned cls = 1; cls < SA_NUM_CLASSES; cls++)
        held += (size_t)sa_mcache_held_blocks(cls) * sa_class_size[cls];
    unsigned caches = sa_mcache_thread_is_percpu() ? sa_percpu_cpus_ready() : 1;
    assert_true(held <= bound * caches);
    assert_true(bound <= 6662768); /* the documented bound per cache (docs/tuning.md) */
}

static void *alloc_and_free_all(void *arg)
{
    size_t size = (size_t)arg;
    void *blocks[500];
    for (int i = 0; i < 500; i++) {
        blocks[i] = spanalloc_malloc(size);
        memset(blocks[i], 1, size);
    }
    for (int i = 0; i < 500; i++)
        spanalloc_free(blocks[i]);
    return NULL;
}

/* What a thread cached comes back when it exits (per-thread mode), or stays
 * in the CPU caches, where a drain takes it back (per-CPU mode: the thread
 * itself holds nothing): its spans leave heap_inuse (once the batches handed
 * to the mcentral's transfer slots are drained too: those belong to the
 * central tier, not to any cache). */
static void thread_exit_flushes_the_cache(void **state)
{
    (void)state;
    sa_mcache_flush_current();
    sa_mcentral_drain_transfer();
    struct mem_stats before = stats_now();
    unsigned before_cpus = sa_percpu_cpus_ready();
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, alloc_and_free_all, (void *)(size_t)208), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    /* The thread's own cache (per-thread mode) is gone with it. */
    assert_int_equal(stats_now().mcache_inuse, before.mcache_inuse +
                     (sa_percpu_cpus_ready() - before_cpus) * sa_slab_bytes());
    if (sa_mcache_thread_is_percpu())
        sa_mcache_flush_current();
    sa_mcentral_drain_transfer();
    struct mem_stats after = stats_now();
    assert_int_equal(after.heap_inuse, before.heap_inuse);
    assert_int_equal(after.mcache_inuse, before.mcache_inuse +
                     (sa_percpu_cpus_ready() - before_cpus) * sa_slab_bytes());
    assert_int_equal(after.heap_objects, before.heap_objects);
    assert_int_equal(after.by_size[sa_size_class(208)].mallocs,
                     before.by_size[sa_size_class(208)].mallocs + 500);
    assert_stats_invariants(&after);
}

/* glibc runs TLS destructors in key order; ours was created first, so a
 * program's destructor runs after our cache was flushed. */
static pthread_key_t late_key;
static int late_ok;
static void late_destructor(void *arg)
{
    (void)arg;
    char *p = spanalloc_malloc(100);
    char *q = spanalloc_malloc(70000);
    if (p && q) {
        memset(p, 7, 100);
        memset(q, 7, 70000);
        late_ok = p[99] == 7 && q[69999] == 7 && spanalloc_usable_size(p) == 112;
    }
    spanalloc_free(p);
    spanalloc_free(q);
}

static void *set_late_key(void *arg)
{
    (void)arg;
    spanalloc_free(spanalloc_malloc(16)); /* this thread has a cache */
    pthread_setspecific(late_key, (void *)1);
    return NULL;
}

static void malloc_works_after_thread_teardown(void **state)
{
    (void)state;
    assert_int_equal(pthread_key_create(&late_key, late_destructor), 0);
    struct mem_stats before = stats_now();
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, set_late_key, NULL), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_true(late_ok);
    struct mem_stats after = stats_now();
    assert_int_equal(after.mallocs, before.mallocs + 3);
    assert_int_equal(after.frees, before.frees + 3);
    assert_int_equal(after.heap_objects, before.heap_objects);
}

/* Blocks freed by another thread land in that thread's cache. */
#define FREED_PER_THREAD 100
static void *free_them(void *arg)
{
    void **blocks = arg;
    for (int i = 0; i < FREED_PER_THREAD; i++)
        spanalloc_free(blocks[i]);
    return NULL;
}

static void cross_thread_free_is_counted_once(void **state)
{
    (void)state;
    static void *blocks[100];
    struct mem_stats before = stats_now();
    for (int i = 0; i < 100; i++)
        blocks[i] = spanalloc_malloc(48);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, free_them, blocks), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    struct mem_stats after = stats_now();
    unsigned cls = sa_size_class(48);
    assert_int_equal(after.by_size[cls].mallocs, before.by_size[cls].mallocs + 100);
    assert_int_equal(after.by_size[cls].frees, before.by_size[cls].frees + 100);
    assert_int_equal(after.heap_alloc, before.heap_alloc);
    assert_stats_invariants(&after);
}

/* A thread's first free finds the shared zero slab, where every push fails:
 * many threads doing that at once must leave it all zero (it is read-only
 * memory: a write would fault), or a later free would push a block onto a
 * slab every thread shares. */
#define FIRST_FREE_THREADS 8
static void *blocks_for_first_free[FIRST_FREE_THREADS][FREED_PER_THREAD];
static pthread_barrier_t first_free_start;

/* Every thread is started before any frees: their first frees race. */
static void *free_them_together(void *arg)
{
    pthread_barrier_wait(&first_free_start);
    return free_them(arg);
}

static void first_free_leaves_the_zero_slab_alone(void **state)
{
    (void)state;
    struct mem_stats before = stats_now();
    for (int t = 0; t < FIRST_FREE_THREADS; t++)
        for (int i = 0; i < FREED_PER_THREAD; i++)
            blocks_for_first_free[t][i] = spanalloc_malloc(16 + 16 * (size_t)(i % 8));
    assert_int_equal(pthread_barrier_init(&first_free_start, NULL, FIRST_FREE_THREADS), 0);
    pthread_t th[FIRST_FREE_THREADS];
    for (int t = 0; t < FIRST_FREE_THREADS; t++)
        assert_int_equal(pthread_create(&th[t], NULL, free_them_together,
                                        blocks_for_first_free[t]), 0);
    for (int t = 0; t < FIRST_FREE_THREADS; t++)
        assert_int_equal(pthread_join(th[t], NULL), 0);
    pthread_barrier_destroy(&first_free_start);
    static const struct sa_slab_class zero[SA_NUM_CLASSES];
    assert_memory_equal(sa_zero_slab, zero, sizeof(zero));
    struct mem_stats after = stats_now();
    assert_int_equal(after.frees, before.frees + FIRST_FREE_THREADS * FREED_PER_THREAD);
    assert_int_equal(after.heap_alloc, before.heap_alloc);
    assert_stats_invariants(&after);
}

int main(void)
{
    sa_options.scavenger_enabled = false;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(each_list_stays_under_its_cap),
        cmocka_unit_test(thread_exit_flushes_the_cache),
        cmocka_unit_test(malloc_works_after_thread_teardown),
        cmocka_unit_test(cross_thread_free_is_counted_once),
        cmocka_unit_test(first_free_leaves_the_zero_slab_alone),
    };
    return cmocka_run_group_tests_name("mcache", tests, NULL, NULL);
}
