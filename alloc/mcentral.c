/*
 * mcentral.c: the middle tier, one per size class, each with its own lock.
 *
 * An mcentral owns the spans of its class that still have free objects (the
 * partial list).  Thread caches trade objects with it in batches: fill takes
 * a batch out of partial spans (carving fresh objects when their free lists
 * run dry, asking the mheap for a new span when none is left), release puts
 * each object back into its span.  A span whose last object comes back is
 * returned to the mheap at once, so heap_inuse counts only spans that hold
 * objects.  Spans with no free object are on no list: the page map finds them
 * when an object comes back.
 *
 * Blocks that one CPU's cache flushes wait in the class's transfer array
 * (pointers only, up to SA_TRANSFER_BLOCKS of them and 128 KiB of blocks)
 * and go to the next cache that refills, without touching a span or the
 * blocks themselves: when one thread frees what another allocates, a move
 * costs a lock hold and a copy of pointers per chunk, and the refill reads
 * no block (the blocks keep the free mark they carried on the slab; malloc
 * checks it as it pops them, each load independent of the others, where a
 * linked batch made the refill chase one cache miss after another).
 * free_os_memory() puts them back into their spans.  Medium classes keep
 * none: their batch is one object of up to 256 KiB in a span of its own,
 * which goes straight back to the heap (kept batches of them cost peak RSS:
 * docs/benchmarks.md, "Design choices").
 */
#include <sched.h>
#include <string.h>

#include "internal.h"
#include "valgrind_hooks.h"

#define SA_TRANSFER_BLOCKS 1024
#define SA_TRANSFER_BYTES ((uint32_t)128 << 10)

/* One per size class; its fields are under its lock but for any that says
 * otherwise. */
struct mcentral {
    pthread_mutex_t lock;
    struct sa_span_list partial;
    uint32_t ntransfer;     /* blocks in transfer[] */
    uint32_t transfer_cap;  /* set once, at first use: 0 for medium classes */
    /* Blocks of this class in threads' hands between this lock and a cache
     * (see "Moves"): atomic, no lock; on this line, which a refill has just
     * taken for the lock anyway. */
    _Atomic uint32_t moving;
    uint64_t objects_out; /* blocks out of their spans (the spans' nalloc summed) */
    void *transfer[SA_TRANSFER_BLOCKS];
} __attribute__((aligned(64)));

/* Adaptive (glibc): a thread that finds a class lock held spins briefly
 * before it sleeps, as the heap lock does (alloc/lock.c).  Holds are a
 * batch's worth of list work; a plain mutex puts the waiter to sleep at
 * once, a context switch each way for a wait shorter than the switch. */
static struct mcentral centrals[SA_NUM_CLASSES] = {
    [0 ... SA_NUM_CLASSES - 1] = {.lock = PTHREAD_ADAPTIVE_MUTEX_INITIALIZER_NP},
};

static void init_locks(void)
{
    for (unsigned c = 0; c < SA_NUM_CLASSES; c++)
        centrals[c].lock = (pthread_mutex_t)PTHREAD_ADAPTIVE_MUTEX_INITIALIZER_NP;
}

/* A report aborts; a SIGABRT handler that allocates must find the class
 * lock free (it dies of the report's abort again instead of deadlocking). */
SA_COLD __attribute__((noreturn)) static void report_unlocking(struct mcentral *c, const char *what,
                                                            void *obj, const struct sa_span *s)
{
    pthread_mutex_unlock(&c->lock);
    sa_report(what, obj, s);
}

/* Lock held. */
static uint32_t transfer_room(struct mcentral *c, unsigned cls)
{
    if (SA_UNLIKELY(c->transfer_cap == 0) && cls < SA_NUM_SMALL_CLASSES) {
        uint32_t cap = SA_TRANSFER_BYTES / sa_class_size[cls];
        c->transfer_cap = cap < SA_TRANSFER_BLOCKS ? cap : SA_TRANSFER_BLOCKS;
    }
    return c->transfer_cap - c->ntransfer;
}

static bool span_has_free(const struct sa_span *s)
{
    return s->freelist != NULL || s->ncarved < s->nelems;
}

/* Take one free object out of a span with free objects.  Links popped from a
 * span's own list must point back into the span: anything else means a
 * use-after-free write corrupted it. */
static void *span_take(struct mcentral *c, struct sa_span *s)
{
    void *obj = s->freelist;
    if (obj != NULL) {
        SA_VG_OPEN_LINKS(obj);
        if (!sa_block_is_free(obj))
            report_unlocking(c, "corrupted free block (written after free)", obj, s);
        void *next = sa_decode_link(((uintptr_t *)obj)[0]);
        uintptr_t limit = s->base + (uintptr_t)s->nelems * s->elem_size;
        if (next != NULL && ((uintptr_t)next < s->base || (uintptr_t)next >= limit))
            report_unlocking(c, "corrupted free list link", obj, s);
        s->freelist = next;
    } else {
        obj = (void *)(s->base + (uintptr_t)s->ncarved * s->elem_size);
        s->ncarved++;
    }
    s->nalloc++;
    c->objects_out++;
    return obj;
}

/* A block that waited in the transfer array still carries its free mark:
 * a use-after-free write to it is caught here, for a block that goes
 * straight to a caller (the others are checked as malloc pops them). */
static void check_waiting(struct mcentral *c, void *obj)
{
    if (!sa_block_is_free(obj))
        report_unlocking(c, "corrupted free block (written after free)", obj,
                         sa_pagemap_lookup((uintptr_t)obj));
}

/* Up to want blocks out of the class's spans (lock held), each given to
 * put(): carved or popped from a span's free list, marked free. */
static uint32_t take_from_spans(struct mcentral *c, unsigned cls, uint32_t want, bool *grew,
                                void (*put)(void *obj, void *ctx), void *ctx)
{
    uint32_t got = 0;
    while (got < want) {
        struct sa_span *s = c->partial.first;
        if (s == NULL) {
            s = sa_mheap_alloc(sa_class_npages[cls], 1, cls, grew);
            if (s == NULL)
                break; /* out of memory: hand out what we have */
            sa_span_list_push(&c->partial, s);
        }
        while (got < want && span_has_free(s)) {
            void *obj = span_take(c, s);
            SA_VG_OPEN_LINKS(obj); /* a freshly carved object, or opened by span_take */
            put(obj, ctx);
            got++;
        }
        if (!span_has_free(s))
            sa_span_list_remove(&c->partial, s);
    }
    return got;
}

static void put_on_list(void *obj, void *ctx)
{
    void **list = ctx;
    sa_block_make_free(obj, *list);
    *list = obj;
}

uint32_t sa_mcentral_fill(unsigned cls, uint32_t want, void **head)
{
    struct mcentral *c = &centrals[cls];
    void *list = NULL;
    uint32_t got = 0;
    bool grew = false;
    pthread_mutex_lock(&c->lock);
    if (c->ntransfer > 0) {
        /* The newest blocks, linked so that the first of them leads. */
        uint32_t k = c->ntransfer < want ? c->ntransfer : want;
        for (uint32_t i = c->ntransfer; i-- > c->ntransfer - k;) {
            check_waiting(c, c->transfer[i]);
            put_on_list(c->transfer[i], &list);
        }
        c->ntransfer -= k;
        got = k;
    } else {
        got = take_from_spans(c, cls, want, &grew, put_on_list, &list);
    }
    pthread_mutex_unlock(&c->lock);
    /* Hooks run with no lock held: they may start a thread, which allocates. */
    sa_hooks_after_refill(grew);
    *head = list;
    return got;
}

struct array_out {
    void **blocks;
    uint32_t n;
};

static void put_in_array(void *obj, void *ctx)
{
    struct array_out *out = ctx;
    sa_block_make_free(obj, NULL);
    out->blocks[out->n++] = obj;
}

uint32_t sa_mcentral_fill_array(unsigned cls, void **blocks, uint32_t want)
{
    struct mcentral *c = &centrals[cls];
    uint32_t got;
    bool grew = false;
    pthread_mutex_lock(&c->lock);
    if (c->ntransfer > 0) {
        got = c->ntransfer < want ? c->ntransfer : want;
        c->ntransfer -= got;
        memcpy(blocks, &c->transfer[c->ntransfer], got * sizeof(void *));
        check_waiting(c, blocks[0]); /* the refill's caller gets it unchecked */
    } else {
        struct array_out out = {blocks, 0};
        got = take_from_spans(c, cls, want, &grew, put_in_array, &out);
    }
    pthread_mutex_unlock(&c->lock);
    sa_hooks_after_refill(grew);
    return got;
}

/* Put one object back into its span; returns the span if it became empty. */
static struct sa_span *span_put(struct mcentral *c, void *obj)
{
    struct sa_span *s = sa_pagemap_lookup((uintptr_t)obj);
    bool was_full = !span_has_free(s);
    sa_block_make_free(obj, s->freelist);
    SA_VG_CLOSE_LINKS(obj);
    s->freelist = obj;
    s->nalloc--;
    c->objects_out--;
    if (s->nalloc == 0) {
        if (!was_full)
            sa_span_list_remove(&c->partial, s);
        return s;
    }
    if (was_full)
        sa_span_list_push(&c->partial, s);
    return NULL;
}

/* Empty spans on their way from a class (its lock dropped) to the heap are
 * in no structure a forked child could find.  A thread carrying such a
 * chain counts itself here, under the class lock; fork_prepare, once it
 * holds every class lock (no new chain can start), waits until the count is
 * 0, before it takes the heap lock the carriers need. */
static _Atomic unsigned chains_out; /* raised under the class lock, lowered with none */
static __thread bool carrying_chain; /* the thread's own: fork from a signal handler in it */
_Atomic int sa_mcentral_fork_waiting;  /* test hook: prepare is waiting */
void (*sa_mcentral_chain_hook)(void); /* test hook (set before threads): between the two holds */

/* Put a list of free blocks (as the caches hold them) back into their
 * spans, class lock held; returns the spans that became empty, chained
 * through their list link (they are on no list). */
static struct sa_span *release_locked(struct mcentral *c, void *head)
{
    struct sa_span *empty = NULL;
    while (head != NULL) {
        void *obj = head;
        SA_VG_OPEN_LINKS(obj);
        head = sa_decode_link(((uintptr_t *)obj)[0]);
        struct sa_span *s = span_put(c, obj);
        if (s != NULL) {
            s->next = empty;
            empty = s;
        }
    }
    return empty;
}

/* Drop the class lock and hand the empty spans to the heap, counted as a
 * chain in flight (see chains_out) while they are in neither. */
static void unlock_and_carry(struct mcentral *c, struct sa_span *empty)
{
    if (empty == NULL) {
        pthread_mutex_unlock(&c->lock);
        return;
    }
    atomic_fetch_add_explicit(&chains_out, 1, memory_order_relaxed);
    carrying_chain = true;
    pthread_mutex_unlock(&c->lock);
    if (SA_UNLIKELY(sa_mcentral_chain_hook != NULL))
        sa_mcentral_chain_hook();
    while (empty != NULL) {
        struct sa_span *s = empty;
        empty = s->next;
        s->next = NULL;
        sa_mheap_free(s);
    }
    carrying_chain = false;
    atomic_fetch_sub_explicit(&chains_out, 1, memory_order_release);
}

/* Release a list of free blocks to their spans.  Empty spans go back to the
 * mheap after the class lock is dropped. */
void sa_mcentral_release(unsigned cls, void *head)
{
    struct mcentral *c = &centrals[cls];
    pthread_mutex_lock(&c->lock);
    unlock_and_carry(c, release_locked(c, head));
}

/* A batch is parked or put back in the same lock hold: it is never in the
 * caller's hands alone, where a fork would lose it.  The list's first
 * block goes in first (the next fill hands the same list back). */
void sa_mcentral_release_batch(unsigned cls, void *head, uint32_t count)
{
    (void)count;
    struct mcentral *c = &centrals[cls];
    pthread_mutex_lock(&c->lock);
    for (uint32_t room = transfer_room(c, cls); head != NULL && room > 0; room--) {
        void *obj = head;
        head = sa_decode_link(((uintptr_t *)obj)[0]);
        c->transfer[c->ntransfer++] = obj;
    }
    unlock_and_carry(c, release_locked(c, head));
}

void sa_mcentral_release_array(unsigned cls, void *const *blocks, uint32_t n)
{
    struct mcentral *c = &centrals[cls];
    pthread_mutex_lock(&c->lock);
    uint32_t room = transfer_room(c, cls);
    uint32_t k = n < room ? n : room;
    memcpy(&c->transfer[c->ntransfer], blocks, k * sizeof(void *));
    c->ntransfer += k;
    struct sa_span *empty = NULL;
    for (uint32_t i = k; i < n; i++) {
        check_waiting(c, blocks[i]); /* span_put rewrites the mark */
        struct sa_span *s = span_put(c, blocks[i]);
        if (s != NULL) {
            s->next = empty;
            empty = s;
        }
    }
    unlock_and_carry(c, empty);
}

/* The waiting blocks go back into their spans in the hold that takes them. */
void sa_mcentral_drain_transfer(void)
{
    for (unsigned cls = 1; cls < SA_NUM_CLASSES; cls++) {
        struct mcentral *c = &centrals[cls];
        pthread_mutex_lock(&c->lock);
        struct sa_span *empty = NULL;
        while (c->ntransfer > 0) {
            void *obj = c->transfer[--c->ntransfer];
            check_waiting(c, obj); /* span_put rewrites the mark */
            struct sa_span *s = span_put(c, obj);
            if (s != NULL) {
                s->next = empty;
                empty = s;
            }
        }
        unlock_and_carry(c, empty);
    }
}

/* ---- Moves: blocks between a class and a cache.
 *
 * A refill holds its batch from the moment fill drops the class lock until
 * the last block is on a slab (or back here); a flush holds the blocks it
 * popped until release takes the lock.  In neither window can a forked
 * child find them.  So each such window is a move, counted in its class's
 * `moving`, and fork waits for every move to end before it takes any lock
 * (fork_gate): a mover needs the class lock and the heap lock to finish.
 * New moves do not start meanwhile: a mover that sees the gate closed
 * steps back and waits for fork to return, before it holds any block.
 * Dekker's pattern (each side writes its own word, then reads the other's,
 * both seq_cst): either the mover sees the gate closed, or the gate sees
 * the mover's count and waits for it.
 *
 * A mover that cannot wait (it holds the drain lock, which fork takes next,
 * or it is inside another move of its own: a hook starting a thread, a
 * signal handler) goes through: fork waits for it, and it needs no lock
 * fork holds.  A thread that forks from inside its own move (a signal
 * handler) does not wait for itself; what it held is lost to the child.
 * The cost, per batch: two atomic adds on the class's own line and a load
 * of the gate; the fast path pays nothing. */
static _Atomic unsigned gate_closed;          /* forks in their prepare handler */
static __thread struct sa_move *open_moves;  /* this thread's, innermost first */
void (*sa_mcentral_move_hook)(unsigned cls); /* test hook: blocks in hand */

void sa_mcentral_move_begin(struct sa_move *m, unsigned cls, bool may_wait)
{
    _Atomic uint32_t *moving = &centrals[cls].moving;
    may_wait = may_wait && open_moves == NULL;
    for (;;) {
        atomic_fetch_add_explicit(moving, 1, memory_order_seq_cst);
        if (SA_LIKELY(atomic_load_explicit(&gate_closed, memory_order_seq_cst) == 0) ||
            !may_wait)
            break;
        atomic_fetch_sub_explicit(moving, 1, memory_order_release);
        while (atomic_load_explicit(&gate_closed, memory_order_acquire) != 0)
            sched_yield(); /* fork is copying us: it returns soon */
    }
    m->cls = cls;
    m->outer = open_moves;
    open_moves = m;
}

void sa_mcentral_move_end(struct sa_move *m)
{
    open_moves = m->outer;
    /* Release: the child of a fork that saw the count drop sees every
     * push and release of the move. */
    atomic_fetch_sub_explicit(&centrals[m->cls].moving, 1, memory_order_release);
}

static unsigned own_moves(void)
{
    unsigned n = 0;
    for (const struct sa_move *m = open_moves; m != NULL; m = m->outer)
        n++;
    return n;
}

static unsigned moves_open(void)
{
    unsigned n = 0;
    for (unsigned c = 1; c < SA_NUM_CLASSES; c++)
        n += atomic_load_explicit(&centrals[c].moving, memory_order_seq_cst);
    return n;
}

void sa_mcentral_fork_gate(void)
{
    atomic_fetch_add_explicit(&gate_closed, 1, memory_order_seq_cst);
    unsigned mine = own_moves();
    if (moves_open() == mine)
        return;
    atomic_store(&sa_mcentral_fork_waiting, 1);
    while (moves_open() != mine)
        sched_yield(); /* each mover needs only locks no fork holds yet */
    atomic_store(&sa_mcentral_fork_waiting, 0);
}

uint64_t sa_mcentral_objects_out(unsigned cls)
{
    struct mcentral *c = &centrals[cls];
    pthread_mutex_lock(&c->lock);
    uint64_t n = c->objects_out;
    pthread_mutex_unlock(&c->lock);
    return n;
}

void sa_mcentral_fork_prepare(void)
{
    for (unsigned c = 1; c < SA_NUM_CLASSES; c++)
        pthread_mutex_lock(&centrals[c].lock);
    if (atomic_load_explicit(&chains_out, memory_order_acquire) == 0 || carrying_chain)
        return;
    atomic_store(&sa_mcentral_fork_waiting, 1);
    while (atomic_load_explicit(&chains_out, memory_order_acquire) != 0)
        sched_yield(); /* a carrier needs only the heap lock: it finishes */
    atomic_store(&sa_mcentral_fork_waiting, 0);
}

void sa_mcentral_fork_parent(void)
{
    for (unsigned c = SA_NUM_CLASSES; c-- > 1;)
        pthread_mutex_unlock(&centrals[c].lock);
    atomic_fetch_sub_explicit(&gate_closed, 1, memory_order_release);
}

/* Only the forking thread lives on: its own moves are the only ones open
 * (a mover stepping back may have been copied with its count raised). */
void sa_mcentral_fork_child(void)
{
    init_locks();
    for (unsigned c = 1; c < SA_NUM_CLASSES; c++)
        atomic_store_explicit(&centrals[c].moving, 0, memory_order_relaxed);
    for (const struct sa_move *m = open_moves; m != NULL; m = m->outer)
        atomic_fetch_add_explicit(&centrals[m->cls].moving, 1, memory_order_relaxed);
    atomic_store_explicit(&gate_closed, 0, memory_order_release);
}

uint64_t sa_mcentral_sys_bytes(void)
{
    return sizeof(centrals);
}
