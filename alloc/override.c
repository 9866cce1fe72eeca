/*
 * override.c: the libc names, so that LD_PRELOAD or linking replaces the
 * system malloc.  The set is complete (a missing one would send a block to
 * the wrong allocator): malloc, free, calloc, realloc, reallocarray,
 * posix_memalign, aligned_alloc, memalign, valloc, pvalloc,
 * malloc_usable_size, free_sized, free_aligned_sized.
 */
#include <errno.h>
#include <stddef.h>

#include "entry.h"

#define SA_EXPORT __attribute__((visibility("default")))

void *sa_memalign(size_t alignment, size_t size);

SA_EXPORT void *malloc(size_t size)
{
    return sa_malloc_inline(size);
}

SA_EXPORT void free(void *ptr)
{
    sa_free_inline(ptr);
}

SA_EXPORT void *calloc(size_t count, size_t size)
{
    return spanalloc_calloc(count, size);
}

SA_EXPORT void *realloc(void *ptr, size_t size)
{
    return spanalloc_realloc(ptr, size);
}

SA_EXPORT void *reallocarray(void *ptr, size_t count, size_t size)
{
    return spanalloc_reallocarray(ptr, count, size);
}

SA_EXPORT int posix_memalign(void **out, size_t alignment, size_t size)
{
    return spanalloc_posix_memalign(out, alignment, size);
}

SA_EXPORT void *aligned_alloc(size_t alignment, size_t size)
{
    return spanalloc_aligned_alloc(alignment, size);
}

SA_EXPORT void *memalign(size_t alignment, size_t size)
{
    return sa_memalign(alignment, size);
}

SA_EXPORT void *valloc(size_t size)
{
    return sa_memalign(sa_os_page_size(), size);
}

SA_EXPORT void *pvalloc(size_t size)
{
    size_t page = sa_os_page_size();
    size_t rounded = (size + page - 1) & ~(page - 1);
    if (rounded < size) {
        errno = ENOMEM;
        return NULL;
    }
    return sa_memalign(page, rounded ? rounded : page);
}

SA_EXPORT size_t malloc_usable_size(void *ptr)
{
    return sa_usable_size(ptr);
}

SA_EXPORT void free_sized(void *ptr, size_t size)
{
    spanalloc_free_sized(ptr, size);
}

SA_EXPORT void free_aligned_sized(void *ptr, size_t alignment, size_t size)
{
    spanalloc_free_aligned_sized(ptr, alignment, size);
}
