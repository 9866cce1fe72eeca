/*
 * pagealloc.c: finding a free run of pages in time that does not grow with
 * the number of free runs (fragmentation) or with the run's size.
 *
 * Free spans are kept in segregated lists: one per exact page count below
 * 128 pages (1 MiB), then eight per power of two (each covering 1/8 of the
 * octave), with a bitmap of the non-empty lists.  A request looks at a few
 * spans of its own list (sizes there differ by less than 1/8, so a span that
 * fits is usually among the first) and otherwise takes the first span of the
 * next non-empty list, every span of which fits: a handful of list entries
 * and six bitmap words, never a walk over the free spans.  Only when no
 * bigger list has a span is the rest of the request's own list walked, as
 * the last resort before the heap grows (which costs a system call anyway).  Coalescing is
 * O(1) too: a free span maps its first and last page (mheap.c), so a freed
 * span finds both neighbours with two page-map loads.
 *
 * Go's page allocator (a bitmap with a radix tree of run summaries) gives
 * address-ordered first fit in O(log) per search; these lists give up the
 * address order (a span is taken from its list's front) for a search that is
 * a constant number of loads, and keep exact fit below 1 MiB, where most
 * large requests fall.  Which end of a span is used stays mheap.c's choice.
 */
#include "pagealloc.h"

unsigned sa_free_index_bucket(size_t npages)
{
    if (npages < SA_PA_EXACT)
        return (unsigned)npages;
    unsigned log = 63u - (unsigned)__builtin_clzll((unsigned long long)npages);
    unsigned sub = (unsigned)(npages >> (log - SA_PA_SUBS_LOG)) & ((1u << SA_PA_SUBS_LOG) - 1);
    return SA_PA_EXACT + ((log - 7) << SA_PA_SUBS_LOG) + sub;
}

size_t sa_free_index_bucket_floor(unsigned b)
{
    if (b < SA_PA_EXACT)
        return b;
    unsigned log = 7 + ((b - SA_PA_EXACT) >> SA_PA_SUBS_LOG);
    size_t sub = (b - SA_PA_EXACT) & ((1u << SA_PA_SUBS_LOG) - 1);
    return (((size_t)1 << SA_PA_SUBS_LOG) + sub) << (log - SA_PA_SUBS_LOG);
}

void sa_free_index_insert(struct sa_free_index *ix, struct sa_span *s)
{
    unsigned b = sa_free_index_bucket(s->npages);
    sa_span_list_push(&ix->bucket[b], s);
    ix->nonempty[b / 64] |= (uint64_t)1 << (b % 64);
    ix->spans++;
    ix->pages += s->npages;
}

void sa_free_index_remove(struct sa_free_index *ix, struct sa_span *s)
{
    unsigned b = sa_free_index_bucket(s->npages);
    sa_span_list_remove(&ix->bucket[b], s);
    if (ix->bucket[b].first == NULL)
        ix->nonempty[b / 64] &= ~((uint64_t)1 << (b % 64));
    ix->spans--;
    ix->pages -= s->npages;
}

/* The first non-empty bucket >= b, or SA_PA_BUCKETS. */
static unsigned first_nonempty_from(const struct sa_free_index *ix, unsigned b)
{
    for (unsigned w = b / 64; w < SA_PA_WORDS; w++) {
        uint64_t bits = ix->nonempty[w];
        if (w == b / 64)
            bits &= ~(uint64_t)0 << (b % 64);
        if (bits)
            return w * 64 + (unsigned)__builtin_ctzll(bits);
    }
    return SA_PA_BUCKETS;
}

struct sa_span *sa_free_index_find(const struct sa_free_index *ix, size_t npages)
{
    if (npages == 0 || npages > UINT32_MAX)
        return NULL;
    unsigned b = sa_free_index_bucket(npages);
    if (b < SA_PA_EXACT) {
        unsigned f = first_nonempty_from(ix, b);
        return f < SA_PA_BUCKETS ? ix->bucket[f].first : NULL;
    }
    /* Sizes in b range over [floor, next floor): look at a few, then move to
     * the next bucket, where every span fits. */
    const struct sa_span *s = ix->bucket[b].first;
    for (unsigned i = 0; s != NULL && i < SA_PA_PEEK; s = s->next, i++)
        if (s->npages >= npages)
            return (struct sa_span *)s;
    unsigned f = first_nonempty_from(ix, b + 1);
    if (f < SA_PA_BUCKETS)
        return ix->bucket[f].first;
    /* Nothing bigger: the rest of b before saying no, since the caller's
     * alternative is to grow the heap (a system call) while a span that
     * fits sits here. */
    for (; s != NULL; s = s->next)
        if (s->npages >= npages)
            return (struct sa_span *)s;
    return NULL;
}
