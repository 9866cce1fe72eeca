/*
 * lifecycle.c: the order in which spanalloc's parts start and stop.
 *
 * The top of the house: it alone names every part (the tiers in alloc/,
 * the scavenger, the stats' snapshot writer, the heap profile), so that no
 * part has to name the ones above it.  It runs start-up (called once by
 * sa_init_slow, from whichever thread allocates first), registers the
 * upward hooks the tiers call (alloc/hooks.c), takes every lock across
 * fork() in the documented order, and prints the report at exit.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "../alloc/internal.h"
#include "../bgthread/bgthread.h"
#include "../profile/profile.h"
#include "../scavenger/scavenger.h"
#include "../stats/stats_internal.h"

/* The heap mapped new memory: the snapshot writer and the scavenger start
 * on the first growth (never from a constructor or the loader), and a
 * forked child restarts them at its first. */
static void heap_grew(void)
{
    sa_snapshot_on_grow();
    sa_scavenger_on_grow();
}

/* ---- fork: every lock, in the documented order (alloc/internal.h) */

static void fork_prepare(void)
{
    sa_mcentral_fork_gate(); /* no batch in a thread's hands (before any lock) */
    sa_mcache_fork_prepare();
    sa_mcentral_fork_prepare();
    sa_profile_fork_prepare(); /* a sampled free holds it across the heap's */
    sa_mheap_lock();
    sa_scavenger_fork_prepare();
}

static void fork_parent(void)
{
    sa_scavenger_fork_parent();
    sa_mheap_unlock();
    sa_profile_fork_parent();
    sa_mcentral_fork_parent();
    sa_mcache_fork_parent();
}

static void fork_child(void)
{
    sa_bgthread_forget_all(); /* no background thread of the parent's runs here */
    sa_profile_fork_child();
    sa_snapshot_fork_child();
    sa_scavenger_fork_child();
    sa_hooks_rearm(); /* the threads start again at the child's next refill */
    sa_mheap_fork_child();
    sa_mcentral_fork_child();
    sa_mcache_fork_child(); /* needs the tiers below it working again */
}

/* ---- exit: SPANALLOC_STATS
 * Programs may close stderr in their own exit handlers (coreutils do), so
 * the report goes to a copy of fd 2 taken at load time, only when asked.
 * Written by start-up, read by the exit handler (one thread each). */
static int stats_fd = -1;

static void print_stats_at_exit(void)
{
    FILE *f = stats_fd >= 0 ? fdopen(stats_fd, "w") : NULL;
    if (f == NULL)
        return;
    spanalloc_stats_print(f, (enum spanalloc_stats_format)sa_options.stats_at_exit);
    fclose(f);
    stats_fd = -1;
}

/* ---- start-up, by the thread that claimed it (alloc/init.c) */

void sa_lifecycle_start(void)
{
    /* Before anything allocates: the first growth must find them. */
    sa_hooks.heap_grew = heap_grew;
    sa_hooks.idle_excess = sa_scavenger_idle_excess;
    sa_read_options();
    sa_alloc_bootstrap();
    /* These may allocate; the allocator is ready now. */
    pthread_atfork(fork_prepare, fork_parent, fork_child);
    sa_profile_init_late();
    if (sa_options.stats_at_exit >= 0) {
        stats_fd = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 3);
        atexit(print_stats_at_exit);
    }
}

/* At load, so that SPANALLOC_* are read before a server clears its
 * environment (alloc/init.c). */
__attribute__((constructor)) static void sa_load(void)
{
    sa_ensure_init();
}
