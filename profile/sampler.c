/*
 * sampler.c: when to sample, and the out-of-line half of the malloc hook.
 *
 * The countdown (sampler.h) reaches here when it goes below zero.  The next
 * budget is an exponential draw with mean `rate`, from a per-thread
 * generator (splitmix64, seeded from getrandom on the thread's first trip
 * here): memorylessness makes every allocation's chance of being sampled
 * 1 - exp(-size/rate), independent of the others, which is what the weights
 * in the profile assume.
 *
 * A sampled allocation gets a span of its own from the heap (the large path,
 * one call): free() of it then leaves the inline path by itself (a non-small
 * span fails the inline check) and finds the record through the span, so no
 * unsampled free looks anything up.
 */
#include <math.h>
#include <stdatomic.h>

#include "../alloc/entry.h"
#include "profile_internal.h"

static __thread uint64_t rng_state __attribute__((tls_model("initial-exec")));
static __thread bool in_profiler __attribute__((tls_model("initial-exec")));

#define NO_SAMPLE_BUDGET ((uint64_t)INT64_MAX)

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* u uniform in (0, 1]: never log(0). */
static double uniform_open0(void)
{
    return (double)((splitmix64(&rng_state) >> 11) + 1) * 0x1.0p-53;
}

/* ---- Standard exponential draws: Marsaglia and Tsang's ziggurat ("The
 * ziggurat method for generating random variables", J. Stat. Softw. 5(8),
 * 2000), 256 layers of equal area, with 53-bit uniforms and a layer index
 * from bits of the same word the uniform does not use.  About 99% of draws
 * are one table compare and one multiply (no log: ~25 instructions where
 * -log(u) cost ~100); the rest are accepted or rejected exactly against
 * exp(-x), and the base layer's tail is de - log(u) (memorylessness), so
 * the draw is the exponential distribution itself, not an approximation.
 * The tables are built once, by the first thread to draw; a thread that
 * finds them not yet built draws -log(u). */
#define ZIG_N 256
#define ZIG_R 7.697117470131487 /* the rightmost layer's x */
#define ZIG_V 3.949659822581572e-3 /* each layer's area */
static uint64_t zig_k[ZIG_N];
static double zig_w[ZIG_N], zig_f[ZIG_N];
static _Atomic int zig_state; /* 0 not built, 1 building, 2 built */

static SA_NOINLINE void zig_build(void)
{
    int expected = 0;
    if (!atomic_compare_exchange_strong(&zig_state, &expected, 1))
        return;
    const double m = 0x1.0p53;
    double de = ZIG_R, te = ZIG_R;
    double q = ZIG_V / exp(-de);
    zig_k[0] = (uint64_t)((de / q) * m);
    zig_k[1] = 0;
    zig_w[0] = q / m;
    zig_w[ZIG_N - 1] = de / m;
    zig_f[0] = 1.0;
    zig_f[ZIG_N - 1] = exp(-de);
    for (int i = ZIG_N - 2; i >= 1; i--) {
        de = -log(ZIG_V / de + exp(-de));
        zig_k[i + 1] = (uint64_t)((de / te) * m);
        te = de;
        zig_f[i] = exp(-de);
        zig_w[i] = de / m;
    }
    atomic_store_explicit(&zig_state, 2, memory_order_release);
}

/* The draws that miss the fast test: Marsaglia and Tsang's efix. */
static SA_NOINLINE double zig_slow(uint64_t j, unsigned i)
{
    for (;;) {
        if (i == 0)
            return ZIG_R - log(uniform_open0());
        double x = (double)j * zig_w[i];
        if (zig_f[i] + uniform_open0() * (zig_f[i - 1] - zig_f[i]) < exp(-x))
            return x;
        uint64_t r = splitmix64(&rng_state);
        j = r >> 11;
        i = (unsigned)(r & (ZIG_N - 1));
        if (j < zig_k[i])
            return (double)j * zig_w[i];
    }
}

/* A standard exponential draw (mean 1). */
static double exp_draw(void)
{
    if (SA_UNLIKELY(atomic_load_explicit(&zig_state, memory_order_acquire) != 2)) {
        if (atomic_load_explicit(&zig_state, memory_order_relaxed) == 0)
            zig_build();
        if (atomic_load_explicit(&zig_state, memory_order_acquire) != 2)
            return -log(uniform_open0());
    }
    uint64_t r = splitmix64(&rng_state);
    uint64_t j = r >> 11; /* 53 bits */
    unsigned i = (unsigned)(r & (ZIG_N - 1));
    if (SA_LIKELY(j < zig_k[i]))
        return (double)j * zig_w[i];
    return zig_slow(j, i);
}

/* An exponential draw with mean rate, in bytes (at least 1). */
static uint64_t draw_budget(uint64_t rate)
{
    if (rate == 1)
        return 0; /* every allocation (as Go's MemProfileRate = 1) */
    if (rng_state == 0) {
        uint64_t seed = 0;
        sa_os_random(&seed, sizeof(seed));
        rng_state = seed | 1;
    }
    double bytes = exp_draw() * (double)rate;
    if (bytes >= (double)(NO_SAMPLE_BUDGET >> 1))
        return NO_SAMPLE_BUDGET >> 1;
    return bytes < 1.0 ? 1 : (uint64_t)bytes;
}

double sa_sampler_exp_draw(void)
{
    if (rng_state == 0)
        rng_state = 1;
    return exp_draw();
}

/* 1 / (1 - exp(-x)) = 1/x + 1/2 + sum over k >= 1 of B(2k) x^(2k-1) / (2k)!
 * (B the Bernoulli numbers), converging for |x| < 2 pi; for x <= 1/2 the
 * terms after x^13 add less than 1e-17 of the value.  The coefficients
 * B(2k) / (2k)! for k = 1..7. */
#define W1 (1.0 / 12)
#define W3 (-1.0 / 720)
#define W5 (1.0 / 30240)
#define W7 (-1.0 / 1209600)
#define W9 (1.0 / 47900160)
#define W11 (-691.0 / 1307674368000.0)
#define W13 (1.0 / 74724249600)

double sa_sampler_weight(size_t size, uint64_t rate)
{
    if (rate <= 1)
        return 1.0;
    if (size != 0 && size <= rate / 2) {
        /* The series: no expm1 call, and as exact (within an ulp or two). */
        double x = (double)size / (double)rate, x2 = x * x;
        double odd = x * (W1 + x2 * (W3 + x2 * (W5 + x2 * (W7 + x2 * (W9 + x2 * (W11 + x2 * W13))))));
        return (double)rate / (double)size + (0.5 + odd);
    }
    if (size == 0)
        return (double)rate;
    /* x > 1/2: exp(-x) < 0.61, so 1 - exp(-x) loses no more than a bit or
     * two, and exp costs ~25 instructions less than expm1. */
    return 1.0 / (1.0 - exp(-(double)size / (double)rate));
}

void sa_sampler_reseed(uint64_t seed)
{
    rng_state = seed | 1;
    uint64_t rate = sa_profile_options.rate;
    sa_tls.prof_countdown = rate ? draw_budget(rate) : NO_SAMPLE_BUDGET;
}

/* The usable size the block would have had unsampled, and its class. */
static size_t usable_for(size_t size, size_t align, uint32_t *cls)
{
    *cls = 0;
    if (size <= SA_MAX_MEDIUM && align <= 16) /* small and medium classes */
        *cls = sa_size_class(size ? size : 1);
    else if (align <= SA_PAGE_SIZE) /* a span's base is page aligned */
        *cls = sa_aligned_class(size, align);
    return *cls != 0 ? sa_class_size[*cls] : size;
}

static SA_NOINLINE void *sample(size_t size, size_t align, struct sa_frame from)
{
    uint32_t cls;
    size_t usable = usable_for(size, align, &cls);
    /* A small block is counted by the heap at its class's size, in the
     * same step as its span: read_mem_stats never sees the span's bytes. */
    void *p = sa_malloc_own_span_as(usable ? usable : 1, align, cls != 0 ? usable : 0);
    if (p == NULL)
        return sa_malloc_plain(size, align); /* the heap said no; the caches may not */
    struct sa_span *s = sa_pagemap_lookup((uintptr_t)p);
    if (cls == 0)
        usable = (size_t)s->npages << SA_PAGE_SHIFT;
    uintptr_t buf[SA_PROF_MAX_DEPTH + SA_STACK_LEAD];
    unsigned depth;
    const uintptr_t *pcs = sa_stack_capture(buf, SA_PROF_MAX_DEPTH, from, &depth);
    sa_prof_record(s, pcs, depth, size, usable, cls);
    return p;
}

void *sa_profile_malloc(size_t size, size_t align)
{
    uint64_t rate = atomic_load_explicit((_Atomic uint64_t *)&sa_profile_options.rate,
                                         memory_order_relaxed);
    if (rate == 0) {
        sa_tls.prof_countdown = NO_SAMPLE_BUDGET;
        return sa_malloc_plain(size, align);
    }
    bool fresh_thread = rng_state == 0;
    uint64_t budget = draw_budget(rate);
    if (fresh_thread) {
        /* The thread's first budget: this allocation is sampled only if it
         * exceeds the draw, like any other. */
        if (budget > size) {
            sa_tls.prof_countdown = budget - size;
            return sa_malloc_plain(size, align);
        }
        budget = draw_budget(rate);
    }
    sa_tls.prof_countdown = budget;
    /* The unwinder or the record may allocate through us (it should not;
     * if it does, that allocation is not sampled). */
    if (in_profiler || atomic_load_explicit(&sa_init_state, memory_order_acquire) != 2)
        return sa_malloc_plain(size, align);
    in_profiler = true;
    /* The stack from malloc's caller's frame (or from the entry point's, which
     * stacks.c drops): the sampler's own frames are not walked. */
    void *p = sample(size, align, SA_CALLER_FRAME());
    sa_prof_after_sample();
    in_profiler = false;
    return p;
}
