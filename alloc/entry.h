/*
 * entry.h: malloc and free as the entry points run them, inlined into both
 * the prefixed API (malloc.c) and the libc names (override.c) so neither pays
 * a call.  Small requests go to the thread cache; everything rare (large
 * objects, bad pointers) is out of line in malloc.c.
 */
#ifndef SPANALLOC_ENTRY_H
#define SPANALLOC_ENTRY_H

#include "mcache.h"
#include "sampler.h"

void *sa_malloc_large(size_t size, size_t align);
void *sa_malloc_own_span(size_t size, size_t align);
void *sa_malloc_own_span_as(size_t size, size_t align, size_t counted);

/* malloc without the heap profile's hook (the sampler's fallback).  One
 * inlined copy of the cache pop for both lookups: two copies would end in one
 * shared return, costing the fast path a register move. */
static inline void *sa_malloc_unsampled(size_t size)
{
    size_t list_off;
    if (SA_LIKELY(size <= SA_DIRECT_MAX))
        list_off = sa_table_size_index(sa_tls.table)[size];
    else if (SA_LIKELY(size <= SA_MAX_SMALL))
        list_off = sa_size_list_offset(size);
    else
        return sa_malloc_large(size, 0);
    return sa_mcache_alloc(list_off);
}

static inline void *sa_malloc_inline(size_t size)
{
    /* ---- heap profile (profile/sampler.h): count down, sample out of line */
    if (SA_UNLIKELY(sa_profile_tick(size)))
        return sa_profile_malloc(size, 0);
    /* ---- */
    return sa_malloc_unsampled(size);
}

/* A small block is freed only if it is the start of an object of its span
 * (one multiply, see struct sa_span's free_magic) and not already free.
 * Everything else goes out of line, where large objects are freed and bad
 * pointers reported: addresses outside the page map's range or in an arena
 * spanalloc never used (NULL among them), pages no span holds (they map to
 * sa_span_none, whose free_limit is 0) and non-small spans (free_limit 0). */
static inline void sa_free_inline(void *ptr)
{
    uintptr_t addr = (uintptr_t)ptr;
    uintptr_t bias = sa_pagemap_bias(addr);
    if (SA_UNLIKELY(bias == 0)) {
        sa_free_full_lookup(ptr);
        return;
    }
    struct sa_span *s = sa_pagemap_entry(bias, addr);
    if (SA_UNLIKELY((uint64_t)(addr - s->base) * s->free_magic >= s->free_limit)) {
        sa_free_large(ptr, s);
        return;
    }
    sa_mcache_free(ptr, s);
}

#endif /* SPANALLOC_ENTRY_H */
