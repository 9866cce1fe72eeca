/* The heap lock (alloc/lock.h): mutual exclusion and no lost wake-up.
 *
 * Threads (more than the CPUs, so holders are preempted and waiters reach
 * the futex sleep) increment a plain counter and check a held flag under the
 * lock: a second holder would see the flag set or lose increments.  A
 * release that forgot to wake a sleeper hangs the test (meson's timeout). */
#include <pthread.h>
#include <sched.h>

#include "test_helpers.h"
#include "lock.h"

#define THREADS 8
#define ROUNDS 20000

static struct sa_lock lock = SA_LOCK_INITIALIZER;
static unsigned long counter; /* under lock */
static int held;              /* under lock */
static _Atomic int overlaps;

static void *worker(void *arg)
{
    (void)arg;
    for (int i = 0; i < ROUNDS; i++) {
        sa_lock_acquire(&lock);
        if (held)
            atomic_fetch_add(&overlaps, 1);
        held = 1;
        unsigned long c = counter;
        if (i % 256 == 0)
            sched_yield(); /* a holder preempted: the others spin, then sleep */
        counter = c + 1;
        held = 0;
        sa_lock_release(&lock);
    }
    return NULL;
}

static void exclusive_under_contention(void **state)
{
    (void)state;
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, worker, NULL), 0);
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    assert_int_equal(atomic_load(&overlaps), 0);
    assert_int_equal(counter, (unsigned long)THREADS * ROUNDS);
    assert_int_equal(atomic_load(&lock.word), 0); /* released, no waiter mark left */
}

/* A reset lock (fork's child) is free whatever it held. */
static void reset_frees(void **state)
{
    (void)state;
    struct sa_lock l = SA_LOCK_INITIALIZER;
    sa_lock_acquire(&l);
    sa_lock_reset(&l);
    sa_lock_acquire(&l);
    assert_int_equal(atomic_load(&l.word), 1);
    sa_lock_release(&l);
    assert_int_equal(atomic_load(&l.word), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(exclusive_under_contention),
        cmocka_unit_test(reset_frees),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
