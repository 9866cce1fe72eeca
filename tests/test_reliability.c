/* Reliability round two (issue 14): the environment of a secure-execution
 * process, sizes no machine can back, calloc's known-zero memory, corruption
 * found under a class lock, pthread_setspecific failing.
 *
 * The secure-execution test runs this binary again (/proc/self/exe, or
 * through $SPANALLOC_TEST_EXEC_WRAPPER, e.g. qemu-aarch64 for the arm64
 * pass) with a real uid other than its effective uid: the kernel then sets
 * AT_SECURE, as for a setuid program.  It needs root, which the CI has. */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysinfo.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test_helpers.h"
#include "internal.h"
#include "percpu.h"

#define GIB ((size_t)1 << 30)
#define TIB ((size_t)1 << 40)

/* ---- AT_SECURE: the options that write files or print are ignored */

static char secure_dir[] = "/tmp/spanalloc-secure-XXXXXX";

/* Run in the re-executed process: exit 0 iff no option took effect. */
static int secure_child_main(void)
{
    if (!sa_secure_exec)
        return 10;
    if (sa_options.stats_file[0] != '\0')
        return 11;
    if (sa_options.stats_at_exit != -1 || sa_options.trace)
        return 12;
    if (sa_options.scavenge_idle_ns != 5ull * 60 * 1000000000ull)
        return 13; /* every option comes from secure_getenv */
    void *p = spanalloc_malloc(100 << 20); /* heap growth: the writer would start */
    if (p == NULL)
        return 14;
    spanalloc_free(p);
    return 0;
}

/* Re-execute this binary with the options set, with real uid `ruid` and
 * effective uid 0; returns its exit status, its stderr in err. */
static int run_child(uid_t ruid, char *err, size_t errlen)
{
    char path[sizeof(secure_dir) + 16];
    snprintf(path, sizeof(path), "%s/snap.json", secure_dir);
    int pipefd[2];
    assert_int_equal(pipe(pipefd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(pipefd[1], STDERR_FILENO);
        close(pipefd[0]);
        setenv("SPANALLOC_STATS_FILE", path, 1);
        setenv("SPANALLOC_STATS", "text", 1);
        setenv("SPANALLOC_TRACE", "1", 1);
        setenv("SPANALLOC_SCAVENGE_IDLE", "1s", 1);
        setenv("SPANALLOC_STATS_INTERVAL", "bad", 1); /* would print a warning */
        if (setresuid(ruid, 0, 0) != 0)
            _exit(20);
        char self[4096];
        ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
        if (n <= 0)
            _exit(21);
        self[n] = '\0';
        const char *wrapper = getenv("SPANALLOC_TEST_EXEC_WRAPPER");
        if (wrapper != NULL && *wrapper != '\0')
            execl(wrapper, wrapper, self, "--secure-child", (char *)NULL);
        else
            execl(self, self, "--secure-child", (char *)NULL);
        _exit(22);
    }
    close(pipefd[1]);
    size_t got = 0;
    ssize_t n;
    while ((n = read(pipefd[0], err + got, errlen - 1 - got)) > 0)
        got += (size_t)n;
    err[got] = '\0';
    close(pipefd[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    return WEXITSTATUS(status);
}

static void secure_exec_ignores_the_environment(void **state)
{
    (void)state;
    assert_int_equal(geteuid(), 0); /* the CI runs as root */
    assert_non_null(mkdtemp(secure_dir));
    char path[sizeof(secure_dir) + 16];
    snprintf(path, sizeof(path), "%s/snap.json", secure_dir);
    char err[4096];

    /* Control: the same run without AT_SECURE takes the options (so the
     * child's checks can fail), and prints the bad-value warning. */
    assert_int_not_equal(run_child(0, err, sizeof(err)), 0);
    assert_non_null(strstr(err, "SPANALLOC_STATS_INTERVAL"));
    unlink(path);

    /* A real uid other than the effective one: AT_SECURE. */
    int rc = run_child(65534, err, sizeof(err));
    assert_int_equal(rc, 0);
    assert_string_equal(err, ""); /* nothing printed: no warning, no stats */
    struct stat st;
    assert_int_equal(stat(path, &st), -1); /* no snapshot file written */
    assert_int_equal(errno, ENOENT);
    rmdir(secure_dir);
}

/* ---- Sizes no machine can back: NULL + ENOMEM at once, nothing touched */

/* More than RAM + swap: the kernel's default overcommit rule refuses it. */
static size_t beyond_machine(void)
{
    struct sysinfo si;
    assert_int_equal(sysinfo(&si), 0);
    uint64_t total = ((uint64_t)si.totalram + si.totalswap) * si.mem_unit;
    return (size_t)(total + total / 2 + GIB);
}

struct footprint {
    uint64_t heap_sys, other_sys, mspan_sys, heap_inuse;
};

static struct footprint footprint_now(void)
{
    struct mem_stats st = stats_now();
    return (struct footprint){st.heap_sys, st.other_sys, st.mspan_sys, st.heap_inuse};
}

static void assert_untouched(struct footprint before)
{
    struct footprint after = footprint_now();
    assert_int_equal(after.heap_sys, before.heap_sys);
    assert_int_equal(after.other_sys, before.other_sys); /* no page-map leaf */
    assert_int_equal(after.mspan_sys, before.mspan_sys);
    assert_int_equal(after.heap_inuse, before.heap_inuse);
}

static void huge_requests_fail_at_once(void **state)
{
    (void)state;
    size_t sizes[] = {beyond_machine(), 1000 * GIB, 20 * TIB};
    void *keep = spanalloc_malloc(100);
    assert_non_null(keep);
    memset(keep, 0x5c, 100);
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        size_t n = sizes[i];
        if (n < beyond_machine())
            continue; /* a machine with that much memory would back it */
        struct footprint before = footprint_now();
        errno = 0;
        assert_null(spanalloc_malloc(n));
        assert_int_equal(errno, ENOMEM);
        errno = 0;
        assert_null(spanalloc_calloc(n / GIB, GIB));
        assert_int_equal(errno, ENOMEM);
        errno = 0;
        assert_null(spanalloc_aligned_alloc(1 << 20, n));
        assert_int_equal(errno, ENOMEM);
        void *out = keep;
        assert_int_equal(spanalloc_posix_memalign(&out, 4096, n), ENOMEM);
        assert_ptr_equal(out, keep); /* never written on failure */
        errno = 0;
        assert_null(spanalloc_realloc(keep, n));
        assert_int_equal(errno, ENOMEM);
        errno = 0;
        assert_null(spanalloc_reallocarray(keep, n / GIB, GIB));
        assert_int_equal(errno, ENOMEM);
        assert_untouched(before);
        for (int b = 0; b < 100; b++) /* the old block is intact */
            assert_int_equal(((unsigned char *)keep)[b], 0x5c);
    }
    spanalloc_free(keep);
    /* Requests the machine can back still succeed. */
    char *big = spanalloc_malloc(256 << 20);
    assert_non_null(big);
    big[0] = big[(256 << 20) - 1] = 1;
    spanalloc_free(big);
}

/* ---- calloc trusts "known zero" only where the kernel guarantees it */

/* Fill n blocks of `size` with 0xAA, free them, release everything, then
 * calloc n blocks again: every byte must read zero, and at least one new
 * block must lie where the old data was (or the test proves nothing). */
static void calloc_after_release_reads_zero(size_t size, int n)
{
    enum { MAX = 64 };
    assert_true(n <= MAX);
    char *old[MAX];
    uintptr_t lo = UINTPTR_MAX, hi = 0;
    for (int i = 0; i < n; i++) {
        old[i] = spanalloc_malloc(size);
        assert_non_null(old[i]);
        memset(old[i], 0xAA, size);
        lo = (uintptr_t)old[i] < lo ? (uintptr_t)old[i] : lo;
        hi = (uintptr_t)old[i] + size > hi ? (uintptr_t)old[i] + size : hi;
    }
    for (int i = 0; i < n; i++)
        spanalloc_free(old[i]);
    free_os_memory();
    /* Take blocks until one lands on the old data: the heap reuses free
     * memory before it grows, so that happens within heap_sys / size. */
    size_t limit = stats_now().heap_sys / size + 1, taken = 0;
    char **fresh = malloc(limit * sizeof(*fresh));
    assert_non_null(fresh);
    bool overlaps = false;
    while (!overlaps && taken < limit) {
        char *q = spanalloc_calloc(1, size);
        assert_non_null(q);
        fresh[taken++] = q;
        overlaps = (uintptr_t)q < hi && (uintptr_t)q + size > lo;
        size_t bad = 0;
        for (size_t b = 0; b < size; b++)
            bad += q[b] != 0;
        assert_int_equal(bad, 0);
    }
    assert_true(overlaps);
    for (size_t i = 0; i < taken; i++)
        spanalloc_free(fresh[i]);
    free(fresh);
}

/* MADV_FREE leaves the old contents until the kernel needs the memory. */
static void calloc_after_madv_free_release(void **state)
{
    (void)state;
    /* atomic: the scavenger may be releasing (os.c reads it so) */
    __atomic_store_n(&sa_options.madvise_free, true, __ATOMIC_RELAXED);
    calloc_after_release_reads_zero(1 << 20, 32);
    calloc_after_release_reads_zero((1 << 20) + 3 * 8192, 16);
    __atomic_store_n(&sa_options.madvise_free, false, __ATOMIC_RELAXED);
}

/* With OS pages bigger than spanalloc's 8 KiB pages, a release leaves the
 * partial OS pages at both ends of a range resident, old data and all. */
static void calloc_with_large_os_pages(void **state)
{
    (void)state;
    const size_t pages[] = {16384, 65536};
    for (int i = 0; i < 2; i++) {
        __atomic_store_n(&sa_os_page_size_override, pages[i], __ATOMIC_RELAXED);
        calloc_after_release_reads_zero((1 << 20) + 8192, 32);
        calloc_after_release_reads_zero(5 * 8192, 64);
        calloc_after_release_reads_zero(100 << 10, 64);
        __atomic_store_n(&sa_os_page_size_override, 0, __ATOMIC_RELAXED);
    }
}

/* The DONTNEED default still trusts fresh and released memory: no memset
 * needed (needzero is clear), which is what keeps calloc of big blocks cheap. */
static void calloc_trusts_dontneed_release(void **state)
{
    (void)state;
    char *p = spanalloc_malloc(8 << 20);
    assert_non_null(p);
    memset(p, 0xAA, 8 << 20);
    spanalloc_free(p);
    free_os_memory();
    char *q = spanalloc_malloc(8 << 20);
    assert_non_null(q);
    assert_int_equal(sa_pagemap_lookup((uintptr_t)q)->needzero, 0);
    spanalloc_free(q);
}

/* ---- Corruption found under an mcentral lock */

/* Run fn in a child with the default crash actions and a 20 s alarm;
 * returns its wait status. */
static int in_child(void (*fn)(void))
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        signal(SIGABRT, SIG_DFL);
        signal(SIGSEGV, SIG_DFL);
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, STDERR_FILENO); /* the report is expected */
        alarm(20);
        fn();
        _exit(0);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return status;
}

static void assert_aborted(int status)
{
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGABRT); /* not SIGALRM: no deadlock */
}

/* A batch parked in a transfer slot whose head is written after free: the
 * refill that takes it reports instead of following the forged link. */
static void parked_batch_written(void)
{
    unsigned cls = sa_size_class(256);
    void *head;
    uint32_t got = sa_mcentral_fill(cls, 8, &head);
    if (got != 8)
        _exit(5);
    sa_mcentral_release_batch(cls, head, got);
    ((uintptr_t *)head)[0] ^= 0x40; /* the link word, as a dangling write would */
    void *again;
    sa_mcentral_fill(cls, 8, &again);
    _exit(0); /* followed the corrupted batch: the bug */
}

static void refill_checks_the_parked_batch_seal(void **state)
{
    (void)state;
    assert_aborted(in_child(parked_batch_written));
}

/* A SIGABRT handler that allocates from the class whose lock the report was
 * found under must not deadlock: it dies of a second report. */
static unsigned handler_cls;

static void allocating_abort_handler(int sig)
{
    (void)sig;
    void *x;
    sa_mcentral_fill(handler_cls, 1, &x);
    _exit(42);
}

static void corrupted_span_freelist(void)
{
    handler_cls = sa_size_class(512);
    void *b[4];
    for (int i = 0; i < 4; i++)
        if (sa_mcentral_fill(handler_cls, 1, &b[i]) != 1)
            _exit(5);
    for (int i = 0; i < 3; i++) /* back into their span; b[3] keeps it in use */
        sa_mcentral_release(handler_cls, b[i]);
    ((uintptr_t *)b[2])[1] ^= 1; /* the freelist head's mark */
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = allocating_abort_handler;
    sa.sa_flags = SA_RESETHAND; /* the handler's own abort then kills */
    sigaction(SIGABRT, &sa, NULL);
    void *x;
    sa_mcentral_fill(handler_cls, 1, &x);
    _exit(0);
}

static void report_drops_the_class_lock(void **state)
{
    (void)state;
    assert_aborted(in_child(corrupted_span_freelist));
}

/* ---- pthread_setspecific failing: the thread goes without a cache rather
 * than keep one that its exit would never flush. */
static _Atomic int setspecific_calls;

static int failing_setspecific(pthread_key_t key, const void *value)
{
    (void)key;
    (void)value;
    setspecific_calls++;
    return ENOMEM;
}

static void *churn_and_exit(void *arg)
{
    (void)arg;
    void *blocks[200];
    for (int i = 0; i < 200; i++)
        blocks[i] = spanalloc_malloc(48);
    for (int i = 0; i < 200; i++)
        spanalloc_free(blocks[i]);
    return NULL;
}

static void setspecific_failure_leaves_no_cache_behind(void **state)
{
    (void)state;
    /* Per-CPU mode makes no thread cache (the thread attaches to the CPU
     * slabs, which may set one up for a CPU not used before: not counted
     * here), nor does memcheck (no caches at all); the fallback (the
     * percpuoff pass) must have tried and failed. */
    bool no_thread_cache = sa_percpu_enabled() || sa_on_valgrind; /* memcheck: no caches */
    struct mem_stats before = stats_now();
    uint64_t percpu_before = sa_percpu_sys_bytes();
    setspecific_calls = 0;
    sa_setspecific_hook = failing_setspecific;
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, churn_and_exit, NULL), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    sa_setspecific_hook = NULL;
    struct mem_stats after = stats_now();
    if (no_thread_cache)
        assert_int_equal(setspecific_calls, 0);
    else
        assert_true(setspecific_calls > 0);
    assert_int_equal(after.mcache_inuse - (sa_percpu_sys_bytes() - percpu_before),
                     before.mcache_inuse);
    assert_int_equal(after.heap_objects, before.heap_objects);
    assert_int_equal(after.heap_alloc, before.heap_alloc);
    assert_stats_invariants(&after);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--secure-child") == 0)
        return secure_child_main();
    /* The tests that fork run while this process has no other thread (the
     * scavenger starts at the first heap growth, in huge_requests): qemu-user,
     * which runs this suite for arm64, cannot fork a threaded guest. */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(refill_checks_the_parked_batch_seal),
        cmocka_unit_test(report_drops_the_class_lock),
        cmocka_unit_test(secure_exec_ignores_the_environment),
        cmocka_unit_test(huge_requests_fail_at_once),
        cmocka_unit_test(calloc_trusts_dontneed_release),
        cmocka_unit_test(calloc_after_madv_free_release),
        cmocka_unit_test(calloc_with_large_os_pages),
        cmocka_unit_test(setspecific_failure_leaves_no_cache_behind),
    };
    return cmocka_run_group_tests_name("reliability", tests, NULL, NULL);
}
