/*
 * internal.h: the types shared by the tiers, each with the invariants that
 * hold for it, and the few helpers the fast path inlines.
 *
 * Data flows one way: malloc -> mcache -> mcentral -> mheap -> os.  The
 * scavenger and the stats read the tiers; the tiers never call them back
 * except through the hook table (alloc/hooks.c) that lifecycle/ registers at
 * start-up; tests/check_layering.py checks it on the compiled objects.
 *
 * Lock order (also the order fork() takes them in): registry, the CPU caches'
 * set-up and drain locks, mcentral[1..N], the heap profile's lock (a sampled
 * free holds it across the heap's; profile/profile.c), mheap, scavenger.  No
 * tier calls a tier above it.
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
#define SA_MAX_MEDIUM ((size_t)262144)             /* medium classes: (32 KiB, 256 KiB] */
/* The page map's static root covers SA_ADDR_BITS (x86-64 with 4-level paging
 * gives 47, arm64 48: where mmap places memory unless asked for more); the
 * rest of the user address space up to SA_MAX_ADDR_BITS (x86-64 5-level
 * paging: 56, arm64 LVA: 52) is reached through a small hashed table. */
#define SA_ADDR_BITS 48
#define SA_MAX_ADDR_BITS 56
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
 * (class * sizeof(struct sa_slab_class)): malloc adds it to the slab pointer
 * and has its list, with no multiply.  sa_size_class() below divides back. */
extern const uint16_t sa_size_to_list[SA_MAX_SMALL / 16 + 1];

/* The same for requests of at most SA_DIRECT_MAX bytes, indexed by the size
 * itself (2 KiB): the common small request skips the rounding. */
extern const uint16_t sa_direct_size_to_list[SA_DIRECT_MAX + 1];

/* Medium requests (SA_MAX_SMALL < size <= SA_MAX_MEDIUM), one entry per
 * 8 KiB: the classes after the small ones, looked up out of the inline path. */
extern const uint16_t sa_medium_size_to_list[(SA_MAX_MEDIUM - SA_MAX_SMALL) >> SA_MEDIUM_GRANULE_SHIFT];

static inline size_t sa_medium_list_offset(size_t size)
{
    return sa_medium_size_to_list[((size - 1) >> SA_MEDIUM_GRANULE_SHIFT) -
                                  (SA_MAX_SMALL >> SA_MEDIUM_GRANULE_SHIFT)];
}

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
    SA_SPAN_SMALL,        /* carved into objects of one size class (small or medium) */
    SA_SPAN_LARGE,        /* one object larger than SA_MAX_MEDIUM (or over-aligned) */
    SA_SPAN_SCAVENGING,   /* idle, detached while its pages are released */
    SA_SPAN_CACHED,       /* a freed large span kept whole for reuse */
};

/* Who owns a span record: whoever holds the span.  The heap lock while the
 * heap has it (free or cached) and whenever the heap hands it out or takes
 * it back, which is when every field down to free_limit is written; the
 * releasing thread while it is out for release (SCAVENGING: detached, read
 * without the lock, written again under it); its class's lock while it is a
 * small span's (the mcentral fields).  Readers of a published span (free's
 * checks) take no lock. */
struct sa_span {
    /* Read by the free fast path; written under the heap lock before the
     * span is published in the page map. */
    uint32_t elem_size;   /* object size (small) or npages*page (large) */
    /* First byte, page aligned; also the address of the span's first object.
     * Stored at offset 4, not on a word boundary: memcheck's leak scan reads
     * only aligned words, so it must not take this for a pointer that keeps
     * a leaked first object "reachable".  x86 and arm64 load it at full speed. */
    uintptr_t base __attribute__((packed, aligned(4)));
    uint32_t div_magic;   /* ceil(2^32 / elem_size): offset -> index */
    uint8_t state;        /* enum sa_span_state */
    uint16_t list_off;    /* size class * sizeof(struct sa_slab_class): free()
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

    /* Free spans only, under the heap lock: written while no object of the
     * span is live, so sharing free()'s line costs the fast path nothing. */
    uint64_t idle_since_ns;              /* when the span last became idle */
    uint32_t released_pages;             /* pages whose memory is with the OS */

    /* Second cache line: what changes while the span is in use.  A refill or
     * flush on one CPU writes these under the class lock; kept off the first
     * line, they do not take that line away from another CPU's free(). */

    /* Small spans, under their mcentral's lock. */
    uint32_t nelems __attribute__((aligned(64))); /* objects the span holds; 0 unless SMALL */
    uint32_t nalloc;      /* objects out of the span (live or in caches) */
    uint32_t ncarved;     /* objects [0, ncarved) were handed out once */
    void *freelist;       /* returned objects, encoded links */

    /* List links, under the lock of the list's owner: the class lock (an
     * mcentral's partial list) or the heap lock (a free-index bucket). */
    struct sa_span *next, *prev;

    /* Dirty free spans, oldest first, under the heap lock. */
    struct sa_span *age_next, *age_prev;

    /* The heap profile's record of the span's one object if it was sampled
     * (profile/), else NULL: set after the heap hands the span out, cleared
     * before it goes back, so every span the heap holds has NULL here. */
    void *prof;
} __attribute__((aligned(64)));
/* free() reads one line, which only the span's owner tier writes before the
 * span is published (see the second line's comment). */
_Static_assert(offsetof(struct sa_span, nelems) == 64, "free()'s fields fill the first line");
_Static_assert(sizeof(struct sa_span) == 128, "a span record is two cache lines");

struct sa_span_list {
    struct sa_span *first;
};

/* The intrusive doubly linked lists (span lists, the heap's spans out for
 * release, the fallback caches' registry): push `node` at `head`, or unlink
 * it, through its link fields `next` and `prev` (the node's links are left
 * as they were on removal). */
#define SA_DLIST_PUSH(head, node, next, prev)                                   \
    do {                                                                        \
        (node)->prev = NULL;                                                    \
        (node)->next = (head);                                                  \
        if ((head) != NULL)                                                     \
            (head)->prev = (node);                                              \
        (head) = (node);                                                        \
    } while (0)
#define SA_DLIST_REMOVE(head, node, next, prev)                                 \
    do {                                                                        \
        if ((node)->prev != NULL)                                               \
            (node)->prev->next = (node)->next;                                  \
        else                                                                    \
            (head) = (node)->next;                                              \
        if ((node)->next != NULL)                                               \
            (node)->next->prev = (node)->prev;                                  \
    } while (0)

void sa_span_list_push(struct sa_span_list *list, struct sa_span *s);
void sa_span_list_remove(struct sa_span_list *list, struct sa_span *s);

/* ---- Metadata chunks (alloc/chunk.c): records bump-allocated from chunks
 * mapped for metadata only, never unmapped.  The owner's lock guards its
 * struct sa_chunk. */
struct sa_chunk {
    char *cursor, *end; /* the current chunk's free part (NULL: none yet) */
    uint64_t mapped;    /* bytes of every chunk mapped so far */
};
/* Room for `size` more bytes, mapping a new chunk of chunk_bytes if the
 * current one lacks it; false if that mapping failed. */
bool sa_chunk_reserve(struct sa_chunk *c, size_t size, size_t chunk_bytes);
/* The next `size` bytes, after a successful sa_chunk_reserve of them. */
static inline void *sa_chunk_take(struct sa_chunk *c, size_t size)
{
    void *p = c->cursor;
    c->cursor += size;
    return p;
}

/* Span records come from a fixed-size allocator under the heap lock (the
 * callers hold it). */
struct sa_span *sa_span_record_new(void);
void sa_span_record_free(struct sa_span *s);
/* Test hooks (internal, heap lock): fail that many record allocations after
 * letting sa_span_records_fail_after through. */
SA_HIDDEN extern int sa_span_records_fail, sa_span_records_fail_after;

/* ---- Page map (alloc/pagemap.c): address -> span, O(1), lock-free reads.
 *
 * Two levels: a root of leaf pointers, each leaf covering one 64 MiB arena.
 * The root has two parts: a static array for the arenas below 2^SA_ADDR_BITS
 * (untouched entries cost no memory), which is all free()'s fast path reads
 * inline, and a hashed table of SA_HIGH_SLOTS entries for the few arenas
 * between 2^SA_ADDR_BITS and 2^SA_MAX_ADDR_BITS, reached out of line.  A
 * leaf also holds the arena's released-page bitmap and its known-zero bitmap
 * (heap lock).  Leaves are never freed, so a reader needs no lock: it sees 0
 * or a complete leaf.
 *
 * Small spans map every page (free() finds an object's span from its page);
 * large and free spans map their first and last page (for coalescing) and
 * nothing in between, so a pointer into a large block's middle finds none.
 */
struct sa_arena_leaf {
    _Atomic(struct sa_span *) spans[SA_PAGES_PER_ARENA]; /* written under the heap lock, read with none */
    uint64_t released[SA_PAGES_PER_ARENA / 64]; /* bit per page, heap lock */
    /* Pages whose memory reads as zero: fresh from the kernel, or released
     * with MADV_DONTNEED over whole OS pages, and not used since (a subset
     * of released).  calloc clears a block unless all of it is here.  Heap
     * lock. */
    uint64_t zero[SA_PAGES_PER_ARENA / 64];
};

/* A root entry is 0 (no leaf yet) or its leaf's address, biased so that
 * the entry for any address of the arena is at
 *     bias - SA_LEAF_TAG + (addr >> SA_PAGE_SHIFT) * sizeof(pointer):
 * free()'s fast path finds the page's slot without masking the page index
 * into the leaf.  SA_LEAF_TAG keeps every bias odd (leaves are 8-byte
 * aligned), so that no bias is 0. */
extern _Atomic uintptr_t sa_pagemap_root[SA_ROOT_ENTRIES];
#define SA_LEAF_TAG ((uintptr_t)1)
#define SA_SLOT_SIZE sizeof(_Atomic(struct sa_span *))

/* The high part: open addressing on the arena number, at most half full
 * (SA_HIGH_SLOTS / 2 arenas: 128 GiB of heap above 2^SA_ADDR_BITS, which
 * mmap hands out only to programs that ask for it). */
#define SA_HIGH_SLOTS 4096
uintptr_t sa_pagemap_high_bias(uintptr_t addr);

static inline uintptr_t sa_leaf_bias(struct sa_arena_leaf *leaf, uintptr_t arena)
{
    return (uintptr_t)leaf + SA_LEAF_TAG - (arena << (SA_ARENA_SHIFT - SA_PAGE_SHIFT)) * SA_SLOT_SIZE;
}

/* What a page no span holds maps to, in a leaf that exists: a record that
 * every check rejects (state 0, free_limit 0), so free()'s fast path needs no
 * NULL test after the leaf load.  sa_pagemap_lookup() turns it into NULL. */
extern struct sa_span sa_span_none;

/* free()'s inline lookup: the root entry for addr in the static root, or 0:
 * in an arena spanalloc never used, or above the static root (one compare on
 * the root index), where the out-of-line path asks sa_pagemap_bias_any.  (A
 * call here, even a cold one, would cost the fast path a saved register.)  A
 * NULL pointer needs no test of its own: it lands in arena 0, which has no
 * leaf (or, had it one, page 0, which no span holds). */
static inline uintptr_t sa_pagemap_bias(uintptr_t addr)
{
    uintptr_t arena = addr >> SA_ARENA_SHIFT;
    if (SA_UNLIKELY(arena >= SA_ROOT_ENTRIES))
        return 0;
    return atomic_load_explicit(&sa_pagemap_root[arena], memory_order_acquire);
}

/* The root entry for any address, the hashed part included. */
static inline uintptr_t sa_pagemap_bias_any(uintptr_t addr)
{
    uintptr_t arena = addr >> SA_ARENA_SHIFT;
    if (SA_UNLIKELY(arena >= SA_ROOT_ENTRIES))
        return sa_pagemap_high_bias(addr);
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
    uintptr_t bias = sa_pagemap_bias_any(addr);
    if (bias == 0)
        return NULL;
    uintptr_t arena = addr >> SA_ARENA_SHIFT;
    return (struct sa_arena_leaf *)(bias - SA_LEAF_TAG +
                                    (arena << (SA_ARENA_SHIFT - SA_PAGE_SHIFT)) * SA_SLOT_SIZE);
}

/* The span holding addr, or NULL. */
static inline struct sa_span *sa_pagemap_lookup(uintptr_t addr)
{
    uintptr_t bias = sa_pagemap_bias_any(addr);
    if (SA_UNLIKELY(bias == 0))
        return NULL;
    struct sa_span *s = sa_pagemap_entry(bias, addr);
    return s == &sa_span_none ? NULL : s;
}

/* Leaves for [base, base+bytes): all of them or, on failure, none (heap lock). */
bool sa_pagemap_ensure(uintptr_t base, size_t bytes); /* heap lock */
void sa_pagemap_set(uintptr_t base, size_t npages, struct sa_span *s);
void sa_pagemap_set_page(uintptr_t addr, struct sa_span *s);
/* Released-page bitmap, heap lock held. */
size_t sa_pagemap_count_released(uintptr_t base, size_t npages);
void sa_pagemap_mark_released(uintptr_t base, size_t npages, bool released);
size_t sa_pagemap_first_unreleased(uintptr_t base, size_t npages); /* npages if none */
/* Known-zero pages (heap lock): fresh memory from the kernel is released and
 * zero; a release marks pages released, and zero only where the kernel
 * guarantees it (sa_os_release_zeroes, whole OS pages).  Marking pages
 * unreleased (taken into use) clears both. */
void sa_pagemap_note_fresh(uintptr_t base, size_t npages);
void sa_pagemap_note_released(uintptr_t base, size_t npages);
bool sa_pagemap_all_zero(uintptr_t base, size_t npages);
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
/* Written once by the initialising thread (alloc/init.c), read-only after. */
SA_HIDDEN extern uintptr_t sa_link_key; /* hidden: the fast path loads them PC-relative */
SA_HIDDEN extern uintptr_t sa_mark_key;

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

/* ---- mcache (alloc/mcache.c, alloc/percpu.c): per CPU, or per thread
 * where rseq is not available; no locks on the fast path.  The slab layout
 * and the restartable sections are in alloc/percpu.h.
 *
 * A class's list offset (class << SA_LIST_SHIFT) is the offset of its
 * header in a slab (struct sa_slab_class, 32 bytes). */
#define SA_LIST_SHIFT 5

/* Size class of a span, 0 unless SMALL. */
static inline unsigned sa_span_cls(const struct sa_span *s)
{
    return (unsigned)(s->list_off >> SA_LIST_SHIFT);
}

/* Class of a small or medium request (size <= SA_MAX_MEDIUM), for the slow
 * paths. */
static inline unsigned sa_size_class(size_t size)
{
    size_t off = size <= SA_MAX_SMALL ? sa_size_list_offset(size) : sa_medium_list_offset(size);
    return (unsigned)(off >> SA_LIST_SHIFT);
}

/* ThreadSanitizer cannot see inline assembly: its builds use the C version
 * of the sections, in per-thread mode only (docs/design.md). */
#if defined(__SANITIZE_THREAD__)
#define SA_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SA_TSAN 1
#endif
#endif
#define SA_PEER_READ(field) __atomic_load_n(&(field), __ATOMIC_RELAXED)

void *sa_mcache_alloc_slow(unsigned cls);
/* A free block whose seal is broken: reports and aborts.  Not declared
 * noreturn, so that malloc reaches it with a jump and keeps no stack frame. */
SA_COLD void *sa_mcache_bad_block(void *block);
/* malloc's pop failed (it yields the poison block) or its mark check did. */
SA_COLD void *sa_mcache_alloc_miss(void *block, size_t list_off);
void sa_mcache_free_slow(void *block, const struct sa_span *s);
/* free_os_memory and the memory limit: every CPU's cache and the calling
 * thread's own. */
void sa_mcache_flush_current(void);
void sa_mcache_scavenge(void);          /* scavenger cycle: drain idle CPUs */
bool sa_mcache_thread_is_percpu(void);
uint64_t sa_mcache_held_blocks(unsigned cls); /* blocks of cls in every cache */
uint32_t sa_mcache_list_cap(unsigned cls);
size_t sa_mcache_bound_bytes(void);
void sa_mcache_fold_stats(uint64_t *mallocs, uint64_t *frees, uint64_t *caches_inuse,
                          uint64_t *caches_sys_bytes);
uint64_t sa_mcache_sys_bytes(void);
void sa_mcache_fork_prepare(void);
void sa_mcache_fork_parent(void);
void sa_mcache_fork_child(void);
void sa_mcache_thread_init(void);
/* Test hook (internal, set before threads): replaces pthread_setspecific. */
SA_HIDDEN extern int (*sa_setspecific_hook)(pthread_key_t, const void *);

/* ---- mcentral (alloc/mcentral.c): per size class, one lock each. */
uint32_t sa_mcentral_fill(unsigned cls, uint32_t want, void **head);
void sa_mcentral_release(unsigned cls, void *head);
/* A whole batch from a cache flush: kept for the next refill while the
 * class's transfer array has room, else put back into its spans. */
void sa_mcentral_release_batch(unsigned cls, void *head, uint32_t count);
/* The same, as an array of blocks that carry the free mark (a cache's
 * flush), and the refill's side: up to want blocks into an array, marked
 * free, from the transfer array if it holds any, else from the spans. */
void sa_mcentral_release_array(unsigned cls, void *const *blocks, uint32_t n);
uint32_t sa_mcentral_fill_array(unsigned cls, void **blocks, uint32_t want);
void sa_mcentral_drain_transfer(void); /* every waiting block back to its span */
void sa_mcentral_fork_prepare(void);
/* Test hooks (internal): fork_prepare waits for a chain of empty spans (an
 * atomic, any thread); called between the class lock and the heap when
 * carrying one (set before threads). */
SA_HIDDEN extern _Atomic int sa_mcentral_fork_waiting;
SA_HIDDEN extern void (*sa_mcentral_chain_hook)(void);
/* A batch of blocks in the caller's hands between a class lock and a cache
 * (a refill's or a flush's): begun before the blocks leave the class or
 * the cache, ended once they are all in one or the other, so that fork
 * waits for it (mcentral.c, "Moves").  may_wait false: the caller holds a
 * lock fork takes (the drain lock). */
struct sa_move {
    unsigned cls;
    struct sa_move *outer;
};
void sa_mcentral_move_begin(struct sa_move *m, unsigned cls, bool may_wait);
void sa_mcentral_move_end(struct sa_move *m);
/* Test hook (internal): called in a move with its blocks in hand. */
SA_HIDDEN extern void (*sa_mcentral_move_hook)(unsigned cls);
/* fork's first step: wait for every move, keep new ones out until
 * fork_parent or fork_child. */
void sa_mcentral_fork_gate(void);
/* Blocks of cls out of their spans (in use, cached, parked or in hand);
 * takes the class lock (tests, diagnostics). */
uint64_t sa_mcentral_objects_out(unsigned cls);
void sa_mcentral_fork_parent(void);
void sa_mcentral_fork_child(void);
uint64_t sa_mcentral_sys_bytes(void);

/* ---- mheap (alloc/mheap.c; its large-span cache, alloc/largecache.c):
 * pages, one lock. */
/* Every field under the heap lock: written by mheap.c (span_records and
 * span_records_sys by span.c, pagemap_sys filled in by sa_mheap_read), read
 * by others only as the copy sa_mheap_read takes under the lock. */
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
    uint64_t released_inline;  /* bytes freeing threads released themselves */
};

/* Allocate a span; *grew says the heap mapped new memory, and the caller
 * must then call sa_hooks_heap_grew() once it holds no lock. */
struct sa_span *sa_mheap_alloc(size_t npages, size_t align_pages, unsigned cls, bool *grew);
void sa_mheap_free(struct sa_span *s);
/* A large span, the block counted in heap_alloc and total_alloc as `counted`
 * bytes instead of the span's (a sampled small block: its class's size),
 * in the same hold of the heap lock as the allocation, so that no reader
 * sees the span's bytes first; 0 counts the span. */
struct sa_span *sa_mheap_alloc_large_as(size_t npages, size_t align_pages, size_t counted);
static inline struct sa_span *sa_mheap_alloc_large(size_t npages, size_t align_pages)
{
    return sa_mheap_alloc_large_as(npages, align_pages, 0); /* inline: no extra call */
}
/* Count an already counted large span s as its whole span again (a sampled
 * block left without its profile record). */
void sa_mheap_recount_large(const struct sa_span *s, size_t counted);
void sa_mheap_free_large(struct sa_span *s);
bool sa_mheap_grow_large(struct sa_span *s, size_t npages); /* in place, or false */
/* realloc's shrink in place: the pages past npages go back to the heap. */
bool sa_mheap_shrink_large(struct sa_span *s, size_t npages);
/* The large-span cache (alloc/largecache.c; malloc.c's large objects):
 * free keeps a small span whole, or frees it as sa_mheap_free_large; take
 * returns one of exactly npages, or NULL. */
/* The free of a span allocated by sa_mheap_alloc_large_as(.., counted). */
void sa_mheap_free_large_cached_as(struct sa_span *s, size_t counted);
static inline void sa_mheap_free_large_cached(struct sa_span *s)
{
    sa_mheap_free_large_cached_as(s, 0);
}
struct sa_span *sa_mheap_take_cached(size_t npages);
void sa_mheap_flush_large_cache(void); /* every cached span back to the heap */
#define SA_LARGE_CACHE_MAX_BYTES ((size_t)1 << 20) /* the largest span it keeps */
void sa_mheap_read(struct sa_heap_counters *out);
/* Release idle pages: spans idle since before `cutoff_ns`, oldest first, until
 * `max_bytes` were released.  Returns bytes released. */
uint64_t sa_mheap_scavenge(uint64_t cutoff_ns, uint64_t max_bytes);
/* SPANALLOC_IDLE_LIMIT: resident idle bytes above the limit (0 if none).
 * What is done with them is the release policy's (scavenger/release_policy.c). */
uint64_t sa_mheap_idle_excess(void);
/* The release policy's view, under one hold of the heap lock: the excess
 * (if excess is not NULL) and, returning true, the oldest idle span's stamp
 * (ns, sa_os_now_ns's clock); false if no span is idle and resident. */
bool sa_mheap_oldest_idle(uint64_t *excess, uint64_t *idle_since_ns);
/* Count bytes a freeing thread released itself (released_inline). */
void sa_mheap_count_released_inline(uint64_t bytes);
/* Refresh the coarse clock of the idle stamps (the scavenger, each wake). */
void sa_mheap_clock_tick(void);
/* Test support: check the free spans' structure; NULL if sound, else what
 * is wrong.  Heap lock taken. */
const char *sa_mheap_verify(void);
void sa_mheap_lock(void);
void sa_mheap_unlock(void);
void sa_mheap_fork_child(void);

/* ---- os (alloc/os.c): the one place that talks to the kernel. */
void *sa_os_map(size_t bytes, size_t align);
void sa_os_unmap(void *addr, size_t bytes);
/* Could the machine ever back `bytes` more (RAM + swap, the kernel's
 * overcommit rule)?  Called where the large path begins, before anything is
 * touched. */
bool sa_os_can_back(size_t bytes);
bool sa_os_release(void *addr, size_t bytes);
void sa_os_random(void *buf, size_t len);
/* The heap's clock (idle stamps, the idle delay): the monotonic clock in
 * ns, or the test hook's (sa_clock_hook) when one is set. */
uint64_t sa_os_now_ns(void);
/* CLOCK_MONOTONIC in ns, never replaced: what the background threads sleep
 * by (their condition variables wait on CLOCK_MONOTONIC). */
uint64_t sa_os_monotonic_ns(void);
size_t sa_os_page_size(void);
bool sa_os_release_zeroes(void); /* released whole OS pages read back zero */
/* Test hook (internal, set before the heap is used): pretend the OS page is
 * this big (0: sysconf). */
SA_HIDDEN extern size_t sa_os_page_size_override;
/* Test hooks (internal): fail the next `n` maps (atomics, any thread); replace
 * the clock (set while no other thread allocates). */
SA_HIDDEN extern _Atomic int sa_os_fail_maps;
/* ... after letting this many maps through first. */
SA_HIDDEN extern _Atomic int sa_os_fail_maps_after;
SA_HIDDEN extern uint64_t (*sa_clock_hook)(void);

/* ---- Bootstrap, options, errors (alloc/init.c, alloc/options.c, alloc/report.c) */
struct sa_options {
    uint64_t scavenge_idle_ns;  /* SPANALLOC_SCAVENGE_IDLE, default 5 min */
    uint64_t memory_limit;      /* SPANALLOC_MEMORY_LIMIT, 0 = none */
    uint32_t idle_limit_pct;    /* SPANALLOC_IDLE_LIMIT, % of heap in use; 0 = off */
    uint64_t idle_delay_ns;     /* SPANALLOC_IDLE_DELAY: least idle age it releases */
    bool madvise_free;          /* SPANALLOC_MADVISE=free */
    bool scavenger_enabled;     /* SPANALLOC_SCAVENGER != off */
    bool percpu;                /* SPANALLOC_PERCPU != off: per-CPU caches */
    bool trace;                 /* SPANALLOC_TRACE=1 */
    int stats_at_exit;          /* SPANALLOC_STATS: -1 none, 0 text, 1 json */
    char stats_file[4096];      /* SPANALLOC_STATS_FILE, "" = none (%p: pid) */
    uint64_t stats_interval_ns; /* SPANALLOC_STATS_INTERVAL, default 10 s */
};
/* Written by the initialising thread before sa_init_state is 2 (and by
 * tests before they start threads); read with no lock after. */
extern struct sa_options sa_options;
/* A secure-execution process (AT_SECURE): options come from secure_getenv,
 * and nothing writes files or prints on an option's say-so. */
extern bool sa_secure_exec; /* written once, by the initialising thread */
extern bool sa_on_valgrind; /* set once at init: caches off, client requests on */
extern _Atomic int sa_init_state; /* 0 none, -pid running, 2 done */
/* Test hook (internal, set before threads): called by the thread that
 * initialises, first. */
SA_HIDDEN extern void (*sa_init_pause_hook)(void);
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
/* free() of a pointer that failed a check: says which, then aborts. */
SA_COLD __attribute__((noreturn)) void sa_report_bad_free(void *ptr, struct sa_span *s);

/* ---- Upward hooks (alloc/hooks.c)
 *
 * The tiers never name the parts above them.  Where a tier must wake one
 * (the heap grew: start the background threads, check the memory limit; a
 * free crossed the idle limit), it calls through this table, which the
 * lifecycle module (lifecycle/lifecycle.c) fills at start-up before anything
 * is allocated.  Written once, before the first allocation, by the thread
 * that initialises; read with no lock afterwards. */
struct sa_hooks {
    void (*heap_grew)(void);            /* no lock held; may allocate */
    void (*idle_excess)(uint64_t excess); /* no lock held */
};
extern struct sa_hooks sa_hooks;
/* The heap grew (no lock held): run the hook. */
void sa_hooks_heap_grew(void);
/* Every refill's tail (no lock held): in a forked child, the first one
 * restarts the background threads (sa_hooks_rearm, from fork's child
 * handler, asks for that). */
void sa_hooks_poke(void);
void sa_hooks_rearm(void);
static inline void sa_hooks_after_refill(bool grew)
{
    if (grew)
        sa_hooks_heap_grew();
    sa_hooks_poke();
}
/* A free left resident idle memory over the idle limit (no lock held): the
 * hook (the scavenger's) wakes its thread or releases a bounded amount on
 * the freeing thread.  With none registered (only before start-up, when
 * nothing is allocated yet) nothing is done: the next scavenge sees it. */
void sa_hooks_idle_excess(uint64_t excess);

/* The start-up order (lifecycle/lifecycle.c): sa_init_slow's one call up,
 * made by the thread that won the claim, before anything is allocated. */
void sa_lifecycle_start(void);
/* The tiers' own bootstrap, called by sa_lifecycle_start in its order. */
void sa_read_options(void);
void sa_alloc_bootstrap(void);

/* ---- Internal entry points shared by the C API and the libc names */
void *sa_malloc(size_t size);
void sa_free(void *ptr);
size_t sa_usable_size(const void *ptr);

#endif /* SPANALLOC_INTERNAL_H */
