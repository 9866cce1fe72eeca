/* The per-CPU caches (alloc/percpu.c): the restartable sections keep every
 * block exactly once while threads are preempted, migrated and signalled
 * inside them; a busy CPU's cache can be drained from another CPU; an idle
 * one is drained by the scavenger's hook; memory follows the CPUs used; the
 * fallback is taken where rseq is off; fork keeps the caches working.
 *
 * Run in both modes: the percpu-off test setup sets SPANALLOC_PERCPU=off,
 * and the tests then check the same behaviour of the per-thread caches.
 * Some probes run in a fresh process (this binary re-executed with
 * --probe), since the mode is chosen once per process. */
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_helpers.h"
#include "internal.h"
#include "percpu.h"

#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#else
#define RUNNING_ON_VALGRIND 0
#endif

static bool percpu_expected(void)
{
    const char *v = getenv("SPANALLOC_PERCPU");
    return !(v != NULL && strcmp(v, "off") == 0) && sa_percpu_enabled();
}

/* ---- Workers: each block carries its owner and a sequence number, checked
 * before it is freed; a block handed out twice (a section that committed
 * over another's) shows up as a tag written by someone else. */

enum { NSLOTS = 64, OPS_NATIVE = 1000000 };
/* memcheck runs one thread at a time, every block through the mcentrals. */
#define OPS (RUNNING_ON_VALGRIND ? OPS_NATIVE / 50 : OPS_NATIVE)

struct worker {
    pthread_t th;
    _Atomic pid_t tid;
    unsigned id;
    _Atomic unsigned errors;
    _Atomic unsigned long ops;
};

static _Atomic bool stop_helpers;
static _Atomic bool release_workers; /* workers stay alive until the helpers stop */
static _Atomic unsigned workers_done;
static _Atomic unsigned long signals_taken;

static void on_signal(int sig)
{
    (void)sig;
    atomic_fetch_add_explicit(&signals_taken, 1, memory_order_relaxed);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    atomic_store(&w->tid, (pid_t)syscall(SYS_gettid));
    uint64_t *slot[NSLOTS] = {0};
    size_t size[NSLOTS];
    uint64_t seq = 0;
    uint32_t r = w->id * 2654435761u + 1;
    for (unsigned long op = 0; op < OPS; op++) {
        r = r * 1103515245u + 12345u;
        unsigned i = (r >> 8) % NSLOTS;
        if (slot[i] != NULL) {
            uint64_t tag = ((uint64_t)w->id << 40) | (uint64_t)i << 32;
            if ((slot[i][0] & ~0xffffffffull) != tag || slot[i][size[i] / 8 - 1] != slot[i][0])
                atomic_fetch_add(&w->errors, 1);
            spanalloc_free(slot[i]);
            slot[i] = NULL;
        } else {
            size[i] = 16 + (size_t)((r >> 16) % 32) * 16; /* 16..512 */
            slot[i] = spanalloc_malloc(size[i]);
            if (slot[i] == NULL) {
                atomic_fetch_add(&w->errors, 1);
                continue;
            }
            uint64_t tag = ((uint64_t)w->id << 40) | (uint64_t)i << 32 | (++seq & 0xffffffff);
            slot[i][0] = tag;
            slot[i][size[i] / 8 - 1] = tag;
        }
        atomic_store_explicit(&w->ops, op, memory_order_relaxed);
    }
    for (unsigned i = 0; i < NSLOTS; i++)
        spanalloc_free(slot[i]);
    atomic_fetch_add(&workers_done, 1);
    while (!atomic_load(&release_workers))
        sched_yield(); /* the signaller and flipper still address this thread */
    return NULL;
}

/* A worker whose every round moves whole batches: it allocates more than
 * twice its class's cache capacity, then frees it all, so that most of its
 * operations end in a refill (blocks pushed onto the slab a chunk per
 * section) or a flush (popped a chunk per section).  Tags as above. */
enum { BULK_MAX = 4100 };
static void *bulk_worker_main(void *arg)
{
    struct worker *w = arg;
    atomic_store(&w->tid, (pid_t)syscall(SYS_gettid));
    static const size_t sizes[] = {16, 48, 256, 1024};
    uint64_t **held = malloc(BULK_MAX * sizeof(*held));
    if (held == NULL) {
        atomic_fetch_add(&w->errors, 1);
        atomic_fetch_add(&workers_done, 1);
        return NULL;
    }
    unsigned long op = 0;
    for (unsigned round = 0; op < OPS / 2; round++) {
        size_t size = sizes[(round + w->id) % 4];
        uint32_t n = 2 * sa_mcache_list_cap(sa_size_class(size)) + 3;
        n = n < BULK_MAX ? n : BULK_MAX;
        for (uint32_t i = 0; i < n; i++, op++) {
            held[i] = spanalloc_malloc(size);
            if (held[i] == NULL) {
                atomic_fetch_add(&w->errors, 1);
                n = i;
                break;
            }
            uint64_t tag = ((uint64_t)w->id << 40) | ((uint64_t)round << 20) | i;
            held[i][0] = tag;
            held[i][size / 8 - 1] = tag;
        }
        for (uint32_t i = 0; i < n; i++) {
            uint64_t tag = ((uint64_t)w->id << 40) | ((uint64_t)round << 20) | i;
            if (held[i][0] != tag || held[i][size / 8 - 1] != tag)
                atomic_fetch_add(&w->errors, 1);
            spanalloc_free(held[i]);
        }
        atomic_store_explicit(&w->ops, op, memory_order_relaxed);
    }
    free(held);
    atomic_fetch_add(&workers_done, 1);
    while (!atomic_load(&release_workers))
        sched_yield(); /* the signaller and flipper still address this thread */
    return NULL;
}

/* Signals into the workers, as fast as they can be sent: each one arrives
 * wherever the worker is, often inside a section. */
static void *signaller(void *arg)
{
    struct worker *ws = arg;
    while (!atomic_load(&stop_helpers))
        for (unsigned i = 0; ws[i].id != 0; i++)
            if (atomic_load(&ws[i].tid) != 0)
                pthread_kill(ws[i].th, SIGUSR1);
    return NULL;
}

/* Moves the workers between the CPUs: a migration inside a section. */
static void *affinity_flipper(void *arg)
{
    struct worker *ws = arg;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned flip = 0;
    while (!atomic_load(&stop_helpers)) {
        for (unsigned i = 0; ws[i].id != 0; i++) {
            pid_t tid = atomic_load(&ws[i].tid);
            if (tid == 0)
                continue;
            cpu_set_t set;
            CPU_ZERO(&set);
            CPU_SET((int)((i + flip) % (unsigned)ncpu), &set);
            sched_setaffinity(tid, sizeof(set), &set); /* may have exited: ignored */
        }
        flip++;
        sched_yield();
    }
    return NULL;
}

/* Everything back where it came from: caches drained, transfer batches
 * back in their spans. */
static void drain_everything(void)
{
    sa_mcache_flush_current();
    sa_mcentral_drain_transfer();
    sa_mheap_flush_large_cache(); /* sampled blocks' spans wait there */
}

struct churn_options {
    unsigned workers;
    bool signals, flips, drains;
    bool bulk; /* bulk_worker_main: batches move in most operations */
};

static void churn(struct churn_options o)
{
    drain_everything();
    struct mem_stats base = stats_now();
    static struct worker ws[65];
    assert_true(o.workers < 65);
    memset(ws, 0, sizeof(ws));
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);
    atomic_store(&stop_helpers, false);
    atomic_store(&release_workers, false);
    atomic_store(&workers_done, 0);
    atomic_store(&signals_taken, 0);
    for (unsigned i = 0; i < o.workers; i++) {
        ws[i].id = i + 1;
        assert_int_equal(pthread_create(&ws[i].th, NULL, o.bulk ? bulk_worker_main : worker_main,
                                        &ws[i]),
                         0);
    }
    pthread_t sig_th, flip_th;
    if (o.signals)
        assert_int_equal(pthread_create(&sig_th, NULL, signaller, ws), 0);
    if (o.flips)
        assert_int_equal(pthread_create(&flip_th, NULL, affinity_flipper, ws), 0);
    unsigned drains = 0;
    if (o.drains) {
        /* Drain every CPU's cache, over and over, while the workers run on
         * them (stops once every worker is near its end). */
        while (atomic_load(&workers_done) < o.workers) {
            sa_percpu_drain_all();
            drains++;
        }
    }
    while (atomic_load(&workers_done) < o.workers)
        sched_yield();
    atomic_store(&stop_helpers, true);
    if (o.signals)
        pthread_join(sig_th, NULL);
    if (o.flips)
        pthread_join(flip_th, NULL);
    atomic_store(&release_workers, true);
    for (unsigned i = 0; i < o.workers; i++)
        assert_int_equal(pthread_join(ws[i].th, NULL), 0);
    signal(SIGUSR1, SIG_DFL);

    unsigned errors = 0;
    for (unsigned i = 0; i < o.workers; i++)
        errors += atomic_load(&ws[i].errors);
    assert_int_equal(errors, 0);
    if (o.signals)
        assert_true(atomic_load(&signals_taken) > 0);
    if (o.drains)
        assert_true(drains > 0);

    /* Exact accounting: every malloc has its free, and once the caches are
     * drained every block is back in its span (nothing lost, nothing
     * duplicated: a duplicate would leave a span over-full or free twice). */
    struct mem_stats end = stats_now();
    assert_stats_invariants(&end);
    assert_int_equal(end.heap_objects, base.heap_objects);
    assert_int_equal(end.heap_alloc, base.heap_alloc);
    assert_true(end.mallocs - base.mallocs >= (uint64_t)o.workers * OPS / 4);
    drain_everything();
    struct mem_stats drained = stats_now();
    assert_int_equal(drained.heap_inuse, base.heap_inuse);
    for (unsigned cls = 1; cls < SA_NUM_CLASSES; cls++)
        if (percpu_expected())
            assert_int_equal(sa_mcache_held_blocks(cls), 0);
}

/* Many more threads than CPUs: preemptions inside sections. */
static void oversubscribed_threads_keep_every_block(void **state)
{
    (void)state;
    churn((struct churn_options){.workers = 32});
}

/* Signals land inside sections: the kernel restarts them. */
static void signals_during_the_fast_path(void **state)
{
    (void)state;
    churn((struct churn_options){.workers = 8, .signals = true});
}

/* Migrations inside sections (sched_setaffinity flips), with signals. */
static void migrations_during_the_fast_path(void **state)
{
    (void)state;
    churn((struct churn_options){.workers = 8, .signals = true, .flips = true});
}

/* Refills and flushes, which move a chunk of blocks per section, with
 * signals and migrations landing inside those sections. */
static void signals_and_migrations_during_batch_moves(void **state)
{
    (void)state;
    churn((struct churn_options){.workers = 8, .signals = true, .flips = true, .bulk = true});
}

/* Draining the caches of CPUs that threads are using at that moment. */
static void draining_busy_cpus_loses_nothing(void **state)
{
    (void)state;
    churn((struct churn_options){.workers = 6, .flips = true, .drains = true});
}

/* ---- Idle drain, thread exit, the bound */

static void *fill_cache(void *arg)
{
    (void)arg;
    void *b[200];
    for (int i = 0; i < 200; i++)
        b[i] = spanalloc_malloc(96);
    for (int i = 0; i < 200; i++)
        spanalloc_free(b[i]);
    return NULL;
}

static void run_thread(void *(*fn)(void *))
{
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, fn, NULL), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
}

/* In per-CPU mode a thread's exit flushes nothing (it owns nothing): what
 * it freed stays in the CPU caches for the next thread there. */
static void thread_exit_needs_no_flush(void **state)
{
    (void)state;
    if (!percpu_expected())
        skip();
    drain_everything();
    unsigned cls = sa_size_class(96);
    run_thread(fill_cache);
    uint64_t held = sa_mcache_held_blocks(cls);
    assert_true(held > 0);
    struct mem_stats st = stats_now();
    assert_stats_invariants(&st);
    assert_int_equal(st.mcache_inuse, (uint64_t)sa_percpu_cpus_ready() * sa_slab_bytes());
}

/* A CPU cache with no operation between two scavenger cycles is drained; one
 * that was used in between is not. */
static void idle_cpu_caches_are_drained(void **state)
{
    (void)state;
    if (!percpu_expected())
        skip();
    unsigned cls = sa_size_class(96);
    run_thread(fill_cache);
    sa_percpu_drain_idle(); /* records each CPU's activity */
    run_thread(fill_cache); /* activity again on some CPU */
    uint64_t held = sa_mcache_held_blocks(cls);
    assert_true(held > 0);
    sa_percpu_drain_idle(); /* the used CPU is not idle: it keeps its blocks */
    assert_true(sa_mcache_held_blocks(cls) > 0);
    unsigned drained = sa_percpu_drain_idle(); /* nothing happened since */
    assert_true(drained > 0);
    assert_int_equal(sa_mcache_held_blocks(cls), 0);
    struct mem_stats st = stats_now();
    assert_stats_invariants(&st);
}

/* Each CPU cache within the documented bound. */
static void cpu_caches_stay_bounded(void **state)
{
    (void)state;
    run_thread(fill_cache);
    size_t held = 0;
    for (unsigned cls = 1; cls < SA_NUM_CLASSES; cls++)
        held += (size_t)sa_mcache_held_blocks(cls) * sa_class_size[cls];
    unsigned caches = percpu_expected() ? sa_percpu_cpus_ready() : 1;
    assert_true(held <= caches * sa_mcache_bound_bytes());
    if (percpu_expected())
        assert_true(sa_percpu_cpus_ready() <= (unsigned)sysconf(_SC_NPROCESSORS_CONF));
}

/* Fallback slow start: a thread that used a class once holds a block or two
 * of it, not a batch; one that uses it hard grows to the full capacity. */
static uint64_t slow_start_once, slow_start_busy;

static void *slow_start_thread(void *arg)
{
    (void)arg;
    unsigned cls = sa_size_class(208);
    uint64_t before = sa_mcache_held_blocks(cls);
    spanalloc_free(spanalloc_malloc(208));
    slow_start_once = sa_mcache_held_blocks(cls) - before;
    static void *b[400];
    for (int round = 0; round < 4; round++) {
        for (int i = 0; i < 400; i++)
            b[i] = spanalloc_malloc(208);
        for (int i = 0; i < 400; i++)
            spanalloc_free(b[i]);
    }
    slow_start_busy = sa_mcache_held_blocks(cls) - before;
    return NULL;
}

/* Child (--slow-start, SPANALLOC_PERCPU=off): the slow-start thread's
 * figures, for a parent that runs the CPU caches. */
static int slow_start_child(void)
{
    run_thread(slow_start_thread);
    printf("percpu=%d once=%llu busy=%llu\n", sa_mcache_thread_is_percpu(),
           (unsigned long long)slow_start_once, (unsigned long long)slow_start_busy);
    fflush(stdout);
    return 0;
}

static void run_child_mode(const char *mode, const char *env, char *buf, size_t len);

/* CPU caches start full (they are few and shared), so under them the
 * fallback's slow start is checked in a child that runs the fallback. */
static void fallback_caches_start_small(void **state)
{
    (void)state;
    if (RUNNING_ON_VALGRIND)
        skip(); /* no caches at all under memcheck */
    if (percpu_expected()) {
        char buf[128] = {0};
        int percpu = -1;
        unsigned long long once = 0, busy = 0;
        run_child_mode("--slow-start", "SPANALLOC_PERCPU=off", buf, sizeof(buf));
        assert_int_equal(sscanf(buf, "percpu=%d once=%llu busy=%llu", &percpu, &once, &busy), 3);
        assert_int_equal(percpu, 0);
        slow_start_once = once;
        slow_start_busy = busy;
    } else {
        run_thread(slow_start_thread);
    }
    assert_true(slow_start_once <= 2);
    assert_true(slow_start_busy > sa_mcache_list_cap(sa_size_class(208)) / 2); /* grew past half */
}

/* A class of 16 KiB blocks (two per 32 KiB) keeps up to 8 of them, within
 * 256 KiB: a thread that frees 8 such blocks in a row finds most of them
 * cached, not sent back through the class lock and the heap after every
 * second one.  Pinned, so that one cache (this CPU's, or the thread's own)
 * sees the whole sequence. */
static void big_block_classes_cache_a_few_blocks(void **state)
{
    (void)state;
    if (RUNNING_ON_VALGRIND)
        skip(); /* no caches at all under memcheck */
    enum { N = 8 };
    unsigned cls = sa_size_class(16384);
    assert_int_equal(sa_mcache_list_cap(cls), 8);
    assert_int_equal(sa_mcache_list_cap(sa_size_class(65536)), 4);
    assert_int_equal(sa_mcache_list_cap(sa_size_class(262144)), 1);
    cpu_set_t old, one;
    assert_int_equal(sched_getaffinity(0, sizeof(old), &old), 0);
    CPU_ZERO(&one);
    CPU_SET((unsigned)sched_getcpu(), &one);
    assert_int_equal(sched_setaffinity(0, sizeof(one), &one), 0);
    sa_mcache_flush_current();
    assert_int_equal(sa_mcache_held_blocks(cls), 0);
    void *blocks[N];
    for (int i = 0; i < N; i++)
        blocks[i] = spanalloc_malloc(16384);
    for (int i = 0; i < N; i++)
        spanalloc_free(blocks[i]);
    uint64_t held = sa_mcache_held_blocks(cls);
    sched_setaffinity(0, sizeof(old), &old);
    assert_true(held >= 5); /* 2 at most with two blocks per class */
    assert_true(held <= sa_mcache_list_cap(cls));
}

/* ---- Probes in a fresh process */

/* Child: pinned to CPU 0, threads allocate; prints the mode and the CPUs
 * whose cache was set up. */
static int probe(void)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(0, &set);
    sched_setaffinity(0, sizeof(set), &set);
    for (int i = 0; i < 8; i++)
        run_thread(fill_cache);
    printf("percpu=%d cpus=%u\n", sa_mcache_thread_is_percpu() || sa_percpu_enabled(),
           sa_percpu_cpus_ready());
    fflush(stdout);
    return 0;
}

static char self_path[4096];

/* Run this binary as `mode` with env (or none); its stdout into buf. */
static void run_child_mode(const char *mode, const char *env, char *buf, size_t len)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(fds[1], 1);
        if (env != NULL)
            putenv((char *)env);
        execl(self_path, self_path, mode, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    ssize_t n = read(fds[0], buf, len - 1);
    close(fds[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_true(n > 0);
}

static void run_probe(const char *env, int *percpu, unsigned *cpus)
{
    char buf[128] = {0};
    run_child_mode("--probe", env, buf, sizeof(buf));
    assert_int_equal(sscanf(buf, "percpu=%d cpus=%u", percpu, cpus), 2);
}

/* A process confined to one CPU sets up one CPU cache, however many threads
 * it runs and however many CPUs the machine has. */
static void memory_follows_the_cpus_used(void **state)
{
    (void)state;
    int percpu;
    unsigned cpus;
    run_probe(NULL, &percpu, &cpus);
    if (!percpu)
        skip(); /* SPANALLOC_PERCPU=off or no rseq here: nothing per CPU */
    assert_int_equal(cpus, 1);
}

/* glibc's rseq registration off (as under valgrind or seccomp): the process
 * runs the per-thread fallback, and so with SPANALLOC_PERCPU=off. */
static void no_rseq_means_fallback(void **state)
{
    (void)state;
    int percpu;
    unsigned cpus;
    run_probe("GLIBC_TUNABLES=glibc.pthread.rseq=0", &percpu, &cpus);
    assert_int_equal(percpu, 0);
    assert_int_equal(cpus, 0);
    run_probe("SPANALLOC_PERCPU=off", &percpu, &cpus);
    assert_int_equal(percpu, 0);
    assert_int_equal(cpus, 0);
}

/* ---- fork */

/* The child's threads are gone, its CPU caches are not: it allocates from
 * them, drains them (membarrier registered again) and its counts stay
 * exact. */
static void fork_child_keeps_the_cpu_caches(void **state)
{
    (void)state;
    run_thread(fill_cache);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int bad = 0;
        struct mem_stats a;
        read_mem_stats(&a);
        bad |= sa_mcache_thread_is_percpu() != percpu_expected();
        void *b[500];
        for (int i = 0; i < 500; i++)
            if ((b[i] = spanalloc_malloc(96)) == NULL)
                bad = 1;
        for (int i = 0; i < 500; i++)
            spanalloc_free(b[i]);
#if defined(SA_TSAN)
        /* TSan does not follow a mutex held at fork and initialised again in
         * the child: a new thread taking it is reported as a double lock. */
        fill_cache(NULL);
#else
        run_thread(fill_cache);
#endif
        free_os_memory();
        for (unsigned cls = 1; cls < SA_NUM_CLASSES; cls++)
            bad |= percpu_expected() && sa_mcache_held_blocks(cls) != 0;
        struct mem_stats z;
        read_mem_stats(&z);
        bad |= z.heap_objects != a.heap_objects;
        bad |= z.mallocs - a.mallocs < 500 + 200;
        _exit(bad ? 1 : 0);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* The mode the environment asks for is the one running. */
static void mode_is_as_configured(void **state)
{
    (void)state;
    spanalloc_free(spanalloc_malloc(8));
    assert_int_equal(sa_mcache_thread_is_percpu(), percpu_expected());
}

/* The cases of the CPU caches alone.  Under SPANALLOC_PERCPU=off (the
 * percpuoff pass) they are not registered: that configuration excludes them
 * by design and the unit pass runs them, so a skip there would count a case
 * nobody could run.  Where CPU caches are wanted but unavailable (no rseq),
 * they stay registered and skip, visibly. */
static bool percpu_only(void (*case_fn)(void **))
{
    return case_fn == thread_exit_needs_no_flush || case_fn == idle_cpu_caches_are_drained ||
           case_fn == memory_follows_the_cpus_used;
}

static bool percpu_off_asked(void)
{
    const char *v = getenv("SPANALLOC_PERCPU");
    return v != NULL && strcmp(v, "off") == 0;
}

int main(int argc, char **argv)
{
    ssize_t n = readlink("/proc/self/exe", self_path, sizeof(self_path) - 1);
    if (n > 0)
        self_path[n] = '\0';
    if (argc > 1 && strcmp(argv[1], "--probe") == 0)
        return probe();
    sa_options.scavenger_enabled = false; /* the tests drive the idle drain */
    if (argc > 1 && strcmp(argv[1], "--slow-start") == 0)
        return slow_start_child();
    struct CMUnitTest tests[] = {
        cmocka_unit_test(mode_is_as_configured),
        cmocka_unit_test(oversubscribed_threads_keep_every_block),
        cmocka_unit_test(signals_during_the_fast_path),
        cmocka_unit_test(migrations_during_the_fast_path),
        cmocka_unit_test(signals_and_migrations_during_batch_moves),
        cmocka_unit_test(draining_busy_cpus_loses_nothing),
        cmocka_unit_test(thread_exit_needs_no_flush),
        cmocka_unit_test(idle_cpu_caches_are_drained),
        cmocka_unit_test(cpu_caches_stay_bounded),
        cmocka_unit_test(fallback_caches_start_small),
        cmocka_unit_test(big_block_classes_cache_a_few_blocks),
        cmocka_unit_test(memory_follows_the_cpus_used),
        cmocka_unit_test(no_rseq_means_fallback),
        cmocka_unit_test(fork_child_keeps_the_cpu_caches),
    };
    size_t used = 0;
    for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++)
        if (!(percpu_off_asked() && percpu_only(tests[i].test_func)))
            tests[used++] = tests[i];
    return _cmocka_run_group_tests("percpu", tests, used, NULL, NULL);
}
