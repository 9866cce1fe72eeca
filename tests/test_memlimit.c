/*
 * The soft memory limit end to end (docs/tuning.md, SPANALLOC_MEMORY_LIMIT):
 * the variable as the library reads it at load, the release of idle memory
 * when the heap grows past the limit, the scavenger enforcing it when nothing
 * grows, and several threads allocating far more than the limit without a
 * single failure.  "Used" is what the limit bounds: sys - heap_released.
 *
 * Each scenario runs in a child (fork + exec of this binary) started with
 * its own SPANALLOC_* environment; the idle limit is off and the age rule at
 * an hour, so only the memory limit can release anything.  The children use
 * the prefixed API, so they run under ASan and TSan as well.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test_helpers.h"

#define MiB ((uint64_t)1 << 20)

static char self_path[4096];

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint64_t used(const struct mem_stats *st)
{
    return st->sys - st->heap_released;
}

static uint64_t resident_idle(const struct mem_stats *st)
{
    return st->heap_idle - st->heap_released;
}

#define CHILD_CHECK(cond, ...)                                                      \
    do {                                                                            \
        if (!(cond)) {                                                              \
            printf("FAILED %s: ", #cond);                                           \
            printf(__VA_ARGS__);                                                    \
            printf("\n");                                                           \
            return 1;                                                               \
        }                                                                           \
    } while (0)

static bool invariants_hold(const struct mem_stats *st)
{
    return st->heap_sys == st->heap_idle + st->heap_inuse &&
           st->heap_released <= st->heap_idle && st->heap_alloc <= st->heap_inuse &&
           st->heap_objects == st->mallocs - st->frees &&
           st->sys == st->heap_sys + st->mspan_sys + st->mcache_sys + st->other_sys;
}

/* ----------------------------------------------------------- children -- */

/* limit: print the limit the library read from the environment. */
static int child_limit(void)
{
    uint64_t limit = spanalloc_set_memory_limit(0);
    printf("limit=%llu\n", (unsigned long long)limit);
    return 0;
}

/* Touch one word per 4 KiB: the pages are resident, the test stays fast. */
static void touch(unsigned char *p, size_t n, unsigned char v)
{
    for (size_t i = 0; i < n; i += 4096)
        p[i] = v;
    p[n - 1] = v;
}

static bool touched(const unsigned char *p, size_t n, unsigned char v)
{
    for (size_t i = 0; i < n; i += 4096)
        if (p[i] != v)
            return false;
    return p[n - 1] == v;
}

#define GROW_BLOCKS 48

/* grow: 48 MiB allocated, touched and freed (idle, resident: nothing may
 * release it, the scavenger is off), then an 80 MiB block makes the heap
 * grow.  Prints the resident idle bytes before and after the growth. */
static int child_grow(void)
{
    static unsigned char *b[GROW_BLOCKS];
    for (int i = 0; i < GROW_BLOCKS; i++) {
        b[i] = spanalloc_malloc(MiB);
        CHILD_CHECK(b[i] != NULL, "block %d", i);
        touch(b[i], MiB, (unsigned char)i);
    }
    for (int i = 0; i < GROW_BLOCKS; i++)
        spanalloc_free(b[i]);
    struct mem_stats before = stats_now();
    unsigned char *big = spanalloc_malloc(80 * MiB);
    CHILD_CHECK(big != NULL, "80 MiB");
    touch(big, 80 * MiB, 0x77);
    struct mem_stats after = stats_now();
    CHILD_CHECK(invariants_hold(&after), "invariants");
    CHILD_CHECK(after.heap_sys > before.heap_sys, "the heap did not grow");
    CHILD_CHECK(after.num_scavenges == 0, "a scavenger cycle ran");
    printf("idle_before=%llu idle_after=%llu used_after=%llu released=%llu\n",
           (unsigned long long)resident_idle(&before), (unsigned long long)resident_idle(&after),
           (unsigned long long)used(&after),
           (unsigned long long)(after.released_total - before.released_total));
    CHILD_CHECK(touched(big, 80 * MiB, 0x77), "contents");
    spanalloc_free(big);
    return 0;
}

#define SCAV_BLOCKS 100
#define SCAV_FREED 60

/* scavenger: 100 MiB live (over the 64 MiB limit, nothing idle to release),
 * then 60 MiB freed: no growth follows, so only the scavenger can bring used
 * back under the limit.  Waits for two completed cycles after the frees. */
static int child_scavenger(void)
{
    static unsigned char *b[SCAV_BLOCKS];
    for (int i = 0; i < SCAV_BLOCKS; i++) {
        b[i] = spanalloc_malloc(MiB);
        CHILD_CHECK(b[i] != NULL, "block %d", i);
        touch(b[i], MiB, (unsigned char)i);
    }
    uint64_t limit = spanalloc_set_memory_limit(0);
    spanalloc_set_memory_limit(limit);
    for (int i = 0; i < SCAV_FREED; i++)
        spanalloc_free(b[i]);
    struct mem_stats freed = stats_now();
    CHILD_CHECK(resident_idle(&freed) >= (SCAV_FREED - 1) * MiB,
                "freeing released memory: resident idle %llu",
                (unsigned long long)resident_idle(&freed));
    CHILD_CHECK(used(&freed) > limit, "used %llu is not over the limit",
                (unsigned long long)used(&freed));
    uint64_t start = now_ms();
    struct mem_stats st = stats_now();
    while (st.num_scavenges < freed.num_scavenges + 2 && now_ms() - start < 20000) {
        usleep(50 * 1000); /* polling the cycle counter, with a deadline */
        st = stats_now();
    }
    CHILD_CHECK(st.num_scavenges >= freed.num_scavenges + 2, "no scavenger cycle in 20 s");
    CHILD_CHECK(invariants_hold(&st), "invariants");
    printf("limit=%llu used_after_free=%llu used_after_cycles=%llu released=%llu\n",
           (unsigned long long)limit, (unsigned long long)used(&freed),
           (unsigned long long)used(&st),
           (unsigned long long)(st.released_total - freed.released_total));
    CHILD_CHECK(used(&st) <= limit, "used %llu over the limit %llu after two cycles",
                (unsigned long long)used(&st), (unsigned long long)limit);
    for (int i = SCAV_FREED; i < SCAV_BLOCKS; i++) {
        CHILD_CHECK(touched(b[i], MiB, (unsigned char)i), "block %d", i);
        spanalloc_free(b[i]);
    }
    return 0;
}

/* threads: 4 threads, each keeping 16 blocks of 64 KiB .. 2 MiB live (about
 * 64 MiB in all, twice the 32 MiB limit) through at least 3000 replacements,
 * and on until the limit has released memory while they run: not one
 * allocation may fail, no block may change.  (Whether a growth finds idle
 * memory to release depends on how the threads interleave: under memcheck,
 * which runs one thread at a time, the workload may fit the heap's first
 * growth, and then the scavenger's next cycle, within 5 s, does the
 * release.) */
#define LIMIT_THREADS 4
#define LIMIT_SLOTS 16
#define LIMIT_ROUNDS 3000
#define LIMIT_DEADLINE_MS 30000

static _Atomic bool limit_released; /* set by the main thread */

static void *limit_worker(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg;
    unsigned char *slot[LIMIT_SLOTS] = {0};
    size_t len[LIMIT_SLOTS] = {0};
    long bad = 0;
    for (int r = 0; r < LIMIT_ROUNDS || !atomic_load(&limit_released); r++) {
        int i = (int)(rand_r(&seed) % LIMIT_SLOTS);
        if (slot[i] != NULL) {
            bad += !touched(slot[i], len[i], (unsigned char)(i ^ len[i]));
            spanalloc_free(slot[i]);
        }
        len[i] = 64 * 1024 + (size_t)(rand_r(&seed) % (2 * 1024 * 1024 - 64 * 1024));
        slot[i] = spanalloc_malloc(len[i]);
        if (slot[i] == NULL)
            return (void *)-1L; /* the limit made an allocation fail */
        touch(slot[i], len[i], (unsigned char)(i ^ len[i]));
    }
    for (int i = 0; i < LIMIT_SLOTS; i++) {
        bad += !touched(slot[i], len[i], (unsigned char)(i ^ len[i]));
        spanalloc_free(slot[i]);
    }
    return (void *)bad;
}

static int child_threads(void)
{
    struct mem_stats before = stats_now();
    pthread_t t[LIMIT_THREADS];
    for (uintptr_t i = 0; i < LIMIT_THREADS; i++)
        CHILD_CHECK(pthread_create(&t[i], NULL, limit_worker, (void *)(i + 1)) == 0, "thread %d",
                    (int)i);
    /* Polling the release counter, with a deadline (the workers stop at it
     * too, and the check below then fails). */
    uint64_t start = now_ms();
    while (stats_now().released_total == before.released_total &&
           now_ms() - start < LIMIT_DEADLINE_MS)
        usleep(20 * 1000);
    atomic_store(&limit_released, true);
    long failed = 0, bad = 0;
    for (int i = 0; i < LIMIT_THREADS; i++) {
        void *r;
        CHILD_CHECK(pthread_join(t[i], &r) == 0, "join");
        if ((long)r < 0)
            failed++;
        else
            bad += (long)r;
    }
    struct mem_stats st = stats_now();
    printf("threads with a failed allocation %ld, changed blocks %ld, released %llu MiB, "
           "heap_sys %llu MiB\n", failed, bad,
           (unsigned long long)((st.released_total - before.released_total) / MiB),
           (unsigned long long)(st.heap_sys / MiB));
    CHILD_CHECK(failed == 0 && bad == 0, "allocation failed or memory changed");
    CHILD_CHECK(invariants_hold(&st), "invariants");
    CHILD_CHECK(st.released_total > before.released_total,
                "the limit released nothing in %d s", LIMIT_DEADLINE_MS / 1000);
    return 0;
}

/* ------------------------------------------------------------- parent -- */

/* Run this binary as `scenario` with extra environment; capture its output. */
static int run_child(const char *scenario, const char *const env[], char *out, size_t outlen)
{
    int pipefd[2];
    assert_int_equal(pipe(pipefd), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(pipefd[1], 1);
        dup2(pipefd[1], 2);
        close(pipefd[0]);
        unsetenv("SPANALLOC_MEMORY_LIMIT");
        for (const char *const *e = env; *e; e++)
            putenv((char *)*e);
        execl(self_path, self_path, scenario, (char *)NULL);
        _exit(127);
    }
    close(pipefd[1]);
    size_t got = 0;
    ssize_t n;
    while (got < outlen - 1 && (n = read(pipefd[0], out + got, outlen - 1 - got)) > 0)
        got += (size_t)n;
    out[got] = '\0';
    close(pipefd[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static unsigned long long limit_read_from(const char *setting, char *out, size_t outlen)
{
    const char *env[] = {setting, NULL};
    assert_int_equal(run_child("limit", env, out, outlen), 0);
    const char *l = strstr(out, "limit=");
    assert_non_null(l);
    return strtoull(l + 6, NULL, 10);
}

static void the_variable_is_parsed_at_load(void **state)
{
    (void)state;
    static char out[4096];
    static const struct {
        const char *setting;
        unsigned long long bytes;
    } cases[] = {
        {"SPANALLOC_MEMORY_LIMIT=64M", 64ull << 20},
        {"SPANALLOC_MEMORY_LIMIT=64MiB", 64ull << 20},
        {"SPANALLOC_MEMORY_LIMIT=65536K", 64ull << 20},
        {"SPANALLOC_MEMORY_LIMIT=3G", 3ull << 30},
        {"SPANALLOC_MEMORY_LIMIT=2Ti", 2ull << 40},
        {"SPANALLOC_MEMORY_LIMIT=123456789", 123456789ull},
        {"SPANALLOC_MEMORY_LIMIT=0", 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        unsigned long long got = limit_read_from(cases[i].setting, out, sizeof(out));
        if (got != cases[i].bytes)
            fail_msg("%s read as %llu, want %llu", cases[i].setting, got, cases[i].bytes);
        assert_null(strstr(out, "ignoring"));
    }
    /* Bad values: reported once on stderr, no limit. */
    static const char *const bad[] = {"SPANALLOC_MEMORY_LIMIT=lots", "SPANALLOC_MEMORY_LIMIT=64X",
                                      "SPANALLOC_MEMORY_LIMIT=-1",
                                      "SPANALLOC_MEMORY_LIMIT=99999999999T"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(limit_read_from(bad[i], out, sizeof(out)), 0);
        char want[128];
        snprintf(want, sizeof(want), "spanalloc: ignoring %s (see docs/tuning.md)\n", bad[i]);
        if (strstr(out, want) == NULL)
            fail_msg("for %s the child printed: %s", bad[i], out);
    }
    /* Unset: no limit. */
    const char *env[] = {NULL};
    assert_int_equal(run_child("limit", env, out, sizeof(out)), 0);
    assert_non_null(strstr(out, "limit=0\n"));
}

static void grow_scenario(const char *limit_setting, unsigned long long *idle_before,
                          unsigned long long *idle_after, unsigned long long *used_after)
{
    static char out[4096];
    const char *env[] = {"SPANALLOC_SCAVENGER=off", "SPANALLOC_IDLE_LIMIT=off",
                         "SPANALLOC_SCAVENGE_IDLE=1h", limit_setting, NULL};
    int rc = run_child("grow", env, out, sizeof(out));
    print_message("%s: %s", limit_setting ? limit_setting : "no limit", out);
    assert_int_equal(rc, 0);
    unsigned long long released;
    const char *l = strstr(out, "idle_before=");
    assert_non_null(l);
    assert_int_equal(sscanf(l, "idle_before=%llu idle_after=%llu used_after=%llu released=%llu",
                            idle_before, idle_after, used_after, &released), 4);
}

/* The scavenger is off: the growth itself releases the idle 48 MiB. */
static void growth_past_the_limit_releases_idle_memory(void **state)
{
    (void)state;
    unsigned long long before, after, used_after;
    grow_scenario(NULL, &before, &after, &used_after);
    assert_true(before >= 47 * MiB);
    assert_true(after >= 47 * MiB); /* without a limit nothing goes back */
    grow_scenario("SPANALLOC_MEMORY_LIMIT=64M", &before, &after, &used_after);
    assert_true(before >= 47 * MiB);
    assert_true(after < MiB); /* 80 + 48 MiB is over 64: every idle page went back */
}

static void the_scavenger_enforces_the_limit(void **state)
{
    (void)state;
    static char out[4096];
    /* At the default sampling rate: the heap profile's records (other_sys,
     * ~1.2 MiB here, which the limit cannot release) count against the
     * limit, so the scavenger must release that much more heap. */
    const char *env[] = {"SPANALLOC_MEMORY_LIMIT=64M", "SPANALLOC_IDLE_LIMIT=off",
                         "SPANALLOC_SCAVENGE_IDLE=1h", NULL};
    int rc = run_child("scavenger", env, out, sizeof(out));
    print_message("%s", out);
    assert_int_equal(rc, 0);
}

static void threads_never_fail_because_of_the_limit(void **state)
{
    (void)state;
    static char out[4096];
    const char *env[] = {"SPANALLOC_MEMORY_LIMIT=32M", "SPANALLOC_IDLE_LIMIT=off",
                         "SPANALLOC_SCAVENGE_IDLE=1h", NULL};
    int rc = run_child("threads", env, out, sizeof(out));
    print_message("%s", out);
    assert_int_equal(rc, 0);
}

int main(int argc, char **argv)
{
    ssize_t n = readlink("/proc/self/exe", self_path, sizeof(self_path) - 1);
    self_path[n > 0 ? n : 0] = '\0';
    if (argc == 2 && strcmp(argv[1], "limit") == 0)
        return child_limit();
    if (argc == 2 && strcmp(argv[1], "grow") == 0)
        return child_grow();
    if (argc == 2 && strcmp(argv[1], "scavenger") == 0)
        return child_scavenger();
    if (argc == 2 && strcmp(argv[1], "threads") == 0)
        return child_threads();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(the_variable_is_parsed_at_load),
        cmocka_unit_test(growth_past_the_limit_releases_idle_memory),
        cmocka_unit_test(the_scavenger_enforces_the_limit),
        cmocka_unit_test(threads_never_fail_because_of_the_limit),
    };
    return cmocka_run_group_tests_name("memlimit", tests, NULL, NULL);
}
