/*
 * mcache.h: the fast path, inlined into the entry points.
 *
 * malloc pops a block from the current slab (the CPU's in per-CPU mode, the
 * thread's own in the fallback, alloc/percpu.h), free pushes one: a
 * restartable sequence of a few instructions, no lock, no atomic
 * read-modify-write.  Everything else (an empty or full class, a thread not
 * set up yet, a CPU whose slab is not set up or is being drained) is one
 * call away in mcache.c.
 */
#ifndef SPANALLOC_MCACHE_H
#define SPANALLOC_MCACHE_H

#include "internal.h"
#include "percpu.h"

/* free() of what the inline checks did not accept (malloc.c): a pointer
 * whose arena the static root does not hold (looked up in the whole page
 * map), or one the small-block check refused (a large block, else a bad
 * pointer, reported). */
void sa_free_full_lookup(void *ptr);
void sa_free_large(void *ptr, struct sa_span *s);

/* A cached block carries the free mark (word 1 = word 0 ^ address ^
 * mark_key, written by free): it is checked before the block is handed out,
 * so a write after free into a cached block is reported, and cleared so
 * that the next free of the block is not taken for a double free. */
static inline void *sa_mcache_alloc(size_t list_off)
{
    uintptr_t *block;
#if defined(SA_PERCPU_ASM)
    SA_SLAB_POP_MALLOC(list_off, block);
#else
    char *slab;
    SA_SLAB_POP(list_off, 0xffff, block, slab, empty);
    (void)slab;
#endif
    /* word 1 ^= word 0 ^ address ^ key: 0 (no longer free) iff the mark was
     * intact; one instruction does the check's compare and the clearing. */
    bool broken;
#if defined(SA_PERCPU_ASM)
    uintptr_t t;
    __asm__("movq %[w0], %[t]\n\t"
            "xorq %[b], %[t]\n\t"
            "xorq sa_mark_key(%%rip), %[t]\n\t"
            "xorq %[t], %[w1]"
            : [w1] "+m"(block[1]), [t] "=&r"(t), "=@ccnz"(broken), [b] "+r"(block)
            : [w0] "m"(block[0]));
#else
    broken = (block[1] ^= block[0] ^ (uintptr_t)block ^ sa_mark_key) != 0;
#endif
    if (SA_UNLIKELY(broken))
        return sa_mcache_alloc_miss(block, list_off); /* empty, or corrupted */
    return block;
#if !defined(SA_PERCPU_ASM)
empty:
    return sa_mcache_alloc_slow((unsigned)(list_off >> SA_LIST_SHIFT));
#endif
}

/* Push a small block (checked to be an object start of span s) onto the
 * current slab; the double-free check and the mark are in the section. */
static inline void sa_mcache_free(void *block, struct sa_span *s)
{
    SA_SLAB_PUSH_MARKED(s->list_off, block, full);
    return;
full: /* or a double free: the slow path checks and reports */
    sa_mcache_free_slow(block, s);
}

#endif /* SPANALLOC_MCACHE_H */
