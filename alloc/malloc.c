/*
 * malloc.c: the prefixed C API (spanalloc_malloc, ...) and everything the
 * entry points do off the fast path: large objects, aligned requests,
 * calloc's zeroing, realloc's in-place cases, and the checks that turn a bad
 * pointer into a report instead of a corrupted heap.
 *
 * Semantics follow glibc's: 16-byte alignment for every block (every class
 * is a multiple of 16), NULL with errno ENOMEM for impossible sizes and
 * overflow, realloc(NULL, n) allocates, realloc(p, 0) frees and returns NULL.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "entry.h"
#include "valgrind_hooks.h"

#define SA_MAX_REQUEST ((size_t)PTRDIFF_MAX)

static bool is_power_of_two(size_t x)
{
    return x != 0 && (x & (x - 1)) == 0;
}

/* ---- Medium and large objects
 *
 * Medium requests (32 KiB .. 256 KiB) come here from the inline path and go
 * to the thread cache like small ones, through classes whose spans hold one
 * object each; larger ones get a span of their own from the mheap. */

void *sa_malloc_large(size_t size, size_t align)
{
    if (size <= SA_MAX_MEDIUM && align <= 16)
        return sa_mcache_alloc(sa_medium_list_offset(size));
    return sa_malloc_own_span(size, align);
}

/* A span of its own for one block, whatever its size. */
void *sa_malloc_own_span(size_t size, size_t align)
{
    return sa_malloc_own_span_as(size, align, 0);
}

/* The heap profile's sampled blocks: counted as `counted` bytes (a sampled
 * small block's class size; 0: the span's pages). */
void *sa_malloc_own_span_as(size_t size, size_t align, size_t counted)
{
    sa_ensure_init();
    if (size > SA_MAX_REQUEST || align > ((size_t)1 << (SA_ADDR_BITS - 2)) ||
        !sa_os_can_back(size + align)) { /* fails at once, touching nothing */
        errno = ENOMEM;
        return NULL;
    }
    size_t npages = (size + SA_PAGE_SIZE - 1) >> SA_PAGE_SHIFT;
    size_t align_pages = align > SA_PAGE_SIZE ? align >> SA_PAGE_SHIFT : 1;
    npages = npages ? npages : 1;
    struct sa_span *s = sa_mheap_alloc_large_as(npages, align_pages, counted); /* the cache first */
    if (s == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    SA_VG_MALLOCLIKE((void *)s->base, (size_t)s->npages << SA_PAGE_SHIFT, !s->needzero);
    return (void *)s->base;
}

/* free() of a pointer whose arena has no leaf in the static root (the only
 * part the inline lookup reads): looked up in the whole page map, it is
 * NULL, a block above 2^SA_ADDR_BITS, or a bad pointer. */
void sa_free_full_lookup(void *ptr)
{
    if (ptr == NULL)
        return;
    struct sa_span *s = sa_pagemap_lookup((uintptr_t)ptr);
    if (s != NULL && (uint64_t)((uintptr_t)ptr - s->base) * s->free_magic < s->free_limit) {
        sa_mcache_free(ptr, s); /* a small block above 2^SA_ADDR_BITS */
        return;
    }
    sa_free_large(ptr, s);
}

/* free() of a pointer the inline small-block check refused: a large block
 * (or a sampled one, in a span of its own) is freed; anything else is a bad
 * pointer, reported (a valid small block never gets here). */
void sa_free_large(void *ptr, struct sa_span *s)
{
    if (s != NULL && s->state == SA_SPAN_LARGE && (uintptr_t)ptr == s->base) {
        SA_VG_FREELIKE(ptr);
        if (SA_UNLIKELY(s->prof != NULL))
            sa_profile_free(s); /* a sampled block: its record, then its span */
        else
            sa_mheap_free_large_cached(s);
        return;
    }
    if (ptr != NULL) /* NULL comes here only if arena 0 had a leaf: no error */
        sa_report_bad_free(ptr, s == &sa_span_none ? NULL : s);
}

/* What malloc_usable_size says of the block of span s: a sampled small
 * block has its class's size, as it would have unsampled. */
static size_t span_usable(const struct sa_span *s)
{
    if (s->state == SA_SPAN_SMALL)
        return s->elem_size;
    if (SA_UNLIKELY(s->prof != NULL))
        return sa_profile_usable(s);
    return (size_t)s->npages << SA_PAGE_SHIFT;
}

/* ---- Entry points shared with override.c */

void *sa_malloc(size_t size)
{
    return sa_malloc_inline(size);
}

void sa_free(void *ptr)
{
    sa_free_inline(ptr);
}

size_t sa_usable_size(const void *ptr)
{
    if (ptr == NULL)
        return 0;
    return span_usable(sa_checked_span(ptr, "malloc_usable_size"));
}

/* A small class whose size is a multiple of align (align <= page size):
 * objects start at page-aligned span bases, so every object is aligned. */
unsigned sa_aligned_class(size_t size, size_t align)
{
    if (size > SA_MAX_SMALL) /* also keeps the rounding below from wrapping */
        return 0;
    size_t rounded = (size + align - 1) & ~(align - 1);
    if (rounded > SA_MAX_SMALL)
        return 0;
    for (unsigned cls = sa_size_class(rounded); cls < SA_NUM_CLASSES; cls++)
        if (sa_class_size[cls] % align == 0)
            return cls;
    return 0;
}

static void *malloc_aligned_unsampled(size_t align, size_t size)
{
    if (align <= 16)
        return sa_malloc_unsampled(size);
    if (align <= SA_PAGE_SIZE) {
        unsigned cls = sa_aligned_class(size, align);
        if (cls != 0)
            return sa_mcache_alloc((size_t)cls << SA_LIST_SHIFT);
    }
    return sa_malloc_large(size, align);
}

static void *malloc_aligned(size_t align, size_t size)
{
    if (SA_UNLIKELY(sa_profile_tick(size)))
        return sa_profile_malloc(size, align <= 16 ? 0 : align);
    return malloc_aligned_unsampled(align, size);
}

void *sa_malloc_plain(size_t size, size_t align)
{
    return align == 0 ? sa_malloc_unsampled(size) : malloc_aligned_unsampled(align, size);
}

/* ---- The prefixed API */

void *spanalloc_malloc(size_t size)
{
    return sa_malloc_inline(size);
}

void spanalloc_free(void *ptr)
{
    sa_free_inline(ptr);
}

void *spanalloc_calloc(size_t count, size_t size)
{
    size_t total;
    if (__builtin_mul_overflow(count, size, &total)) {
        errno = ENOMEM;
        return NULL;
    }
    void *p = sa_malloc_inline(total);
    if (p == NULL)
        return NULL;
    /* A class's block may have been used before whatever its span says. */
    if (total <= SA_MAX_MEDIUM || sa_pagemap_lookup((uintptr_t)p)->needzero)
        memset(p, 0, total);
    return p;
}

void *spanalloc_realloc(void *ptr, size_t size)
{
    if (ptr == NULL)
        return sa_malloc_inline(size);
    if (size == 0) {
        sa_free_inline(ptr);
        return NULL;
    }
    struct sa_span *s = sa_checked_span(ptr, "realloc");
    size_t usable = span_usable(s);
    /* A large block shrinks in place to whole pages: the pages past the new
     * size go back to the heap (not under memcheck, whose record of the
     * block's size would go stale; nor a sampled small block, which sits in a
     * span bigger than its class).  To a small size it moves instead (a
     * copy of at most 32 KiB), unless that would free less than a page. */
    bool large_shrink = s->state == SA_SPAN_LARGE &&
                        (s->prof == NULL || !sa_profile_is_small(s)) && size <= usable &&
                        !sa_on_valgrind;
    if (large_shrink && size > SA_MAX_SMALL) {
        size_t npages = (size + SA_PAGE_SIZE - 1) >> SA_PAGE_SHIFT;
        if (npages == s->npages || sa_mheap_shrink_large(s, npages))
            return ptr;
    }
    /* Keep the block while the new size fits and wastes at most half. */
    if (size <= usable && size >= usable / 2 && !(large_shrink && usable - size >= SA_PAGE_SIZE))
        return ptr;
    /* A large block grows in place into a free span that follows it (not
     * under memcheck, whose record of the block's size would go stale). */
    if (s->state == SA_SPAN_LARGE && (s->prof == NULL || !sa_profile_is_small(s)) &&
        size > usable && size <= SA_MAX_REQUEST && !sa_on_valgrind &&
        sa_mheap_grow_large(s, (size + SA_PAGE_SIZE - 1) >> SA_PAGE_SHIFT))
        return ptr;
    void *fresh = sa_malloc_inline(size);
    if (fresh == NULL)
        return NULL; /* the old block stays valid, as C requires */
    memcpy(fresh, ptr, size < usable ? size : usable);
    sa_free_inline(ptr);
    return fresh;
}

void *spanalloc_reallocarray(void *ptr, size_t count, size_t size)
{
    size_t total;
    if (__builtin_mul_overflow(count, size, &total)) {
        errno = ENOMEM;
        return NULL;
    }
    return spanalloc_realloc(ptr, total);
}

void *spanalloc_aligned_alloc(size_t alignment, size_t size)
{
    if (!is_power_of_two(alignment)) {
        errno = EINVAL;
        return NULL;
    }
    return malloc_aligned(alignment, size);
}

int spanalloc_posix_memalign(void **out, size_t alignment, size_t size)
{
    if (!is_power_of_two(alignment) || alignment % sizeof(void *) != 0)
        return EINVAL;
    int saved = errno;
    void *p = malloc_aligned(alignment, size);
    if (p == NULL) {
        errno = saved; /* posix_memalign reports through its result only */
        return ENOMEM;
    }
    *out = p;
    return 0;
}

/* memalign rounds a non-power-of-two alignment up, as glibc does. */
void *sa_memalign(size_t alignment, size_t size)
{
    if (alignment > ((size_t)1 << (SA_ADDR_BITS - 2))) {
        errno = EINVAL;
        return NULL;
    }
    if (!is_power_of_two(alignment)) {
        size_t a = 1;
        while (a < alignment)
            a <<= 1;
        alignment = a;
    }
    return malloc_aligned(alignment, size);
}

size_t spanalloc_usable_size(const void *ptr)
{
    return sa_usable_size(ptr);
}

void spanalloc_free_sized(void *ptr, size_t size)
{
    (void)size;
    sa_free_inline(ptr);
}

void spanalloc_free_aligned_sized(void *ptr, size_t alignment, size_t size)
{
    (void)alignment;
    (void)size;
    sa_free_inline(ptr);
}
