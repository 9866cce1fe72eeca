/*
 * sampler.h: the heap profile's hook on the malloc fast path.
 *
 * Each thread counts the bytes it allocates down from a budget drawn from an
 * exponential distribution (mean SPANALLOC_PROFILE_RATE, 512 KiB by default);
 * the allocation that takes the budget below zero is sampled, out of line.
 * Because the draw is memoryless, every allocation of s bytes is sampled
 * with the same probability 1 - exp(-s/rate), whatever came before it, so a
 * sampled block stands for 1 / (1 - exp(-s/rate)) blocks like it.
 *
 * On the fast path this is one subtract on an initial-exec TLS word and one
 * branch.  With sampling off (rate 0) the budget is "infinite" (INT64_MAX)
 * and the branch is never taken in practice; if it ever is, the out-of-line
 * code only resets the budget.  Compiling with -DSA_PROFILE_DISABLED removes
 * the hook (the baseline docs/benchmarks.md compares against).
 */
#ifndef SPANALLOC_SAMPLER_H
#define SPANALLOC_SAMPLER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tls.h"

struct sa_span;

/* Bytes left before this thread's next sample (sa_tls.prof_countdown, in
 * the TLS object the cache's fast path reads too), as a signed value in an
 * unsigned word (unsigned wrap is defined; a huge failing request cannot
 * cause signed overflow).  0 in a new thread: its first allocation goes out
 * of line and draws the thread's first budget. */

/* Out of line: the countdown went below zero.  Draws the next budget,
 * samples the allocation if the profile is on, and allocates it (sampled or
 * not): align 0 means malloc's alignment. */
void *sa_profile_malloc(size_t size, size_t align);

/* True if an allocation of size bytes must go to sa_profile_malloc. */
static inline int sa_profile_tick(size_t size)
{
#ifdef SA_PROFILE_DISABLED
    (void)size;
    return 0;
#else
    return (int64_t)(sa_tls.prof_countdown -= size) < 0;
#endif
}

/* A sampled block lives in a span of its own (state LARGE, s->prof set);
 * free() of it reaches sa_profile_free through the out-of-line path, which
 * drops the record and gives the span back to the heap in one hold of the
 * profile lock (fork sees both or neither).  The usable size of a sampled small block
 * is its size class's, as if it had not been sampled. */
void sa_profile_free(struct sa_span *s);
size_t sa_profile_usable(const struct sa_span *s);
/* A sampled small block sits in a span bigger than its usable size: it must
 * not "grow in place" into it.  A sampled large block may (its record keeps
 * the size it was sampled at, which its free takes back out). */
bool sa_profile_is_small(const struct sa_span *s);

/* The unsampled allocation the sampler falls back to (malloc.c). */
void *sa_malloc_plain(size_t size, size_t align);
/* The small class an aligned request (16 < align <= page) gets, or 0. */
unsigned sa_aligned_class(size_t size, size_t align);

#endif /* SPANALLOC_SAMPLER_H */
