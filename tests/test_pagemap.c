/* The page map: address -> span, what it refuses, and the released bitmap. */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "test_helpers.h"
#include "internal.h"

static int a_static;

static void foreign_addresses_map_to_nothing(void **state)
{
    (void)state;
    int on_stack;
    spanalloc_free(spanalloc_malloc(1)); /* make sure the heap exists */
    assert_null(sa_pagemap_lookup(0));
    assert_null(sa_pagemap_lookup((uintptr_t)&on_stack));
    assert_null(sa_pagemap_lookup((uintptr_t)&a_static));
    assert_null(sa_pagemap_lookup((uintptr_t)1 << 47));
    assert_null(sa_pagemap_lookup(UINTPTR_MAX));
}

/* A small span maps every page (free() finds any object's span from its own
 * page); a large span only its first and last page, so its malloc and free
 * cost the same whatever its size, and a pointer into its middle finds no
 * span (free reports it). */
static void inuse_spans_map_what_free_needs(void **state)
{
    (void)state;
    char *small = spanalloc_malloc(100);
    char *large = spanalloc_malloc(SA_MAX_MEDIUM + 5 * SA_PAGE_SIZE + 1); /* past the medium classes */
    struct sa_span *s = sa_pagemap_lookup((uintptr_t)small);
    assert_non_null(s);
    assert_int_equal(s->state, SA_SPAN_SMALL);
    assert_int_equal(s->elem_size, 112);
    assert_true((uintptr_t)small >= s->base &&
                (uintptr_t)small < s->base + s->npages * SA_PAGE_SIZE);
    struct sa_span *l = sa_pagemap_lookup((uintptr_t)large);
    assert_non_null(l);
    assert_int_equal(l->state, SA_SPAN_LARGE);
    assert_int_equal(l->npages, SA_MAX_MEDIUM / SA_PAGE_SIZE + 6);
    assert_ptr_equal(sa_pagemap_lookup(l->base + 17), l);
    assert_ptr_equal(sa_pagemap_lookup(l->base + (l->npages - 1) * SA_PAGE_SIZE + 17), l);
    for (size_t i = 1; i + 1 < l->npages; i++)
        assert_null(sa_pagemap_lookup(l->base + i * SA_PAGE_SIZE + 17));
    for (size_t i = 0; i < s->npages; i++)
        assert_ptr_equal(sa_pagemap_lookup(s->base + i * SA_PAGE_SIZE), s);
    spanalloc_free(small);
    spanalloc_free(large);
}

/* A free span maps only its first and last page: nothing in between can be
 * mistaken for a live object. */
static void free_span_maps_only_its_ends(void **state)
{
    (void)state;
    char *block = spanalloc_malloc(140 * SA_PAGE_SIZE); /* not kept by the large-span cache */
    uintptr_t base = (uintptr_t)block;
    spanalloc_free(block);
    struct sa_span *first = sa_pagemap_lookup(base);
    assert_non_null(first);
    assert_int_equal(first->state, SA_SPAN_FREE);
    for (size_t i = 1; i + 1 < first->npages && i < 140; i++)
        assert_null(sa_pagemap_lookup(first->base + i * SA_PAGE_SIZE));
}

/* Inside a leaf, a page no span holds maps to sa_span_none, never NULL:
 * free()'s fast path loads the entry's fields without a NULL test, and
 * sa_span_none fails its object check.  The biased root entry reaches the
 * same slot as the leaf itself does. */
static void unheld_pages_map_to_the_none_span(void **state)
{
    (void)state;
    char *block = spanalloc_malloc(40 * SA_PAGE_SIZE);
    uintptr_t inner = (uintptr_t)block + 7 * SA_PAGE_SIZE;
    spanalloc_free(block);
    uintptr_t bias = sa_pagemap_bias(inner);
    assert_true(bias != 0);
    assert_true(bias & SA_LEAF_TAG);
    struct sa_arena_leaf *leaf = sa_pagemap_leaf(inner);
    assert_non_null(leaf);
    size_t page = (inner >> SA_PAGE_SHIFT) & (SA_PAGES_PER_ARENA - 1);
    assert_ptr_equal(sa_pagemap_entry(bias, inner), &sa_span_none);
    assert_ptr_equal(atomic_load(&leaf->spans[page]), &sa_span_none);
    assert_null(sa_pagemap_lookup(inner));
    for (size_t i = 0; i < SA_PAGES_PER_ARENA; i++)
        assert_non_null(atomic_load(&leaf->spans[i]));
    assert_true((uint64_t)(inner - sa_span_none.base) * sa_span_none.free_magic >=
                sa_span_none.free_limit);
    assert_int_equal(sa_pagemap_bias((uintptr_t)1 << 47), 0);
    assert_int_equal(sa_pagemap_bias(UINTPTR_MAX), 0);
}

/* The released bitmap counts exactly, across a 64 MiB leaf boundary. */
static void released_bitmap_counts_across_leaves(void **state)
{
    (void)state;
    size_t len = 3 * SA_ARENA_SIZE;
    char *raw = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    assert_true(raw != MAP_FAILED);
    uintptr_t boundary = ((uintptr_t)raw + SA_ARENA_SIZE) & ~(SA_ARENA_SIZE - 1);
    uintptr_t start = boundary - 10 * SA_PAGE_SIZE;
    sa_mheap_lock();
    assert_true(sa_pagemap_ensure(start, 30 * SA_PAGE_SIZE));
    assert_int_equal(sa_pagemap_count_released(start, 30), 0);
    sa_pagemap_mark_released(start + 5 * SA_PAGE_SIZE, 12, true); /* 5 before, 7 after */
    assert_int_equal(sa_pagemap_count_released(start, 30), 12);
    assert_int_equal(sa_pagemap_count_released(start, 10), 5);
    assert_int_equal(sa_pagemap_count_released(boundary, 20), 7);
    assert_int_equal(sa_pagemap_count_released(start + 6 * SA_PAGE_SIZE, 1), 1);
    sa_pagemap_mark_released(start + 8 * SA_PAGE_SIZE, 4, false);
    assert_int_equal(sa_pagemap_count_released(start, 30), 8);
    assert_int_equal(sa_pagemap_first_unreleased(start + 5 * SA_PAGE_SIZE, 20), 3);
    sa_pagemap_mark_released(start, 30, false);
    assert_int_equal(sa_pagemap_count_released(start, 30), 0);

    /* Word-at-a-time counting against a page-at-a-time model, on random runs
     * across the leaf boundary. */
    enum { PAGES = 700 };
    static bool model[PAGES];
    uintptr_t base = boundary - 300 * SA_PAGE_SIZE;
    assert_true(sa_pagemap_ensure(base, PAGES * SA_PAGE_SIZE));
    unsigned seed = 7;
    for (int round = 0; round < 2000; round++) {
        size_t a = rand_r(&seed) % PAGES, n = 1 + rand_r(&seed) % (PAGES - a);
        bool set = rand_r(&seed) % 2;
        sa_pagemap_mark_released(base + a * SA_PAGE_SIZE, n, set);
        for (size_t i = a; i < a + n; i++)
            model[i] = set;
        size_t b = rand_r(&seed) % PAGES, m = 1 + rand_r(&seed) % (PAGES - b);
        size_t want = 0, first = m;
        for (size_t i = b; i < b + m; i++) {
            want += model[i];
            if (!model[i] && first == m)
                first = i - b;
        }
        assert_int_equal(sa_pagemap_count_released(base + b * SA_PAGE_SIZE, m), want);
        assert_int_equal(sa_pagemap_first_unreleased(base + b * SA_PAGE_SIZE, m), first);
    }
    sa_pagemap_mark_released(base, PAGES, false);
    sa_mheap_unlock();
    munmap(raw, len);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(foreign_addresses_map_to_nothing),
        cmocka_unit_test(inuse_spans_map_what_free_needs),
        cmocka_unit_test(free_span_maps_only_its_ends),
        cmocka_unit_test(unheld_pages_map_to_the_none_span),
        cmocka_unit_test(released_bitmap_counts_across_leaves),
    };
    return cmocka_run_group_tests_name("pagemap", tests, NULL, NULL);
}
