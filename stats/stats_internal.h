/* stats_internal.h: what the lifecycle (lifecycle/lifecycle.c) asks the
 * stats module: the snapshot writer's start and fork handling. */
#ifndef SPANALLOC_STATS_INTERNAL_H
#define SPANALLOC_STATS_INTERNAL_H

void sa_snapshot_on_grow(void);    /* no lock held: start the writer thread */
void sa_snapshot_fork_child(void); /* the writer did not survive fork */

#endif
