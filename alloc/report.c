/*
 * report.c: what happens when a program hands the allocator a bad pointer.
 *
 * Every check on the free path is O(1): the page map says whether the
 * address belongs to a span of ours, the span's state and geometry say
 * whether it is the start of an object, and the free mark in the block says
 * whether that object is already free.  A failed check is reported on stderr
 * (formatted by hand into a stack buffer: the heap may be the thing that is
 * broken) and the process aborts before anything is corrupted, as glibc does.
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "valgrind_hooks.h"

struct msg {
    char buf[256];
    size_t len;
};

static void put_str(struct msg *m, const char *s)
{
    while (*s && m->len < sizeof(m->buf) - 1)
        m->buf[m->len++] = *s++;
}

static void put_uint(struct msg *m, uint64_t v, unsigned base)
{
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = "0123456789abcdef"[v % base];
        v /= base;
    } while (v);
    if (base == 16)
        put_str(m, "0x");
    while (n > 0 && m->len < sizeof(m->buf) - 1)
        m->buf[m->len++] = tmp[--n];
}

void sa_report(const char *what, const void *ptr, const struct sa_span *s)
{
    struct msg m = {.len = 0};
    put_str(&m, "spanalloc: ");
    put_str(&m, what);
    put_str(&m, " at ");
    put_uint(&m, (uintptr_t)ptr, 16);
    if (s != NULL && s->state == SA_SPAN_SMALL) {
        put_str(&m, " (size class ");
        put_uint(&m, sa_span_cls(s), 10);
        put_str(&m, ", ");
        put_uint(&m, s->elem_size, 10);
        put_str(&m, " bytes)");
    } else if (s != NULL && s->state == SA_SPAN_LARGE) {
        put_str(&m, " (large object of ");
        put_uint(&m, (uint64_t)s->npages << SA_PAGE_SHIFT, 10);
        put_str(&m, " bytes)");
    }
    put_str(&m, "; aborting\n");
    ssize_t ignored = write(STDERR_FILENO, m.buf, m.len);
    (void)ignored;
    abort();
}

static void report_op(const char *op, const char *what, const void *ptr,
                      const struct sa_span *s)
{
    char text[128];
    size_t n = 0;
    for (const char *p = op; *p && n < sizeof(text) - 3; p++)
        text[n++] = *p;
    text[n++] = ':';
    text[n++] = ' ';
    for (const char *p = what; *p && n < sizeof(text) - 1; p++)
        text[n++] = *p;
    text[n] = '\0';
    sa_report(text, ptr, s);
}

struct sa_span *sa_checked_span(const void *ptr, const char *op)
{
    struct sa_span *s = sa_pagemap_lookup((uintptr_t)ptr);
    if (s == NULL)
        report_op(op, "pointer not allocated by spanalloc", ptr, NULL);
    if (s->state == SA_SPAN_LARGE) {
        if ((uintptr_t)ptr != s->base)
            report_op(op, "interior pointer into a large object", ptr, s);
        return s;
    }
    if (s->state != SA_SPAN_SMALL)
        report_op(op, "block already freed (double free)", ptr, NULL);
    uintptr_t offset = (uintptr_t)ptr - s->base;
    if (offset % s->elem_size != 0 || offset / s->elem_size >= s->nelems)
        report_op(op, "interior or misaligned pointer", ptr, s);
    if (sa_block_is_free_checked(ptr))
        report_op(op, "block already freed (double free)", ptr, s);
    return s;
}

void sa_report_bad_free(void *ptr, struct sa_span *s)
{
    sa_checked_span(ptr, "free");
    sa_report("free: invalid pointer", ptr, s);
}
