/*
 * workloads: allocation patterns timed under whatever allocator is preloaded.
 *
 * Each workload is sized to run ~0.3-1.5 s under glibc on a small machine and
 * prints one line "workload NAME: SECONDS s (...)" on stdout.  Every block
 * carries a pattern that is checked before it is freed, so an allocator that
 * hands out overlapping or recycled-while-live memory fails loudly (exit 3)
 * instead of producing a fast number.
 *
 *   churn     one thread, small objects (16..1024 B) replaced at random
 *   prodcons  thread A allocates, thread B verifies and frees (SPSC ring)
 *   server    4 threads, request buffers 64 B..16 KiB, a shared pool keeps
 *             some for a while and they are freed by whichever thread
 *             displaces them
 *   mixed     sizes up to 1 MiB, blocks grown with realloc (content kept)
 *   large     256 KiB..4 MiB blocks, allocated, touched, freed (8 live)
 *   pool      the seeds' 20-slot pool of 5..10 MB buffers, unpaced
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

#include "bench_common.h"

static double scale = 1.0;
static uint64_t seed = 1;
static struct bench_alloc alloc;

static uint64_t scaled(uint64_t n)
{
    return bench_scaled(n, scale);
}

static _Noreturn void corrupt(const char *wl, const char *what, const void *p, uint64_t size)
{
    bench_corrupt("workload", wl, alloc.name, what, p, size);
}

static void *xmalloc(size_t n)
{
    return bench_xmalloc("workload", n);
}

/* ---- churn: single thread, small objects */

static uint64_t wl_churn(void)
{
    const size_t slots = 100000;
    uint64_t ops = scaled(4500000);
    struct bench_rng r;
    bench_rng_seed(&r, seed);
    unsigned char **p = calloc(slots, sizeof(*p));
    uint32_t *sz = calloc(slots, sizeof(*sz));
    uint64_t *tok = calloc(slots, sizeof(*tok));
    if (!p || !sz || !tok)
        exit(1);
    uint64_t sum = 0;
    for (uint64_t k = 0; k < ops; k++) {
        size_t i = bench_rng_next(&r) % slots;
        if (p[i] != NULL) {
            if (!bench_stamp_ok(p[i], sz[i], tok[i]))
                corrupt("churn", "object changed while live", p[i], sz[i]);
            sum += p[i][sz[i] / 2];
            free(p[i]);
            p[i] = NULL;
            if (bench_rng_next(&r) & 1)
                continue; /* the live set breathes between ~1/3 and full */
        }
        uint32_t size = (uint32_t)bench_rng_logsize(&r, 16, 1024);
        p[i] = xmalloc(size);
        p[i][size / 2] = (unsigned char)k;
        bench_stamp(p[i], size, k);
        sz[i] = size;
        tok[i] = k;
    }
    for (size_t i = 0; i < slots; i++)
        if (p[i] != NULL) {
            if (!bench_stamp_ok(p[i], sz[i], tok[i]))
                corrupt("churn", "object changed while live", p[i], sz[i]);
            free(p[i]);
        }
    free(p);
    free(sz);
    free(tok);
    return sum;
}

/* ---- prodcons: A allocates, B frees, through a bounded SPSC ring */

#define RING 1024
struct ring {
    _Alignas(64) _Atomic uint64_t head; /* next slot the producer writes */
    _Alignas(64) _Atomic uint64_t tail; /* next slot the consumer reads */
    _Alignas(64) unsigned char *slot[RING];
    uint32_t size[RING];
    uint64_t items;
    uint64_t sum;
};

static void *producer(void *arg)
{
    struct ring *q = arg;
    struct bench_rng r;
    bench_rng_seed(&r, seed ^ 0xabcdef);
    for (uint64_t k = 0; k < q->items; k++) {
        uint32_t size = (uint32_t)bench_rng_logsize(&r, 16, 2048);
        unsigned char *p = xmalloc(size);
        bench_stamp(p, size, k);
        uint64_t h = atomic_load_explicit(&q->head, memory_order_relaxed);
        while (h - atomic_load_explicit(&q->tail, memory_order_acquire) >= RING)
            sched_yield();
        q->slot[h % RING] = p;
        q->size[h % RING] = size;
        atomic_store_explicit(&q->head, h + 1, memory_order_release);
    }
    return NULL;
}

static void *consumer(void *arg)
{
    struct ring *q = arg;
    for (uint64_t k = 0; k < q->items; k++) {
        uint64_t t = atomic_load_explicit(&q->tail, memory_order_relaxed);
        while (atomic_load_explicit(&q->head, memory_order_acquire) == t)
            sched_yield();
        unsigned char *p = q->slot[t % RING];
        uint32_t size = q->size[t % RING];
        atomic_store_explicit(&q->tail, t + 1, memory_order_release);
        if (!bench_stamp_ok(p, size, k))
            corrupt("prodcons", "object changed between threads", p, size);
        q->sum += size;
        free(p);
    }
    return NULL;
}

static uint64_t wl_prodcons(void)
{
    static struct ring q;
    q.items = scaled(3000000);
    pthread_t a, b;
    pthread_create(&b, NULL, consumer, &q);
    pthread_create(&a, NULL, producer, &q);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    return q.sum;
}

/* ---- server: 4 threads, shared pool, frees from other threads */

#define SERVER_THREADS 4
#define SERVER_POOL 4096
struct pooled {
    unsigned char *p;
    uint64_t size, token;
};
static struct {
    pthread_mutex_t lock[64];
    struct pooled slot[SERVER_POOL];
    uint64_t requests; /* per thread */
} server;

struct server_arg {
    int id;
    uint64_t sum;
};

static void *server_thread(void *arg)
{
    struct server_arg *a = arg;
    struct bench_rng r;
    bench_rng_seed(&r, seed * 1000 + (uint64_t)a->id);
    for (uint64_t k = 0; k < server.requests; k++) {
        uint64_t token = ((uint64_t)a->id << 56) | k;
        uint64_t size = bench_rng_logsize(&r, 64, 16384);
        unsigned char *req = xmalloc(size);
        /* "parse" the request: fill a header, read it back */
        size_t hdr = size < 256 ? size : 256;
        memset(req, (int)(k & 0x7f) | 1, hdr);
        bench_stamp(req, size, token);
        for (size_t i = 16; i < hdr; i += 32)
            a->sum += req[i];
        /* a small response object, freed at once */
        unsigned char *resp = xmalloc(48 + (k & 63));
        memset(resp, 0x5a, 48);
        a->sum += resp[47];
        free(resp);
        if (bench_rng_next(&r) % 4 != 0) {
            if (!bench_stamp_ok(req, size, token))
                corrupt("server", "request changed while live", req, size);
            free(req);
            continue;
        }
        /* keep it in the shared pool a while; free what was there */
        size_t i = bench_rng_next(&r) % SERVER_POOL;
        pthread_mutex_t *l = &server.lock[i % 64];
        pthread_mutex_lock(l);
        struct pooled old = server.slot[i];
        server.slot[i] = (struct pooled){req, size, token};
        pthread_mutex_unlock(l);
        if (old.p != NULL) {
            if (!bench_stamp_ok(old.p, old.size, old.token))
                corrupt("server", "pooled buffer changed while live", old.p, old.size);
            free(old.p);
        }
    }
    return NULL;
}

static uint64_t wl_server(void)
{
    for (int i = 0; i < 64; i++)
        pthread_mutex_init(&server.lock[i], NULL);
    server.requests = scaled(600000);
    pthread_t t[SERVER_THREADS];
    struct server_arg args[SERVER_THREADS];
    for (int i = 0; i < SERVER_THREADS; i++) {
        args[i] = (struct server_arg){i, 0};
        pthread_create(&t[i], NULL, server_thread, &args[i]);
    }
    uint64_t sum = 0;
    for (int i = 0; i < SERVER_THREADS; i++) {
        pthread_join(t[i], NULL);
        sum += args[i].sum;
    }
    for (size_t i = 0; i < SERVER_POOL; i++)
        if (server.slot[i].p != NULL) {
            if (!bench_stamp_ok(server.slot[i].p, server.slot[i].size, server.slot[i].token))
                corrupt("server", "pooled buffer changed while live", server.slot[i].p,
                        server.slot[i].size);
            free(server.slot[i].p);
            server.slot[i].p = NULL;
        }
    return sum;
}

/* ---- mixed: sizes up to 1 MiB, realloc growth */

static uint64_t wl_mixed(void)
{
    const size_t slots = 2000;
    const uint64_t max = 1 << 20;
    uint64_t ops = scaled(1000000);
    struct bench_rng r;
    bench_rng_seed(&r, seed + 7);
    unsigned char **p = calloc(slots, sizeof(*p));
    uint64_t *sz = calloc(slots, sizeof(*sz));
    uint64_t *tok = calloc(slots, sizeof(*tok));
    if (!p || !sz || !tok)
        exit(1);
    uint64_t sum = 0, reallocs = 0;
    for (uint64_t k = 0; k < ops; k++) {
        size_t i = bench_rng_next(&r) % slots;
        if (p[i] == NULL) {
            /* mostly small, a tail of big ones */
            uint64_t size = bench_rng_next(&r) % 16 == 0 ? bench_rng_logsize(&r, 4096, max)
                                                         : bench_rng_logsize(&r, 8, 4096);
            p[i] = xmalloc(size);
            bench_stamp(p[i], size, k);
            sz[i] = size;
            tok[i] = k;
            continue;
        }
        if (!bench_stamp_ok(p[i], sz[i], tok[i]))
            corrupt("mixed", "block changed while live", p[i], sz[i]);
        uint64_t grow = sz[i] + sz[i] / 2 + bench_rng_range(&r, 1, 64);
        if (bench_rng_next(&r) % 8 < 5 && grow <= max) {
            /* realloc must keep the old bytes: the stamp and the old last byte */
            unsigned char last = p[i][sz[i] - 1];
            unsigned char *q = realloc(p[i], grow);
            if (q == NULL)
                exit(1);
            if (sz[i] > 16 && memcmp(q, &sz[i], 8) != 0)
                corrupt("mixed", "realloc lost the old content", q, sz[i]);
            if (q[sz[i] - 1] != last)
                corrupt("mixed", "realloc lost the old tail", q, sz[i]);
            reallocs++;
            p[i] = q;
            sz[i] = grow;
            tok[i] = k;
            bench_stamp(q, grow, k);
        } else {
            sum += sz[i];
            free(p[i]);
            p[i] = NULL;
        }
    }
    for (size_t i = 0; i < slots; i++)
        if (p[i] != NULL) {
            if (!bench_stamp_ok(p[i], sz[i], tok[i]))
                corrupt("mixed", "block changed while live", p[i], sz[i]);
            free(p[i]);
        }
    free(p);
    free(sz);
    free(tok);
    return sum + reallocs;
}

/* ---- large: 256 KiB..4 MiB blocks, touched, 8 live */

static uint64_t wl_large(void)
{
    enum { LIVE = 8 };
    uint64_t ops = scaled(5000);
    struct bench_rng r;
    bench_rng_seed(&r, seed + 11);
    unsigned char *p[LIVE] = {0};
    uint64_t sz[LIVE] = {0}, tok[LIVE] = {0}, sum = 0;
    for (uint64_t k = 0; k < ops; k++) {
        size_t i = bench_rng_next(&r) % LIVE;
        if (p[i] != NULL) {
            if (!bench_stamp_ok(p[i], sz[i], tok[i]) || p[i][sz[i] / 2] != (unsigned char)(tok[i] ^ 0x33) ||
                p[i][4096] != 0x6b)
                corrupt("large", "block changed while live", p[i], sz[i]);
            free(p[i]);
        }
        uint64_t size = bench_rng_logsize(&r, 256 << 10, 4 << 20);
        unsigned char *b = xmalloc(size);
        /* touch every page, as a program filling a buffer would */
        for (uint64_t off = 0; off < size; off += 4096)
            b[off] = 0x6b;
        bench_stamp(b, size, k);
        b[size / 2] = (unsigned char)(k ^ 0x33);
        p[i] = b;
        sz[i] = size;
        tok[i] = k;
        sum += size;
    }
    for (size_t i = 0; i < LIVE; i++)
        free(p[i]);
    return sum;
}

/* ---- pool: the seeds' workload at full speed */

static uint64_t wl_pool(void)
{
    enum { SLOTS = 20 };
    uint64_t steps = scaled(300);
    struct bench_rng r;
    bench_rng_seed(&r, seed + 13);
    unsigned char *p[SLOTS] = {0};
    uint64_t sz[SLOTS] = {0};
    unsigned char tag[SLOTS] = {0};
    uint64_t sum = 0;
    for (uint64_t k = 0; k < steps; k++) {
        uint64_t size = bench_rng_range(&r, 5000000, 10000000);
        unsigned char *b = xmalloc(size);
        unsigned char t = bench_tail_tag(k);
        memset(b, t, size);
        size_t i = bench_rng_next(&r) % SLOTS;
        if (p[i] != NULL) {
            if (p[i][0] != tag[i] || p[i][sz[i] / 3] != tag[i] || p[i][sz[i] - 1] != tag[i])
                corrupt("pool", "buffer changed while live", p[i], sz[i]);
            free(p[i]);
        }
        p[i] = b;
        sz[i] = size;
        tag[i] = t;
        sum += size;
    }
    for (size_t i = 0; i < SLOTS; i++)
        free(p[i]);
    return sum;
}

/* ---- driver */

static const struct {
    const char *name;
    uint64_t (*fn)(void);
    const char *what;
} workloads[] = {
    {"churn", wl_churn, "single thread, 16..1024 B objects replaced at random"},
    {"prodcons", wl_prodcons, "thread A allocates 16..2048 B, thread B frees (SPSC ring)"},
    {"server", wl_server, "4 threads, 64 B..16 KiB requests, shared pool, remote frees"},
    {"mixed", wl_mixed, "8 B..1 MiB, blocks grown with realloc"},
    {"large", wl_large, "256 KiB..4 MiB blocks, every page touched, 8 live"},
    {"pool", wl_pool, "the seeds' 20-slot pool of 5..10 MB buffers, unpaced"},
};
#define NWORKLOADS (sizeof(workloads) / sizeof(workloads[0]))

static void usage(FILE *f)
{
    fprintf(f,
            "usage: workloads --workload NAME|all [--scale F] [--seed N] [--list] [--help]\n"
            "Runs allocation workloads under the preloaded allocator (LD_PRELOAD) and prints\n"
            "'workload NAME: SECONDS s (...)' per workload.  Content is checked before every\n"
            "free; a failed check exits with status 3.\n"
            "  --workload NAME  one of the names below, or 'all' (default)\n"
            "  --scale F        multiply every iteration count by F (default 1)\n"
            "  --seed N         random seed (default 1)\n"
            "  --list           print the workload names and exit\n"
            "workloads:\n");
    for (size_t i = 0; i < NWORKLOADS; i++)
        fprintf(f, "  %-9s %s\n", workloads[i].name, workloads[i].what);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"workload", required_argument, 0, 'w'}, {"scale", required_argument, 0, 's'},
        {"seed", required_argument, 0, 'S'},     {"list", no_argument, 0, 'l'},
        {"help", no_argument, 0, 'h'},           {0, 0, 0, 0},
    };
    const char *which = "all";
    int c;
    while ((c = getopt_long(argc, argv, "w:s:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'w': which = optarg; break;
        case 's': scale = bench_parse_number("--scale", optarg); break;
        case 'S': seed = strtoull(optarg, NULL, 0); break;
        case 'l':
            for (size_t i = 0; i < NWORKLOADS; i++)
                printf("%s\n", workloads[i].name);
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
        uint64_t t = bench_now_ns();
        uint64_t check = workloads[i].fn();
        double s = (double)(bench_now_ns() - t) / 1e9;
        printf("workload %s: %.4f s (allocator %s, check %" PRIu64 ")\n", workloads[i].name, s,
               alloc.name, check);
        fflush(stdout);
        ran++;
    }
    if (ran == 0) {
        fprintf(stderr, "workloads: unknown workload '%s' (try --list)\n", which);
        return 2;
    }
    return 0;
}
