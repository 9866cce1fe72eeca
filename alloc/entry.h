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

static inline void *sa_malloc_inline(size_t size)
{
    if (SA_LIKELY(size <= SA_MAX_SMALL))
        return sa_mcache_alloc(sa_size_class(size));
    return sa_malloc_large(size, 0);
}

/* A small block is freed only if it is the start of an object of its span
 * and not already free.  Everything else (a large object, a bad pointer)
 * fails the index check, since only small spans have nelems > 0, and goes
 * out of line, where large objects are freed and bad pointers reported. */
static inline void sa_free_inline(void *ptr)
{
    if (SA_UNLIKELY(ptr == NULL))
        return;
    struct sa_span *s = sa_pagemap_lookup((uintptr_t)ptr);
    if (SA_UNLIKELY(s == NULL)) {
        sa_free_not_small(ptr, s);
        return;
    }
    uintptr_t offset = (uintptr_t)ptr - s->base;
    uint64_t index = ((uint64_t)offset * s->div_magic) >> 32;
    if (SA_UNLIKELY(index * s->elem_size != offset || index >= s->nelems)) {
        sa_free_not_small(ptr, s);
        return;
    }
    sa_mcache_free(ptr, s->cls, s);
}

#endif /* SPANALLOC_ENTRY_H */
