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
#include "valgrind_hooks.h"

#define SA_RECORD_CHUNK ((size_t)64 << 10)

static struct sa_span *record_free_list;
static char *chunk_cursor, *chunk_end;

extern struct sa_heap_counters sa_heap_counters_locked; /* mheap.c */

struct sa_span *sa_span_record_new(void)
{
    struct sa_span *s = record_free_list;
    if (s != NULL) {
        record_free_list = s->next;
    } else {
        if (chunk_cursor == NULL || chunk_cursor + sizeof(*s) > chunk_end) {
            char *chunk = sa_os_map(SA_RECORD_CHUNK, 0);
            if (chunk == NULL)
                return NULL;
            sa_vg_hide_metadata(chunk, SA_RECORD_CHUNK);
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

#define SA_MAX_HIDDEN_CHUNKS 4096
static void *hidden_chunks[SA_MAX_HIDDEN_CHUNKS];
static size_t hidden_count;

void sa_vg_hide_metadata(void *chunk, size_t len)
{
#if defined(SA_HAVE_VALGRIND)
    if (sa_on_valgrind && hidden_count < SA_MAX_HIDDEN_CHUNKS) {
        hidden_chunks[hidden_count++] = chunk;
        VALGRIND_MAKE_MEM_NOACCESS(chunk, len);
        VALGRIND_DISABLE_ADDR_ERROR_REPORTING_IN_RANGE(chunk, len);
    }
#else
    (void)chunk;
    (void)len;
#endif
}

/* At the very end, turn address errors back on (the chunks stay no-access,
 * so the leak scan still skips them), or valgrind warns that ranges were
 * left disabled.  Library destructors run after the program's exit handlers. */
__attribute__((destructor(101))) static void sa_vg_unhide_at_exit(void)
{
#if defined(SA_HAVE_VALGRIND)
    for (size_t i = 0; i < hidden_count; i++)
        VALGRIND_ENABLE_ADDR_ERROR_REPORTING_IN_RANGE(hidden_chunks[i], SA_RECORD_CHUNK);
    hidden_count = 0;
#endif
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
