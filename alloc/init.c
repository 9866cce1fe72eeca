/*
 * init.c: the tiers' bootstrap.
 *
 * Nothing here may recurse into malloc before the allocator can serve it:
 * no stdio, no dlsym, no pthread_once.  The first malloc may come from any
 * thread or from a constructor that runs before ours, so initialisation is
 * a small state machine (none -> running -> done) that every slow path
 * checks.  The thread that claims it runs the start-up in the order
 * lifecycle/lifecycle.c gives (options, then sa_alloc_bootstrap below, then
 * the parts above the tiers).
 */
#include <sched.h>
#include <unistd.h>

#include "internal.h"
#include "valgrind_hooks.h"

/* Written by the initialising thread before sa_init_state becomes 2
 * (release), read after (acquire): constant once the allocator serves. */
_Atomic int sa_init_state;
bool sa_on_valgrind;
uintptr_t sa_link_key, sa_mark_key;

/* sa_init_state: 0 none, 2 done, or -pid while the process `pid` runs it.
 * A fork while another thread initialises leaves the child with that state
 * and without that thread: the child sees a pid not its own and starts over
 * (nothing is allocated before the state is 2, so there is nothing to lose). */
void (*sa_init_pause_hook)(void);

static bool claim_init(void)
{
    int me = -(int)getpid();
    for (;;) {
        int state = atomic_load_explicit(&sa_init_state, memory_order_acquire);
        if (state == 2)
            return false;
        if (state == 0 || (state < 0 && state != me)) {
            if (atomic_compare_exchange_strong(&sa_init_state, &state, me))
                return true;
            continue;
        }
        sched_yield(); /* another thread is initialising; it takes no lock */
    }
}

void sa_init_slow(void)
{
    if (!claim_init())
        return;
    if (sa_init_pause_hook != NULL)
        sa_init_pause_hook();
    sa_lifecycle_start();
}

/* The tiers' part of start-up (sa_lifecycle_start calls it after the
 * options): once it returns, the allocator serves any thread. */
void sa_alloc_bootstrap(void)
{
    sa_on_valgrind = SA_ON_VALGRIND();
    uintptr_t keys[2];
    sa_os_random(keys, sizeof(keys));
    sa_link_key = keys[0];
    sa_mark_key = keys[1] | 1; /* never 0, so zeroed memory never looks free */
    sa_mcache_thread_init();
    atomic_store_explicit(&sa_init_state, 2, memory_order_release);
}
