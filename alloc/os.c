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
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#ifndef MADV_FREE
#define MADV_FREE 8
#endif

_Atomic int sa_os_fail_maps;
uint64_t (*sa_clock_hook)(void);

static void *map_exact(size_t bytes)
{
    if (atomic_load_explicit(&sa_os_fail_maps, memory_order_relaxed) > 0) {
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

void sa_os_unmap(void *addr, size_t bytes)
{
    munmap(addr, bytes);
}

/* Return the physical pages of [addr, addr+bytes) to the OS.  Only whole OS
 * pages are released; callers pass 8 KiB-aligned ranges, which are whole OS
 * pages wherever the OS page is <= 8 KiB. */
bool sa_os_release(void *addr, size_t bytes)
{
    size_t os_page = sa_os_page_size();
    uintptr_t start = ((uintptr_t)addr + os_page - 1) & ~(uintptr_t)(os_page - 1);
    uintptr_t end = ((uintptr_t)addr + bytes) & ~(uintptr_t)(os_page - 1);
    if (end <= start)
        return true;
    int advice = sa_options.madvise_free ? MADV_FREE : MADV_DONTNEED;
    return madvise((void *)start, end - start, advice) == 0;
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

uint64_t sa_os_now_ns(void)
{
    if (sa_clock_hook != NULL)
        return sa_clock_hook();
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

size_t sa_os_page_size(void)
{
    static size_t cached;
    if (cached == 0) {
        long p = sysconf(_SC_PAGESIZE);
        cached = p > 0 ? (size_t)p : 4096;
    }
    return cached;
}
