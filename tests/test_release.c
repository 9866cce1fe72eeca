/*
 * Giving memory back, end to end, in a process that runs on spanalloc (this
 * binary links libspanalloc.so): free_os_memory() after a burst, the
 * background scavenger with a short idle threshold, its trace, and the
 * jemalloc entry points Redis uses.  Scenarios that need their own
 * environment run in a child started with it (fork + exec of this binary).
 */

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test_helpers.h"

int mallctl(const char *name, void *oldp, size_t *oldlenp, void *newp, size_t newlen);
size_t nallocx(size_t size, int flags);

#define MiB (1024.0 * 1024.0)
#define SMALL_OBJECTS 1000000
#define LARGE_OBJECTS 1500
#define LARGE_SIZE (128 * 1024)

static char self_path[4096];

#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define UNDER_VALGRIND() (RUNNING_ON_VALGRIND != 0)
#else
#define UNDER_VALGRIND() 0
#endif
#if defined(__SANITIZE_THREAD__)
#define UNDER_TSAN() 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define UNDER_TSAN() 1
#endif
#endif
#ifndef UNDER_TSAN
#define UNDER_TSAN() 0
#endif

/* These tests are about what spanalloc does to a process's memory.  Under
 * ASan the process malloc is ASan's (the tests then have nothing to test),
 * and under valgrind RSS is valgrind's (its shadow memory is never given
 * back): say so and skip, rather than pass vacuously or fail for the tool. */
static bool malloc_is_spanalloc(void)
{
    void *p = malloc(100);
    bool ours = malloc_usable_size(p) == 112;
    free(p);
    return ours;
}

#define REQUIRE_NATIVE_SPANALLOC()                                                  \
    do {                                                                            \
        if (!malloc_is_spanalloc() || UNDER_VALGRIND()) {                           \
            print_message("skipped: needs spanalloc as the process malloc, "        \
                          "outside valgrind\n");                                    \
            skip();                                                                 \
        }                                                                           \
    } while (0)
/* The race below runs on the prefixed API, so it needs no process malloc of
 * spanalloc's and runs under ASan and TSan too; memcheck serialises its two
 * threads (no race left to test) and takes minutes over it. */
#define REQUIRE_NOT_VALGRIND()                                                      \
    do {                                                                            \
        if (UNDER_VALGRIND()) {                                                     \
            print_message("skipped: under valgrind the threads are serialised\n");  \
            skip();                                                                 \
        }                                                                           \
    } while (0)

static uint64_t rss_bytes(void)
{
    char buf[128] = {0};
    int fd = open("/proc/self/statm", O_RDONLY);
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    unsigned long pages_total = 0, pages_resident = 0;
    if (n <= 0 || sscanf(buf, "%lu %lu", &pages_total, &pages_resident) != 2)
        return 0;
    return (uint64_t)pages_resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* About 320 MiB: a million objects of 16..256 B and 1500 blocks of 128 KiB,
 * every byte written, then all freed. */
static void burst(void)
{
    void **small = malloc(SMALL_OBJECTS * sizeof(void *));
    void **large = malloc(LARGE_OBJECTS * sizeof(void *));
    unsigned seed = 12345;
    for (int i = 0; i < SMALL_OBJECTS; i++) {
        size_t n = 16 + (rand_r(&seed) % 241);
        small[i] = malloc(n);
        memset(small[i], (int)i, n);
    }
    for (int i = 0; i < LARGE_OBJECTS; i++) {
        large[i] = malloc(LARGE_SIZE);
        memset(large[i], (int)i, LARGE_SIZE);
    }
    for (int i = 0; i < SMALL_OBJECTS; i++)
        free(small[i]);
    for (int i = 0; i < LARGE_OBJECTS; i++)
        free(large[i]);
    free(small);
    free(large);
}

static void after_release_memory_is_sound(void)
{
    for (int round = 0; round < 1000; round++) {
        size_t n = 1 + (size_t)round * 97;
        unsigned char *z = calloc(1, n);
        assert_non_null(z);
        for (size_t i = 0; i < n; i++)
            assert_int_equal(z[i], 0);
        unsigned char *p = malloc(n);
        memset(p, 0x5a, n);
        assert_int_equal(p[n - 1], 0x5a);
        free(p);
        free(z);
    }
}

static void free_os_memory_returns_a_burst(void **state)
{
    (void)state;
    REQUIRE_NATIVE_SPANALLOC();
    uint64_t rss0 = rss_bytes();
    struct mem_stats before = stats_now();
    assert_stats_invariants(&before);
    burst();
    uint64_t rss_peak = rss_bytes();
    struct mem_stats mid = stats_now();
    assert_stats_invariants(&mid);
    free_os_memory();
    uint64_t rss1 = rss_bytes();
    struct mem_stats after = stats_now();
    assert_stats_invariants(&after);
    print_message("rss: start %.1f MiB, after burst %.1f MiB, after free_os_memory %.1f MiB; "
                  "released %.1f MiB\n", rss0 / MiB, rss_peak / MiB, rss1 / MiB,
                  (after.released_total - before.released_total) / MiB);
    assert_true(rss_peak > rss0 + 250 * 1024 * 1024); /* the burst really was resident */
    assert_true(rss1 < rss0 + 24 * 1024 * 1024);
    assert_true(after.released_total - before.released_total >= 290ull * 1024 * 1024);
    assert_true(after.heap_released >= 290ull * 1024 * 1024);
    assert_int_equal(after.num_forced_scavenges, before.num_forced_scavenges + 1);
    after_release_memory_is_sound();
}

/* Child scenario: burst, then wait (polling, bounded) for the scavenger. */
static int child_wait_for_scavenger(int seconds)
{
    uint64_t rss0 = rss_bytes();
    burst();
    uint64_t start = now_ms();
    struct mem_stats b = stats_now();
    while (now_ms() - start < (uint64_t)seconds * 1000) {
        if (rss_bytes() < rss0 + 24 * 1024 * 1024) {
            struct mem_stats a = stats_now();
            printf("released after %.1f s; scavenger cycles since the burst: %llu\n",
                   (now_ms() - start) / 1000.0,
                   (unsigned long long)(a.num_scavenges - b.num_scavenges));
            return 0;
        }
        usleep(100 * 1000); /* polling the observable, not a synchronisation */
    }
    struct mem_stats st = stats_now();
    printf("not released: rss %.1f MiB, heap_released %.1f MiB\n", rss_bytes() / MiB,
           st.heap_released / MiB);
    return 1;
}

/* Child scenario: burst; then two more scavenger cycles must complete (the
 * first may have started before the burst was freed; the second started
 * after), and nothing may have been released.  Cycles come every 5 s at the
 * 5-minute threshold: at most about 10 s, bounded at 20 s. */
static int child_default_keeps_memory(void)
{
    struct mem_stats before = stats_now();
    burst();
    uint64_t start = now_ms();
    uint64_t cycles = stats_now().num_scavenges;
    struct mem_stats after = stats_now();
    while (after.num_scavenges < cycles + 2 && now_ms() - start < 20000) {
        usleep(50 * 1000); /* polling the cycle counter, with a deadline */
        after = stats_now();
    }
    printf("cycles after the burst %llu, released %.1f MiB\n",
           (unsigned long long)(after.num_scavenges - cycles),
           (after.released_total - before.released_total) / MiB);
    if (after.num_scavenges < cycles + 2)
        return 2; /* the scavenger did not run: nothing was tested */
    return after.released_total == before.released_total ? 0 : 1;
}

/* Child scenario: trace on; once the scavenger released the burst and the
 * cycle that did it has completed (a cycle is counted after its trace line),
 * print the stats. */
static int child_trace(void)
{
    burst();
    uint64_t start = now_ms();
    struct mem_stats st = stats_now();
    while (st.released_total < 290ull * 1024 * 1024 && now_ms() - start < 10000) {
        usleep(50 * 1000);
        st = stats_now();
    }
    uint64_t cycles = st.num_scavenges;
    while (st.num_scavenges <= cycles && now_ms() - start < 15000) {
        usleep(50 * 1000);
        st = stats_now();
    }
    printf("STATS sys=%llu heap_sys=%llu released=%llu inuse=%llu\n",
           (unsigned long long)st.sys, (unsigned long long)st.heap_sys,
           (unsigned long long)st.heap_released, (unsigned long long)st.heap_inuse);
    return st.released_total > 0 ? 0 : 1;
}

/* Child scenario: two threads allocate, check and free while the scavenger
 * runs every millisecond with a 1 ms threshold, releasing what they just freed. */
#define RACE_SLOTS 512
#define RACE_ROUNDS 400000

static void *race_worker(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg;
    static __thread unsigned char *slot[RACE_SLOTS];
    static __thread size_t len[RACE_SLOTS];
    long bad = 0;
    for (int r = 0; r < RACE_ROUNDS; r++) {
        int i = (int)(rand_r(&seed) % RACE_SLOTS);
        if (slot[i] != NULL) {
            unsigned char want = (unsigned char)(i ^ len[i]);
            for (size_t k = 0; k < len[i]; k += 61)
                bad += slot[i][k] != want;
            spanalloc_free(slot[i]);
            slot[i] = NULL;
            continue;
        }
        unsigned kind = rand_r(&seed) % 16;
        len[i] = kind == 0 ? 40000 + rand_r(&seed) % 300000 : 1 + rand_r(&seed) % 2000;
        slot[i] = spanalloc_malloc(len[i]);
        if (slot[i] == NULL)
            return (void *)-1L;
        memset(slot[i], (unsigned char)(i ^ len[i]), len[i]);
    }
    for (int i = 0; i < RACE_SLOTS; i++)
        spanalloc_free(slot[i]);
    return (void *)bad;
}

static int child_scavenger_race(void)
{
    struct mem_stats before = stats_now();
    pthread_t t[2];
    for (uintptr_t i = 0; i < 2; i++)
        if (pthread_create(&t[i], NULL, race_worker, (void *)(i + 1)) != 0)
            return 3;
    long bad = 0;
    for (int i = 0; i < 2; i++) {
        void *r;
        pthread_join(t[i], &r);
        bad += (long)r;
    }
    struct mem_stats st = stats_now();
    printf("corrupt bytes %ld, objects before %llu after %llu, scavenger cycles %llu, "
           "released %.1f MiB, reacquired %.1f MiB\n",
           bad, (unsigned long long)before.heap_objects, (unsigned long long)st.heap_objects, (unsigned long long)(st.num_scavenges - before.num_scavenges),
           (st.released_total - before.released_total) / MiB,
           (st.reacquired_total - before.reacquired_total) / MiB);
    bool ok = bad == 0 && st.num_scavenges > before.num_scavenges + 10 &&
              st.released_total > before.released_total &&
              st.heap_sys == st.heap_idle + st.heap_inuse && st.heap_released <= st.heap_idle &&
              st.heap_alloc <= st.heap_inuse && st.heap_objects == st.mallocs - st.frees &&
              /* glibc's own per-thread blocks (DTVs) may outlive the threads */
              st.heap_objects <= before.heap_objects + 8 &&
              st.sys == st.heap_sys + st.mspan_sys + st.mcache_sys + st.other_sys;
    return ok ? 0 : 1;
}

/* Child scenario: start the background threads, then end the main thread
 * with pthread_exit: the process must end when its last thread does. */
static void *short_worker(void *arg)
{
    (void)arg;
    for (int i = 0; i < 100; i++)
        spanalloc_free(spanalloc_malloc(100000));
    return NULL;
}

static int child_main_thread_exits(void)
{
    spanalloc_free(spanalloc_malloc(1 << 20)); /* the heap grows: the scavenger starts */
    pthread_t t;
    if (pthread_create(&t, NULL, short_worker, NULL) != 0)
        return 3;
    pthread_exit(NULL);
}

/* Run this binary as `scenario` with extra environment; capture its output. */
static int run_child(const char *scenario, const char *const env[], char *out, size_t outlen)
{
    int pipefd[2];
    assert_int_equal(pipe(pipefd), 0);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(pipefd[1], 1);
        dup2(pipefd[1], 2);
        close(pipefd[0]);
        for (const char *const *e = env; *e; e++)
            putenv((char *)*e);
        execl(self_path, self_path, scenario, (char *)NULL);
        _exit(127);
    }
    close(pipefd[1]);
    size_t used = 0;
    ssize_t n;
    while ((n = read(pipefd[0], out + used, outlen - 1 - used)) > 0)
        used += (size_t)n;
    out[used] = '\0';
    close(pipefd[0]);
    int status;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* Burst in a child with env; the child waits (bounded) for RSS to fall. */
static void burst_is_released_in_child(const char **env)
{
    static char out[4096];
    int rc = run_child("wait-scavenger", env, out, sizeof(out));
    print_message("%s", out);
    assert_int_equal(rc, 0);
}

/* The age rule alone (idle limit off, so the freeing thread releases
 * nothing): with a 1 s threshold the scavenger gives the burst back. */
static void scavenger_releases_within_ten_seconds(void **state)
{
    (void)state;
    REQUIRE_NATIVE_SPANALLOC();
    const char *env[] = {"SPANALLOC_SCAVENGE_IDLE=1s", "SPANALLOC_IDLE_LIMIT=off", NULL};
    burst_is_released_in_child(env);
}

/* The age rule alone (idle limit off): a burst idle for less than the 5-minute
 * threshold stays resident through scavenger cycles. */
static void age_rule_keeps_idle_memory(void **state)
{
    (void)state;
    REQUIRE_NATIVE_SPANALLOC();
    static char out[4096];
    const char *env[] = {"SPANALLOC_SCAVENGE_IDLE=5m", "SPANALLOC_IDLE_LIMIT=off", NULL};
    int rc = run_child("default-keeps", env, out, sizeof(out));
    print_message("%s", out);
    assert_int_equal(rc, 0);
}

/* The defaults (5-minute age rule, idle limit 10% after 150 ms): a freed
 * burst does not wait five minutes; everything above the limit's 4 MiB floor
 * goes back, by the freeing thread or the next scavenger cycle (every 5 s). */
static void idle_limit_returns_a_burst_by_default(void **state)
{
    (void)state;
    REQUIRE_NATIVE_SPANALLOC();
    const char *env[] = {"SPANALLOC_SCAVENGE_IDLE=5m", NULL};
    burst_is_released_in_child(env);
}

/* The scvg lines appear and agree with read_mem_stats. */
static void trace_lines_agree_with_stats(void **state)
{
    (void)state;
    REQUIRE_NATIVE_SPANALLOC();
    static char out[65536];
    /* The age rule alone, so that the scavenger, not the freeing thread,
     * releases the burst and prints its lines. */
    const char *env[] = {"SPANALLOC_SCAVENGE_IDLE=1s", "SPANALLOC_TRACE=1",
                         "SPANALLOC_IDLE_LIMIT=off", NULL};
    assert_int_equal(run_child("trace", env, out, sizeof(out)), 0);
    print_message("%s", out);
    /* The burst may be released over several cycles: add up every
     * "scvgN: X MB released" line, and check the last summary line. */
    unsigned long long cycle, mb, total_mb = 0, inuse, idle, sys, released, consumed;
    char *summary = NULL;
    for (char *line = out; line != NULL && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        if (sscanf(line, "scvg%llu: %llu MB released", &cycle, &mb) == 2)
            total_mb += mb;
        char *s = strstr(line, "inuse:");
        char *eol = strchr(line, '\n');
        if (s != NULL && (eol == NULL || s < eol))
            summary = s;
    }
    mb = total_mb;
    assert_non_null(summary);
    assert_int_equal(sscanf(summary, "inuse: %llu, idle: %llu, sys: %llu, released: %llu, "
                                     "consumed: %llu (MB)",
                            &inuse, &idle, &sys, &released, &consumed), 5);
    assert_true(mb >= 250);
    /* Each figure is rounded down to whole MB on its own: sums may be off by one. */
    assert_true(sys >= inuse + idle && sys <= inuse + idle + 1);
    assert_true(consumed + released >= sys - 1 && consumed + released <= sys);
    unsigned long long st_sys, st_heap_sys, st_released, st_inuse;
    char *stats = strstr(out, "STATS ");
    assert_non_null(stats);
    assert_int_equal(sscanf(stats, "STATS sys=%llu heap_sys=%llu released=%llu inuse=%llu",
                            &st_sys, &st_heap_sys, &st_released, &st_inuse), 4);
    assert_int_equal(sys, st_heap_sys >> 20);
    assert_true(released <= (st_released >> 20) + 1 && released + 1 >= (st_released >> 20));
}

static void scavenger_racing_two_threads_loses_nothing(void **state)
{
    (void)state;
    REQUIRE_NOT_VALGRIND();
    static char out[4096];
    const char *env[] = {"SPANALLOC_SCAVENGE_IDLE=1ms", NULL};
    int rc = run_child("scavenger-race", env, out, sizeof(out));
    print_message("%s", out);
    assert_int_equal(rc, 0);
}

/* The scavenger and the snapshot writer never keep a process alive.  On the
 * prefixed API, so it runs under ASan too; not under TSan, whose own
 * background thread keeps any process alive after its main thread exits. */
static void background_threads_do_not_outlive_the_program(void **state)
{
    (void)state;
    if (UNDER_TSAN()) {
        print_message("skipped: TSan's own background thread outlives main\n");
        skip();
    }
    char dir[] = "/tmp/spanalloc-exit-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char file_env[128];
    snprintf(file_env, sizeof(file_env), "SPANALLOC_STATS_FILE=%s/snap.json", dir);
    pid_t pid = fork();
    if (pid == 0) {
        putenv(file_env);
        putenv("SPANALLOC_SCAVENGE_IDLE=1s");
        execl(self_path, self_path, "main-exits", (char *)NULL);
        _exit(127);
    }
    uint64_t start = now_ms();
    int status = 0;
    pid_t done = 0;
    while ((done = waitpid(pid, &status, WNOHANG)) == 0 && now_ms() - start < 15000)
        usleep(50 * 1000); /* polling the child's state, with a deadline */
    if (done == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        fail_msg("the process did not end 15 s after its last thread exited");
    }
    print_message("process ended %.1f s after start\n", (now_ms() - start) / 1000.0);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    char path[160];
    snprintf(path, sizeof(path), "%s/snap.json", dir);
    unlink(path);
    rmdir(dir);
}

/* The jemalloc entry points read spanalloc's own figures, whoever serves
 * the process malloc: the blocks come from the prefixed API, so these run
 * under the sanitizers too. */
static void mallctl_reports_spanalloc_figures(void **state)
{
    (void)state;
    uint64_t epoch = 1;
    size_t len = sizeof(epoch);
    assert_int_equal(mallctl("epoch", &epoch, &len, &epoch, len), 0);
    void *p = spanalloc_malloc(1 << 20);
    memset(p, 1, 1 << 20);
    struct mem_stats st = stats_now();
    size_t allocated, active, resident, mapped, retained;
    len = sizeof(size_t);
    assert_int_equal(mallctl("stats.allocated", &allocated, &len, NULL, 0), 0);
    assert_int_equal(mallctl("stats.active", &active, &len, NULL, 0), 0);
    assert_int_equal(mallctl("stats.resident", &resident, &len, NULL, 0), 0);
    assert_int_equal(mallctl("stats.mapped", &mapped, &len, NULL, 0), 0);
    assert_int_equal(mallctl("stats.retained", &retained, &len, NULL, 0), 0);
    assert_int_equal(allocated, st.heap_alloc);
    assert_int_equal(active, st.heap_inuse);
    assert_int_equal(resident, st.sys - st.heap_released);
    assert_int_equal(mapped, st.sys);
    assert_int_equal(retained, st.heap_released);
    spanalloc_free(p);

    unsigned narenas = 0;
    len = sizeof(narenas);
    assert_int_equal(mallctl("arenas.narenas", &narenas, &len, NULL, 0), 0);
    assert_int_equal(narenas, 1);
    struct mem_stats before = stats_now();
    assert_int_equal(mallctl("arena.1.purge", NULL, NULL, NULL, 0), 0);
    assert_int_equal(mallctl("arena.4096.purge", NULL, NULL, NULL, 0), 0);
    assert_int_equal(stats_now().num_forced_scavenges, before.num_forced_scavenges + 2);
    assert_int_equal(mallctl("opt.narenas", &narenas, &len, NULL, 0), ENOENT);
    assert_int_equal(mallctl("no.such.name", NULL, NULL, NULL, 0), ENOENT);
    size_t small = 4;
    assert_int_equal(mallctl("stats.allocated", &allocated, &small, NULL, 0), EINVAL);
}

static void nallocx_agrees_with_malloc_usable_size(void **state)
{
    (void)state;
    for (size_t n = 0; n < 200000; n += (n < 40000 ? 1 : 997)) {
        void *p = spanalloc_malloc(n);
        assert_int_equal(nallocx(n, 0), spanalloc_usable_size(p));
        spanalloc_free(p);
    }
    for (int lg = 4; lg <= 16; lg++) {
        for (size_t n = 1; n < 70000; n = n * 3 + 1) {
            void *p = spanalloc_aligned_alloc((size_t)1 << lg, n);
            assert_int_equal(nallocx(n, lg), spanalloc_usable_size(p));
            spanalloc_free(p);
        }
    }
}

int main(int argc, char **argv)
{
    ssize_t n = readlink("/proc/self/exe", self_path, sizeof(self_path) - 1);
    self_path[n > 0 ? n : 0] = '\0';
    if (argc == 2 && strcmp(argv[1], "wait-scavenger") == 0)
        return child_wait_for_scavenger(10);
    if (argc == 2 && strcmp(argv[1], "default-keeps") == 0)
        return child_default_keeps_memory();
    if (argc == 2 && strcmp(argv[1], "trace") == 0)
        return child_trace();
    if (argc == 2 && strcmp(argv[1], "scavenger-race") == 0)
        return child_scavenger_race();
    if (argc == 2 && strcmp(argv[1], "main-exits") == 0)
        return child_main_thread_exits();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(free_os_memory_returns_a_burst),
        cmocka_unit_test(scavenger_releases_within_ten_seconds),
        cmocka_unit_test(age_rule_keeps_idle_memory),
        cmocka_unit_test(idle_limit_returns_a_burst_by_default),
        cmocka_unit_test(trace_lines_agree_with_stats),
        cmocka_unit_test(scavenger_racing_two_threads_loses_nothing),
        cmocka_unit_test(background_threads_do_not_outlive_the_program),
        cmocka_unit_test(mallctl_reports_spanalloc_figures),
        cmocka_unit_test(nallocx_agrees_with_malloc_usable_size),
    };
    return cmocka_run_group_tests_name("release", tests, NULL, NULL);
}
