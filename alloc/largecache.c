/*
 * largecache.c: the large-span cache, between malloc's large objects and the
 * page heap (alloc/mheap.c).
 *
 * Freeing a large span and allocating one of the same size again costs a
 * merge, a split and free-list updates.  Spans of up to
 * LARGE_CACHE_SPAN_PAGES are kept whole instead, a few at a time, and handed
 * out again for a request of exactly their size: the page map still points at
 * them.  A cached span stays counted in heap_inuse (like a span cached for a
 * size class; heap_alloc no longer counts it) and is never released while
 * cached.  The cache is bounded in slots and pages; when full, its oldest
 * span goes to the heap; a request of another size (a miss) that resident
 * free memory serves costs the cache nothing (one that does not empties it,
 * see sa_mheap_alloc_large), and every scavenge (the background cycle, free_os_memory,
 * the limits) empties it, so nothing stays there past one scavenger period.
 * Its total is small (1 MiB): a cached span splits the free memory around
 * it, so a bigger cache costs peak RSS for no reuse (docs/benchmarks.md,
 * "Design choices").
 * A free of a cached span's address finds state CACHED: a double free,
 * reported.  Slots are kept oldest first. */
#include <string.h>

#include "internal.h"
#include "mheap_internal.h"

#define LARGE_CACHE_SLOTS 16
#define LARGE_CACHE_SPAN_PAGES 128  /* 1 MiB */
#define LARGE_CACHE_TOTAL_PAGES 128 /* 1 MiB */

/* All three under the heap lock (sa_mheap_lock). */
static struct sa_span *large_cache[LARGE_CACHE_SLOTS];
static unsigned large_cache_n;
static size_t large_cache_pages;

/* Remove slot i, keeping the order. */
static struct sa_span *cache_remove(unsigned i)
{
    struct sa_span *s = large_cache[i];
    for (unsigned j = i + 1; j < large_cache_n; j++) /* usually none: the newest is taken */
        large_cache[j - 1] = large_cache[j];
    large_cache_n--;
    large_cache_pages -= s->npages;
    return s;
}

/* A span of exactly npages from the cache, now LARGE and counted, or NULL. */
static struct sa_span *take_cached_locked(size_t npages)
{
    for (unsigned i = large_cache_n; i-- > 0;) { /* newest first: warmest */
        if (large_cache[i]->npages != npages)
            continue;
        struct sa_span *s = cache_remove(i);
        s->state = SA_SPAN_LARGE;
        s->needzero = 1;
        sa_mheap_count_large_malloc(npages);
        return s;
    }
    return NULL;
}

/* Keep a freed large span in the cache, making room by sending the oldest
 * to the heap; false if it is too big to be cached. */
static bool cache_put_locked(struct sa_span *s)
{
    if (s->npages > LARGE_CACHE_SPAN_PAGES)
        return false;
    while (large_cache_n == LARGE_CACHE_SLOTS ||
           large_cache_pages + s->npages > LARGE_CACHE_TOTAL_PAGES) {
        struct sa_span *old = cache_remove(0);
        sa_mheap_free_locked_since(old, old->idle_since_ns);
    }
    s->state = SA_SPAN_CACHED;
    s->idle_since_ns = sa_mheap_now_locked(); /* kept when it leaves the cache */
    large_cache[large_cache_n++] = s;
    large_cache_pages += s->npages;
    return true;
}

/* Heap lock held. */
static void flush_large_cache_locked(void)
{
    while (large_cache_n > 0) {
        /* Idle since it was cached: emptying the cache must not make it,
         * or the older span it merges with, look freshly freed to the age
         * rule and the idle limit. */
        struct sa_span *s = cache_remove(large_cache_n - 1);
        sa_mheap_free_locked_since(s, s->idle_since_ns);
    }
}

void sa_mheap_flush_large_cache(void)
{
    sa_mheap_lock();
    flush_large_cache_locked();
    sa_mheap_unlock();
}

struct sa_span *sa_mheap_take_cached(size_t npages)
{
    sa_mheap_lock();
    struct sa_span *s = take_cached_locked(npages);
    sa_mheap_unlock();
    return s;
}

/* One lock round trip: the cache, else the page allocator. */
struct sa_span *sa_mheap_alloc_large_as(size_t npages, size_t align_pages, size_t counted)
{
    bool grew = false;
    sa_mheap_lock();
    struct sa_span *s = align_pages <= 1 ? take_cached_locked(npages) : NULL;
    if (s == NULL) {
        /* No resident free span fits: the cached ones go back first, to be
         * merged with their free neighbours, rather than fault fresh pages
         * in beside them (peak RSS, docs/benchmarks.md section 4).  A miss
         * that resident memory serves leaves the cache alone. */
        if (large_cache_n > 0 && !sa_mheap_has_resident_fit_locked(npages + align_pages - 1))
            flush_large_cache_locked();
        s = sa_mheap_alloc_locked(npages, align_pages, 0, &grew);
    }
    if (s != NULL && counted != 0) /* only sampled blocks count otherwise */
        sa_mheap_count_large_as_locked(s, counted);
    sa_mheap_unlock();
    sa_hooks_after_refill(grew);
    return s;
}


/* One lock round trip: kept in the cache, or freed to the heap. */
void sa_mheap_free_large_cached_as(struct sa_span *s, size_t counted)
{
    sa_mheap_lock();
    sa_mheap_claim_large_free_as_locked(s, counted);
    if (!cache_put_locked(s))
        sa_mheap_free_locked(s);
    uint64_t excess = sa_mheap_idle_excess_locked();
    sa_mheap_unlock();
    sa_mheap_after_free(excess);
}

