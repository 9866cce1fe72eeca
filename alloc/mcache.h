/*
 * mcache.h: the fast path, inlined into the entry points.
 *
 * A thread's cache holds, per size class, a list of free blocks.  malloc pops
 * from it and free pushes onto it: no lock, no atomic read-modify-write, and
 * no write to memory another thread writes (the counters are the thread's
 * own).  Everything else (an empty list, a full list, a thread without a
 * cache yet) is one call away in mcache.c.
 */
#ifndef SPANALLOC_MCACHE_H
#define SPANALLOC_MCACHE_H

#include "internal.h"

/* free() of anything the inline checks did not accept (malloc.c). */
void sa_free_not_small(void *ptr, struct sa_span *s);

static inline void *sa_mcache_alloc(unsigned cls)
{
    struct sa_mcache *c = sa_tls_cache;
    struct sa_cache_list *l = &c->lists[cls];
    /* Keep l in a register: GCC otherwise recomputes it from cls for the
     * last counter update, two instructions more. */
    __asm__("" : "+r"(l));
    uintptr_t *block = l->head;
    if (SA_UNLIKELY(block == NULL))
        return sa_mcache_alloc_slow(cls);
    uintptr_t link = block[0];
    if (SA_UNLIKELY(block[1] != (link ^ (uintptr_t)block ^ c->mark_key)))
        sa_report("corrupted free block (written after free)", block,
                  sa_pagemap_lookup((uintptr_t)block));
    SA_OWNER_ADD(l->count, -1);
    SA_OWNER_ADD(l->mallocs, 1);
    l->head = (void *)(link ^ ((uintptr_t)block >> 12) ^ c->link_key);
    block[1] = 0; /* no longer free */
    return block;
}

/* Push a small block (checked to be an object start of span s) onto this
 * thread's list for its class.  The double-free check reads the block's
 * mark word; it comes after the capacity check so that under valgrind, where
 * every list has capacity 0, only the slow path reads user memory.  The
 * encoding is sa_block_make_free's, with the cache's copies of the keys. */
static inline void sa_mcache_free(void *block, unsigned cls, struct sa_span *s)
{
    struct sa_mcache *c = sa_tls_cache;
    struct sa_cache_list *l = &c->lists[cls];
    if (SA_UNLIKELY(l->count >= l->max)) {
        sa_mcache_free_slow(block, cls);
        return;
    }
    uintptr_t *w = block, addr = (uintptr_t)block;
    uintptr_t mark_key = c->mark_key;
    if (SA_UNLIKELY(w[1] == (w[0] ^ addr ^ mark_key))) {
        sa_free_not_small(block, s); /* reports the double free */
        return;
    }
    uintptr_t link = (uintptr_t)l->head ^ (addr >> 12) ^ c->link_key;
    w[0] = link;
    w[1] = link ^ addr ^ mark_key;
    l->head = block;
    SA_OWNER_ADD(l->count, 1);
}

#endif /* SPANALLOC_MCACHE_H */
