/*
 * malloc_count.so: the yardstick of the preload tests' proof.  Preloaded into
 * a program running on glibc's malloc, it counts the allocations the program
 * asks for (malloc, calloc, realloc of NULL or to a new block, the aligned
 * family) and hands each call to glibc's own entry points (__libc_malloc and
 * friends, so no dlsym and no recursion).  At exit it appends
 * "malloc_count pid=P mallocs=N" to $MALLOC_COUNT_FILE.  The preloaded run's
 * spanalloc `mallocs` must then be of the same order as N: spanalloc served
 * the program's work, not a fraction of it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

static _Atomic unsigned long count;

static void counted(void)
{
    atomic_fetch_add_explicit(&count, 1, memory_order_relaxed);
}

void *malloc(size_t n)
{
    counted();
    return __libc_malloc(n);
}

void *calloc(size_t c, size_t n)
{
    counted();
    return __libc_calloc(c, n);
}

void *realloc(void *p, size_t n)
{
    void *q = __libc_realloc(p, n);
    if (q != NULL && q != p)
        counted(); /* a new block (spanalloc counts a moved block as a malloc) */
    return q;
}

void free(void *p)
{
    __libc_free(p);
}

void *memalign(size_t a, size_t n)
{
    counted();
    return __libc_memalign(a, n);
}

void *aligned_alloc(size_t a, size_t n)
{
    counted();
    return __libc_memalign(a, n);
}

int posix_memalign(void **out, size_t a, size_t n)
{
    if (a < sizeof(void *) || (a & (a - 1)) != 0)
        return EINVAL;
    counted();
    void *p = __libc_memalign(a, n);
    if (p == NULL)
        return ENOMEM;
    *out = p;
    return 0;
}

void *valloc(size_t n)
{
    counted();
    return __libc_memalign((size_t)sysconf(_SC_PAGESIZE), n);
}

__attribute__((destructor)) static void report(void)
{
    const char *path = getenv("MALLOC_COUNT_FILE");
    if (path == NULL || *path == '\0')
        return;
    char line[96];
    int len = snprintf(line, sizeof(line), "malloc_count pid=%d mallocs=%lu\n", (int)getpid(),
                       atomic_load(&count));
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return;
    ssize_t ignored = write(fd, line, (size_t)len);
    (void)ignored;
    close(fd);
}
