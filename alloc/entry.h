/*
 * entry.h: malloc and free as the entry points run them, inlined into both
 * the prefixed API (malloc.c) and the libc names (override.c) so neither pays
 * a call.  Small requests go to the thread cache; everything rare (large
 * objects, bad pointers) is out of line in malloc.c.
 */
#ifndef SPANALLOC_ENTRY_H
#define SPANALLOC_ENTRY_H

#include "mcache.h"

void *sa_malloc_large(size_t size, size_t align);
void sa_free_not_small(void *ptr, struct sa_span *s);

static inline void *sa_malloc_inline(size_t size)
{
    if (SA_LIKELY(size <= SA_MAX_SMALL))
        return sa_mcache_alloc(sa_size_class(size));
    return sa_malloc_large(size, 0);
}

/* A small block is freed only if it is the start of an object of its span
 * and not already free; anything else is reported before it can do harm. */
static inline void sa_free_inline(void *ptr)
{
    if (SA_UNLIKELY(ptr == NULL))
        return;
    struct sa_span *s = sa_pagemap_lookup((uintptr_t)ptr);
    if (SA_LIKELY(s != NULL && s->state == SA_SPAN_SMALL)) {
        uintptr_t offset = (uintptr_t)ptr - s->base;
        uint64_t index = ((uint64_t)offset * s->div_magic) >> 32;
        if (SA_UNLIKELY(index * s->elem_size != offset || index >= s->nelems))
            sa_bad_small_free(ptr, s);
        sa_mcache_free(ptr, s->cls, s);
        return;
    }
    sa_free_not_small(ptr, s);
}

#endif /* SPANALLOC_ENTRY_H */
