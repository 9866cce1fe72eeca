/* The page allocator against models.
 *
 * The size index (alloc/pagealloc.c) against a list of spans: every search
 * returns a span that fits, and NULL only when none fits.  The heap
 * (alloc/mheap.c) against a page model, through random allocation and
 * freeing of runs and partial releases: live runs never overlap, free runs
 * are coalesced and mapped at their ends (sa_mheap_verify), and the
 * released bitmap is exact page for page (needzero, the bytes each release
 * reports, and the pages themselves reading zero after a release). */
#include <stdlib.h>
#include <string.h>

#include "test_helpers.h"
#include "internal.h"
#include "pagealloc.h"

/* ---- The size index alone */

static void buckets_partition_the_sizes(void **state)
{
    (void)state;
    unsigned prev = 0;
    for (size_t n = 1; n < ((size_t)1 << 20); n += 1 + n / 64) {
        unsigned b = sa_free_index_bucket(n);
        assert_true(b >= prev); /* monotonic */
        assert_true(b < SA_PA_BUCKETS);
        assert_true(sa_free_index_bucket_floor(b) <= n);
        if (b + 1 < SA_PA_BUCKETS)
            assert_true(n < sa_free_index_bucket_floor(b + 1));
        if (n < SA_PA_EXACT)
            assert_int_equal(b, n);
        prev = b;
    }
    assert_int_equal(sa_free_index_bucket(UINT32_MAX), SA_PA_BUCKETS - 1);
}

#define NSPANS 400

static void find_returns_a_fit_iff_one_exists(void **state)
{
    (void)state;
    static struct sa_free_index ix;
    static struct sa_span spans[NSPANS];
    bool in[NSPANS] = {false};
    srand(7);
    for (int step = 0; step < 20000; step++) {
        int i = rand() % NSPANS;
        if (in[i]) {
            sa_free_index_remove(&ix, &spans[i]);
            in[i] = false;
        } else {
            /* Clusters of near sizes: the case a bucket's peek can miss. */
            uint32_t n = rand() % 4 ? 128 + (uint32_t)(rand() % 16) : 1 + (uint32_t)(rand() % 5000);
            spans[i].npages = n;
            sa_free_index_insert(&ix, &spans[i]);
            in[i] = true;
        }
        size_t want = rand() % 2 ? 128 + (size_t)(rand() % 16) : 1 + (size_t)(rand() % 6000);
        bool exists = false;
        for (int k = 0; k < NSPANS; k++)
            exists |= in[k] && spans[k].npages >= want;
        struct sa_span *got = sa_free_index_find(&ix, want);
        assert_int_equal(got != NULL, exists);
        if (got != NULL) {
            assert_true(got->npages >= want);
            assert_true(in[got - spans]);
        }
    }
}

/* ---- The heap against a page model */

enum { P_UNSEEN = 0, P_LIVE, P_RESIDENT, P_RELEASED };

#define TABLE_BITS 20
static struct slot {
    uintptr_t page; /* page number + 1; 0: empty */
    uint8_t st;
} table[1u << TABLE_BITS];

static struct slot *slot_of(uintptr_t addr)
{
    uintptr_t page = (addr >> SA_PAGE_SHIFT) + 1;
    size_t h = (size_t)(page * 0x9e3779b97f4a7c15ull) >> (64 - TABLE_BITS);
    while (table[h].page != 0 && table[h].page != page)
        h = (h + 1) & ((1u << TABLE_BITS) - 1);
    table[h].page = page;
    return &table[h];
}

#define MAXLIVE 256
static struct sa_span *live[MAXLIVE];
static int nlive;

static void model_alloc(size_t npages)
{
    struct sa_span *s = sa_mheap_alloc_large(npages, 1);
    assert_non_null(s);
    assert_int_equal(s->npages, npages);
    assert_int_equal(s->state, SA_SPAN_LARGE);
    assert_ptr_equal(sa_pagemap_lookup(s->base), s);
    assert_ptr_equal(sa_pagemap_lookup(s->base + (npages - 1) * SA_PAGE_SIZE), s);
    bool resident = false;
    for (size_t i = 0; i < npages; i++) {
        struct slot *sl = slot_of(s->base + i * SA_PAGE_SIZE);
        assert_int_not_equal(sl->st, P_LIVE); /* no overlap with a live run */
        resident |= sl->st == P_RESIDENT;
        /* A page the model knows released must read zero (it went back). */
        if (sl->st == P_RELEASED || sl->st == P_UNSEEN)
            assert_int_equal(((volatile char *)s->base)[i * SA_PAGE_SIZE], 0);
        sl->st = P_LIVE;
        ((volatile char *)s->base)[i * SA_PAGE_SIZE] = (char)0xab;
    }
    assert_int_equal(s->needzero, resident);
    live[nlive++] = s;
}

static void model_free(int i)
{
    struct sa_span *s = live[i];
    for (size_t k = 0; k < s->npages; k++)
        slot_of(s->base + k * SA_PAGE_SIZE)->st = P_RESIDENT;
    sa_mheap_free_large(s);
    live[i] = live[--nlive];
}

/* A partial release: every model page that went from resident to released
 * is one the call reports; no page went the other way, none that is live. */
static void model_release(uint64_t max_bytes)
{
    uint64_t got = sa_mheap_scavenge(UINT64_MAX, max_bytes);
    uint64_t newly = 0;
    for (size_t h = 0; h < (1u << TABLE_BITS); h++) {
        if (table[h].page == 0)
            continue;
        uintptr_t addr = (table[h].page - 1) << SA_PAGE_SHIFT;
        bool bit = sa_pagemap_count_released(addr, 1) == 1;
        switch (table[h].st) {
        case P_LIVE:
            assert_false(bit);
            break;
        case P_RELEASED:
            assert_true(bit);
            break;
        case P_RESIDENT:
            if (bit) {
                table[h].st = P_RELEASED;
                newly++;
            }
            break;
        }
    }
    assert_int_equal(got, newly << SA_PAGE_SHIFT);
    if (max_bytes != UINT64_MAX)
        assert_true(got <= max_bytes + SA_PAGE_SIZE - 1);
}

static void heap_matches_the_page_model(void **state)
{
    (void)state;
    sa_options.idle_limit_pct = 0; /* releases happen only where the model asks */
    sa_mheap_flush_large_cache();
    free_os_memory(); /* every idle page released: unseen pages are released */
    struct mem_stats start = stats_now();
    srand(11);
    for (int step = 0; step < 4000; step++) {
        int r = rand() % 100;
        if (r < 50 && nlive < MAXLIVE) {
            size_t n = rand() % 8 ? 1 + (size_t)(rand() % 40) : 100 + (size_t)(rand() % 900);
            model_alloc(n);
        } else if (r < 97 && nlive > 0) {
            model_free(rand() % nlive);
        } else {
            model_release(rand() % 4 ? (uint64_t)(rand() % 300) * SA_PAGE_SIZE : UINT64_MAX);
        }
        const char *err = sa_mheap_verify();
        if (err != NULL)
            fail_msg("step %d: %s", step, err);
    }
    while (nlive > 0)
        model_free(nlive - 1);
    model_release(UINT64_MAX);
    assert_null(sa_mheap_verify());
    struct mem_stats end = stats_now();
    assert_stats_invariants(&end);
    assert_int_equal(end.heap_alloc, start.heap_alloc);
    assert_int_equal(end.heap_released, end.heap_idle);
}

int main(void)
{
    sa_options.scavenger_enabled = false; /* nothing releases behind the model */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(buckets_partition_the_sizes),
        cmocka_unit_test(find_returns_a_fit_iff_one_exists),
        cmocka_unit_test(heap_matches_the_page_model),
    };
    return cmocka_run_group_tests_name("pagealloc", tests, NULL, NULL);
}
