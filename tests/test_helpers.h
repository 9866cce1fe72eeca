/* test_helpers.h: shared by the unit tests: cmocka, the stats invariants. */
#ifndef SPANALLOC_TEST_HELPERS_H
#define SPANALLOC_TEST_HELPERS_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "spanalloc.h"

/* The invariants docs/api.md promises whenever no other thread allocates. */
static inline void assert_stats_invariants(const struct mem_stats *st)
{
    assert_int_equal(st->heap_sys, st->heap_idle + st->heap_inuse);
    assert_true(st->heap_released <= st->heap_idle);
    assert_true(st->heap_alloc <= st->heap_inuse);
    assert_int_equal(st->alloc, st->heap_alloc);
    assert_int_equal(st->heap_objects, st->mallocs - st->frees);
    assert_int_equal(st->sys, st->heap_sys + st->mspan_sys + st->mcache_sys + st->other_sys);
    uint64_t m = 0, f = 0;
    for (int c = 1; c < SPANALLOC_NUM_SIZE_CLASSES; c++) {
        m += st->by_size[c].mallocs;
        f += st->by_size[c].frees;
    }
    assert_true(m <= st->mallocs);
    assert_true(f <= st->frees);
}

static inline struct mem_stats stats_now(void)
{
    struct mem_stats st;
    read_mem_stats(&st);
    return st;
}

#endif
