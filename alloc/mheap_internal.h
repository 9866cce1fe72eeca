/*
 * mheap_internal.h: the page heap's locked primitives, for the large-span
 * cache (alloc/largecache.c), which keeps its spans under the heap's own
 * lock so that a large malloc or free costs one lock round trip.
 *
 * Every function here expects the heap lock held (sa_mheap_lock) and leaves
 * it held, except sa_mheap_claim_large_free_locked's report, which drops it
 * before it aborts.  Nothing outside alloc/ includes this file.
 */
#ifndef SPANALLOC_MHEAP_INTERNAL_H
#define SPANALLOC_MHEAP_INTERNAL_H

#include "internal.h"

/* The idle stamps' coarse clock (see mheap.c). */
uint64_t sa_mheap_now_locked(void);
/* Allocate and publish a span as sa_mheap_alloc does, the lock held. */
struct sa_span *sa_mheap_alloc_locked(size_t npages, size_t align_pages, unsigned cls, bool *grew);
/* Would a resident ("dirty") free span of npages serve a request? */
bool sa_mheap_has_resident_fit_locked(size_t npages);
void sa_mheap_count_large_malloc(size_t npages);
/* Heap lock held: large span s, just counted (or about to be uncounted) as
 * its pages, is counted as `counted` bytes instead (0: as its pages). */
void sa_mheap_count_large_as_locked(const struct sa_span *s, size_t counted);
/* Count the free of large span s, counted as `counted` bytes (0: its
 * pages); a double free is reported. */
void sa_mheap_claim_large_free_as_locked(struct sa_span *s, size_t counted);
static inline void sa_mheap_claim_large_free_locked(struct sa_span *s)
{
    sa_mheap_claim_large_free_as_locked(s, 0);
}
/* Return span s to the free structures, idle since idle_since (ns), or
 * since now. */
void sa_mheap_free_locked_since(struct sa_span *s, uint64_t idle_since);
void sa_mheap_free_locked(struct sa_span *s);
/* SPANALLOC_IDLE_LIMIT's excess (bytes), 0 if under the limit. */
uint64_t sa_mheap_idle_excess_locked(void);

/* The free paths' tail, after the lock is dropped: the test stays inline;
 * over the limit, the release is handed up through the hook table. */
static inline void sa_mheap_after_free(uint64_t excess)
{
    if (SA_UNLIKELY(excess != 0))
        sa_hooks_idle_excess(excess);
}

#endif
