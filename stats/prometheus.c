/*
 * prometheus.c: a snapshot in the Prometheus text exposition format (0.0.4),
 * as node_exporter's textfile collector reads it: every metric family with
 * its HELP and TYPE lines, counters named *_total, bytes named *_bytes, the
 * size classes as a `size` label.  Formats into the caller's fixed buffer by
 * hand (no stdio, no malloc): it runs on the snapshot writer thread, which
 * must not allocate from the heap it measures.
 */
#include "snapshot_format.h"

struct labels {
    char pid[32]; /* `pid="N"` or "" */
};

static void family(struct sa_buf *b, const char *name, const char *type, const char *help)
{
    sa_buf_str(b, "# HELP ");
    sa_buf_str(b, name);
    sa_buf_str(b, " ");
    sa_buf_str(b, help);
    sa_buf_str(b, "\n# TYPE ");
    sa_buf_str(b, name);
    sa_buf_str(b, " ");
    sa_buf_str(b, type);
    sa_buf_str(b, "\n");
}

/* `name{pid="N",size="S"} ` with whichever labels apply. */
static void sample_start(struct sa_buf *b, const char *name, const struct labels *l,
                         uint64_t size_label)
{
    sa_buf_str(b, name);
    if (l->pid[0] != '\0' || size_label != 0) {
        sa_buf_str(b, "{");
        sa_buf_str(b, l->pid);
        if (size_label != 0) {
            sa_buf_str(b, l->pid[0] != '\0' ? ",size=\"" : "size=\"");
            sa_buf_u64(b, size_label);
            sa_buf_str(b, "\"");
        }
        sa_buf_str(b, "}");
    }
    sa_buf_str(b, " ");
}

static void class_family(struct sa_buf *b, const struct sa_snapshot *s, const struct labels *l,
                         const char *name, const char *type, const char *help, int which)
{
    family(b, name, type, help);
    for (unsigned c = 1; c < SPANALLOC_NUM_SIZE_CLASSES; c++) {
        const struct mem_stats_class *k = &s->st.by_size[c];
        uint64_t v = which == 0 ? k->mallocs : which == 1 ? k->frees
                                                          : (k->mallocs - k->frees) * k->size;
        sample_start(b, name, l, k->size);
        sa_buf_u64(b, v);
        sa_buf_str(b, "\n");
    }
}

void sa_snapshot_format_prom(struct sa_buf *b, const struct sa_snapshot *s, int pid_label)
{
    struct labels l = {{0}};
    if (pid_label) {
        struct sa_buf lb = {l.pid, 0, sizeof(l.pid) - 1, 0};
        sa_buf_str(&lb, "pid=\"");
        sa_buf_u64(&lb, s->pid);
        sa_buf_str(&lb, "\"");
        l.pid[lb.len] = '\0';
    }
    for (size_t i = 0; i < SA_SNAP_NFIELDS; i++) {
        const struct sa_snap_field *f = &sa_snap_fields[i];
        if (f->prom == NULL)
            continue;
        family(b, f->prom, f->kind == SA_SNAP_COUNTER ? "counter" : "gauge", f->help);
        sample_start(b, f->prom, &l, 0);
        if (f->kind == SA_SNAP_SECONDS)
            sa_buf_ms_as_seconds(b, sa_snap_field_get(s, f));
        else
            sa_buf_u64(b, sa_snap_field_get(s, f));
        sa_buf_str(b, "\n");
    }
    class_family(b, s, &l, SA_PROM_CLASS_MALLOCS, "counter",
                 "Cumulative objects allocated in each small size class (label size: object bytes).",
                 0);
    class_family(b, s, &l, SA_PROM_CLASS_FREES, "counter",
                 "Cumulative objects freed in each small size class (label size: object bytes).", 1);
    class_family(b, s, &l, SA_PROM_CLASS_LIVE, "gauge",
                 "Bytes of live objects in each small size class (label size: object bytes).", 2);
}
