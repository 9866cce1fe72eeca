/*
 * hooks.c: the one way a tier wakes a part above it.
 *
 * mheap.c and mcentral.c report growth and the idle limit here; what runs
 * then (the scavenger, the snapshot writer) is registered by the lifecycle
 * module at start-up (lifecycle/lifecycle.c), so no object of alloc/ names a
 * symbol of scavenger/ or stats/ (tests/check_layering.py checks it).
 */
#include "internal.h"

/* Filled once by sa_lifecycle_start, before the first allocation. */
struct sa_hooks sa_hooks;

/* Set by fork's child handler, cleared by the child's next growth or
 * refill: the parent's background threads did not survive the fork. */
static _Atomic bool restart_pending; /* atomic, no lock */

void sa_hooks_heap_grew(void)
{
    atomic_store_explicit(&restart_pending, false, memory_order_relaxed);
    if (sa_hooks.heap_grew != NULL)
        sa_hooks.heap_grew();
}

void sa_hooks_poke(void)
{
    if (SA_UNLIKELY(atomic_load_explicit(&restart_pending, memory_order_relaxed)))
        sa_hooks_heap_grew();
}

void sa_hooks_rearm(void)
{
    atomic_store(&restart_pending, true);
}

void sa_hooks_idle_excess(uint64_t excess)
{
    if (sa_hooks.idle_excess != NULL)
        sa_hooks.idle_excess(excess);
}
