/*
 * bodies.c: the micro-benchmark bodies (see bodies.h).
 *
 * Compiled twice: as is, every allocation goes through spanalloc's prefixed
 * API; with -DUSE_LIBC it goes through malloc/free, so one binary measures
 * glibc, jemalloc, tcmalloc, mimalloc or spanalloc under LD_PRELOAD.  The
 * bookkeeping (pointer arrays, the hand-over ring) lives in static storage or
 * comes from mmap, never from the allocator being measured.
 */
#include "bodies.h"

#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#ifdef USE_LIBC
#define MB_MALLOC malloc
#define MB_REALLOC realloc
#define MB_FREE free
#else
#include "spanalloc.h"
#define MB_MALLOC spanalloc_malloc
#define MB_REALLOC spanalloc_realloc
#define MB_FREE spanalloc_free
#endif

/* Keep the compiler from proving a block unused (malloc+free elision). */
static inline void escape(void *p)
{
    __asm__ volatile("" : : "r"(p) : "memory");
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

const char *mb_variant(void)
{
#ifdef USE_LIBC
    return "libc";
#else
    return "spanalloc-api";
#endif
}

const char *mb_malloc_provider(void)
{
    Dl_info info;
    void *sym = dlsym(RTLD_DEFAULT, "malloc");
    if (sym != NULL && dladdr(sym, &info) != 0 && info.dli_fname != NULL)
        return info.dli_fname;
    return "?";
}

int mb_has_spanalloc_api(void)
{
#ifdef USE_LIBC
    return 0;
#else
    return 1;
#endif
}

void mb_pair(size_t size, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char *p = MB_MALLOC(size);
        p[0] = 1;
        escape(p);
        MB_FREE(p);
    }
}

static void *batch_ptrs[MB_MAX_BATCH];

void mb_batch(size_t lo, size_t hi, size_t step, size_t n, int fifo)
{
    size_t size = lo;
    for (size_t i = 0; i < n; i++) {
        char *p = MB_MALLOC(size);
        p[0] = 1;
        batch_ptrs[i] = p;
        size = size + step > hi ? lo : size + step;
    }
    escape(batch_ptrs);
    if (fifo) {
        for (size_t i = 0; i < n; i++)
            MB_FREE(batch_ptrs[i]);
    } else {
        for (size_t i = n; i-- > 0;)
            MB_FREE(batch_ptrs[i]);
    }
}

size_t mb_realloc_grow(size_t from, size_t to)
{
    size_t calls = 0;
    char *p = MB_MALLOC(from);
    memset(p, 1, from);
    for (size_t s = from * 2; s <= to; s *= 2) {
        p = MB_REALLOC(p, s);
        p[s - 1] = 1;
        calls++;
    }
    escape(p);
    MB_FREE(p);
    return calls;
}

/* ---- Cross-thread free: a ring of batches, producer = caller. */
#define XT_SLOTS 4
struct xt_slot {
    _Atomic int full;
    void *p[MB_MAX_BATCH];
} __attribute__((aligned(64)));

static struct xt_slot xt_ring[XT_SLOTS];
static size_t xt_size, xt_n;
static unsigned xt_prod;
static _Atomic int xt_stop;
static pthread_t xt_thread;

static void spin_wait(unsigned *spins)
{
    if (++*spins < 200)
        cpu_relax();
    else
        sched_yield();
}

static void *xt_consumer(void *arg)
{
    (void)arg;
    unsigned idx = 0;
    for (;;) {
        struct xt_slot *s = &xt_ring[idx];
        unsigned spins = 0;
        while (!atomic_load_explicit(&s->full, memory_order_acquire)) {
            if (atomic_load_explicit(&xt_stop, memory_order_acquire) &&
                !atomic_load_explicit(&s->full, memory_order_acquire))
                return NULL;
            spin_wait(&spins);
        }
        for (size_t i = 0; i < xt_n; i++)
            MB_FREE(s->p[i]);
        atomic_store_explicit(&s->full, 0, memory_order_release);
        idx = (idx + 1) % XT_SLOTS;
    }
}

int mb_xthread_start(size_t size, size_t batch)
{
    if (batch > MB_MAX_BATCH)
        return -1;
    xt_size = size;
    xt_n = batch;
    xt_prod = 0;
    atomic_store(&xt_stop, 0);
    for (unsigned i = 0; i < XT_SLOTS; i++)
        atomic_store(&xt_ring[i].full, 0);
    return pthread_create(&xt_thread, NULL, xt_consumer, NULL) == 0 ? 0 : -1;
}

void mb_xthread_batch(void)
{
    struct xt_slot *s = &xt_ring[xt_prod];
    unsigned spins = 0;
    while (atomic_load_explicit(&s->full, memory_order_acquire))
        spin_wait(&spins);
    for (size_t i = 0; i < xt_n; i++) {
        char *p = MB_MALLOC(xt_size);
        p[0] = 1;
        s->p[i] = p;
    }
    atomic_store_explicit(&s->full, 1, memory_order_release);
    xt_prod = (xt_prod + 1) % XT_SLOTS;
}

void mb_xthread_stop(void)
{
    atomic_store_explicit(&xt_stop, 1, memory_order_release);
    pthread_join(xt_thread, NULL);
}

/* ---- spanalloc only */
#ifdef USE_LIBC
double mb_free_os_memory_idle(size_t idle_bytes)
{
    (void)idle_bytes;
    return -1.0;
}
int mb_park_threads(unsigned n)
{
    (void)n;
    return -1;
}
void mb_read_mem_stats(void) {}
void mb_unpark_threads(void) {}
#else
static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#define IDLE_BIG ((size_t)1 << 20)
#define IDLE_SMALL ((size_t)1024)

double mb_free_os_memory_idle(size_t idle_bytes)
{
    size_t nbig = idle_bytes / 2 / IDLE_BIG;
    size_t nsmall = (idle_bytes - nbig * IDLE_BIG) / IDLE_SMALL;
    size_t nptr = nbig + nsmall;
    void **ptrs = mmap(NULL, nptr * sizeof(void *), PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ptrs == MAP_FAILED)
        return -1.0;
    for (size_t i = 0; i < nptr; i++) {
        size_t sz = i < nbig ? IDLE_BIG : IDLE_SMALL;
        ptrs[i] = MB_MALLOC(sz);
        memset(ptrs[i], 0x5a, sz);
    }
    for (size_t i = 0; i < nptr; i++)
        MB_FREE(ptrs[i]);
    munmap(ptrs, nptr * sizeof(void *));
    double t0 = now_s();
    free_os_memory();
    return now_s() - t0;
}

#define PARK_MAX 256
static pthread_t park_threads[PARK_MAX];
static unsigned park_n, park_ready;
static int park_go;
static pthread_mutex_t park_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t park_cv = PTHREAD_COND_INITIALIZER;
static struct mem_stats park_stats;

static void *park_main(void *arg)
{
    (void)arg;
    char *p = MB_MALLOC(64);
    p[0] = 1;
    pthread_mutex_lock(&park_mu);
    park_ready++;
    pthread_cond_broadcast(&park_cv);
    while (!park_go)
        pthread_cond_wait(&park_cv, &park_mu);
    pthread_mutex_unlock(&park_mu);
    MB_FREE(p);
    return NULL;
}

int mb_park_threads(unsigned n)
{
    if (n > PARK_MAX)
        return -1;
    park_ready = 0;
    park_go = 0;
    park_n = 0;
    for (unsigned i = 0; i < n; i++) {
        if (pthread_create(&park_threads[i], NULL, park_main, NULL) != 0)
            break;
        park_n++;
    }
    pthread_mutex_lock(&park_mu);
    while (park_ready < park_n)
        pthread_cond_wait(&park_cv, &park_mu);
    pthread_mutex_unlock(&park_mu);
    return park_n == n ? 0 : -1;
}

void mb_read_mem_stats(void)
{
    read_mem_stats(&park_stats);
    escape(&park_stats);
}

void mb_unpark_threads(void)
{
    pthread_mutex_lock(&park_mu);
    park_go = 1;
    pthread_cond_broadcast(&park_cv);
    pthread_mutex_unlock(&park_mu);
    for (unsigned i = 0; i < park_n; i++)
        pthread_join(park_threads[i], NULL);
    park_n = 0;
}
#endif
