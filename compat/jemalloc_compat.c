/*
 * jemalloc_compat.c: the jemalloc entry points that programs built for
 * jemalloc call besides malloc (Redis is the prime case: INFO memory reads
 * mallctl("stats.*"), MEMORY PURGE calls mallctl("arena.<n>.purge"), sds
 * sizes buffers with nallocx, MEMORY MALLOC-STATS calls malloc_stats_print).
 * Preloaded, spanalloc answers them with its own figures:
 *
 *   epoch                 uint64, read/write; stats are always current
 *   stats.allocated       heap_alloc
 *   stats.active          heap_inuse
 *   stats.resident        sys - heap_released
 *   stats.mapped          sys
 *   stats.retained        heap_released
 *   stats.metadata        mspan_sys + mcache_sys + other_sys
 *   arenas.narenas        1 (unsigned)
 *   arena.<i>.purge       free_os_memory(), any i (jemalloc's "all" is 4096)
 *   arena.<i>.decay       the same
 *   background_thread     bool: the scavenger thread runs; writes accepted
 *   thread.tcache.flush   flush the calling thread's cache
 *   version               "spanalloc-<version>"
 *   prof.dump             write the heap profile: newp points to the path
 *                         (const char *); without one, SPANALLOC_PROFILE_FILE
 *   opt.prof              bool: the heap profile samples (rate not 0)
 *
 * Anything else returns ENOENT, as jemalloc does for a name it lacks.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../alloc/internal.h"
#include "../profile/profile.h"
#include "../scavenger/scavenger.h"

#define SA_EXPORT __attribute__((visibility("default")))
#define MALLOCX_LG_ALIGN_MASK 0x3f

static uint64_t epoch = 1;

/* Copy a value out the way jemalloc does: the length must match. */
static int read_value(void *oldp, size_t *oldlenp, const void *value, size_t len)
{
    if (oldp == NULL || oldlenp == NULL)
        return 0;
    if (*oldlenp != len) {
        size_t n = *oldlenp < len ? *oldlenp : len;
        memcpy(oldp, value, n);
        *oldlenp = n;
        return EINVAL;
    }
    memcpy(oldp, value, len);
    return 0;
}

struct stat_name {
    const char *name;
    uint64_t (*value)(const struct mem_stats *);
};

static uint64_t allocated(const struct mem_stats *s) { return s->heap_alloc; }
static uint64_t active(const struct mem_stats *s) { return s->heap_inuse; }
static uint64_t resident(const struct mem_stats *s) { return s->sys - s->heap_released; }
static uint64_t mapped(const struct mem_stats *s) { return s->sys; }
static uint64_t retained(const struct mem_stats *s) { return s->heap_released; }
static uint64_t metadata(const struct mem_stats *s)
{
    return s->mspan_sys + s->mcache_sys + s->other_sys;
}

static const struct stat_name size_stats[] = {
    {"stats.allocated", allocated}, {"stats.active", active},
    {"stats.resident", resident},   {"stats.mapped", mapped},
    {"stats.retained", retained},   {"stats.metadata", metadata},
};

/* "arena.<digits>.<verb>" */
static bool is_arena_verb(const char *name, const char *verb)
{
    if (strncmp(name, "arena.", 6) != 0)
        return false;
    const char *p = name + 6;
    if (*p < '0' || *p > '9')
        return false;
    while (*p >= '0' && *p <= '9')
        p++;
    return *p == '.' && strcmp(p + 1, verb) == 0;
}

SA_EXPORT int mallctl(const char *name, void *oldp, size_t *oldlenp, void *newp,
                      size_t newlen)
{
    if (name == NULL)
        return EINVAL;
    for (size_t i = 0; i < sizeof(size_stats) / sizeof(size_stats[0]); i++) {
        if (strcmp(name, size_stats[i].name) != 0)
            continue;
        if (newp != NULL)
            return EPERM;
        struct mem_stats st;
        read_mem_stats(&st);
        size_t v = (size_t)size_stats[i].value(&st);
        return read_value(oldp, oldlenp, &v, sizeof(v));
    }
    if (strcmp(name, "epoch") == 0) {
        if (newp != NULL) {
            if (newlen != sizeof(uint64_t))
                return EINVAL;
            epoch++;
        }
        return read_value(oldp, oldlenp, &epoch, sizeof(epoch));
    }
    if (strcmp(name, "arenas.narenas") == 0) {
        unsigned one = 1;
        return newp != NULL ? EPERM : read_value(oldp, oldlenp, &one, sizeof(one));
    }
    if (is_arena_verb(name, "purge") || is_arena_verb(name, "decay")) {
        free_os_memory();
        return 0;
    }
    if (strcmp(name, "background_thread") == 0) {
        bool running = sa_scavenger_running();
        if (newp != NULL && newlen != sizeof(bool))
            return EINVAL;
        return read_value(oldp, oldlenp, &running, sizeof(running));
    }
    if (strcmp(name, "thread.tcache.flush") == 0) {
        sa_mcache_flush_current();
        return 0;
    }
    if (strcmp(name, "prof.dump") == 0) {
        const char *path = NULL;
        if (newp != NULL) {
            if (newlen != sizeof(path))
                return EINVAL;
            memcpy(&path, newp, sizeof(path));
            return spanalloc_profile_write(path);
        }
        return sa_profile_write_option_file();
    }
    if (strcmp(name, "opt.prof") == 0) {
        bool on = sa_profile_options.rate != 0;
        return newp != NULL ? EPERM : read_value(oldp, oldlenp, &on, sizeof(on));
    }
    if (strcmp(name, "version") == 0) {
        static const char *version = "spanalloc-" SPANALLOC_VERSION;
        return newp != NULL ? EPERM : read_value(oldp, oldlenp, &version, sizeof(version));
    }
    return ENOENT;
}

/* The usable size malloc (or an aligned allocation) would give `size`. */
SA_EXPORT size_t nallocx(size_t size, int flags)
{
    size_t align = (size_t)1 << (flags & MALLOCX_LG_ALIGN_MASK);
    if ((flags & MALLOCX_LG_ALIGN_MASK) == 0)
        align = 1;
    if (size > (size_t)PTRDIFF_MAX)
        return 0;
    if (align <= 16 && size <= SA_MAX_MEDIUM)
        return sa_class_size[sa_size_class(size)];
    if (align <= SA_PAGE_SIZE) { /* the class malloc.c's aligned path takes, if any */
        unsigned cls = sa_aligned_class(size, align);
        if (cls != 0)
            return sa_class_size[cls];
    }
    size_t pages = (size + SA_PAGE_SIZE - 1) >> SA_PAGE_SHIFT;
    return (pages ? pages : 1) << SA_PAGE_SHIFT;
}

SA_EXPORT void malloc_stats_print(void (*write_cb)(void *, const char *), void *cbopaque,
                                  const char *opts)
{
    enum spanalloc_stats_format format =
        (opts != NULL && strchr(opts, 'J') != NULL) ? SPANALLOC_STATS_JSON : SPANALLOC_STATS_TEXT;
    if (write_cb == NULL) {
        spanalloc_stats_print(stderr, format);
        return;
    }
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (f == NULL)
        return;
    spanalloc_stats_print(f, format);
    fclose(f);
    write_cb(cbopaque, text);
    free(text);
}
