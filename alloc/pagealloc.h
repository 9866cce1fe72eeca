/*
 * pagealloc.h: the page allocator's index of free spans by size (see
 * pagealloc.c).  The caller (mheap.c) holds the heap lock.
 */
#ifndef SPANALLOC_PAGEALLOC_H
#define SPANALLOC_PAGEALLOC_H

#include "internal.h"

/* Buckets: [1, 127] one per exact page count; then 8 per power of two up to
 * 2^32 pages (bucket 0 is unused). */
#define SA_PA_EXACT 128
#define SA_PA_SUBS_LOG 3
#define SA_PA_BUCKETS (SA_PA_EXACT + (32 - 7) * (1 << SA_PA_SUBS_LOG))
#define SA_PA_WORDS ((SA_PA_BUCKETS + 63) / 64)
/* Spans of an inexact bucket looked at before moving to the next bucket. */
#define SA_PA_PEEK 4

/* The heap's two indexes (dirty, clean) live in mheap.c: every field under
 * the heap lock. */
struct sa_free_index {
    struct sa_span_list bucket[SA_PA_BUCKETS];
    uint64_t nonempty[SA_PA_WORDS];
    uint64_t spans, pages; /* what the index holds */
};

unsigned sa_free_index_bucket(size_t npages);
/* The smallest page count bucket b holds. */
size_t sa_free_index_bucket_floor(unsigned b);
void sa_free_index_insert(struct sa_free_index *ix, struct sa_span *s);
void sa_free_index_remove(struct sa_free_index *ix, struct sa_span *s);
/* A span of at least npages, or NULL only if none is indexed.  Reads at most
 * SA_PA_PEEK list entries and SA_PA_WORDS bitmap words whenever a span that
 * fits exists outside the request's own bucket. */
struct sa_span *sa_free_index_find(const struct sa_free_index *ix, size_t npages);

#endif /* SPANALLOC_PAGEALLOC_H */
