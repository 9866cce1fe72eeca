/*
 * A block above 4 GiB, end to end: its span's page count and byte size no
 * longer fit the 32-bit fields a small span uses, so every path that sizes a
 * large block (malloc, calloc, malloc_usable_size, realloc up and down across
 * 4 GiB, free) must take the page count.  heap_alloc must move by exactly the
 * usable size at each step.
 *
 * The calls are the library's own definitions of the libc names (looked up on
 * its handle, as test_libc_names.c does), so under ASan and TSan, whose
 * interceptors own the process's malloc, spanalloc's code still runs.  Only
 * a few pages of each block are touched: the memory is reserved, not resident.
 */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_helpers.h"

#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#else
#define RUNNING_ON_VALGRIND 0
#endif

#define MiB ((size_t)1 << 20)
#define GiB ((size_t)1 << 30)
#define HUGE_SIZE (5 * GiB)
#define STRIDE (256 * MiB) /* one touched byte per stride: 20 pages of 5 GiB */

static struct {
    void *(*malloc)(size_t);
    void (*free)(void *);
    void *(*calloc)(size_t, size_t);
    void *(*realloc)(void *, size_t);
    size_t (*malloc_usable_size)(void *);
} L;

static int resolve_library(void **state)
{
    (void)state;
    Dl_info info;
    if (dladdr((void *)spanalloc_malloc, &info) == 0 || info.dli_fname == NULL)
        return -1;
    void *h = dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD);
    if (h == NULL)
        return -1;
    L.malloc = (void *(*)(size_t))dlsym(h, "malloc");
    L.free = (void (*)(void *))dlsym(h, "free");
    L.calloc = (void *(*)(size_t, size_t))dlsym(h, "calloc");
    L.realloc = (void *(*)(void *, size_t))dlsym(h, "realloc");
    L.malloc_usable_size = (size_t (*)(void *))dlsym(h, "malloc_usable_size");
    dlclose(h); /* NOLOAD: the library stays, linked */
    return L.malloc && L.free && L.calloc && L.realloc && L.malloc_usable_size ? 0 : -1;
}

static void mark(unsigned char *p, size_t n, unsigned char seed)
{
    for (size_t off = 0; off < n; off += STRIDE)
        p[off] = (unsigned char)(seed + off / STRIDE);
    p[n - 1] = (unsigned char)(seed ^ 0xff);
}

static void check_marks(const unsigned char *p, size_t n, unsigned char seed)
{
    for (size_t off = 0; off < n; off += STRIDE)
        assert_int_equal(p[off], (unsigned char)(seed + off / STRIDE));
    assert_int_equal(p[n - 1], (unsigned char)(seed ^ 0xff));
}

static uint64_t heap_alloc_now(void)
{
    struct mem_stats st = stats_now();
    assert_stats_invariants(&st);
    return st.heap_alloc;
}

/* calloc first, on fresh address space (no page to clear): zero where read. */
static void calloc_of_five_gib(void **state)
{
    (void)state;
    uint64_t before = heap_alloc_now();
    unsigned char *p = L.calloc(5, GiB);
    assert_non_null(p);
    size_t usable = L.malloc_usable_size(p);
    assert_true(usable >= HUGE_SIZE && usable < HUGE_SIZE + 8192);
    assert_int_equal(heap_alloc_now(), before + usable);
    for (size_t off = 0; off < HUGE_SIZE; off += STRIDE)
        assert_int_equal(p[off], 0);
    assert_int_equal(p[HUGE_SIZE - 1], 0);
    mark(p, HUGE_SIZE, 7);
    check_marks(p, HUGE_SIZE, 7);
    L.free(p);
    assert_int_equal(heap_alloc_now(), before);
    free_os_memory(); /* nothing of it stays resident for the next tests */
}

static void malloc_of_five_gib(void **state)
{
    (void)state;
    uint64_t before = heap_alloc_now();
    unsigned char *p = L.malloc(HUGE_SIZE + 1);
    assert_non_null(p);
    size_t usable = L.malloc_usable_size(p);
    assert_true(usable > HUGE_SIZE && usable <= HUGE_SIZE + 8192);
    assert_int_equal(spanalloc_usable_size(p), usable);
    assert_int_equal(heap_alloc_now(), before + usable);
    mark(p, usable, 11);
    check_marks(p, usable, 11);
    L.free(p);
    assert_int_equal(heap_alloc_now(), before);
    free_os_memory();
}

/* Up across 4 GiB from 1 MiB (the copy is 1 MiB) and back down; in
 * between, shrinking to 3 GiB keeps the block in place and gives the rest
 * back. */
static void realloc_across_four_gib(void **state)
{
    (void)state;
    uint64_t before = heap_alloc_now();
    unsigned char *p = L.malloc(MiB);
    assert_non_null(p);
    memset(p, 0x3c, MiB);
    unsigned char *q = L.realloc(p, HUGE_SIZE);
    assert_non_null(q);
    size_t usable = L.malloc_usable_size(q);
    assert_true(usable >= HUGE_SIZE && usable < HUGE_SIZE + 8192);
    assert_int_equal(heap_alloc_now(), before + usable);
    for (size_t i = 0; i < MiB; i += 4096)
        assert_int_equal(q[i], 0x3c);
    assert_int_equal(q[MiB - 1], 0x3c);
    q[HUGE_SIZE - 1] = 0x5d;
    q[4 * GiB] = 0x6e; /* the first byte past 4 GiB */

    /* Shrinking by a page or more keeps the block and gives the tail back
     * to the heap (docs/design.md). */
    unsigned char *r = L.realloc(q, 3 * GiB);
    assert_ptr_equal(r, q);
    if (!RUNNING_ON_VALGRIND) /* under memcheck the block keeps its size */
        usable = 3 * GiB;
    assert_int_equal(L.malloc_usable_size(r), usable);
    assert_int_equal(heap_alloc_now(), before + usable);

    unsigned char *s = L.realloc(r, MiB);
    assert_non_null(s);
    size_t small_usable = L.malloc_usable_size(s);
    assert_true(small_usable >= MiB && small_usable < MiB + 8192);
    assert_int_equal(heap_alloc_now(), before + small_usable);
    for (size_t i = 0; i < MiB; i += 4096)
        assert_int_equal(s[i], 0x3c);
    L.free(s);
    assert_int_equal(heap_alloc_now(), before);
    free_os_memory();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(calloc_of_five_gib),
        cmocka_unit_test(malloc_of_five_gib),
        cmocka_unit_test(realloc_across_four_gib),
    };
    return cmocka_run_group_tests_name("huge", tests, resolve_library, NULL);
}
