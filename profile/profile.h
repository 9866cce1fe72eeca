/*
 * profile.h: what the rest of spanalloc calls in the heap profile
 * (the files of profile/), besides the fast-path hook in sampler.h.
 */
#ifndef SPANALLOC_PROFILE_H
#define SPANALLOC_PROFILE_H

#include <stdbool.h>
#include <stdint.h>

#include "spanalloc.h"

#include "sampler.h"

/* Options (alloc/options.c parses them into these). */
struct sa_profile_options {
    uint64_t rate;          /* SPANALLOC_PROFILE_RATE: mean bytes between samples, 0 = off */
    char file[4096];        /* SPANALLOC_PROFILE_FILE, "" = none (%p: pid) */
    uint64_t interval_ns;   /* SPANALLOC_PROFILE_INTERVAL, 0 = only at exit */
    bool leaks;             /* SPANALLOC_PROFILE_LEAKS=1 */
};
extern struct sa_profile_options sa_profile_options;
#define SA_PROFILE_DEFAULT_RATE ((uint64_t)512 << 10)

/* Write SPANALLOC_PROFILE_FILE now: 0 or an errno value (EINVAL if unset). */
int sa_profile_write_option_file(void);

/* After the allocator is ready (may allocate): at-exit work. */
void sa_profile_init_late(void);

/* fork: the profile lock is a leaf (held while no other spanalloc lock is
 * taken), taken last and released first. */
void sa_profile_fork_prepare(void);
void sa_profile_fork_parent(void);
void sa_profile_fork_child(void);

/* read_mem_stats: a sampled small block is a one-object span, which the
 * heap counts in heap_alloc and total_alloc at its class's size in the same
 * locked step as the span (sa_mheap_alloc_large_as); these counts put it in
 * its class's by_size too.  Read before the heap's counters: a block is
 * counted by the heap before the profile records it, and unrecorded before
 * the heap frees it. */
struct sa_profile_stats {
    uint64_t mallocs[SPANALLOC_NUM_SIZE_CLASSES];
    uint64_t frees[SPANALLOC_NUM_SIZE_CLASSES];
    uint64_t sys_bytes;     /* mapped for the profile's records (other_sys) */
};
void sa_profile_read_stats(struct sa_profile_stats *out);

#endif /* SPANALLOC_PROFILE_H */
