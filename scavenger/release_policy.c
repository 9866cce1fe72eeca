/*
 * release_policy.c: the idle limit's release policy (SPANALLOC_IDLE_LIMIT,
 * SPANALLOC_IDLE_DELAY): when resident idle memory over the limit goes back
 * to the OS, and who releases how much of it.
 *
 * The heap measures the excess itself (alloc/mheap.c, sa_mheap_idle_excess:
 * every free tests it under the heap lock) and hands it up through the hook
 * table; what is done with it is decided here, beside the scavenger that
 * does most of it.  This file calls down into the heap only: its age view
 * (sa_mheap_oldest_idle), the release (sa_mheap_scavenge) and the counter of
 * inline releases.  It keeps no state of its own.
 */
#include "../alloc/internal.h"
#include "scavenger.h"

/* When the idle limit's next release is due (the oldest idle span reaches
 * SPANALLOC_IDLE_DELAY), or 0 if nothing is over the limit. */
uint64_t sa_mheap_idle_due_ns(void)
{
    uint64_t excess, oldest;
    if (!sa_mheap_oldest_idle(&excess, &oldest) || excess == 0)
        return 0;
    return oldest + sa_options.idle_delay_ns + 1;
}

/* Release the idle limit's excess (at most max_bytes of it) among spans idle
 * for at least SPANALLOC_IDLE_DELAY, oldest first: memory freed and taken
 * again within the delay (a buffer replaced, a block grown) never pays a page
 * fault, while the fragments a churning heap leaves behind go back soon.
 * The scavenger thread runs it when a free hands the excess over. */
uint64_t sa_mheap_enforce_idle_limit(uint64_t excess)
{
    if (SA_LIKELY(excess == 0))
        return 0;
    uint64_t delay = sa_options.idle_delay_ns;
    uint64_t cutoff = UINT64_MAX;
    if (delay != 0) {
        uint64_t now = sa_os_now_ns();
        cutoff = now > delay ? now - delay : 0;
        /* Nothing old enough yet (the common case while over the limit):
         * skip the release pass, which would also empty the large-span
         * cache for nothing. */
        uint64_t oldest;
        bool aged = sa_mheap_oldest_idle(NULL, &oldest) && oldest <= cutoff;
        if (!aged)
            return 0;
    }
    return sa_mheap_scavenge(cutoff, excess);
}

/* The freeing thread's share of the release, when no scavenger thread runs
 * to take it: at most SA_INLINE_RELEASE_BYTES per free, so that no free
 * stalls; the limit is reached over the next frees. */
uint64_t sa_mheap_release_inline(uint64_t excess)
{
    uint64_t n = sa_mheap_enforce_idle_limit(excess < SA_INLINE_RELEASE_BYTES ? excess
                                                                               : SA_INLINE_RELEASE_BYTES);
    if (n != 0)
        sa_mheap_count_released_inline(n);
    return n;
}
