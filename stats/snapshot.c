/*
 * snapshot.c: periodic stats snapshots to a file, for programs that never
 * call read_mem_stats() themselves (SPANALLOC_STATS_FILE, issue 7).
 *
 * With SPANALLOC_STATS_FILE=PATH, a background thread started on the heap's
 * first growth (never from a constructor or the loader, the way the
 * scavenger starts) writes struct mem_stats plus the process's Rss and
 * LazyFree (from /proc/self/smaps_rollup) to PATH every
 * SPANALLOC_STATS_INTERVAL (default 10 s), and once more when the process
 * exits normally.  JSON by default; the Prometheus text format when PATH ends
 * in ".prom" (prometheus.c).  `%p` in PATH becomes the process id, so forked
 * workers each write their own file; the thread is restarted in a forked
 * child on its first trip through the heap.
 *
 * What the thread must not do, and how it avoids it:
 *   - allocate from the heap it measures: every buffer is static, formatting
 *     is by hand (snapshot_format.h), files are written with open/write/
 *     rename; no stdio, no malloc (the snapshot test checks the malloc count
 *     stands still while only this thread runs);
 *   - take the program's signals: it runs with every signal blocked;
 *   - print anything: a failed write is skipped silently and retried at the
 *     next interval;
 *   - show a reader a half-written file: it writes PATH.<pid>.tmp beside
 *     PATH, then renames it over PATH (a new inode each time).
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../alloc/internal.h"
#include "../bgthread/bgthread.h"
#include "snapshot_format.h"
#include "stats_internal.h"

#define NS_PER_MS 1000000ull
#define NS_PER_S 1000000000ull
#define MIN_INTERVAL_NS (10 * NS_PER_MS)
#define EXIT_WAIT_NS (1 * NS_PER_S) /* longest the exiting thread waits */

static struct sa_bgthread snap_thread; /* see bgthread.h */
/* snap_lock guards the exit hand-over (final_request, final_done) and the
 * writer's sleep on snap_wake; both conditions are initialised before the
 * writer starts (and again in a forked child, single-threaded). */
static pthread_mutex_t snap_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t snap_wake = PTHREAD_COND_INITIALIZER; /* CLOCK_MONOTONIC once started */
static pthread_cond_t snap_done = PTHREAD_COND_INITIALIZER;
static bool final_request, final_done; /* snap_lock */

/* Owned by the writer thread (set up before it starts). */
static char path_template[2 * 4096 + 2]; /* the option, made absolute */
static char path_out[sizeof(path_template) + 64];
static char path_tmp[sizeof(path_out) + 32];
static char proc_buf[4096];
static char out_buf[64 * 1024]; /* JSON ~7 KiB, Prometheus ~20 KiB */

static struct timespec to_timespec(uint64_t ns)
{
    return (struct timespec){.tv_sec = (time_t)(ns / NS_PER_S), .tv_nsec = (long)(ns % NS_PER_S)};
}

static uint64_t interval_ns(void)
{
    uint64_t ns = sa_options.stats_interval_ns;
    return ns < MIN_INTERVAL_NS ? MIN_INTERVAL_NS : ns;
}

/* ---- /proc: Rss and LazyFree, in bytes */

static uint64_t kb_field(const char *text, const char *key)
{
    const char *p = strstr(text, key);
    if (p == NULL)
        return 0;
    p += strlen(key);
    while (*p == ' ' || *p == '\t')
        p++;
    uint64_t v = 0;
    while (*p >= '0' && *p <= '9')
        v = v * 10 + (uint64_t)(*p++ - '0');
    return v * 1024;
}

static size_t read_small_file(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    bool more;
    size_t len = sa_read_until_full(fd, proc_buf, sizeof(proc_buf), &more);
    close(fd);
    return len;
}

static void read_process_memory(uint64_t *rss, uint64_t *lazyfree)
{
    *rss = *lazyfree = 0;
    if (read_small_file("/proc/self/smaps_rollup") > 0) {
        /* Line starts: "Rss:" must not match "Pss_Anon:"-like keys. */
        *rss = kb_field(proc_buf, "\nRss:");
        *lazyfree = kb_field(proc_buf, "\nLazyFree:");
        if (*rss != 0)
            return;
    }
    /* Kernels before 4.14 have no smaps_rollup: statm's resident pages. */
    if (read_small_file("/proc/self/statm") > 0) {
        const char *p = proc_buf;
        while (*p != '\0' && *p != ' ')
            p++;
        uint64_t pages = 0;
        for (p++; *p >= '0' && *p <= '9'; p++)
            pages = pages * 10 + (uint64_t)(*p - '0');
        *rss = pages * sa_os_page_size();
    }
}

/* ---- JSON: the keys of spanalloc_stats_print(JSON), one per line */

void sa_snapshot_format_json(struct sa_buf *b, const struct sa_snapshot *s)
{
    sa_buf_str(b, "{\n  \"version\": \"" SPANALLOC_VERSION "\",\n");
    for (size_t i = 0; i < SA_SNAP_NFIELDS; i++) {
        const struct sa_snap_field *f = &sa_snap_fields[i];
        if (f->kind == SA_SNAP_PROM_ONLY)
            continue;
        sa_buf_str(b, "  \"");
        sa_buf_str(b, f->json);
        sa_buf_str(b, "\": ");
        sa_buf_u64(b, sa_snap_field_get(s, f));
        sa_buf_str(b, ",\n");
    }
    sa_buf_str(b, "  \"by_size\": [\n");
    for (unsigned c = 1; c < SPANALLOC_NUM_SIZE_CLASSES; c++) {
        const struct mem_stats_class *k = &s->st.by_size[c];
        sa_buf_str(b, "    {\"size\": ");
        sa_buf_u64(b, k->size);
        sa_buf_str(b, ", \"mallocs\": ");
        sa_buf_u64(b, k->mallocs);
        sa_buf_str(b, ", \"frees\": ");
        sa_buf_u64(b, k->frees);
        sa_buf_str(b, c + 1 < SPANALLOC_NUM_SIZE_CLASSES ? "},\n" : "}\n");
    }
    sa_buf_str(b, "  ]\n}\n");
}

/* ---- Writing one snapshot */

/* PATH with %p -> pid and %% -> %; false if it does not fit. */
static bool expand_path(uint64_t pid)
{
    struct sa_buf b = {path_out, 0, sizeof(path_out) - 1, 0};
    for (const char *p = path_template; *p != '\0'; p++) {
        if (p[0] == '%' && p[1] == 'p') {
            sa_buf_u64(&b, pid);
            p++;
        } else if (p[0] == '%' && p[1] == '%') {
            sa_buf_put(&b, "%", 1);
            p++;
        } else {
            sa_buf_put(&b, p, 1);
        }
    }
    path_out[b.len] = '\0';
    struct sa_buf t = {path_tmp, 0, sizeof(path_tmp) - 1, 0};
    sa_buf_put(&t, path_out, b.len);
    sa_buf_str(&t, ".");
    sa_buf_u64(&t, pid);
    sa_buf_str(&t, ".tmp");
    path_tmp[t.len] = '\0';
    return !b.overflow && !t.overflow;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && memcmp(s + n - m, suffix, m) == 0;
}

static bool write_all(int fd, const char *p, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        p += n;
        len -= (size_t)n;
    }
    return true;
}

static void write_snapshot(void)
{
    static struct sa_snapshot s; /* writer thread only; keeps the stack small */
    memset(&s, 0, sizeof(s));
    read_mem_stats(&s.st);
    read_process_memory(&s.rss, &s.lazyfree);
    s.pid = (uint64_t)getpid();
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    s.time_unix_ms = (uint64_t)now.tv_sec * 1000 + (uint64_t)now.tv_nsec / NS_PER_MS;
    s.interval_ms = interval_ns() / NS_PER_MS;

    if (!expand_path(s.pid))
        return;
    struct sa_buf b = {out_buf, 0, sizeof(out_buf), 0};
    if (ends_with(path_out, ".prom"))
        sa_snapshot_format_prom(&b, &s, strstr(path_template, "%p") != NULL);
    else
        sa_snapshot_format_json(&b, &s);
    if (b.overflow)
        return;

    int fd = open(path_tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0)
        return;
    bool ok = write_all(fd, out_buf, b.len);
    ok = close(fd) == 0 && ok;
    if (!ok || rename(path_tmp, path_out) != 0)
        unlink(path_tmp);
}

/* ---- The thread */

static void *writer_main(void *arg)
{
    (void)arg;
    sa_bgthread_enter();
    uint64_t next = sa_os_monotonic_ns(); /* the first snapshot at once */
    for (;;) {
        pthread_mutex_lock(&snap_lock);
        bool orphaned = false;
        while (!final_request && sa_os_monotonic_ns() < next) {
            /* Wake at least once a second: when the program's own threads
             * are all gone, this thread must not keep the process alive. */
            uint64_t second = sa_os_monotonic_ns() + 1000000000ull;
            struct timespec deadline = to_timespec(next < second ? next : second);
            pthread_cond_timedwait(&snap_wake, &snap_lock, &deadline);
            pthread_mutex_unlock(&snap_lock);
            orphaned = sa_bgthread_orphaned();
            pthread_mutex_lock(&snap_lock);
            if (orphaned)
                break;
        }
        bool final = final_request;
        pthread_mutex_unlock(&snap_lock);
        if (orphaned && !final) {
            sa_bgthread_leave(&snap_thread);
            return NULL;
        }

        write_snapshot();

        if (final) {
            pthread_mutex_lock(&snap_lock);
            final_done = true;
            pthread_cond_broadcast(&snap_done);
            pthread_mutex_unlock(&snap_lock);
            return NULL;
        }
        uint64_t now = sa_os_monotonic_ns();
        next += interval_ns();
        if (next <= now) /* fell behind (stopped, suspended): no catch-up burst */
            next = now + interval_ns();
    }
}

/* Make the path absolute once, before the program gets a chance to chdir
 * (servers do: redis to its `dir`).  getcwd into a static buffer does not
 * allocate. */
static bool prepare_path(void)
{
    if (path_template[0] != '\0')
        return true;
    const char *opt = sa_options.stats_file;
    size_t len = 0;
    if (opt[0] != '/') {
        if (getcwd(path_template, sizeof(path_template) - 1) == NULL)
            return false;
        len = strlen(path_template);
        if (len > 0 && path_template[len - 1] != '/')
            path_template[len++] = '/';
    }
    size_t n = strlen(opt);
    if (n >= sizeof(path_template) - len) {
        path_template[0] = '\0';
        return false;
    }
    memcpy(path_template + len, opt, n + 1);
    return true;
}

/* Both conditions wait on CLOCK_MONOTONIC (pthread_cond_timedwait with a
 * clock attribute, not the newer pthread_cond_clockwait, which older libcs
 * and ThreadSanitizer do not know).  Called before the writer exists. */
static void init_conditions(void)
{
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&snap_wake, &attr);
    pthread_cond_init(&snap_done, &attr);
    pthread_condattr_destroy(&attr);
}

static bool start_thread(void)
{
    if (!prepare_path())
        return false;
    init_conditions();
    return sa_bgthread_spawn(&snap_thread, writer_main);
}

/* The heap grew (no lock held): start the writer the first time, or again
 * in a forked child. */
void sa_snapshot_on_grow(void)
{
    if (SA_LIKELY(sa_options.stats_file[0] == '\0') || sa_secure_exec)
        return; /* never a file written on a setuid program's behalf */
    if (sa_bgthread_claim(&snap_thread) && !start_thread())
        sa_bgthread_unclaim(&snap_thread); /* try again at the next growth */
}

/* In the child after fork: the writer did not survive; the child's next trip
 * through the heap starts a new one, which writes the child's own %p file. */
void sa_snapshot_fork_child(void)
{
    pthread_mutex_init(&snap_lock, NULL);
    init_conditions();
    final_request = final_done = false;
    sa_bgthread_fork_child(&snap_thread);
}

/* At normal exit (exit() or return from main; _exit skips it), ask the
 * writer for a last snapshot so that a short-lived process leaves its final
 * figures.  The exiting thread does not read the stats itself: it may have
 * been interrupted inside malloc by a signal handler that called exit(),
 * holding a heap lock.  It only hands the work over and waits at most
 * EXIT_WAIT_NS; if the writer cannot finish (that lock again), exit goes on. */
__attribute__((destructor)) static void snapshot_at_exit(void)
{
    if (!sa_bgthread_running(&snap_thread))
        return;
    /* pthread_mutex_timedlock counts on CLOCK_REALTIME; a clock step during
     * the wait only shortens or lengthens it. */
    struct timespec now_real;
    clock_gettime(CLOCK_REALTIME, &now_real);
    struct timespec lock_deadline = to_timespec((uint64_t)now_real.tv_sec * NS_PER_S +
                                                (uint64_t)now_real.tv_nsec + EXIT_WAIT_NS);
    struct timespec deadline = to_timespec(sa_os_monotonic_ns() + EXIT_WAIT_NS);
    if (pthread_mutex_timedlock(&snap_lock, &lock_deadline) != 0)
        return;
    final_request = true;
    pthread_cond_signal(&snap_wake);
    while (!final_done && pthread_cond_timedwait(&snap_done, &snap_lock, &deadline) == 0)
        ;
    pthread_mutex_unlock(&snap_lock);
}
