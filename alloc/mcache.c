/*
 * mcache.c: the per-thread tier, off the fast path.
 *
 * Each thread gets a cache on its first allocation: per size class, a list of
 * free blocks bounded to sa_mcache_list_cap(cls) blocks (about 32 KiB of each
 * class), so one thread can hoard at most sa_mcache_bound_bytes() in all.
 * Lists refill from and flush to the mcentral in batches of half the cap.
 *
 * A thread's cache is flushed when the thread exits (a pthread key
 * destructor).  Code that runs after that in the same thread (later TLS
 * destructors, glibc's own teardown) still allocates and frees: it goes
 * straight to the mcentrals, one block at a time.
 *
 * The registry lists every live cache so read_mem_stats can fold their
 * counters in, and so the child of a fork can take back what the parent's
 * other threads held.
 */
#include <errno.h>
#include <string.h>

#include "internal.h"
#include "valgrind_hooks.h"

#define SA_CACHE_CLASS_BYTES ((uint32_t)32 << 10)
#define SA_CACHE_CHUNK ((size_t)64 << 10)

enum tls_state { TLS_NONE = 0, TLS_CREATING, TLS_ACTIVE, TLS_DEAD };

struct sa_mcache sa_empty_cache; /* all lists empty, max 0: always slow */
__thread struct sa_mcache *sa_tls_cache
    __attribute__((tls_model("initial-exec"))) = &sa_empty_cache;
static __thread int tls_state __attribute__((tls_model("initial-exec")));

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct sa_mcache *registry;
static struct sa_mcache *record_free_list;
static char *chunk_cursor, *chunk_end;
static uint64_t caches_live;
static _Atomic uint64_t caches_sys_bytes; /* read without the lock by the limit */
/* Counters of exited threads, folded in at exit (registry lock). */
static uint64_t exited_mallocs[SA_NUM_CLASSES], exited_frees[SA_NUM_CLASSES];
/* Blocks allocated or freed by threads without a cache (slow path only). */
static _Atomic uint64_t direct_mallocs[SA_NUM_CLASSES], direct_frees[SA_NUM_CLASSES];
static pthread_key_t exit_key;
int (*sa_setspecific_hook)(pthread_key_t, const void *); /* test hook */

uint32_t sa_mcache_list_cap(unsigned cls)
{
    uint32_t cap = SA_CACHE_CLASS_BYTES / sa_class_size[cls];
    return cap < 2 ? 2 : cap > 2048 ? 2048 : cap;
}

static uint32_t batch_size(unsigned cls)
{
    return sa_mcache_list_cap(cls) / 2;
}

size_t sa_mcache_bound_bytes(void)
{
    size_t total = 0;
    for (unsigned cls = 1; cls < SA_NUM_CLASSES; cls++)
        total += (size_t)sa_mcache_list_cap(cls) * sa_class_size[cls];
    return total;
}

/* ---- Cache records (registry lock held) */

static struct sa_mcache *record_new(void)
{
    struct sa_mcache *c = record_free_list;
    if (c != NULL) {
        record_free_list = c->reg_next;
    } else {
        if (chunk_cursor == NULL || chunk_cursor + sizeof(*c) > chunk_end) {
            char *chunk = sa_os_map(SA_CACHE_CHUNK, 0);
            if (chunk == NULL)
                return NULL;
            chunk_cursor = chunk;
            chunk_end = chunk + SA_CACHE_CHUNK;
            caches_sys_bytes += SA_CACHE_CHUNK;
        }
        c = (struct sa_mcache *)chunk_cursor;
        chunk_cursor += sizeof(*c);
    }
    memset(c, 0, sizeof(*c));
    caches_live++;
    return c;
}

static void registry_link(struct sa_mcache *c)
{
    c->reg_prev = NULL;
    c->reg_next = registry;
    if (registry != NULL)
        registry->reg_prev = c;
    registry = c;
}

/* Unlink a cache, keep its counters, recycle its record. */
static void registry_retire(struct sa_mcache *c)
{
    for (unsigned cls = 0; cls < SA_NUM_CLASSES; cls++) {
        exited_mallocs[cls] += SA_PEER_READ(c->lists[cls].mallocs);
        exited_frees[cls] += sa_list_frees(&c->lists[cls]);
    }
    if (c->reg_prev != NULL)
        c->reg_prev->reg_next = c->reg_next;
    else
        registry = c->reg_next;
    if (c->reg_next != NULL)
        c->reg_next->reg_prev = c->reg_prev;
    c->reg_next = record_free_list;
    record_free_list = c;
    caches_live--;
}

/* ---- Moving blocks between a cache and the mcentrals */

/* Detach the first n blocks of a list (all of them if n >= count). */
static void *list_take(struct sa_cache_list *l, uint32_t n)
{
    void *first = l->head;
    void *last = first;
    uint32_t taken = 1;
    if (first == NULL)
        return NULL;
    uint32_t count = sa_list_count(l);
    if (n > count)
        n = count;
    for (; taken < n; taken++) {
        if (!sa_block_is_free(last))
            sa_report("corrupted free block (written after free)", last, NULL);
        last = sa_decode_link(((uintptr_t *)last)[0]);
    }
    if (!sa_block_is_free(last))
        sa_report("corrupted free block (written after free)", last, NULL);
    l->head = sa_decode_link(((uintptr_t *)last)[0]);
    sa_block_make_free(last, NULL);
    SA_OWNER_ADD(l->room, (int32_t)n);
    SA_OWNER_ADD(l->moved, -(uint64_t)n);
    return first;
}

/* A list over its cap hands a batch to the mcentral, whole, for the next
 * refill elsewhere; a cache being emptied (thread exit, fork,
 * free_os_memory) puts its blocks back into their spans so that empty spans
 * can go back to the heap. */
static void flush_list(struct sa_cache_list *l, unsigned cls, uint32_t n)
{
    uint32_t count = sa_list_count(l);
    uint32_t taken = n < count ? n : count;
    void *blocks = list_take(l, n);
    if (blocks != NULL)
        sa_mcentral_release_batch(cls, blocks, taken);
}

static void flush_all(struct sa_mcache *c)
{
    for (unsigned cls = 1; cls < SA_NUM_CLASSES; cls++) {
        void *blocks = list_take(&c->lists[cls], sa_list_count(&c->lists[cls]));
        if (blocks != NULL)
            sa_mcentral_release(cls, blocks);
    }
}

/* ---- Thread lifecycle */

static void thread_exit(void *arg)
{
    struct sa_mcache *c = arg;
    sa_tls_cache = &sa_empty_cache;
    tls_state = TLS_DEAD;
    flush_all(c);
    pthread_mutex_lock(&registry_lock);
    registry_retire(c);
    pthread_mutex_unlock(&registry_lock);
}

void sa_mcache_thread_init(void)
{
    pthread_key_create(&exit_key, thread_exit);
}

static struct sa_mcache *cache_create(void)
{
    pthread_mutex_lock(&registry_lock);
    struct sa_mcache *c = record_new();
    if (c != NULL) {
        for (unsigned cls = 1; cls < SA_NUM_CLASSES; cls++) {
            c->lists[cls].cap = sa_mcache_list_cap(cls);
            c->lists[cls].room = (int32_t)c->lists[cls].cap;
        }
        c->owner = pthread_self();
        c->link_key = sa_link_key;
        c->mark_key = sa_mark_key;
        registry_link(c);
    }
    pthread_mutex_unlock(&registry_lock);
    /* May allocate: we are CREATING.  If it fails, the exit flush would never
     * run: the thread goes without a cache (and tries again later). */
    if (c != NULL && (sa_setspecific_hook ? sa_setspecific_hook : pthread_setspecific)(exit_key, c) != 0) {
        pthread_mutex_lock(&registry_lock);
        registry_retire(c);
        pthread_mutex_unlock(&registry_lock);
        c = NULL;
    }
    return c;
}

/* The calling thread's cache, created on first use; NULL while it is being
 * created, after the thread's exit flush, or when no memory is left. */
static struct sa_mcache *current_cache(void)
{
    if (sa_tls_cache != &sa_empty_cache)
        return sa_tls_cache;
    if (tls_state != TLS_NONE)
        return NULL;
    sa_ensure_init();
    if (sa_on_valgrind)
        return NULL; /* every block goes through the direct paths below */
    tls_state = TLS_CREATING;
    struct sa_mcache *c = cache_create();
    tls_state = c != NULL ? TLS_ACTIVE : TLS_NONE;
    if (c != NULL)
        sa_tls_cache = c;
    return c;
}

/* ---- Slow paths */

static void *direct_alloc(unsigned cls)
{
    void *block;
    if (sa_mcentral_fill(cls, 1, &block) == 0) {
        errno = ENOMEM;
        return NULL;
    }
    ((uintptr_t *)block)[1] = 0;
    SA_VG_MALLOCLIKE(block, sa_class_size[cls], 0);
    atomic_fetch_add_explicit(&direct_mallocs[cls], 1, memory_order_relaxed);
    return block;
}

void *sa_mcache_bad_block(void *block)
{
    sa_report("corrupted free block (written after free)", block,
              sa_pagemap_lookup((uintptr_t)block));
}

void *sa_mcache_alloc_slow(unsigned cls)
{
    struct sa_mcache *c = current_cache();
    if (c == NULL)
        return direct_alloc(cls);
    struct sa_cache_list *l = &c->lists[cls];
    if (l->head == NULL) {
        void *blocks;
        uint32_t got = sa_mcentral_fill(cls, batch_size(cls), &blocks);
        if (got == 0) {
            errno = ENOMEM;
            return NULL;
        }
        l->head = blocks;
        SA_OWNER_ADD(l->room, -(int32_t)got);
        SA_OWNER_ADD(l->moved, got);
    }
    uintptr_t *block = l->head;
    l->head = sa_decode_link(block[0]);
    SA_OWNER_ADD(l->room, 1);
    block[1] = 0;
    SA_OWNER_ADD(l->mallocs, 1);
    return block;
}

/* Reached when the fast path found no room: it took room below 0, which
 * is put back first.  In the empty cache (shared by every thread without a
 * cache of its own) threads may race on that field; each writes either a
 * decrement of a value <= 0 or 0, so room never turns positive there and
 * nothing is ever pushed onto the empty cache. */
void sa_mcache_free_slow(void *block, const struct sa_span *s)
{
    unsigned cls = sa_span_cls(s);
    struct sa_cache_list *own = &sa_tls_cache->lists[cls];
    if (SA_PEER_READ(own->room) < 0)
        __atomic_store_n(&own->room, 0, __ATOMIC_RELAXED);
    if (sa_block_is_free_checked(block))
        sa_bad_small_free(block, sa_pagemap_lookup((uintptr_t)block));
    struct sa_mcache *c = current_cache();
    if (c == NULL) {
        sa_block_make_free(block, NULL);
        SA_VG_FREELIKE(block);
        sa_mcentral_release(cls, block);
        atomic_fetch_add_explicit(&direct_frees[cls], 1, memory_order_relaxed);
        return;
    }
    struct sa_cache_list *l = &c->lists[cls];
    if (l->room <= 0)
        flush_list(l, cls, batch_size(cls));
    sa_block_make_free(block, l->head);
    l->head = block;
    SA_OWNER_ADD(l->room, -1);
}

void sa_mcache_flush_current(void)
{
    if (sa_tls_cache != &sa_empty_cache)
        flush_all(sa_tls_cache);
}

/* ---- Statistics */

void sa_mcache_fold_stats(uint64_t *mallocs, uint64_t *frees, uint64_t *live,
                          uint64_t *sys_bytes)
{
    pthread_mutex_lock(&registry_lock);
    for (unsigned cls = 0; cls < SA_NUM_CLASSES; cls++) {
        mallocs[cls] = exited_mallocs[cls] +
                       atomic_load_explicit(&direct_mallocs[cls], memory_order_relaxed);
        frees[cls] = exited_frees[cls] +
                     atomic_load_explicit(&direct_frees[cls], memory_order_relaxed);
    }
    for (struct sa_mcache *c = registry; c != NULL; c = c->reg_next) {
        for (unsigned cls = 0; cls < SA_NUM_CLASSES; cls++) {
            mallocs[cls] += SA_PEER_READ(c->lists[cls].mallocs);
            frees[cls] += sa_list_frees(&c->lists[cls]);
        }
    }
    *live = caches_live;
    *sys_bytes = caches_sys_bytes;
    pthread_mutex_unlock(&registry_lock);
}

/* ---- fork */

uint64_t sa_mcache_sys_bytes(void)
{
    return atomic_load_explicit(&caches_sys_bytes, memory_order_relaxed);
}

void sa_mcache_fork_prepare(void)
{
    pthread_mutex_lock(&registry_lock);
}

void sa_mcache_fork_parent(void)
{
    pthread_mutex_unlock(&registry_lock);
}

/* In the child only the forking thread survives.  The other threads'
 * caches are retired without being walked: fork may have caught one of them
 * half-way through a push or a pop (they take no lock), so their lists
 * cannot be trusted.  What they held (at most sa_mcache_bound_bytes() per
 * thread) stays allocated for the child's lifetime, as glibc's tcache does. */
void sa_mcache_fork_child(void)
{
    pthread_mutex_init(&registry_lock, NULL);
    struct sa_mcache *c = registry;
    while (c != NULL) {
        struct sa_mcache *next = c->reg_next;
        if (c != sa_tls_cache)
            registry_retire(c);
        c = next;
    }
    if (sa_tls_cache != &sa_empty_cache)
        sa_tls_cache->owner = pthread_self();
}
