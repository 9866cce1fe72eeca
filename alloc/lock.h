/*
 * lock.h: the heap's lock, a futex word (0 free, 1 held, 2 held with
 * sleepers; Drepper's "Futexes are tricky", mutex 2).
 *
 * A large malloc or free takes the heap lock once; glibc's
 * pthread_mutex_lock and unlock spend a sizeable share of a large pair on
 * checks of the mutex's type (recursive, error-checking, robust) that this
 * lock does not need.  Uncontended it is one compare-exchange to take and one
 * exchange to drop, as glibc's is.  Contended, a thread spins briefly (the holder's
 * critical sections are short), then sleeps on the futex.
 */
#ifndef SPANALLOC_LOCK_H
#define SPANALLOC_LOCK_H

#include <stdatomic.h>
#include <stdint.h>

struct sa_lock {
    _Atomic uint32_t word;
};
#define SA_LOCK_INITIALIZER {0}

void sa_lock_acquire_contended(struct sa_lock *l);
void sa_lock_wake(struct sa_lock *l);

static inline void sa_lock_acquire(struct sa_lock *l)
{
    uint32_t expected = 0;
    if (__builtin_expect(!atomic_compare_exchange_strong_explicit(
                             &l->word, &expected, 1, memory_order_acquire, memory_order_relaxed),
                         0))
        sa_lock_acquire_contended(l);
}

static inline void sa_lock_release(struct sa_lock *l)
{
    if (__builtin_expect(atomic_exchange_explicit(&l->word, 0, memory_order_release) == 2, 0))
        sa_lock_wake(l);
}

/* fork's child: the only thread left; whatever the word said is void. */
static inline void sa_lock_reset(struct sa_lock *l)
{
    atomic_store_explicit(&l->word, 0, memory_order_relaxed);
}

#endif /* SPANALLOC_LOCK_H */
