/*
 * spanalloc: a span-based memory allocator with Go-runtime tiers.
 *
 * This header is all a user needs.  The prefixed functions work beside the
 * system malloc; libspanalloc.so additionally exports the libc names
 * (malloc, free, ...) so that LD_PRELOAD or linking replaces malloc.
 *
 * See docs/api.md for the exact semantics of every function and field.
 */
#ifndef SPANALLOC_H
#define SPANALLOC_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define SPANALLOC_API __attribute__((visibility("default")))
#else
#define SPANALLOC_API
#endif

/* ---- Allocation (same semantics as the libc functions of the same name) */
SPANALLOC_API void *spanalloc_malloc(size_t size);
SPANALLOC_API void spanalloc_free(void *ptr);
SPANALLOC_API void *spanalloc_calloc(size_t count, size_t size);
SPANALLOC_API void *spanalloc_realloc(void *ptr, size_t size);
SPANALLOC_API void *spanalloc_reallocarray(void *ptr, size_t count, size_t size);
SPANALLOC_API void *spanalloc_aligned_alloc(size_t alignment, size_t size);
SPANALLOC_API int spanalloc_posix_memalign(void **out, size_t alignment, size_t size);
SPANALLOC_API size_t spanalloc_usable_size(const void *ptr);
SPANALLOC_API void spanalloc_free_sized(void *ptr, size_t size);
SPANALLOC_API void spanalloc_free_aligned_sized(void *ptr, size_t alignment, size_t size);

/* ---- Statistics, modelled on Go's runtime.MemStats (all in bytes or counts) */

/* Number of size classes (small up to 32 KiB, medium up to 256 KiB),
 * including the unused class 0 (as in Go). */
#define SPANALLOC_NUM_SIZE_CLASSES 79

struct mem_stats_class {
    uint64_t size;    /* object size of this class, in bytes */
    uint64_t mallocs; /* cumulative objects allocated in this class */
    uint64_t frees;   /* cumulative objects freed in this class */
};

struct mem_stats {
    /* General statistics. */
    uint64_t alloc;       /* bytes of allocated objects (== heap_alloc) */
    uint64_t total_alloc; /* cumulative bytes allocated; never decreases */
    uint64_t sys;         /* all bytes obtained from the OS (sum of *_sys) */
    uint64_t mallocs;     /* cumulative count of objects allocated */
    uint64_t frees;       /* cumulative count of objects freed */

    /* Heap. */
    uint64_t heap_alloc;    /* bytes of allocated objects */
    uint64_t heap_sys;      /* heap bytes obtained from the OS = idle + inuse */
    uint64_t heap_idle;     /* bytes in spans holding no object (incl. released) */
    uint64_t heap_inuse;    /* bytes in spans holding at least one object */
    uint64_t heap_released; /* idle bytes whose physical memory is with the OS */
    uint64_t heap_objects;  /* live objects = mallocs - frees */

    /* Allocator metadata. */
    uint64_t mspan_inuse;  /* bytes of span records in use */
    uint64_t mspan_sys;    /* bytes obtained from the OS for span records */
    uint64_t mcache_inuse; /* bytes of per-thread caches in use */
    uint64_t mcache_sys;   /* bytes obtained from the OS for per-thread caches */
    uint64_t other_sys;    /* other metadata: page map, central lists, ... */

    /* Scavenger. */
    uint64_t num_scavenges;        /* background cycles that ran */
    uint64_t num_forced_scavenges; /* free_os_memory() calls */
    uint64_t released_total;       /* bytes ever returned to the OS */
    uint64_t reacquired_total;     /* released bytes taken back into use */
    uint64_t madvise_failures;     /* madvise calls the kernel refused */

    /* Per size class (index 0 is unused, as in Go). */
    struct mem_stats_class by_size[SPANALLOC_NUM_SIZE_CLASSES];
};

/* Fill *out with a snapshot.  Never stops other threads; O(threads + classes). */
SPANALLOC_API void read_mem_stats(struct mem_stats *out);

enum spanalloc_stats_format { SPANALLOC_STATS_TEXT = 0, SPANALLOC_STATS_JSON = 1 };

/* Take a snapshot and write it to f as aligned text (with MiB) or JSON. */
SPANALLOC_API void spanalloc_stats_print(FILE *f, enum spanalloc_stats_format format);

/* ---- Returning memory to the OS */

/* Flush the calling thread's cache, give every empty span back to the heap and
 * release every idle span to the OS at once, whatever its age. */
SPANALLOC_API void free_os_memory(void);

/* Soft limit on heap_sys - heap_released + metadata; 0 means no limit.
 * Returns the previous limit. */
SPANALLOC_API uint64_t spanalloc_set_memory_limit(uint64_t bytes);

/* ---- Heap profile (sampled allocations; docs/observability.md) */

/* Write the heap profile to path in pprof's format (gzipped profile.proto:
 * alloc_objects, alloc_space, inuse_objects, inuse_space, scaled by the
 * sampling), replacing a regular file atomically.  Returns 0 or an errno
 * value; the heap is left as it was either way. */
SPANALLOC_API int spanalloc_profile_write(const char *path);

#ifdef __cplusplus
}
#endif

#endif /* SPANALLOC_H */
