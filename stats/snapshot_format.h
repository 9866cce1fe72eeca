/*
 * snapshot_format.h: what a stats snapshot file holds, shared by the writer
 * inside the allocator (snapshot.c, prometheus.c) and the reader
 * (tools/spanalloc_top.c), so that both agree on every name.
 *
 * A snapshot is struct mem_stats plus a few process figures.  One table
 * below names each scalar three ways: its JSON key (the same keys as
 * spanalloc_stats_print's JSON), its Prometheus metric name and type, and a
 * one-line help text.  The size classes follow as an array (JSON "by_size")
 * or as a `size` label (Prometheus).
 *
 * The writer must not allocate from the heap it measures, so the helpers here
 * format into a caller's fixed buffer by hand: no stdio, no malloc.
 */
#ifndef SPANALLOC_SNAPSHOT_FORMAT_H
#define SPANALLOC_SNAPSHOT_FORMAT_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "spanalloc.h"

struct sa_snapshot {
    struct mem_stats st;
    uint64_t rss;          /* Rss of /proc/self/smaps_rollup, bytes */
    uint64_t lazyfree;     /* LazyFree of /proc/self/smaps_rollup, bytes */
    uint64_t pid;
    uint64_t time_unix_ms; /* when the snapshot was taken (CLOCK_REALTIME) */
    uint64_t interval_ms;  /* SPANALLOC_STATS_INTERVAL */
};

enum sa_snap_kind {
    SA_SNAP_GAUGE,
    SA_SNAP_COUNTER,
    SA_SNAP_SECONDS, /* a gauge in milliseconds, exported in seconds */
    SA_SNAP_JSON_ONLY,
    SA_SNAP_PROM_ONLY, /* no key in JSON (e.g. the pid is a label there) */
};

struct sa_snap_field {
    const char *json;  /* JSON key */
    const char *prom;  /* Prometheus metric name, NULL if not exported */
    unsigned char kind;
    size_t offset;     /* of a uint64_t in struct sa_snapshot */
    const char *help;
};

#define SA_SF(json, prom, kind, member, help) \
    {json, prom, kind, offsetof(struct sa_snapshot, member), help}

static const struct sa_snap_field sa_snap_fields[] = {
    SA_SF("pid", NULL, SA_SNAP_JSON_ONLY, pid, "process id"),
    SA_SF("time_unix_ms", "spanalloc_snapshot_timestamp_seconds", SA_SNAP_SECONDS,
          time_unix_ms, "Unix time at which spanalloc wrote this snapshot."),
    SA_SF("interval_ms", "spanalloc_snapshot_interval_seconds", SA_SNAP_SECONDS,
          interval_ms, "Interval between snapshots (SPANALLOC_STATS_INTERVAL)."),
    SA_SF("alloc", NULL, SA_SNAP_JSON_ONLY, st.alloc, "same as heap_alloc"),
    SA_SF("total_alloc", "spanalloc_alloc_bytes_total", SA_SNAP_COUNTER, st.total_alloc,
          "Cumulative bytes allocated (never decreases)."),
    SA_SF("sys", "spanalloc_sys_bytes", SA_SNAP_GAUGE, st.sys,
          "All bytes obtained from the OS: heap plus allocator metadata."),
    SA_SF("mallocs", "spanalloc_mallocs_total", SA_SNAP_COUNTER, st.mallocs,
          "Cumulative count of objects allocated."),
    SA_SF("frees", "spanalloc_frees_total", SA_SNAP_COUNTER, st.frees,
          "Cumulative count of objects freed."),
    SA_SF("heap_alloc", "spanalloc_heap_alloc_bytes", SA_SNAP_GAUGE, st.heap_alloc,
          "Bytes of allocated, not yet freed objects."),
    SA_SF("heap_sys", "spanalloc_heap_sys_bytes", SA_SNAP_GAUGE, st.heap_sys,
          "Heap bytes obtained from the OS (heap_idle + heap_inuse)."),
    SA_SF("heap_idle", "spanalloc_heap_idle_bytes", SA_SNAP_GAUGE, st.heap_idle,
          "Heap bytes in spans holding no object, released ones included."),
    SA_SF("heap_inuse", "spanalloc_heap_inuse_bytes", SA_SNAP_GAUGE, st.heap_inuse,
          "Heap bytes in spans holding at least one object."),
    SA_SF("heap_released", "spanalloc_heap_released_bytes", SA_SNAP_GAUGE, st.heap_released,
          "Idle heap bytes whose physical memory was returned to the OS."),
    SA_SF("heap_objects", "spanalloc_heap_objects", SA_SNAP_GAUGE, st.heap_objects,
          "Live objects (mallocs - frees)."),
    SA_SF("mspan_inuse", "spanalloc_mspan_inuse_bytes", SA_SNAP_GAUGE, st.mspan_inuse,
          "Bytes of span records in use."),
    SA_SF("mspan_sys", "spanalloc_mspan_sys_bytes", SA_SNAP_GAUGE, st.mspan_sys,
          "Bytes obtained from the OS for span records."),
    SA_SF("mcache_inuse", "spanalloc_mcache_inuse_bytes", SA_SNAP_GAUGE, st.mcache_inuse,
          "Bytes of cache slabs in use (per CPU, or per thread in the fallback)."),
    SA_SF("mcache_sys", "spanalloc_mcache_sys_bytes", SA_SNAP_GAUGE, st.mcache_sys,
          "Bytes obtained from the OS for the cache slabs."),
    SA_SF("other_sys", "spanalloc_other_sys_bytes", SA_SNAP_GAUGE, st.other_sys,
          "Other allocator metadata: page map, central lists."),
    SA_SF("num_scavenges", "spanalloc_scavenges_total", SA_SNAP_COUNTER, st.num_scavenges,
          "Background scavenger cycles that ran."),
    SA_SF("num_forced_scavenges", "spanalloc_forced_scavenges_total", SA_SNAP_COUNTER,
          st.num_forced_scavenges, "Calls of free_os_memory()."),
    SA_SF("released_total", "spanalloc_released_bytes_total", SA_SNAP_COUNTER,
          st.released_total, "Bytes ever returned to the OS."),
    SA_SF("reacquired_total", "spanalloc_reacquired_bytes_total", SA_SNAP_COUNTER,
          st.reacquired_total, "Released bytes taken back into use."),
    SA_SF("madvise_failures", "spanalloc_madvise_failures_total", SA_SNAP_COUNTER,
          st.madvise_failures, "madvise calls the kernel refused."),
    SA_SF("rss", "spanalloc_rss_bytes", SA_SNAP_GAUGE, rss,
          "Resident set size of the process (Rss in /proc/self/smaps_rollup)."),
    SA_SF("lazyfree", "spanalloc_lazyfree_bytes", SA_SNAP_GAUGE, lazyfree,
          "Resident bytes the kernel may reclaim (LazyFree, after MADV_FREE)."),
};
#undef SA_SF

#define SA_SNAP_NFIELDS (sizeof(sa_snap_fields) / sizeof(sa_snap_fields[0]))

/* Per-class metrics in the Prometheus format (label size="N"). */
#define SA_PROM_CLASS_MALLOCS "spanalloc_size_class_mallocs_total"
#define SA_PROM_CLASS_FREES "spanalloc_size_class_frees_total"
#define SA_PROM_CLASS_LIVE "spanalloc_size_class_live_bytes"

static inline uint64_t *sa_snap_field_ptr(struct sa_snapshot *s, const struct sa_snap_field *f)
{
    return (uint64_t *)((char *)s + f->offset);
}
static inline uint64_t sa_snap_field_get(const struct sa_snapshot *s,
                                         const struct sa_snap_field *f)
{
    uint64_t v;
    memcpy(&v, (const char *)s + f->offset, sizeof(v));
    return v;
}

/* ---- Formatting into a fixed buffer, without stdio or malloc.  Once the
 * buffer is full, `overflow` is set and further appends are dropped. */
struct sa_buf {
    char *p;
    size_t len, cap;
    int overflow;
};

static inline void sa_buf_put(struct sa_buf *b, const char *s, size_t n)
{
    if (b->overflow || n > b->cap - b->len) {
        b->overflow = 1;
        return;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}
static inline void sa_buf_str(struct sa_buf *b, const char *s)
{
    sa_buf_put(b, s, strlen(s));
}
static inline void sa_buf_u64(struct sa_buf *b, uint64_t v)
{
    char tmp[20];
    size_t i = sizeof(tmp);
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    sa_buf_put(b, tmp + i, sizeof(tmp) - i);
}
/* Milliseconds as decimal seconds: 1234 -> "1.234". */
static inline void sa_buf_ms_as_seconds(struct sa_buf *b, uint64_t ms)
{
    char frac[4] = {'.', (char)('0' + ms % 1000 / 100), (char)('0' + ms % 100 / 10),
                    (char)('0' + ms % 10)};
    sa_buf_u64(b, ms / 1000);
    sa_buf_put(b, frac, sizeof(frac));
}

/* Read a file's bytes into buf[0, cap - 1) until its end, retrying reads a
 * signal interrupted, and end them with a NUL: the writer's /proc reads
 * (snapshot.c) and the reader's (tools/spanalloc_top.c) chunk by chunk.
 * Returns the bytes read; *more says buf filled up before the end. */
static inline size_t sa_read_until_full(int fd, char *buf, size_t cap, bool *more)
{
    size_t len = 0;
    *more = false;
    while (len < cap - 1) {
        ssize_t n = read(fd, buf + len, cap - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            buf[len] = '\0';
            return len;
        }
        len += (size_t)n;
    }
    buf[len] = '\0';
    *more = true;
    return len;
}

/* The two renderings (snapshot.c, prometheus.c).  `pid_label` adds
 * pid="N" to every Prometheus sample (done when the path has %p, so that the
 * files of several processes can be collected side by side). */
void sa_snapshot_format_json(struct sa_buf *b, const struct sa_snapshot *s);
void sa_snapshot_format_prom(struct sa_buf *b, const struct sa_snapshot *s, int pid_label);

#endif /* SPANALLOC_SNAPSHOT_FORMAT_H */
