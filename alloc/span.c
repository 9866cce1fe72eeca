/*
 * span.c: span records and the intrusive lists that hold them.
 *
 * Records are fixed-size and come from chunks mapped for metadata only, so
 * no user write can reach them.  They are recycled through a free list and
 * never unmapped: the page map may still point at a recycled record, and a
 * reader following a stale pointer must find mapped memory.
 * Callers hold the heap lock.
 */
#include <string.h>

#include "internal.h"

#define SA_RECORD_CHUNK ((size_t)64 << 10)

static struct sa_span *record_free_list;
static char *chunk_cursor, *chunk_end;

extern struct sa_heap_counters sa_heap_counters_locked; /* mheap.c */

int sa_span_records_fail, sa_span_records_fail_after; /* test hooks, heap lock */

struct sa_span *sa_span_record_new(void)
{
    if (SA_UNLIKELY(sa_span_records_fail > 0)) {
        if (sa_span_records_fail_after > 0)
            sa_span_records_fail_after--;
        else
            return sa_span_records_fail--, NULL;
    }
    struct sa_span *s = record_free_list;
    if (s != NULL) {
        record_free_list = s->next;
    } else {
        if (chunk_cursor == NULL || chunk_cursor + sizeof(*s) > chunk_end) {
            char *chunk = sa_os_map(SA_RECORD_CHUNK, 0);
            if (chunk == NULL)
                return NULL;
            chunk_cursor = chunk;
            chunk_end = chunk + SA_RECORD_CHUNK;
            sa_heap_counters_locked.span_records_sys += SA_RECORD_CHUNK;
        }
        s = (struct sa_span *)chunk_cursor;
        chunk_cursor += sizeof(*s);
    }
    memset(s, 0, sizeof(*s));
    sa_heap_counters_locked.span_records++;
    return s;
}

void sa_span_record_free(struct sa_span *s)
{
    s->state = 0;
    s->next = record_free_list;
    record_free_list = s;
    sa_heap_counters_locked.span_records--;
}

void sa_span_list_push(struct sa_span_list *list, struct sa_span *s)
{
    s->prev = NULL;
    s->next = list->first;
    if (list->first != NULL)
        list->first->prev = s;
    list->first = s;
}

void sa_span_list_remove(struct sa_span_list *list, struct sa_span *s)
{
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        list->first = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    s->next = s->prev = NULL;
}
