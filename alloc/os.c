/*
 * os.c: the one place that talks to the kernel for memory, time and
 * randomness.  Everything above it sees three verbs: map (fresh zeroed
 * memory, optionally aligned), release (give the physical pages back, keep
 * the address range) and unmap.
 *
 * Tests inject failures here (sa_os_fail_maps) and replace the clock
 * (sa_clock_hook); neither is reachable from the environment.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#ifndef MADV_FREE
#define MADV_FREE 8
#endif

/* Test hooks: the fault counters are atomics any thread's map decrements;
 * the clock hook is set by a test while no other thread allocates. */
_Atomic int sa_os_fail_maps;
_Atomic int sa_os_fail_maps_after;
uint64_t (*sa_clock_hook)(void);

static void *map_exact(size_t bytes)
{
    if (atomic_load_explicit(&sa_os_fail_maps_after, memory_order_relaxed) > 0)
        atomic_fetch_sub(&sa_os_fail_maps_after, 1); /* let this one through */
    else if (atomic_load_explicit(&sa_os_fail_maps, memory_order_relaxed) > 0) {
        atomic_fetch_sub(&sa_os_fail_maps, 1);
        return NULL;
    }
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* Map `bytes` of zeroed memory aligned to `align` (0: the OS page). */
void *sa_os_map(size_t bytes, size_t align)
{
    size_t os_page = sa_os_page_size();
    if (align <= os_page)
        return map_exact(bytes);
    if (bytes + align < bytes)
        return NULL;
    /* Over-map by the alignment and trim both ends. */
    char *raw = map_exact(bytes + align);
    if (raw == NULL)
        return NULL;
    uintptr_t start = ((uintptr_t)raw + align - 1) & ~(uintptr_t)(align - 1);
    size_t head = start - (uintptr_t)raw;
    size_t tail = align - head;
    if (head)
        munmap(raw, head);
    if (tail)
        munmap((char *)start + bytes, tail);
    return (void *)start;
}

/* ---- Requests no machine could back.
 *
 * Heap mappings are MAP_NORESERVE (address space first, memory as it is
 * touched), so the kernel's overcommit check never sees a request: a 20 TiB
 * malloc would map, then write page-map state for every 64 MiB of it.  A
 * request of at least SA_OS_BACKING_CHECK bytes is first held against
 *   - the machine: RAM plus swap (sysinfo).  The kernel's default rule
 *     (vm.overcommit_memory=0) refuses one mapping larger than that; with
 *     overcommit_memory=1 the kernel would accept it, but no use of it could
 *     be backed and its page-map leaves alone would cost a thousandth of it,
 *     so it is refused as well;
 *   - the kernel's own rule as configured now: with overcommit_memory=2 (the
 *     commit limit; read at most once a second) an accounted mapping of that
 *     size is made and undone at once, without touching it.
 * Smaller requests fail, if they must, in the mapping itself. */
#define SA_OS_BACKING_CHECK ((size_t)64 << 20)

/* vm.overcommit_memory (0 heuristic, 1 always, 2 never), read again at most
 * once a second; -1 if unreadable.  Raw system calls: no stdio here. */
static int overcommit_mode(void)
{
    static _Atomic int mode = -1;
    static _Atomic uint64_t read_at_ns;
    uint64_t now = sa_os_monotonic_ns();
    uint64_t at = atomic_load_explicit(&read_at_ns, memory_order_relaxed);
    if (at != 0 && now - at < 1000000000u)
        return atomic_load_explicit(&mode, memory_order_relaxed);
    int m = -1, fd = open("/proc/sys/vm/overcommit_memory", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        char c;
        if (read(fd, &c, 1) == 1 && c >= '0' && c <= '2')
            m = c - '0';
        close(fd);
    }
    atomic_store_explicit(&mode, m, memory_order_relaxed);
    atomic_store_explicit(&read_at_ns, now, memory_order_relaxed);
    return m;
}

bool sa_os_can_back(size_t bytes)
{
    if (bytes < SA_OS_BACKING_CHECK)
        return true;
    struct sysinfo si;
    if (sysinfo(&si) == 0) {
        uint64_t units = (uint64_t)si.totalram + si.totalswap, total;
        if (!__builtin_mul_overflow(units, (uint64_t)si.mem_unit, &total) && bytes > total)
            return false;
    }
    int mode = overcommit_mode();
    if (mode == 0 || mode == 1)
        return true; /* the kernel's own rule is the one just applied, or none */
    void *probe = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (probe == MAP_FAILED)
        return false;
    munmap(probe, bytes);
    return true;
}

void sa_os_unmap(void *addr, size_t bytes)
{
    munmap(addr, bytes);
}

/* Return the physical pages of [addr, addr+bytes) to the OS.  Only whole OS
 * pages are released: with 16 or 64 KiB OS pages an 8 KiB-aligned range
 * keeps its partial OS pages at both ends (their data stays: the page map's
 * known-zero bitmap leaves them out, see sa_pagemap_note_released). */
/* Written once at init, but a test flips it while the scavenger may be
 * releasing: a relaxed load (a plain load's code) keeps that defined. */
static bool madvise_free(void)
{
    return __atomic_load_n(&sa_options.madvise_free, __ATOMIC_RELAXED);
}

bool sa_os_release(void *addr, size_t bytes)
{
    size_t os_page = sa_os_page_size();
    uintptr_t start = ((uintptr_t)addr + os_page - 1) & ~(uintptr_t)(os_page - 1);
    uintptr_t end = ((uintptr_t)addr + bytes) & ~(uintptr_t)(os_page - 1);
    if (end <= start)
        return true;
    int advice = madvise_free() ? MADV_FREE : MADV_DONTNEED;
    return madvise((void *)start, end - start, advice) == 0;
}

/* Do released pages read back as zero?  MADV_DONTNEED on private anonymous
 * memory: yes, for every whole OS page of the range.  MADV_FREE: no, the
 * kernel may leave the old contents until it is short of memory. */
bool sa_os_release_zeroes(void)
{
    return !madvise_free();
}

void sa_os_random(void *buf, size_t len)
{
    long got = syscall(SYS_getrandom, buf, len, 0x1 /* GRND_NONBLOCK */);
    if (got == (long)len)
        return;
    /* No entropy yet (early boot): mix the clock and an address instead. */
    uint64_t x = sa_os_now_ns() ^ (uintptr_t)buf ^ ((uint64_t)getpid() << 32);
    unsigned char *out = buf;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        out[i] = (unsigned char)x;
    }
}

/* The one reading of the monotonic clock. */
uint64_t sa_os_monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t sa_os_now_ns(void)
{
    if (sa_clock_hook != NULL)
        return sa_clock_hook();
    return sa_os_monotonic_ns();
}

/* Test hook: a test sets it between its own allocations while the
 * scavenger may be releasing, hence the relaxed atomic accesses. */
size_t sa_os_page_size_override;

size_t sa_os_page_size(void)
{
    /* Threads' first maps may race to fill it: each stores the same value,
     * relaxed atomics make that race defined. */
    static _Atomic size_t cached;
    size_t forced = __atomic_load_n(&sa_os_page_size_override, __ATOMIC_RELAXED);
    if (SA_UNLIKELY(forced != 0))
        return forced;
    size_t page = atomic_load_explicit(&cached, memory_order_relaxed);
    if (page == 0) {
        long p = sysconf(_SC_PAGESIZE);
        page = p > 0 ? (size_t)p : 4096;
        atomic_store_explicit(&cached, page, memory_order_relaxed);
    }
    return page;
}
