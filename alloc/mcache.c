/*
 * mcache.c: the cache tier, off the fast path.
 *
 * A cache is a slab (alloc/percpu.h): per size class a stack of pointers
 * to free blocks, bounded by sa_mcache_list_cap(cls) blocks (about 32 KiB of
 * each class, or up to 8 blocks within 256 KiB for classes of big blocks, at
 * least one block), so one slab holds at most
 * sa_mcache_bound_bytes().  Classes refill from and flush to the mcentrals in
 * batches of half their capacity; the class lock is taken once per batch.
 *
 * Per-CPU mode (alloc/percpu.c, the default where rseq works): one slab per
 * CPU the process ran on, shared by the threads that run there; a thread
 * holds nothing of its own and its exit flushes nothing.
 *
 * Per-thread fallback (no rseq, SPANALLOC_PERCPU=off, valgrind's tools
 * other than memcheck, ThreadSanitizer builds): each thread gets a slab of
 * its own on its first allocation.  Its capacities start at one block and
 * double each time a class runs dry or overflows (slow start), so a thread
 * that used a class once holds a block or two of it, not a full batch.  The
 * slab is flushed when the thread exits (a pthread key destructor); code
 * that runs after that in the same thread (later TLS destructors, glibc's own
 * teardown) goes straight to the mcentrals, one block at a time, as does
 * every thread under memcheck.
 *
 * The registry lists the fallback slabs so read_mem_stats can fold their
 * counters in, and so the child of a fork can take back what the parent's
 * other threads held.
 */
#include <errno.h>
#include <string.h>

#include "internal.h"
#include "percpu.h"
#include "valgrind_hooks.h"

#define SA_CACHE_CLASS_BYTES ((uint32_t)32 << 10)
#define SA_CACHE_CAP_MAX 2048
#define SA_CACHE_CHUNK ((size_t)64 << 10)
/* Fallback slabs come 32 to a mapping (2.2 MiB of address space; pages are
 * touched as slots are used), so that a pool of a few dozen threads that
 * come and go reuses one mapping. */
#define SA_SLABS_PER_CHUNK 32
#define SA_SLOW_START_CAP 1

enum tls_state { TLS_NONE = 0, TLS_CREATING, TLS_ACTIVE, TLS_PERCPU, TLS_DEAD };

/* Shared by every fallback thread: cpu 0 forever; rseq_cs written by their
 * sections with no lock (racing stores of descriptors), never read. */
struct sa_rseq_view sa_fake_rseq;
const struct sa_slab_class sa_zero_slab[SA_NUM_CLASSES]; /* every operation fails */
#define LIST_OFFSET(cls) ((cls) << SA_LIST_SHIFT)
const struct sa_zero_table sa_zero_table = {{SA_DIRECT_SIZE_TO_CLASS(LIST_OFFSET)},
                                            {(char *)sa_zero_slab}};
#undef LIST_OFFSET
__thread struct sa_tls_cache sa_tls __attribute__((tls_model("initial-exec"))) = {
    &sa_fake_rseq, sa_zero_table.slab, 0};
/* The thread's own (read and written by it only). */
static __thread int tls_state __attribute__((tls_model("initial-exec")));
static __thread struct sa_thread_cache *tls_record __attribute__((tls_model("initial-exec")));

/* A fallback thread's cache. */
struct sa_thread_cache {
    struct sa_size_index sizes; /* what precedes every slab table */
    char *slab; /* also the thread's one-entry slab table */
    struct sa_thread_cache *reg_next, *reg_prev; /* registry lock */
    pthread_t owner;
};

_Static_assert(offsetof(struct sa_thread_cache, slab) == sizeof(struct sa_size_index),
               "a slab table follows its size index");
_Static_assert(offsetof(struct sa_zero_table, slab) == sizeof(struct sa_size_index),
               "a slab table follows its size index");

void sa_size_index_init(struct sa_size_index *index)
{
    memcpy(index->list_off, sa_direct_size_to_list, sizeof(sa_direct_size_to_list));
}

/* The fallback caches' registry: everything from here to exit_key is under
 * registry_lock unless it says otherwise. */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct sa_thread_cache *registry;
static struct sa_thread_cache *record_free_list; /* slabs kept, pages released */
static struct sa_chunk record_chunks; /* records */
static struct sa_chunk slab_chunks;   /* fallback slabs */
static uint64_t caches_live;
static _Atomic uint64_t caches_sys_bytes; /* written under the lock, read without by the limit */
/* Counters of exited threads, folded in at exit (registry lock). */
static uint64_t exited_mallocs[SA_NUM_CLASSES], exited_arrivals[SA_NUM_CLASSES];
/* Blocks allocated or freed by threads without a cache (slow path only):
 * relaxed counters, no lock. */
static _Atomic uint64_t direct_mallocs[SA_NUM_CLASSES], direct_frees[SA_NUM_CLASSES];
/* Blocks moved onto any slab by refills and off it by flushes: per class
 * for all slabs together, so that a thread migrating half-way through a
 * batch needs no bookkeeping (see "Statistics" for the order of updates). */
static _Atomic uint64_t moved_in[SA_NUM_CLASSES], moved_out[SA_NUM_CLASSES];
/* The frees each class last reported (registry lock). */
static uint64_t frees_reported[SA_NUM_CLASSES];
static pthread_key_t exit_key; /* created once at init, read only after */
int (*sa_setspecific_hook)(pthread_key_t, const void *); /* test hook, set before threads */

/* ---- Capacities and the slab layout (written once at init, by the thread
 * that initialises, before any cache exists; read with no lock after) */

static uint16_t region_base[SA_NUM_CLASSES], region_cap[SA_NUM_CLASSES];
static size_t slab_bytes;
static uint32_t class_bytes = SA_CACHE_CLASS_BYTES;

/* At most class_bytes of a class, at least two blocks of up to 32 KiB or one
 * larger block, at most SA_CACHE_CAP_MAX blocks: a bound in bytes that holds
 * for any class table.  A class of big blocks may also hold up to
 * SA_CACHE_FEW_BLOCKS of them within SA_CACHE_FEW_BYTES: with only one or
 * two, a thread that frees and allocates such blocks in turn empties or
 * fills its cache nearly every other operation (a refill or flush of its
 * class lock and, one block per span, the heap lock each time), while a
 * capacity of c blocks takes about (c/2)^2 such operations between trips. */
#define SA_CACHE_FEW_BLOCKS 8
#define SA_CACHE_FEW_BYTES ((uint32_t)256 << 10)
uint32_t sa_mcache_list_cap(unsigned cls)
{
    uint32_t size = sa_class_size[cls];
    uint32_t cap = class_bytes / size;
    uint32_t few = (class_bytes * (SA_CACHE_FEW_BYTES / SA_CACHE_CLASS_BYTES)) / size;
    if (few > SA_CACHE_FEW_BLOCKS)
        few = SA_CACHE_FEW_BLOCKS;
    if (cap < few)
        cap = few;
    if (cap < 2)
        cap = size <= SA_CACHE_CLASS_BYTES ? 2 : 1;
    return cap > SA_CACHE_CAP_MAX ? SA_CACHE_CAP_MAX : cap;
}

size_t sa_mcache_bound_bytes(void)
{
    size_t total = 0;
    for (unsigned cls = 1; cls < SA_NUM_CLASSES; cls++)
        total += (size_t)sa_mcache_list_cap(cls) * sa_class_size[cls];
    return total;
}

/* Headers first (class * 32), then each class's region of slots.  The
 * 16-bit slot indices and the 128 KiB stride between CPU slabs bound the
 * layout; a class table too large for it gets smaller per-class budgets. */
static void layout_compute(void)
{
    for (;;) {
        size_t slot = (SA_NUM_CLASSES * sizeof(struct sa_slab_class)) / sizeof(void *);
        for (unsigned cls = 1; cls < SA_NUM_CLASSES; cls++) {
            region_base[cls] = (uint16_t)slot;
            region_cap[cls] = (uint16_t)sa_mcache_list_cap(cls);
            slot += region_cap[cls];
        }
        size_t os_page = sa_os_page_size();
        size_t bytes = (slot * sizeof(void *) + os_page - 1) & ~(os_page - 1);
        if (slot < 0xffff && bytes <= ((size_t)1 << SA_SLAB_SHIFT)) {
            slab_bytes = bytes;
            return;
        }
        class_bytes /= 2;
    }
}

size_t sa_slab_bytes(void)
{
    return slab_bytes;
}

uint16_t sa_slab_region_base(unsigned cls)
{
    return region_base[cls];
}

uint16_t sa_slab_region_cap(unsigned cls)
{
    return region_cap[cls];
}

/* Set up a zeroed slab, before any thread can reach it. */
void sa_slab_init(char *slab, bool full_caps)
{
    for (unsigned cls = 1; cls < SA_NUM_CLASSES; cls++) {
        struct sa_slab_class *h = sa_slab_class_at(slab, (size_t)cls << SA_LIST_SHIFT);
        uint16_t cap = full_caps || region_cap[cls] < SA_SLOW_START_CAP ? region_cap[cls]
                                                                         : SA_SLOW_START_CAP;
        h->word = region_base[cls];
        h->begin = region_base[cls];
        h->end = (uint16_t)(region_base[cls] + cap);
        h->seen = 0;
    }
}

static uint32_t slab_count(const struct sa_slab_class *h, unsigned cls)
{
    uint64_t w = __atomic_load_n(&h->word, __ATOMIC_RELAXED);
    return (uint32_t)(w & SA_SLAB_CUR_MASK) - region_base[cls];
}

/* mallocs = the 48 bits of the word, extended by what readers saw before:
 * exact as long as a slab is read at least once per 2^48 mallocs of a class
 * (read_mem_stats is the one reader; the scavenger's idle check sums the
 * words without extending them). */
void sa_slab_fold(char *slab, uint64_t *mallocs, uint64_t *arrivals)
{
    const uint64_t mask48 = ((uint64_t)1 << 48) - 1;
    for (unsigned cls = 1; cls < SA_NUM_CLASSES; cls++) {
        struct sa_slab_class *h = sa_slab_class_at(slab, (size_t)cls << SA_LIST_SHIFT);
        uint64_t w = __atomic_load_n(&h->word, __ATOMIC_RELAXED);
        uint64_t m = h->seen + (((w >> 16) - h->seen) & mask48);
        h->seen = m;
        uint32_t count = (uint32_t)(w & SA_SLAB_CUR_MASK) - region_base[cls];
        mallocs[cls] += m;
        arrivals[cls] += (uint64_t)count + m;
    }
}

/* A cached block must still carry the mark free() wrote. */
static void check_cached(void *block)
{
    if (!sa_block_is_free(block))
        sa_report("corrupted free block (written after free)", block,
                  sa_pagemap_lookup((uintptr_t)block));
}

/* Each class's blocks are in hand from the word's reset to the release: a
 * move (a fork waits for it). */
void sa_slab_flush_exclusive(char *slab, bool may_wait)
{
    void **slots = sa_slab_slots(slab);
    for (unsigned cls = 1; cls < SA_NUM_CLASSES; cls++) {
        struct sa_slab_class *h = sa_slab_class_at(slab, (size_t)cls << SA_LIST_SHIFT);
        if ((__atomic_load_n(&h->word, __ATOMIC_RELAXED) & SA_SLAB_CUR_MASK) == region_base[cls])
            continue;
        struct sa_move move;
        sa_mcentral_move_begin(&move, cls, may_wait);
        uint64_t w = __atomic_load_n(&h->word, __ATOMIC_RELAXED);
        uint32_t cur = (uint32_t)(w & SA_SLAB_CUR_MASK);
        uint32_t n = cur - region_base[cls];
        void *list = NULL;
        for (uint32_t i = region_base[cls]; i < cur; i++) {
            check_cached(slots[i]);
            sa_block_make_free(slots[i], list);
            list = slots[i];
        }
        __atomic_store_n(&h->word, (w & ~SA_SLAB_CUR_MASK) | region_base[cls], __ATOMIC_RELAXED);
        atomic_fetch_add_explicit(&moved_out[cls], n, memory_order_release); /* after */
        if (SA_UNLIKELY(sa_mcentral_move_hook != NULL))
            sa_mcentral_move_hook(cls);
        if (list != NULL)
            sa_mcentral_release(cls, list);
        sa_mcentral_move_end(&move);
    }
}

/* ---- Fallback caches (registry lock held) */

static struct sa_thread_cache *record_new(void)
{
    struct sa_thread_cache *c = record_free_list;
    if (c != NULL) {
        record_free_list = c->reg_next;
        memset(c->slab, 0, SA_NUM_CLASSES * sizeof(struct sa_slab_class));
    } else {
        bool room = sa_chunk_reserve(&record_chunks, sizeof(*c), SA_CACHE_CHUNK) &&
                    sa_chunk_reserve(&slab_chunks, slab_bytes, SA_SLABS_PER_CHUNK * slab_bytes);
        atomic_store(&caches_sys_bytes, record_chunks.mapped + slab_chunks.mapped);
        if (!room)
            return NULL;
        char *slab = sa_chunk_take(&slab_chunks, slab_bytes);
        c = sa_chunk_take(&record_chunks, sizeof(*c));
        sa_size_index_init(&c->sizes);
        c->slab = slab;
    }
    caches_live++;
    return c;
}

static void registry_link(struct sa_thread_cache *c)
{
    SA_DLIST_PUSH(registry, c, reg_next, reg_prev);
}

/* Unlink a cache, keep its counters, recycle its record and slab (the
 * slab's pages go back to the OS until another thread needs it). */
static void registry_retire(struct sa_thread_cache *c)
{
    sa_slab_fold(c->slab, exited_mallocs, exited_arrivals);
    SA_DLIST_REMOVE(registry, c, reg_next, reg_prev);
    sa_os_release(c->slab, slab_bytes);
    c->reg_next = record_free_list;
    record_free_list = c;
    caches_live--;
}

/* ---- Thread lifecycle */

static void thread_exit(void *arg)
{
    struct sa_thread_cache *c = arg;
    sa_tls.table = sa_zero_table.slab;
    tls_state = TLS_DEAD;
    tls_record = NULL;
    sa_slab_flush_exclusive(c->slab, true);
    pthread_mutex_lock(&registry_lock);
    registry_retire(c);
    pthread_mutex_unlock(&registry_lock);
}

void sa_mcache_thread_init(void)
{
    layout_compute();
    pthread_key_create(&exit_key, thread_exit);
}

static struct sa_thread_cache *cache_create(void)
{
    pthread_mutex_lock(&registry_lock);
    struct sa_thread_cache *c = record_new();
    if (c != NULL) {
        sa_slab_init(c->slab, false);
        c->owner = pthread_self();
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

/* Whether the calling thread has a slab to work on, set up on first use;
 * false while it is being set up, after the thread's exit flush, under
 * memcheck, or when no memory is left. */
static bool thread_ready(void)
{
    if (tls_state == TLS_ACTIVE || tls_state == TLS_PERCPU)
        return true;
    if (tls_state != TLS_NONE)
        return false;
    sa_ensure_init();
    if (sa_on_valgrind)
        return false; /* every block goes through the direct paths below */
    tls_state = TLS_CREATING;
    if (sa_percpu_enabled() && sa_percpu_attach_thread()) {
        tls_state = TLS_PERCPU;
        return true;
    }
    struct sa_thread_cache *c = cache_create();
    tls_state = c != NULL ? TLS_ACTIVE : TLS_NONE;
    if (c != NULL) {
        tls_record = c;
        sa_tls.table = &c->slab;
    }
    return c != NULL;
}

bool sa_mcache_thread_is_percpu(void)
{
    return tls_state == TLS_PERCPU;
}

/* ---- Moving blocks between the slabs and the mcentrals */

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

/* The capacity of a class on the current slab, grown by slow start (only a
 * fallback slab starts below its region's size: CPU slabs start full). */
static uint32_t class_cap(unsigned cls, bool grow)
{
    char *slab = sa_tls.table[__atomic_load_n(&sa_tls.cpu->cpu_id_start, __ATOMIC_RELAXED)];
    struct sa_slab_class *h = sa_slab_class_at(slab, (size_t)cls << SA_LIST_SHIFT);
    if (h->end <= region_base[cls])
        return region_cap[cls]; /* a CPU slab not set up (or drained now): full */
    uint32_t cap = (uint32_t)h->end - region_base[cls];
    if (grow && tls_state == TLS_ACTIVE && cap < region_cap[cls]) {
        cap = cap * 2 < region_cap[cls] ? cap * 2 : region_cap[cls];
        h->end = (uint16_t)(region_base[cls] + cap); /* the thread's own slab */
    }
    return cap;
}

static void *pop_checked(size_t off)
{
    uintptr_t *block;
    char *slab;
    SA_SLAB_POP(off, 0xffff, block, slab, empty);
    (void)slab;
    check_cached(block);
    block[1] = 0;
    return block;
empty:
    return NULL;
}

/* Blocks move between a slab and the mcentral SA_MOVE_CHUNK at a time: one
 * class-lock hold and one restartable section (percpu.h) per chunk, the
 * chunk an array of pointers on the slow path's stack (512 bytes).  No
 * block is read or written on the way: they keep their free marks. */
#define SA_MOVE_CHUNK 64

/* Push chunk[0, n) onto the slab; what does not fit (the slab was drained
 * meanwhile, the thread migrated to a fuller CPU) goes back.  Counted
 * before they land (see "Statistics"), uncounted if they don't.  Returns
 * how many landed. */
static uint32_t push_chunk(unsigned cls, void *const *chunk, uint32_t n)
{
    if (n == 0)
        return 0;
    atomic_fetch_add_explicit(&moved_in[cls], n, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    uint32_t k = sa_slab_push_batch((size_t)cls << SA_LIST_SHIFT, chunk, n);
    if (k < n) {
        atomic_fetch_sub_explicit(&moved_in[cls], n - k, memory_order_relaxed);
        sa_mcentral_release_array(cls, chunk + k, n - k);
    }
    return k;
}

/* Refill: about half the class's capacity from the mcentral, a chunk at a
 * time; the first block is the caller's, the rest go onto the slab. */
static void *refill(unsigned cls)
{
    uint32_t cap = class_cap(cls, true);
    uint32_t want = cap / 2 > 0 ? cap / 2 + 1 : 1;
    void *chunk[SA_MOVE_CHUNK];
    struct sa_move move; /* from the fill to the last push: a fork waits */
    sa_mcentral_move_begin(&move, cls, true);
    uint32_t n = sa_mcentral_fill_array(cls, chunk, want < SA_MOVE_CHUNK ? want : SA_MOVE_CHUNK);
    if (n == 0) {
        sa_mcentral_move_end(&move);
        errno = ENOMEM;
        return NULL;
    }
    if (SA_UNLIKELY(sa_mcentral_move_hook != NULL))
        sa_mcentral_move_hook(cls);
    uintptr_t *first = chunk[0];
    uint32_t got = n;
    bool full = push_chunk(cls, chunk + 1, n - 1) < n - 1;
    while (!full && got < want) {
        uint32_t ask = want - got < SA_MOVE_CHUNK ? want - got : SA_MOVE_CHUNK;
        n = sa_mcentral_fill_array(cls, chunk, ask);
        got += n;
        full = push_chunk(cls, chunk, n) < n;
        if (n < ask)
            break; /* out of memory: the caller has its block */
    }
    sa_mcentral_move_end(&move);
    first[1] = 0; /* counted by the caller (slow_mallocs): it never was on a slab */
    return first;
}

/* Written by every thread's failed pop with no lock (word 1 ^= the same
 * value: it only ever holds two values, both failing the mark check). */
uintptr_t sa_poison_block[2] = {0, 1};

void *sa_mcache_alloc_miss(void *block, size_t list_off)
{
    if (block == (void *)sa_poison_block)
        return sa_mcache_alloc_slow((unsigned)(list_off >> SA_LIST_SHIFT));
    return sa_mcache_bad_block(block);
}

void *sa_mcache_bad_block(void *block)
{
    sa_report("corrupted free block (written after free)", block,
              sa_pagemap_lookup((uintptr_t)block));
}

/* Refill's first blocks: relaxed counters, any thread, no lock. */
static _Atomic uint64_t slow_mallocs[SA_NUM_CLASSES];

void *sa_mcache_alloc_slow(unsigned cls)
{
    if (!thread_ready())
        return direct_alloc(cls);
    size_t off = (size_t)cls << SA_LIST_SHIFT;
    if (tls_state == TLS_PERCPU)
        sa_percpu_prepare_current();
    void *block = pop_checked(off); /* the CPU may have changed, or been set up */
    if (block != NULL)
        return block;
    block = refill(cls);
    if (block != NULL)
        atomic_fetch_add_explicit(&slow_mallocs[cls], 1, memory_order_relaxed);
    return block;
}

/* Take up to n blocks off the current slab (without counting mallocs), a
 * chunk per section, each chunk handed to the mcentral in one hold. */
static void flush_batch(unsigned cls, uint32_t n)
{
    size_t off = (size_t)cls << SA_LIST_SHIFT;
    uint32_t taken = 0;
    struct sa_move move; /* from the first pop to the release: a fork waits */
    sa_mcentral_move_begin(&move, cls, true);
    while (taken < n) {
        void *chunk[SA_MOVE_CHUNK];
        uint32_t want = n - taken < SA_MOVE_CHUNK ? n - taken : SA_MOVE_CHUNK;
        uint32_t k = sa_slab_pop_batch(off, chunk, want);
        if (k == 0)
            break;
        /* Counted after they left (see "Statistics"). */
        atomic_fetch_add_explicit(&moved_out[cls], k, memory_order_release);
        if (SA_UNLIKELY(sa_mcentral_move_hook != NULL))
            sa_mcentral_move_hook(cls);
        sa_mcentral_release_array(cls, chunk, k);
        taken += k;
        if (k < want)
            break; /* the class ran out (other threads on the CPU took some) */
    }
    sa_mcentral_move_end(&move);
}

/* Reached when the push found no room: the class is full, the slab closed
 * or not set up, or the thread has none.  The block was not checked yet. */
void sa_mcache_free_slow(void *block, const struct sa_span *s)
{
    unsigned cls = sa_span_cls(s);
    size_t off = (size_t)cls << SA_LIST_SHIFT;
    if (sa_block_is_free_checked(block))
        sa_report_bad_free(block, sa_pagemap_lookup((uintptr_t)block));
    if (thread_ready()) {
        if (tls_state == TLS_PERCPU)
            sa_percpu_prepare_current();
        uint32_t cap = class_cap(cls, true);
        for (int attempt = 0; attempt < 2; attempt++) {
            SA_SLAB_PUSH_MARKED(off, block, full);
            return;
        full:
            if (attempt == 0)
                flush_batch(cls, cap / 2 > 0 ? cap / 2 : 1);
        }
    }
    sa_block_make_free(block, NULL);
    SA_VG_FREELIKE(block);
    sa_mcentral_release(cls, block);
    atomic_fetch_add_explicit(&direct_frees[cls], 1, memory_order_relaxed);
}

/* free_os_memory: the calling thread's own slab (fallback), every CPU's
 * (per-CPU mode). */
void sa_mcache_flush_current(void)
{
    if (tls_state == TLS_ACTIVE && tls_record != NULL)
        sa_slab_flush_exclusive(tls_record->slab, true);
    if (sa_percpu_enabled())
        sa_percpu_drain_all();
}

/* The scavenger's hook, once per cycle. */
void sa_mcache_scavenge(void)
{
    if (sa_percpu_enabled())
        sa_percpu_drain_idle();
}

/* ---- Statistics
 *
 * Frees are not counted where they happen (the fast path commits only the
 * slab's word): per class, frees = direct frees + the slabs' arrivals
 * (sa_slab_fold) + moved_out - moved_in.  A reader cannot read all of that
 * at one instant, so the updates are ordered to make every misreading an
 * undercount: a refill adds to moved_in before its pushes (a reader that
 * sees a push sees the add: it reads the words first, then moved_in), a
 * flush adds to moved_out after its pops (a reader that sees the add sees
 * the pops: it reads moved_out first, then the words).  A batch in flight
 * thus hides at most its own blocks, and a read while none is in flight is
 * exact.  Each read then reports at least what the previous one did, so
 * frees never go back; as no read overcounts, that never hides a real
 * free for longer than the batch that caused the undercount. */

void sa_mcache_fold_stats(uint64_t *mallocs, uint64_t *frees, uint64_t *inuse,
                          uint64_t *sys_bytes)
{
    uint64_t out[SA_NUM_CLASSES], arrivals[SA_NUM_CLASSES];
    pthread_mutex_lock(&registry_lock);
    for (unsigned cls = 0; cls < SA_NUM_CLASSES; cls++)
        out[cls] = atomic_load_explicit(&moved_out[cls], memory_order_acquire);
    for (unsigned cls = 0; cls < SA_NUM_CLASSES; cls++) {
        mallocs[cls] = exited_mallocs[cls] +
                       atomic_load_explicit(&direct_mallocs[cls], memory_order_relaxed) +
                       atomic_load_explicit(&slow_mallocs[cls], memory_order_relaxed);
        arrivals[cls] = exited_arrivals[cls];
    }
    for (struct sa_thread_cache *c = registry; c != NULL; c = c->reg_next)
        sa_slab_fold(c->slab, mallocs, arrivals);
    sa_percpu_fold_stats(mallocs, arrivals);
    atomic_thread_fence(memory_order_acquire);
    for (unsigned cls = 0; cls < SA_NUM_CLASSES; cls++) {
        int64_t counted = (int64_t)(atomic_load_explicit(&direct_frees[cls], memory_order_relaxed) +
                                    arrivals[cls] + out[cls] -
                                    atomic_load_explicit(&moved_in[cls], memory_order_relaxed));
        if (counted > (int64_t)frees_reported[cls])
            frees_reported[cls] = (uint64_t)counted;
        frees[cls] = frees_reported[cls];
    }
    *inuse = caches_live * slab_bytes + sa_percpu_cpus_ready() * slab_bytes;
    *sys_bytes = caches_sys_bytes + sa_percpu_sys_bytes();
    pthread_mutex_unlock(&registry_lock);
}

uint64_t sa_mcache_sys_bytes(void)
{
    return atomic_load_explicit(&caches_sys_bytes, memory_order_relaxed) + sa_percpu_sys_bytes();
}

uint64_t sa_mcache_held_blocks(unsigned cls)
{
    uint64_t n = 0;
    pthread_mutex_lock(&registry_lock);
    for (struct sa_thread_cache *c = registry; c != NULL; c = c->reg_next)
        n += slab_count(sa_slab_class_at(c->slab, (size_t)cls << SA_LIST_SHIFT), cls);
    for (unsigned cpu = 0; cpu < sa_percpu_ncpus(); cpu++) {
        char *slab = sa_percpu_slab_of(cpu);
        if (slab != NULL)
            n += slab_count(sa_slab_class_at(slab, (size_t)cls << SA_LIST_SHIFT), cls);
    }
    pthread_mutex_unlock(&registry_lock);
    return n;
}

/* ---- fork */

void sa_mcache_fork_prepare(void)
{
    pthread_mutex_lock(&registry_lock);
    sa_percpu_fork_prepare();
}

void sa_mcache_fork_parent(void)
{
    sa_percpu_fork_parent();
    pthread_mutex_unlock(&registry_lock);
}

/* In the child only the forking thread survives.  The other threads'
 * fallback slabs are whole: no refill or flush was half done at the fork
 * (mcentral.c, "Moves"), and each push or pop commits with one store of the
 * slab's word.  Their blocks go back to the mcentrals, as at a thread's
 * exit, and the slabs are retired.  The registry and the slabs' set-up were
 * written under the registry lock, which this thread took in prepare (that
 * acquire orders them on arm64 too); the words and slots of a thread's
 * last batch, by the release that ended its move, which the gate acquired.
 * The CPU slabs stay as they are: each section committed whole or not at
 * all, and the child's threads go on using them. */
void sa_mcache_fork_child(void)
{
    pthread_mutex_init(&registry_lock, NULL);
    struct sa_thread_cache *c = registry;
    while (c != NULL) {
        struct sa_thread_cache *next = c->reg_next;
        if (c != tls_record) {
            sa_slab_flush_exclusive(c->slab, false);
            registry_retire(c);
        }
        c = next;
    }
    if (tls_record != NULL)
        tls_record->owner = pthread_self();
    sa_percpu_fork_child();
}
