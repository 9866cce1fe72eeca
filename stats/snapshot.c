/*
 * snapshot.c: periodic stats snapshots to a file (SPANALLOC_STATS_FILE).
 * Placeholder: the writer thread is being built (issue 7).
 */
#include "../alloc/internal.h"

void sa_snapshot_on_grow(void)
{
}

void sa_snapshot_fork_child(void)
{
}
