/*
 * lock.c: the heap lock's slow half (alloc/lock.h): spin, then sleep.
 */
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "lock.h"

#define SA_LOCK_SPINS 100

static void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

void sa_lock_acquire_contended(struct sa_lock *l)
{
    for (int i = 0; i < SA_LOCK_SPINS; i++) {
        cpu_relax();
        uint32_t expected = 0;
        if (atomic_load_explicit(&l->word, memory_order_relaxed) == 0 &&
            atomic_compare_exchange_weak_explicit(&l->word, &expected, 1, memory_order_acquire,
                                                  memory_order_relaxed))
            return;
    }
    /* Mark the word contended (2) whenever we may sleep: the holder's
     * release then wakes one sleeper. */
    while (atomic_exchange_explicit(&l->word, 2, memory_order_acquire) != 0)
        syscall(SYS_futex, &l->word, FUTEX_WAIT_PRIVATE, 2, NULL, NULL, 0);
}

void sa_lock_wake(struct sa_lock *l)
{
    syscall(SYS_futex, &l->word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}
