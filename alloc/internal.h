/*
 * internal.h: the types shared by the tiers, each with the invariants that
 * hold for it, and the few helpers the fast path inlines.
 *
 * Data flows one way: malloc -> mcache -> mcentral -> mheap -> os.  The
 * scavenger and the stats read the tiers; the tiers never call them back
 * except through the small hooks declared at the end of this file.
 *
 * Lock order (also the order fork() takes them in): registry, mcentral[1..N],
 * mheap, scavenger, then the heap profile's lock (a leaf: held while no other
 * is taken; profile/profile.c).  No tier calls a tier above it.
 */
#ifndef SPANALLOC_INTERNAL_H
#define SPANALLOC_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "spanalloc.h"
#include "sizeclasses_table.h"

#define SA_LIKELY(x) __builtin_expect(!!(x), 1)
#define SA_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define SA_NOINLINE __attribute__((noinline))
#define SA_COLD __attribute__((cold, noinline))
#define SA_HIDDEN __attribute__((visibility("hidden")))

/* ---- Geometry */
#define SA_PAGE_SHIFT 13
#define SA_PAGE_SIZE ((size_t)1 << SA_PAGE_SHIFT) /* 8 KiB */
#define SA_MAX_SMALL ((size_t)32768)
#define SA_ADDR_BITS 47                           /* x86-64/arm64 user space */
#define SA_ARENA_SHIFT 26                         /* page-map leaf: 64 MiB */
#define SA_ARENA_SIZE ((size_t)1 << SA_ARENA_SHIFT)
#define SA_PAGES_PER_ARENA ((size_t)1 << (SA_ARENA_SHIFT - SA_PAGE_SHIFT))
#define SA_ROOT_ENTRIES ((size_t)1 << (SA_ADDR_BITS - SA_ARENA_SHIFT))
#define SA_HEAP_GROW_MIN ((size_t)64 << 20)       /* heap grows by >= 64 MiB */

_Static_assert(SA_NUM_CLASSES == SPANALLOC_NUM_SIZE_CLASSES, "class count");

/* ---- Size classes (alloc/sizeclasses.c) */
extern const uint32_t sa_class_size[SA_NUM_CLASSES];
extern const uint32_t sa_class_npages[SA_NUM_CLASSES];
extern const uint32_t sa_class_magic[SA_NUM_CLASSES];
/* Size -> class, stored as the class's list offset in a thread cache
 * (class * sizeof(struct sa_cache_list)): malloc adds it to the cache pointer
 * and has its list, with no multiply.  sa_size_class() below divides back. */
extern const uint16_t sa_size_to_list[SA_MAX_SMALL / 16 + 1];

/* The same for requests of at most SA_DIRECT_MAX bytes, indexed by the size
 * itself (2 KiB): the common small request skips the rounding. */
extern const uint16_t sa_direct_size_to_list[SA_DIRECT_MAX + 1];

/* List offset for a small request (size <= SA_MAX_SMALL): one table load. */
static inline size_t sa_size_list_offset(size_t size)
{
    return sa_size_to_list[(size + 15) >> 4];
}

/* ---- Spans (alloc/span.c)
 *
 * A span is a run of pages.  Its record lives outside the pages it describes
 * (out-of-band metadata: a stray write into user memory cannot corrupt it).
 */
enum sa_span_state {
    SA_SPAN_FREE = 1,     /* idle, owned by the mheap's free structures */
    SA_SPAN_SMALL,        /* carved into objects of one size class */
    SA_SPAN_LARGE,        /* one object larger than SA_MAX_SMALL */
    SA_SPAN_SCAVENGING,   /* idle, detached while its pages are released */
    SA_SPAN_CACHED,       /* a freed large span kept whole for reuse */
};

struct sa_span {
    /* Read by the free fast path; written before the span is published. */
    uint32_t elem_size;   /* object size (small) or npages*page (large) */
    /* First byte, page aligned; also the address of the span's first object.
     * Stored at offset 4, not on a word boundary: memcheck's leak scan reads
     * only aligned words, so it must not take this for a pointer that keeps
     * a leaked first object "reachable".  x86 and arm64 load it at full speed. */
    uintptr_t base __attribute__((packed, aligned(4)));
    uint32_t div_magic;   /* ceil(2^32 / elem_size): offset -> index */
    uint8_t state;        /* enum sa_span_state */
    uint16_t list_off;    /* size class * sizeof(struct sa_cache_list): free()
                           * adds it to the cache pointer; 0 for large and
                           * free spans (the class is sa_span_cls()) */
    uint8_t needzero;     /* pages may hold old data (calloc must clear) */
    uint8_t on_list;      /* which list holds it (heap: dirty/clean) */
    uint32_t npages;
    /* free()'s inline check, Lemire's divisibility test: an offset from base
     * is the start of an object iff offset * free_magic (mod 2^64) is below
     * free_limit.  free_magic = ceil(2^64 / elem_size); for an object start
     * q * elem_size the product is q * e (e = free_magic * elem_size - 2^64,
     * 0 <= e < elem_size), and any other offset gives at least free_magic,
     * so free_limit = min(free_magic, nelems * e) also rejects the span's
     * unusable tail.  Both 0 unless SMALL: everything else goes out of line. */
    uint64_t free_magic;
    uint64_t free_limit;

    /* Small spans, under their mcentral's lock. */
    uint32_t nelems;      /* objects the span holds; 0 unless SMALL, so that
                           * free()'s index check also rejects other states */
    uint32_t nalloc;      /* objects out of the span (live or in caches) */
    uint32_t ncarved;     /* objects [0, ncarved) were handed out once */
    void *freelist;       /* returned objects, encoded links */

    /* List links: mcentral partial list, or heap size bucket. */
    struct sa_span *next, *prev;

    /* Free spans, under the heap lock. */
    struct sa_span *age_next, *age_prev; /* dirty spans, oldest first */
    uint64_t idle_since_ns;              /* when the span last became idle */
    uint32_t released_pages;             /* pages whose memory is with the OS */

    /* The heap profile's record of the span's one object if it was sampled
     * (profile/), else NULL: set after the heap hands the span out, cleared
     * before it goes back, so every span the heap holds has NULL here. */
    void *prof;
} __attribute__((aligned(64))); /* what free() reads shares one cache line */

struct sa_span_list {
    struct sa_span *first;
};

void sa_span_list_push(struct sa_span_list *list, struct sa_span *s);
void sa_span_list_remove(struct sa_span_list *list, struct sa_span *s);

/* Span records come from a fixed-size allocator under the heap lock. */
struct sa_span *sa_span_record_new(void);
void sa_span_record_free(struct sa_span *s);

/* ---- Page map (alloc/pagemap.c): address -> span, O(1), lock-free reads.
 *
 * Two levels: a root of SA_ROOT_ENTRIES leaf pointers (static, so untouched
 * entries cost no memory), each leaf covering one 64 MiB arena.  A leaf also
 * holds the arena's released-page bitmap (heap lock).  Leaves are never freed,
 * so a reader needs no lock: it sees NULL or a complete leaf.
 *
 * In-use spans map every page; free spans map their first and last page (for
 * coalescing) and nothing in between.
 */
struct sa_arena_leaf {
    _Atomic(struct sa_span *) spans[SA_PAGES_PER_ARENA];
    uint64_t released[SA_PAGES_PER_ARENA / 64]; /* bit per page, heap lock */
};

/* A root entry is 0 (no leaf yet) or its leaf's address, biased so that
 * the entry for any address of the arena is at
 *     bias - SA_LEAF_TAG + (addr >> SA_PAGE_SHIFT) * sizeof(pointer):
 * free()'s fast path finds the page's slot without masking the page index
 * into the leaf.  SA_LEAF_TAG keeps every bias odd (leaves are page aligned),
 * so that no bias is 0. */
extern _Atomic uintptr_t sa_pagemap_root[SA_ROOT_ENTRIES];
#define SA_LEAF_TAG ((uintptr_t)1)
#define SA_SLOT_SIZE sizeof(_Atomic(struct sa_span *))

static inline uintptr_t sa_leaf_bias(struct sa_arena_leaf *leaf, uintptr_t arena)
{
    return (uintptr_t)leaf + SA_LEAF_TAG - (arena << (SA_ARENA_SHIFT - SA_PAGE_SHIFT)) * SA_SLOT_SIZE;
}

/* What a page no span holds maps to, in a leaf that exists: a record that
 * every check rejects (state 0, free_limit 0), so free()'s fast path needs no
 * NULL test after the leaf load.  sa_pagemap_lookup() turns it into NULL. */
extern struct sa_span sa_span_none;

/* The root entry for addr, or 0: outside the 47-bit range (one compare on
 * the root index) or in an arena spanalloc never used.  A NULL pointer needs
 * no test of its own: it lands in arena 0, which has no leaf (or, had it one,
 * page 0, which no span holds). */
static inline uintptr_t sa_pagemap_bias(uintptr_t addr)
{
    uintptr_t arena = addr >> SA_ARENA_SHIFT;
    if (SA_UNLIKELY(arena >= SA_ROOT_ENTRIES))
        return 0;
    return atomic_load_explicit(&sa_pagemap_root[arena], memory_order_acquire);
}

/* The page map's entry for addr, given its nonzero root entry: a span, or
 * sa_span_none (never NULL). */
static inline struct sa_span *sa_pagemap_entry(uintptr_t bias, uintptr_t addr)
{
    _Atomic(struct sa_span *) *slot =
        (_Atomic(struct sa_span *) *)(bias - SA_LEAF_TAG + (addr >> SA_PAGE_SHIFT) * SA_SLOT_SIZE);
    return atomic_load_explicit(slot, memory_order_acquire);
}

/* The leaf for addr, or NULL. */
static inline struct sa_arena_leaf *sa_pagemap_leaf(uintptr_t addr)
{
    uintptr_t bias = sa_pagemap_bias(addr);
    if (bias == 0)
        return NULL;
    uintptr_t arena = addr >> SA_ARENA_SHIFT;
    return (struct sa_arena_leaf *)(bias - SA_LEAF_TAG +
                                    (arena << (SA_ARENA_SHIFT - SA_PAGE_SHIFT)) * SA_SLOT_SIZE);
}

/* The span holding addr, or NULL. */
static inline struct sa_span *sa_pagemap_lookup(uintptr_t addr)
{
    uintptr_t bias = sa_pagemap_bias(addr);
    if (SA_UNLIKELY(bias == 0))
        return NULL;
    struct sa_span *s = sa_pagemap_entry(bias, addr);
    return s == &sa_span_none ? NULL : s;
}

bool sa_pagemap_ensure(uintptr_t base, size_t bytes); /* heap lock */
void sa_pagemap_set(uintptr_t base, size_t npages, struct sa_span *s);
void sa_pagemap_set_page(uintptr_t addr, struct sa_span *s);
/* Released-page bitmap, heap lock held. */
size_t sa_pagemap_count_released(uintptr_t base, size_t npages);
void sa_pagemap_mark_released(uintptr_t base, size_t npages, bool released);
size_t sa_pagemap_first_unreleased(uintptr_t base, size_t npages); /* npages if none */
uint64_t sa_pagemap_sys_bytes(void);

/* ---- Free-block encoding (safe linking and the double-free mark).
 *
 * A free small block holds two words:
 *   word 0, the link: next ^ link_key, so a use-after-free write cannot aim
 *   the list at an address of its choosing without the secret;
 *   word 1, the mark: word0 ^ address ^ mark_key.  It says "this block is
 *   free" (a second free of it is a double free) and it seals the link: a
 *   write over either word breaks the equation, which is checked before a
 *   block is handed out and before its link is followed.  Forging a block
 *   takes both secrets (drawn from getrandom at load).
 */
extern uintptr_t sa_link_key;
extern uintptr_t sa_mark_key;

static inline uintptr_t sa_encode_link(void *next)
{
    return (uintptr_t)next ^ sa_link_key;
}
static inline void *sa_decode_link(uintptr_t word)
{
    return (void *)(word ^ sa_link_key);
}
static inline uintptr_t sa_seal(uintptr_t link, const void *at)
{
    return link ^ (uintptr_t)at ^ sa_mark_key;
}
static inline void sa_block_make_free(void *block, void *next)
{
    uintptr_t *w = (uintptr_t *)block;
    /* Both words computed before either store: the stores may alias the keys
     * as far as the compiler knows, and reloading them costs instructions. */
    uintptr_t link = sa_encode_link(next);
    uintptr_t mark = sa_seal(link, block);
    w[0] = link;
    w[1] = mark;
}
/* True if the block carries an intact free mark: it is free, and its link
 * is the one spanalloc wrote. */
static inline bool sa_block_is_free(const void *block)
{
    const uintptr_t *w = (const uintptr_t *)block;
    return w[1] == sa_seal(w[0], block);
}

/* ---- mcache (alloc/mcache.c): per thread, no locks. */
/* Per class in a thread's cache; one operation touches one cache line.
 * Only the owning thread writes these fields; read_mem_stats reads them from
 * other threads with relaxed atomic loads (SA_PEER_READ).
 *
 * The list holds cap - room blocks.  free() decrements room and takes the
 * slow path when it goes negative (one instruction and one branch: no
 * compare against a second field); the slow path sets it back to 0 before
 * doing anything else, so a negative room is never seen outside it.  The
 * frees are not counted on the free fast path: since
 * count = moved + frees - mallocs, frees = count - moved + mallocs (mod 2^64). */
struct sa_cache_list {
    void *head;       /* encoded singly-linked list of free blocks */
    int32_t room;     /* blocks the list can still take */
    uint32_t cap;     /* most blocks it holds; 0 in the empty sentinel cache */
    uint64_t mallocs; /* blocks popped by malloc */
    uint64_t moved;   /* blocks refilled from minus flushed to the mcentral */
};
#define SA_LIST_SHIFT 5
_Static_assert(sizeof(struct sa_cache_list) == 1u << SA_LIST_SHIFT, "list size");

/* Size class of a span, 0 unless SMALL. */
static inline unsigned sa_span_cls(const struct sa_span *s)
{
    return (unsigned)(s->list_off >> SA_LIST_SHIFT);
}

/* Class of a small request (size <= SA_MAX_SMALL), for the slow paths. */
static inline unsigned sa_size_class(size_t size)
{
    return (unsigned)(sa_size_list_offset(size) >> SA_LIST_SHIFT);
}

/* The owner's updates are plain read-modify-writes (one instruction, no lock
 * prefix); aligned 64-bit stores are single-copy atomic on the targets we
 * build for, so a peer's relaxed load sees an old or a new value.  Under
 * ThreadSanitizer they are spelled as relaxed atomics so the model is exact. */
#if defined(__SANITIZE_THREAD__)
#define SA_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SA_TSAN 1
#endif
#endif
#if defined(SA_TSAN)
#define SA_OWNER_ADD(field, n) \
    __atomic_store_n(&(field), __atomic_load_n(&(field), __ATOMIC_RELAXED) + (n), __ATOMIC_RELAXED)
#define SA_OWNER_DEC(field) \
    __extension__({ __typeof__(field) sa_v_ = __atomic_load_n(&(field), __ATOMIC_RELAXED) - 1; \
                    __atomic_store_n(&(field), sa_v_, __ATOMIC_RELAXED); sa_v_; })
#else
#define SA_OWNER_ADD(field, n) ((field) += (n))
#define SA_OWNER_DEC(field) (--(field))
#endif
#define SA_PEER_READ(field) __atomic_load_n(&(field), __ATOMIC_RELAXED)

/* Blocks on a list, by its owner or (approximately, racing) by a peer. */
static inline uint32_t sa_list_count(struct sa_cache_list *l)
{
    return SA_PEER_READ(l->cap) - (uint32_t)SA_PEER_READ(l->room);
}

static inline uint64_t sa_list_frees(struct sa_cache_list *l)
{
    return (uint64_t)sa_list_count(l) - SA_PEER_READ(l->moved) + SA_PEER_READ(l->mallocs);
}

struct sa_mcache {
    struct sa_cache_list lists[SA_NUM_CLASSES];
    /* Copies of sa_link_key and sa_mark_key: the fast path reaches them from
     * the cache pointer it already holds (0 in the empty cache, which never
     * gets that far). */
    uintptr_t link_key, mark_key;
    struct sa_mcache *reg_next, *reg_prev; /* registry, registry lock */
    pthread_t owner;
} __attribute__((aligned(64)));

extern __thread struct sa_mcache *sa_tls_cache
    __attribute__((tls_model("initial-exec")));
extern struct sa_mcache sa_empty_cache;

void *sa_mcache_alloc_slow(unsigned cls);
/* A free block whose seal is broken: reports and aborts.  Not declared
 * noreturn, so that malloc reaches it with a jump and keeps no stack frame. */
SA_COLD void *sa_mcache_bad_block(void *block);
void sa_mcache_free_slow(void *block, const struct sa_span *s);
void sa_mcache_flush_current(void);
uint32_t sa_mcache_list_cap(unsigned cls);
size_t sa_mcache_bound_bytes(void);
void sa_mcache_fold_stats(uint64_t *mallocs, uint64_t *frees, uint64_t *caches_live,
                          uint64_t *caches_sys_bytes);
uint64_t sa_mcache_sys_bytes(void);
void sa_mcache_fork_prepare(void);
void sa_mcache_fork_parent(void);
void sa_mcache_fork_child(void);
void sa_mcache_thread_init(void);

/* ---- mcentral (alloc/mcentral.c): per size class, one lock each. */
uint32_t sa_mcentral_fill(unsigned cls, uint32_t want, void **head);
void sa_mcentral_release(unsigned cls, void *head);
/* A whole batch from a cache flush: kept intact for the next refill when a
 * transfer slot is free, else put back into its spans. */
void sa_mcentral_release_batch(unsigned cls, void *head, uint32_t count);
void sa_mcentral_drain_transfer(void); /* every kept batch back to its spans */
void sa_mcentral_fork_prepare(void);
void sa_mcentral_fork_parent(void);
void sa_mcentral_fork_child(void);
uint64_t sa_mcentral_sys_bytes(void);

/* ---- mheap (alloc/mheap.c): pages, one lock. */
struct sa_heap_counters {
    uint64_t sys_bytes;        /* heap bytes mapped from the OS */
    uint64_t inuse_pages;      /* pages in SMALL or LARGE spans */
    uint64_t released_pages;   /* idle pages whose memory is with the OS */
    uint64_t released_total;   /* bytes ever released */
    uint64_t reacquired_total; /* released bytes taken back into use */
    uint64_t large_mallocs, large_frees;
    uint64_t large_alloc_bytes, large_total_alloc;
    uint64_t span_records, span_records_sys;
    uint64_t madvise_failures;
    uint64_t pagemap_sys;      /* page-map leaves and the root pages used */
};

/* Allocate a span; *grew says the heap mapped new memory, and the caller
 * must then call sa_scavenger_on_grow() once it holds no lock. */
struct sa_span *sa_mheap_alloc(size_t npages, size_t align_pages, unsigned cls, bool *grew);
void sa_mheap_free(struct sa_span *s);
struct sa_span *sa_mheap_alloc_large(size_t npages, size_t align_pages);
void sa_mheap_free_large(struct sa_span *s);
bool sa_mheap_grow_large(struct sa_span *s, size_t npages); /* in place, or false */
/* The large-span cache (malloc.c's large objects): free keeps a small span
 * whole, or frees it as sa_mheap_free_large; take returns one of exactly
 * npages, or NULL. */
void sa_mheap_free_large_cached(struct sa_span *s);
struct sa_span *sa_mheap_take_cached(size_t npages);
void sa_mheap_read(struct sa_heap_counters *out);
/* Release idle pages: spans idle since before `cutoff_ns`, oldest first, until
 * `max_bytes` were released.  Returns bytes released. */
uint64_t sa_mheap_scavenge(uint64_t cutoff_ns, uint64_t max_bytes);
/* SPANALLOC_IDLE_LIMIT: resident idle bytes above the limit (0 if none). */
uint64_t sa_mheap_idle_excess(void);
/* Release the idle limit's excess among spans idle for SPANALLOC_IDLE_DELAY. */
uint64_t sa_mheap_enforce_idle_limit(uint64_t excess);
void sa_mheap_lock(void);
void sa_mheap_unlock(void);
void sa_mheap_fork_child(void);

/* ---- os (alloc/os.c): the one place that talks to the kernel. */
void *sa_os_map(size_t bytes, size_t align);
void sa_os_unmap(void *addr, size_t bytes);
bool sa_os_release(void *addr, size_t bytes);
void sa_os_random(void *buf, size_t len);
uint64_t sa_os_now_ns(void);
size_t sa_os_page_size(void);
/* Background threads: register at start; exit when no other thread runs. */
void sa_os_register_background_thread(void);
void sa_os_unregister_background_thread(void);
void sa_os_forget_background_threads(void);
bool sa_os_user_threads_alive(void);
/* Test hooks (internal): fail the next `n` maps; replace the clock. */
SA_HIDDEN extern _Atomic int sa_os_fail_maps;
SA_HIDDEN extern uint64_t (*sa_clock_hook)(void);

/* ---- Bootstrap, options, errors (alloc/init.c, alloc/report.c) */
struct sa_options {
    uint64_t scavenge_idle_ns;  /* SPANALLOC_SCAVENGE_IDLE, default 5 min */
    uint64_t memory_limit;      /* SPANALLOC_MEMORY_LIMIT, 0 = none */
    uint32_t idle_limit_pct;    /* SPANALLOC_IDLE_LIMIT, % of heap in use; 0 = off */
    uint64_t idle_delay_ns;     /* SPANALLOC_IDLE_DELAY: least idle age it releases */
    bool madvise_free;          /* SPANALLOC_MADVISE=free */
    bool scavenger_enabled;     /* SPANALLOC_SCAVENGER != off */
    bool trace;                 /* SPANALLOC_TRACE=1 */
    int stats_at_exit;          /* SPANALLOC_STATS: -1 none, 0 text, 1 json */
    char stats_file[4096];      /* SPANALLOC_STATS_FILE, "" = none (%p: pid) */
    uint64_t stats_interval_ns; /* SPANALLOC_STATS_INTERVAL, default 10 s */
};
extern struct sa_options sa_options;
extern bool sa_on_valgrind; /* set at init: caches off, client requests on */
extern _Atomic int sa_init_state; /* 0 none, 1 running, 2 done */
void sa_init_slow(void);
static inline void sa_ensure_init(void)
{
    if (SA_UNLIKELY(atomic_load_explicit(&sa_init_state, memory_order_acquire) != 2))
        sa_init_slow();
}
bool sa_parse_duration(const char *s, uint64_t *ns);
bool sa_parse_bytes(const char *s, uint64_t *bytes);
bool sa_parse_percent(const char *s, uint32_t *pct);

/* Report a misuse of the heap on stderr without allocating, then abort. */
SA_COLD __attribute__((noreturn)) void sa_report(const char *what, const void *ptr,
                                                 const struct sa_span *s);
/* Validate a pointer handed to free/realloc/usable_size; returns its span
 * or reports and aborts. */
struct sa_span *sa_checked_span(const void *ptr, const char *op);
/* free() of a small block that failed a check: says which, then aborts. */
SA_COLD __attribute__((noreturn)) void sa_bad_small_free(void *ptr, struct sa_span *s);

/* ---- Hooks into the scavenger (scavenger/scavenger.c) */
void sa_scavenger_on_grow(void);   /* heap grew: start thread, check limit */
void sa_scavenger_poke(void);      /* no lock held: restart after fork */
void sa_scavenger_fork_prepare(void);
void sa_scavenger_fork_parent(void);
void sa_scavenger_fork_child(void);

/* ---- Hooks into the snapshot writer (stats/snapshot.c) */
void sa_snapshot_on_grow(void);    /* no lock held: start the writer thread */
void sa_snapshot_fork_child(void); /* the writer did not survive fork */

/* ---- Internal entry points shared by the C API and the libc names */
void *sa_malloc(size_t size);
void sa_free(void *ptr);
size_t sa_usable_size(const void *ptr);

#endif /* SPANALLOC_INTERNAL_H */
