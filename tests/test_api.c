/*
 * The prefixed C API, entry point by entry point: the edge cases of every
 * function (zero sizes, overflow, impossible sizes and alignments, NULL),
 * alignment and usable size over a wide range of sizes, calloc's zeroing of
 * reused memory, realloc across the small/large boundary, and the MemStats
 * invariants after a mixed workload.  This binary links spanalloc_core: the
 * process malloc (and cmocka's) stays glibc's.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "test_helpers.h"

#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define UNDER_VALGRIND() (RUNNING_ON_VALGRIND != 0)
#else
#define UNDER_VALGRIND() 0
#endif

/* ---- A position-dependent pattern: byte i depends only on (seed, i), so a
 * prefix of a block can be checked after realloc. */
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

static bool aligned_to(const void *p, size_t align)
{
    return ((uintptr_t)p & (align - 1)) == 0;
}

/* ---- Stats: one small malloc of a class nobody used yet (this test runs
 * first) moves heap_alloc by exactly the class size. */
static void heap_alloc_grows_by_the_class_size(void **state)
{
    (void)state;
    static const size_t sizes[] = {5000, 1, 100, 1000, 20000, 32768, 40000, 300000};
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        struct mem_stats before = stats_now();
        void *p = spanalloc_malloc(sizes[k]);
        assert_non_null(p);
        struct mem_stats after = stats_now();
        size_t usable = spanalloc_usable_size(p);
        assert_true(usable >= sizes[k]);
        assert_int_equal(after.heap_alloc - before.heap_alloc, usable);
        assert_int_equal(after.total_alloc - before.total_alloc, usable);
        assert_int_equal(after.mallocs - before.mallocs, 1);
        assert_int_equal(after.heap_objects - before.heap_objects, 1);
        assert_true(after.heap_inuse >= before.heap_inuse);
        if (k == 0) /* class 5120 was never used: its span is new */
            assert_true(after.heap_inuse >= before.heap_inuse + usable);
        if (sizes[k] <= 32768) {
            int cls = -1;
            for (int c = 1; c < SPANALLOC_NUM_SIZE_CLASSES; c++)
                if (after.by_size[c].size == usable)
                    cls = c;
            assert_true(cls > 0);
            assert_int_equal(after.by_size[cls].mallocs - before.by_size[cls].mallocs, 1);
        }
        assert_stats_invariants(&after);
        spanalloc_free(p);
        struct mem_stats freed = stats_now();
        assert_int_equal(freed.heap_alloc, before.heap_alloc);
        assert_int_equal(freed.heap_objects, before.heap_objects);
        assert_int_equal(freed.frees - before.frees, 1);
        assert_stats_invariants(&freed);
    }
}

/* ---- malloc */

static void malloc_zero_returns_unique_freeable_blocks(void **state)
{
    (void)state;
    enum { N = 200 };
    void *p[N];
    struct mem_stats before = stats_now();
    for (int i = 0; i < N; i++) {
        p[i] = spanalloc_malloc(0);
        assert_non_null(p[i]);
        assert_true(aligned_to(p[i], 16));
        for (int j = 0; j < i; j++)
            assert_ptr_not_equal(p[i], p[j]);
    }
    assert_int_equal(stats_now().heap_objects - before.heap_objects, N);
    for (int i = 0; i < N; i++)
        spanalloc_free(p[i]);
    assert_int_equal(stats_now().heap_objects, before.heap_objects);
}

static void every_block_is_16_aligned_and_usable_to_its_end(void **state)
{
    (void)state;
    size_t big_step = UNDER_VALGRIND() ? 997 : 13;
    size_t small_limit = UNDER_VALGRIND() ? 1024 : 4096;
    for (size_t n = 1; n <= 100000; n += (n < small_limit ? 1 : big_step)) {
        unsigned char *p = spanalloc_malloc(n);
        assert_non_null(p);
        assert_true(aligned_to(p, 16));
        size_t usable = spanalloc_usable_size(p);
        assert_true(usable >= n);
        memset(p, 0xa5, usable);
        spanalloc_free(p);
    }
}

static void usable_size_bytes_survive_free_of_others_and_realloc(void **state)
{
    (void)state;
    static const size_t sizes[] = {1, 17, 100, 1000, 5000, 32768, 32769, 70000, 1 << 20};
    enum { K = sizeof(sizes) / sizeof(sizes[0]) };
    void *p[K];
    size_t u[K];
    for (size_t k = 0; k < K; k++) {
        p[k] = spanalloc_malloc(sizes[k]);
        assert_non_null(p[k]);
        u[k] = spanalloc_usable_size(p[k]);
        assert_true(u[k] >= sizes[k]);
        fill(p[k], u[k], k);
    }
    /* Neighbours' frees and the allocator's free lists must not touch the
     * bytes between the request and the usable size. */
    for (size_t k = 0; k < K; k += 2) {
        assert_true(intact(p[k], u[k], k));
        spanalloc_free(p[k]);
    }
    for (size_t k = 1; k < K; k += 2) {
        assert_true(intact(p[k], u[k], k));
        void *q = spanalloc_realloc(p[k], u[k] * 2 + 1);
        assert_non_null(q);
        assert_true(intact(q, u[k], k));
        q = spanalloc_realloc(q, u[k]);
        assert_non_null(q);
        assert_true(intact(q, u[k], k));
        spanalloc_free(q);
    }
}

static void malloc_of_impossible_sizes_fails_with_enomem(void **state)
{
    (void)state;
    static const size_t sizes[] = {SIZE_MAX, SIZE_MAX - 4096, (size_t)PTRDIFF_MAX + 1,
                                   (size_t)PTRDIFF_MAX, (size_t)1 << 50};
    struct mem_stats before = stats_now();
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        errno = 0;
        assert_null(spanalloc_malloc(sizes[k]));
        assert_int_equal(errno, ENOMEM);
    }
    struct mem_stats after = stats_now();
    assert_int_equal(after.mallocs, before.mallocs);
    assert_int_equal(after.heap_objects, before.heap_objects);
    assert_stats_invariants(&after);
}

/* ---- calloc */

static void calloc_zeroes_reused_dirty_memory(void **state)
{
    (void)state;
    static const size_t sizes[] = {1,     16,    100,     1000,    4096,
                                   32768, 40000, 1 << 20, (3 << 20) + 5};
    enum { K = sizeof(sizes) / sizeof(sizes[0]), N = 16 };
    for (size_t k = 0; k < K; k++) {
        size_t n = sizes[k];
        for (int round = 0; round < 3; round++) {
            void *dirty[N];
            for (int i = 0; i < N; i++) {
                dirty[i] = spanalloc_malloc(n);
                assert_non_null(dirty[i]);
                memset(dirty[i], 0xff, spanalloc_usable_size(dirty[i]));
            }
            void *first = dirty[N - 1];
            for (int i = 0; i < N; i++)
                spanalloc_free(dirty[i]);
            void *z[N];
            bool reused = false;
            for (int i = 0; i < N; i++) {
                z[i] = spanalloc_calloc(1, n);
                assert_non_null(z[i]);
                assert_true(all_zero(z[i], n));
                reused |= z[i] == first;
            }
            if (n <= 32768) /* the thread cache hands the last freed back */
                assert_true(reused);
            for (int i = 0; i < N; i++)
                spanalloc_free(z[i]);
        }
    }
    /* Element count times size, both orders. */
    unsigned char *p = spanalloc_malloc(6000);
    memset(p, 0xff, 6000);
    spanalloc_free(p);
    p = spanalloc_calloc(1500, 4);
    assert_non_null(p);
    assert_true(all_zero(p, 6000));
    spanalloc_free(p);
}

static void calloc_of_nothing_returns_freeable_blocks(void **state)
{
    (void)state;
    void *a = spanalloc_calloc(0, 100);
    void *b = spanalloc_calloc(100, 0);
    void *c = spanalloc_calloc(0, 0);
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(c);
    assert_ptr_not_equal(a, b);
    assert_ptr_not_equal(b, c);
    spanalloc_free(a);
    spanalloc_free(b);
    spanalloc_free(c);
}

static void calloc_overflow_fails_with_enomem(void **state)
{
    (void)state;
    static const size_t pairs[][2] = {
        {SIZE_MAX / 2 + 1, 4}, {4, SIZE_MAX / 2 + 1}, {SIZE_MAX, SIZE_MAX},
        {SIZE_MAX, 2},         {(size_t)1 << 32, (size_t)1 << 32},
        {(size_t)PTRDIFF_MAX, 3},
    };
    struct mem_stats before = stats_now();
    for (size_t k = 0; k < sizeof(pairs) / sizeof(pairs[0]); k++) {
        errno = 0;
        assert_null(spanalloc_calloc(pairs[k][0], pairs[k][1]));
        assert_int_equal(errno, ENOMEM);
    }
    /* No overflow, but impossible. */
    errno = 0;
    assert_null(spanalloc_calloc(1, SIZE_MAX));
    assert_int_equal(errno, ENOMEM);
    assert_int_equal(stats_now().mallocs, before.mallocs);
}

/* ---- realloc, reallocarray */

static void realloc_null_allocates(void **state)
{
    (void)state;
    struct mem_stats before = stats_now();
    void *p = spanalloc_realloc(NULL, 100);
    assert_non_null(p);
    assert_true(spanalloc_usable_size(p) >= 100);
    fill(p, 100, 7);
    void *q = spanalloc_realloc(NULL, 100000);
    assert_non_null(q);
    fill(q, 100000, 8);
    void *r = spanalloc_reallocarray(NULL, 10, 10);
    assert_non_null(r);
    assert_true(spanalloc_usable_size(r) >= 100);
    assert_int_equal(stats_now().heap_objects - before.heap_objects, 3);
    assert_true(intact(p, 100, 7));
    assert_true(intact(q, 100000, 8));
    spanalloc_free(p);
    spanalloc_free(q);
    spanalloc_free(r);
    assert_int_equal(stats_now().heap_objects, before.heap_objects);
}

static void realloc_to_zero_frees_and_returns_null(void **state)
{
    (void)state;
    static const size_t sizes[] = {1, 100, 32768, 100000, 4 << 20};
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        struct mem_stats before = stats_now();
        void *p = spanalloc_malloc(sizes[k]);
        assert_non_null(p);
        struct mem_stats mid = stats_now();
        assert_int_equal(mid.heap_objects, before.heap_objects + 1);
        assert_null(spanalloc_realloc(p, 0));
        struct mem_stats after = stats_now();
        assert_int_equal(after.heap_objects, before.heap_objects);
        assert_int_equal(after.frees, mid.frees + 1);
        assert_int_equal(after.heap_alloc, before.heap_alloc);
        assert_stats_invariants(&after);
    }
    /* reallocarray(p, 0, n) is realloc(p, 0). */
    struct mem_stats before = stats_now();
    void *p = spanalloc_malloc(50);
    assert_null(spanalloc_reallocarray(p, 0, 50));
    assert_int_equal(stats_now().heap_objects, before.heap_objects);
}

static void realloc_keeps_content_across_small_and_large(void **state)
{
    (void)state;
    static const size_t sizes[] = {1,     15,    16,    17,     100,     512,      1000,
                                   4096,  8191,  32767, 32768,  32769,   40000,    65536,
                                   100000, 1 << 20, (3 << 20) + 5};
    enum { K = sizeof(sizes) / sizeof(sizes[0]) };
    uint64_t seed = 1;
    for (size_t a = 0; a < K; a++) {
        for (size_t b = 0; b < K; b++) {
            size_t na = sizes[a], nb = sizes[b];
            size_t keep = na < nb ? na : nb;
            unsigned char *p = spanalloc_malloc(na);
            assert_non_null(p);
            fill(p, na, seed);
            unsigned char *q = spanalloc_realloc(p, nb);
            assert_non_null(q);
            assert_true(spanalloc_usable_size(q) >= nb);
            assert_true(aligned_to(q, 16));
            assert_true(intact(q, keep, seed));
            /* ...and back, the first `keep` bytes still there. */
            fill(q, nb, seed + 1);
            unsigned char *r = spanalloc_realloc(q, na);
            assert_non_null(r);
            assert_true(intact(r, keep, seed + 1));
            spanalloc_free(r);
            seed += 2;
        }
    }
    /* A chain small -> large -> small -> large through every step. */
    unsigned char *p = spanalloc_malloc(10);
    size_t have = 10;
    fill(p, have, 99);
    for (size_t k = 0; k < K; k++) {
        size_t n = sizes[(k * 7) % K];
        p = spanalloc_realloc(p, n);
        assert_non_null(p);
        assert_true(intact(p, have < n ? have : n, 99));
        fill(p, n, 99);
        have = n;
    }
    spanalloc_free(p);
}

/* A large block whose following pages are free grows in place: same
 * pointer, content kept, and it can be written to its new usable size. */
static void large_realloc_grows_in_place_when_the_next_pages_are_free(void **state)
{
    (void)state;
    /* Above the large-span cache's 1 MiB, so a freed neighbour is free. */
    enum { BLOCK = (1 << 20) + 64 * 1024 };
    if (UNDER_VALGRIND())
        skip(); /* growth in place is off under memcheck */
    unsigned char *a = NULL, *held[64];
    int n = 0;
    unsigned char *prev = spanalloc_malloc(BLOCK);
    for (int i = 0; i < 64 && a == NULL; i++) {
        unsigned char *next = spanalloc_malloc(BLOCK);
        assert_non_null(next);
        if (next == prev + BLOCK) {
            a = prev;
            spanalloc_free(next); /* the pages after a are free now */
        } else {
            held[n++] = prev;
            prev = next;
        }
    }
    assert_non_null(a);
    for (size_t k = 0; k < BLOCK; k++)
        a[k] = (unsigned char)(k * 7);
    unsigned char *g = spanalloc_realloc(a, (BLOCK + BLOCK / 2));
    assert_ptr_equal(g, a);
    assert_true(spanalloc_usable_size(g) >= (BLOCK + BLOCK / 2));
    for (size_t k = 0; k < BLOCK; k++)
        assert_int_equal(g[k], (unsigned char)(k * 7));
    memset(g + BLOCK, 0x5a, spanalloc_usable_size(g) - BLOCK);
    spanalloc_free(g);
    for (int k = 0; k < n; k++)
        spanalloc_free(held[k]);
}

static void failed_realloc_leaves_the_block_intact(void **state)
{
    (void)state;
    static const size_t sizes[] = {100, 40000};
    for (size_t k = 0; k < 2; k++) {
        size_t n = sizes[k];
        void *p = spanalloc_malloc(n);
        assert_non_null(p);
        size_t usable = spanalloc_usable_size(p);
        fill(p, n, 1234 + k);

        errno = 0;
        assert_null(spanalloc_reallocarray(p, SIZE_MAX / 2 + 1, 4));
        assert_int_equal(errno, ENOMEM);
        errno = 0;
        assert_null(spanalloc_reallocarray(p, (size_t)1 << 33, (size_t)1 << 33));
        assert_int_equal(errno, ENOMEM);
        errno = 0;
        assert_null(spanalloc_realloc(p, SIZE_MAX));
        assert_int_equal(errno, ENOMEM);
        errno = 0;
        assert_null(spanalloc_realloc(p, (size_t)PTRDIFF_MAX + 1));
        assert_int_equal(errno, ENOMEM);

        assert_int_equal(spanalloc_usable_size(p), usable);
        assert_true(intact(p, n, 1234 + k));
        /* Still a live, growable block. */
        void *q = spanalloc_reallocarray(p, 3, n);
        assert_non_null(q);
        assert_true(intact(q, n, 1234 + k));
        spanalloc_free(q);
    }
}

/* ---- posix_memalign, aligned_alloc */

static void posix_memalign_rejects_bad_alignments(void **state)
{
    (void)state;
    static const size_t bad[] = {0, 1, 2, 3, 4, 12, 24, 48, 96, 100, 4095, 4097,
                                 sizeof(void *) / 2, SIZE_MAX, SIZE_MAX / 2, 3 * 4096};
    void *const sentinel = (void *)(uintptr_t)0x5e17e1;
    struct mem_stats before = stats_now();
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        void *out = sentinel;
        errno = 0;
        assert_int_equal(spanalloc_posix_memalign(&out, bad[k], 100), EINVAL);
        assert_ptr_equal(out, sentinel);
        assert_int_equal(errno, 0); /* reported through the result only */
        out = sentinel;
        assert_int_equal(spanalloc_posix_memalign(&out, bad[k], 0), EINVAL);
        assert_ptr_equal(out, sentinel);
    }
    assert_int_equal(stats_now().mallocs, before.mallocs);
}

static void posix_memalign_aligns_every_power_of_two(void **state)
{
    (void)state;
    static const size_t sizes[] = {1,    7,    8,     15,    16,    17,    31,
                                   100,  255,  1000,  4095,  4096,  4097,  8192,
                                   10000, 32767, 32768, 32769, 65536, 100000};
    enum { K = sizeof(sizes) / sizeof(sizes[0]) };
    struct mem_stats before = stats_now();
    for (size_t align = sizeof(void *); align <= ((size_t)1 << 20); align <<= 1) {
        void *blocks[K];
        for (size_t k = 0; k < K; k++) {
            void *const sentinel = (void *)(uintptr_t)0x5e17e1;
            void *p = sentinel;
            assert_int_equal(spanalloc_posix_memalign(&p, align, sizes[k]), 0);
            assert_ptr_not_equal(p, sentinel);
            assert_non_null(p);
            assert_true(aligned_to(p, align));
            assert_true(aligned_to(p, 16));
            size_t usable = spanalloc_usable_size(p);
            assert_true(usable >= sizes[k]);
            memset(p, (int)k, usable);
            blocks[k] = p;
        }
        for (size_t k = 0; k < K; k++) {
            const unsigned char *b = blocks[k];
            assert_int_equal(b[0], (unsigned char)k);
            assert_int_equal(b[sizes[k] - 1], (unsigned char)k);
            spanalloc_free(blocks[k]);
        }
    }
    struct mem_stats after = stats_now();
    assert_int_equal(after.heap_objects, before.heap_objects);
    assert_stats_invariants(&after);
}

static void posix_memalign_of_impossible_sizes_fails_with_enomem(void **state)
{
    (void)state;
    static const size_t aligns[] = {8, 16, 32, 64, 256, 4096, 8192, 1 << 20};
    static const size_t sizes[] = {SIZE_MAX, SIZE_MAX - 10, SIZE_MAX - 4096,
                                   (size_t)PTRDIFF_MAX + 1, (size_t)1 << 50};
    void *const sentinel = (void *)(uintptr_t)0x5e17e1;
    struct mem_stats before = stats_now();
    for (size_t a = 0; a < sizeof(aligns) / sizeof(aligns[0]); a++) {
        for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
            void *out = sentinel;
            int rc = spanalloc_posix_memalign(&out, aligns[a], sizes[k]);
            if (rc != ENOMEM)
                print_error("posix_memalign(align %zu, size %#zx) returned %d, out %p\n",
                            aligns[a], sizes[k], rc, out);
            assert_int_equal(rc, ENOMEM);
            assert_ptr_equal(out, sentinel);
        }
    }
    /* An alignment no address space can satisfy. */
    void *out = sentinel;
    assert_int_equal(spanalloc_posix_memalign(&out, (size_t)1 << 62, 16), ENOMEM);
    assert_ptr_equal(out, sentinel);
    assert_int_equal(stats_now().heap_objects, before.heap_objects);
}

static void aligned_alloc_rejects_non_powers_of_two(void **state)
{
    (void)state;
    static const size_t bad[] = {0, 3, 6, 24, 48, 100, 4095, 3 * 4096, SIZE_MAX};
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        errno = 0;
        assert_null(spanalloc_aligned_alloc(bad[k], 100));
        assert_int_equal(errno, EINVAL);
    }
}

static void aligned_alloc_aligns(void **state)
{
    (void)state;
    void *p = spanalloc_aligned_alloc(64, 100);
    assert_non_null(p);
    assert_true(aligned_to(p, 64));
    assert_true(spanalloc_usable_size(p) >= 100);
    memset(p, 1, 100);
    spanalloc_free(p);

    /* Small powers of two below 16 still give 16-aligned blocks. */
    for (size_t align = 1; align <= 65536; align <<= 1) {
        void *blocks[32];
        for (int i = 0; i < 32; i++) {
            size_t n = (size_t)1 + (size_t)i * 997;
            blocks[i] = spanalloc_aligned_alloc(align, n);
            assert_non_null(blocks[i]);
            assert_true(aligned_to(blocks[i], align > 16 ? align : 16));
            assert_true(spanalloc_usable_size(blocks[i]) >= n);
            memset(blocks[i], 2, n);
        }
        for (int i = 0; i < 32; i++)
            spanalloc_free(blocks[i]);
    }
}

static void aligned_alloc_of_impossible_sizes_fails_with_enomem(void **state)
{
    (void)state;
    static const size_t aligns[] = {16, 32, 64, 4096, 8192, 1 << 20};
    static const size_t sizes[] = {SIZE_MAX, SIZE_MAX - 100, (size_t)PTRDIFF_MAX + 1};
    for (size_t a = 0; a < sizeof(aligns) / sizeof(aligns[0]); a++) {
        for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
            errno = 0;
            void *p = spanalloc_aligned_alloc(aligns[a], sizes[k]);
            if (p != NULL)
                print_error("aligned_alloc(%zu, %#zx) returned %p (usable %zu)\n", aligns[a],
                            sizes[k], p, spanalloc_usable_size(p));
            assert_null(p);
            assert_int_equal(errno, ENOMEM);
        }
    }
}

/* ---- free, free_sized, free_aligned_sized, usable_size */

static void freeing_null_does_nothing(void **state)
{
    (void)state;
    struct mem_stats before = stats_now();
    spanalloc_free(NULL);
    spanalloc_free_sized(NULL, 0);
    spanalloc_free_sized(NULL, 100);
    spanalloc_free_aligned_sized(NULL, 64, 128);
    struct mem_stats after = stats_now();
    assert_int_equal(after.frees, before.frees);
    assert_int_equal(after.mallocs, before.mallocs);
    assert_int_equal(spanalloc_usable_size(NULL), 0);
}

static void sized_frees_release_the_block(void **state)
{
    (void)state;
    static const size_t sizes[] = {1, 100, 4096, 32768, 40000, 1 << 20};
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        size_t n = sizes[k];
        struct mem_stats before = stats_now();
        void *p = spanalloc_malloc(n);
        memset(p, 3, n);
        spanalloc_free_sized(p, n);
        void *q = spanalloc_aligned_alloc(256, n);
        assert_true(aligned_to(q, 256));
        memset(q, 4, n);
        spanalloc_free_aligned_sized(q, 256, n);
        void *r = NULL;
        assert_int_equal(spanalloc_posix_memalign(&r, 8192, n), 0);
        spanalloc_free_aligned_sized(r, 8192, n);
        struct mem_stats after = stats_now();
        assert_int_equal(after.mallocs - before.mallocs, 3);
        assert_int_equal(after.frees - before.frees, 3);
        assert_int_equal(after.heap_objects, before.heap_objects);
        assert_int_equal(after.heap_alloc, before.heap_alloc);
    }
}

/* ---- Stats invariants */

static void stats_invariants_hold_after_mixed_work_and_release(void **state)
{
    (void)state;
    enum { N = 4000 };
    void **blocks = calloc(N, sizeof(void *)); /* glibc's: not counted */
    assert_non_null(blocks);
    struct mem_stats base = stats_now();
    unsigned seed = 42;
    uint64_t live_requested = 0;
    for (int i = 0; i < N; i++) {
        size_t n;
        switch (rand_r(&seed) % 8) {
        case 0: n = 32769 + (size_t)rand_r(&seed) % 300000; break;
        case 1: n = 1024 + (size_t)rand_r(&seed) % 31744; break;
        default: n = 1 + (size_t)rand_r(&seed) % 1024; break;
        }
        switch (i % 5) {
        case 0: blocks[i] = spanalloc_calloc(1, n); break;
        case 1: blocks[i] = spanalloc_aligned_alloc((size_t)16 << (i % 9), n); break;
        default: blocks[i] = spanalloc_malloc(n); break;
        }
        assert_non_null(blocks[i]);
        memset(blocks[i], i, n);
        live_requested += n;
    }
    struct mem_stats full = stats_now();
    assert_stats_invariants(&full);
    assert_int_equal(full.heap_objects - base.heap_objects, N);
    assert_true(full.heap_alloc - base.heap_alloc >= live_requested);
    assert_true(full.total_alloc >= base.total_alloc + live_requested);

    for (int i = 0; i < N; i += 2)
        blocks[i] = spanalloc_realloc(blocks[i], 1 + (size_t)i * 31 % 70000);
    for (int i = 1; i < N; i += 2) {
        spanalloc_free(blocks[i]);
        blocks[i] = NULL;
    }
    struct mem_stats half = stats_now();
    assert_stats_invariants(&half);
    assert_int_equal(half.heap_objects - base.heap_objects, N / 2);
    assert_true(half.total_alloc >= full.total_alloc);

    free_os_memory();
    struct mem_stats released = stats_now();
    assert_stats_invariants(&released);
    assert_int_equal(released.num_forced_scavenges, half.num_forced_scavenges + 1);
    assert_int_equal(released.heap_objects, half.heap_objects);
    assert_int_equal(released.heap_alloc, half.heap_alloc);
    /* free_os_memory releases every idle span, whatever its age. */
    assert_int_equal(released.heap_released, released.heap_idle);

    for (int i = 0; i < N; i++)
        spanalloc_free(blocks[i]);
    free(blocks);
    struct mem_stats empty = stats_now();
    assert_stats_invariants(&empty);
    assert_int_equal(empty.heap_objects, base.heap_objects);
    assert_int_equal(empty.heap_alloc, base.heap_alloc);

    free_os_memory();
    struct mem_stats end = stats_now();
    assert_stats_invariants(&end);
    assert_int_equal(end.heap_released, end.heap_idle);
    assert_true(end.heap_released > 0);
    /* The large blocks just freed were written: releasing them counts. */
    assert_true(end.released_total > released.released_total);

    /* Released memory comes back usable, and zero where calloc says so. */
    void *p = spanalloc_calloc(1, 3 << 20);
    assert_non_null(p);
    assert_true(all_zero(p, 3 << 20));
    spanalloc_free(p);
    struct mem_stats last = stats_now();
    assert_stats_invariants(&last);
    assert_int_equal(last.heap_objects, base.heap_objects);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(heap_alloc_grows_by_the_class_size),
        cmocka_unit_test(malloc_zero_returns_unique_freeable_blocks),
        cmocka_unit_test(every_block_is_16_aligned_and_usable_to_its_end),
        cmocka_unit_test(usable_size_bytes_survive_free_of_others_and_realloc),
        cmocka_unit_test(malloc_of_impossible_sizes_fails_with_enomem),
        cmocka_unit_test(calloc_zeroes_reused_dirty_memory),
        cmocka_unit_test(calloc_of_nothing_returns_freeable_blocks),
        cmocka_unit_test(calloc_overflow_fails_with_enomem),
        cmocka_unit_test(realloc_null_allocates),
        cmocka_unit_test(realloc_to_zero_frees_and_returns_null),
        cmocka_unit_test(realloc_keeps_content_across_small_and_large),
        cmocka_unit_test(failed_realloc_leaves_the_block_intact),
        cmocka_unit_test(large_realloc_grows_in_place_when_the_next_pages_are_free),
        cmocka_unit_test(posix_memalign_rejects_bad_alignments),
        cmocka_unit_test(posix_memalign_aligns_every_power_of_two),
        cmocka_unit_test(posix_memalign_of_impossible_sizes_fails_with_enomem),
        cmocka_unit_test(aligned_alloc_rejects_non_powers_of_two),
        cmocka_unit_test(aligned_alloc_aligns),
        cmocka_unit_test(aligned_alloc_of_impossible_sizes_fails_with_enomem),
        cmocka_unit_test(freeing_null_does_nothing),
        cmocka_unit_test(sized_frees_release_the_block),
        cmocka_unit_test(stats_invariants_hold_after_mixed_work_and_release),
    };
    return cmocka_run_group_tests_name("api", tests, NULL, NULL);
}
