/*
 * rss_vs_heap: the seeds' "pool" workload, traced over time.
 *
 * A Go program keeps a pool of 20 slots and puts a fresh 5..10 MB buffer in
 * a random slot every step, dropping what was there; its RSS stays at the
 * heap's peak long after the live set shrinks, until the scavenger (or
 * debug.FreeOSMemory) gives idle spans back.  This program replays that
 * story in four phases under whatever allocator is preloaded:
 *
 *   0 busy     paced steps (default 20/s for 10 s), every buffer memset
 *   1 shrink   slots freed one by one until --keep-slots remain
 *   2 idle     the main thread sleeps: no allocator call at all, so only a
 *              real background thread can release anything
 *   3 release  the allocator's own release call (free_os_memory(),
 *              malloc_trim(0), mallctl purge, ...), then a short tail
 *
 * A sampler thread records every 100 ms: time, live bytes, spanalloc's
 * read_mem_stats() fields when the symbol exists, and Rss/LazyFree from
 * /proc/self/smaps_rollup.  It never calls malloc: its sample array and the
 * workload's bookkeeping come from mmap, so heap statistics show only the
 * workload's own objects.
 *
 * --small replaces the big buffers with millions of 16..1024 B objects whose
 * live set shrinks in a random pattern, leaving spans partly occupied: there
 * fragmentation decides how much an allocator can release.
 *
 * Output: CSV on --out (header line first), progress lines and one
 * "summary key=value ..." line on stderr.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "bench_common.h"

enum { PH_BUSY, PH_SHRINK, PH_IDLE, PH_RELEASE, PH_COUNT };
static const char *const phase_names[PH_COUNT] = {"busy", "shrink", "idle", "release"};

struct sample {
    double t;
    int phase;
    bool have_stats;
    uint64_t live;
    uint64_t heap_alloc, heap_inuse, heap_idle, heap_released, heap_sys, sys;
    uint64_t rss, lazyfree;
};

struct options {
    bool small;
    uint64_t seed;
    double busy_s, shrink_s, idle_s, tail_s;
    bool idle_given;
    double interval_ms;
    const char *out;
    /* pool variant */
    int slots, keep_slots;
    uint64_t min_bytes, max_bytes;
    double steps_per_s;
    /* small variant */
    uint64_t objects;
    uint64_t small_min, small_max;
    double keep_fraction;
    double churn_per_s;
};

static struct options opt = {
    .seed = 1,
    .busy_s = 10,
    .shrink_s = 3,
    .idle_s = 15,
    .tail_s = 2,
    .interval_ms = 100,
    .out = "-",
    .slots = 20,
    .keep_slots = 2,
    .min_bytes = 5000000,
    .max_bytes = 10000000,
    .steps_per_s = 20,
    .objects = 1000000,
    .small_min = 16,
    .small_max = 1024,
    .keep_fraction = 0.05,
    .churn_per_s = 200000,
};

static struct bench_alloc alloc;
static _Atomic uint64_t g_live;
static _Atomic int g_phase;
static _Atomic bool g_stop;
static struct sample *samples;
static size_t max_samples;
static _Atomic size_t nsamples;
static uint64_t t0;
static double steady_t;          /* busy: when the live set was built (small) */
static size_t bookkeeping;       /* bytes of the workload's own mmap'd arrays */
static size_t bookkeeping_busy;  /* ... as they were during the busy phase */

/* ---- sampler */

static void take_sample(char *buf, size_t cap)
{
    size_t i = atomic_load(&nsamples);
    if (i >= max_samples)
        return;
    struct sample *s = &samples[i];
    s->t = (double)(bench_now_ns() - t0) / 1e9;
    s->phase = atomic_load(&g_phase);
    s->live = atomic_load(&g_live);
    if (alloc.read_stats != NULL) {
        struct mem_stats st;
        alloc.read_stats(&st);
        s->have_stats = true;
        s->heap_alloc = st.heap_alloc;
        s->heap_inuse = st.heap_inuse;
        s->heap_idle = st.heap_idle;
        s->heap_released = st.heap_released;
        s->heap_sys = st.heap_sys;
        s->sys = st.sys;
    }
    struct bench_mem m = {0, 0};
    bench_read_mem(&m, buf, cap);
    s->rss = m.rss;
    s->lazyfree = m.lazyfree;
    atomic_store(&nsamples, i + 1);
}

static void *sampler_main(void *arg)
{
    (void)arg;
    static char buf[16384];
    uint64_t period = (uint64_t)(opt.interval_ms * 1e6);
    uint64_t next = t0;
    while (!atomic_load(&g_stop)) {
        take_sample(buf, sizeof(buf));
        next += period;
        bench_sleep_until_ns(next);
    }
    take_sample(buf, sizeof(buf)); /* the final state */
    return NULL;
}

/* ---- helpers */

static void *map_zeroed(size_t bytes)
{
    bookkeeping += bytes;
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    return p;
}

static double elapsed_s(void)
{
    return (double)(bench_now_ns() - t0) / 1e9;
}

static double phase_t[PH_COUNT]; /* when each phase began, seconds from t0 */

static void set_phase(int ph)
{
    phase_t[ph] = elapsed_s();
    if (ph == PH_SHRINK)
        bookkeeping_busy = bookkeeping;
    atomic_store(&g_phase, ph);
    fprintf(stderr, "rss_vs_heap[%s]: t=%6.2fs phase %s (live %.1f MiB)\n", alloc.name,
            elapsed_s(), phase_names[ph], (double)atomic_load(&g_live) / 1048576.0);
}

static uint64_t deadline_after(double seconds)
{
    return bench_now_ns() + (uint64_t)(seconds * 1e9);
}

static _Noreturn void corrupt(const char *what, const void *p, uint64_t size)
{
    fprintf(stderr, "rss_vs_heap[%s]: CONTENT CHECK FAILED: %s (block %p, %" PRIu64 " bytes)\n",
            alloc.name, what, p, size);
    abort();
}

static inline unsigned char tag_for(uint64_t size, uint64_t salt)
{
    return (unsigned char)(((size * 0x9e3779b1u) >> 11) ^ salt) | 1u;
}

/* ---- the pool variant (the seeds' program) */

struct slot {
    unsigned char *p;
    uint64_t size;
    unsigned char tag;
};

static struct slot *pool_survivors; /* checked again after the release call */

static void pool_check(const struct slot *s)
{
    if (s->p[0] != s->tag || s->p[s->size / 2] != s->tag || s->p[s->size - 1] != s->tag)
        corrupt("pool buffer changed while live", s->p, s->size);
}

static void pool_step(struct bench_rng *r, struct slot *pool, uint64_t step)
{
    uint64_t size = bench_rng_range(r, opt.min_bytes, opt.max_bytes);
    unsigned char *p = malloc(size);
    if (p == NULL) {
        fprintf(stderr, "malloc(%" PRIu64 ") failed\n", size);
        exit(1);
    }
    unsigned char tag = tag_for(size, step);
    memset(p, tag, size); /* non-zero: touches every page, never turned into calloc */
    int i = (int)bench_rng_range(r, 0, (uint64_t)opt.slots - 1);
    struct slot *s = &pool[i];
    if (s->p != NULL) {
        pool_check(s);
        free(s->p);
        atomic_fetch_sub(&g_live, s->size);
    }
    s->p = p;
    s->size = size;
    s->tag = tag;
    atomic_fetch_add(&g_live, size);
}

static void run_pool(struct bench_rng *r)
{
    struct slot *pool = map_zeroed(sizeof(struct slot) * (size_t)opt.slots);
    pool_survivors = pool;
    set_phase(PH_BUSY);
    /* Steps at a fixed rate; the phase ends on time even if a loaded machine
     * falls behind, so every allocator's phases line up on the time axis. */
    uint64_t steps = (uint64_t)(opt.busy_s * opt.steps_per_s), k = 0;
    uint64_t start = bench_now_ns(), end = start + (uint64_t)(opt.busy_s * 1e9);
    double step_ns = 1e9 / opt.steps_per_s;
    for (; k < steps && bench_now_ns() < end; k++) {
        bench_sleep_until_ns(start + (uint64_t)((double)k * step_ns));
        pool_step(r, pool, k);
    }
    bench_sleep_until_ns(end);
    fprintf(stderr, "rss_vs_heap[%s]: %" PRIu64 " of %" PRIu64 " steps done\n", alloc.name, k,
            steps);

    set_phase(PH_SHRINK);
    int occupied = 0;
    for (int i = 0; i < opt.slots; i++)
        occupied += pool[i].p != NULL;
    int to_free = occupied - opt.keep_slots;
    start = bench_now_ns();
    for (int freed = 0, i = 0; freed < to_free && i < opt.slots; i++) {
        if (pool[i].p == NULL)
            continue;
        bench_sleep_until_ns(start + (uint64_t)(opt.shrink_s * 1e9 * freed / (to_free > 1 ? to_free - 1 : 1)));
        pool_check(&pool[i]);
        free(pool[i].p);
        atomic_fetch_sub(&g_live, pool[i].size);
        pool[i].p = NULL;
        freed++;
    }
    if (to_free <= 1)
        bench_sleep_until_ns(start + (uint64_t)(opt.shrink_s * 1e9));
}

/* ---- the small-object variant */

struct small_obj {
    unsigned char *p;
    uint32_t size;
};

static struct small_obj *small_survivors;
static uint64_t small_nsurvivors;

static void small_fill(struct bench_rng *r, struct small_obj *o)
{
    uint32_t size = (uint32_t)bench_rng_logsize(r, opt.small_min, opt.small_max);
    unsigned char *p = malloc(size);
    if (p == NULL) {
        fprintf(stderr, "malloc(%u) failed\n", size);
        exit(1);
    }
    memset(p, tag_for(size, 0), size);
    o->p = p;
    o->size = size;
    atomic_fetch_add_explicit(&g_live, size, memory_order_relaxed);
}

static void small_drop(struct small_obj *o)
{
    unsigned char tag = tag_for(o->size, 0);
    if (o->p[0] != tag || o->p[o->size - 1] != tag)
        corrupt("small object changed while live", o->p, o->size);
    free(o->p);
    atomic_fetch_sub_explicit(&g_live, o->size, memory_order_relaxed);
    o->p = NULL;
}

static void run_small(struct bench_rng *r)
{
    uint64_t n = opt.objects;
    struct small_obj *objs = map_zeroed(sizeof(*objs) * n);
    set_phase(PH_BUSY);
    for (uint64_t i = 0; i < n; i++)
        small_fill(r, &objs[i]);
    steady_t = elapsed_s();
    fprintf(stderr, "rss_vs_heap[%s]: t=%6.2fs %" PRIu64 " objects built\n", alloc.name,
            steady_t, n);

    /* Paced churn: replace random objects in 10 ms ticks, until busy_s is
     * over but for at least half of it (a loaded machine may build slowly). */
    uint64_t tick_ns = 10000000;
    uint64_t per_tick = (uint64_t)(opt.churn_per_s / 100.0);
    uint64_t end = t0 + (uint64_t)(opt.busy_s * 1e9);
    uint64_t min_end = bench_now_ns() + (uint64_t)(opt.busy_s * 0.5e9);
    if (end < min_end)
        end = min_end;
    uint64_t replaced = 0;
    for (uint64_t next = bench_now_ns(); next < end; next += tick_ns) {
        bench_sleep_until_ns(next);
        for (uint64_t k = 0; k < per_tick; k++) {
            uint64_t i = bench_rng_next(r) % n;
            small_drop(&objs[i]);
            small_fill(r, &objs[i]);
            replaced++;
        }
    }
    fprintf(stderr, "rss_vs_heap[%s]: %" PRIu64 " objects replaced\n", alloc.name, replaced);

    /* Shrink: free all but keep_fraction, in random order, spread over shrink_s. */
    set_phase(PH_SHRINK);
    uint32_t *order = map_zeroed(sizeof(uint32_t) * n);
    for (uint64_t i = 0; i < n; i++)
        order[i] = (uint32_t)i;
    for (uint64_t i = n - 1; i > 0; i--) {
        uint64_t j = bench_rng_next(r) % (i + 1);
        uint32_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    uint64_t to_free = (uint64_t)((double)n * (1.0 - opt.keep_fraction));
    uint64_t ticks = (uint64_t)(opt.shrink_s * 1e9 / (double)tick_ns);
    if (ticks == 0)
        ticks = 1;
    uint64_t start = bench_now_ns(), done = 0;
    for (uint64_t t = 1; t <= ticks; t++) {
        uint64_t goal = to_free * t / ticks;
        for (; done < goal; done++)
            small_drop(&objs[order[done]]);
        bench_sleep_until_ns(start + t * tick_ns);
    }
    /* Keep the survivors in a small array and unmap the big ones, so that the
     * RSS after the shrink is the allocator's, not this program's. */
    uint64_t left = n - to_free;
    struct small_obj *keep = map_zeroed(sizeof(*keep) * (left ? left : 1));
    for (uint64_t i = 0; i < left; i++)
        keep[i] = objs[order[to_free + i]];
    small_survivors = keep;
    small_nsurvivors = left;
    munmap(order, sizeof(uint32_t) * n);
    munmap(objs, sizeof(*objs) * n);
    bookkeeping -= sizeof(uint32_t) * n + sizeof(*objs) * n;
}

/* Live objects must survive the release call intact. */
static void verify_survivors(void)
{
    if (pool_survivors != NULL)
        for (int i = 0; i < opt.slots; i++)
            if (pool_survivors[i].p != NULL)
                pool_check(&pool_survivors[i]);
    for (uint64_t i = 0; i < small_nsurvivors; i++) {
        const struct small_obj *o = &small_survivors[i];
        unsigned char tag = tag_for(o->size, 0);
        if (o->p[0] != tag || o->p[o->size / 2] != tag || o->p[o->size - 1] != tag)
            corrupt("live object changed by the release call", o->p, o->size);
    }
}

static void free_survivors(void)
{
    if (pool_survivors != NULL)
        for (int i = 0; i < opt.slots; i++)
            free(pool_survivors[i].p);
    for (uint64_t i = 0; i < small_nsurvivors; i++)
        free(small_survivors[i].p);
}

/* ---- idle-phase default: long enough for spanalloc's scavenger */

static double parse_duration(const char *s)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || v < 0)
        return -1;
    if (strcmp(end, "ms") == 0)
        return v / 1000;
    if (strcmp(end, "s") == 0 || *end == '\0')
        return v;
    if (strcmp(end, "m") == 0)
        return v * 60;
    if (strcmp(end, "h") == 0)
        return v * 3600;
    return -1;
}

static void choose_idle(void)
{
    if (opt.idle_given || strcmp(alloc.name, "spanalloc") != 0)
        return;
    double thr = 300; /* spanalloc's default: 5 minutes */
    const char *env = getenv("SPANALLOC_SCAVENGE_IDLE");
    if (env != NULL && parse_duration(env) >= 0)
        thr = parse_duration(env);
    double period = thr / 2 > 5 ? 5 : thr / 2;
    double need = thr + 2 * period + 5;
    if (need > opt.idle_s) {
        fprintf(stderr,
                "rss_vs_heap[spanalloc]: scavenge idle threshold %.0fs: idle phase "
                "lengthened to %.0fs (use --idle-seconds to choose)\n",
                thr, need);
        opt.idle_s = need;
    }
}

/* ---- output */

static void write_csv(FILE *f)
{
    fprintf(f, "t,phase,live,heap_alloc,heap_inuse,heap_idle,heap_released,heap_sys,sys,rss,lazyfree\n");
    size_t n = atomic_load(&nsamples);
    for (size_t i = 0; i < n; i++) {
        const struct sample *s = &samples[i];
        fprintf(f, "%.3f,%d,%" PRIu64 ",", s->t, s->phase, s->live);
        if (s->have_stats)
            fprintf(f, "%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",",
                    s->heap_alloc, s->heap_inuse, s->heap_idle, s->heap_released, s->heap_sys,
                    s->sys);
        else
            fprintf(f, ",,,,,,");
        fprintf(f, "%" PRIu64 ",%" PRIu64 "\n", s->rss, s->lazyfree);
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void summary(double release_ms)
{
    size_t n = atomic_load(&nsamples);
    const double mib = 1048576.0;
    /* Busy: the second half of the phase, once the pool is full. */
    size_t bk = bookkeeping;
    double from = phase_t[PH_BUSY] + (phase_t[PH_SHRINK] - phase_t[PH_BUSY]) / 2;
    if (from < steady_t)
        from = steady_t;
    double *ratio = map_zeroed(sizeof(double) * (n + 1));
    double *rss = map_zeroed(sizeof(double) * (n + 1));
    double *live = map_zeroed(sizeof(double) * (n + 1));
    size_t k = 0;
    double peak = 0;
    const struct sample *last[PH_COUNT] = {0};
    for (size_t i = 0; i < n; i++) {
        const struct sample *s = &samples[i];
        if ((double)s->rss > peak)
            peak = (double)s->rss;
        last[s->phase] = s;
        if (s->phase == PH_BUSY && s->t >= from && s->live > 0) {
            ratio[k] = (double)s->rss / (double)s->live;
            rss[k] = (double)s->rss;
            live[k] = (double)s->live;
            k++;
        }
    }
    qsort(ratio, k, sizeof(double), cmp_double);
    qsort(rss, k, sizeof(double), cmp_double);
    qsort(live, k, sizeof(double), cmp_double);
    double busy_ratio = k ? ratio[k / 2] : 0, busy_rss = k ? rss[k / 2] : 0,
           busy_live = k ? live[k / 2] : 0;
    const struct sample *sh = last[PH_SHRINK], *id = last[PH_IDLE], *rl = last[PH_RELEASE];
    double live_end = rl ? (double)rl->live : 0;
    fprintf(stderr,
            "summary alloc=%s variant=%s release=%s busy_live_mib=%.1f busy_rss_mib=%.1f "
            "busy_ratio=%.3f peak_rss_mib=%.1f live_end_mib=%.1f rss_after_shrink_mib=%.1f "
            "rss_after_idle_mib=%.1f lazyfree_after_idle_mib=%.1f rss_after_release_mib=%.1f "
            "release_ms=%.2f bookkeeping_busy_mib=%.1f bookkeeping_mib=%.1f t_shrink=%.2f t_idle=%.2f t_release=%.2f t_end=%.2f",
            alloc.name, opt.small ? "small" : "pool", alloc.release, busy_live / mib,
            busy_rss / mib, busy_ratio, peak / mib, live_end / mib,
            sh ? (double)sh->rss / mib : 0, id ? (double)id->rss / mib : 0,
            id ? (double)id->lazyfree / mib : 0, rl ? (double)rl->rss / mib : 0, release_ms,
            (double)bookkeeping_busy / mib, (double)bk / mib,
            phase_t[PH_SHRINK], phase_t[PH_IDLE], phase_t[PH_RELEASE],
            n ? samples[n - 1].t : 0);
    if (id && id->have_stats)
        fprintf(stderr, " heap_released_after_idle_mib=%.1f heap_sys_after_idle_mib=%.1f",
                (double)id->heap_released / mib, (double)id->heap_sys / mib);
    fprintf(stderr, "\n");
}

/* ---- main */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: rss_vs_heap [options]\n"
            "The seeds' pool workload (20 slots, 5..10 MB buffers) in phases busy, shrink,\n"
            "idle, release+tail, sampled every 100 ms: CSV of t, phase (0 busy, 1 shrink,\n"
            "2 idle, 3 release), live, heap_* and sys (spanalloc only), rss, lazyfree.\n"
            "Run under an allocator with LD_PRELOAD; the release call is the allocator's\n"
            "own (free_os_memory, malloc_trim(0), mallctl arena purge, tcmalloc\n"
            "ReleaseFreeMemory, mi_collect(true)).\n\n"
            "  --out FILE            CSV destination (default: stdout)\n"
            "  --seed N              random seed (default 1)\n"
            "  --busy-seconds S      busy phase length (default 10)\n"
            "  --shrink-seconds S    shrink phase length (default 3)\n"
            "  --idle-seconds S      idle phase length (default 15; under spanalloc it is\n"
            "                        lengthened to fit SPANALLOC_SCAVENGE_IDLE, default 5m)\n"
            "  --tail-seconds S      time sampled after the release call (default 2)\n"
            "  --interval-ms MS      sampling period (default 100)\n"
            "  --slots N             pool slots (default 20)\n"
            "  --keep-slots N        slots still live after the shrink (default 2)\n"
            "  --min-bytes N, --max-bytes N   buffer size range (default 5000000..10000000)\n"
            "  --steps-per-second R  busy pacing (default 20; steps that do not fit in\n"
            "                        --busy-seconds on a loaded machine are dropped)\n"
            "  --small               small-object variant: --objects objects (default\n"
            "                        1000000) of 16..1024 B (log-uniform), --churn-per-second\n"
            "                        replacements (default 200000) while busy (at least half\n"
            "                        of --busy-seconds after the build), then all but\n"
            "                        --keep-fraction (default 0.05) freed in random order\n"
            "  --help                this text\n"
            "Progress and a final 'summary key=value...' line go to stderr.\n");
}

int main(int argc, char **argv)
{
    enum {
        O_OUT = 256, O_SEED, O_BUSY, O_SHRINK, O_IDLE, O_TAIL, O_INTERVAL, O_SLOTS, O_KEEP,
        O_MIN, O_MAX, O_RATE, O_SMALL, O_OBJECTS, O_KEEPF, O_CHURN, O_HELP
    };
    static const struct option longopts[] = {
        {"out", required_argument, 0, O_OUT},
        {"seed", required_argument, 0, O_SEED},
        {"busy-seconds", required_argument, 0, O_BUSY},
        {"shrink-seconds", required_argument, 0, O_SHRINK},
        {"idle-seconds", required_argument, 0, O_IDLE},
        {"tail-seconds", required_argument, 0, O_TAIL},
        {"interval-ms", required_argument, 0, O_INTERVAL},
        {"slots", required_argument, 0, O_SLOTS},
        {"keep-slots", required_argument, 0, O_KEEP},
        {"min-bytes", required_argument, 0, O_MIN},
        {"max-bytes", required_argument, 0, O_MAX},
        {"steps-per-second", required_argument, 0, O_RATE},
        {"small", no_argument, 0, O_SMALL},
        {"objects", required_argument, 0, O_OBJECTS},
        {"keep-fraction", required_argument, 0, O_KEEPF},
        {"churn-per-second", required_argument, 0, O_CHURN},
        {"help", no_argument, 0, O_HELP},
        {0, 0, 0, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case O_OUT: opt.out = optarg; break;
        case O_SEED: opt.seed = strtoull(optarg, NULL, 0); break;
        case O_BUSY: opt.busy_s = bench_parse_number("--busy-seconds", optarg); break;
        case O_SHRINK: opt.shrink_s = bench_parse_number("--shrink-seconds", optarg); break;
        case O_IDLE:
            opt.idle_s = bench_parse_number("--idle-seconds", optarg);
            opt.idle_given = true;
            break;
        case O_TAIL: opt.tail_s = bench_parse_number("--tail-seconds", optarg); break;
        case O_INTERVAL: opt.interval_ms = bench_parse_number("--interval-ms", optarg); break;
        case O_SLOTS: opt.slots = atoi(optarg); break;
        case O_KEEP: opt.keep_slots = atoi(optarg); break;
        case O_MIN: opt.min_bytes = strtoull(optarg, NULL, 0); break;
        case O_MAX: opt.max_bytes = strtoull(optarg, NULL, 0); break;
        case O_RATE: opt.steps_per_s = bench_parse_number("--steps-per-second", optarg); break;
        case O_SMALL: opt.small = true; break;
        case O_OBJECTS: opt.objects = strtoull(optarg, NULL, 0); break;
        case O_KEEPF: opt.keep_fraction = bench_parse_number("--keep-fraction", optarg); break;
        case O_CHURN: opt.churn_per_s = bench_parse_number("--churn-per-second", optarg); break;
        case 'h':
        case O_HELP: usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc || opt.slots < 1 || opt.keep_slots < 0 || opt.keep_slots > opt.slots ||
        opt.min_bytes < 1 || opt.max_bytes < opt.min_bytes || opt.steps_per_s <= 0 ||
        opt.interval_ms < 1 || opt.objects < 1 || opt.objects > UINT32_MAX ||
        opt.small_min < 1 || opt.keep_fraction > 1) {
        usage(stderr);
        return 2;
    }

    bench_alloc_detect(&alloc);
    choose_idle();
    FILE *out = stdout;
    if (strcmp(opt.out, "-") != 0 && (out = fopen(opt.out, "w")) == NULL) {
        fprintf(stderr, "rss_vs_heap: %s: %s\n", opt.out, strerror(errno));
        return 1;
    }

    double total = opt.busy_s + opt.shrink_s + opt.idle_s + opt.tail_s;
    max_samples = (size_t)(total * 1.5 * 1000.0 / opt.interval_ms) + 600;
    samples = map_zeroed(sizeof(struct sample) * max_samples);
    fprintf(stderr,
            "rss_vs_heap[%s]: variant %s, busy %.0fs, shrink %.0fs, idle %.0fs, tail %.0fs; "
            "release call %s; stats %s\n",
            alloc.name, opt.small ? "small" : "pool", opt.busy_s, opt.shrink_s, opt.idle_s,
            opt.tail_s, alloc.release, alloc.read_stats ? "read_mem_stats" : "none");

    struct bench_rng rng;
    bench_rng_seed(&rng, opt.seed);
    t0 = bench_now_ns();
    pthread_t sampler;
    if (pthread_create(&sampler, NULL, sampler_main, NULL) != 0) {
        fprintf(stderr, "rss_vs_heap: cannot start the sampler thread\n");
        return 1;
    }

    if (opt.small) {
        run_small(&rng);
    } else {
        run_pool(&rng);
    }
    set_phase(PH_IDLE);
    bench_sleep_until_ns(deadline_after(opt.idle_s)); /* no allocator call here */

    set_phase(PH_RELEASE);
    uint64_t r0 = bench_now_ns();
    bench_alloc_release(&alloc);
    double release_ms = (double)(bench_now_ns() - r0) / 1e6;
    fprintf(stderr, "rss_vs_heap[%s]: %s took %.2f ms\n", alloc.name, alloc.release, release_ms);
    bench_sleep_until_ns(deadline_after(opt.tail_s));

    atomic_store(&g_stop, true);
    pthread_join(sampler, NULL);
    verify_survivors();

    write_csv(out);
    if (out != stdout)
        fclose(out);
    else
        fflush(stdout);
    summary(release_ms);
    free_survivors();
    return 0;
}
