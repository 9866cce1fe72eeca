/* The idle limit's release handed to the scavenger thread: a free that
 * leaves resident idle memory over the limit wakes the thread and returns
 * without releasing anything itself; the thread brings the heap under the
 * limit.  Real clock, real thread (the mheap tests run without one). */
#include <time.h>

#include "test_helpers.h"
#include "internal.h"
#include "../scavenger/scavenger.h"

static struct sa_heap_counters heap_now(void)
{
    struct sa_heap_counters h;
    sa_mheap_read(&h);
    return h;
}

static void touch(struct sa_span *s)
{
    for (size_t i = 0; i < s->npages; i++)
        ((volatile char *)s->base)[i * SA_PAGE_SIZE] = 1;
}

/* The thread's work is asynchronous: wait for its effect, bounded by 300 ms:
 * well under the thread's 1 s tick and 5 s cycle, so that over ten rounds
 * neither can stand in for the wake-up the free must send. */
static uint64_t resident_idle_pages(void)
{
    struct sa_heap_counters h = heap_now();
    return (h.sys_bytes >> SA_PAGE_SHIFT) - h.inuse_pages - h.released_pages;
}

/* Done: the limit's pass releases down to half the limit (10% of 64 MiB). */
static bool wait_for_no_excess(void)
{
    for (int i = 0; i < 300; i++) {
        if (sa_mheap_idle_excess() == 0 && resident_idle_pages() <= 8192 * 10 / 100 / 2)
            return true;
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    return false;
}

static void free_over_the_limit_wakes_the_scavenger(void **state)
{
    (void)state;
    sa_options.idle_delay_ns = 0;
    sa_options.idle_limit_pct = 10;
    struct sa_span *keep = sa_mheap_alloc_large(8192, 1); /* 64 MiB in use; starts the thread */
    assert_non_null(keep);
    assert_true(sa_scavenger_running());
    for (int round = 0; round < 10; round++) {
        struct sa_span *big = sa_mheap_alloc_large(4096, 1); /* 32 MiB */
        assert_non_null(big);
        touch(keep);
        touch(big);
        assert_true(wait_for_no_excess());
        struct sa_heap_counters h0 = heap_now();
        sa_mheap_free_large(big); /* 32 MiB idle against a limit of 6.4 MiB */
        struct sa_heap_counters h1 = heap_now();
        assert_int_equal(h1.released_inline, h0.released_inline); /* none by the free */
        assert_true(wait_for_no_excess());
        struct sa_heap_counters h2 = heap_now();
        assert_int_equal(h2.released_inline, h0.released_inline);
        assert_true(h2.released_pages >= h0.released_pages + 4096 - 8192 * 10 / 100);
        const char *err = sa_mheap_verify();
        if (err != NULL)
            fail_msg("round %d: %s", round, err);
    }
    sa_mheap_free_large(keep);
    struct mem_stats st = stats_now();
    assert_stats_invariants(&st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(free_over_the_limit_wakes_the_scavenger),
    };
    return cmocka_run_group_tests_name("handoff", tests, NULL, NULL);
}
