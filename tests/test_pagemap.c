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

/* Spans published at the top of every user address space the page map
 * covers (x86-64 4-level 2^47, arm64 2^48, arm64 LVA 2^52, x86-64 5-level
 * 2^56) are found again, through the same inline path free() takes; a run
 * straddling the static root's end works too.  The page map never touches
 * the addresses themselves, so none of them needs to be mapped. */
static void spans_at_the_highest_addresses(void **state)
{
    (void)state;
    static struct sa_span spans[6];
    const uintptr_t tops[] = {(uintptr_t)1 << 47, (uintptr_t)1 << 48, (uintptr_t)1 << 52,
                              (uintptr_t)1 << 56};
    bool ensured[5];
    sa_mheap_lock(); /* no assert while it is held: a failing one jumps out */
    for (size_t i = 0; i < 4; i++) {
        uintptr_t base = tops[i] - 2 * SA_ARENA_SIZE; /* the last two arenas */
        ensured[i] = sa_pagemap_ensure(base, 2 * SA_ARENA_SIZE);
        if (!ensured[i])
            continue;
        struct sa_span *s = &spans[i];
        s->base = base + SA_ARENA_SIZE - 3 * SA_PAGE_SIZE; /* crosses into the last arena */
        s->npages = 6;
        s->state = SA_SPAN_LARGE;
        sa_pagemap_set(s->base, s->npages, s);
    }
    /* Across 2^48, from the static root into the hashed part. */
    uintptr_t straddle = ((uintptr_t)1 << 48) - 2 * SA_PAGE_SIZE;
    ensured[4] = sa_pagemap_ensure(straddle, 4 * SA_PAGE_SIZE);
    spans[4].base = straddle;
    spans[4].npages = 4;
    spans[4].state = SA_SPAN_LARGE;
    if (ensured[4])
        sa_pagemap_set(straddle, 4, &spans[4]);
    sa_mheap_unlock();
    for (size_t i = 0; i < 5; i++)
        assert_true(ensured[i]);

    for (size_t i = 0; i < 5; i++) {
        struct sa_span *s = &spans[i];
        for (size_t p = 0; p < s->npages; p++) {
            uintptr_t a = s->base + p * SA_PAGE_SIZE + 100;
            assert_ptr_equal(sa_pagemap_lookup(a), s);
            uintptr_t bias = sa_pagemap_bias_any(a);
            assert_true(bias & SA_LEAF_TAG);
            if (a < ((uintptr_t)1 << SA_ADDR_BITS)) /* free()'s inline lookup */
                assert_int_equal(sa_pagemap_bias(a), bias);
            assert_ptr_equal(sa_pagemap_entry(bias, a), s);
        }
        /* The pages beside it are in leaves but held by no span. */
        assert_null(sa_pagemap_lookup(s->base - SA_PAGE_SIZE));
        assert_null(sa_pagemap_lookup(s->base + s->npages * SA_PAGE_SIZE));
    }
    assert_null(sa_pagemap_lookup(((uintptr_t)1 << 56) - 1 - 3 * SA_ARENA_SIZE));
    assert_null(sa_pagemap_lookup((uintptr_t)1 << 56)); /* beyond every address space */
    assert_int_equal(sa_pagemap_bias_any((uintptr_t)1 << 56), 0);
    assert_null(sa_pagemap_lookup(UINTPTR_MAX));
    /* A free at such an address takes the checked path and is reported as
     * foreign only when nothing is mapped there: here it is a span's. */
    assert_ptr_equal(sa_pagemap_lookup(spans[3].base), &spans[3]);
    sa_mheap_lock();
    for (size_t i = 0; i < 5; i++)
        sa_pagemap_set(spans[i].base, spans[i].npages, NULL);
    sa_mheap_unlock();
}

/* A leaf mapping that fails leaves nothing behind: for every point at which
 * the maps start failing, sa_pagemap_ensure either succeeds with a leaf for
 * every arena or fails with a leaf for none (none resident, none published). */
static void failed_leaf_mapping_leaves_no_leaf(void **state)
{
    (void)state;
    /* Arenas no other test uses, in the static root and in the hashed part
     * (the page map never touches the addresses it maps). */
    const uintptr_t bases[] = {(uintptr_t)1 << 45, (uintptr_t)1 << 50};
    for (int part = 0; part < 2; part++) {
        for (int after = 0; after < 3; after++) {
            uintptr_t range = bases[part] + (uintptr_t)after * 3 * SA_ARENA_SIZE; /* three fresh arenas */
            /* Asserts only with the heap lock dropped: a failing one jumps out. */
            sa_mheap_lock();
            size_t leaves_before = 0;
            for (int a = 0; a < 3; a++)
                leaves_before += sa_pagemap_leaf(range + (uintptr_t)a * SA_ARENA_SIZE) != NULL;
            uint64_t sys_before = sa_pagemap_sys_bytes();
            atomic_store(&sa_os_fail_maps_after, after);
            atomic_store(&sa_os_fail_maps, 1);
            bool ok = sa_pagemap_ensure(range, 3 * SA_ARENA_SIZE);
            atomic_store(&sa_os_fail_maps, 0);
            atomic_store(&sa_os_fail_maps_after, 0);
            size_t leaves = 0;
            for (int a = 0; a < 3; a++)
                leaves += sa_pagemap_leaf(range + (uintptr_t)a * SA_ARENA_SIZE) != NULL;
            uint64_t sys_after = sa_pagemap_sys_bytes();
            sa_mheap_unlock();
            assert_int_equal(leaves_before, 0);
            if (ok) {
                assert_int_equal(leaves, 3);
            } else {
                assert_int_equal(leaves, 0);
                assert_int_equal(sys_after, sys_before);
            }
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(foreign_addresses_map_to_nothing),
        cmocka_unit_test(inuse_spans_map_what_free_needs),
        cmocka_unit_test(free_span_maps_only_its_ends),
        cmocka_unit_test(unheld_pages_map_to_the_none_span),
        cmocka_unit_test(released_bitmap_counts_across_leaves),
        cmocka_unit_test(spans_at_the_highest_addresses),
        cmocka_unit_test(failed_leaf_mapping_leaves_no_leaf),
    };
    return cmocka_run_group_tests_name("pagemap", tests, NULL, NULL);
}
