/*
 * fork() and the allocator, through the prefixed API.
 *
 * 1. Fork, 20 times, while three threads keep allocating and freeing: the
 *    child (a single thread) must find every allocator lock usable, allocate
 *    and free blocks of every size with their contents intact, see the stats
 *    invariants hold (the caches of the threads that did not survive the fork
 *    are reclaimed), release memory, start a thread of its own, and exit 0.
 * 2. A block allocated before fork can be freed in the child and, separately,
 *    in the parent.
 * 3. Fork from a thread other than the main one.
 * 0. Fork while another thread is inside the first-time initialisation.
 * 4. Fork, 300 times, while another thread keeps releasing a large idle
 *    heap: nothing it had detached is lost to the child.
 * 5. Fork while a thread holds a batch between a class and its cache (a
 *    refill or a flush, held there by a hook), and 300 times while threads
 *    refill and flush: every block out of its span is held by someone.
 *
 * The child never returns into cmocka: it checks with its own macro and
 * reports through its exit status.  The parent waits with a 30 s alarm as a
 * guard against a child that hangs on a lock held at fork time.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_helpers.h"
#include "internal.h"

/* mcache_inuse without the CPU caches (set up as threads first run on a
 * CPU, and kept): what the threads' own caches hold, 0 in per-CPU mode. */
uint64_t sa_percpu_sys_bytes(void);
#define THREAD_CACHES_INUSE(st) ((st).mcache_inuse - sa_percpu_sys_bytes())

#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define UNDER_VALGRIND() (RUNNING_ON_VALGRIND != 0)
#else
#define UNDER_VALGRIND() 0
#endif

/* ---- Pattern: byte i depends only on (seed, i) */

static inline uint64_t pattern_word(uint64_t seed, size_t i)
{
    uint64_t x = (seed + 1) * 0x9E3779B97F4A7C15ull ^ (uint64_t)(i >> 3) * 0xD6E8FEB86659FD93ull;
    return x ^ (x >> 29);
}

static void fill(void *p, size_t n, uint64_t seed)
{
    unsigned char *b = p;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w = pattern_word(seed, i);
        memcpy(b + i, &w, 8);
    }
    for (; i < n; i++)
        b[i] = (unsigned char)(pattern_word(seed, i) >> ((i & 7) * 8));
}

static bool intact(const void *p, size_t n, uint64_t seed)
{
    const unsigned char *b = p;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w = pattern_word(seed, i), got;
        memcpy(&got, b + i, 8);
        if (got != w)
            return false;
    }
    for (; i < n; i++)
        if (b[i] != (unsigned char)(pattern_word(seed, i) >> ((i & 7) * 8)))
            return false;
    return true;
}

/* ---- In the child: no cmocka, a message on stderr and exit status 1 */

static void child_fail(int line, const char *what, uint64_t a, uint64_t b)
{
    char msg[512];
    int n = snprintf(msg, sizeof(msg), "fork child %d: check failed at line %d: %s (%llu, %llu)\n",
                     (int)getpid(), line, what, (unsigned long long)a, (unsigned long long)b);
    if (n > 0) {
        ssize_t ignored = write(STDERR_FILENO, msg, (size_t)n);
        (void)ignored;
    }
    _exit(1);
}
/* cmocka catches SIGSEGV and friends to go on with the next test.  A child
 * that crashed (even inside fork(), in the allocator's atfork handler) would
 * then run the rest of the suite: fork with the default actions, so that a
 * crash kills the child and the parent sees the signal. */
static const int crash_signals[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGSYS};
enum { NUM_CRASH_SIGNALS = sizeof(crash_signals) / sizeof(crash_signals[0]) };

static pid_t fork_plain(void)
{
    struct sigaction dfl, saved[NUM_CRASH_SIGNALS];
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    fflush(NULL);
    for (int i = 0; i < NUM_CRASH_SIGNALS; i++)
        sigaction(crash_signals[i], &dfl, &saved[i]);
    pid_t pid = fork();
    if (pid != 0)
        for (int i = 0; i < NUM_CRASH_SIGNALS; i++)
            sigaction(crash_signals[i], &saved[i], NULL);
    return pid;
}

#define CHILD_CHECK(cond)                      \
    do {                                       \
        if (!(cond))                           \
            child_fail(__LINE__, #cond, 0, 0); \
    } while (0)
#define CHILD_CHECK_EQ(a, b)                                                        \
    do {                                                                            \
        uint64_t a_ = (a), b_ = (b);                                                \
        if (a_ != b_)                                                               \
            child_fail(__LINE__, #a " == " #b, a_, b_);                             \
    } while (0)

static void child_check_invariants(const struct mem_stats *st)
{
    CHILD_CHECK_EQ(st->heap_sys, st->heap_idle + st->heap_inuse);
    CHILD_CHECK(st->heap_released <= st->heap_idle);
    CHILD_CHECK(st->heap_alloc <= st->heap_inuse);
    CHILD_CHECK_EQ(st->alloc, st->heap_alloc);
    CHILD_CHECK_EQ(st->heap_objects, st->mallocs - st->frees);
    CHILD_CHECK_EQ(st->sys, st->heap_sys + st->mspan_sys + st->mcache_sys + st->other_sys);
    uint64_t m = 0, f = 0;
    for (int c = 1; c < SPANALLOC_NUM_SIZE_CLASSES; c++) {
        m += st->by_size[c].mallocs;
        f += st->by_size[c].frees;
    }
    CHILD_CHECK(m <= st->mallocs);
    CHILD_CHECK(f <= st->frees);
}

/* Every block out of its span (sa_mcentral_objects_out) is allocated (the
 * class's mallocs - frees) or in flight in a thread the fork left behind:
 * at most one each (a malloc's first block of a refill, not yet counted).
 * The child's caches must be empty (after free_os_memory()); a batch lost
 * in a dead thread's hands, or left in its cache, shows as more. */
static void child_check_blocks_accounted(uint64_t in_flight)
{
    struct mem_stats st;
    read_mem_stats(&st);
    uint64_t unheld = 0;
    for (unsigned c = 1; c < SA_NUM_CLASSES; c++) {
        uint64_t out = sa_mcentral_objects_out(c);
        uint64_t held = st.by_size[c].mallocs - st.by_size[c].frees;
        if (out > held)
            unheld += out - held;
    }
    if (unheld > in_flight)
        child_fail(__LINE__, "blocks out of their spans that no one holds", unheld, in_flight);
}

/* The threads a test starts must not take the SIGALRM meant for the main
 * thread (see on_alarm): block it while they are created; the caller
 * restores `old` after. */
static void block_alarm(sigset_t *old)
{
    sigset_t alrm;
    sigemptyset(&alrm);
    sigaddset(&alrm, SIGALRM);
    pthread_sigmask(SIG_BLOCK, &alrm, old);
}

/* Wait for the child, at most 30 s (SIGALRM is blocked in every other
 * thread, so it interrupts this waitpid).  Returns the wait status, or -1
 * after killing a child that hung. */
static void on_alarm(int sig)
{
    (void)sig;
}

static int wait_child(pid_t pid)
{
    struct sigaction sa, old;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_alarm; /* no SA_RESTART: waitpid returns EINTR */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, &old);
    alarm(30);
    int status = 0;
    pid_t r = waitpid(pid, &status, 0);
    int saved = errno;
    alarm(0);
    sigaction(SIGALRM, &old, NULL);
    if (r == pid)
        return status;
    print_error("waitpid: %s; killing child %d\n", strerror(saved), (int)pid);
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return -1;
}

static void assert_child_succeeded(int status)
{
    assert_int_not_equal(status, -1); /* hung */
    if (WIFSIGNALED(status))
        fail_msg("child killed by signal %d", WTERMSIG(status));
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* ---- Busy threads */

enum { NBUSY = 3, RING = 64 };
static atomic_bool stop_busy;
static atomic_ulong busy_ops;
static atomic_int busy_failures;
static atomic_bool busy_light; /* small malloc/free only, no pattern */
static atomic_int busy_started;

static void *busy(void *arg)
{
    atomic_fetch_add(&busy_started, 1);
    unsigned rng = (unsigned)(uintptr_t)arg;
    void *ring[RING] = {0};
    size_t sizes[RING] = {0};
    uint64_t seeds[RING] = {0};
    uint64_t serial = 0;
    if (atomic_load(&busy_light)) {
        while (!atomic_load_explicit(&stop_busy, memory_order_relaxed)) {
            unsigned i = (unsigned)rand_r(&rng) % RING;
            spanalloc_free(ring[i]);
            ring[i] = spanalloc_malloc(1 + (size_t)(rng & 511));
            if (ring[i] == NULL)
                atomic_fetch_add(&busy_failures, 1);
            atomic_fetch_add_explicit(&busy_ops, 1, memory_order_relaxed);
        }
    }
    while (!atomic_load_explicit(&stop_busy, memory_order_relaxed)) {
        unsigned i = (unsigned)rand_r(&rng) % RING;
        if (ring[i] != NULL) {
            /* Head and tail carry the pattern: cheap, so the thread spends
             * its time in the allocator, where fork must not catch it out. */
            size_t n = sizes[i] < 16 ? sizes[i] : 16;
            if (!intact(ring[i], n, seeds[i]))
                atomic_fetch_add(&busy_failures, 1);
            spanalloc_free(ring[i]);
            ring[i] = NULL;
        }
        unsigned r = (unsigned)rand_r(&rng) % 64;
        size_t size = r == 0 ? 32769 + (size_t)rand_r(&rng) % 200000
                    : r < 8  ? 1 + (size_t)rand_r(&rng) % 32768
                             : 1 + (size_t)rand_r(&rng) % 512;
        void *p = (r & 3) == 1 ? spanalloc_calloc(1, size) : spanalloc_malloc(size);
        if (p == NULL) {
            atomic_fetch_add(&busy_failures, 1);
            continue;
        }
        seeds[i] = serial++;
        sizes[i] = size;
        fill(p, size < 16 ? size : 16, seeds[i]);
        ring[i] = p;
        atomic_fetch_add_explicit(&busy_ops, 1, memory_order_relaxed);
    }
    for (int i = 0; i < RING; i++)
        spanalloc_free(ring[i]);
    return NULL;
}

static void start_busy(pthread_t *t)
{
    /* The busy threads must not take the parent's SIGALRM. */
    sigset_t old;
    block_alarm(&old);
    atomic_store(&stop_busy, false);
    atomic_store(&busy_ops, 0);
    atomic_store(&busy_started, 0);
    for (int i = 0; i < NBUSY; i++)
        assert_int_equal(pthread_create(&t[i], NULL, busy, (void *)(uintptr_t)(77 + i)), 0);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    /* No fork before every thread runs its own code: a thread still being
     * started is inside libc (and, in the sanitizer builds, inside ASan's
     * allocator: its thread start calls calloc under a lock that ASan does
     * not take across fork), so a fork then could leave the child a lock
     * held by a thread it does not have: the child's first pthread_create
     * hangs on it.  That is libc's and ASan's rule (only async-signal-safe
     * calls after fork of a threaded process), not the allocator's. */
    while (atomic_load(&busy_started) < NBUSY)
        sched_yield();
}

static void stop_and_join_busy(pthread_t *t)
{
    atomic_store(&stop_busy, true);
    for (int i = 0; i < NBUSY; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    assert_int_equal(atomic_load(&busy_failures), 0);
}

/* ---- What the child does */

static void *child_thread(void *arg)
{
    (void)arg;
    void *p[100];
    for (int i = 0; i < 100; i++) {
        p[i] = spanalloc_malloc(1 + (size_t)i * 331);
        if (p[i] == NULL)
            return (void *)1;
        fill(p[i], 1 + (size_t)i * 331, (uint64_t)i);
    }
    for (int i = 0; i < 100; i++) {
        if (!intact(p[i], 1 + (size_t)i * 331, (uint64_t)i))
            return (void *)1;
        spanalloc_free(p[i]);
    }
    return NULL;
}

enum { CHILD_BLOCKS = 600 };

static void child_work(uint64_t expect_mcache_inuse, int rounds)
{
    static void *blocks[CHILD_BLOCKS];
    static size_t sizes[CHILD_BLOCKS];
    struct mem_stats start;
    read_mem_stats(&start);
    child_check_invariants(&start);
    /* Only this thread's cache is live: the others' were taken back. */
    CHILD_CHECK_EQ(THREAD_CACHES_INUSE(start), expect_mcache_inuse);

    for (int round = 0; round < rounds; round++) {
        for (int i = 0; i < CHILD_BLOCKS; i++) {
            /* Every size class and a spread of large sizes. */
            size_t n = i < 66 ? start.by_size[i + 1].size
                     : i % 50 == 0 ? 32769 + (size_t)i * 1031
                                   : 1 + ((size_t)i * 2654435761u + (size_t)round) % 4096;
            void *p;
            switch (i % 4) {
            case 0: p = spanalloc_calloc(1, n); break;
            case 1: p = spanalloc_aligned_alloc((size_t)32 << (i % 8), n); break;
            default: p = spanalloc_malloc(n); break;
            }
            CHILD_CHECK(p != NULL);
            CHILD_CHECK(spanalloc_usable_size(p) >= n);
            if (i % 4 == 0) {
                const unsigned char *z = p;
                for (size_t k = 0; k < n; k++)
                    CHILD_CHECK(z[k] == 0);
            }
            fill(p, n, (uint64_t)i * 1000 + (uint64_t)round);
            blocks[i] = p;
            sizes[i] = n;
        }
        for (int i = 0; i < CHILD_BLOCKS; i += 3) {
            size_t n = sizes[i] * 2 + 1;
            void *q = spanalloc_realloc(blocks[i], n);
            CHILD_CHECK(q != NULL);
            CHILD_CHECK(intact(q, sizes[i], (uint64_t)i * 1000 + (uint64_t)round));
            fill(q, n, (uint64_t)i * 1000 + (uint64_t)round);
            blocks[i] = q;
            sizes[i] = n;
        }
        struct mem_stats mid;
        read_mem_stats(&mid);
        child_check_invariants(&mid);
        CHILD_CHECK_EQ(mid.heap_objects, start.heap_objects + CHILD_BLOCKS);
        for (int i = 0; i < CHILD_BLOCKS; i++) {
            CHILD_CHECK(intact(blocks[i], sizes[i], (uint64_t)i * 1000 + (uint64_t)round));
            spanalloc_free(blocks[i]);
        }
    }
    struct mem_stats end;
    read_mem_stats(&end);
    child_check_invariants(&end);
    CHILD_CHECK_EQ(end.heap_objects, start.heap_objects);
    CHILD_CHECK_EQ(end.heap_alloc, start.heap_alloc);

    /* A thread of the child's own. */
    pthread_t t;
    void *ret = (void *)1;
    CHILD_CHECK(pthread_create(&t, NULL, child_thread, NULL) == 0);
    CHILD_CHECK(pthread_join(t, &ret) == 0);
    CHILD_CHECK(ret == NULL);

    free_os_memory();
    struct mem_stats released;
    read_mem_stats(&released);
    child_check_invariants(&released);
    CHILD_CHECK_EQ(released.heap_objects, start.heap_objects);
    CHILD_CHECK_EQ(released.heap_released, released.heap_idle);
    CHILD_CHECK_EQ(THREAD_CACHES_INUSE(released), expect_mcache_inuse);
}

/* ---- 1 */

static void quick_child(uint64_t expect_mcache_inuse)
{
    struct mem_stats st;
    read_mem_stats(&st);
    child_check_invariants(&st);
    CHILD_CHECK_EQ(THREAD_CACHES_INUSE(st), expect_mcache_inuse);
    static const size_t sizes[] = {1, 24, 100, 500, 3000, 20000, 40000, 300000};
    void *p[8];
    for (int i = 0; i < 8; i++) {
        p[i] = spanalloc_malloc(sizes[i]);
        CHILD_CHECK(p[i] != NULL);
        fill(p[i], sizes[i], (uint64_t)i);
    }
    for (int i = 0; i < 8; i++) {
        CHILD_CHECK(intact(p[i], sizes[i], (uint64_t)i));
        spanalloc_free(p[i]);
    }
    struct mem_stats end;
    read_mem_stats(&end);
    child_check_invariants(&end);
    CHILD_CHECK_EQ(end.heap_objects, st.heap_objects);
}

/* Fork `forks` times while the busy threads run; each child runs
 * child_work (rounds > 0) or a quick check (rounds == 0).  The threads are
 * stopped before any assertion, so a failure leaves none running. */
static void fork_repeatedly(int forks, int rounds, unsigned long ops_between)
{
    spanalloc_free(spanalloc_malloc(1)); /* this thread has its cache */
    struct mem_stats base = stats_now();
    const uint64_t base_threads_inuse = THREAD_CACHES_INUSE(base);

    pthread_t t[NBUSY];
    start_busy(t);
    int status = 0, failed_at = 0;
    for (int f = 0; f < forks; f++) {
        /* Wait until the threads have done some work since the last fork. */
        unsigned long target = atomic_load(&busy_ops) + ops_between;
        while (atomic_load(&busy_ops) < target && atomic_load(&busy_failures) == 0)
            sched_yield();
        pid_t pid = fork_plain();
        if (pid == 0) {
            if (rounds > 0)
                child_work(base_threads_inuse, rounds);
            else
                quick_child(base_threads_inuse);
            _exit(0);
        }
        status = pid < 0 ? -1 : wait_child(pid);
        if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            failed_at = f + 1;
            break;
        }
    }
    stop_and_join_busy(t);
    if (failed_at != 0)
        print_error("fork %d of %d failed\n", failed_at, forks);
    assert_child_succeeded(status);

    struct mem_stats end = stats_now();
    assert_stats_invariants(&end);
    assert_int_equal(end.heap_objects, base.heap_objects);
    assert_int_equal(THREAD_CACHES_INUSE(end), base_threads_inuse);
}

/* Under memcheck these two are skipped: memcheck runs one thread at a time
 * (a 20-fork run took 12 minutes) and leak-checks every forked child, which
 * inherits the blocks the parent's other threads held with no thread left to
 * free them, so the child's exit status says "leak", not "allocator broken".
 * They run natively and under ASan+UBSan; the two single-thread fork tests
 * below run under memcheck too. */
#define SKIP_UNDER_MEMCHECK()                                                   \
    do {                                                                        \
        if (UNDER_VALGRIND()) {                                                 \
            print_message("skipped under valgrind: threads are serialised and " \
                          "forked children are leak-checked\n");                \
            skip();                                                             \
        }                                                                       \
    } while (0)

static void fork_while_threads_allocate(void **state)
{
    (void)state;
    SKIP_UNDER_MEMCHECK();
    atomic_store(&busy_light, false);
    fork_repeatedly(20, 2, 2000);
}

/* Many forks with a quick child, the threads doing nothing but small
 * malloc/free: fork catches them inside the cache fast path as often as
 * possible. */
static void many_quick_forks_while_threads_allocate(void **state)
{
    (void)state;
    SKIP_UNDER_MEMCHECK();
    atomic_store(&busy_light, true);
    fork_repeatedly(300, 0, 100);
}

/* ---- 2 */

static void block_from_before_fork_is_freed_on_both_sides(void **state)
{
    (void)state;
    static const size_t sizes[] = {100, 5000, 200000};
    enum { K = sizeof(sizes) / sizeof(sizes[0]) };
    struct mem_stats base = stats_now();
    void *p[K + 1];
    for (int k = 0; k < K; k++) {
        p[k] = spanalloc_malloc(sizes[k]);
        assert_non_null(p[k]);
        fill(p[k], sizes[k], (uint64_t)k);
    }
    p[K] = spanalloc_aligned_alloc(4096, 3000);
    assert_non_null(p[K]);
    fill(p[K], 3000, 99);
    struct mem_stats before = stats_now();
    assert_int_equal(before.heap_objects, base.heap_objects + K + 1);

    pid_t pid = fork_plain();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct mem_stats c0;
        read_mem_stats(&c0);
        child_check_invariants(&c0);
        CHILD_CHECK_EQ(c0.heap_objects, before.heap_objects);
        CHILD_CHECK_EQ(c0.heap_alloc, before.heap_alloc);
        for (int k = 0; k < K; k++) {
            CHILD_CHECK(intact(p[k], sizes[k], (uint64_t)k));
            spanalloc_free(p[k]);
        }
        CHILD_CHECK(intact(p[K], 3000, 99));
        spanalloc_free(p[K]);
        struct mem_stats c1;
        read_mem_stats(&c1);
        child_check_invariants(&c1);
        CHILD_CHECK_EQ(c1.heap_objects, base.heap_objects);
        CHILD_CHECK_EQ(c1.heap_alloc, base.heap_alloc);
        /* The freed memory serves the child again. */
        for (int k = 0; k < K; k++) {
            void *q = spanalloc_malloc(sizes[k]);
            CHILD_CHECK(q != NULL);
            fill(q, sizes[k], 1000 + (uint64_t)k);
            CHILD_CHECK(intact(q, sizes[k], 1000 + (uint64_t)k));
            spanalloc_free(q);
        }
        free_os_memory();
        read_mem_stats(&c1);
        child_check_invariants(&c1);
        _exit(0);
    }
    assert_child_succeeded(wait_child(pid));

    /* The child's frees did not touch the parent's blocks. */
    for (int k = 0; k < K; k++)
        assert_true(intact(p[k], sizes[k], (uint64_t)k));
    assert_true(intact(p[K], 3000, 99));
    struct mem_stats after_child = stats_now();
    assert_int_equal(after_child.heap_objects, before.heap_objects);
    for (int k = 0; k <= K; k++)
        spanalloc_free(p[k]);
    struct mem_stats end = stats_now();
    assert_stats_invariants(&end);
    assert_int_equal(end.heap_objects, base.heap_objects);
    assert_int_equal(end.heap_alloc, base.heap_alloc);
}

/* ---- 3 */

struct fork_from_thread {
    int status;
    uint64_t mcache_inuse_one; /* one live cache: the forking thread's */
};

static void *fork_from_thread(void *arg)
{
    struct fork_from_thread *r = arg;
    sigset_t alrm;
    sigemptyset(&alrm);
    sigaddset(&alrm, SIGALRM);
    pthread_sigmask(SIG_UNBLOCK, &alrm, NULL); /* wait_child's guard is for us */
    void *mine = spanalloc_malloc(300);
    fill(mine, 300, 5);
    pid_t pid = fork_plain();
    if (pid == 0) {
        CHILD_CHECK(intact(mine, 300, 5));
        spanalloc_free(mine);
        child_work(r->mcache_inuse_one, 1);
        _exit(0);
    }
    r->status = pid < 0 ? -1 : wait_child(pid);
    spanalloc_free(mine);
    return NULL;
}

static void fork_from_a_secondary_thread(void **state)
{
    (void)state;
    /* The main thread holds cached blocks of several classes. */
    void *held[200];
    for (int i = 0; i < 200; i++)
        held[i] = spanalloc_malloc(16 + (size_t)i * 8);
    for (int i = 0; i < 200; i++)
        spanalloc_free(held[i]);
    struct mem_stats base = stats_now();
    const uint64_t base_threads_inuse = THREAD_CACHES_INUSE(base);

    /* mcache_inuse counts live caches: the main thread's is one of them. */
    struct fork_from_thread r = {.status = -1, .mcache_inuse_one = base_threads_inuse};
    pthread_t t;
    sigset_t old;
    block_alarm(&old); /* the alarm is for the forking thread */
    assert_int_equal(pthread_create(&t, NULL, fork_from_thread, &r), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    assert_child_succeeded(r.status);
    struct mem_stats end = stats_now();
    assert_stats_invariants(&end);
    assert_int_equal(end.heap_objects, base.heap_objects);
}

/* ---- Fork while another thread runs the first-time initialisation (issue
 * 14).  Runs first: nothing may have been allocated when initialisation is
 * started over in a child (it draws new link keys). */

static int pause_pipe[2];

static void pause_in_init(void)
{
    char c;
    ssize_t got = read(pause_pipe[0], &c, 1);
    (void)got;
}

static void *init_thread(void *arg)
{
    (void)arg;
    sa_init_slow();
    return NULL;
}

static void fork_during_first_init(void **state)
{
    (void)state;
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        /* This process starts its initialisation again, held half-way. */
        atomic_store(&sa_init_state, 0);
        if (pipe(pause_pipe) != 0)
            _exit(90);
        sa_init_pause_hook = pause_in_init;
        pthread_t t;
        if (pthread_create(&t, NULL, init_thread, NULL) != 0)
            _exit(91);
        while (atomic_load(&sa_init_state) == 0)
            sched_yield(); /* until the thread is inside */
        pid_t g = fork();
        if (g == 0) {
            alarm(20); /* a child spinning forever dies of SIGALRM */
            sa_init_pause_hook = NULL;
            char *p = spanalloc_malloc(100);
            if (p == NULL || atomic_load(&sa_init_state) != 2)
                _exit(3);
            memset(p, 1, 100);
            spanalloc_free(p);
            _exit(0);
        }
        int st = 0;
        waitpid(g, &st, 0);
        ssize_t put = write(pause_pipe[1], "x", 1);
        (void)put;
        pthread_join(t, NULL);
        _exit(WIFEXITED(st) ? WEXITSTATUS(st) : 100 + WTERMSIG(st));
    }
    int status;
    assert_int_equal(waitpid(child, &status, 0), child);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0); /* 100 + SIGALRM: the child spun */
}

/* ---- Fork while another thread releases memory (issue 14).
 * The releasing thread detaches idle spans and releases them without the
 * heap lock; a fork in that window must not lose them: in every child,
 * after free_os_memory(), every idle byte is released (heap_idle ==
 * heap_released) and the invariants hold. */
static atomic_bool release_stop;

static atomic_ulong release_rounds;

/* Even rounds: one 48 MiB span.  Odd rounds: 48 spans of 1 MiB, freed
 * every other one first, so that the idle heap is many spans of different
 * ages that the release detaches one after the other. */
static void *release_loop(void *arg)
{
    (void)arg;
    enum { PIECES = 48 };
    const size_t len = 48u << 20;
    static char *piece[PIECES];
    for (unsigned round = 0; !atomic_load(&release_stop); round++) {
        size_t n = round % 2 == 0 ? 1 : PIECES;
        for (size_t k = 0; k < n; k++) {
            piece[k] = spanalloc_malloc(len / n);
            if (piece[k] == NULL)
                return (void *)1;
            for (size_t i = 0; i < len / n; i += 4096) /* make every page resident */
                piece[k][i] = 1;
        }
        for (size_t k = 0; k < n; k += 2)
            spanalloc_free(piece[k]);
        for (size_t k = 1; k < n; k += 2)
            spanalloc_free(piece[k]);
        free_os_memory();
        atomic_fetch_add(&release_rounds, 1);
    }
    return NULL;
}

static void fork_while_another_thread_releases(void **state)
{
    (void)state;
    SKIP_UNDER_MEMCHECK();
    atomic_store(&release_stop, false);
    sigset_t old;
    block_alarm(&old);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, release_loop, NULL), 0);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    int failures = 0, forks = 300;
    for (int i = 0; i < forks; i++) {
        while (atomic_load(&release_rounds) == 0)
            sched_yield(); /* the heap is large once, before the first fork */
        pid_t pid = fork_plain();
        assert_true(pid >= 0);
        if (pid == 0) {
            free_os_memory();
            struct mem_stats st;
            read_mem_stats(&st);
            child_check_invariants(&st);
            CHILD_CHECK_EQ(st.heap_idle, st.heap_released);
            child_check_blocks_accounted(1);
            _exit(0);
        }
        int status = wait_child(pid);
        failures += !(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    atomic_store(&release_stop, true);
    void *ret = NULL;
    assert_int_equal(pthread_join(t, &ret), 0);
    assert_null(ret);
    assert_int_equal(failures, 0);
    free_os_memory();
    struct mem_stats end = stats_now();
    assert_stats_invariants(&end);
    assert_int_equal(end.heap_idle, end.heap_released);
}

static void unhook_chain(void)
{
    sa_mcentral_chain_hook = NULL;
}

static void unhook_move(void)
{
    sa_mcentral_move_hook = NULL;
}

/* Start a thread of a hook test.  If that fails, undo what the test set up
 * before failing (the signal mask, a paused thread's wake-up, the hook), so
 * the tests after it do not hang on it. */
static void start_hooked(pthread_t *t, void *(*fn)(void *), void *arg, const sigset_t *old,
                         int wake_fd, void (*unhook)(void))
{
    int e = pthread_create(t, NULL, fn, arg);
    if (e == 0)
        return;
    pthread_sigmask(SIG_SETMASK, old, NULL);
    if (wake_fd >= 0) {
        ssize_t put = write(wake_fd, "x", 1);
        (void)put;
    }
    unhook();
    fail_msg("pthread_create: %s", strerror(e));
}

/* ---- Fork while a thread carries empty spans from a class to the heap.
 * sa_mcentral_release drops the class lock before it hands the spans that
 * became empty to the heap; a fork in between must wait for the carrier
 * (the child has no carrier).  The carrier is held in that window by a test
 * hook until fork_prepare says it is waiting (or, on a build without the
 * wait, until fork returned). */
static int carry_pipe[2];
static atomic_bool carrier_paused, fork_returned;

static void pause_carrier(void)
{
    atomic_store(&carrier_paused, true);
    char c;
    ssize_t got = read(carry_pipe[0], &c, 1);
    (void)got;
}

static void *carrier(void *arg)
{
    void *block = arg;
    sa_mcentral_release(sa_size_class(32768), block); /* its span becomes empty */
    return NULL;
}

/* Wakes the paused thread (a byte into the pipe `arg`) once fork_prepare
 * says it is waiting, or, on a build without the wait, once fork returned. */
static void *releaser(void *arg)
{
    int wake_fd = (int)(intptr_t)arg;
    while (!atomic_load(&sa_mcentral_fork_waiting) && !atomic_load(&fork_returned))
        sched_yield();
    ssize_t put = write(wake_fd, "x", 1);
    (void)put;
    return NULL;
}

static void fork_while_empty_spans_are_carried(void **state)
{
    (void)state;
    unsigned cls = sa_size_class(32768);
    void *block;
    assert_int_equal(sa_mcentral_fill(cls, 1, &block), 1);
    struct sa_span *s = sa_pagemap_lookup((uintptr_t)block);
    assert_non_null(s);
    assert_int_equal(s->nelems, 1); /* one object: releasing it empties the span */
    uintptr_t base = s->base;
    assert_int_equal(pipe(carry_pipe), 0);
    atomic_store(&carrier_paused, false);
    atomic_store(&fork_returned, false);
    sa_mcentral_chain_hook = pause_carrier;
    sigset_t old;
    block_alarm(&old);
    pthread_t c, r;
    start_hooked(&c, carrier, block, &old, -1, unhook_chain);
    while (!atomic_load(&carrier_paused))
        sched_yield();
    start_hooked(&r, releaser, (void *)(intptr_t)carry_pipe[1], &old, carry_pipe[1],
                 unhook_chain);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pid_t pid = fork_plain();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* The span went back to the heap before the fork: no page of it
         * maps to a span still in use. */
        struct sa_span *now = sa_pagemap_lookup(base);
        CHILD_CHECK(now == NULL || now->state == SA_SPAN_FREE);
        _exit(0);
    }
    atomic_store(&fork_returned, true);
    int status = wait_child(pid);
    assert_int_equal(pthread_join(c, NULL), 0);
    assert_int_equal(pthread_join(r, NULL), 0);
    sa_mcentral_chain_hook = NULL;
    close(carry_pipe[0]);
    close(carry_pipe[1]);
    assert_child_succeeded(status);
}

/* ---- Fork while parked batches are drained back into their spans.
 * A thread loops: take a batch (fill), park it in a transfer slot, drain the
 * slots.  It records in `holding` whether it has a batch in its own hands
 * (from before fill until the batch is parked); at any other moment every
 * block is in a span or parked, so in a child forked then, after
 * free_os_memory(), the batch's span must be back in the heap. */
static atomic_bool drain_stop, holding;
static void *_Atomic probe_block;

static void *park_and_drain(void *arg)
{
    (void)arg;
    unsigned cls = sa_size_class(20480);
    while (!atomic_load(&drain_stop)) {
        atomic_store(&holding, true);
        void *head;
        uint32_t got = sa_mcentral_fill(cls, 8, &head);
        if (got == 0)
            break;
        atomic_store(&probe_block, head);
        sa_mcentral_release_batch(cls, head, got);
        atomic_store(&holding, false);
        sa_mcentral_drain_transfer();
    }
    return NULL;
}

static void fork_while_batches_are_drained(void **state)
{
    (void)state;
    SKIP_UNDER_MEMCHECK();
    free_os_memory(); /* this thread's cached blocks back in their spans */
    atomic_store(&drain_stop, false);
    atomic_store(&probe_block, NULL);
    sigset_t old;
    block_alarm(&old);
    pthread_t t;
    int created = pthread_create(&t, NULL, park_and_drain, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL); /* before a failed assert leaves it blocked */
    assert_int_equal(created, 0);
    while (atomic_load(&probe_block) == NULL)
        sched_yield();
    int failures = 0;
    for (int i = 0; i < 300; i++) {
        pid_t pid = fork_plain();
        assert_true(pid >= 0);
        if (pid == 0) {
            if (!atomic_load(&holding)) {
                free_os_memory();
                struct sa_span *s = sa_pagemap_lookup((uintptr_t)atomic_load(&probe_block));
                CHILD_CHECK(s == NULL || s->state == SA_SPAN_FREE);
            }
            _exit(0);
        }
        int status = wait_child(pid);
        failures += !(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    atomic_store(&drain_stop, true);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(failures, 0);
}

/* ---- Fork while a thread holds a batch between a class and its cache.
 * A refill takes a batch under the class lock and pushes it onto the cache
 * after; a flush pops a batch and hands it over under the lock after.  The
 * worker is held in that window by the move hook until fork_prepare says it
 * is waiting (or, on a build without the wait, until fork returned). */
static int move_pipe[2];
static atomic_bool mover_paused, mover_done;
static _Atomic unsigned move_armed; /* the class whose next move pauses, 0: none */
static __thread bool is_mover;

static void pause_mover(unsigned cls)
{
    if (!is_mover || atomic_load(&move_armed) != cls)
        return;
    atomic_store(&move_armed, 0);
    atomic_store(&mover_paused, true);
    char c;
    ssize_t got = read(move_pipe[0], &c, 1);
    (void)got;
}

enum { MOVE_SIZE = 64, MOVE_BLOCKS = 4096 };
static void *move_blocks[MOVE_BLOCKS];

/* Warm the class up (the fallback's capacities start at one block and
 * double), then pause in a refill (arg 0) or a flush (arg 1). */
static void *mover(void *arg)
{
    bool flush = arg != NULL;
    unsigned cls = sa_size_class(MOVE_SIZE);
    is_mover = true;
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < MOVE_BLOCKS; i++)
            move_blocks[i] = spanalloc_malloc(MOVE_SIZE);
        for (int i = 0; i < MOVE_BLOCKS; i++)
            spanalloc_free(move_blocks[i]);
    }
    for (int i = 0; i < MOVE_BLOCKS; i++)
        move_blocks[i] = spanalloc_malloc(MOVE_SIZE);
    if (!flush)
        free_os_memory(); /* the cache is empty: the next malloc refills */
    atomic_store(&move_armed, cls);
    if (flush) {
        for (int i = 0; i < MOVE_BLOCKS; i++)
            spanalloc_free(move_blocks[i]);
    } else {
        void *p = spanalloc_malloc(MOVE_SIZE);
        spanalloc_free(p);
        for (int i = 0; i < MOVE_BLOCKS; i++)
            spanalloc_free(move_blocks[i]);
    }
    atomic_store(&mover_done, true);
    return NULL;
}

static void fork_while_a_batch_is_in_hand(bool flush)
{
    SKIP_UNDER_MEMCHECK(); /* no thread has a cache there: no batch in hand */
    assert_int_equal(pipe(move_pipe), 0);
    atomic_store(&mover_paused, false);
    atomic_store(&mover_done, false);
    atomic_store(&fork_returned, false);
    atomic_store(&move_armed, 0);
    sa_mcentral_move_hook = pause_mover;
    sigset_t old;
    block_alarm(&old);
    pthread_t m, r;
    start_hooked(&m, mover, flush ? (void *)1 : NULL, &old, -1, unhook_move);
    while (!atomic_load(&mover_paused) && !atomic_load(&mover_done))
        sched_yield();
    if (!atomic_load(&mover_paused)) { /* no move reached the hook: fail, not hang */
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        assert_int_equal(pthread_join(m, NULL), 0);
        sa_mcentral_move_hook = NULL;
        fail_msg("the mover never held a batch in hand");
    }
    start_hooked(&r, releaser, (void *)(intptr_t)move_pipe[1], &old, move_pipe[1],
                 unhook_move);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pid_t pid = fork_plain();
    assert_true(pid >= 0);
    if (pid == 0) {
        free_os_memory();
        struct mem_stats st;
        read_mem_stats(&st);
        child_check_invariants(&st);
        CHILD_CHECK_EQ(st.heap_idle, st.heap_released);
        child_check_blocks_accounted(1);
        _exit(0);
    }
    atomic_store(&fork_returned, true);
    int status = wait_child(pid);
    assert_int_equal(pthread_join(m, NULL), 0);
    assert_int_equal(pthread_join(r, NULL), 0);
    sa_mcentral_move_hook = NULL;
    close(move_pipe[0]);
    close(move_pipe[1]);
    assert_child_succeeded(status);
}

static void fork_while_a_refill_is_in_hand(void **state)
{
    (void)state;
    fork_while_a_batch_is_in_hand(false);
}

static void fork_while_a_flush_is_in_hand(void **state)
{
    (void)state;
    fork_while_a_batch_is_in_hand(true);
}

/* Threads refilling and flushing their caches (every small class up to
 * 4 KiB: each round allocates two caches' worth, then frees it) while this
 * thread forks 300 times.  Each child takes its own caches back
 * (free_os_memory()) and checks that every block out of its span is
 * accounted for: the dead threads' batches were not lost in their hands, and
 * their own caches (fallback mode) were flushed by the child. */
enum { NCHURN = 3, CHURN_MAX = 4096 };
static atomic_bool churn_stop;
static atomic_ulong churn_rounds;

static void *churn(void *arg)
{
    unsigned rng = (unsigned)(uintptr_t)arg;
    static void *held[NCHURN][CHURN_MAX];
    void **mine = held[(uintptr_t)arg % NCHURN];
    while (!atomic_load_explicit(&churn_stop, memory_order_relaxed)) {
        size_t size = 8 + (size_t)rand_r(&rng) % 4096;
        unsigned n = 2 * sa_mcache_list_cap(sa_size_class(size));
        if (n > CHURN_MAX)
            n = CHURN_MAX;
        for (unsigned i = 0; i < n; i++)
            if ((mine[i] = spanalloc_malloc(size)) == NULL)
                return (void *)1;
        for (unsigned i = 0; i < n; i++)
            spanalloc_free(mine[i]);
        atomic_fetch_add_explicit(&churn_rounds, 1, memory_order_relaxed);
    }
    return NULL;
}

static void fork_while_caches_refill_and_flush(void **state)
{
    (void)state;
    SKIP_UNDER_MEMCHECK();
    atomic_store(&churn_stop, false);
    sigset_t old;
    block_alarm(&old);
    pthread_t t[NCHURN];
    for (int i = 0; i < NCHURN; i++)
        assert_int_equal(pthread_create(&t[i], NULL, churn, (void *)(uintptr_t)i), 0);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    int failures = 0, forks = 300;
    for (int f = 0; f < forks; f++) {
        unsigned long target = atomic_load(&churn_rounds) + 1;
        while (atomic_load(&churn_rounds) < target)
            sched_yield(); /* some moves since the last fork */
        pid_t pid = fork_plain();
        assert_true(pid >= 0);
        if (pid == 0) {
            free_os_memory();
            struct mem_stats st;
            read_mem_stats(&st);
            child_check_invariants(&st);
            CHILD_CHECK_EQ(st.heap_idle, st.heap_released);
            child_check_blocks_accounted(NCHURN);
            _exit(0);
        }
        int status = wait_child(pid);
        failures += !(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    atomic_store(&churn_stop, true);
    for (int i = 0; i < NCHURN; i++) {
        void *ret = NULL;
        assert_int_equal(pthread_join(t[i], &ret), 0);
        assert_null(ret);
    }
    print_message("%d of %d children failed\n", failures, forks);
    assert_int_equal(failures, 0);
    free_os_memory();
    struct mem_stats end = stats_now();
    assert_stats_invariants(&end);
    assert_int_equal(end.heap_idle, end.heap_released);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(fork_during_first_init), /* first: nothing allocated yet */
        cmocka_unit_test(fork_while_threads_allocate),
        cmocka_unit_test(many_quick_forks_while_threads_allocate),
        cmocka_unit_test(block_from_before_fork_is_freed_on_both_sides),
        cmocka_unit_test(fork_from_a_secondary_thread),
        cmocka_unit_test(fork_while_another_thread_releases),
        cmocka_unit_test(fork_while_empty_spans_are_carried),
        cmocka_unit_test(fork_while_batches_are_drained),
        cmocka_unit_test(fork_while_a_refill_is_in_hand),
        cmocka_unit_test(fork_while_a_flush_is_in_hand),
        cmocka_unit_test(fork_while_caches_refill_and_flush),
    };
    return cmocka_run_group_tests_name("fork", tests, NULL, NULL);
}
