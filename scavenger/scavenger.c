/*
 * scavenger.c: giving idle memory back to the OS.
 *
 * Four ways memory goes back:
 *   - the background scavenger, a thread started on the heap's first growth
 *     (never from a constructor or the loader), which wakes every
 *     min(idle threshold / 2, 5 s) and releases the pages of spans idle longer
 *     than SPANALLOC_SCAVENGE_IDLE (default 5 minutes);
 *   - free_os_memory(), which releases every idle span at once;
 *   - the soft memory limit: while heap_sys - heap_released + metadata is
 *     above it, idle spans are released oldest first whatever their age, by
 *     the scavenger and synchronously when the heap grows;
 *   - the idle limit (SPANALLOC_IDLE_LIMIT, default 10%): resident idle
 *     memory above a share of the heap in use is released once idle for
 *     SPANALLOC_IDLE_DELAY (default 150 ms).  A free that crosses the limit
 *     hands the work to the scavenger thread (it wakes it and returns), so
 *     no free stalls on the kernel; the thread releases the excess as soon
 *     as it has aged.  Only when no thread runs (SPANALLOC_SCAVENGER=off, or
 *     it could not start) does the freeing thread release, at most
 *     SA_INLINE_RELEASE_BYTES per free.
 * The mheap does the releasing in bounded chunks without its lock held; this
 * file decides when and how much.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../alloc/internal.h"
#include "../bgthread/bgthread.h"
#include "../profile/profile.h"
#include "scavenger.h"

#define NS_PER_S 1000000000ull
#define MAX_PERIOD_NS (5 * NS_PER_S)
#define MIN_PERIOD_NS 1000000ull

/* scav_lock guards only the thread's sleep on scav_wake (a wake-up is
 * signalled under it); scav_wake is initialised by the thread's starter
 * before the thread exists.  The rest are atomics, read and written with no
 * lock: memory_limit by any thread (spanalloc_set_memory_limit, loaded once
 * from the option: limit_loaded), num_scavenges by the cycle's thread,
 * num_forced by free_os_memory's callers. */
static pthread_mutex_t scav_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t scav_wake;
static struct sa_bgthread scav_thread; /* see bgthread.h */
static _Atomic uint64_t memory_limit;
static _Atomic uint64_t num_scavenges, num_forced;
static _Atomic bool limit_loaded;
/* A free saw the idle limit exceeded: the thread owes an idle pass.  Set by
 * the free (once: the flag is read before anything is written), cleared by
 * the thread when nothing is over the limit any more. */
static _Atomic bool idle_armed;

static uint64_t period_ns(void)
{
    uint64_t p = sa_options.scavenge_idle_ns / 2;
    return p > MAX_PERIOD_NS ? MAX_PERIOD_NS : p < MIN_PERIOD_NS ? MIN_PERIOD_NS : p;
}

/* What the soft memory limit counts: the heap's resident pages plus the
 * metadata, as read_mem_stats's sys - heap_released (the heap profile's
 * records included: they are part of other_sys), without taking the cache
 * registry lock (callers may hold an mcentral lock's successor). */
static uint64_t limited_bytes(void)
{
    struct sa_heap_counters h;
    struct sa_profile_stats prof;
    sa_profile_read_stats(&prof);
    sa_mheap_read(&h);
    uint64_t released = h.released_pages << SA_PAGE_SHIFT;
    return h.sys_bytes - released + h.span_records_sys + sa_mcache_sys_bytes() +
           h.pagemap_sys + sa_mcentral_sys_bytes() + prof.sys_bytes;
}

static uint64_t enforce_limit(void)
{
    uint64_t limit = atomic_load(&memory_limit);
    if (limit == 0)
        return 0;
    uint64_t used = limited_bytes();
    if (used <= limit)
        return 0;
    sa_mcache_flush_current(); /* the CPU caches' blocks first: their spans may empty */
    return sa_mheap_scavenge(UINT64_MAX, used - limit);
}

/* The heap's figures as read_mem_stats reports them (heap_*), from the
 * heap's own counters: the scavenger does not call up into stats/. */
static void trace_cycle(uint64_t cycle, uint64_t released)
{
    struct sa_heap_counters h;
    sa_mheap_read(&h);
    struct {
        uint64_t heap_inuse, heap_idle, heap_sys, heap_released;
    } st = {h.inuse_pages << SA_PAGE_SHIFT, h.sys_bytes - (h.inuse_pages << SA_PAGE_SHIFT),
            h.sys_bytes, h.released_pages << SA_PAGE_SHIFT};
    char line[256];
    const uint64_t mb = 1 << 20;
    int n = snprintf(line, sizeof(line),
                     "scvg%llu: %llu MB released\n"
                     "scvg%llu: inuse: %llu, idle: %llu, sys: %llu, released: %llu, "
                     "consumed: %llu (MB)\n",
                     (unsigned long long)cycle, (unsigned long long)(released / mb),
                     (unsigned long long)cycle, (unsigned long long)(st.heap_inuse / mb),
                     (unsigned long long)(st.heap_idle / mb),
                     (unsigned long long)(st.heap_sys / mb),
                     (unsigned long long)(st.heap_released / mb),
                     (unsigned long long)((st.heap_sys - st.heap_released) / mb));
    if (n > 0) {
        ssize_t ignored = write(STDERR_FILENO, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line));
        (void)ignored;
    }
}

uint64_t sa_scavenger_cycle(void)
{
    uint64_t now = sa_os_now_ns();
    uint64_t idle = sa_options.scavenge_idle_ns;
    uint64_t cutoff = now > idle ? now - idle : 0;
    sa_mcache_scavenge(); /* idle CPUs' caches back to their spans */
    uint64_t released = now > idle ? sa_mheap_scavenge(cutoff, UINT64_MAX) : 0;
    released += enforce_limit();
    released += sa_mheap_enforce_idle_limit(sa_mheap_idle_excess());
    uint64_t cycle = atomic_load(&num_scavenges) + 1;
    if (released && sa_options.trace)
        trace_cycle(cycle, released);
    /* Counted once the cycle is complete, trace line included. */
    atomic_store(&num_scavenges, cycle);
    return released;
}

/* The idle limit's pass for a free that handed it over.  Returns when the
 * thread must look again (ns, sa_os_now_ns's clock), or 0: nothing is over
 * the limit, and the next free that crosses it wakes the thread again. */
static uint64_t idle_pass(void)
{
    sa_mheap_enforce_idle_limit(sa_mheap_idle_excess());
    uint64_t due = sa_mheap_idle_due_ns();
    if (due != 0)
        return due;
    /* Disarm, then look again: a free between the look and the store would
     * have seen the flag still set and not woken us. */
    atomic_store(&idle_armed, false);
    due = sa_mheap_idle_due_ns();
    if (due != 0)
        atomic_store(&idle_armed, true);
    return due;
}

/* Sleep until the next cycle or the idle limit's next release is due,
 * waking at least once a second to refresh the heap's coarse clock and to
 * see whether the program's own threads are all gone (then this thread
 * exits, so that it never keeps a process alive; see bgthread/). */
static void *scavenger_main(void *arg)
{
    (void)arg;
    sa_bgthread_enter();
    uint64_t next_cycle = sa_os_monotonic_ns() + period_ns();
    uint64_t idle_due = 0; /* mono clock; 0: no pass owed */
    for (;;) {
        uint64_t now = sa_os_monotonic_ns();
        uint64_t wake = next_cycle < now + NS_PER_S ? next_cycle : now + NS_PER_S;
        if (idle_due != 0 && idle_due < wake)
            wake = idle_due;
        struct timespec deadline = {(time_t)(wake / NS_PER_S), (long)(wake % NS_PER_S)};
        pthread_mutex_lock(&scav_lock);
        if (!atomic_load(&idle_armed) || idle_due != 0)
            pthread_cond_timedwait(&scav_wake, &scav_lock, &deadline);
        pthread_mutex_unlock(&scav_lock);
        if (sa_bgthread_orphaned())
            break;
        sa_mheap_clock_tick();
        now = sa_os_monotonic_ns();
        if (atomic_load(&idle_armed) && (idle_due == 0 || now >= idle_due)) {
            uint64_t due = idle_pass();
            uint64_t heap_now = sa_os_now_ns();
            /* At least a period of MIN_PERIOD_NS: a kernel that refuses the
             * release must not make this loop spin. */
            uint64_t wait = due > heap_now + MIN_PERIOD_NS ? due - heap_now : MIN_PERIOD_NS;
            idle_due = due == 0 ? 0 : now + wait;
        }
        if (sa_os_monotonic_ns() >= next_cycle) {
            sa_scavenger_cycle();
            next_cycle = sa_os_monotonic_ns() + period_ns();
        }
    }
    sa_bgthread_leave(&scav_thread);
    return NULL;
}

void sa_scavenger_idle_excess(uint64_t excess)
{
    if (!sa_bgthread_running(&scav_thread)) {
        sa_mheap_release_inline(excess);
        return;
    }
    if (atomic_load_explicit(&idle_armed, memory_order_relaxed))
        return; /* already owed: the common case while over the limit */
    atomic_store(&idle_armed, true);
    pthread_mutex_lock(&scav_lock);
    pthread_cond_signal(&scav_wake);
    pthread_mutex_unlock(&scav_lock);
}

static void start_thread(void)
{
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&scav_wake, &attr);
    pthread_condattr_destroy(&attr);
    sa_bgthread_spawn(&scav_thread, scavenger_main); /* if not, again at the next growth */
}

static void load_limit_once(void)
{
    bool expected = false;
    if (atomic_compare_exchange_strong(&limit_loaded, &expected, true) &&
        atomic_load(&memory_limit) == 0)
        atomic_store(&memory_limit, sa_options.memory_limit);
}

void sa_scavenger_on_grow(void)
{
    load_limit_once();
    if (sa_options.scavenger_enabled && sa_bgthread_claim(&scav_thread))
        start_thread();
    enforce_limit();
}

void sa_scavenger_fork_prepare(void)
{
    pthread_mutex_lock(&scav_lock);
}

void sa_scavenger_fork_parent(void)
{
    pthread_mutex_unlock(&scav_lock);
}

/* The thread did not survive the fork: start it again in the child at the
 * child's next trip through the heap. */
void sa_scavenger_fork_child(void)
{
    pthread_mutex_init(&scav_lock, NULL);
    sa_bgthread_fork_child(&scav_thread);
}

bool sa_scavenger_running(void)
{
    return sa_bgthread_running(&scav_thread);
}

void sa_scavenger_counters(uint64_t *cycles, uint64_t *forced)
{
    *cycles = atomic_load(&num_scavenges);
    *forced = atomic_load(&num_forced);
}

void free_os_memory(void)
{
    sa_ensure_init();
    sa_mcache_flush_current();
    sa_mcentral_drain_transfer();
    atomic_fetch_add(&num_forced, 1);
    sa_mheap_scavenge(UINT64_MAX, UINT64_MAX);
}

uint64_t spanalloc_set_memory_limit(uint64_t bytes)
{
    sa_ensure_init();
    load_limit_once();
    uint64_t old = atomic_exchange(&memory_limit, bytes);
    enforce_limit();
    return old;
}
