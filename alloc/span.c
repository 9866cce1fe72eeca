/*
 * span.c: span records and the intrusive lists that hold them.
 *
 * Records are fixed-size and come from metadata chunks (chunk.c), so no
 * user write can reach them.  They are recycled through a free list and
 * never unmapped: the page map may still point at a recycled record, and a
 * reader following a stale pointer must find mapped memory.
 * Callers hold the heap lock.
 */
#include <string.h>

#include "internal.h"

#define SA_RECORD_CHUNK ((size_t)64 << 10)

static struct sa_span *record_free_list; /* heap lock */
static struct sa_chunk records;          /* heap lock */

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
        if (!sa_chunk_reserve(&records, sizeof(*s), SA_RECORD_CHUNK))
            return NULL;
        sa_heap_counters_locked.span_records_sys = records.mapped;
        s = sa_chunk_take(&records, sizeof(*s));
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
    SA_DLIST_PUSH(list->first, s, next, prev);
}

void sa_span_list_remove(struct sa_span_list *list, struct sa_span *s)
{
    SA_DLIST_REMOVE(list->first, s, next, prev);
    s->next = s->prev = NULL;
}
