/*
 * Stats snapshots of a running process (SPANALLOC_STATS_FILE, issue 7), seen
 * from outside the way an operator sees them.  Each scenario runs in a child
 * started with its own environment (fork + exec of this binary, so the
 * options are read at load time); the parent reads the files the child's
 * writer thread leaves and checks them: the pid-expanded name, valid JSON or
 * Prometheus text (promtool), replaced by rename every interval, heap
 * figures that follow the child's load, no allocation by the writer, a last
 * snapshot at exit, one file per forked process, and spanalloc-top --once.
 *
 * Nothing here sleeps to synchronise: the child waits for the writer's
 * renames with inotify, the parent waits for the child's reports on a pipe,
 * every wait with a deadline.  The child loads the heap with the prefixed
 * API, so the scenarios also run where ASan owns the process malloc.
 */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test_helpers.h"

extern char **environ;

#if defined(__SANITIZE_ADDRESS__)
#define ASAN_BUILD 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ASAN_BUILD 1
#endif
#endif
#ifndef ASAN_BUILD
#define ASAN_BUILD 0
#endif

#define MiB ((uint64_t)1 << 20)
#define DEADLINE_MS 30000
#define LOAD_OBJECTS 16384 /* 4 KiB each: 64 MiB of small objects */
#define LOAD_OBJECT_SIZE 4096
#define LOAD_LARGE 8 /* and 8 MiB of large ones */
#define LOAD_LARGE_SIZE MiB

static char self_path[PATH_MAX];
static char top_path[PATH_MAX];
static char tmpdir[64];

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------ the child --
 * The child never calls malloc itself between its checkpoints (only the
 * prefixed API for its load, and syscalls), so the writer's own behaviour
 * shows in the counters. */

static char child_path[PATH_MAX];

static int child_fail(const char *what)
{
    /* stdout/stderr are watched by the parent: exit status only. */
    (void)what;
    _exit(90);
}

/* SPANALLOC_STATS_FILE with %p expanded for this process. */
static void child_expand_path(void)
{
    const char *t = getenv("SPANALLOC_STATS_FILE");
    char pid[24];
    int np = snprintf(pid, sizeof(pid), "%d", (int)getpid());
    size_t o = 0;
    for (; *t != '\0' && o + (size_t)np + 1 < sizeof(child_path); t++) {
        if (t[0] == '%' && t[1] == 'p') {
            memcpy(child_path + o, pid, (size_t)np);
            o += (size_t)np;
            t++;
        } else {
            child_path[o++] = *t;
        }
    }
    child_path[o] = '\0';
}

static int watch_fd = -1;

static const char *child_base(void)
{
    const char *slash = strrchr(child_path, '/');
    return slash != NULL ? slash + 1 : child_path;
}

static void child_watch(void)
{
    char dir[PATH_MAX] = ".";
    if (strrchr(child_path, '/') != NULL) {
        snprintf(dir, sizeof(dir), "%s", child_path);
        *strrchr(dir, '/') = '\0';
    }
    watch_fd = inotify_init1(IN_CLOEXEC);
    if (watch_fd < 0 || inotify_add_watch(watch_fd, dir, IN_MOVED_TO) < 0)
        child_fail("inotify");
}

static char ev[64 * (sizeof(struct inotify_event) + NAME_MAX + 1)] __attribute__((aligned(8)));

/* Wait until the writer renamed a new snapshot over our file n times. */
static void child_wait_renames(int n)
{
    const char *base = child_base();
    uint64_t deadline = now_ms() + DEADLINE_MS;
    while (n > 0) {
        uint64_t now = now_ms();
        if (now >= deadline)
            child_fail("no snapshot in time");
        struct pollfd pfd = {watch_fd, POLLIN, 0};
        if (poll(&pfd, 1, (int)(deadline - now)) <= 0)
            continue;
        ssize_t len = read(watch_fd, ev, sizeof(ev));
        for (ssize_t off = 0; off < len;) {
            struct inotify_event *e = (struct inotify_event *)(ev + off);
            if (e->len > 0 && strcmp(e->name, base) == 0)
                n--;
            off += (ssize_t)(sizeof(*e) + e->len);
        }
    }
}

/* The same, counting only renames from now on: the ones already queued (a
 * slow load, under valgrind, sees many) would count for the ones awaited. */
static void child_wait_fresh_renames(int n)
{
    struct pollfd queued = {watch_fd, POLLIN, 0};
    while (poll(&queued, 1, 0) > 0 && read(watch_fd, ev, sizeof(ev)) > 0)
        ;
    child_wait_renames(n);
}

/* Wait for the writer's first snapshot (it may predate the watch: the heap
 * can grow before main). */
static void child_wait_exists(void)
{
    struct stat sb;
    if (stat(child_path, &sb) != 0)
        child_wait_renames(1);
}

static void child_report(int fd, char what)
{
    if (write(fd, &what, 1) != 1)
        child_fail("report");
}

static void child_wait_go(int fd)
{
    char c;
    if (read(fd, &c, 1) != 1)
        _exit(91); /* the parent gave up */
}

/* load <cmd fd> <report fd>: load, free, stay quiet, exit; reports A, B, Q. */
static int child_load(int cmd, int report)
{
    child_expand_path();
    child_watch();
    spanalloc_free(spanalloc_malloc(64)); /* the heap grows: the writer starts */
    child_wait_renames(1);

    static void *small[LOAD_OBJECTS], *large[LOAD_LARGE];
    for (int i = 0; i < LOAD_OBJECTS; i++) {
        small[i] = spanalloc_malloc(LOAD_OBJECT_SIZE);
        memset(small[i], i, LOAD_OBJECT_SIZE);
    }
    for (int i = 0; i < LOAD_LARGE; i++) {
        large[i] = spanalloc_malloc(LOAD_LARGE_SIZE);
        memset(large[i], i, LOAD_LARGE_SIZE);
    }
    child_wait_fresh_renames(2); /* the second began after the load was complete */
    child_report(report, 'A');
    child_wait_go(cmd);

    for (int i = 0; i < LOAD_OBJECTS; i++)
        spanalloc_free(small[i]);
    for (int i = 0; i < LOAD_LARGE; i++)
        spanalloc_free(large[i]);
    child_wait_fresh_renames(2);
    child_report(report, 'B');
    child_wait_go(cmd);

    child_wait_fresh_renames(3); /* nobody allocates now, the writer least of all */
    child_report(report, 'Q');
    child_wait_go(cmd);
    exit(0); /* the writer leaves a last snapshot */
}

/* exit-snapshot: 40 MiB live at exit; the interval is an hour, so only the
 * snapshot written at exit can show them. */
static int child_exit_snapshot(void)
{
    child_expand_path();
    child_watch();
    spanalloc_free(spanalloc_malloc(64)); /* the heap grows: the writer starts */
    child_wait_exists();
    static void *volatile live[40]; /* live at exit, not leaked (valgrind checks children) */
    for (int i = 0; i < 40; i++)
        memset(live[i] = spanalloc_malloc(MiB), 1, MiB);
    return 0;
}

/* fork <report fd>: fork a worker that allocates; it reports its pid once
 * its own file appeared, then both exit. */
static int child_fork(int report)
{
    child_expand_path();
    child_watch();
    spanalloc_free(spanalloc_malloc(64));
    child_wait_renames(1);
    pid_t pid = fork();
    if (pid < 0)
        child_fail("fork");
    if (pid == 0) {
        child_expand_path(); /* the worker's own pid */
        static void *volatile p; /* live at exit, not leaked (valgrind checks children) */
        p = spanalloc_malloc(8 * MiB); /* a trip through the heap */
        memset(p, 1, 8 * MiB);
        child_wait_renames(1);
        int me = (int)getpid();
        if (write(report, &me, sizeof(me)) != (ssize_t)sizeof(me))
            child_fail("report");
        exit(0);
    }
    int status;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        child_fail("worker");
    return 0;
}

/* chdir: a relative path is resolved once, before the program moves. */
static int child_chdir(void)
{
    child_expand_path(); /* relative: against the start directory */
    child_watch();
    spanalloc_free(spanalloc_malloc(64));
    child_wait_renames(1);
    if (chdir("/") != 0)
        child_fail("chdir");
    static void *volatile live; /* live at exit, not leaked (valgrind checks children) */
    memset(live = spanalloc_malloc(MiB), 1, MiB);
    return 0;
}

/* unwritable <cmd fd> <report fd>: the heap grows (the writer starts), report
 * A; wait for the parent's go, allocate again, exit.  Used with a path whose
 * directory the parent creates only after A. */
static int child_unwritable(int cmd, int report)
{
    void *p = spanalloc_malloc(8 * MiB); /* the heap grows: the writer starts */
    memset(p, 1, 8 * MiB);
    child_report(report, 'A');
    child_wait_go(cmd);
    spanalloc_free(p);
    return 0;
}

/* quiet: allocate and exit; used with a path that cannot be written. */
static int child_quiet(void)
{
    for (int i = 0; i < 1000; i++)
        spanalloc_free(spanalloc_malloc((size_t)i * 100 + 1));
    static void *volatile p; /* live at exit, not leaked (valgrind checks children) */
    p = spanalloc_malloc(70 * MiB);
    memset(p, 1, 70 * MiB);
    return 0;
}

/* ----------------------------------------------------------- the parent -- */

struct child {
    pid_t pid;
    int cmd, report;  /* write commands, read reports */
    char out[PATH_MAX]; /* the child's stdout and stderr */
};

/* Start this binary with `mode`, extra environment `env` (NAME=VALUE...),
 * the working directory `cwd`; pipes for commands and reports. */
static void start_child(struct child *c, const char *mode, const char *const *env, const char *cwd)
{
    int cmd[2], rep[2];
    assert_int_equal(pipe2(cmd, O_CLOEXEC), 0);
    assert_int_equal(pipe2(rep, O_CLOEXEC), 0);
    static int serial;
    snprintf(c->out, sizeof(c->out), "%s/out-%s-%d.txt", tmpdir, mode, ++serial);

    /* Everything exec needs is built before fork. */
    char fd_cmd[16], fd_rep[16];
    snprintf(fd_cmd, sizeof(fd_cmd), "%d", cmd[0]);
    snprintf(fd_rep, sizeof(fd_rep), "%d", rep[1]);
    char *argv[] = {self_path, (char *)mode, fd_cmd, fd_rep, NULL};
    size_t n = 0;
    while (environ[n] != NULL)
        n++;
    char **envp = calloc(n + 8, sizeof(char *));
    size_t k = 0;
    static char asan_options[1024];
    const char *asan = getenv("ASAN_OPTIONS");
    /* LeakSanitizer in a forked worker complains on stderr about the threads
     * the fork left behind; the children's leaks are not what this tests. */
    snprintf(asan_options, sizeof(asan_options), "ASAN_OPTIONS=%s%sdetect_leaks=0",
             asan ? asan : "", asan && *asan ? ":" : "");
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "SPANALLOC_", 10) != 0 &&
            !(ASAN_BUILD && strncmp(environ[i], "ASAN_OPTIONS=", 13) == 0))
            envp[k++] = environ[i];
    if (ASAN_BUILD)
        envp[k++] = asan_options;
    for (size_t i = 0; env[i] != NULL; i++)
        envp[k++] = (char *)env[i];
    envp[k] = NULL;
    int out = open(c->out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    assert_true(out >= 0);

    c->pid = fork();
    assert_true(c->pid >= 0);
    if (c->pid == 0) {
        /* The pipe ends the child uses survive exec; the others close. */
        fcntl(cmd[0], F_SETFD, 0);
        fcntl(rep[1], F_SETFD, 0);
        dup2(out, STDOUT_FILENO);
        dup2(out, STDERR_FILENO);
        if (cwd != NULL && chdir(cwd) != 0)
            _exit(92);
        execve(self_path, argv, envp);
        _exit(93);
    }
    free(envp);
    close(out);
    close(cmd[0]);
    close(rep[1]);
    c->cmd = cmd[1];
    c->report = rep[0];
}

/* Read `len` bytes of report, waiting at most DEADLINE_MS. */
static void read_report(struct child *c, void *buf, size_t len)
{
    uint64_t deadline = now_ms() + DEADLINE_MS;
    size_t got = 0;
    while (got < len) {
        uint64_t now = now_ms();
        if (now >= deadline)
            fail_msg("child %d reported nothing within %d ms", (int)c->pid, DEADLINE_MS);
        struct pollfd pfd = {c->report, POLLIN, 0};
        int rc = poll(&pfd, 1, (int)(deadline - now));
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc <= 0)
            continue;
        ssize_t r = read(c->report, (char *)buf + got, len - got);
        if (r <= 0)
            fail_msg("child %d closed its report pipe early", (int)c->pid);
        got += (size_t)r;
    }
}

static void expect_report(struct child *c, char want)
{
    char got = 0;
    read_report(c, &got, 1);
    assert_int_equal(got, want);
}

static void go(struct child *c)
{
    assert_int_equal(write(c->cmd, "g", 1), 1);
}

/* Wait for the child; return its exit status (or 128 + signal). */
static int finish_child(struct child *c)
{
    uint64_t deadline = now_ms() + DEADLINE_MS;
    int status;
    for (;;) {
        pid_t r = waitpid(c->pid, &status, WNOHANG);
        if (r == c->pid)
            break;
        if (now_ms() > deadline) {
            kill(c->pid, SIGKILL);
            waitpid(c->pid, &status, 0);
            fail_msg("child %d did not exit", (int)c->pid);
        }
        struct pollfd pfd = {c->report, POLLIN, 0}; /* EOF once it exits */
        poll(&pfd, 1, 10);
    }
    close(c->cmd);
    close(c->report);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static char *slurp(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    ssize_t n;
    while ((n = read(fd, buf + len, cap - 1 - len)) > 0) {
        len += (size_t)n;
        if (len + 1 == cap)
            buf = realloc(buf, cap *= 2);
    }
    close(fd);
    buf[len] = '\0';
    return buf;
}

static void assert_file_empty(const char *path)
{
    static char head[301];
    char *s = slurp(path);
    assert_non_null(s);
    snprintf(head, sizeof(head), "%s", s);
    free(s);
    if (head[0] != '\0')
        fail_msg("expected no output from the child, got: %s", head);
}

/* ---- Reading snapshots (minimally: the keys the test needs) */

static const char *const json_keys[] = {
    "pid", "time_unix_ms", "interval_ms", "alloc", "total_alloc", "sys", "mallocs", "frees",
    "heap_alloc", "heap_sys", "heap_idle", "heap_inuse", "heap_released", "heap_objects",
    "mspan_inuse", "mspan_sys", "mcache_inuse", "mcache_sys", "other_sys", "num_scavenges",
    "num_forced_scavenges", "released_total", "reacquired_total", "madvise_failures", "rss",
    "lazyfree",
};
#define NKEYS (sizeof(json_keys) / sizeof(json_keys[0]))

struct snap {
    uint64_t v[NKEYS];
    ino_t ino;
    int fd; /* kept open: the inode stays alive, its number is not reused */
    int classes;
};

static int key_index(const char *key)
{
    for (size_t i = 0; i < NKEYS; i++)
        if (strcmp(json_keys[i], key) == 0)
            return (int)i;
    fail_msg("unknown key %s", key);
    return -1;
}
#define V(s, key) ((s)->v[key_index(key)])

/* Balanced braces and brackets, a single object, nothing after it. */
static void assert_json_shape(const char *s)
{
    int depth = 0;
    bool in_str = false;
    const char *p = s;
    while (*p == ' ' || *p == '\n')
        p++;
    assert_int_equal(*p, '{');
    for (; *p != '\0'; p++) {
        if (in_str) {
            if (*p == '\\')
                p++;
            else if (*p == '"')
                in_str = false;
            continue;
        }
        if (*p == '"')
            in_str = true;
        else if (*p == '{' || *p == '[')
            depth++;
        else if (*p == '}' || *p == ']') {
            assert_true(--depth >= 0);
            if (depth == 0)
                break;
        } else if (*p == ',') {
            const char *q = p + 1; /* no trailing commas */
            while (*q == ' ' || *q == '\n')
                q++;
            assert_true(*q != '}' && *q != ']');
        }
    }
    assert_int_equal(depth, 0);
    for (p++; *p == ' ' || *p == '\n'; p++)
        ;
    assert_int_equal(*p, '\0');
}

static void parse_json_snapshot(const char *text, struct snap *out)
{
    assert_json_shape(text);
    for (size_t i = 0; i < NKEYS; i++) {
        char pat[64];
        snprintf(pat, sizeof(pat), "\"%s\": ", json_keys[i]);
        const char *p = strstr(text, pat);
        if (p == NULL)
            fail_msg("key \"%s\" missing from the JSON snapshot", json_keys[i]);
        p += strlen(pat);
        char *end;
        if (*p < '0' || *p > '9')
            fail_msg("key \"%s\" has no numeric value", json_keys[i]);
        out->v[i] = strtoull(p, &end, 10);
        assert_true(*end == ',' || *end == '\n');
    }
    out->classes = 0;
    for (const char *p = strstr(text, "{\"size\": "); p != NULL; p = strstr(p + 1, "{\"size\": "))
        out->classes++;
}

/* Prometheus name (without labels) -> JSON key, for the keys both have. */
static const char *const prom_names[][2] = {
    {"spanalloc_alloc_bytes_total", "total_alloc"},
    {"spanalloc_sys_bytes", "sys"},
    {"spanalloc_mallocs_total", "mallocs"},
    {"spanalloc_frees_total", "frees"},
    {"spanalloc_heap_alloc_bytes", "heap_alloc"},
    {"spanalloc_heap_sys_bytes", "heap_sys"},
    {"spanalloc_heap_idle_bytes", "heap_idle"},
    {"spanalloc_heap_inuse_bytes", "heap_inuse"},
    {"spanalloc_heap_released_bytes", "heap_released"},
    {"spanalloc_heap_objects", "heap_objects"},
    {"spanalloc_scavenges_total", "num_scavenges"},
    {"spanalloc_forced_scavenges_total", "num_forced_scavenges"},
    {"spanalloc_released_bytes_total", "released_total"},
    {"spanalloc_reacquired_bytes_total", "reacquired_total"},
    {"spanalloc_madvise_failures_total", "madvise_failures"},
    {"spanalloc_rss_bytes", "rss"},
    {"spanalloc_lazyfree_bytes", "lazyfree"},
    {"spanalloc_snapshot_timestamp_seconds", "time_unix_ms"},
    {"spanalloc_snapshot_interval_seconds", "interval_ms"},
};

static void parse_prom_snapshot(const char *text, pid_t pid, struct snap *out)
{
    for (size_t i = 0; i < sizeof(prom_names) / sizeof(prom_names[0]); i++) {
        char pat[160];
        snprintf(pat, sizeof(pat), "\n%s{pid=\"%d\"} ", prom_names[i][0], (int)pid);
        const char *p = strstr(text, pat);
        if (p == NULL)
            fail_msg("no sample %s{pid=\"%d\"} in the .prom snapshot", prom_names[i][0], (int)pid);
        char help[160];
        snprintf(help, sizeof(help), "# HELP %s ", prom_names[i][0]);
        assert_non_null(strstr(text, help));
        p += strlen(pat);
        double d = strtod(p, NULL);
        bool seconds = strstr(prom_names[i][0], "_seconds") != NULL;
        out->v[key_index(prom_names[i][1])] = (uint64_t)(seconds ? d * 1000 + 0.5 : d);
    }
    out->v[key_index("pid")] = (uint64_t)pid;
    out->classes = 0;
    char pat[64];
    snprintf(pat, sizeof(pat), "spanalloc_size_class_mallocs_total{pid=\"%d\",size=\"", (int)pid);
    for (const char *p = strstr(text, pat); p != NULL; p = strstr(p + 1, pat))
        out->classes++;
}

static bool is_prom(const char *path)
{
    size_t n = strlen(path);
    return n > 5 && strcmp(path + n - 5, ".prom") == 0;
}

/* Read the current snapshot at `path`; out->fd stays open on it. */
static void read_snap(const char *path, pid_t pid, struct snap *out)
{
    memset(out, 0, sizeof(*out));
    out->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (out->fd < 0)
        fail_msg("no snapshot file at %s: %s", path, strerror(errno));
    struct stat sb;
    assert_int_equal(fstat(out->fd, &sb), 0);
    char fdpath[64];
    snprintf(fdpath, sizeof(fdpath), "/proc/self/fd/%d", out->fd);
    char *text = slurp(fdpath);
    assert_non_null(text);
    if (is_prom(path))
        parse_prom_snapshot(text, pid, out);
    else
        parse_json_snapshot(text, out);
    out->ino = sb.st_ino;
    free(text);
    assert_int_equal(V(out, "pid"), (uint64_t)pid);
    assert_int_equal(out->classes, SPANALLOC_NUM_SIZE_CLASSES - 1);
    /* A snapshot is one read_mem_stats: its invariants hold in the file
     * whenever the child was not allocating, as at every checkpoint here. */
    assert_int_equal(V(out, "heap_sys"), V(out, "heap_idle") + V(out, "heap_inuse"));
    assert_true(V(out, "heap_released") <= V(out, "heap_idle"));
    assert_true(V(out, "heap_alloc") <= V(out, "heap_inuse"));
    assert_int_equal(V(out, "heap_objects"), V(out, "mallocs") - V(out, "frees"));
    assert_true(V(out, "rss") > 0);
}

/* `later` replaced `earlier` by rename: the old inode is unlinked, still
 * holds its complete old content, and the name points at a new inode. */
static void assert_replaced(struct snap *earlier, const struct snap *later)
{
    struct stat sb;
    assert_int_equal(fstat(earlier->fd, &sb), 0);
    assert_int_equal(sb.st_nlink, 0);
    assert_true(later->ino != earlier->ino);
    close(earlier->fd);
    earlier->fd = -1;
}

static void close_snap(struct snap *s)
{
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
}

/* Run `prog args...` with stdin from `in_path` (NULL: /dev/null), output
 * into a buffer; returns the exit status. */
static int run_tool(char *const argv[], const char *in_path, char **output)
{
    char out_path[PATH_MAX];
    static int serial;
    snprintf(out_path, sizeof(out_path), "%s/tool-%d.txt", tmpdir, ++serial);
    int out = open(out_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int in = open(in_path ? in_path : "/dev/null", O_RDONLY | O_CLOEXEC);
    assert_true(out >= 0 && in >= 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(in, STDIN_FILENO);
        dup2(out, STDOUT_FILENO);
        dup2(out, STDERR_FILENO);
        execv(argv[0], argv);
        _exit(127);
    }
    close(in);
    close(out);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    *output = slurp(out_path);
    unlink(out_path);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static const char *find_promtool(void)
{
    static const char *const where[] = {"/usr/bin/promtool", "/usr/local/bin/promtool"};
    for (size_t i = 0; i < sizeof(where) / sizeof(where[0]); i++)
        if (access(where[i], X_OK) == 0)
            return where[i];
    return NULL;
}

static void assert_promtool_accepts(const char *path)
{
    const char *promtool = find_promtool();
    if (promtool == NULL)
        fail_msg("promtool not found: install the Debian package 'prometheus' "
                 "(apt-get install prometheus; tests/run.sh installs it)");
    char *out = NULL;
    char *argv[] = {(char *)promtool, "check", "metrics", NULL};
    int rc = run_tool(argv, path, &out);
    if (rc != 0 || (out != NULL && out[0] != '\0'))
        fail_msg("promtool check metrics %s: exit %d: %s", path, rc, out ? out : "");
    free(out);
}

static void snap_path(char *out, size_t cap, const char *ext, pid_t pid)
{
    snprintf(out, cap, "%s/snap-%d.%s", tmpdir, (int)pid, ext);
}

/* The writer renamed every temporary file it made (PATH.<pid>.tmp). */
static void assert_no_temp_files(void)
{
    DIR *d = opendir(tmpdir);
    assert_non_null(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name);
        if (n > 4 && strcmp(e->d_name + n - 4, ".tmp") == 0)
            fail_msg("temporary file left behind: %s", e->d_name);
    }
    closedir(d);
}

/* The whole life of a process writing snapshots, in either format. */
static void follow_a_process(const char *ext)
{
    char file_env[PATH_MAX + 32];
    snprintf(file_env, sizeof(file_env), "SPANALLOC_STATS_FILE=%s/snap-%%p.%s", tmpdir, ext);
    const char *env[] = {file_env, "SPANALLOC_STATS_INTERVAL=200ms", NULL};
    struct child c;
    start_child(&c, "load", env, NULL);
    char path[PATH_MAX];
    snap_path(path, sizeof(path), ext, c.pid);

    expect_report(&c, 'A'); /* 64 MiB small + 8 MiB large live */
    struct snap a;
    read_snap(path, c.pid, &a);
    if (strcmp(ext, "prom") == 0)
        assert_promtool_accepts(path);
    assert_true(V(&a, "heap_alloc") >= 72 * MiB);
    assert_true(V(&a, "heap_inuse") >= 72 * MiB);
    assert_true(V(&a, "rss") >= 72 * MiB);
    assert_true(V(&a, "mallocs") >= LOAD_OBJECTS + LOAD_LARGE);
    assert_int_equal(V(&a, "interval_ms"), 200);
    go(&c);

    expect_report(&c, 'B'); /* all freed */
    struct snap b;
    read_snap(path, c.pid, &b);
    if (strcmp(ext, "prom") == 0)
        assert_promtool_accepts(path);
    assert_replaced(&a, &b);
    assert_true(V(&b, "time_unix_ms") > V(&a, "time_unix_ms"));
    assert_true(V(&b, "heap_alloc") + 72 * MiB <= V(&a, "heap_alloc"));
    assert_true(V(&b, "heap_idle") >= 72 * MiB);
    assert_true(V(&b, "frees") >= V(&a, "frees") + LOAD_OBJECTS + LOAD_LARGE);
    go(&c);

    expect_report(&c, 'Q'); /* three snapshots, nobody allocating */
    struct snap q;
    read_snap(path, c.pid, &q);
    assert_replaced(&b, &q);
    assert_true(V(&q, "time_unix_ms") > V(&b, "time_unix_ms"));
    /* The writer allocated nothing from the heap it measures. */
    assert_int_equal(V(&q, "mallocs"), V(&b, "mallocs"));
    assert_int_equal(V(&q, "frees"), V(&b, "frees"));
    assert_int_equal(V(&q, "mcache_inuse"), V(&b, "mcache_inuse"));
    go(&c);

    assert_int_equal(finish_child(&c), 0);
    struct snap z; /* the last one, written at exit */
    read_snap(path, c.pid, &z);
    assert_true(V(&z, "time_unix_ms") >= V(&q, "time_unix_ms"));
    assert_replaced(&q, &z);
    close_snap(&z);
    assert_file_empty(c.out); /* nothing on stdout or stderr */
    assert_no_temp_files();
    unlink(c.out);
}

static void json_snapshots_follow_the_heap(void **state)
{
    (void)state;
    follow_a_process("json");
}

static void prom_snapshots_follow_the_heap_and_pass_promtool(void **state)
{
    (void)state;
    follow_a_process("prom");
}

static void last_snapshot_at_exit_and_spanalloc_top_once(void **state)
{
    (void)state;
    static const char *const exts[] = {"json", "prom"};
    for (int i = 0; i < 2; i++) {
        char file_env[PATH_MAX + 32];
        snprintf(file_env, sizeof(file_env), "SPANALLOC_STATS_FILE=%s/snap-%%p.%s", tmpdir,
                 exts[i]);
        const char *env[] = {file_env, "SPANALLOC_STATS_INTERVAL=1h", NULL};
        struct child c;
        start_child(&c, "exit-snapshot", env, NULL);
        assert_int_equal(finish_child(&c), 0);
        assert_file_empty(c.out);
        unlink(c.out);
        char path[PATH_MAX];
        snap_path(path, sizeof(path), exts[i], c.pid);
        struct snap s;
        read_snap(path, c.pid, &s);
        assert_true(V(&s, "heap_alloc") >= 40 * MiB); /* only the exit snapshot saw them */
        close_snap(&s);
        if (i == 1)
            assert_promtool_accepts(path);

        if (access(top_path, X_OK) != 0)
            fail_msg("spanalloc-top not found at %s (set SPANALLOC_TOP)", top_path);
        char *out = NULL;
        char *argv[] = {top_path, "--once", path, NULL};
        assert_int_equal(run_tool(argv, NULL, &out), 0);
        static const char *const rows[][2] = {
            {"HeapAlloc", "heap_alloc"}, {"HeapInuse", "heap_inuse"},
            {"HeapIdle", "heap_idle"},   {"HeapReleased", "heap_released"},
            {"HeapSys", "heap_sys"},     {"Sys", "sys"},
            {"RSS", "rss"},              {"LazyFree", "lazyfree"},
            {"HeapObjects", "heap_objects"}, {"Mallocs", "mallocs"},
        };
        for (size_t r = 0; r < sizeof(rows) / sizeof(rows[0]); r++) {
            char line[128];
            snprintf(line, sizeof(line), "\n%s ", rows[r][0]);
            const char *p = strstr(out, line);
            if (p == NULL)
                fail_msg("spanalloc-top --once has no %s line:\n%s", rows[r][0], out);
            unsigned long long v = strtoull(p + strlen(line), NULL, 10);
            if (v != V(&s, rows[r][1]))
                fail_msg("spanalloc-top --once: %s %llu, the file says %llu", rows[r][0], v,
                         (unsigned long long)V(&s, rows[r][1]));
        }
        char pidline[64];
        snprintf(pidline, sizeof(pidline), "\npid           %d\n", (int)c.pid);
        assert_non_null(strstr(out, pidline));
        assert_non_null(strstr(out, "top size classes by live bytes"));
        free(out);
    }

    char *out = NULL;
    char *help[] = {top_path, "--help", NULL};
    assert_int_equal(run_tool(help, NULL, &out), 0);
    assert_non_null(strstr(out, "--once"));
    free(out);
    char missing[PATH_MAX];
    snprintf(missing, sizeof(missing), "%s/no-such-snapshot.json", tmpdir);
    char *argv[] = {top_path, "--once", missing, NULL};
    assert_int_equal(run_tool(argv, NULL, &out), 1);
    free(out);
}

static void a_forked_worker_writes_its_own_file(void **state)
{
    (void)state;
    char file_env[PATH_MAX + 32];
    snprintf(file_env, sizeof(file_env), "SPANALLOC_STATS_FILE=%s/snap-%%p.json", tmpdir);
    const char *env[] = {file_env, "SPANALLOC_STATS_INTERVAL=200ms", NULL};
    struct child c;
    start_child(&c, "fork", env, NULL);
    int worker = 0;
    read_report(&c, &worker, sizeof(worker));
    assert_int_equal(finish_child(&c), 0);
    assert_true(worker > 0 && worker != c.pid);
    char path[PATH_MAX];
    snap_path(path, sizeof(path), "json", c.pid);
    struct snap parent, child;
    read_snap(path, c.pid, &parent);
    snap_path(path, sizeof(path), "json", worker);
    read_snap(path, worker, &child);
    assert_true(V(&child, "heap_alloc") >= 8 * MiB); /* the worker's 8 MiB, at its exit */
    close_snap(&parent);
    close_snap(&child);
    assert_file_empty(c.out);
    unlink(c.out);
}

static void a_relative_path_stays_where_the_program_started(void **state)
{
    (void)state;
    const char *env[] = {"SPANALLOC_STATS_FILE=rel-%p.json", "SPANALLOC_STATS_INTERVAL=200ms",
                         NULL};
    struct child c;
    start_child(&c, "chdir", env, tmpdir);
    assert_int_equal(finish_child(&c), 0);
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/rel-%d.json", tmpdir, (int)c.pid);
    struct snap s;
    read_snap(path, c.pid, &s);
    assert_true(V(&s, "heap_alloc") >= MiB); /* the exit snapshot, after the chdir */
    close_snap(&s);
    snprintf(path, sizeof(path), "/rel-%d.json", (int)c.pid);
    assert_int_equal(access(path, F_OK), -1);
    assert_file_empty(c.out);
    unlink(c.out);
}

/* While the file's directory is missing, every write fails and nothing is
 * printed; the writer keeps trying (the file appears once the directory
 * exists, without a restart), and still prints nothing. */
static void an_unwritable_path_is_silent(void **state)
{
    (void)state;
    char dir[PATH_MAX], env_file[PATH_MAX + 32], path[PATH_MAX + 32];
    snprintf(dir, sizeof(dir), "%s/later", tmpdir);
    snprintf(env_file, sizeof(env_file), "SPANALLOC_STATS_FILE=%s/x-%%p.prom", dir);
    const char *env[] = {env_file, "SPANALLOC_STATS_INTERVAL=10ms", NULL};
    struct child c;
    start_child(&c, "unwritable", env, NULL);
    expect_report(&c, 'A');
    snprintf(path, sizeof(path), "%s/x-%d.prom", dir, (int)c.pid);
    /* About 30 intervals with the directory missing: 30 failed writes. */
    struct pollfd pfd = {c.report, POLLIN, 0};
    assert_int_equal(poll(&pfd, 1, 300), 0); /* the child waits for go: no report */
    assert_int_equal(access(path, F_OK), -1);
    assert_int_equal(mkdir(dir, 0755), 0);
    uint64_t deadline = now_ms() + DEADLINE_MS;
    while (access(path, F_OK) != 0) {
        if (now_ms() > deadline) {
            go(&c);
            finish_child(&c);
            fail_msg("no snapshot %s within %d ms of its directory appearing", path, DEADLINE_MS);
        }
        poll(&pfd, 1, 10); /* polling the file, with a deadline */
    }
    go(&c);
    assert_int_equal(finish_child(&c), 0);
    assert_file_empty(c.out);
    unlink(c.out);
    unlink(path);
    rmdir(dir);

    /* A path that never becomes writable: the program runs and exits quietly. */
    const char *never[] = {"SPANALLOC_STATS_FILE=/nonexistent-spanalloc-dir/x-%p.prom",
                           "SPANALLOC_STATS_INTERVAL=10ms", NULL};
    start_child(&c, "quiet", never, NULL);
    assert_int_equal(finish_child(&c), 0);
    assert_file_empty(c.out);
    unlink(c.out);
}

static int make_tmpdir(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/spanalloc-snapshot-XXXXXX");
    return mkdtemp(tmpdir) == NULL ? -1 : 0;
}

static int remove_tmpdir(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
    ssize_t n = readlink("/proc/self/exe", self_path, sizeof(self_path) - 1);
    self_path[n > 0 ? n : 0] = '\0';
    if (argc == 4 && strcmp(argv[1], "load") == 0)
        return child_load(atoi(argv[2]), atoi(argv[3]));
    if (argc == 4 && strcmp(argv[1], "fork") == 0)
        return child_fork(atoi(argv[3]));
    if (argc >= 2 && strcmp(argv[1], "exit-snapshot") == 0)
        return child_exit_snapshot();
    if (argc >= 2 && strcmp(argv[1], "chdir") == 0)
        return child_chdir();
    if (argc == 4 && strcmp(argv[1], "unwritable") == 0)
        return child_unwritable(atoi(argv[2]), atoi(argv[3]));
    if (argc >= 2 && strcmp(argv[1], "quiet") == 0)
        return child_quiet();

    /* build/tests/test_snapshot -> build/tools/spanalloc-top */
    const char *top = getenv("SPANALLOC_TOP");
    if (top != NULL) {
        snprintf(top_path, sizeof(top_path), "%s", top);
    } else {
        snprintf(top_path, sizeof(top_path), "%s", self_path);
        char *slash = strrchr(top_path, '/');
        if (slash != NULL)
            snprintf(slash, sizeof(top_path) - (size_t)(slash - top_path),
                     "/../tools/spanalloc-top");
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(json_snapshots_follow_the_heap),
        cmocka_unit_test(prom_snapshots_follow_the_heap_and_pass_promtool),
        cmocka_unit_test(last_snapshot_at_exit_and_spanalloc_top_once),
        cmocka_unit_test(a_forked_worker_writes_its_own_file),
        cmocka_unit_test(a_relative_path_stays_where_the_program_started),
        cmocka_unit_test(an_unwritable_path_is_silent),
    };
    return cmocka_run_group_tests_name("snapshot", tests, make_tmpdir, remove_tmpdir);
}
