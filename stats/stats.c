/*
 * stats.c: read_mem_stats and its text and JSON renderings.
 *
 * Counting costs the fast path nothing extra: each cache (a CPU's, or a
 * thread's in the fallback) counts mallocs per size class in the word its
 * pop commits, frees are derived from its count and the blocks batches
 * moved, and a read folds them in (sa_mcache_fold_stats), with the counts
 * of exited threads and the heap's own counters.  The cumulative counters
 * never go back from one read to the next, while threads allocate too (for
 * frees, see "Statistics" in alloc/mcache.c).  A read takes the registry lock and the heap lock briefly,
 * never stops another thread, and costs O(CPUs + fallback threads + classes).  Byte figures are
 * derived from counts: heap_alloc = sum over classes of (mallocs - frees) *
 * size, plus the pages of live large objects.  The invariants of
 * docs/api.md hold exactly whenever no other thread is allocating.
 */
#include <string.h>

#include "../alloc/internal.h"
#include "../profile/profile.h"
#include "../scavenger/scavenger.h"

void read_mem_stats(struct mem_stats *out)
{
    uint64_t mallocs[SA_NUM_CLASSES], frees[SA_NUM_CLASSES];
    uint64_t caches_inuse, caches_sys;
    struct sa_heap_counters h;
    struct sa_profile_stats prof;

    sa_ensure_init();
    memset(out, 0, sizeof(*out));
    sa_mcache_fold_stats(mallocs, frees, &caches_inuse, &caches_sys);
    sa_profile_read_stats(&prof); /* before the heap: see profile.h */
    sa_mheap_read(&h);

    uint64_t small_alloc = 0, small_total = 0;
    for (unsigned cls = 1; cls < SA_NUM_CLASSES; cls++) {
        uint64_t size = sa_class_size[cls];
        /* Sampled small blocks: counted as large objects by the heap. */
        out->by_size[cls] = (struct mem_stats_class){size, mallocs[cls] + prof.mallocs[cls],
                                                     frees[cls] + prof.frees[cls]};
        small_alloc += (mallocs[cls] - frees[cls]) * size;
        small_total += mallocs[cls] * size;
        out->mallocs += mallocs[cls];
        out->frees += frees[cls];
    }
    out->mallocs += h.large_mallocs;
    out->frees += h.large_frees;
    out->heap_alloc = small_alloc + h.large_alloc_bytes;
    out->alloc = out->heap_alloc;
    out->total_alloc = small_total + h.large_total_alloc;
    out->heap_objects = out->mallocs - out->frees;

    out->heap_sys = h.sys_bytes;
    out->heap_inuse = h.inuse_pages << SA_PAGE_SHIFT;
    out->heap_idle = out->heap_sys - out->heap_inuse;
    out->heap_released = h.released_pages << SA_PAGE_SHIFT;

    out->mspan_inuse = h.span_records * sizeof(struct sa_span);
    out->mspan_sys = h.span_records_sys;
    out->mcache_inuse = caches_inuse; /* the slabs of live threads and set-up CPUs */
    out->mcache_sys = caches_sys;
    out->other_sys = h.pagemap_sys + sa_mcentral_sys_bytes() + prof.sys_bytes;
    out->sys = out->heap_sys + out->mspan_sys + out->mcache_sys + out->other_sys;

    sa_scavenger_counters(&out->num_scavenges, &out->num_forced_scavenges);
    out->released_total = h.released_total;
    out->reacquired_total = h.reacquired_total;
    out->madvise_failures = h.madvise_failures;
}

/* ---- Printing: one table of fields drives both formats */

struct field {
    const char *name;
    size_t offset;
    int bytes; /* print MiB beside it in text */
};

#define F(name, bytes) {#name, offsetof(struct mem_stats, name), bytes}
static const struct field fields[] = {
    F(alloc, 1),          F(total_alloc, 1),       F(sys, 1),
    F(mallocs, 0),        F(frees, 0),             F(heap_alloc, 1),
    F(heap_sys, 1),       F(heap_idle, 1),         F(heap_inuse, 1),
    F(heap_released, 1),  F(heap_objects, 0),      F(mspan_inuse, 1),
    F(mspan_sys, 1),      F(mcache_inuse, 1),      F(mcache_sys, 1),
    F(other_sys, 1),      F(num_scavenges, 0),     F(num_forced_scavenges, 0),
    F(released_total, 1), F(reacquired_total, 1),  F(madvise_failures, 0),
};
#undef F

static uint64_t field_value(const struct mem_stats *st, const struct field *f)
{
    uint64_t v;
    memcpy(&v, (const char *)st + f->offset, sizeof(v));
    return v;
}

static void print_text(FILE *f, const struct mem_stats *st)
{
    fprintf(f, "spanalloc memory statistics\n");
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        uint64_t v = field_value(st, &fields[i]);
        if (fields[i].bytes)
            fprintf(f, "  %-22s %20llu  (%10.2f MiB)\n", fields[i].name,
                    (unsigned long long)v, (double)v / (1 << 20));
        else
            fprintf(f, "  %-22s %20llu\n", fields[i].name, (unsigned long long)v);
    }
    fprintf(f, "  %-5s %8s %14s %14s %14s\n", "class", "size", "mallocs", "frees", "live");
    for (unsigned c = 1; c < SPANALLOC_NUM_SIZE_CLASSES; c++) {
        const struct mem_stats_class *b = &st->by_size[c];
        if (b->mallocs == 0)
            continue;
        fprintf(f, "  %-5u %8llu %14llu %14llu %14llu\n", c, (unsigned long long)b->size,
                (unsigned long long)b->mallocs, (unsigned long long)b->frees,
                (unsigned long long)(b->mallocs - b->frees));
    }
}

static void print_json(FILE *f, const struct mem_stats *st)
{
    fputc('{', f);
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
        fprintf(f, "\"%s\":%llu,", fields[i].name,
                (unsigned long long)field_value(st, &fields[i]));
    fputs("\"by_size\":[", f);
    for (unsigned c = 1; c < SPANALLOC_NUM_SIZE_CLASSES; c++) {
        const struct mem_stats_class *b = &st->by_size[c];
        fprintf(f, "%s{\"size\":%llu,\"mallocs\":%llu,\"frees\":%llu}", c > 1 ? "," : "",
                (unsigned long long)b->size, (unsigned long long)b->mallocs,
                (unsigned long long)b->frees);
    }
    fputs("]}\n", f);
}

void spanalloc_stats_print(FILE *f, enum spanalloc_stats_format format)
{
    struct mem_stats st;
    read_mem_stats(&st);
    if (format == SPANALLOC_STATS_JSON)
        print_json(f, &st);
    else
        print_text(f, &st);
    fflush(f);
}
