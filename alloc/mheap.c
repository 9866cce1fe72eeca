/*
 * mheap.c: the page heap.  It owns every page spanalloc maps, carves runs of
 * pages into spans for the mcentrals and for large objects, coalesces free
 * neighbours, and keeps idle spans for reuse, each stamped with the time it
 * became idle so the scavenger can release the old ones.
 *
 * Free spans are indexed twice:
 *   - by size (pagealloc.c, a search of constant cost), in two indexes:
 *     "dirty" spans (some pages still resident) are preferred over "clean"
 *     ones (every page released), so reuse does not fault memory back in
 *     while resident idle memory is at hand;
 *   - by age, dirty spans only, oldest first, for the scavenger.
 *
 * Free and large spans map only their first and last page in the page map
 * (small spans map every page: free() looks up any object's page), so the
 * work per large malloc and free does not grow with the block: a pointer
 * into the middle of a large block finds no span, and free() reports it.
 *
 * Which idle pages are released is recorded exactly, a bit per page, in the
 * page map's leaves; fresh memory from the OS counts as released (it is not
 * resident until touched), so heap_sys - heap_released tracks the heap's
 * share of RSS.  Everything here runs under one lock, the heap lock; the
 * scavenger drops it while the kernel releases pages.
 *
 * Beside it, under the same lock: the large-span cache (largecache.c, which
 * calls the locked primitives of mheap_internal.h).  The idle limit's excess
 * is measured here, on every free; when and how much of it is released is
 * the policy's (scavenger/release_policy.c), reached through the hook table.
 */
#include <string.h>

#include "internal.h"
#include "lock.h"
#include "mheap_internal.h"
#include "pagealloc.h"

#define SA_SCAVENGE_CHUNK 512   /* pages released per syscall: 4 MiB */

enum { LIST_NONE = 0, LIST_DIRTY = 1, LIST_CLEAN = 2 };

/* The heap lock guards everything below and in every free span's record
 * (struct sa_span's free-span fields), the page map's bitmaps and the large
 * cache; the counters are read out under it (sa_mheap_read). */
static struct sa_lock heap_lock = SA_LOCK_INITIALIZER;
static struct sa_free_index dirty_set, clean_set; /* heap lock */
static struct sa_span *age_first, *age_last;      /* heap lock */
struct sa_heap_counters sa_heap_counters_locked;  /* heap lock (span.c writes its two) */
#define counters sa_heap_counters_locked

void sa_mheap_lock(void)
{
    sa_lock_acquire(&heap_lock);
}

void sa_mheap_unlock(void)
{
    sa_lock_release(&heap_lock);
}

/* ---- Spans out for release
 *
 * The scavenger releases a detached span without the heap lock.  While it
 * is out (state SCAVENGING) it is also on this list, linked through its age
 * links (it is on no age list then), so that a fork in that window does not
 * lose it: the child, where the releasing thread does not exist, puts it
 * back into the free lists.  Heap lock. */
static struct sa_span *scavenging;

static void scavenging_add(struct sa_span *s)
{
    SA_DLIST_PUSH(scavenging, s, age_next, age_prev);
}

static void scavenging_remove(struct sa_span *s)
{
    SA_DLIST_REMOVE(scavenging, s, age_next, age_prev);
    s->age_next = s->age_prev = NULL;
}

static void coalesce_and_insert(struct sa_span *s);

void sa_mheap_fork_child(void)
{
    sa_lock_reset(&heap_lock);
    while (scavenging != NULL) { /* the bitmap still says what was released */
        struct sa_span *s = scavenging;
        scavenging_remove(s);
        s->state = SA_SPAN_FREE;
        coalesce_and_insert(s);
    }
}

static uintptr_t span_end(const struct sa_span *s)
{
    return s->base + ((uintptr_t)s->npages << SA_PAGE_SHIFT);
}

static bool span_is_dirty(const struct sa_span *s)
{
    return s->released_pages < s->npages;
}

/* ---- The idle stamps' clock
 *
 * Reading the clock costs more than the rest of a large malloc+free (on this
 * kind of VM, a system call).  Idle stamps need only coarse time: the clock
 * is read once per SA_CLOCK_REUSE stamps and at each scavenger wake (at
 * least once a second while it runs), and the stamps in between reuse the
 * last reading, so a span may look older than it is by that much.  A
 * replaced clock (tests) is read every time: tests move it between calls. */
#define SA_CLOCK_REUSE 16

static _Atomic uint64_t coarse_ns; /* written under the heap lock or by the tick */
static uint32_t coarse_uses;       /* heap lock */

/* Move the coarse clock forward to now, never back: the scavenger's tick
 * and a heap operation may read the clock in one order and store in the
 * other. */
static void coarse_advance(uint64_t now)
{
    uint64_t old = atomic_load_explicit(&coarse_ns, memory_order_relaxed);
    while (old < now && !atomic_compare_exchange_weak_explicit(&coarse_ns, &old, now,
                                                               memory_order_relaxed,
                                                               memory_order_relaxed))
        ;
}

uint64_t sa_mheap_now_locked(void)
{
    if (SA_UNLIKELY(sa_clock_hook != NULL)) /* tests: exact, and free to go back */
        return sa_os_now_ns();
    if (coarse_uses == 0) {
        coarse_advance(sa_os_now_ns());
        coarse_uses = SA_CLOCK_REUSE;
    }
    coarse_uses--;
    return atomic_load_explicit(&coarse_ns, memory_order_relaxed);
}

void sa_mheap_clock_tick(void)
{
    coarse_advance(sa_os_now_ns());
}

/* ---- The age list (dirty spans, oldest first)
 *
 * Most spans enter at an end: a freed span is the newest; the rest of the
 * oldest span, after the scavenger took a chunk of it, is still the oldest.
 * The place is searched from both ends at once, at most AGE_WALK steps from
 * each; a span whose place lies deeper (a cached span evicted long after it
 * was freed) takes the stamp of the younger neighbour where the walk stopped:
 * it looks younger than it is, never older, so the age rules may release it
 * late but never early, and the heap lock's hold stays bounded. */
#define AGE_WALK 8

/* The span after which s goes (NULL: at the head). */
static struct sa_span *age_place(struct sa_span *s)
{
    struct sa_span *after = age_last, *before = age_first;
    for (unsigned i = 0;; i++) {
        if (after == NULL || after->idle_since_ns <= s->idle_since_ns)
            return after;
        if (before != NULL && before->idle_since_ns > s->idle_since_ns)
            return before->age_prev;
        if (i == AGE_WALK) {
            s->idle_since_ns = after->idle_since_ns;
            return after;
        }
        after = after->age_prev;
        before = before != NULL ? before->age_next : NULL;
    }
}

static void age_insert(struct sa_span *s)
{
    struct sa_span *after = age_place(s);
    s->age_prev = after;
    s->age_next = after ? after->age_next : age_first;
    if (s->age_next)
        s->age_next->age_prev = s;
    else
        age_last = s;
    if (after)
        after->age_next = s;
    else
        age_first = s;
}

static void age_remove(struct sa_span *s)
{
    if (s->age_prev)
        s->age_prev->age_next = s->age_next;
    else
        age_first = s->age_next;
    if (s->age_next)
        s->age_next->age_prev = s->age_prev;
    else
        age_last = s->age_prev;
    s->age_next = s->age_prev = NULL;
}

/* ---- Free spans: insert, remove, coalesce */

static void free_lists_insert(struct sa_span *s)
{
    if (span_is_dirty(s)) {
        sa_free_index_insert(s->released_pages * 2 < s->npages ? &dirty_set : &clean_set, s);
        age_insert(s);
        s->on_list = LIST_DIRTY;
    } else {
        sa_free_index_insert(&clean_set, s);
        s->on_list = LIST_CLEAN;
    }
}

static void free_lists_remove(struct sa_span *s)
{
    if (s->on_list == LIST_DIRTY) {
        sa_free_index_remove(s->released_pages * 2 < s->npages ? &dirty_set : &clean_set, s);
        age_remove(s);
    } else if (s->on_list == LIST_CLEAN) {
        sa_free_index_remove(&clean_set, s);
    }
    s->on_list = LIST_NONE;
}

/* A free or large span maps its first and last page only. */
static void map_edges(struct sa_span *s)
{
    sa_pagemap_set_page(s->base, s);
    sa_pagemap_set_page(span_end(s) - SA_PAGE_SIZE, s);
}

/* The idle time of two merged spans: the newer of their resident parts, so a
 * merge never makes recently freed memory look old. */
static uint64_t merged_idle_since(const struct sa_span *a, const struct sa_span *b)
{
    if (span_is_dirty(a) != span_is_dirty(b))
        return span_is_dirty(a) ? a->idle_since_ns : b->idle_since_ns;
    return a->idle_since_ns > b->idle_since_ns ? a->idle_since_ns : b->idle_since_ns;
}

static struct sa_span *free_neighbour(uintptr_t addr)
{
    struct sa_span *n = sa_pagemap_lookup(addr);
    return (n != NULL && n->state == SA_SPAN_FREE) ? n : NULL;
}

/* Absorb `victim` (a free span adjacent to s) into s. */
static void absorb(struct sa_span *s, struct sa_span *victim)
{
    free_lists_remove(victim);
    s->idle_since_ns = merged_idle_since(s, victim);
    if (victim->base < s->base) {
        sa_pagemap_set_page(span_end(victim) - SA_PAGE_SIZE, NULL);
        sa_pagemap_set_page(s->base, NULL);
        s->base = victim->base;
    } else {
        sa_pagemap_set_page(span_end(s) - SA_PAGE_SIZE, NULL);
        sa_pagemap_set_page(victim->base, NULL);
    }
    s->npages += victim->npages;
    s->released_pages += victim->released_pages;
    sa_span_record_free(victim);
}

/* Insert a free span (state FREE, released_pages and idle time set),
 * merging it with free neighbours first. */
static void coalesce_and_insert(struct sa_span *s)
{
    struct sa_span *left = s->base ? free_neighbour(s->base - SA_PAGE_SIZE) : NULL;
    if (left != NULL && span_end(left) == s->base)
        absorb(s, left);
    struct sa_span *right = free_neighbour(span_end(s));
    if (right != NULL && right->base == span_end(s))
        absorb(s, right);
    map_edges(s);
    free_lists_insert(s);
}

/* Released pages among npages of free span s starting at base: no bitmap
 * walk when s is all resident or all released (the common cases). */
static uint32_t released_in(const struct sa_span *s, uintptr_t base, size_t npages)
{
    if (s->released_pages == 0)
        return 0;
    if (s->released_pages == s->npages)
        return (uint32_t)npages;
    return (uint32_t)sa_pagemap_count_released(base, npages);
}

/* Split the first `npages` off a detached free span; the rest becomes a new
 * free span inserted into the lists.  Returns false if no record was free. */
static bool split_free_tail_counted(struct sa_span *s, size_t npages, uint32_t kept_released);

static bool split_free_tail(struct sa_span *s, size_t npages)
{
    if (s->npages == npages)
        return true;
    return split_free_tail_counted(s, npages, released_in(s, s->base, npages));
}

/* split_free_tail, the released pages among the first npages known. */
static bool split_free_tail_counted(struct sa_span *s, size_t npages, uint32_t kept_released)
{
    if (s->npages == npages)
        return true;
    struct sa_span *rest = sa_span_record_new();
    if (rest == NULL)
        return false;
    rest->base = s->base + (npages << SA_PAGE_SHIFT);
    rest->npages = s->npages - (uint32_t)npages;
    rest->state = SA_SPAN_FREE;
    rest->idle_since_ns = s->idle_since_ns;
    /* The piece kept (usually the smaller) is counted, not the rest: a 64 MiB
     * remainder would otherwise be counted on every split. */
    rest->released_pages = s->released_pages - kept_released;
    s->npages = (uint32_t)npages;
    s->released_pages = kept_released;
    map_edges(rest);
    free_lists_insert(rest);
    return true;
}

/* Keep the last npages of a detached free span (tail_released of them are
 * released); the lead goes back to the free lists. */
static bool keep_tail(struct sa_span *s, size_t npages, uint32_t tail_released)
{
    struct sa_span *head = sa_span_record_new();
    if (head == NULL)
        return false;
    *head = *s;
    head->npages = s->npages - (uint32_t)npages;
    head->released_pages = s->released_pages - tail_released;
    s->base += (uintptr_t)head->npages << SA_PAGE_SHIFT;
    s->npages = (uint32_t)npages;
    s->released_pages = tail_released;
    map_edges(head);
    free_lists_insert(head);
    return true;
}

/* Carve npages out of a detached free span, from whichever end has more
 * resident pages: reusing resident memory keeps RSS down, where taking the
 * released end would fault fresh pages in and leave resident ones idle. */
static bool carve(struct sa_span *s, size_t npages)
{
    if (s->npages > npages && s->released_pages > 0 && s->released_pages < s->npages) {
        uint32_t head = (uint32_t)sa_pagemap_count_released(s->base, npages);
        if (head == 0) /* all resident: no end does better, and no tail to count */
            return split_free_tail_counted(s, npages, 0);
        uint32_t tail = (uint32_t)sa_pagemap_count_released(
            span_end(s) - (npages << SA_PAGE_SHIFT), npages);
        if (tail < head)
            return keep_tail(s, npages, tail);
        return split_free_tail_counted(s, npages, head);
    }
    return split_free_tail(s, npages);
}

/* ---- Growth */

static bool grow(size_t npages)
{
    size_t bytes = npages << SA_PAGE_SHIFT;
    if (npages > (SIZE_MAX >> SA_PAGE_SHIFT) / 2)
        return false;
    size_t chunk = bytes < SA_HEAP_GROW_MIN ? SA_HEAP_GROW_MIN : bytes;
    void *mem = sa_os_map(chunk, SA_PAGE_SIZE);
    if (mem == NULL && chunk > bytes) {
        chunk = bytes; /* under an address-space limit: take just enough */
        mem = sa_os_map(chunk, SA_PAGE_SIZE);
    }
    if (mem == NULL)
        return false;
    struct sa_span *s = sa_span_record_new();
    if (s == NULL || !sa_pagemap_ensure((uintptr_t)mem, chunk)) {
        if (s != NULL)
            sa_span_record_free(s);
        sa_os_unmap(mem, chunk);
        return false;
    }
    s->base = (uintptr_t)mem;
    s->npages = (uint32_t)(chunk >> SA_PAGE_SHIFT);
    s->state = SA_SPAN_FREE;
    s->released_pages = s->npages; /* untouched memory is not resident */
    sa_pagemap_note_fresh(s->base, s->npages);
    counters.sys_bytes += chunk;
    counters.released_pages += s->npages;
    coalesce_and_insert(s);
    return true;
}

/* ---- Allocation */

static struct sa_span *find_free(size_t npages)
{
    struct sa_span *s = sa_free_index_find(&dirty_set, npages);
    return s != NULL ? s : sa_free_index_find(&clean_set, npages);
}

/* Give the lead pages before an aligned start back to the free lists. */
static bool trim_lead(struct sa_span *s, size_t lead)
{
    if (lead == 0)
        return true;
    struct sa_span *head = sa_span_record_new();
    if (head == NULL)
        return false;
    uint32_t lead_released = released_in(s, s->base, lead);
    *head = *s;
    head->npages = (uint32_t)lead;
    head->released_pages = lead_released;
    s->base += lead << SA_PAGE_SHIFT;
    s->npages -= (uint32_t)lead;
    s->released_pages -= head->released_pages;
    map_edges(head);
    free_lists_insert(head);
    return true;
}

/* A detached free span is about to be used: its released pages count as
 * taken back.  needzero says whether any page may hold old data. */
static void take_released(struct sa_span *s)
{
    /* Exact: every split and merge keeps released_pages equal to the bitmap's
     * count (checked in unoptimised builds, such as the ASan test build). */
    uint32_t released = s->released_pages;
#ifndef __OPTIMIZE__
    if (released != sa_pagemap_count_released(s->base, s->npages))
        sa_report("heap accounting: released_pages disagrees with the bitmap",
                  (void *)s->base, s);
#endif
    /* Zero only where the kernel guarantees it (see sa_pagemap_note_released). */
    bool zero = released == s->npages && sa_pagemap_all_zero(s->base, s->npages);
    if (released) {
        sa_pagemap_mark_released(s->base, s->npages, false);
        counters.released_pages -= released;
        counters.reacquired_total += (uint64_t)released << SA_PAGE_SHIFT;
    }
    s->needzero = !zero;
    s->released_pages = 0;
}

static struct sa_span *alloc_locked(size_t npages, size_t align_pages, bool *grew)
{
    size_t want = npages + (align_pages > 1 ? align_pages - 1 : 0);
    if (want < npages || want > UINT32_MAX)
        return NULL;
    struct sa_span *s = find_free(want);
    if (s == NULL) {
        if (!grow(want))
            return NULL;
        *grew = true;
        s = find_free(want);
    }
    free_lists_remove(s);
    bool carved;
    if (align_pages > 1) {
        uintptr_t align = (uintptr_t)align_pages << SA_PAGE_SHIFT;
        size_t lead = (((s->base + align - 1) & ~(align - 1)) - s->base) >> SA_PAGE_SHIFT;
        carved = trim_lead(s, lead) && split_free_tail(s, npages);
    } else {
        carved = carve(s, npages);
    }
    if (!carved) { /* no record left: back whole, merged with a lead trimmed off */
        coalesce_and_insert(s);
        return NULL;
    }
    take_released(s);
    counters.inuse_pages += s->npages;
    return s;
}

/* free()'s inline check for a small span (see struct sa_span). */
static void set_free_check(struct sa_span *s)
{
    uint64_t magic = UINT64_MAX / s->elem_size + 1;
    uint64_t e = magic * s->elem_size; /* mod 2^64: the rounding excess */
    uint64_t tail = ((uint64_t)s->npages << SA_PAGE_SHIFT) - (uint64_t)s->nelems * s->elem_size;
    s->free_magic = magic;
    if (e != 0)
        s->free_limit = (uint64_t)s->nelems * e < magic ? (uint64_t)s->nelems * e : magic;
    else /* a power of two: an object-aligned tail would pass, so none may exist */
        s->free_limit = tail == 0 ? magic : 0;
}

/* Publish an allocated span.  A small span maps every page (free() finds an
 * object's span from its own page); a large one its first and last page,
 * like a free span, so the work does not grow with the block. */
static void publish(struct sa_span *s, unsigned cls)
{
    s->list_off = (uint16_t)(cls << SA_LIST_SHIFT);
    if (cls != 0) {
        s->state = SA_SPAN_SMALL;
        s->elem_size = sa_class_size[cls];
        s->div_magic = sa_class_magic[cls];
        s->nelems = (uint32_t)((s->npages << SA_PAGE_SHIFT) / s->elem_size);
        set_free_check(s);
        sa_pagemap_set(s->base, s->npages, s);
    } else {
        s->state = SA_SPAN_LARGE;
        s->elem_size = (uint32_t)(s->npages << SA_PAGE_SHIFT);
        if ((size_t)s->npages << SA_PAGE_SHIFT > UINT32_MAX)
            s->elem_size = 0; /* huge: usable size comes from npages */
        s->div_magic = 0;
        s->nelems = 0; /* only small spans have objects free() checks inline */
        s->free_magic = s->free_limit = 0;
        map_edges(s);
    }
    s->nalloc = s->ncarved = 0;
    s->freelist = NULL;
}

static void set_large_size(struct sa_span *s, size_t npages)
{
    s->npages = (uint32_t)npages;
    s->elem_size = npages << SA_PAGE_SHIFT > UINT32_MAX ? 0 : (uint32_t)(npages << SA_PAGE_SHIFT);
}

void sa_mheap_count_large_malloc(size_t npages)
{
    counters.large_mallocs++;
    counters.large_alloc_bytes += (uint64_t)npages << SA_PAGE_SHIFT;
    counters.large_total_alloc += (uint64_t)npages << SA_PAGE_SHIFT;
}

void sa_mheap_count_large_as_locked(const struct sa_span *s, size_t counted)
{
    uint64_t pages = (uint64_t)s->npages << SA_PAGE_SHIFT;
    if (counted == 0 || counted >= pages)
        return;
    counters.large_alloc_bytes -= pages - counted;
    counters.large_total_alloc -= pages - counted;
}

void sa_mheap_recount_large(const struct sa_span *s, size_t counted)
{
    uint64_t pages = (uint64_t)s->npages << SA_PAGE_SHIFT;
    if (counted == 0 || counted >= pages)
        return;
    sa_lock_acquire(&heap_lock);
    counters.large_alloc_bytes += pages - counted;
    counters.large_total_alloc += pages - counted;
    sa_lock_release(&heap_lock);
}

struct sa_span *sa_mheap_alloc_locked(size_t npages, size_t align_pages, unsigned cls, bool *grew)
{
    struct sa_span *s = alloc_locked(npages, align_pages, grew);
    if (s != NULL) {
        publish(s, cls);
        if (cls == 0)
            sa_mheap_count_large_malloc(s->npages);
    }
    return s;
}

struct sa_span *sa_mheap_alloc(size_t npages, size_t align_pages, unsigned cls, bool *grew)
{
    sa_lock_acquire(&heap_lock);
    struct sa_span *s = sa_mheap_alloc_locked(npages, align_pages, cls, grew);
    sa_lock_release(&heap_lock);
    return s;
}

bool sa_mheap_has_resident_fit_locked(size_t npages)
{
    return sa_free_index_find(&dirty_set, npages) != NULL;
}

/* Grow a large span in place to npages by taking the start of the free span
 * that follows it, when that one is big enough (realloc's growth without a
 * copy).  The pages taken are accounted as an allocation would account them.
 * Returns false, changing nothing, when the neighbour is not free, too small,
 * or no span record is left to split it. */
bool sa_mheap_grow_large(struct sa_span *s, size_t npages)
{
    if (npages > UINT32_MAX)
        return false;
    sa_lock_acquire(&heap_lock);
    bool grown = false;
    size_t extra = npages > s->npages ? npages - s->npages : 0;
    struct sa_span *next = s->state == SA_SPAN_LARGE && extra > 0 ? free_neighbour(span_end(s)) : NULL;
    /* Only into resident pages: taking released ones would fault fresh
     * memory in while resident idle spans elsewhere stay unused (peak RSS,
     * docs/benchmarks.md, "Design choices"). */
    if (next != NULL && next->base == span_end(s) && next->npages >= extra &&
        released_in(next, next->base, extra) == 0) {
        free_lists_remove(next);
        if (split_free_tail(next, extra)) {
            take_released(next);
            counters.inuse_pages += extra;
            counters.large_alloc_bytes += (uint64_t)extra << SA_PAGE_SHIFT;
            counters.large_total_alloc += (uint64_t)extra << SA_PAGE_SHIFT;
            /* The old last page and the neighbour's first become interior. */
            if (s->npages > 1)
                sa_pagemap_set_page(span_end(s) - SA_PAGE_SIZE, NULL);
            sa_pagemap_set_page(next->base, NULL);
            set_large_size(s, npages);
            map_edges(s);
            sa_span_record_free(next);
            grown = true;
        } else {
            map_edges(next);
            free_lists_insert(next);
        }
    }
    sa_lock_release(&heap_lock);
    return grown;
}

/* ---- Freeing */

/* Return span s to the free structures, idle since idle_since (ns). */
void sa_mheap_free_locked_since(struct sa_span *s, uint64_t idle_since)
{
    counters.inuse_pages -= s->npages;
    if (s->state == SA_SPAN_SMALL && s->npages > 2) /* large spans map only their edges */
        sa_pagemap_set(s->base + SA_PAGE_SIZE, s->npages - 2, NULL);
    s->state = SA_SPAN_FREE;
    s->list_off = 0;
    s->nelems = 0; /* a pointer into it fails free()'s inline index check */
    s->free_limit = 0;
    s->freelist = NULL;
    s->idle_since_ns = idle_since;
    s->released_pages = 0;
    coalesce_and_insert(s);
}

void sa_mheap_free_locked(struct sa_span *s)
{
    sa_mheap_free_locked_since(s, sa_mheap_now_locked());
}

/* SPANALLOC_IDLE_LIMIT: resident idle memory is kept at most pct% of the
 * heap in use (never less than SA_IDLE_LIMIT_FLOOR).  Past the limit, the
 * oldest idle spans (those idle for SPANALLOC_IDLE_DELAY) are released down
 * to half of it, so a heap hovering at the limit does not pay a syscall on
 * every free.  Heap lock held. */
#define SA_IDLE_LIMIT_FLOOR_PAGES 512 /* 4 MiB */

uint64_t sa_mheap_idle_excess_locked(void)
{
    uint32_t pct = sa_options.idle_limit_pct;
    if (pct == 0)
        return 0;
    uint64_t sys_pages = counters.sys_bytes >> SA_PAGE_SHIFT;
    uint64_t resident_idle = sys_pages - counters.inuse_pages - counters.released_pages;
    uint64_t limit = counters.inuse_pages * pct / 100;
    if (limit < SA_IDLE_LIMIT_FLOOR_PAGES)
        limit = SA_IDLE_LIMIT_FLOOR_PAGES;
    if (resident_idle <= limit)
        return 0;
    return (resident_idle - limit / 2) << SA_PAGE_SHIFT;
}

uint64_t sa_mheap_idle_excess(void)
{
    sa_lock_acquire(&heap_lock);
    uint64_t excess = sa_mheap_idle_excess_locked();
    sa_lock_release(&heap_lock);
    return excess;
}

/* The release policy's view (scavenger/release_policy.c), read under one
 * hold of the heap lock. */
bool sa_mheap_oldest_idle(uint64_t *excess, uint64_t *idle_since_ns)
{
    sa_lock_acquire(&heap_lock);
    if (excess != NULL)
        *excess = sa_mheap_idle_excess_locked();
    bool any = age_first != NULL;
    if (any)
        *idle_since_ns = age_first->idle_since_ns;
    sa_lock_release(&heap_lock);
    return any;
}

void sa_mheap_count_released_inline(uint64_t bytes)
{
    sa_lock_acquire(&heap_lock);
    counters.released_inline += bytes;
    sa_lock_release(&heap_lock);
}

void sa_mheap_free(struct sa_span *s)
{
    sa_lock_acquire(&heap_lock);
    sa_mheap_free_locked(s);
    uint64_t excess = sa_mheap_idle_excess_locked();
    sa_lock_release(&heap_lock);
    sa_mheap_after_free(excess);
}

/* Heap lock held: count the free of large span s, which must still be in
 * use (a second free racing the first finds it is not, and is reported). */
void sa_mheap_claim_large_free_as_locked(struct sa_span *s, size_t counted)
{
    if (s->state != SA_SPAN_LARGE) {
        sa_lock_release(&heap_lock);
        sa_report("free: block already freed (double free)", (void *)s->base, NULL);
    }
    uint64_t pages = (uint64_t)s->npages << SA_PAGE_SHIFT;
    counters.large_frees++;
    counters.large_alloc_bytes -= counted != 0 && counted < pages ? counted : pages;
}

void sa_mheap_free_large(struct sa_span *s)
{
    sa_lock_acquire(&heap_lock);
    sa_mheap_claim_large_free_locked(s);
    sa_mheap_free_locked(s);
    uint64_t excess = sa_mheap_idle_excess_locked();
    sa_lock_release(&heap_lock);
    sa_mheap_after_free(excess);
}

/* realloc's shrink: the pages of large span s past npages go back to the
 * heap as a free span (and so to the idle limit and the scavenger).  False,
 * changing nothing, if s is not large or no span record is left. */
bool sa_mheap_shrink_large(struct sa_span *s, size_t npages)
{
    if (npages == 0)
        return false;
    sa_lock_acquire(&heap_lock);
    struct sa_span *tail = NULL;
    if (s->state == SA_SPAN_LARGE && npages < s->npages)
        tail = sa_span_record_new();
    if (tail == NULL) {
        sa_lock_release(&heap_lock);
        return false;
    }
    size_t cut = s->npages - npages;
    counters.large_alloc_bytes -= (uint64_t)cut << SA_PAGE_SHIFT;
    tail->base = s->base + (npages << SA_PAGE_SHIFT);
    tail->npages = (uint32_t)cut;
    tail->state = SA_SPAN_LARGE; /* as freed from use: free_locked counts it out */
    set_large_size(s, npages);
    map_edges(s);
    sa_mheap_free_locked(tail); /* maps its edges over the old last page */
    uint64_t excess = sa_mheap_idle_excess_locked();
    sa_lock_release(&heap_lock);
    sa_mheap_after_free(excess);
    return true;
}

/* ---- Scavenging */

/* Detach up to max_pages (at most SA_SCAVENGE_CHUNK) of the oldest dirty
 * span idle since before cutoff, starting at its first resident page.  Heap
 * lock held. */
static struct sa_span *detach_scavenge_chunk(uint64_t cutoff_ns, size_t max_pages)
{
    struct sa_span *s = age_first;
    if (s == NULL || s->idle_since_ns > cutoff_ns)
        return NULL;
    free_lists_remove(s);
    size_t lead = sa_pagemap_first_unreleased(s->base, s->npages);
    if (lead > 0 && lead < s->npages && trim_lead(s, lead) == false)
        lead = 0; /* no record to split with: release the whole span */
    if (max_pages > SA_SCAVENGE_CHUNK)
        max_pages = SA_SCAVENGE_CHUNK;
    size_t take = s->npages < max_pages ? s->npages : max_pages;
    (void)split_free_tail(s, take); /* without a record: the whole span */
    s->state = SA_SPAN_SCAVENGING;
    scavenging_add(s);
    return s;
}

/* Pages still to release to reach max_bytes, rounded up. */
static size_t pages_left(uint64_t max_bytes, uint64_t released)
{
    uint64_t left = max_bytes - released;
    uint64_t pages = (left >> SA_PAGE_SHIFT) + ((left & (SA_PAGE_SIZE - 1)) != 0);
    return pages > SA_SCAVENGE_CHUNK ? SA_SCAVENGE_CHUNK : (size_t)pages;
}

uint64_t sa_mheap_scavenge(uint64_t cutoff_ns, uint64_t max_bytes)
{
    uint64_t released = 0;
    if (max_bytes > 0)
        sa_mheap_flush_large_cache();
    while (released < max_bytes) {
        sa_lock_acquire(&heap_lock);
        struct sa_span *s = detach_scavenge_chunk(cutoff_ns, pages_left(max_bytes, released));
        sa_lock_release(&heap_lock);
        if (s == NULL)
            break;
        /* The span is ours alone now: release it without the lock. */
        bool ok = sa_os_release((void *)s->base, (size_t)s->npages << SA_PAGE_SHIFT);
        sa_lock_acquire(&heap_lock);
        if (ok) {
            uint32_t newly = s->npages -
                             (uint32_t)sa_pagemap_count_released(s->base, s->npages);
            sa_pagemap_note_released(s->base, s->npages);
            counters.released_pages += newly;
            counters.released_total += (uint64_t)newly << SA_PAGE_SHIFT;
            s->released_pages = s->npages;
            released += (uint64_t)newly << SA_PAGE_SHIFT;
        } else {
            counters.madvise_failures++;
        }
        scavenging_remove(s);
        s->state = SA_SPAN_FREE;
        coalesce_and_insert(s);
        sa_lock_release(&heap_lock);
        if (!ok)
            break; /* the kernel refused: try again next cycle */
    }
    return released;
}

void sa_mheap_read(struct sa_heap_counters *out)
{
    sa_lock_acquire(&heap_lock);
    *out = counters;
    out->pagemap_sys = sa_pagemap_sys_bytes();
    sa_lock_release(&heap_lock);
}

/* ---- Verification (tests): every free span indexed where its size and
 * residency say, mapped at both ends and nowhere inside, not adjacent to
 * another free span (coalesced), its released count equal to the bitmap's;
 * the age list ordered and holding exactly the dirty spans; the totals equal
 * to the counters.  O(free pages): for tests only. */
static const char *verify_span(const struct sa_span *s, const struct sa_free_index *ix, unsigned b)
{
    if (s->state != SA_SPAN_FREE)
        return "indexed span not FREE";
    if (sa_free_index_bucket(s->npages) != b)
        return "span in the wrong bucket";
    bool dirty_set_ok = s->released_pages * 2 < s->npages;
    if ((ix == &dirty_set) != dirty_set_ok)
        return "span in the wrong index";
    if ((s->on_list == LIST_DIRTY) != span_is_dirty(s))
        return "age list membership disagrees with residency";
    if (sa_pagemap_lookup(s->base) != s || sa_pagemap_lookup(span_end(s) - SA_PAGE_SIZE) != s)
        return "free span's edges not mapped to it";
    for (uint32_t i = 1; i + 1 < s->npages; i++)
        if (sa_pagemap_lookup(s->base + ((uintptr_t)i << SA_PAGE_SHIFT)) != NULL)
            return "free span's interior page mapped";
    const struct sa_span *l = s->base ? sa_pagemap_lookup(s->base - SA_PAGE_SIZE) : NULL;
    const struct sa_span *r = sa_pagemap_lookup(span_end(s));
    if ((l != NULL && l->state == SA_SPAN_FREE) || (r != NULL && r->state == SA_SPAN_FREE))
        return "adjacent free spans not coalesced";
    if (s->released_pages != sa_pagemap_count_released(s->base, s->npages))
        return "released_pages disagrees with the bitmap";
    return NULL;
}

static const char *verify_index(const struct sa_free_index *ix, uint64_t *pages,
                                uint64_t *released, uint64_t *dirty)
{
    uint64_t n = 0, p = 0;
    for (unsigned b = 0; b < SA_PA_BUCKETS; b++) {
        bool bit = (ix->nonempty[b / 64] >> (b % 64)) & 1;
        if (bit != (ix->bucket[b].first != NULL))
            return "bucket bitmap disagrees with its list";
        for (const struct sa_span *s = ix->bucket[b].first; s != NULL; s = s->next) {
            const char *err = verify_span(s, ix, b);
            if (err != NULL)
                return err;
            n++;
            p += s->npages;
            *released += s->released_pages;
            *dirty += s->on_list == LIST_DIRTY;
        }
    }
    if (n != ix->spans || p != ix->pages)
        return "index totals wrong";
    *pages += p;
    return NULL;
}

static const char *verify_locked(void)
{
    uint64_t pages = 0, released = 0, dirty = 0;
    const char *err = verify_index(&dirty_set, &pages, &released, &dirty);
    if (err == NULL)
        err = verify_index(&clean_set, &pages, &released, &dirty);
    if (err != NULL)
        return err;
    uint64_t aged = 0;
    for (const struct sa_span *s = age_first; s != NULL; s = s->age_next, aged++)
        if (s->on_list != LIST_DIRTY || (s->age_next && s->age_next->idle_since_ns < s->idle_since_ns))
            return "age list out of order or holding a clean span";
    if (aged != dirty)
        return "age list does not hold every dirty span";
    if (pages + counters.inuse_pages != counters.sys_bytes >> SA_PAGE_SHIFT)
        return "free + in-use pages differ from the heap's size";
    if (released != counters.released_pages)
        return "released pages differ from the counter";
    return NULL;
}

const char *sa_mheap_verify(void)
{
    sa_lock_acquire(&heap_lock);
    const char *err = verify_locked();
    sa_lock_release(&heap_lock);
    return err;
}
