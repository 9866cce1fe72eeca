/*
 * The heap profile (profile/), through the prefixed API and its internals.
 *
 * 1. The sampler's estimate is unbiased: for many seeds, the estimated
 *    bytes allocated at four sizes (from far below to far above the rate)
 *    average to the truth within 4 standard errors of the mean; the standard
 *    error comes from the sampling variance, n s^2 (1 - p) / p per trial.
 * 2. A sampled block behaves as an unsampled one: usable size, realloc both
 *    ways, calloc, aligned requests; the stats stay exact (heap_alloc moves
 *    by the class size, by_size counts it) and keep their invariants.
 * 3. Freeing a sampled block is found: the live estimate falls back.
 * 4. Round trip: a profile written by spanalloc_profile_write and read by
 *    `go tool pprof -raw` has the two test sites with their exact bytes (rate
 *    1 samples every block, so weights are 1).
 * 5. fork and thread exit with sampled blocks live; writing racing with
 *    allocating threads; a failing write returns the errno and leaves the
 *    heap's figures as they were.
 * 6. The stack walker (profile/frames.c): on known chains of -O2
 *    -fomit-frame-pointer code (tests/profile_chain.c), through libc and in
 *    a thread, it handles every frame itself and reports exactly the stack
 *    libgcc's _Unwind_Backtrace reports; it stops at the depth asked; on a
 *    stack of garbage it stops without reading outside the bounds it has.
 * 7. Idle threads: 200 threads that each took one sample hold no more
 *    memory than before it (the walker keeps nothing per thread).
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <unwind.h>
#include <dlfcn.h>

#include "test_helpers.h"
#include "../alloc/internal.h"
#include "../profile/profile_internal.h"
#include "profile_chain.h"

static void set_rate(uint64_t rate, uint64_t seed)
{
    sa_profile_options.rate = rate;
    sa_sampler_reseed(seed);
}

static double inuse_now(void)
{
    double o, b, i;
    sa_prof_totals(&o, &b, &i);
    return i;
}

static double alloc_bytes_now(void)
{
    double o, b, i;
    sa_prof_totals(&o, &b, &i);
    return b;
}

/* ---- 1. unbiased */

static void sampler_estimate_is_unbiased(void **state)
{
    (void)state;
    const uint64_t rate = 64 << 10;
    static const size_t sizes[] = {100, 4000, 48 << 10, 256 << 10};
    static const int counts[] = {20000, 2000, 160, 40};
    enum { TRIALS = 200 };
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        size_t s = sizes[k];
        /* The estimate counts the usable size; truth is n * usable. */
        void *probe = spanalloc_malloc(s);
        double usable = (double)spanalloc_usable_size(probe);
        spanalloc_free(probe);
        double truth = counts[k] * usable;
        double sum = 0;
        for (int t = 0; t < TRIALS; t++) {
            set_rate(rate, 1000003u * (uint64_t)t + k + 1);
            double before = alloc_bytes_now();
            for (int i = 0; i < counts[k]; i++)
                spanalloc_free(spanalloc_malloc(s));
            sum += alloc_bytes_now() - before;
        }
        double p = -expm1(-(double)s / (double)rate);
        double sd_trial = sqrt(counts[k] * usable * usable * (1 - p) / p);
        double se = sd_trial / sqrt(TRIALS);
        double mean = sum / TRIALS;
        print_message("size %zu: mean %.0f truth %.0f (se %.0f, %.2f se off)\n", s, mean, truth,
                      se, fabs(mean - truth) / se);
        assert_true(fabs(mean - truth) <= 4 * se + 1e-6 * truth);
    }
    set_rate(SA_PROFILE_DEFAULT_RATE, 1);
}

/* The budget's draw (sampler.c, a ziggurat) is exponential with mean 1:
 * 2^22 draws fall evenly into 256 bins of equal probability (chi-square,
 * 255 degrees of freedom: mean 255, sd 22.6; the bound is 6 sd above), the
 * mean is 1 within 6 standard errors, and the far tail (beyond the
 * ziggurat's base layer, x > 7.7, then beyond 8.2 and 12) has its share,
 * each within 6 sd. */
static void sampler_draws_are_exponential(void **state)
{
    (void)state;
    enum { DRAWS = 1 << 22, BINS = 256 };
    static unsigned bins[BINS];
    memset(bins, 0, sizeof(bins));
    sa_sampler_reseed(77);
    double sum = 0;
    unsigned beyond_base = 0, beyond_8 = 0, beyond_12 = 0;
    for (int i = 0; i < DRAWS; i++) {
        double x = sa_sampler_exp_draw();
        assert_true(x >= 0);
        sum += x;
        beyond_base += x > 7.697117470131487;
        beyond_8 += x > 8.2;
        beyond_12 += x > 12;
        double cdf = -expm1(-x);
        unsigned b = (unsigned)(cdf * BINS);
        bins[b < BINS ? b : BINS - 1]++;
    }
    double chi2 = 0, want = (double)DRAWS / BINS;
    for (int b = 0; b < BINS; b++)
        chi2 += (bins[b] - want) * (bins[b] - want) / want;
    double mean = sum / DRAWS, se = 1.0 / sqrt((double)DRAWS);
    double tail_want = DRAWS * exp(-7.697117470131487), tail8_want = DRAWS * exp(-8.2),
           tail12_want = DRAWS * exp(-12.0);
    print_message("chi2 %.1f (255 dof), mean %.5f (se %.5f), beyond 7.7: %u (want %.0f), "
                  "beyond 8.2: %u (want %.0f), beyond 12: %u (want %.1f)\n",
                  chi2, mean, se, beyond_base, tail_want, beyond_8, tail8_want, beyond_12,
                  tail12_want);
    assert_true(chi2 < 255 + 6 * 22.6);
    assert_true(fabs(mean - 1) < 6 * se);
    assert_true(fabs(beyond_base - tail_want) < 6 * sqrt(tail_want));
    assert_true(fabs(beyond_8 - tail8_want) < 6 * sqrt(tail8_want));
    assert_true(fabs(beyond_12 - tail12_want) < 6 * sqrt(tail12_want) + 1);
    set_rate(SA_PROFILE_DEFAULT_RATE, 1);
}

/* The weight (sampler.c: a series below rate / 2, expm1 above) is
 * 1 / (1 - exp(-size/rate)) to within a few ulps, on both sides of the
 * switch and at the ends. */
static void sampler_weight_is_exact(void **state)
{
    (void)state;
    static const uint64_t rates[] = {2, 3, 4096, 64 << 10, SA_PROFILE_DEFAULT_RATE, 10u << 20};
    double worst = 0;
    for (size_t k = 0; k < sizeof(rates) / sizeof(rates[0]); k++) {
        uint64_t r = rates[k];
        size_t probes[] = {1, 2, 3, 15, 16, 100, 4097, r / 4, r / 2 - 1, r / 2, r / 2 + 1,
                           r - 1, r, 2 * r, 40 * r};
        uint64_t x = 0x9e3779b97f4a7c15ull ^ r;
        for (int i = 0; i < 2000 + (int)(sizeof(probes) / sizeof(probes[0])); i++) {
            size_t s;
            if (i < (int)(sizeof(probes) / sizeof(probes[0]))) {
                s = probes[i];
            } else {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                s = 1 + (size_t)(x % (r + r / 2 + 1));
            }
            if (s == 0)
                continue;
            long double want = 1.0L / -expm1l(-(long double)s / (long double)r);
            double got = sa_sampler_weight(s, r);
            double rel = (double)fabsl(((long double)got - want) / want);
            if (rel > worst)
                worst = rel;
            if (rel > 1e-15)
                print_message("rate %llu size %zu: %.17g want %.17Lg (%.3g)\n",
                              (unsigned long long)r, s, got, want, rel);
            assert_true(rel <= 1e-15);
        }
    }
    print_message("worst relative error %.3g\n", worst);
    assert_true(sa_sampler_weight(12345, 1) == 1.0);
}

/* ---- 2, 3. sampled blocks */

static bool is_sampled(const void *p)
{
    struct sa_span *s = sa_pagemap_lookup((uintptr_t)p);
    return s != NULL && s->state == SA_SPAN_LARGE && s->prof != NULL;
}

static void sampled_blocks_behave_like_unsampled_ones(void **state)
{
    (void)state;
    static const size_t sizes[] = {1, 16, 100, 1000, 5000, 32768, 40000, 1 << 20};
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        size_t n = sizes[k];
        set_rate(0, 1);
        void *plain = spanalloc_malloc(n);
        size_t want = spanalloc_usable_size(plain);
        assert_false(is_sampled(plain));
        spanalloc_free(plain);

        set_rate(1, 1); /* every allocation sampled */
        struct mem_stats before = stats_now();
        unsigned char *p = spanalloc_malloc(n);
        assert_non_null(p);
        assert_true(is_sampled(p));
        assert_int_equal(spanalloc_usable_size(p), want);
        struct mem_stats during = stats_now();
        assert_stats_invariants(&during);
        assert_int_equal(during.heap_alloc - before.heap_alloc, want);
        assert_int_equal(during.total_alloc - before.total_alloc, want);
        assert_int_equal(during.heap_objects, before.heap_objects + 1);
        if (n <= SA_MAX_SMALL) {
            unsigned cls = sa_size_class(n);
            assert_int_equal(during.by_size[cls].mallocs, before.by_size[cls].mallocs + 1);
        }
        memset(p, 0x5a, want);
        /* realloc within the block, then out of it: contents kept. */
        unsigned char *q = spanalloc_realloc(p, want);
        assert_ptr_equal(q, p);
        q = spanalloc_realloc(p, want * 3 + 1);
        assert_non_null(q);
        for (size_t i = 0; i < want; i++)
            assert_int_equal(q[i], 0x5a);
        spanalloc_free(q);
        unsigned char *z = spanalloc_calloc(1, n);
        for (size_t i = 0; i < n; i++)
            assert_int_equal(z[i], 0);
        spanalloc_free(z);
        struct mem_stats after = stats_now();
        assert_stats_invariants(&after);
        assert_int_equal(after.heap_alloc, before.heap_alloc);
        assert_int_equal(after.heap_objects, before.heap_objects);
    }
    /* Aligned: the class an unsampled aligned block gets. */
    for (size_t align = 32; align <= 8192; align *= 4) {
        set_rate(0, 1);
        void *plain = spanalloc_aligned_alloc(align, 300);
        size_t want = spanalloc_usable_size(plain);
        spanalloc_free(plain);
        set_rate(1, 1);
        void *p = spanalloc_aligned_alloc(align, 300);
        assert_true(is_sampled(p));
        assert_int_equal((uintptr_t)p % align, 0);
        assert_int_equal(spanalloc_usable_size(p), want);
        spanalloc_free(p);
    }
    set_rate(SA_PROFILE_DEFAULT_RATE, 1);
}

static void sampled_frees_are_found(void **state)
{
    (void)state;
    set_rate(1, 7);
    double base = inuse_now();
    enum { N = 64 };
    void *p[N];
    double expect = 0;
    for (int i = 0; i < N; i++) {
        p[i] = spanalloc_malloc(64 + 1000 * (size_t)i);
        expect += (double)spanalloc_usable_size(p[i]);
    }
    assert_true(fabs(inuse_now() - base - expect) < 1e-3 * expect);
    for (int i = 0; i < N; i++)
        spanalloc_free(p[i]);
    assert_true(fabs(inuse_now() - base) < 1.0);
    set_rate(SA_PROFILE_DEFAULT_RATE, 1);
}

/* ---- 4. round trip through go tool pprof */

#define SITE_A_BYTES (300 * 1000)
#define SITE_B_BYTES (70 * 4096)

static void *kept_a[300], *kept_b[70];

__attribute__((noinline)) static void profile_site_alpha(void)
{
    for (int i = 0; i < 300; i++)
        kept_a[i] = spanalloc_malloc(1000); /* class 1024 */
}

__attribute__((noinline)) static void profile_site_beta(void)
{
    for (int i = 0; i < 70; i++)
        kept_b[i] = spanalloc_malloc(4096);
}

/* inuse_space of the samples whose stack contains fn, from `pprof -raw`. */
static long long raw_inuse_of(const char *file, const char *fn)
{
    char cmd[1024];
    /* No binary named: pprof finds each one through the profile's mappings
     * (under valgrind /proc/self/exe is valgrind's, the mapping is ours). */
    snprintf(cmd, sizeof(cmd), "go tool pprof -raw '%s' 2>&1", file);
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    static char lines[4096][256];
    int n = 0;
    while (n < 4096 && fgets(lines[n], sizeof(lines[n]), f) != NULL)
        n++;
    assert_int_equal(pclose(f), 0);
    /* Locations whose line names fn. */
    bool loc_is_fn[4096] = {false};
    int in_locations = 0;
    for (int i = 0; i < n; i++) {
        if (strncmp(lines[i], "Locations", 9) == 0)
            in_locations = 1;
        else if (strncmp(lines[i], "Mappings", 8) == 0)
            in_locations = 0;
        else if (in_locations && strstr(lines[i], fn) != NULL) {
            int id = atoi(lines[i]);
            if (id > 0 && id < 4096)
                loc_is_fn[id] = true;
        }
    }
    long long total = 0;
    bool in_samples = false;
    for (int i = 0; i < n; i++) {
        if (strncmp(lines[i], "Samples:", 8) == 0) {
            in_samples = true;
            continue;
        }
        if (strncmp(lines[i], "Locations", 9) == 0)
            break;
        long long ao, as, io, is;
        char *colon = strchr(lines[i], ':');
        if (!in_samples || colon == NULL ||
            sscanf(lines[i], "%lld %lld %lld %lld", &ao, &as, &io, &is) != 4)
            continue;
        bool has = false;
        for (char *t = strtok(colon + 1, " \n"); t != NULL; t = strtok(NULL, " \n"))
            has |= atoi(t) > 0 && atoi(t) < 4096 && loc_is_fn[atoi(t)];
        if (has)
            total += is;
    }
    return total;
}

static void round_trip_through_go_tool_pprof(void **state)
{
    (void)state;
    set_rate(1, 3);
    profile_site_alpha();
    profile_site_beta();
    char path[] = "/tmp/spanalloc_profile_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(spanalloc_profile_write(path), 0);
    assert_int_equal(raw_inuse_of(path, "profile_site_alpha"), 300 * 1024);
    assert_int_equal(raw_inuse_of(path, "profile_site_beta"), SITE_B_BYTES);
    for (int i = 0; i < 300; i++)
        spanalloc_free(kept_a[i]);
    for (int i = 0; i < 70; i++)
        spanalloc_free(kept_b[i]);
    assert_int_equal(spanalloc_profile_write(path), 0);
    assert_int_equal(raw_inuse_of(path, "profile_site_alpha"), 0);
    unlink(path);
    set_rate(SA_PROFILE_DEFAULT_RATE, 1);
}

/* ---- 5. fork, thread exit, races, failures */

#define CHILD_CHECK(cond) \
    do { \
        if (!(cond)) { \
            fprintf(stderr, "child: %s failed (line %d)\n", #cond, __LINE__); \
            _exit(1); \
        } \
    } while (0)

static void fork_with_sampled_blocks_live(void **state)
{
    (void)state;
    set_rate(1, 11);
    void *p[16];
    for (int i = 0; i < 16; i++)
        p[i] = spanalloc_malloc(512 + 100 * (size_t)i);
    double live = inuse_now();
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        for (int i = 0; i < 8; i++) {
            CHILD_CHECK(is_sampled(p[i]));
            spanalloc_free(p[i]);
        }
        CHILD_CHECK(inuse_now() < live);
        void *q = spanalloc_malloc(2000);
        CHILD_CHECK(is_sampled(q));
        char path[64];
        snprintf(path, sizeof(path), "/tmp/spanalloc_prof_child_%d", (int)getpid());
        CHILD_CHECK(spanalloc_profile_write(path) == 0);
        unlink(path);
        spanalloc_free(q);
        _exit(0);
    }
    alarm(30);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    alarm(0);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_true(fabs(inuse_now() - live) < 1.0); /* the child's frees were its own */
    for (int i = 0; i < 16; i++)
        spanalloc_free(p[i]);
    set_rate(SA_PROFILE_DEFAULT_RATE, 1);
}

static _Atomic bool stop_churn;
static void *churn(void *arg);

__attribute__((noinline)) static void *child_only_site(size_t n)
{
    return spanalloc_malloc(n); /* a stack the unwinder has not seen: a cache miss */
}

/* Fork again and again while two threads sample heavily (every 256 bytes,
 * so some thread is usually inside the unwinder): the child must unwind,
 * record and write a profile without finding a lock left held. */
static void fork_while_threads_sample(void **state)
{
    (void)state;
    sa_profile_options.rate = 256;
    atomic_store(&stop_churn, false);
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&t[i], NULL, churn, NULL), 0);
    int failed = 0;
    for (int round = 0; round < 20; round++) {
        pid_t pid = fork();
        if (pid == 0) {
            set_rate(1, 29);
            void *p = child_only_site(100 + (size_t)round);
            CHILD_CHECK(is_sampled(p));
            char path[64];
            snprintf(path, sizeof(path), "/tmp/spanalloc_prof_fork_%d", (int)getpid());
            CHILD_CHECK(spanalloc_profile_write(path) == 0);
            unlink(path);
            spanalloc_free(p);
            /* Exit through exec: under memcheck the child is not leak-checked
             * for the blocks of the threads it did not inherit. */
            execl("/bin/true", "true", (char *)NULL);
            _exit(0);
        }
        alarm(30); /* a child stuck on a lock held at fork time */
        int status = 0;
        if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
            WEXITSTATUS(status) != 0)
            failed++;
        alarm(0);
    }
    atomic_store(&stop_churn, true); /* before asserting: no thread left running */
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    assert_int_equal(failed, 0);
    set_rate(SA_PROFILE_DEFAULT_RATE, 1);
}

static void *alloc_and_exit(void *arg)
{
    void **out = arg;
    set_rate(1, 13); /* this thread's own countdown */
    for (int i = 0; i < 32; i++)
        out[i] = spanalloc_malloc(3000);
    return NULL;
}

static void thread_exit_with_sampled_blocks_live(void **state)
{
    (void)state;
    double base = inuse_now();
    void *blocks[32];
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, alloc_and_exit, blocks), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    for (int i = 0; i < 32; i++)
        assert_true(is_sampled(blocks[i]));
    assert_true(inuse_now() - base >= 32 * 3000);
    for (int i = 0; i < 32; i++)
        spanalloc_free(blocks[i]);
    assert_true(fabs(inuse_now() - base) < 1.0);
    set_rate(SA_PROFILE_DEFAULT_RATE, 1);
}

static void *churn(void *arg)
{
    (void)arg;
    sa_sampler_reseed((uint64_t)(uintptr_t)&arg);
    void *slots[64] = {0};
    for (unsigned i = 0; !atomic_load(&stop_churn); i++) {
        unsigned k = (i * 2654435761u) >> 26;
        spanalloc_free(slots[k]);
        slots[k] = spanalloc_malloc(16 + (i % 5000));
    }
    for (int k = 0; k < 64; k++)
        spanalloc_free(slots[k]);
    return NULL;
}

static void writing_races_with_allocating_threads(void **state)
{
    (void)state;
    sa_profile_options.rate = 4096;
    atomic_store(&stop_churn, false);
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&t[i], NULL, churn, NULL), 0);
    char path[] = "/tmp/spanalloc_race_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    for (int i = 0; i < 20; i++)
        assert_int_equal(spanalloc_profile_write(path), 0);
    atomic_store(&stop_churn, true);
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    struct mem_stats st = stats_now();
    assert_stats_invariants(&st);
    /* The last file is a whole gzip stream. */
    unsigned char head[2];
    fd = open(path, O_RDONLY);
    assert_int_equal(read(fd, head, 2), 2);
    close(fd);
    assert_int_equal(head[0], 0x1f);
    assert_int_equal(head[1], 0x8b);
    unlink(path);
    set_rate(SA_PROFILE_DEFAULT_RATE, 1);
}

static void assert_same_heap(const struct mem_stats *a, const struct mem_stats *b)
{
    assert_int_equal(a->heap_alloc, b->heap_alloc);
    assert_int_equal(a->total_alloc, b->total_alloc);
    assert_int_equal(a->mallocs, b->mallocs);
    assert_int_equal(a->frees, b->frees);
    assert_int_equal(a->heap_sys, b->heap_sys);
    assert_int_equal(a->heap_inuse, b->heap_inuse);
    assert_int_equal(a->sys, b->sys);
}

static void failing_write_reports_errno_and_leaves_the_heap(void **state)
{
    (void)state;
    set_rate(1, 17);
    void *p = spanalloc_malloc(777); /* something in the profile */
    struct mem_stats before = stats_now();
    assert_int_equal(spanalloc_profile_write("/nonexistent-dir/heap.pb.gz"), ENOENT);
    assert_int_equal(spanalloc_profile_write("/dev/full"), ENOSPC);
    int e = spanalloc_profile_write("/sys/heap.pb.gz"); /* a directory no one may write */
    assert_true(e == EACCES || e == EROFS || e == EPERM);
    assert_int_equal(spanalloc_profile_write(NULL), EINVAL);
    struct mem_stats after = stats_now();
    assert_same_heap(&before, &after);
    /* No temporary left behind: a failed write cleans up. */
    assert_int_equal(access("/nonexistent-dir", F_OK), -1);
    spanalloc_free(p);
    set_rate(SA_PROFILE_DEFAULT_RATE, 1);
}

/* A successful write does not touch the heap either. */
static void writing_leaves_the_heap_alone(void **state)
{
    (void)state;
    set_rate(1, 19);
    void *p = spanalloc_malloc(5000);
    set_rate(0, 1);
    char path[] = "/tmp/spanalloc_quiet_XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    struct mem_stats before = stats_now();
    assert_int_equal(spanalloc_profile_write(path), 0);
    struct mem_stats after = stats_now();
    assert_same_heap(&before, &after);
    unlink(path);
    spanalloc_free(p);
    set_rate(SA_PROFILE_DEFAULT_RATE, 1);
}

/* ---- 6. the stack walker */

#define WALK_MAX 80

struct captured {
    uintptr_t ours[WALK_MAX], gcc[WALK_MAX], from[WALK_MAX];
    int n_ours, n_gcc, n_from;
    uintptr_t from_pc; /* SA_CALLER_FRAME's pc (0: the frame was not found) */
};

struct gcc_walk {
    uintptr_t *pcs;
    int n;
    uintptr_t above;
};

/* As profile/stacks.c's fallback: frames from the one whose sp is above. */
static _Unwind_Reason_Code gcc_frame(struct _Unwind_Context *uc, void *arg)
{
    struct gcc_walk *w = arg;
    if (_Unwind_GetCFA(uc) < w->above)
        return _URC_NO_REASON;
    int before_insn = 0;
    uintptr_t pc = _Unwind_GetIPInfo(uc, &before_insn);
    if (pc == 0)
        return _URC_END_OF_STACK;
    w->pcs[w->n++] = pc;
    return w->n == WALK_MAX ? _URC_END_OF_STACK : _URC_NO_REASON;
}

/* Both unwinders from here, each reporting from this function's caller. */
__attribute__((noinline)) static int capture_both(void *arg)
{
    struct captured *c = arg;
    uintptr_t above = (uintptr_t)__builtin_dwarf_cfa();
    c->n_ours = sa_frames_capture(c->ours, WALK_MAX, above);
    /* As the sampler walks: from the caller's frame, none of ours walked. */
    struct sa_frame from = SA_CALLER_FRAME();
    c->from_pc = from.pc;
    c->n_from = sa_frames_capture_from(from, c->from, WALK_MAX);
    struct gcc_walk w = {c->gcc, 0, above};
    _Unwind_Backtrace(gcc_frame, &w);
    c->n_gcc = w.n;
    return 0;
}

static void assert_same_stacks(const struct captured *c)
{
#if defined(__x86_64__)
    bool same = c->n_ours == c->n_gcc &&
                memcmp(c->ours, c->gcc, (size_t)c->n_gcc * sizeof(uintptr_t)) == 0;
    for (int i = 0; i < c->n_gcc && !same; i++) {
        Dl_info info;
        const char *obj = dladdr((void *)(c->gcc[i] - 1), &info) ? info.dli_fname : "?";
        print_message("  %2d %#lx %#lx %s\n", i, (unsigned long)(i < c->n_ours ? c->ours[i] : 0),
                      (unsigned long)c->gcc[i], obj);
    }
    assert_int_equal(c->n_ours, c->n_gcc); /* -1 would say: a frame left to libgcc */
    assert_memory_equal(c->ours, c->gcc, (size_t)c->n_gcc * sizeof(uintptr_t));
    /* The walk from the caller's frame: found, and the same stack. */
    assert_true(c->from_pc != 0);
    assert_int_equal(c->n_from, c->n_gcc);
    assert_memory_equal(c->from, c->gcc, (size_t)c->n_gcc * sizeof(uintptr_t));
#else
    assert_int_equal(c->n_ours, -1); /* libgcc unwinds every stack there */
    assert_int_equal(c->n_from, -1);
#endif
}

#if defined(__x86_64__) /* the walker's own checks: libgcc unwinds elsewhere */
/* The chain of profile_chain.c: frame i+1 is chain_ra[i]. */
static void assert_known_chain(const struct captured *c)
{
    assert_true(c->n_ours >= 6);
    for (int i = 0; i < 5; i++)
        assert_ptr_equal((void *)c->ours[i + 1], chain_ra[i]);
}
#endif

static void walker_matches_libgcc_on_known_chains(void **state)
{
    (void)state;
    static struct captured c; /* static: the frames are the chain's */
    memset(&c, 0, sizeof(c));
    chain_run(capture_both, &c);
    assert_same_stacks(&c);
#if defined(__x86_64__)
    assert_known_chain(&c);
#endif
}

/* Through libc: the comparator's frames, qsort's, then the caller. */
static void walker_matches_libgcc_through_libc(void **state)
{
    (void)state;
    static struct captured c;
    memset(&c, 0, sizeof(c));
    chain_qsort(capture_both, &c);
    assert_same_stacks(&c);
#if defined(__x86_64__)
    int libc_frames = 0, caller = -1;
    for (int i = 0; i < c.n_ours && caller < 0; i++) {
        Dl_info info;
        if (dladdr((void *)(c.ours[i] - 1), &info) && info.dli_fname != NULL &&
            strstr(info.dli_fname, ".so") != NULL) /* libc's, or a sanitizer's qsort */
            libc_frames++;
        if ((void *)c.ours[i] == chain_ra[5])
            caller = i;
    }
#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define QSORT_INTERCEPTED 1 /* the sanitizer's qsort, linked into this program */
#endif
#endif
#ifndef QSORT_INTERCEPTED
    assert_true(libc_frames >= 1);
    assert_true(caller > libc_frames);
#else
    assert_true(caller > 1);
#endif /* the walk came out of libc into chain_qsort's caller */
#endif
}

static void *chain_in_thread(void *arg)
{
    chain_run(capture_both, arg);
    return NULL;
}

/* A thread's stack ends in glibc's thread start, not in _start. */
static void walker_matches_libgcc_in_a_thread(void **state)
{
    (void)state;
    static struct captured c;
    memset(&c, 0, sizeof(c));
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, chain_in_thread, &c), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_same_stacks(&c);
#if defined(__x86_64__)
    assert_known_chain(&c);
#endif
}

/* The caller's frame taken by SA_CALLER_FRAME must carry the caller's rbp:
 * here the caller's CFA is on rbp (a variable-length array), so a wrong rbp
 * would give a wrong stack from its frame on. */
static int (*volatile capture_fn)(void *) = capture_both;

__attribute__((noinline)) static int vla_caller(struct captured *c, int n)
{
    volatile char buf[n];
    buf[0] = (char)n;
    int r = capture_fn(c);
    return r + buf[0];
}

static void walker_from_the_callers_frame_keeps_its_rbp(void **state)
{
    (void)state;
    static struct captured c;
    memset(&c, 0, sizeof(c));
    assert_int_equal(vla_caller(&c, 40 + (int)(c.n_ours & 1)), 40);
    assert_same_stacks(&c);
}

static uintptr_t deep[SA_PROF_MAX_DEPTH + 8];
static int deep_n;
static unsigned deep_stacks_n;

__attribute__((noinline)) static int capture_deep(void *arg)
{
    (void)arg;
    uintptr_t above = (uintptr_t)__builtin_dwarf_cfa();
    deep_n = sa_frames_capture(deep, SA_PROF_MAX_DEPTH, above);
    uintptr_t buf[SA_PROF_MAX_DEPTH + SA_STACK_LEAD];
    (void)sa_stack_capture(buf, SA_PROF_MAX_DEPTH, SA_CALLER_FRAME(), &deep_stacks_n);
    return 0;
}

/* 100 frames deep: 64 reported, the leaf's call site then 63 of the
 * recursion's; the profile's capture (either unwinder) stops at 64 too. */
static void walker_stops_at_the_depth_asked(void **state)
{
    (void)state;
    chain_recurse(100, capture_deep, NULL);
    assert_int_equal(deep_stacks_n, SA_PROF_MAX_DEPTH);
#if defined(__x86_64__)
    assert_int_equal(deep_n, SA_PROF_MAX_DEPTH);
    assert_true(deep[0] != deep[1]);
    for (int i = 2; i < SA_PROF_MAX_DEPTH; i++)
        assert_true(deep[i] == deep[1]);
#endif
}

#if defined(__x86_64__)
__attribute__((noinline)) static int note_ra(void *arg)
{
    *(void **)arg = __builtin_return_address(0);
    return 0;
}
#endif

/* A page of garbage between two inaccessible pages, walked with the page's
 * end as the stack's top: every word a return address into real code (so
 * each step finds a rule and goes on), then random words, then a frame
 * whose rbp is wild.  The walk must end without a fault (the guard pages
 * would raise SIGSEGV on a read outside) and within the depth given. */
static void walker_stops_cleanly_on_garbage(void **state)
{
    (void)state;
#if defined(__x86_64__)
    long page = sysconf(_SC_PAGESIZE);
    uint8_t *m = mmap(NULL, (size_t)page * 3, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                      -1, 0);
    assert_true(m != MAP_FAILED);
    assert_int_equal(mprotect(m, (size_t)page, PROT_NONE), 0);
    assert_int_equal(mprotect(m + 2 * page, (size_t)page, PROT_NONE), 0);
    uintptr_t *words = (uintptr_t *)(m + page);
    size_t nwords = (size_t)page / sizeof(uintptr_t);
    uintptr_t lo = (uintptr_t)words, hi = lo + (uintptr_t)page;
    static uintptr_t pcs[4096];
    void *ras[CHAIN_LEVELS + 1];
    chain_run(note_ra, &ras[0]);
    for (int i = 0; i < CHAIN_LEVELS - 1; i++)
        ras[i + 1] = chain_ra[i];
    int hops = 0;
    /* Return addresses all the way up: the walk climbs to the top. */
    for (int k = 0; k < CHAIN_LEVELS; k++) {
        for (size_t i = 0; i < nwords; i++)
            words[i] = (uintptr_t)ras[k];
        struct sa_frame f = {(uintptr_t)ras[k], lo, hi - 64};
        int n = sa_frames_walk(f, hi, 0, pcs, 4096);
        assert_true(n >= 1 && n <= (int)nwords);
        hops += n;
        f.sp = lo + 8 * (unsigned)k; /* and from other offsets */
        n = sa_frames_walk(f, hi, 0, pcs, 4096);
        assert_true(n >= 1 && n <= (int)nwords);
        n = sa_frames_walk(f, hi, 0, pcs, 3);
        assert_true(n >= 1 && n <= 3);
    }
    assert_true(hops > 2 * CHAIN_LEVELS); /* some walks did climb */
    /* Random words; wild rbp values. */
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (int round = 0; round < 200; round++) {
        for (size_t i = 0; i < nwords; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            words[i] = (i % 3 == 0) ? (uintptr_t)ras[x % CHAIN_LEVELS] : (uintptr_t)x;
        }
        struct sa_frame f = {(uintptr_t)ras[round % CHAIN_LEVELS], lo + 8 * (uintptr_t)(x % 64),
                             (uintptr_t)(x * 31)};
        int n = sa_frames_walk(f, hi, 0, pcs, 4096);
        assert_true(n >= 1 && n <= (int)nwords);
    }
    /* Not code at all: one frame, then the end. */
    struct sa_frame f = {(uintptr_t)words + 16, lo, lo};
    assert_int_equal(sa_frames_walk(f, hi, 0, pcs, 4096), 1);
    f.pc = 0;
    assert_int_equal(sa_frames_walk(f, hi, 0, pcs, 4096), 0);
    munmap(m, (size_t)page * 3);
#endif
}

/* ---- 7. idle threads */

enum { IDLE_THREADS = 200 };
static pthread_barrier_t idle_barrier;
static void *idle_blocks[IDLE_THREADS];

static long vm_rss_kib(void)
{
    char buf[4096];
    int fd = open("/proc/self/status", O_RDONLY);
    assert_true(fd >= 0);
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    assert_true(n > 0);
    buf[n] = 0;
    const char *at = strstr(buf, "VmRSS:");
    assert_non_null(at);
    return strtol(at + 6, NULL, 10);
}

static void *sample_once_then_idle(void *arg)
{
    size_t i = (size_t)(uintptr_t)arg;
    spanalloc_free(spanalloc_malloc(64)); /* the thread's cache and countdown, unsampled */
    pthread_barrier_wait(&idle_barrier);  /* 1: measured before */
    pthread_barrier_wait(&idle_barrier);  /* 2: rate 1 set */
    sa_sampler_reseed(i + 1);
    idle_blocks[i] = spanalloc_malloc(64); /* sampled: one stack walk */
    pthread_barrier_wait(&idle_barrier);  /* 3: measured after */
    pthread_barrier_wait(&idle_barrier);  /* 4: exit */
    return NULL;
}

/* 200 live threads take one sample each: the process grows by the records
 * and the stack each walk touches, a few KiB per thread at most (the
 * libunwind this replaced kept ~100 KiB of cache in each). */
static void idle_threads_sampling_once_do_not_grow(void **state)
{
    (void)state;
    set_rate(0, 1);
    pthread_t t[IDLE_THREADS];
    assert_int_equal(pthread_barrier_init(&idle_barrier, NULL, IDLE_THREADS + 1), 0);
    for (size_t i = 0; i < IDLE_THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, sample_once_then_idle, (void *)(uintptr_t)i), 0);
    pthread_barrier_wait(&idle_barrier);
    long before = vm_rss_kib();
    sa_profile_options.rate = 1;
    pthread_barrier_wait(&idle_barrier);
    pthread_barrier_wait(&idle_barrier);
    long after = vm_rss_kib();
    for (size_t i = 0; i < IDLE_THREADS; i++)
        assert_true(is_sampled(idle_blocks[i]));
    set_rate(0, 1);
    pthread_barrier_wait(&idle_barrier);
    for (size_t i = 0; i < IDLE_THREADS; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    pthread_barrier_destroy(&idle_barrier);
    for (size_t i = 0; i < IDLE_THREADS; i++)
        spanalloc_free(idle_blocks[i]);
    long per_thread = (after - before) / IDLE_THREADS;
    print_message("RSS %ld KiB before, %ld KiB after %d samples: %ld KiB per thread\n", before,
                  after, IDLE_THREADS, per_thread);
    assert_true(after - before <= 16 * IDLE_THREADS + 2048);
    set_rate(SA_PROFILE_DEFAULT_RATE, 1);
}

int mallctl(const char *name, void *oldp, size_t *oldlenp, void *newp, size_t newlen);

/* jemalloc's names: prof.dump writes the profile, opt.prof says sampling is on. */
static void mallctl_prof_dump_writes_the_profile(void **state)
{
    (void)state;
    set_rate(1, 23);
    void *p = spanalloc_malloc(4321);
    char path[] = "/tmp/spanalloc_dump_XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    unlink(path);
    const char *name = path;
    assert_int_equal(mallctl("prof.dump", NULL, NULL, &name, sizeof(name)), 0);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_true(st.st_size > 20);
    assert_int_equal(mallctl("prof.dump", NULL, NULL, &name, 1), EINVAL);
    bool on = false;
    size_t len = sizeof(on);
    assert_int_equal(mallctl("opt.prof", &on, &len, NULL, 0), 0);
    assert_true(on);
    set_rate(0, 1);
    assert_int_equal(mallctl("opt.prof", &on, &len, NULL, 0), 0);
    assert_false(on);
    unlink(path);
    spanalloc_free(p);
    set_rate(SA_PROFILE_DEFAULT_RATE, 1);
}

/* SPANALLOC_PROFILE_RATE as the library reads it at load: this binary run
 * again with the variable set, printing the rate it got. */
static uint64_t rate_with(const char *value)
{
    char cmd[256];
    /* The program's own path, not /proc/self/exe (valgrind's, under memcheck). */
    snprintf(cmd, sizeof(cmd), "%s '%s' --print-rate 2>/dev/null",
             value ? value : "env -u SPANALLOC_PROFILE_RATE", program_invocation_name);
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    unsigned long long rate = 1;
    assert_int_equal(fscanf(f, "%llu", &rate), 1);
    assert_int_equal(pclose(f), 0);
    return rate;
}

static void rate_option_is_parsed(void **state)
{
    (void)state;
    assert_int_equal(rate_with(NULL), 512 << 10);
    assert_int_equal(rate_with("SPANALLOC_PROFILE_RATE=16K"), 16 << 10);
    assert_int_equal(rate_with("SPANALLOC_PROFILE_RATE=1048576"), 1 << 20);
    assert_int_equal(rate_with("SPANALLOC_PROFILE_RATE=off"), 0);
    assert_int_equal(rate_with("SPANALLOC_PROFILE_RATE=0"), 0);
    assert_int_equal(rate_with("SPANALLOC_PROFILE_RATE=soon"), 512 << 10); /* kept, with a warning */
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--print-rate") == 0) {
        spanalloc_free(spanalloc_malloc(1)); /* the library is loaded and read its options */
        printf("%llu\n", (unsigned long long)sa_profile_options.rate);
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(rate_option_is_parsed),
        cmocka_unit_test(sampler_estimate_is_unbiased),
        cmocka_unit_test(sampler_weight_is_exact),
        cmocka_unit_test(sampler_draws_are_exponential),
        cmocka_unit_test(sampled_blocks_behave_like_unsampled_ones),
        cmocka_unit_test(sampled_frees_are_found),
        cmocka_unit_test(round_trip_through_go_tool_pprof),
        cmocka_unit_test(fork_with_sampled_blocks_live),
        cmocka_unit_test(fork_while_threads_sample),
        cmocka_unit_test(thread_exit_with_sampled_blocks_live),
        cmocka_unit_test(writing_races_with_allocating_threads),
        cmocka_unit_test(failing_write_reports_errno_and_leaves_the_heap),
        cmocka_unit_test(writing_leaves_the_heap_alone),
        cmocka_unit_test(mallctl_prof_dump_writes_the_profile),
        cmocka_unit_test(walker_matches_libgcc_on_known_chains),
        cmocka_unit_test(walker_matches_libgcc_through_libc),
        cmocka_unit_test(walker_matches_libgcc_in_a_thread),
        cmocka_unit_test(walker_from_the_callers_frame_keeps_its_rbp),
        cmocka_unit_test(walker_stops_at_the_depth_asked),
        cmocka_unit_test(walker_stops_cleanly_on_garbage),
        cmocka_unit_test(idle_threads_sampling_once_do_not_grow),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
