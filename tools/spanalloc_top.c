/*
 * spanalloc-top: a live view of a process's spanalloc snapshot file.
 *
 *   spanalloc-top [--once] [--classes N] [--profile PROFILE] PATH
 *
 * PATH is a file written by a process started with SPANALLOC_STATS_FILE
 * (JSON, or the Prometheus text format when the name ends in .prom; the
 * content decides, so both are read whatever the name).  Every second the
 * file is read again and the terminal redrawn: HeapAlloc, HeapInuse,
 * HeapIdle, HeapReleased, Sys and RSS, their change since the previous
 * snapshot, a sparkline of the recent snapshots, and the size classes holding
 * the most live bytes.  q, Ctrl-C or SIGTERM quit and give the terminal back;
 * a resized window is redrawn at once.  --once prints one plain table and
 * exits (for scripts).  The heap profile the process writes
 * (SPANALLOC_PROFILE_FILE, found in its environment, or named with
 * --profile) adds its top live sites, read again at every refresh
 * (pprof_sites.c).
 *
 * This is an ordinary program: it runs on whatever malloc it was started with
 * and uses stdio freely.  The names it reads come from
 * stats/snapshot_format.h, the table the writer uses.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "pprof_sites.h"
#include "../stats/snapshot_format.h"

#define HISTORY 256
#define NCLASS SPANALLOC_NUM_SIZE_CLASSES

/* ---- Reading a snapshot file */

struct reading {
    struct sa_snapshot s;
    int nclasses;       /* by_size[1..nclasses] were filled */
    int nfields;        /* scalar fields found */
    bool has_pid;
};

static const struct sa_snap_field *field_by_json(const char *key, size_t len)
{
    for (size_t i = 0; i < SA_SNAP_NFIELDS; i++)
        if (sa_snap_fields[i].kind != SA_SNAP_PROM_ONLY &&
            strlen(sa_snap_fields[i].json) == len &&
            memcmp(sa_snap_fields[i].json, key, len) == 0)
            return &sa_snap_fields[i];
    return NULL;
}

static const struct sa_snap_field *field_by_prom(const char *name, size_t len)
{
    for (size_t i = 0; i < SA_SNAP_NFIELDS; i++)
        if (sa_snap_fields[i].prom != NULL && strlen(sa_snap_fields[i].prom) == len &&
            memcmp(sa_snap_fields[i].prom, name, len) == 0)
            return &sa_snap_fields[i];
    return NULL;
}

static const char *skip_ws(const char *p)
{
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    return p;
}

/* A non-negative number: plain digits, or a float (Prometheus allows
 * 1.5e+06); `scale` multiplies it (1000 for seconds -> ms). */
static bool parse_number(const char *p, const char **end, double scale, uint64_t *out)
{
    char *e;
    errno = 0;
    if (scale == 1) {
        unsigned long long v = strtoull(p, &e, 10);
        if (e != p && errno == 0 && *e != '.' && *e != 'e' && *e != 'E') {
            *out = v;
            *end = e;
            return true;
        }
    }
    double d = strtod(p, &e);
    if (e == p || !(d >= 0) || d * scale > 1.8e19)
        return false;
    *out = (uint64_t)llround(d * scale);
    *end = e;
    return true;
}

static int class_index(struct reading *r, uint64_t size)
{
    for (int c = 1; c <= r->nclasses; c++)
        if (r->s.st.by_size[c].size == size)
            return c;
    if (r->nclasses + 1 >= NCLASS)
        return -1;
    r->nclasses++;
    r->s.st.by_size[r->nclasses].size = size;
    return r->nclasses;
}

/* Inside a JSON list or object: skip blanks and commas; true, with *pp past
 * it, at the closing character `close`. */
static bool json_at_close(const char **pp, char close)
{
    const char *p = skip_ws(*pp);
    while (*p == ',')
        p = skip_ws(p + 1);
    *pp = p + (*p == close);
    return *p == close;
}

/* A member's "key" and its colon; *pp then at the value. */
static bool json_key(const char **pp, const char **key, size_t *klen)
{
    const char *p = *pp;
    if (*p++ != '"')
        return false;
    *key = p;
    while (*p != '"' && *p != '\0')
        p++;
    if (*p != '"')
        return false;
    *klen = (size_t)(p - *key);
    p = skip_ws(p + 1);
    if (*p++ != ':')
        return false;
    *pp = skip_ws(p);
    return true;
}

/* One {"size","mallocs","frees"} object of "by_size". */
static bool parse_json_class(const char **pp, struct reading *r)
{
    const char *p = *pp;
    if (*p++ != '{')
        return false;
    uint64_t v[3] = {0, 0, 0};
    static const char *const names[3] = {"size", "mallocs", "frees"};
    while (!json_at_close(&p, '}')) {
        const char *k;
        size_t kl;
        uint64_t num;
        if (!json_key(&p, &k, &kl) || !parse_number(p, &p, 1, &num))
            return false;
        for (int i = 0; i < 3; i++)
            if (strlen(names[i]) == kl && memcmp(names[i], k, kl) == 0)
                v[i] = num;
    }
    int c = class_index(r, v[0]);
    if (c > 0) {
        r->s.st.by_size[c].mallocs = v[1];
        r->s.st.by_size[c].frees = v[2];
    }
    *pp = p;
    return true;
}

/* Our own JSON: an object of "key": number pairs, one string ("version") and
 * "by_size": an array of {"size","mallocs","frees"} objects.  Keys spanalloc
 * does not know are skipped if their value is a number or a string. */
static bool parse_json(const char *p, struct reading *r)
{
    p = skip_ws(p);
    if (*p++ != '{')
        return false;
    while (!json_at_close(&p, '}')) {
        const char *key;
        size_t klen;
        if (!json_key(&p, &key, &klen))
            return false;
        if (klen == 7 && memcmp(key, "by_size", 7) == 0) {
            if (*p++ != '[')
                return false;
            while (!json_at_close(&p, ']'))
                if (!parse_json_class(&p, r))
                    return false;
        } else if (*p == '"') {
            for (p++; *p != '"' && *p != '\0'; p++)
                if (*p == '\\' && p[1] != '\0')
                    p++;
            if (*p++ != '"')
                return false;
        } else {
            uint64_t num;
            if (!parse_number(p, &p, 1, &num))
                return false;
            const struct sa_snap_field *f = field_by_json(key, klen);
            if (f != NULL) {
                *sa_snap_field_ptr(&r->s, f) = num;
                r->nfields++;
                if (f->offset == offsetof(struct sa_snapshot, pid))
                    r->has_pid = true;
            }
        }
    }
    return true;
}

/* Value of label `name` in `{a="x",b="y"}`, copied to out. */
static bool label_value(const char *labels, const char *end, const char *name, char *out,
                        size_t cap)
{
    size_t n = strlen(name);
    for (const char *p = labels; p + n + 2 <= end; p++) {
        if ((p == labels || p[-1] == '{' || p[-1] == ',') && memcmp(p, name, n) == 0 &&
            p[n] == '=' && p[n + 1] == '"') {
            const char *v = p + n + 2;
            size_t i = 0;
            while (v < end && *v != '"' && i + 1 < cap)
                out[i++] = *v++;
            out[i] = '\0';
            return true;
        }
    }
    return false;
}

/* Prometheus text format: `name{labels} value [timestamp]` lines; comments
 * and metrics spanalloc does not know are skipped. */
static bool parse_prom(const char *p, struct reading *r)
{
    while (*p != '\0') {
        const char *line = p, *eol = strchr(p, '\n');
        if (eol == NULL)
            eol = p + strlen(p);
        p = *eol ? eol + 1 : eol;
        line = skip_ws(line);
        if (line >= eol || *line == '#')
            continue;
        const char *name = line;
        while (line < eol && *line != '{' && *line != ' ' && *line != '\t')
            line++;
        size_t nlen = (size_t)(line - name);
        const char *lab = NULL, *lab_end = NULL;
        if (*line == '{') {
            lab = line;
            while (line < eol && *line != '}')
                line++;
            if (line >= eol)
                return false;
            lab_end = ++line;
        }
        char lv[32];
        if (lab != NULL && label_value(lab, lab_end, "pid", lv, sizeof(lv))) {
            r->s.pid = strtoull(lv, NULL, 10);
            r->has_pid = true;
        }
        const struct sa_snap_field *f = field_by_prom(name, nlen);
        int which = -1;
        if (f == NULL) {
            if (nlen == strlen(SA_PROM_CLASS_MALLOCS) && memcmp(name, SA_PROM_CLASS_MALLOCS, nlen) == 0)
                which = 0;
            else if (nlen == strlen(SA_PROM_CLASS_FREES) && memcmp(name, SA_PROM_CLASS_FREES, nlen) == 0)
                which = 1;
            else
                continue;
        }
        uint64_t num;
        const char *end;
        if (!parse_number(skip_ws(line), &end, f != NULL && f->kind == SA_SNAP_SECONDS ? 1000 : 1, &num))
            return false;
        if (f != NULL) {
            *sa_snap_field_ptr(&r->s, f) = num;
            r->nfields++;
            continue;
        }
        if (lab == NULL || !label_value(lab, lab_end, "size", lv, sizeof(lv)))
            continue;
        int c = class_index(r, strtoull(lv, NULL, 10));
        if (c > 0) {
            if (which == 0)
                r->s.st.by_size[c].mallocs = num;
            else
                r->s.st.by_size[c].frees = num;
        }
    }
    r->s.st.alloc = r->s.st.heap_alloc;
    return true;
}

/* 0 on success; otherwise errno-like codes, with a message in err. */
static int read_snapshot(const char *path, struct reading *r, char *err, size_t errcap)
{
    memset(r, 0, sizeof(*r));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errcap, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    bool more = buf != NULL;
    while (more) { /* the whole file, the buffer doubled while it fills up */
        len += sa_read_until_full(fd, buf + len, cap - len, &more);
        if (!more)
            break;
        char *nb = realloc(buf, cap * 2);
        if (nb == NULL) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = nb;
        cap *= 2;
    }
    close(fd);
    if (buf == NULL) {
        snprintf(err, errcap, "out of memory");
        return -1;
    }
    const char *p = skip_ws(buf);
    bool ok = *p == '{' ? parse_json(p, r) : parse_prom(p, r);
    free(buf);
    if (!ok || r->nfields == 0) {
        snprintf(err, errcap, "%s is not a spanalloc snapshot (JSON or Prometheus text)", path);
        return -1;
    }
    return 0;
}

/* ---- Figures */

struct metric {
    const char *label;
    size_t offset; /* in struct sa_snapshot */
};

#define M(label, member) {label, offsetof(struct sa_snapshot, member)}
static const struct metric metrics[] = {
    M("HeapAlloc", st.heap_alloc),       M("HeapInuse", st.heap_inuse),
    M("HeapIdle", st.heap_idle),         M("HeapReleased", st.heap_released),
    M("HeapSys", st.heap_sys),           M("Sys", st.sys),
    M("RSS", rss),                       M("LazyFree", lazyfree),
};
#undef M
#define NMETRICS (sizeof(metrics) / sizeof(metrics[0]))

static uint64_t metric_value(const struct sa_snapshot *s, const struct metric *m)
{
    uint64_t v;
    memcpy(&v, (const char *)s + m->offset, sizeof(v));
    return v;
}

/* 123.4 MiB style, with an optional sign. */
static void human(char *out, size_t cap, double v, bool sign)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    double a = fabs(v);
    int u = 0;
    while (a >= 1024 && u < 5) {
        a /= 1024;
        u++;
    }
    const char *sg = sign ? (v > 0 ? "+" : v < 0 ? "-" : " ") : (v < 0 ? "-" : "");
    if (u == 0)
        snprintf(out, cap, "%s%.0f %s", sg, a, units[u]);
    else
        snprintf(out, cap, "%s%.1f %s", sg, a, units[u]);
}

struct class_row {
    uint64_t size, live_objects, live_bytes, mallocs, frees;
};

static int by_live_bytes(const void *a, const void *b)
{
    const struct class_row *x = a, *y = b;
    if (x->live_bytes != y->live_bytes)
        return x->live_bytes < y->live_bytes ? 1 : -1;
    return x->size < y->size ? -1 : x->size > y->size;
}

/* Classes with objects allocated, most live bytes first; returns the count. */
static int top_classes(const struct reading *r, struct class_row *rows, uint64_t *small_live)
{
    int n = 0;
    *small_live = 0;
    for (int c = 1; c <= r->nclasses; c++) {
        const struct mem_stats_class *k = &r->s.st.by_size[c];
        if (k->mallocs == 0)
            continue;
        uint64_t live = k->mallocs >= k->frees ? k->mallocs - k->frees : 0;
        rows[n++] = (struct class_row){k->size, live, live * k->size, k->mallocs, k->frees};
        *small_live += live * k->size;
    }
    qsort(rows, (size_t)n, sizeof(rows[0]), by_live_bytes);
    return n;
}

static double age_seconds(const struct sa_snapshot *s)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    double t = (double)now.tv_sec + (double)now.tv_nsec / 1e9;
    return t - (double)s->time_unix_ms / 1000.0;
}

/* ---- --once: one plain table */

/* ---- The heap profile's top live sites (--profile) */

#define SITES 5
static const char *profile_path;
static char found_profile[4096 + 64];

/* Without --profile: the profile the process itself was told to write, from
 * its environment (/proc/PID/environ, readable by its owner and root):
 * SPANALLOC_PROFILE_FILE with %p expanded, a relative path taken from the
 * process's working directory. */
static void find_profile(uint64_t pid)
{
    if (profile_path != NULL || pid == 0)
        return;
    char path[64], env[1 << 16];
    snprintf(path, sizeof(path), "/proc/%llu/environ", (unsigned long long)pid);
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return;
    size_t n = fread(env, 1, sizeof(env) - 1, f);
    fclose(f);
    env[n] = '\0';
    static const char key[] = "SPANALLOC_PROFILE_FILE=";
    for (size_t at = 0; at < n; at += strlen(env + at) + 1) {
        if (strncmp(env + at, key, sizeof(key) - 1) != 0)
            continue;
        const char *v = env + at + sizeof(key) - 1;
        size_t o = 0;
        if (v[0] != '/')
            o = (size_t)snprintf(found_profile, sizeof(found_profile), "/proc/%llu/cwd/",
                                 (unsigned long long)pid);
        for (; *v != '\0' && o + 24 < sizeof(found_profile); v++) {
            if (v[0] == '%' && v[1] == 'p') {
                o += (size_t)snprintf(found_profile + o, sizeof(found_profile) - o, "%llu",
                                      (unsigned long long)pid);
                v++;
            } else {
                found_profile[o++] = *v;
            }
        }
        found_profile[o] = '\0';
        if (*v == '\0' && found_profile[0] != '\0')
            profile_path = found_profile;
        return;
    }
}

static void print_sites(void)
{
    struct pprof_site sites[SITES];
    int64_t total = 0;
    char err[600];
    int n = pprof_top_sites(profile_path, sites, SITES, &total, err, sizeof(err));
    if (n < 0) {
        printf("heap profile: %s\n", err);
        return;
    }
    printf("top live sites (heap profile %s, inuse %lld bytes)\n", profile_path, (long long)total);
    printf("%16s %12s  %s\n", "inuse_bytes", "objects", "site");
    for (int i = 0; i < n; i++)
        printf("%16lld %12lld  %s\n", (long long)sites[i].inuse_bytes,
               (long long)sites[i].inuse_objects, sites[i].name);
}

static int print_once(const char *path, int nclasses)
{
    struct reading r;
    char err[512];
    if (read_snapshot(path, &r, err, sizeof(err)) != 0) {
        fprintf(stderr, "spanalloc-top: %s\n", err);
        return 1;
    }
    const struct mem_stats *st = &r.s.st;
    if (r.has_pid)
        find_profile(r.s.pid);
    printf("file          %s\n", path);
    if (r.has_pid)
        printf("pid           %llu\n", (unsigned long long)r.s.pid);
    if (r.s.time_unix_ms)
        printf("age_seconds   %.1f\n", age_seconds(&r.s));
    printf("%-14s %20s %14s\n", "metric", "bytes", "MiB");
    for (size_t i = 0; i < NMETRICS; i++) {
        uint64_t v = metric_value(&r.s, &metrics[i]);
        printf("%-14s %20llu %14.2f\n", metrics[i].label, (unsigned long long)v,
               (double)v / 1048576.0);
    }
    printf("%-14s %20llu\n", "HeapObjects", (unsigned long long)st->heap_objects);
    printf("%-14s %20llu\n", "Mallocs", (unsigned long long)st->mallocs);
    printf("%-14s %20llu\n", "Frees", (unsigned long long)st->frees);
    printf("%-14s %20llu\n", "TotalAlloc", (unsigned long long)st->total_alloc);
    printf("%-14s %20llu\n", "Scavenges", (unsigned long long)st->num_scavenges);
    printf("%-14s %20llu\n", "ForcedScav", (unsigned long long)st->num_forced_scavenges);
    printf("%-14s %20llu\n", "ReleasedTotal", (unsigned long long)st->released_total);

    struct class_row rows[NCLASS];
    uint64_t small_live;
    int n = top_classes(&r, rows, &small_live);
    printf("top size classes by live bytes\n");
    printf("%8s %14s %16s %14s %14s\n", "size", "live_objects", "live_bytes", "mallocs", "frees");
    for (int i = 0; i < n && i < nclasses; i++)
        printf("%8llu %14llu %16llu %14llu %14llu\n", (unsigned long long)rows[i].size,
               (unsigned long long)rows[i].live_objects, (unsigned long long)rows[i].live_bytes,
               (unsigned long long)rows[i].mallocs, (unsigned long long)rows[i].frees);
    uint64_t large = st->heap_alloc > small_live ? st->heap_alloc - small_live : 0;
    printf("%8s %14s %16llu\n", ">32KiB", "-", (unsigned long long)large);
    if (profile_path != NULL)
        print_sites();
    return 0;
}

/* ---- The live view */

static volatile sig_atomic_t quit_signal, resized;
static struct termios saved_tty;
static bool tty_saved;

static void on_signal(int sig)
{
    if (sig == SIGWINCH)
        resized = 1;
    else
        quit_signal = sig;
}

static void restore_terminal(void)
{
    fputs("\033[?25h\033[?1049l", stdout); /* cursor on, leave the alternate screen */
    fflush(stdout);
    if (tty_saved)
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved_tty);
}

static void terminal_size(int *rows, int *cols)
{
    struct winsize ws;
    *rows = 24;
    *cols = 80;
    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_row > 0 && ws.ws_col > 0) {
        *rows = ws.ws_row;
        *cols = ws.ws_col;
    }
}

struct history {
    uint64_t v[NMETRICS][HISTORY];
    int count, head; /* head: next slot */
};

static void history_push(struct history *h, const struct sa_snapshot *s)
{
    for (size_t i = 0; i < NMETRICS; i++)
        h->v[i][h->head] = metric_value(s, &metrics[i]);
    h->head = (h->head + 1) % HISTORY;
    if (h->count < HISTORY)
        h->count++;
}

/* The last `width` samples of metric i, scaled to 0..max of that window. */
static void sparkline(char *out, size_t cap, const struct history *h, size_t i, int width)
{
    static const char *const bars[8] = {"▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"};
    int n = h->count < width ? h->count : width;
    uint64_t max = 0;
    for (int k = 0; k < n; k++) {
        uint64_t v = h->v[i][(h->head - n + k + HISTORY) % HISTORY];
        if (v > max)
            max = v;
    }
    size_t len = 0;
    out[0] = '\0';
    for (int k = 0; k < n && len + 4 < cap; k++) {
        uint64_t v = h->v[i][(h->head - n + k + HISTORY) % HISTORY];
        int b = max == 0 ? 0 : (int)((double)v / (double)max * 7.0 + 0.5);
        memcpy(out + len, bars[b], 3);
        len += 3;
    }
    out[len] = '\0';
}

/* A line for the frame: truncated to the width (ASCII), erased to the end. */
static void put_line(int cols, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put_line(int cols, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if ((int)strlen(line) > cols)
        line[cols] = '\0';
    fputs(line, stdout);
    fputs("\033[K\n", stdout);
}

struct view {
    const char *path;
    int nclasses;
    struct reading cur, prev;
    bool have_cur, have_prev;
    uint64_t last_time_ms;
    struct history hist;
    char err[512];
};

/* Read the file again; a snapshot not seen before goes into the history. */
static void refresh(struct view *v)
{
    struct reading r;
    if (read_snapshot(v->path, &r, v->err, sizeof(v->err)) != 0)
        return;
    v->err[0] = '\0';
    if (v->have_cur && r.s.time_unix_ms == v->last_time_ms && r.s.pid == v->cur.s.pid)
        return;
    if (v->have_cur && r.s.pid != v->cur.s.pid) { /* another process: start over */
        memset(&v->hist, 0, sizeof(v->hist));
        v->have_cur = false;
    }
    if (v->have_cur) {
        v->prev = v->cur;
        v->have_prev = true;
    } else {
        v->have_prev = false;
    }
    v->cur = r;
    v->have_cur = true;
    if (r.has_pid)
        find_profile(r.s.pid);
    v->last_time_ms = r.s.time_unix_ms;
    history_push(&v->hist, &r.s);
}

static void draw(struct view *v)
{
    int rows, cols;
    terminal_size(&rows, &cols);
    char clock[16];
    time_t now = time(NULL);
    strftime(clock, sizeof(clock), "%H:%M:%S", localtime(&now));

    fputs("\033[H", stdout);
    int used = 0;
    if (!v->have_cur) {
        put_line(cols, "spanalloc-top  %s  %s", v->path, clock);
        put_line(cols, "waiting for a snapshot: %s", v->err[0] ? v->err : "");
        if (strstr(v->path, "%p") != NULL)
            put_line(cols, "(%%p is the program's to expand: give the file name with its pid)");
        else
            put_line(cols, "(start the program with SPANALLOC_STATS_FILE=%s)", v->path);
        fputs("\033[J", stdout);
        fflush(stdout);
        return;
    }
    const struct sa_snapshot *s = &v->cur.s;
    char pid[32] = "";
    if (v->cur.has_pid)
        snprintf(pid, sizeof(pid), "pid %llu  ", (unsigned long long)s->pid);
    put_line(cols, "spanalloc-top  %s  %ssnapshot %.1fs old, every %.1fs  %s", v->path, pid,
             age_seconds(s), (double)s->interval_ms / 1000.0, clock);
    if (v->err[0])
        put_line(cols, "! %s (showing the last good snapshot)", v->err);
    else
        put_line(cols, "%s", "");
    used += 2;
    /* label 13, value 11, delta 12 -> sparkline in what is left */
    int spark_w = cols - 40;
    if (spark_w > HISTORY)
        spark_w = HISTORY;
    put_line(cols, "%-13s %11s %12s  %s", "", "now", "change",
             spark_w > 8 ? "history (one bar per snapshot)" : "");
    used++;
    for (size_t i = 0; i < NMETRICS; i++) {
        char val[32], delta[32], spark[HISTORY * 3 + 1] = "";
        uint64_t x = metric_value(s, &metrics[i]);
        human(val, sizeof(val), (double)x, false);
        if (v->have_prev)
            human(delta, sizeof(delta), (double)x - (double)metric_value(&v->prev.s, &metrics[i]),
                  true);
        else
            snprintf(delta, sizeof(delta), "-");
        if (spark_w > 0)
            sparkline(spark, sizeof(spark), &v->hist, i, spark_w);
        /* The sparkline is multibyte: print it after the truncated ASCII part. */
        char head[128];
        snprintf(head, sizeof(head), "%-13s %11s %12s  ", metrics[i].label, val, delta);
        if ((int)strlen(head) > cols)
            head[cols] = '\0';
        fputs(head, stdout);
        fputs(spark, stdout);
        fputs("\033[K\n", stdout);
        used++;
    }
    const struct mem_stats *st = &s->st;
    double dt = v->have_prev ? (double)(s->time_unix_ms - v->prev.s.time_unix_ms) / 1000.0 : 0;
    double mrate = dt > 0 ? (double)(st->mallocs - v->prev.s.st.mallocs) / dt : 0;
    char rel[32], frag[32];
    human(rel, sizeof(rel), (double)st->released_total, false);
    human(frag, sizeof(frag), (double)st->heap_inuse - (double)st->heap_alloc, false);
    put_line(cols, "objects %llu   mallocs %llu (%.0f/s)   frees %llu   inuse-alloc %s",
             (unsigned long long)st->heap_objects, (unsigned long long)st->mallocs, mrate,
             (unsigned long long)st->frees, frag);
    put_line(cols, "scavenges %llu   forced %llu   released total %s   madvise failures %llu",
             (unsigned long long)st->num_scavenges, (unsigned long long)st->num_forced_scavenges,
             rel, (unsigned long long)st->madvise_failures);
    put_line(cols, "%s", "");
    used += 3;

    struct class_row crows[NCLASS];
    uint64_t small_live;
    int n = top_classes(&v->cur, crows, &small_live);
    int room = rows - used - 4; /* title, header, large line, key help */
    int show = n < v->nclasses ? n : v->nclasses;
    if (show > room)
        show = room > 0 ? room : 0;
    put_line(cols, "top size classes by live bytes");
    put_line(cols, "%8s %14s %12s %14s %14s", "size", "live objects", "live", "mallocs", "frees");
    for (int i = 0; i < show; i++) {
        char live[32];
        human(live, sizeof(live), (double)crows[i].live_bytes, false);
        put_line(cols, "%8llu %14llu %12s %14llu %14llu", (unsigned long long)crows[i].size,
                 (unsigned long long)crows[i].live_objects, live,
                 (unsigned long long)crows[i].mallocs, (unsigned long long)crows[i].frees);
    }
    char large[32];
    human(large, sizeof(large),
          st->heap_alloc > small_live ? (double)(st->heap_alloc - small_live) : 0, false);
    put_line(cols, "%8s %14s %12s", ">32KiB", "large", large);
    used += show + 3;
    if (profile_path != NULL && rows - used > 4) {
        struct pprof_site sites[SITES];
        int64_t total = 0;
        char err[600];
        int n = pprof_top_sites(profile_path, sites, SITES, &total, err, sizeof(err));
        put_line(cols, "%s", "");
        if (n < 0) {
            put_line(cols, "heap profile: %s", err);
        } else {
            char tot[32];
            human(tot, sizeof(tot), (double)total, false);
            put_line(cols, "top live sites (heap profile, inuse %s)", tot);
            for (int i = 0; i < n && i < rows - used - 4; i++) {
                char b[32];
                human(b, sizeof(b), (double)sites[i].inuse_bytes, false);
                put_line(cols, "%12s %12lld  %s", b, (long long)sites[i].inuse_objects,
                         sites[i].name);
            }
        }
    }
    fputs("q or Ctrl-C quits\033[K\033[J", stdout);
    fflush(stdout);
}

static int live(const char *path, int nclasses)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal; /* no SA_RESTART: poll() returns EINTR */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sigaction(SIGWINCH, &sa, NULL);

    bool keys = isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &saved_tty) == 0;
    if (keys) {
        struct termios raw = saved_tty;
        raw.c_lflag &= ~(tcflag_t)(ICANON | ECHO);
        raw.c_cc[VMIN] = 0;
        raw.c_cc[VTIME] = 0;
        tty_saved = tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0;
    }
    fputs("\033[?1049h\033[?25l\033[2J", stdout); /* alternate screen, cursor off */

    static struct view v;
    v.path = path;
    v.nclasses = nclasses;
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    while (!quit_signal) {
        refresh(&v);
        draw(&v);
        next.tv_sec += 1;
        for (;;) { /* wait for the next second, a key or a signal */
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            long ms = (long)(next.tv_sec - now.tv_sec) * 1000 + (next.tv_nsec - now.tv_nsec) / 1000000;
            if (ms <= 0 || quit_signal)
                break;
            struct pollfd pfd = {keys ? STDIN_FILENO : -1, POLLIN, 0};
            int rc = poll(&pfd, 1, (int)ms);
            if (rc < 0 && errno == EINTR) {
                if (resized) {
                    resized = 0;
                    fputs("\033[2J", stdout);
                    draw(&v);
                }
                continue;
            }
            if (rc > 0 && (pfd.revents & POLLIN)) {
                char c;
                if (read(STDIN_FILENO, &c, 1) == 1 && (c == 'q' || c == 'Q'))
                    quit_signal = SIGINT;
            }
        }
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - next.tv_sec > 2) /* suspended (Ctrl-Z): no catch-up */
            next = now;
    }
    restore_terminal();
    return 0;
}

static void usage(FILE *f)
{
    fputs("usage: spanalloc-top [--once] [--classes N] [--profile PROFILE] PATH\n"
          "\n"
          "Shows the spanalloc statistics a process writes to PATH when started with\n"
          "SPANALLOC_STATS_FILE=PATH (JSON, or Prometheus text when PATH ends in .prom;\n"
          "both are read).  Refreshes every second: HeapAlloc, HeapInuse, HeapIdle,\n"
          "HeapReleased, HeapSys, Sys, RSS and LazyFree with their change since the\n"
          "previous snapshot and a sparkline of the recent ones, then the size classes\n"
          "holding the most live bytes.  q or Ctrl-C quits.\n"
          "\n"
          "  --once         print one plain table (exact bytes) and exit\n"
          "  --classes N    size classes to list (default 10)\n"
          "  --profile F    the heap profile to list top live sites from (default: the\n"
          "                 process's SPANALLOC_PROFILE_FILE, from /proc/PID/environ)\n"
          "  --help         this text\n"
          "\n"
          "Exit status: 0, 1 when --once cannot read PATH, 2 on a usage error.\n",
          f);
}

int main(int argc, char **argv)
{
    bool once = false;
    int nclasses = 10;
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--once") == 0) {
            once = true;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--profile") == 0 && i + 1 < argc) {
            profile_path = argv[++i];
        } else if (strcmp(argv[i], "--classes") == 0 && i + 1 < argc) {
            char *end;
            long n = strtol(argv[++i], &end, 10);
            if (*end != '\0' || n < 0 || n > NCLASS) {
                fprintf(stderr, "spanalloc-top: --classes wants 0..%d\n", NCLASS);
                return 2;
            }
            nclasses = (int)n;
        } else if (argv[i][0] == '-' && argv[i][1] != '\0') {
            fprintf(stderr, "spanalloc-top: unknown option %s\n", argv[i]);
            usage(stderr);
            return 2;
        } else if (path == NULL) {
            path = argv[i];
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (path == NULL) {
        usage(stderr);
        return 2;
    }
    return once ? print_once(path, nclasses) : live(path, nclasses);
}
