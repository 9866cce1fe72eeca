/* scavenger.h: what the parts above the tiers (lifecycle, stats, compat,
 * tests) ask the scavenger. */
#ifndef SPANALLOC_SCAVENGER_H
#define SPANALLOC_SCAVENGER_H

#include <stdbool.h>
#include <stdint.h>

/* Run one scavenger cycle now, on the calling thread (tests, and the
 * thread's loop).  Returns the bytes it released. */
uint64_t sa_scavenger_cycle(void);
bool sa_scavenger_running(void);
void sa_scavenger_counters(uint64_t *cycles, uint64_t *forced);

/* The lifecycle's calls (lifecycle/lifecycle.c). */
void sa_scavenger_on_grow(void);   /* heap grew: start thread, check limit */
/* A free left resident idle memory over the idle limit (no lock held): wake
 * the scavenger thread, or release a bounded amount if none runs. */
void sa_scavenger_idle_excess(uint64_t excess);
void sa_scavenger_fork_prepare(void);
void sa_scavenger_fork_parent(void);
void sa_scavenger_fork_child(void);

/* ---- The idle limit's release policy (scavenger/release_policy.c) */
/* Release the idle limit's excess among spans idle for SPANALLOC_IDLE_DELAY. */
uint64_t sa_mheap_enforce_idle_limit(uint64_t excess);
/* A freeing thread's own release when no scavenger thread takes the excess:
 * at most SA_INLINE_RELEASE_BYTES. */
#define SA_INLINE_RELEASE_BYTES ((uint64_t)256 << 10)
uint64_t sa_mheap_release_inline(uint64_t excess);
/* When the idle limit's next release is due (ns, sa_os_now_ns's clock), 0 if
 * nothing is over the limit. */
uint64_t sa_mheap_idle_due_ns(void);

#endif
