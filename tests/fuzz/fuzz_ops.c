/*
 * fuzz_ops.c: a libFuzzer target that runs the input as a program of
 * allocator calls against a model of up to 256 live blocks, and aborts on
 * the first disagreement.
 *
 * The allocator is linked as its prefixed API beside the fuzzer's own malloc
 * (ASan's), so every object spanalloc holds is one of the model's: the
 * statistics can be checked exactly, not only for their invariants.
 *
 * Input: a sequence of operations, each an opcode byte and its operands
 * (missing bytes read as 0).  A size is 3 bytes: the top two bits of the
 * first pick a range (0..255, 0..1 KiB, 0..32 KiB, 0..2.5 MiB: small, medium
 * (32..256 KiB) and large blocks, cached (up to 1 MiB) or not).
 *   0 malloc       slot size          7 read_mem_stats (and check them)
 *   1 free         slot               8 check        slot
 *   2 realloc      slot size          9 reallocarray slot count size
 *   3 calloc       slot count size   10 free_sized   slot
 *   4 aligned_alloc slot align size  11 realloc in place: slot, size near usable
 *   5 posix_memalign slot align size
 *   6 free_os_memory  12 impossible size: slot which size-byte (see op_huge)
 * An align byte below 0x80 asks for 2^(3 + b % 18) (8 B .. 1 MiB); from 0x80
 * on, b - 0x80 itself (mostly invalid: EINVAL is expected then).  A count of
 * 255 asks for an overflowing product (ENOMEM is expected).
 *
 * Checked: contents on every touch and free, calloc zeroes, alignment,
 * usable size >= size, errno on every failure, a large block shrunk by
 * realloc staying in place with its tail given back, and after
 * read_mem_stats every documented invariant plus the exact live objects and
 * bytes of the model, per size class (medium classes included), and the
 * heap's structure (sa_mheap_verify); after free_os_memory, heap_released
 * == heap_idle.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "sampler.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NSLOTS 256
#define MAX_SIZE (2560 * 1024)

struct slot {
    unsigned char *ptr;
    size_t size;
    unsigned char fill;
};

static struct slot slots[NSLOTS];
static unsigned char fill_seq;
static struct mem_stats prev; /* the last snapshot: cumulative fields only grow */
static bool have_prev;

static const uint8_t *in, *in_end;

static uint8_t next_byte(void)
{
    return in < in_end ? *in++ : 0;
}

#define CHECK(cond, ...)                                                       \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "fuzz_ops: check failed: %s (%s:%d): ", #cond,     \
                    __FILE__, __LINE__);                                       \
            fprintf(stderr, __VA_ARGS__);                                      \
            fputc('\n', stderr);                                               \
            abort();                                                           \
        }                                                                      \
    } while (0)

static size_t read_size(void)
{
    uint8_t a = next_byte(), b = next_byte(), c = next_byte();
    unsigned v16 = ((unsigned)b << 8) | c;
    switch (a >> 6) {
    case 0:
        return b;
    case 1:
        return v16 % 1025;
    case 2:
        return v16 % 32769;
    default:
        return ((((size_t)a & 63) << 16) | v16) % (MAX_SIZE + 1);
    }
}

static unsigned char new_fill(void)
{
    fill_seq = (unsigned char)(fill_seq * 37 + 11);
    return fill_seq == 0 ? 0xa5 : fill_seq;
}

static size_t alignment_of(uint8_t b)
{
    return b < 0x80 ? (size_t)1 << (3 + b % 18) : (size_t)(b - 0x80);
}

static bool power_of_two(size_t x)
{
    return x != 0 && (x & (x - 1)) == 0;
}

/* Index of the first byte of p[0, n) that is not v, or n. */
static size_t first_mismatch(const unsigned char *p, size_t n, unsigned char v)
{
    static unsigned char pattern[4096];
    memset(pattern, v, sizeof(pattern));
    for (size_t off = 0; off < n; off += sizeof(pattern)) {
        size_t len = n - off < sizeof(pattern) ? n - off : sizeof(pattern);
        if (memcmp(p + off, pattern, len) != 0)
            for (size_t i = off;; i++)
                if (p[i] != v)
                    return i;
    }
    return n;
}

static void check_contents(const struct slot *s, const char *when)
{
    size_t i = first_mismatch(s->ptr, s->size, s->fill);
    CHECK(i == s->size, "%s: block %p size %zu byte %zu is %#x, want %#x", when,
          (void *)s->ptr, s->size, i, s->ptr[i], s->fill);
}

/* The first n bytes of p still hold the fill byte v. */
static void check_prefix(const unsigned char *p, size_t n, unsigned char v, const char *when)
{
    size_t i = first_mismatch(p, n, v);
    CHECK(i == n, "%s: byte %zu of %zu is %#x, want %#x", when, i, n, p[i], v);
}

/* A fresh block: aligned, big enough, ours; then filled. */
static void adopt(struct slot *s, void *p, size_t size, size_t align)
{
    CHECK(p != NULL, "allocation of %zu failed", size);
    CHECK((uintptr_t)p % 16 == 0, "%p not 16-aligned", p);
    CHECK(align == 0 || (uintptr_t)p % align == 0, "%p not %zu-aligned", p, align);
    size_t usable = spanalloc_usable_size(p);
    CHECK(usable >= size, "usable %zu < size %zu", usable, size);
    struct sa_span *sp = sa_pagemap_lookup((uintptr_t)p);
    CHECK(sp != NULL && (sp->state == SA_SPAN_SMALL || sp->state == SA_SPAN_LARGE),
          "%p is not in a span in use", p);
    s->ptr = p;
    s->size = size;
    s->fill = new_fill();
    memset(p, s->fill, size);
    /* The usable tail is the caller's too. */
    if (usable > size)
        memset((unsigned char *)p + size, s->fill, usable - size < 64 ? usable - size : 64);
}

static void release(struct slot *s)
{
    if (s->ptr == NULL)
        return;
    check_contents(s, "free");
    spanalloc_free(s->ptr);
    s->ptr = NULL;
    s->size = 0;
}

static void op_malloc(struct slot *s, size_t size)
{
    release(s);
    errno = 0;
    adopt(s, spanalloc_malloc(size), size, 0);
}

static void op_calloc(struct slot *s, uint8_t count_byte, size_t size)
{
    release(s);
    if (count_byte == 255) {
        errno = 0;
        void *p = spanalloc_calloc(SIZE_MAX / 2 + 2, size | 2);
        CHECK(p == NULL && errno == ENOMEM, "overflowing calloc gave %p errno %d", p, errno);
        return;
    }
    size_t count = count_byte % 16 + 1;
    size_t each = size / count;
    unsigned char *p = spanalloc_calloc(count, each);
    CHECK(p != NULL, "calloc(%zu, %zu) failed", count, each);
    check_prefix(p, count * each, 0, "calloc zeroes");
    adopt(s, p, count * each, 0);
}

static void op_realloc(struct slot *s, size_t size)
{
    if (s->ptr != NULL)
        check_contents(s, "realloc");
    struct sa_span *old = s->ptr != NULL ? sa_pagemap_lookup((uintptr_t)s->ptr) : NULL;
    size_t old_usable = s->ptr != NULL ? spanalloc_usable_size(s->ptr) : 0;
    /* A sampled small or medium block sits in a span of its own but keeps its
     * class's rules (it is not shrunk in place). */
    bool shrinks_large = old != NULL && old->state == SA_SPAN_LARGE &&
                         (old->prof == NULL || !sa_profile_is_small(old)) &&
                         size > SA_MAX_SMALL && size <= old_usable;
    unsigned char *p = spanalloc_realloc(s->ptr, size);
    if (shrinks_large) {
        CHECK(p == s->ptr, "large realloc shrink %zu -> %zu moved", old_usable, size);
        CHECK(spanalloc_usable_size(p) == ((size + SA_PAGE_SIZE - 1) & ~(SA_PAGE_SIZE - 1)),
              "large realloc shrink to %zu kept %zu bytes", size, spanalloc_usable_size(p));
    }
    if (size == 0 && s->ptr != NULL) {
        CHECK(p == NULL, "realloc(p, 0) returned %p", (void *)p); /* it frees */
        s->ptr = NULL;
        s->size = 0;
        return;
    }
    CHECK(p != NULL, "realloc to %zu failed", size);
    check_prefix(p, s->size < size ? s->size : size, s->fill, "realloc keeps the contents");
    adopt(s, p, size, 0);
}

static void op_reallocarray(struct slot *s, uint8_t count_byte, size_t size)
{
    if (count_byte == 255) {
        errno = 0;
        void *p = spanalloc_reallocarray(s->ptr, SIZE_MAX / 2 + 2, size | 2);
        CHECK(p == NULL && errno == ENOMEM, "overflowing reallocarray gave %p", p);
        if (s->ptr != NULL)
            check_contents(s, "after failed reallocarray"); /* untouched */
        return;
    }
    size_t count = count_byte % 16 + 1;
    size_t each = size / count;
    if (count * each == 0) {
        op_realloc(s, 0);
        return;
    }
    if (s->ptr != NULL)
        check_contents(s, "reallocarray");
    unsigned char *p = spanalloc_reallocarray(s->ptr, count, each);
    CHECK(p != NULL, "reallocarray(%zu, %zu) failed", count, each);
    check_prefix(p, s->size < count * each ? s->size : count * each, s->fill,
                 "reallocarray keeps the contents");
    adopt(s, p, count * each, 0);
}

static void op_aligned_alloc(struct slot *s, uint8_t align_byte, size_t size)
{
    release(s);
    size_t align = alignment_of(align_byte);
    errno = 0;
    void *p = spanalloc_aligned_alloc(align, size);
    if (!power_of_two(align)) {
        CHECK(p == NULL && errno == EINVAL, "aligned_alloc(%zu) gave %p errno %d", align, p,
              errno);
        return;
    }
    adopt(s, p, size, align);
}

static void op_posix_memalign(struct slot *s, uint8_t align_byte, size_t size)
{
    release(s);
    size_t align = alignment_of(align_byte);
    void *sentinel = (void *)(uintptr_t)0x1234;
    void *out = sentinel;
    errno = 77;
    int rc = spanalloc_posix_memalign(&out, align, size);
    CHECK(errno == 77, "posix_memalign changed errno to %d", errno);
    if (!power_of_two(align) || align % sizeof(void *) != 0) {
        CHECK(rc == EINVAL && out == sentinel, "posix_memalign(%zu) rc %d", align, rc);
        return;
    }
    CHECK(rc == 0, "posix_memalign(%zu, %zu) rc %d", align, size, rc);
    adopt(s, out, size, align);
}

/* Grow or shrink within the usable size: realloc keeps the block when the
 * new size fits and wastes at most half of it. */
static void op_realloc_near(struct slot *s, size_t delta)
{
    if (s->ptr == NULL)
        return;
    size_t usable = spanalloc_usable_size(s->ptr);
    size_t size = usable - delta % (usable / 2 + 1);
    if (size == 0)
        size = 1;
    check_contents(s, "realloc near");
    unsigned char *old = s->ptr;
    /* A large block (not a sampled small one) taken to 32 KiB or less moves
     * into a class when that frees at least a page (docs/design.md). */
    struct sa_span *span = sa_pagemap_lookup((uintptr_t)old);
    bool may_move = span->state == SA_SPAN_LARGE &&
                    (span->prof == NULL || !sa_profile_is_small(span)) &&
                    size <= SA_MAX_SMALL && usable - size >= SA_PAGE_SIZE;
    unsigned char *p = spanalloc_realloc(old, size);
    CHECK(p != NULL, "realloc near %zu failed", size);
    CHECK(p == old || may_move, "realloc %zu -> %zu (usable %zu) moved the block", s->size, size,
          usable);
    check_prefix(p, s->size < size ? s->size : size, s->fill, "in-place realloc keeps the contents");
    adopt(s, p, size, 0);
}

static void check_stats(bool after_release)
{
    struct mem_stats st;
    read_mem_stats(&st);
    CHECK(st.heap_sys == st.heap_idle + st.heap_inuse, "sys %llu idle %llu inuse %llu",
          (unsigned long long)st.heap_sys, (unsigned long long)st.heap_idle,
          (unsigned long long)st.heap_inuse);
    CHECK(st.heap_released <= st.heap_idle, "released %llu > idle %llu",
          (unsigned long long)st.heap_released, (unsigned long long)st.heap_idle);
    CHECK(st.heap_alloc <= st.heap_inuse, "alloc %llu > inuse %llu",
          (unsigned long long)st.heap_alloc, (unsigned long long)st.heap_inuse);
    CHECK(st.alloc == st.heap_alloc, "alloc != heap_alloc");
    CHECK(st.heap_objects == st.mallocs - st.frees, "objects != mallocs - frees");
    CHECK(st.sys == st.heap_sys + st.mspan_sys + st.mcache_sys + st.other_sys, "sys sum");
    CHECK(st.mspan_inuse <= st.mspan_sys && st.mcache_inuse <= st.mcache_sys, "metadata");
    CHECK(st.heap_sys % SA_PAGE_SIZE == 0 && st.heap_inuse % SA_PAGE_SIZE == 0 &&
              st.heap_released % SA_PAGE_SIZE == 0,
          "heap figures not whole pages");

    /* Exact: the model holds every object spanalloc has handed out. */
    uint64_t live = 0, bytes = 0, class_live[SA_NUM_CLASSES] = {0};
    for (int i = 0; i < NSLOTS; i++) {
        if (slots[i].ptr == NULL)
            continue;
        struct sa_span *sp = sa_pagemap_lookup((uintptr_t)slots[i].ptr);
        live++;
        bytes += spanalloc_usable_size(slots[i].ptr);
        if (sp->state == SA_SPAN_SMALL)
            class_live[sa_span_cls(sp)]++;
        else if (sp->prof != NULL && sa_profile_is_small(sp)) /* a sampled small block */
            class_live[sa_size_class(spanalloc_usable_size(slots[i].ptr))]++;
    }
    CHECK(st.heap_objects == live, "heap_objects %llu, model %llu",
          (unsigned long long)st.heap_objects, (unsigned long long)live);
    CHECK(st.heap_alloc == bytes, "heap_alloc %llu, model %llu",
          (unsigned long long)st.heap_alloc, (unsigned long long)bytes);
    uint64_t small_m = 0, small_f = 0;
    for (unsigned c = 1; c < SA_NUM_CLASSES; c++) {
        const struct mem_stats_class *b = &st.by_size[c];
        CHECK(b->size == sa_class_size[c], "class %u size", c);
        CHECK(b->mallocs - b->frees == class_live[c], "class %u live %llu, model %llu", c,
              (unsigned long long)(b->mallocs - b->frees), (unsigned long long)class_live[c]);
        small_m += b->mallocs;
        small_f += b->frees;
        if (have_prev)
            CHECK(b->mallocs >= prev.by_size[c].mallocs && b->frees >= prev.by_size[c].frees,
                  "class %u counters went back", c);
    }
    CHECK(small_m <= st.mallocs && small_f <= st.frees, "by_size exceeds totals");
    if (have_prev) {
        CHECK(st.total_alloc >= prev.total_alloc, "total_alloc decreased");
        CHECK(st.mallocs >= prev.mallocs && st.frees >= prev.frees, "counts decreased");
        CHECK(st.released_total >= prev.released_total, "released_total decreased");
        CHECK(st.heap_sys >= prev.heap_sys, "heap_sys decreased (the heap never unmaps)");
    }
    const char *heap_err = sa_mheap_verify();
    CHECK(heap_err == NULL, "heap structure: %s", heap_err);
    if (after_release && st.madvise_failures == (have_prev ? prev.madvise_failures : 0))
        CHECK(st.heap_released == st.heap_idle,
              "after free_os_memory: released %llu, idle %llu",
              (unsigned long long)st.heap_released, (unsigned long long)st.heap_idle);
    prev = st;
    have_prev = true;
}

/* One thread: no background scavenger releasing spans behind the model's
 * back (its detached chunk would make heap_released lag for a moment). */
/* Sizes no machine backs (more than any RAM + swap, or past PTRDIFF_MAX):
 * every entry point fails with ENOMEM at once and nothing changes, the
 * slot's block (realloc's argument) included. */
static void op_huge(struct slot *s, uint8_t which, uint8_t size_byte)
{
    static const size_t huge[] = {(size_t)1 << 42, (size_t)20 << 40, (size_t)1 << 47,
                                  (size_t)PTRDIFF_MAX, (size_t)PTRDIFF_MAX + 1, SIZE_MAX - 4095,
                                  SIZE_MAX};
    size_t n = huge[size_byte % (sizeof(huge) / sizeof(huge[0]))];
    struct mem_stats before;
    read_mem_stats(&before);
    void *p = NULL, *out = s;
    int rc = 0;
    errno = 0;
    switch (which % 6) {
    case 0: p = spanalloc_malloc(n); break;
    case 1: p = spanalloc_calloc(1, n); break;
    case 2: p = spanalloc_aligned_alloc(4096, n); break;
    case 3: rc = spanalloc_posix_memalign(&out, 64, n); break;
    case 4: p = s->ptr ? spanalloc_realloc(s->ptr, n) : spanalloc_malloc(n); break;
    default: p = spanalloc_reallocarray(s->ptr, n / 16 + 1, 16); break;
    }
    if (which % 6 == 3)
        CHECK(rc == ENOMEM && out == s, "posix_memalign(%zu) gave %d", n, rc);
    else
        CHECK(p == NULL && errno == ENOMEM, "size %zu gave %p errno %d", n, p, errno);
    struct mem_stats after;
    read_mem_stats(&after);
    CHECK(after.heap_sys == before.heap_sys && after.other_sys == before.other_sys,
          "size %zu grew the heap", n);
    if (s->ptr != NULL)
        check_contents(s, "after an impossible request");
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    sa_ensure_init();
    sa_options.scavenger_enabled = false;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    in = data;
    in_end = data + size;
    while (in < in_end) {
        uint8_t op = next_byte() % 13;
        struct slot *s = op == 6 || op == 7 ? NULL : &slots[next_byte()];
        switch (op) {
        case 0:
            op_malloc(s, read_size());
            break;
        case 1:
            release(s);
            break;
        case 2:
            op_realloc(s, read_size());
            break;
        case 3: {
            uint8_t count = next_byte();
            op_calloc(s, count, read_size());
            break;
        }
        case 4: {
            uint8_t align = next_byte();
            op_aligned_alloc(s, align, read_size());
            break;
        }
        case 5: {
            uint8_t align = next_byte();
            op_posix_memalign(s, align, read_size());
            break;
        }
        case 6:
            free_os_memory();
            check_stats(true);
            break;
        case 7:
            check_stats(false);
            break;
        case 8:
            if (s->ptr != NULL) {
                check_contents(s, "check");
                CHECK(spanalloc_usable_size(s->ptr) >= s->size, "usable shrank");
            }
            break;
        case 9: {
            uint8_t count = next_byte();
            op_reallocarray(s, count, read_size());
            break;
        }
        case 10:
            if (s->ptr != NULL) {
                check_contents(s, "free_sized");
                spanalloc_free_sized(s->ptr, s->size);
                s->ptr = NULL;
                s->size = 0;
            }
            break;
        case 11:
            op_realloc_near(s, read_size());
            break;
        case 12: {
            uint8_t which = next_byte();
            op_huge(s, which, next_byte());
            break;
        }
        }
    }
    for (int i = 0; i < NSLOTS; i++)
        release(&slots[i]);
    check_stats(false);
    return 0;
}
