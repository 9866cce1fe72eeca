/*
 * bgthread.h: spanalloc's background threads (the scavenger, the stats
 * snapshot writer, the heap profile's interval writer) start, survive fork
 * and end the same way; this is that way, once.
 *
 * A thread is started at most once at a time, never from a constructor or
 * the loader (its owner claims it on the heap's growth or a sample), with
 * every signal blocked, detached.  In a forked child it does not exist: the
 * owner's fork handler marks it to be started again at the child's first
 * claim.  It must not keep a process alive: it asks, about once a second,
 * whether any of the program's own threads still runs, and leaves when none
 * does.
 *
 * The parts above alloc/ (scavenger/, stats/, profile/) call this; alloc/
 * does not (tests/check_layering.py).
 */
#ifndef SPANALLOC_BGTHREAD_H
#define SPANALLOC_BGTHREAD_H

#include <stdatomic.h>
#include <stdbool.h>

enum { SA_BGTHREAD_OFF = 0, SA_BGTHREAD_RUNNING, SA_BGTHREAD_START_IN_CHILD };

/* One per background thread, in its owner's file; zero-initialised is OFF.
 * state: written by the claim, the thread's leaving and the fork handler;
 * read with no lock anywhere. */
struct sa_bgthread {
    _Atomic int state;
};

/* True for the one caller that may start the thread now: it was off, or the
 * process is a forked child that has not restarted it yet.  The state is
 * RUNNING from then on. */
bool sa_bgthread_claim(struct sa_bgthread *t);
/* After a successful claim: run main on a new detached thread that takes
 * none of the program's signals.  False, and the state back to OFF (a later
 * claim tries again), if the thread could not be created. */
bool sa_bgthread_spawn(struct sa_bgthread *t, void *(*main)(void *));
/* A claim that fails before spawning gives the state back. */
void sa_bgthread_unclaim(struct sa_bgthread *t);
bool sa_bgthread_running(const struct sa_bgthread *t);

/* The thread's first and last calls: sa_bgthread_enter registers it, so that
 * sa_bgthread_orphaned does not count it as one of the program's threads;
 * sa_bgthread_leave sets the state to OFF and unregisters it. */
void sa_bgthread_enter(void);
void sa_bgthread_leave(struct sa_bgthread *t);
/* True when no thread of the process other than spanalloc's background
 * threads is running (reads /proc/self/task with raw system calls: no
 * malloc, the snapshot writer must not allocate).  Without /proc: false. */
bool sa_bgthread_orphaned(void);

/* fork's child handler.  sa_bgthread_fork_child(t): a RUNNING thread is to
 * be started again (at the child's first claim).  sa_bgthread_forget_all,
 * once (lifecycle/): the parent's threads are not registered in the child. */
void sa_bgthread_fork_child(struct sa_bgthread *t);
void sa_bgthread_forget_all(void);

#endif
