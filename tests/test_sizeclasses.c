/* The size-class table: pinned; both 12.5% bounds for every small class, and
 * for the medium classes (32 KiB .. 256 KiB) 25% round-up and 12.5% tail. */
#include "test_helpers.h"
#include "internal.h"

/* The table as generated today; a change to the generator must show here. */
static const uint32_t pinned[] = {
    0,     16,    32,    48,    64,    80,    96,    112,   128,   144,   160,   176,
    192,   208,   224,   240,   256,   288,   320,   352,   384,   416,   448,   480,
    512,   576,   640,   704,   768,   832,   896,   1024,  1152,  1280,  1408,  1536,
    1664,  1792,  2048,  2304,  2560,  2816,  3072,  3328,  3584,  4096,  4608,  5120,
    5632,  6144,  6656,  7168,  8192,  9216,  10240, 11264, 12288, 13312, 14336, 16384,
    18432, 20480, 22528, 24576, 26624, 28672, 32768,
    /* medium: one object per span, looked up out of the inline path */
    40960, 49152, 57344, 65536, 81920, 98304, 114688, 131072, 163840, 196608, 229376, 262144,
};

static void table_is_pinned(void **state)
{
    (void)state;
    assert_int_equal(SA_NUM_CLASSES, sizeof(pinned) / sizeof(pinned[0]));
    for (unsigned c = 0; c < SA_NUM_CLASSES; c++)
        assert_int_equal(sa_class_size[c], pinned[c]);
    assert_int_equal(sa_class_size[SA_NUM_SMALL_CLASSES - 1], SA_MAX_SMALL);
    assert_int_equal(sa_class_size[SA_NUM_CLASSES - 1], SA_MAX_MEDIUM);
}

static void every_class_is_16_byte_aligned(void **state)
{
    (void)state;
    for (unsigned c = 1; c < SA_NUM_CLASSES; c++)
        assert_int_equal(sa_class_size[c] % 16, 0);
}

/* Rounding a request up to its class wastes at most 12.5% of the class above
 * 128 B, 25% above 32 KiB; below 128 B, classes are one 16-byte granule apart. */
static void round_up_waste_is_bounded(void **state)
{
    (void)state;
    for (unsigned c = 2; c < SA_NUM_CLASSES; c++) {
        uint32_t gap = sa_class_size[c] - sa_class_size[c - 1];
        if (sa_class_size[c] <= 128)
            assert_int_equal(gap, 16);
        else if (sa_class_size[c] <= SA_MAX_SMALL)
            assert_true((uint64_t)gap * 8 <= sa_class_size[c]);
        else
            assert_true((uint64_t)gap * 4 <= sa_class_size[c]);
    }
}

/* A span's unusable tail is at most 12.5%, with the fewest pages that allow it. */
static void span_tail_waste_is_bounded_and_pages_minimal(void **state)
{
    (void)state;
    for (unsigned c = 1; c < SA_NUM_CLASSES; c++) {
        size_t span = (size_t)sa_class_npages[c] * SA_PAGE_SIZE;
        assert_true((span % sa_class_size[c]) * 8 <= span);
        for (size_t n = 1; n < sa_class_npages[c]; n++) {
            size_t smaller = n * SA_PAGE_SIZE;
            assert_true((smaller % sa_class_size[c]) * 8 > smaller);
        }
    }
}

static void lookup_gives_smallest_fitting_class(void **state)
{
    (void)state;
    for (size_t size = 0; size <= SA_MAX_MEDIUM; size++) {
        unsigned c = sa_size_class(size);
        assert_true(c >= 1 && c < SA_NUM_CLASSES);
        assert_true(sa_class_size[c] >= size);
        if (c > 1)
            assert_true(sa_class_size[c - 1] < size);
    }
}

/* malloc looks up requests of at most SA_DIRECT_MAX bytes in a per-byte
 * table: it must give the same list (the smallest fitting class) as the
 * rounded table, for every size. */
static void direct_lookup_matches_the_rounded_one(void **state)
{
    (void)state;
    for (size_t size = 0; size <= SA_DIRECT_MAX; size++) {
        assert_int_equal(sa_direct_size_to_list[size], sa_size_list_offset(size));
        unsigned c = sa_direct_size_to_list[size] >> SA_LIST_SHIFT;
        assert_true(sa_class_size[c] >= size && (c == 1 || sa_class_size[c - 1] < size));
    }
}

/* free() turns an offset into an object index with a multiply: exact for
 * every byte offset inside a span of a small class (a medium span holds one
 * object: its index is always 0). */
static void division_magic_is_exact(void **state)
{
    (void)state;
    uint64_t wrong = 0;
    for (unsigned c = 1; c < SA_NUM_SMALL_CLASSES; c++) {
        uint64_t span = (uint64_t)sa_class_npages[c] * SA_PAGE_SIZE;
        for (uint64_t off = 0; off < span; off++)
            wrong += ((off * sa_class_magic[c]) >> 32) != off / sa_class_size[c];
    }
    assert_int_equal(wrong, 0);
}

/* free()'s inline check (one multiply, struct sa_span's free_magic) accepts
 * exactly the object starts of a small span: no interior pointer, no
 * pointer into the unusable tail, for every class and every byte offset. */
static void free_check_accepts_exactly_object_starts(void **state)
{
    (void)state;
    for (unsigned cls = 1; cls < SA_NUM_CLASSES; cls++) {
        void *p = spanalloc_malloc(sa_class_size[cls]);
        assert_non_null(p);
        struct sa_span *s = sa_pagemap_lookup((uintptr_t)p);
        assert_non_null(s);
        assert_int_equal(sa_span_cls(s), cls);
        uint64_t span_bytes = (uint64_t)s->npages << SA_PAGE_SHIFT;
        for (uint64_t off = 0; off < span_bytes; off++) {
            bool accepted = off * s->free_magic < s->free_limit;
            bool object_start = off % s->elem_size == 0 && off / s->elem_size < s->nelems;
            if (accepted != object_start)
                fail_msg("class %u (%u B): offset %llu accepted=%d object_start=%d", cls,
                         s->elem_size, (unsigned long long)off, accepted, object_start);
        }
        spanalloc_free(p);
    }
    /* A large object's span is never accepted: it goes out of line. */
    void *big = spanalloc_malloc(SA_MAX_MEDIUM + 1);
    struct sa_span *s = sa_pagemap_lookup((uintptr_t)big);
    assert_int_equal(s->free_limit, 0);
    spanalloc_free(big);
}

/* A medium request is served by its class through the thread cache: freed
 * and asked for again, the same block comes back without the heap; the
 * first request past 256 KiB is a large object.  (Under memcheck no thread
 * has a cache: the class alone is checked.) */
static void medium_requests_go_through_the_cache(void **state)
{
    (void)state;
    bool cached = !sa_on_valgrind;
    for (size_t size = SA_MAX_SMALL + 1; size <= SA_MAX_MEDIUM; size += 7 * 1024 + 3) {
        void *p = spanalloc_malloc(size);
        assert_non_null(p);
        struct sa_span *s = sa_pagemap_lookup((uintptr_t)p);
        assert_int_equal(s->state, SA_SPAN_SMALL);
        assert_int_equal(sa_span_cls(s), sa_size_class(size));
        assert_int_equal(spanalloc_usable_size(p), sa_class_size[sa_size_class(size)]);
        spanalloc_free(p);
        struct mem_stats before = stats_now();
        void *q = spanalloc_malloc(size);
        struct mem_stats after = stats_now();
        if (cached) {
            assert_ptr_equal(q, p); /* from the cache list */
            assert_int_equal(after.heap_inuse, before.heap_inuse); /* no span taken */
        }
        assert_stats_invariants(&after);
        spanalloc_free(q);
    }
    void *big = spanalloc_malloc(SA_MAX_MEDIUM + 1);
    assert_int_equal(sa_pagemap_lookup((uintptr_t)big)->state, SA_SPAN_LARGE);
    spanalloc_free(big);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(table_is_pinned),
        cmocka_unit_test(every_class_is_16_byte_aligned),
        cmocka_unit_test(round_up_waste_is_bounded),
        cmocka_unit_test(span_tail_waste_is_bounded_and_pages_minimal),
        cmocka_unit_test(lookup_gives_smallest_fitting_class),
        cmocka_unit_test(direct_lookup_matches_the_rounded_one),
        cmocka_unit_test(medium_requests_go_through_the_cache),
        cmocka_unit_test(division_magic_is_exact),
        cmocka_unit_test(free_check_accepts_exactly_object_starts),
    };
    return cmocka_run_group_tests_name("sizeclasses", tests, NULL, NULL);
}
