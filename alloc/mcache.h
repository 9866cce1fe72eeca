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

/* The list at byte offset list_off (class * sizeof list) of the cache. */
static inline struct sa_cache_list *sa_cache_list_at(struct sa_mcache *c, size_t list_off)
{
    return (struct sa_cache_list *)((char *)c + list_off);
}

static inline void *sa_mcache_alloc(size_t list_off)
{
    struct sa_mcache *c = sa_tls_cache;
    struct sa_cache_list *l = sa_cache_list_at(c, list_off);
    uintptr_t *block = l->head;
    if (SA_UNLIKELY(block == NULL))
        return sa_mcache_alloc_slow((unsigned)(list_off >> SA_LIST_SHIFT));
    /* The seal (word 1 = link ^ address ^ mark_key), checked the other way
     * round: the link the seal vouches for must be word 0.  That leaves the
     * checked link in a register for the pop, one copy fewer. */
    uintptr_t link = block[1] ^ (uintptr_t)block ^ c->mark_key;
    if (SA_UNLIKELY(block[0] != link))
        return sa_mcache_bad_block(block);
    SA_OWNER_ADD(l->room, 1);
    SA_OWNER_ADD(l->mallocs, 1);
    l->head = (void *)(link ^ c->link_key);
    block[1] = 0; /* no longer free */
    return block;
}

/* Push a small block (checked to be an object start of span s) onto this
 * thread's list for its class.  The double-free check reads the block's
 * mark word; it comes after the room check so that under valgrind, where
 * no thread has a cache (the empty cache has no room), only the slow path
 * reads user memory.  The encoding is sa_block_make_free's, with the cache's
 * copies of the keys. */
static inline void sa_mcache_free(void *block, struct sa_span *s)
{
    struct sa_mcache *c = sa_tls_cache;
    struct sa_cache_list *l = sa_cache_list_at(c, s->list_off);
    if (SA_UNLIKELY(SA_OWNER_DEC(l->room) < 0)) {
        sa_mcache_free_slow(block, s);
        return;
    }
    uintptr_t *w = block;
    uintptr_t seal_key = (uintptr_t)block ^ c->mark_key; /* for the check and the new mark */
    if (SA_UNLIKELY(w[1] == (w[0] ^ seal_key))) {
        /* Reports the double free and aborts: the room taken above is
         * not given back (doing so costs the fast path a register). */
        sa_free_not_small(block, s);
        return;
    }
    uintptr_t link = (uintptr_t)l->head ^ c->link_key;
    w[0] = link;
    w[1] = link ^ seal_key;
    l->head = block;
}

#endif /* SPANALLOC_MCACHE_H */
