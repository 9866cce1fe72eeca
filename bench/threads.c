/*
 * threads: multi-threaded allocation workloads, for whatever allocator is
 * preloaded (LD_PRELOAD; this program never links libspanalloc).
 *
 * workloads.c times single programs; this file holds the workloads whose
 * figure depends on the number of threads: memory pinned by idle threads,
 * blocks handed between threads (our own versions of the larson, rptest and
 * xmalloc-test patterns), a mixed-size churn under contention, a thread
 * scaling sweep up to 256 threads on however many cores there are, and the
 * latency of malloc/free right after a large heap went idle.
 *
 * Every workload prints its figures as lines
 *     result WORKLOAD FIGURE VALUE low|high
 * ("low": smaller is better) for bench/threads.sh, which turns them into
 * tables, and a human-readable line on stderr.  Every block carries a stamp
 * that is checked before it is freed; a failed check exits with status 3.
 */
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "bench_common.h"

static double scale = 1.0;
static uint64_t seed = 1;
static double idle_wait_s = 3.0;
static struct bench_alloc alloc;

static uint64_t scaled(uint64_t n)
{
    return bench_scaled(n, scale);
}

static _Noreturn void corrupt(const char *wl, const char *what, const void *p, uint64_t size)
{
    bench_corrupt("threads", wl, alloc.name, what, p, size);
}

static void *xmalloc(size_t n)
{
    return bench_xmalloc("threads", n);
}

static void xthread(pthread_t *t, void *(*fn)(void *), void *arg)
{
    int e = pthread_create(t, NULL, fn, arg);
    if (e != 0) {
        fprintf(stderr, "threads: pthread_create: %s\n", strerror(e));
        exit(1);
    }
}

static void result(const char *wl, const char *fig, double v, const char *dir)
{
    printf("result %s %s %.6g %s\n", wl, fig, v, dir);
    fflush(stdout);
    fprintf(stderr, "  %-14s %-16s %12.4f (%s: %s is better)\n", wl, fig, v, alloc.name,
            dir[0] == 'l' ? "lower" : "higher");
}

static double mib(uint64_t bytes)
{
    return (double)bytes / (1024.0 * 1024.0);
}

static uint64_t rss_now(void)
{
    static char buf[8192];
    struct bench_mem m = {0, 0};
    bench_read_mem(&m, buf, sizeof(buf));
    return m.rss;
}

static uint64_t lazyfree_now(void)
{
    static char buf[8192];
    struct bench_mem m = {0, 0};
    bench_read_mem(&m, buf, sizeof(buf));
    return m.lazyfree;
}

static long nvcsw_now(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_nvcsw;
}

/* ---- idle threads: memory that threads keep after they stopped allocating */

/* Each idle thread's blocks are chained through themselves, so the thread
 * needs no array (which would itself be memory the figure counts):
 * bytes 0..7 the next block, 8..11 the size, 12..13 the thread's tag, and a
 * tail byte derived from both. */
struct idle_ctl {
    pthread_barrier_t alive, go, done;
    pthread_mutex_t lock;
    pthread_cond_t quit_cv;
    bool quit;
    uint64_t bytes_each;
};

static unsigned char idle_tail(uint32_t size, uint16_t tag)
{
    return bench_tail_tag(((uint64_t)tag << 32) | size);
}

static void idle_churn(struct idle_ctl *c, uint16_t tag)
{
    struct bench_rng r;
    bench_rng_seed(&r, seed * 7919 + tag);
    unsigned char *head = NULL;
    for (uint64_t total = 0; total < c->bytes_each;) {
        uint32_t size = (uint32_t)bench_rng_logsize(&r, 16, 4096);
        unsigned char *p = xmalloc(size);
        memcpy(p, &head, 8);
        memcpy(p + 8, &size, 4);
        memcpy(p + 12, &tag, 2);
        p[size - 1] = idle_tail(size, tag);
        head = p;
        total += size;
    }
    while (head != NULL) {
        unsigned char *next;
        uint32_t size;
        uint16_t t;
        memcpy(&next, head, 8);
        memcpy(&size, head + 8, 4);
        memcpy(&t, head + 12, 2);
        if (t != tag || size < 16 || size > 4096 || head[size - 1] != idle_tail(size, tag))
            corrupt("idle-threads", "block changed while live", head, size);
        free(head);
        head = next;
    }
}

struct idle_arg {
    struct idle_ctl *c;
    uint16_t tag;
};

static void *idle_thread(void *arg)
{
    struct idle_arg *a = arg;
    struct idle_ctl *c = a->c;
    pthread_barrier_wait(&c->alive);
    pthread_barrier_wait(&c->go);
    if (c->bytes_each > 0)
        idle_churn(c, a->tag);
    pthread_barrier_wait(&c->done);
    /* alive and blocked until the main thread has taken its measurements */
    pthread_mutex_lock(&c->lock);
    while (!c->quit)
        pthread_cond_wait(&c->quit_cv, &c->lock);
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

static void idle_threads(const char *wl, unsigned n)
{
    static struct idle_ctl c;
    c.bytes_each = 256 << 10;
    c.quit = false;
    pthread_barrier_init(&c.alive, NULL, n + 1);
    pthread_barrier_init(&c.go, NULL, n + 1);
    pthread_barrier_init(&c.done, NULL, n + 1);
    pthread_mutex_init(&c.lock, NULL);
    pthread_cond_init(&c.quit_cv, NULL);
    pthread_t *t = xmalloc(n * sizeof(*t));
    struct idle_arg *args = xmalloc(n * sizeof(*args));
    for (unsigned i = 0; i < n; i++) {
        args[i] = (struct idle_arg){&c, (uint16_t)(i + 1)};
        xthread(&t[i], idle_thread, &args[i]);
    }
    pthread_barrier_wait(&c.alive);
    /* the floor: n live threads that have not allocated */
    uint64_t base = rss_now();
    pthread_barrier_wait(&c.go);
    pthread_barrier_wait(&c.done);
    bench_sleep_until_ns(bench_now_ns() + (uint64_t)(idle_wait_s * 1e9));
    uint64_t idle = rss_now();
    bench_alloc_release(&alloc);
    uint64_t released = rss_now();
    uint64_t lazy = lazyfree_now();
    pthread_mutex_lock(&c.lock);
    c.quit = true;
    pthread_cond_broadcast(&c.quit_cv);
    pthread_mutex_unlock(&c.lock);
    for (unsigned i = 0; i < n; i++)
        pthread_join(t[i], NULL);
    uint64_t exited = rss_now();
    bench_alloc_release(&alloc);
    uint64_t exited_rel = rss_now();
    free(t);
    free(args);
    result(wl, "base_MiB", mib(base), "low");
    result(wl, "idle3s_MiB", mib(idle), "low");
    result(wl, "released_MiB", mib(released), "low");
    result(wl, "lazyfree_MiB", mib(lazy), "low");
    result(wl, "exited_MiB", mib(exited), "low");
    result(wl, "exited_rel_MiB", mib(exited_rel), "low");
}

static void wl_idle1000(const char *wl)
{
    idle_threads(wl, 1000);
}

static void wl_idle100(const char *wl)
{
    idle_threads(wl, 100);
}

/* ---- a start line for timed thread groups */

struct start_line {
    pthread_barrier_t b;
};

/* Creates n threads running fn(arg_i), releases them together and returns the
 * wall time from the release to the last join, in seconds. */
static double run_group(unsigned n, void *(*fn)(void *), void *args, size_t arg_size,
                        struct start_line *sl)
{
    pthread_barrier_init(&sl->b, NULL, n + 1);
    pthread_t *t = xmalloc(n * sizeof(*t));
    for (unsigned i = 0; i < n; i++)
        xthread(&t[i], fn, (char *)args + i * arg_size);
    pthread_barrier_wait(&sl->b);
    uint64_t t0 = bench_now_ns();
    for (unsigned i = 0; i < n; i++)
        pthread_join(t[i], NULL);
    double s = (double)(bench_now_ns() - t0) / 1e9;
    free(t);
    pthread_barrier_destroy(&sl->b);
    return s;
}

/* ---- exchange: blocks handed between threads in batches (rptest-like, and
 * the cross-thread half of the scaling sweep) */

struct item {
    unsigned char *p;
    uint32_t size;
    uint64_t token;
};

#define BATCH 64
struct batch {
    struct batch *next;
    unsigned n;
    struct item it[BATCH];
};

/* A thread's inbox: batches other threads want it to free.  Bounded, so the
 * memory in flight stays bounded whatever the scheduler does. */
#define INBOX_MAX 16
struct inbox {
    _Alignas(64) pthread_mutex_t lock;
    struct batch *head;
    unsigned count;
};

struct xchg_cfg {
    const char *wl;
    unsigned threads;
    uint64_t ops_each;
    uint32_t min, max;
    unsigned working_set; /* live blocks each thread keeps */
    unsigned remote_in_4; /* of 4 displaced blocks, how many go to the next thread */
    struct inbox *box;
    _Atomic unsigned finished;
    struct start_line sl;
};

struct xchg_arg {
    struct xchg_cfg *c;
    unsigned id;
    uint64_t sum;
};

static void check_free(const char *wl, const struct item *it)
{
    if (!bench_stamp_ok(it->p, it->size, it->token))
        corrupt(wl, "block changed while live (or in another thread's hands)", it->p, it->size);
    free(it->p);
}

static uint64_t drain(struct xchg_cfg *c, struct inbox *in)
{
    pthread_mutex_lock(&in->lock);
    struct batch *b = in->head;
    in->head = NULL;
    in->count = 0;
    pthread_mutex_unlock(&in->lock);
    uint64_t n = 0;
    while (b != NULL) {
        struct batch *next = b->next;
        for (unsigned i = 0; i < b->n; i++)
            check_free(c->wl, &b->it[i]);
        n += b->n;
        free(b);
        b = next;
    }
    return n;
}

/* Hands b to inbox `to`; while it is full, frees what this thread was sent,
 * so two threads waiting on each other both make progress. */
static void hand_off(struct xchg_cfg *c, unsigned self, unsigned to, struct batch *b)
{
    struct inbox *dst = &c->box[to];
    for (;;) {
        pthread_mutex_lock(&dst->lock);
        if (dst->count < INBOX_MAX) {
            b->next = dst->head;
            dst->head = b;
            dst->count++;
            pthread_mutex_unlock(&dst->lock);
            return;
        }
        pthread_mutex_unlock(&dst->lock);
        drain(c, &c->box[self]);
        sched_yield();
    }
}

static void *xchg_thread(void *arg)
{
    struct xchg_arg *a = arg;
    struct xchg_cfg *c = a->c;
    unsigned to = (a->id + 1) % c->threads;
    struct bench_rng r;
    bench_rng_seed(&r, seed * 104729 + a->id);
    struct item *ws = xmalloc(c->working_set * sizeof(*ws));
    memset(ws, 0, c->working_set * sizeof(*ws));
    struct batch *out = NULL;
    pthread_barrier_wait(&c->sl.b);
    for (uint64_t k = 0; k < c->ops_each; k++) {
        struct item *slot = &ws[bench_rng_next(&r) % c->working_set];
        if (slot->p != NULL) {
            if (c->threads > 1 && bench_rng_next(&r) % 4 < c->remote_in_4) {
                if (out == NULL) {
                    out = xmalloc(sizeof(*out));
                    out->n = 0;
                }
                out->it[out->n++] = *slot;
                if (out->n == BATCH) {
                    hand_off(c, a->id, to, out);
                    out = NULL;
                }
            } else {
                check_free(c->wl, slot);
            }
        }
        uint32_t size = (uint32_t)bench_rng_logsize(&r, c->min, c->max);
        slot->p = xmalloc(size);
        slot->size = size;
        slot->token = ((uint64_t)a->id << 48) | k;
        bench_stamp(slot->p, size, slot->token);
        a->sum += size;
        if ((k & 255) == 0)
            drain(c, &c->box[a->id]);
    }
    if (out != NULL)
        hand_off(c, a->id, to, out);
    for (unsigned i = 0; i < c->working_set; i++)
        if (ws[i].p != NULL)
            check_free(c->wl, &ws[i]);
    free(ws);
    /* Everything this thread hands off was pushed before it counts itself
     * finished; once all are finished, one last drain empties the inbox. */
    atomic_fetch_add_explicit(&c->finished, 1, memory_order_release);
    while (atomic_load_explicit(&c->finished, memory_order_acquire) < c->threads) {
        if (drain(c, &c->box[a->id]) == 0)
            sched_yield();
    }
    drain(c, &c->box[a->id]);
    return NULL;
}

static double xchg_run(struct xchg_cfg *c)
{
    c->box = xmalloc(c->threads * sizeof(*c->box));
    for (unsigned i = 0; i < c->threads; i++) {
        pthread_mutex_init(&c->box[i].lock, NULL);
        c->box[i].head = NULL;
        c->box[i].count = 0;
    }
    atomic_store(&c->finished, 0);
    struct xchg_arg *args = xmalloc(c->threads * sizeof(*args));
    for (unsigned i = 0; i < c->threads; i++)
        args[i] = (struct xchg_arg){c, i, 0};
    double s = run_group(c->threads, xchg_thread, args, sizeof(*args), &c->sl);
    free(args);
    free(c->box);
    return s;
}

/* rptest-like: 16..16000 B, half of the displaced blocks freed by the next
 * thread, the other half by their owner. */
static void rptest(const char *wl, unsigned threads)
{
    static struct xchg_cfg c;
    c = (struct xchg_cfg){.wl = wl,
                          .threads = threads,
                          .ops_each = scaled(2000000) / threads,
                          .min = 16,
                          .max = 16000,
                          .working_set = 1024,
                          .remote_in_4 = 2};
    double s = xchg_run(&c);
    result(wl, "wall_s", s, "low");
}

static void wl_rptest2(const char *wl)
{
    rptest(wl, 2);
}

static void wl_rptest8(const char *wl)
{
    rptest(wl, 8);
}

/* ---- larson-like: a server's worker threads replace random slots of their
 * own array, then hand the array (and every block in it) to a new thread */

struct larson_line {
    struct item *slot;
    unsigned gens_left;
    uint64_t rounds, k;
    struct bench_rng r;
};

static struct {
    const char *wl;
    unsigned slots, lines;
    uint32_t min, max;
    pthread_mutex_t lock;
    pthread_cond_t cv;
    unsigned done;
    struct start_line sl;
} larson;

static void *larson_thread(void *arg)
{
    struct larson_line *l = arg;
    for (uint64_t k = 0; k < l->rounds; k++, l->k++) {
        struct item *s = &l->slot[bench_rng_next(&l->r) % larson.slots];
        check_free(larson.wl, s);
        uint32_t size = (uint32_t)bench_rng_range(&l->r, larson.min, larson.max);
        s->p = xmalloc(size);
        s->size = size;
        s->token = l->k;
        bench_stamp(s->p, size, s->token);
    }
    if (--l->gens_left > 0) {
        /* the next generation frees what this one allocated */
        pthread_t t;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        int e = pthread_create(&t, &at, larson_thread, l);
        pthread_attr_destroy(&at);
        if (e != 0) {
            fprintf(stderr, "threads: pthread_create: %s\n", strerror(e));
            exit(1);
        }
        return NULL;
    }
    pthread_mutex_lock(&larson.lock);
    larson.done++;
    pthread_cond_signal(&larson.cv);
    pthread_mutex_unlock(&larson.lock);
    return NULL;
}

static void larson_run(const char *wl, unsigned lines)
{
    const unsigned gens = 20;
    larson.wl = wl;
    larson.slots = 1000;
    larson.lines = lines;
    larson.min = 8;
    larson.max = 1000;
    larson.done = 0;
    pthread_mutex_init(&larson.lock, NULL);
    pthread_cond_init(&larson.cv, NULL);
    struct larson_line *l = xmalloc(lines * sizeof(*l));
    for (unsigned i = 0; i < lines; i++) {
        l[i].slot = xmalloc(larson.slots * sizeof(struct item));
        l[i].gens_left = gens;
        l[i].rounds = scaled(10000000) / gens / lines;
        l[i].k = 0;
        bench_rng_seed(&l[i].r, seed * 15485863 + i);
        for (unsigned j = 0; j < larson.slots; j++) {
            struct item *s = &l[i].slot[j];
            s->size = (uint32_t)bench_rng_range(&l[i].r, larson.min, larson.max);
            s->p = xmalloc(s->size);
            s->token = ~(uint64_t)j;
            bench_stamp(s->p, s->size, s->token);
        }
    }
    uint64_t t0 = bench_now_ns();
    for (unsigned i = 0; i < lines; i++) {
        pthread_t t;
        xthread(&t, larson_thread, &l[i]);
        pthread_detach(t);
    }
    pthread_mutex_lock(&larson.lock);
    while (larson.done < lines)
        pthread_cond_wait(&larson.cv, &larson.lock);
    pthread_mutex_unlock(&larson.lock);
    double s = (double)(bench_now_ns() - t0) / 1e9;
    for (unsigned i = 0; i < lines; i++) {
        for (unsigned j = 0; j < larson.slots; j++)
            check_free(wl, &l[i].slot[j]);
        free(l[i].slot);
    }
    free(l);
    result(wl, "wall_s", s, "low");
}

static void wl_larson2(const char *wl)
{
    larson_run(wl, 2);
}

static void wl_larson8(const char *wl)
{
    larson_run(wl, 8);
}

/* ---- xmalloc-like: producers allocate 64 B blocks, consumers free them.
 * Blocks travel as chains linked through themselves (bytes 0..7), with the
 * token at 8..15 and a tail byte derived from it. */

#define XM_SIZE 64
#define XM_CHAIN 64
#define XM_QMAX 256
static struct {
    const char *wl;
    pthread_mutex_t lock;
    pthread_cond_t not_full, not_empty;
    unsigned char *chain[XM_QMAX];
    unsigned head, count, producers_left;
    uint64_t blocks_each;
    struct start_line sl;
} xm;

static void xm_push(unsigned char *chain)
{
    pthread_mutex_lock(&xm.lock);
    while (xm.count == XM_QMAX)
        pthread_cond_wait(&xm.not_full, &xm.lock);
    xm.chain[(xm.head + xm.count) % XM_QMAX] = chain;
    xm.count++;
    pthread_cond_signal(&xm.not_empty);
    pthread_mutex_unlock(&xm.lock);
}

static void *xm_producer(void *arg)
{
    uint64_t id = (uint64_t)(uintptr_t)arg;
    pthread_barrier_wait(&xm.sl.b);
    unsigned char *chain = NULL;
    unsigned len = 0;
    for (uint64_t k = 0; k < xm.blocks_each; k++) {
        unsigned char *p = xmalloc(XM_SIZE);
        uint64_t token = (id << 48) | k;
        memcpy(p, &chain, 8);
        memcpy(p + 8, &token, 8);
        p[XM_SIZE - 1] = bench_tail_tag(token);
        chain = p;
        if (++len == XM_CHAIN) {
            xm_push(chain);
            chain = NULL;
            len = 0;
        }
    }
    if (chain != NULL)
        xm_push(chain);
    pthread_mutex_lock(&xm.lock);
    xm.producers_left--;
    pthread_cond_broadcast(&xm.not_empty);
    pthread_mutex_unlock(&xm.lock);
    return NULL;
}

static void *xm_consumer(void *arg)
{
    uint64_t *freed = arg;
    pthread_barrier_wait(&xm.sl.b);
    for (;;) {
        pthread_mutex_lock(&xm.lock);
        while (xm.count == 0 && xm.producers_left > 0)
            pthread_cond_wait(&xm.not_empty, &xm.lock);
        if (xm.count == 0) {
            pthread_mutex_unlock(&xm.lock);
            return NULL;
        }
        unsigned char *p = xm.chain[xm.head];
        xm.head = (xm.head + 1) % XM_QMAX;
        xm.count--;
        pthread_cond_signal(&xm.not_full);
        pthread_mutex_unlock(&xm.lock);
        while (p != NULL) {
            unsigned char *next;
            uint64_t token;
            memcpy(&next, p, 8);
            memcpy(&token, p + 8, 8);
            if (p[XM_SIZE - 1] != bench_tail_tag(token))
                corrupt(xm.wl, "block changed between producer and consumer", p, XM_SIZE);
            free(p);
            (*freed)++;
            p = next;
        }
    }
}

struct xm_arg {
    uint64_t word; /* producer id, or a consumer's freed count */
    bool producer;
};

static void *xm_thread(void *arg)
{
    struct xm_arg *a = arg;
    return a->producer ? xm_producer((void *)(uintptr_t)a->word) : xm_consumer(&a->word);
}

static void xmalloc_run(const char *wl, unsigned pairs)
{
    xm.wl = wl;
    pthread_mutex_init(&xm.lock, NULL);
    pthread_cond_init(&xm.not_full, NULL);
    pthread_cond_init(&xm.not_empty, NULL);
    xm.head = xm.count = 0;
    xm.producers_left = pairs;
    xm.blocks_each = scaled(6000000) / pairs;
    struct xm_arg *args = xmalloc(2 * pairs * sizeof(*args));
    for (unsigned i = 0; i < 2 * pairs; i++)
        args[i] = (struct xm_arg){i < pairs ? i : 0, i < pairs};
    double s = run_group(2 * pairs, xm_thread, args, sizeof(*args), &xm.sl);
    uint64_t freed = 0;
    for (unsigned i = pairs; i < 2 * pairs; i++)
        freed += args[i].word;
    free(args);
    if (freed != xm.blocks_each * pairs) {
        fprintf(stderr, "threads %s: %" PRIu64 " blocks freed of %" PRIu64 "\n", wl, freed,
                xm.blocks_each * pairs);
        exit(3);
    }
    result(wl, "wall_s", s, "low");
}

static void wl_xmalloc2(const char *wl)
{
    xmalloc_run(wl, 1);
}

static void wl_xmalloc8(const char *wl)
{
    xmalloc_run(wl, 4);
}

/* ---- mixed-mt: N threads, each replacing random slots of its own 2000-slot
 * array; sizes uniform within three bands (8 B..1 KiB, ..64 KiB, ..1 MiB); one op in 16 a realloc
 * to twice the size.  The total work is fixed, so wall times compare across N. */

static struct {
    const char *wl;
    uint64_t ops_each;
    struct start_line sl;
} mmt;

static uint64_t mmt_size(struct bench_rng *r)
{
    uint64_t d = bench_rng_next(r) % 1000;
    if (d < 900)
        return bench_rng_range(r, 8, 1024);
    if (d < 995)
        return bench_rng_range(r, 1025, 64 << 10);
    return bench_rng_range(r, (64 << 10) + 1, 1 << 20);
}

/* A program fills its buffers: one byte per page past the stamp. */
static void touch_pages(unsigned char *p, uint64_t from, uint64_t size)
{
    for (uint64_t off = (from + 4095) & ~(uint64_t)4095; off + 1 < size; off += 4096)
        p[off] = 0x5a;
}

static void *mmt_thread(void *arg)
{
    struct xchg_arg *a = arg;
    const unsigned slots = 2000;
    struct bench_rng r;
    bench_rng_seed(&r, seed * 32452843 + a->id);
    struct item *s = xmalloc(slots * sizeof(*s));
    memset(s, 0, slots * sizeof(*s));
    pthread_barrier_wait(&mmt.sl.b);
    for (uint64_t k = 0; k < mmt.ops_each; k++) {
        struct item *it = &s[bench_rng_next(&r) % slots];
        uint64_t token = ((uint64_t)a->id << 48) | k;
        if (it->p != NULL && (k & 15) == 15) {
            uint64_t old = it->size, grow = 2 * old;
            if (grow > (4 << 20))
                goto replace; /* keep a block that was grown often in range */
            unsigned char last = it->p[old - 1];
            unsigned char *q = realloc(it->p, grow);
            if (q == NULL)
                exit(1);
            if (old > 16 && memcmp(q, &old, 8) != 0)
                corrupt(mmt.wl, "realloc lost the old content", q, old);
            if (q[old - 1] != last)
                corrupt(mmt.wl, "realloc lost the old tail", q, old);
            touch_pages(q, old, grow);
            it->p = q;
            it->size = (uint32_t)grow;
            it->token = token;
            bench_stamp(q, grow, token);
            a->sum += grow;
            continue;
        }
    replace:
        if (it->p != NULL)
            check_free(mmt.wl, it);
        uint64_t size = mmt_size(&r);
        it->p = xmalloc(size);
        touch_pages(it->p, 16, size);
        it->size = (uint32_t)size;
        it->token = token;
        bench_stamp(it->p, size, token);
        a->sum += size;
    }
    for (unsigned i = 0; i < slots; i++)
        if (s[i].p != NULL)
            check_free(mmt.wl, &s[i]);
    free(s);
    return NULL;
}

static void mixed_mt(const char *wl, unsigned threads)
{
    mmt.wl = wl;
    mmt.ops_each = scaled(2000000) / threads;
    struct xchg_arg *args = xmalloc(threads * sizeof(*args));
    for (unsigned i = 0; i < threads; i++)
        args[i] = (struct xchg_arg){NULL, i, 0};
    long cs0 = nvcsw_now();
    double s = run_group(threads, mmt_thread, args, sizeof(*args), &mmt.sl);
    long cs = nvcsw_now() - cs0;
    free(args);
    result(wl, "wall_s", s, "low");
    result(wl, "vol_ctxsw", (double)cs, "low");
}

static void wl_mixed2(const char *wl)
{
    mixed_mt(wl, 2);
}

static void wl_mixed4(const char *wl)
{
    mixed_mt(wl, 4);
}

static void wl_mixed8(const char *wl)
{
    mixed_mt(wl, 8);
}

/* ---- scaling: per-thread throughput at 1..256 threads, 8..512 B blocks */

static const unsigned scaling_threads[] = {1, 2, 4, 16, 64, 256};
#define NSCALING (sizeof(scaling_threads) / sizeof(scaling_threads[0]))

/* ops: one malloc and, once the working set is full, one free (own) or one
 * hand-off to the next thread (cross). */
static void scaling(const char *wl, unsigned remote_in_4)
{
    const uint64_t total = scaled(8000000);
    for (size_t i = 0; i < NSCALING; i++) {
        unsigned n = scaling_threads[i];
        static struct xchg_cfg c;
        c = (struct xchg_cfg){.wl = wl,
                              .threads = n,
                              .ops_each = total / n,
                              .min = 8,
                              .max = 512,
                              .working_set = 256,
                              .remote_in_4 = remote_in_4};
        double s = xchg_run(&c);
        char fig[32];
        snprintf(fig, sizeof(fig), "t%u_Mops", n);
        result(wl, fig, (double)c.ops_each / s / 1e6, "high");
    }
}

static void wl_scaling_own(const char *wl)
{
    scaling(wl, 0);
}

static void wl_scaling_cross(const char *wl)
{
    scaling(wl, 4);
}

/* ---- server-1000: a thread-per-connection server with 1000 threads; mixed
 * request sizes up to 4 MiB, a shared response cache whose entries are freed
 * by whichever thread displaces them, a yield after each request (the thread
 * would wait for its socket).  Figures: wall time, RSS right after the last
 * request with every thread still alive, and after the release call. */

#define SRV_THREADS 1000
#define SRV_CACHE 4096
static struct {
    pthread_mutex_t lock[64];
    struct item slot[SRV_CACHE];
    uint64_t requests_each;
    struct idle_ctl c;
} srv;

static uint64_t srv_size(struct bench_rng *r)
{
    uint64_t d = bench_rng_next(r) % 1000;
    if (d < 700)
        return bench_rng_logsize(r, 64, 4096);
    if (d < 950)
        return bench_rng_logsize(r, 4097, 64 << 10);
    if (d < 995)
        return bench_rng_logsize(r, (64 << 10) + 1, 1 << 20);
    return bench_rng_logsize(r, (1 << 20) + 1, 4 << 20);
}

static void srv_request(struct bench_rng *r, uint64_t token, uint64_t *sum)
{
    uint64_t size = srv_size(r);
    unsigned char *req = xmalloc(size);
    touch_pages(req, 16, size);
    bench_stamp(req, size, token);
    /* parsed fields and a response, short-lived */
    unsigned char *field[4];
    for (int i = 0; i < 4; i++) {
        uint64_t fs = bench_rng_range(r, 32, 256);
        field[i] = xmalloc(fs);
        memset(field[i], i + 1, fs);
    }
    uint64_t rs = bench_rng_logsize(r, 1024, 16384);
    unsigned char *resp = xmalloc(rs);
    memset(resp, 0x33, rs < 512 ? rs : 512);
    *sum += resp[rs < 512 ? rs - 1 : 511];
    for (int i = 0; i < 4; i++) {
        *sum += field[i][31];
        free(field[i]);
    }
    free(resp);
    if (bench_rng_next(r) % 4 != 0) {
        struct item it = {req, (uint32_t)size, token};
        check_free("server-1000", &it);
        return;
    }
    size_t i = bench_rng_next(r) % SRV_CACHE;
    pthread_mutex_t *l = &srv.lock[i % 64];
    pthread_mutex_lock(l);
    struct item old = srv.slot[i];
    srv.slot[i] = (struct item){req, (uint32_t)size, token};
    pthread_mutex_unlock(l);
    if (old.p != NULL)
        check_free("server-1000", &old);
}

static void *srv_thread(void *arg)
{
    struct idle_arg *a = arg;
    struct idle_ctl *c = a->c;
    struct bench_rng r;
    bench_rng_seed(&r, seed * 49979687 + a->tag);
    uint64_t sum = 0;
    pthread_barrier_wait(&c->alive);
    pthread_barrier_wait(&c->go);
    for (uint64_t k = 0; k < srv.requests_each; k++) {
        srv_request(&r, ((uint64_t)a->tag << 40) | k, &sum);
        sched_yield();
    }
    pthread_barrier_wait(&c->done);
    pthread_mutex_lock(&c->lock);
    while (!c->quit)
        pthread_cond_wait(&c->quit_cv, &c->lock);
    pthread_mutex_unlock(&c->lock);
    return (void *)(uintptr_t)sum;
}

static void wl_server1000(const char *wl)
{
    const unsigned n = SRV_THREADS;
    struct idle_ctl *c = &srv.c;
    for (int i = 0; i < 64; i++)
        pthread_mutex_init(&srv.lock[i], NULL);
    srv.requests_each = scaled(50);
    c->quit = false;
    pthread_barrier_init(&c->alive, NULL, n + 1);
    pthread_barrier_init(&c->go, NULL, n + 1);
    pthread_barrier_init(&c->done, NULL, n + 1);
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->quit_cv, NULL);
    pthread_t *t = xmalloc(n * sizeof(*t));
    struct idle_arg *args = xmalloc(n * sizeof(*args));
    for (unsigned i = 0; i < n; i++) {
        args[i] = (struct idle_arg){c, (uint16_t)(i + 1)};
        xthread(&t[i], srv_thread, &args[i]);
    }
    pthread_barrier_wait(&c->alive);
    uint64_t t0 = bench_now_ns();
    pthread_barrier_wait(&c->go);
    pthread_barrier_wait(&c->done);
    double s = (double)(bench_now_ns() - t0) / 1e9;
    uint64_t busy = rss_now();
    bench_alloc_release(&alloc);
    uint64_t released = rss_now();
    pthread_mutex_lock(&c->lock);
    c->quit = true;
    pthread_cond_broadcast(&c->quit_cv);
    pthread_mutex_unlock(&c->lock);
    for (unsigned i = 0; i < n; i++)
        pthread_join(t[i], NULL);
    for (size_t i = 0; i < SRV_CACHE; i++)
        if (srv.slot[i].p != NULL) {
            check_free(wl, &srv.slot[i]);
            srv.slot[i].p = NULL;
        }
    free(t);
    free(args);
    result(wl, "wall_s", s, "low");
    result(wl, "end_MiB", mib(busy), "low");
    result(wl, "released_MiB", mib(released), "low");
}

/* ---- tail latency: malloc/free right after 1 GiB went idle */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static void wl_tail(const char *wl)
{
    enum { BIG = 256, PAIRS = 1000 };
    const uint64_t block = 4 << 20;
    static unsigned char *b[BIG];
    static uint64_t big[PAIRS], small[PAIRS];
    for (unsigned i = 0; i < BIG; i++) {
        b[i] = xmalloc(block);
        for (uint64_t off = 0; off < block; off += 4096)
            b[i][off] = (unsigned char)i;
    }
    for (unsigned i = 0; i < BIG; i++) {
        if (b[i][block / 2] != (unsigned char)i)
            corrupt(wl, "4 MiB block changed while live", b[i], block);
        free(b[i]);
    }
    /* past spanalloc's default idle delay (150 ms) for every allocator alike */
    bench_sleep_until_ns(bench_now_ns() + 300 * 1000000ull);
    for (unsigned i = 0; i < PAIRS; i++) {
        uint64_t t0 = bench_now_ns();
        unsigned char *p = xmalloc(300 << 10);
        p[0] = 1;
        free(p);
        uint64_t t1 = bench_now_ns();
        unsigned char *q = xmalloc(64);
        q[0] = 1;
        free(q);
        uint64_t t2 = bench_now_ns();
        big[i] = t1 - t0;
        small[i] = t2 - t1;
    }
    qsort(big, PAIRS, sizeof(big[0]), cmp_u64);
    qsort(small, PAIRS, sizeof(small[0]), cmp_u64);
    result(wl, "300K_p99_us", (double)big[PAIRS * 99 / 100 - 1] / 1e3, "low");
    result(wl, "300K_worst_us", (double)big[PAIRS - 1] / 1e3, "low");
    result(wl, "64B_p99_us", (double)small[PAIRS * 99 / 100 - 1] / 1e3, "low");
    result(wl, "64B_worst_us", (double)small[PAIRS - 1] / 1e3, "low");
}

/* ---- driver */

static const struct {
    const char *name;
    void (*fn)(const char *);
    const char *what;
} workloads[] = {
    {"idle-threads", wl_idle1000,
     "1000 threads each allocate and free ~256 KiB in 16..4096 B blocks, then block; RSS"
     " before they allocate (base), 3 s after they went idle, after the release call (and"
     " LazyFree then), after they exited, after a second release call"},
    {"idle-threads-100", wl_idle100, "idle-threads with 100 threads instead of 1000"},
    {"larson-2", wl_larson2,
     "larson-like server simulation: 2 threads replace random slots (8..1000 B), each thread's"
     " blocks freed by the next generation of threads (20 generations)"},
    {"larson-8", wl_larson8, "larson-2 with 8 threads"},
    {"rptest-2", wl_rptest2,
     "rptest-like: 2 threads, 16..16000 B working sets, half the displaced blocks freed by the"
     " next thread (batches of 64)"},
    {"rptest-8", wl_rptest8, "rptest-2 with 8 threads in a ring"},
    {"xmalloc-2", wl_xmalloc2,
     "xmalloc-test-like: 1 producer allocates 64 B blocks, 1 consumer frees them"},
    {"xmalloc-8", wl_xmalloc8, "xmalloc-2 with 4 producers and 4 consumers"},
    {"mixed-mt-2", wl_mixed2,
     "2 threads, own 2000 slots each: 90% 8 B..1 KiB, 9.5% ..64 KiB, 0.5% ..1 MiB, one op in"
     " 16 a realloc to 2x; fixed total work; wall time and voluntary context switches"},
    {"mixed-mt-4", wl_mixed4, "mixed-mt-2 with 4 threads (same total work)"},
    {"mixed-mt-8", wl_mixed8, "mixed-mt-2 with 8 threads (same total work)"},
    {"scaling-own", wl_scaling_own,
     "ops/s per thread (M) at 1..256 threads, each churning its own 8..512 B blocks"
     " (256 live); fixed total work"},
    {"scaling-cross", wl_scaling_cross,
     "scaling-own, but every displaced block is freed by the next thread (batches of 64;"
     " at 1 thread the same as scaling-own)"},
    {"server-1000", wl_server1000,
     "thread-per-connection server, 1000 threads x 50 requests of 64 B..4 MiB (touched),"
     " short-lived fields and responses, a shared 4096-entry cache freed by other threads;"
     " wall time, RSS after the last request (threads alive) and after the release call"},
    {"tail", wl_tail,
     "after 1 GiB of 4 MiB blocks was freed and 300 ms passed: 1000 pairs each of 300 KiB and"
     " 64 B malloc+free, p99 and worst pair (us)"},
};
#define NWORKLOADS (sizeof(workloads) / sizeof(workloads[0]))

static void usage(FILE *f)
{
    fprintf(f,
            "usage: threads --workload NAME|all [--scale F] [--seed N] [--idle-wait S]\n"
            "               [--list] [--describe] [--help]\n"
            "Runs multi-threaded allocation workloads under the preloaded allocator\n"
            "(LD_PRELOAD) and prints 'result WORKLOAD FIGURE VALUE low|high' lines.\n"
            "Content is checked before every free; a failed check exits with status 3.\n"
            "  --workload NAME  one of the names below, or 'all' (default)\n"
            "  --scale F        multiply every operation count by F (default 1)\n"
            "  --seed N         random seed (default 1)\n"
            "  --idle-wait S    seconds idle-threads waits before its RSS reading (default 3)\n"
            "  --list           print the workload names\n"
            "  --describe       print 'NAME<TAB>description' lines\n"
            "workloads:\n");
    for (size_t i = 0; i < NWORKLOADS; i++)
        fprintf(f, "  %-16s %s\n", workloads[i].name, workloads[i].what);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"workload", required_argument, 0, 'w'}, {"scale", required_argument, 0, 's'},
        {"seed", required_argument, 0, 'S'},     {"idle-wait", required_argument, 0, 'i'},
        {"list", no_argument, 0, 'l'},           {"describe", no_argument, 0, 'd'},
        {"help", no_argument, 0, 'h'},           {0, 0, 0, 0},
    };
    const char *which = "all";
    int c;
    while ((c = getopt_long(argc, argv, "w:s:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'w': which = optarg; break;
        case 's': scale = bench_parse_number("--scale", optarg); break;
        case 'S': seed = strtoull(optarg, NULL, 0); break;
        case 'i': idle_wait_s = bench_parse_number("--idle-wait", optarg); break;
        case 'l':
        case 'd':
            for (size_t i = 0; i < NWORKLOADS; i++)
                if (c == 'l')
                    printf("%s\n", workloads[i].name);
                else
                    printf("%s\t%s\n", workloads[i].name, workloads[i].what);
            return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc || scale <= 0) {
        usage(stderr);
        return 2;
    }
    bench_alloc_detect(&alloc);
    int ran = 0;
    for (size_t i = 0; i < NWORKLOADS; i++) {
        if (strcmp(which, "all") != 0 && strcmp(which, workloads[i].name) != 0)
            continue;
        fprintf(stderr, "threads %s under %s:\n", workloads[i].name, alloc.name);
        workloads[i].fn(workloads[i].name);
        ran++;
    }
    if (ran == 0) {
        fprintf(stderr, "threads: unknown workload '%s' (try --list)\n", which);
        return 2;
    }
    return 0;
}
