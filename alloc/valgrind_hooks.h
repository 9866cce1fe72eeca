/*
 * valgrind_hooks.h: tell valgrind's memcheck which memory is a heap block,
 * so programs on spanalloc keep memcheck's leak and use-after-free reports.
 *
 * Under valgrind (detected once, at init) the thread caches are switched
 * off: every malloc and free takes the slow path, where these requests are
 * made, and the fast path stays free of them.  Free blocks are kept
 * no-access; the allocator opens their two link words only while it reads
 * or writes them.  Without valgrind's headers every hook compiles to nothing.
 */
#ifndef SPANALLOC_VALGRIND_HOOKS_H
#define SPANALLOC_VALGRIND_HOOKS_H

#include "internal.h"

#if defined(SA_HAVE_VALGRIND)
#include <valgrind/memcheck.h>
#include <valgrind/valgrind.h>
/* Memcheck only: other tools (callgrind, cachegrind) should measure the real
 * fast path.  A memcheck request answers 1; other tools answer 0. */
static inline bool sa_under_memcheck(void)
{
    if (!RUNNING_ON_VALGRIND)
        return false;
    static char probe;
    char vbits;
    return VALGRIND_GET_VBITS(&probe, &vbits, 1) == 1;
}
#define SA_ON_VALGRIND() sa_under_memcheck()
/* Only under memcheck: a client request is a sequence of instructions that
 * runs even where no valgrind runs, on every large malloc and free. */
#define SA_VG_MALLOCLIKE(p, size, zeroed)                                      \
    do {                                                                       \
        if (SA_UNLIKELY(sa_on_valgrind))                                       \
            VALGRIND_MALLOCLIKE_BLOCK((p), (size), 0, (zeroed));               \
    } while (0)
#define SA_VG_FREELIKE(p)                                                      \
    do {                                                                       \
        if (SA_UNLIKELY(sa_on_valgrind))                                       \
            VALGRIND_FREELIKE_BLOCK((p), 0);                                   \
    } while (0)
#define SA_VG_OPEN_LINKS(p) VALGRIND_MAKE_MEM_DEFINED((p), 2 * sizeof(uintptr_t))
#define SA_VG_CLOSE_LINKS(p) VALGRIND_MAKE_MEM_NOACCESS((p), 2 * sizeof(uintptr_t))
#else
#define SA_ON_VALGRIND() 0
#define SA_VG_MALLOCLIKE(p, size, zeroed) ((void)(p), (void)(size), (void)(zeroed))
#define SA_VG_FREELIKE(p) ((void)(p))
#define SA_VG_OPEN_LINKS(p) ((void)(p))
#define SA_VG_CLOSE_LINKS(p) ((void)(p))
#endif


/* The free-mark check off the fast path: under valgrind the mark word of a
 * live block is user data that may be undefined, or a freed block's word
 * is no-access, so it is read with its definedness saved and restored. */
static inline bool sa_block_is_free_checked(const void *block)
{
#if defined(SA_HAVE_VALGRIND)
    if (sa_on_valgrind) {
        unsigned char vbits[2 * sizeof(uintptr_t)];
        int saved = VALGRIND_GET_VBITS(block, vbits, sizeof(vbits));
        VALGRIND_MAKE_MEM_DEFINED(block, sizeof(vbits));
        bool is_free = sa_block_is_free(block);
        if (saved == 1)
            VALGRIND_SET_VBITS(block, vbits, sizeof(vbits));
        else
            VALGRIND_MAKE_MEM_NOACCESS(block, sizeof(vbits));
        return is_free;
    }
#endif
    return sa_block_is_free(block);
}

#endif
