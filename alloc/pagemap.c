/*
 * pagemap.c: the map from an address to the span that holds it.
 *
 * Readers (free, realloc, usable_size) take no lock: a root entry is either
 * 0 or a complete, never-freed leaf (biased, see sa_leaf_bias), published
 * with a release store.  A
 * leaf entry is never NULL: a page no span holds maps to sa_span_none, which
 * saves free()'s fast path a test (sa_pagemap_lookup hides it from the rest).
 * Writers hold the heap lock.  The root below 2^48 is a static array: the
 * kernel maps its pages only when an entry is first written, so covering it
 * commits nothing up front; above it, up to 2^56, a small hashed table (see
 * internal.h) keeps free()'s inline path to the one array.
 *
 * Each leaf also keeps its arena's released-page bitmap, the exact record of
 * which idle pages have been given back to the OS (or never touched), and
 * its known-zero bitmap, the pages calloc may trust to read as zero.
 */
#include "internal.h"

/* Root entries are written under the heap lock (a leaf is published with a
 * release store) and read with no lock (acquire) by free() and lookups. */
_Atomic uintptr_t sa_pagemap_root[SA_ROOT_ENTRIES];
struct sa_span sa_span_none; /* all zero: state 0, free_limit 0; never written */
static uint64_t leaves_sys_bytes; /* heap lock */
static size_t leaves_mapped;      /* heap lock */

static size_t page_in_leaf(uintptr_t addr)
{
    return (addr >> SA_PAGE_SHIFT) & (SA_PAGES_PER_ARENA - 1);
}

/* ---- The high part of the root: arenas above 2^SA_ADDR_BITS.
 *
 * A key is an arena number (never 0 here: these arenas are all above the
 * static root), published after its bias with a release store; a reader
 * probes from the arena's hash until it finds the key or an empty slot.
 * Keys are never removed, so a probe sequence never breaks. */
struct high_slot {
    _Atomic uintptr_t arena;
    _Atomic uintptr_t bias;
};
static struct high_slot high_root[SA_HIGH_SLOTS]; /* written under the heap lock, read with none */
static size_t high_used; /* heap lock */

static size_t high_hash(uintptr_t arena)
{
    return (size_t)(((uint64_t)arena * 0x9e3779b97f4a7c15ull) >> 32) & (SA_HIGH_SLOTS - 1);
}

uintptr_t sa_pagemap_high_bias(uintptr_t addr)
{
    uintptr_t arena = addr >> SA_ARENA_SHIFT;
    if (arena >> (SA_MAX_ADDR_BITS - SA_ARENA_SHIFT))
        return 0; /* beyond any user address space */
    for (size_t i = high_hash(arena), n = 0; n < SA_HIGH_SLOTS; i = (i + 1) & (SA_HIGH_SLOTS - 1), n++) {
        uintptr_t key = atomic_load_explicit(&high_root[i].arena, memory_order_acquire);
        if (key == arena)
            return atomic_load_explicit(&high_root[i].bias, memory_order_relaxed);
        if (key == 0)
            return 0;
    }
    return 0;
}

static void high_publish(uintptr_t arena, uintptr_t bias)
{
    size_t i = high_hash(arena);
    while (atomic_load_explicit(&high_root[i].arena, memory_order_relaxed) != 0)
        i = (i + 1) & (SA_HIGH_SLOTS - 1);
    atomic_store_explicit(&high_root[i].bias, bias, memory_order_relaxed);
    atomic_store_explicit(&high_root[i].arena, arena, memory_order_release);
    high_used++;
}

static void publish_leaf(struct sa_arena_leaf *leaf, uintptr_t arena)
{
    if (arena < SA_ROOT_ENTRIES)
        atomic_store_explicit(&sa_pagemap_root[arena], sa_leaf_bias(leaf, arena),
                              memory_order_release);
    else
        high_publish(arena, sa_leaf_bias(leaf, arena));
}

/* Leaves for every arena of [base, base+bytes) that has none, mapped in one
 * piece: either all of them are published or, if the mapping fails, none,
 * so a failed growth leaves no resident leaf behind. */
bool sa_pagemap_ensure(uintptr_t base, size_t bytes)
{
    uintptr_t end = base + bytes;
    if (bytes == 0 || end < base || (end - 1) >> SA_MAX_ADDR_BITS)
        return false;
    uintptr_t first = base >> SA_ARENA_SHIFT, last = (end - 1) >> SA_ARENA_SHIFT;
    size_t missing = 0, missing_high = 0;
    for (uintptr_t a = first; a <= last; a++) {
        if (sa_pagemap_leaf(a << SA_ARENA_SHIFT) == NULL) {
            missing++;
            missing_high += a >= SA_ROOT_ENTRIES;
        }
    }
    if (missing == 0)
        return true;
    if (high_used + missing_high > SA_HIGH_SLOTS / 2)
        return false; /* the hashed part stays at most half full */
    size_t os_page = sa_os_page_size();
    size_t len = (missing * sizeof(struct sa_arena_leaf) + os_page - 1) & ~(os_page - 1);
    struct sa_arena_leaf *leaves = sa_os_map(len, 0);
    if (leaves == NULL)
        return false;
    leaves_sys_bytes += len;
    leaves_mapped += missing;
    struct sa_arena_leaf *leaf = leaves;
    for (uintptr_t a = first; a <= last; a++) {
        if (sa_pagemap_leaf(a << SA_ARENA_SHIFT) != NULL)
            continue;
        for (size_t i = 0; i < SA_PAGES_PER_ARENA; i++)
            atomic_store_explicit(&leaf->spans[i], &sa_span_none, memory_order_relaxed);
        publish_leaf(leaf++, a);
    }
    return true;
}

uint64_t sa_pagemap_sys_bytes(void)
{
    /* Leaves, plus the root pages their entries touched (an upper bound). */
    return leaves_sys_bytes + leaves_mapped * sa_os_page_size();
}

/* NULL (no span) is stored as sa_span_none. */
void sa_pagemap_set_page(uintptr_t addr, struct sa_span *s)
{
    if (s == NULL)
        s = &sa_span_none;
    atomic_store_explicit(&sa_pagemap_leaf(addr)->spans[page_in_leaf(addr)], s,
                          memory_order_release);
}

void sa_pagemap_set(uintptr_t base, size_t npages, struct sa_span *s)
{
    if (s == NULL)
        s = &sa_span_none;
    while (npages > 0) { /* a leaf at a time: a run may cross into the next */
        struct sa_arena_leaf *leaf = sa_pagemap_leaf(base);
        size_t first = page_in_leaf(base);
        size_t count = SA_PAGES_PER_ARENA - first < npages ? SA_PAGES_PER_ARENA - first : npages;
        for (size_t i = first; i < first + count; i++)
            atomic_store_explicit(&leaf->spans[i], s, memory_order_release);
        base += count << SA_PAGE_SHIFT;
        npages -= count;
    }
}

/* The released bitmap is walked a leaf at a time: a run of pages may cross
 * from one 64 MiB arena into the next. */
static size_t leaf_run(uintptr_t base, size_t npages, struct sa_arena_leaf **leaf,
                       size_t *first)
{
    *leaf = sa_pagemap_leaf(base);
    *first = page_in_leaf(base);
    size_t room = SA_PAGES_PER_ARENA - *first;
    return npages < room ? npages : room;
}

/* Bits [first, first+count) of a bitmap, a word at a time. */
static uint64_t run_mask(size_t first, size_t count)
{
    uint64_t hi = count >= 64 ? ~(uint64_t)0 : (((uint64_t)1 << count) - 1);
    return hi << first;
}

/* Bits set in x, without a libgcc call: the baseline x86-64 target has no
 * popcnt instruction. */
static inline unsigned bits_set(uint64_t x)
{
    x = x - ((x >> 1) & 0x5555555555555555ull);
    x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
    x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0full;
    return (unsigned)((x * 0x0101010101010101ull) >> 56);
}

/* The one walk over a run's bitmap words: for each word the run touches, a
 * leaf at a time, visit(leaf, word index, the run's bits in it, the page
 * of the run those bits start at).  A visit returning false stops the walk
 * (the walk then returns false).  Always inlined: each caller's visit is a
 * constant, and becomes straight-line code in its loop. */
typedef bool (*word_visit)(struct sa_arena_leaf *leaf, size_t word, uint64_t mask,
                           size_t page, void *ctx);

static inline __attribute__((always_inline)) bool walk_words(uintptr_t base, size_t npages,
                                                            word_visit visit, void *ctx)
{
    size_t index = 0;
    while (npages > 0) {
        struct sa_arena_leaf *leaf;
        size_t first, count = leaf_run(base, npages, &leaf, &first);
        for (size_t i = first, end = first + count; i < end;) {
            size_t bit = i & 63, n = (64 - bit) < (end - i) ? 64 - bit : end - i;
            if (!visit(leaf, i >> 6, run_mask(bit, n), index + (i - first), ctx))
                return false;
            i += n;
        }
        index += count;
        base += count << SA_PAGE_SHIFT;
        npages -= count;
    }
    return true;
}

static inline bool count_word(struct sa_arena_leaf *leaf, size_t word, uint64_t mask,
                              size_t page, void *total)
{
    (void)page;
    *(size_t *)total += bits_set(leaf->released[word] & mask);
    return true;
}

size_t sa_pagemap_count_released(uintptr_t base, size_t npages)
{
    size_t first_page = page_in_leaf(base);
    if (npages > 0 && npages <= 64 - (first_page & 63)) /* one word: the common case */
        return bits_set(sa_pagemap_leaf(base)->released[first_page >> 6] &
                        run_mask(first_page & 63, npages));
    size_t total = 0;
    walk_words(base, npages, count_word, &total);
    return total;
}

enum bit_op { BITS_SET_RELEASED, BITS_SET_ZERO, BITS_CLEAR_BOTH };

static inline bool update_word(struct sa_arena_leaf *leaf, size_t word, uint64_t mask,
                               size_t page, void *op)
{
    (void)page;
    switch (*(const enum bit_op *)op) {
    case BITS_SET_RELEASED:
        leaf->released[word] |= mask;
        break;
    case BITS_SET_ZERO:
        leaf->zero[word] |= mask;
        break;
    case BITS_CLEAR_BOTH:
        leaf->released[word] &= ~mask;
        leaf->zero[word] &= ~mask;
        break;
    }
    return true;
}

static void update_bits(uintptr_t base, size_t npages, enum bit_op op)
{
    walk_words(base, npages, update_word, &op);
}

void sa_pagemap_mark_released(uintptr_t base, size_t npages, bool released)
{
    update_bits(base, npages, released ? BITS_SET_RELEASED : BITS_CLEAR_BOTH);
}

void sa_pagemap_note_fresh(uintptr_t base, size_t npages)
{
    update_bits(base, npages, BITS_SET_RELEASED);
    update_bits(base, npages, BITS_SET_ZERO);
}

/* [base, +npages) was just released (sa_os_release).  Zero only the pages
 * that lie in whole OS pages of the range, and only if the advice zeroes:
 * with 16/64 KiB OS pages the partial OS pages at the ends kept their data,
 * and MADV_FREE keeps it until the kernel needs the memory. */
void sa_pagemap_note_released(uintptr_t base, size_t npages)
{
    update_bits(base, npages, BITS_SET_RELEASED);
    if (!sa_os_release_zeroes())
        return;
    size_t os_page = sa_os_page_size();
    uintptr_t end = base + (npages << SA_PAGE_SHIFT);
    uintptr_t zstart = (base + os_page - 1) & ~(uintptr_t)(os_page - 1);
    uintptr_t zend = end & ~(uintptr_t)(os_page - 1);
    if (os_page <= SA_PAGE_SIZE)
        zstart = base, zend = end; /* every 8 KiB page is whole OS pages */
    if (zend > zstart)
        update_bits(zstart, (zend - zstart) >> SA_PAGE_SHIFT, BITS_SET_ZERO);
}

static inline bool all_zero_word(struct sa_arena_leaf *leaf, size_t word, uint64_t mask,
                                 size_t page, void *ctx)
{
    (void)page, (void)ctx;
    return (leaf->zero[word] & mask) == mask;
}

bool sa_pagemap_all_zero(uintptr_t base, size_t npages)
{
    return walk_words(base, npages, all_zero_word, NULL);
}

static inline bool resident_word(struct sa_arena_leaf *leaf, size_t word, uint64_t mask,
                                 size_t page, void *found)
{
    uint64_t resident = ~leaf->released[word] & mask;
    if (resident == 0)
        return true;
    *(size_t *)found = page + (size_t)(__builtin_ctzll(resident) - __builtin_ctzll(mask));
    return false;
}

size_t sa_pagemap_first_unreleased(uintptr_t base, size_t npages)
{
    size_t found = npages;
    walk_words(base, npages, resident_word, &found);
    return found;
}
