/*
 * percpu.h: the cache's storage (a slab) and the restartable sequences that
 * change it.
 *
 * A slab is one block of metadata: per size class a 32-byte header at
 * class * 32 (so a class's list offset is its header's offset), then, per
 * class, a region of slots holding pointers to free blocks.  The blocks
 * themselves are not linked through their memory while cached: a
 * use-after-free write cannot redirect malloc.  Each carries the free mark
 * (word 1 = word 0 ^ address ^ mark_key), for the double-free check.
 *
 * Which slab a thread uses is looked up, on every operation, as
 *     sa_tls.table[sa_tls.cpu->cpu_id_start]
 * In per-CPU mode sa_tls.cpu is the thread's rseq area (glibc's
 * registration) and sa_tls.table the table of CPU slabs (sa_zero_slab for a
 * CPU not set up yet, or being drained); in the per-thread fallback
 * sa_tls.cpu is a static area whose cpu is always 0 and the table holds the
 * thread's own slab.  Both modes run the same instructions.  A thread starts
 * on the static area and sa_zero_table.slab, whose one slab has every header
 * zero: every operation fails and takes the slow path, which sets the
 * thread up.
 *
 * Header word: bits 0-15 the slot index one past the top of the class's
 * stack (cur), bits 16-63 the mallocs of the class on this slab, mod 2^48.
 * malloc commits with one add of 0xffff (cur - 1, mallocs + 1), free with
 * one add of 1.  A pop needs cur > begin, a push cur < end.
 */
#ifndef SPANALLOC_PERCPU_H
#define SPANALLOC_PERCPU_H

#include "internal.h"
#include "tls.h"

#define SA_SLAB_SHIFT 17 /* the layout keeps a slab within 128 KiB */
#define SA_SLAB_CUR_MASK ((uint64_t)0xffff)

/* Who writes a header: word, by the sections of the threads on the slab's
 * CPU (one at a time: the kernel restarts an interrupted one) or, in the
 * fallback, its one thread, and by a drainer that owns the slab (swapped
 * out and fenced); read by anyone, relaxed.  begin and end, before the slab
 * is published (sa_slab_init), and after that only by a fallback slab's own
 * thread (slow start).  seen, by the readers, under the registry lock. */
struct sa_slab_class {
    uint64_t word;             /* cur | mallocs << 16: committed by the sections */
    uint16_t begin, end;       /* the bounds the sections check */
    uint16_t spare[2];
    uint64_t reserved;         /* keeps the header at 32 bytes */
    uint64_t seen;             /* mallocs extended to 64 bits by readers */
};
_Static_assert(sizeof(struct sa_slab_class) == 1u << SA_LIST_SHIFT, "slab header size");

extern struct sa_rseq_view sa_fake_rseq;
extern const struct sa_slab_class sa_zero_slab[SA_NUM_CLASSES];

/* Every slab table (what sa_tls.table points at: the CPU table, a fallback
 * thread's one entry, the zero table) comes right after a copy of the
 * size-to-list table of requests up to SA_DIRECT_MAX bytes
 * (sa_direct_size_to_list), so that malloc finds the list offset from the
 * table pointer it loads anyway: one load, no table address to form. */
#define SA_SIZE_INDEX_ENTRIES ((SA_DIRECT_MAX + 1 + 3) & ~(size_t)3) /* whole words */
struct sa_size_index {
    uint16_t list_off[SA_SIZE_INDEX_ENTRIES];
};
static inline const uint16_t *sa_table_size_index(char *const *table)
{
    return (const uint16_t *)(const void *)table - SA_SIZE_INDEX_ENTRIES;
}
void sa_size_index_init(struct sa_size_index *index);
struct sa_zero_table {
    struct sa_size_index sizes;
    char *const slab[1];
};
extern const struct sa_zero_table sa_zero_table;
/* What malloc's pop yields when it fails (alloc/mcache.h): two words whose
 * mark check can never pass.  Word 1 is XORed by every failed pop with the
 * same value, so it only ever takes two values, both nonzero. */
extern uintptr_t sa_poison_block[2];

static inline struct sa_slab_class *sa_slab_class_at(char *slab, size_t list_off)
{
    return (struct sa_slab_class *)(slab + list_off);
}

static inline void **sa_slab_slots(char *slab)
{
    return (void **)slab;
}

#if defined(__x86_64__) && !defined(SA_TSAN)
#define SA_PERCPU_ASM 1

/* The critical sections.  Each one stores its descriptor (struct rseq_cs:
 * version, flags, start, post-commit offset, abort) into the rseq area, then
 * runs from label 1 to label 2, where the one committing instruction ends.
 * The kernel, if it preempts, migrates or signals the thread in between,
 * clears rseq_cs and resumes at label 4, which must follow the 4-byte
 * signature glibc registered (RSEQ_SIG, encoded in a ud1 instruction so
 * that no disassembler takes it for code): 4 jumps back to 0, which stores
 * the descriptor again.  Leaving early (to a C label) needs nothing: outside
 * [1, 2) the kernel ignores the descriptor.  Everything before the commit
 * is a load or a store that nobody reads until the commit publishes it, so
 * restarting from the top is always safe.
 *
 * The templates take the scratch registers' names: operands (%[slab]) where
 * the asm has outputs, hard registers (%%rax) in asm goto, which may not
 * have outputs here (GCC 12 miscompiles asm goto with outputs). */
#define SA_RSEQ_START(desc, start, slab, slab32)                     \
    "leaq " desc "(%%rip), " slab "\n\t"                             \
    "movq " slab ", 8(%[area])\n\t"                                  \
    start ":\n\t"                                                    \
    "movl (%[area]), " slab32 "\n\t"                                 \
    "movq (%[base]," slab ",8), " slab "\n\t"

#define SA_RSEQ_DESC(desc, start, end, abort)                        \
    ".pushsection __rseq_cs, \"aw\"\n\t"                             \
    ".balign 32\n\t"                                                 \
    desc ":\n\t"                                                     \
    ".long 0, 0\n\t"                                                 \
    ".quad " start ", " end " - " start ", " abort "\n\t"            \
    ".popsection\n\t"

#define SA_RSEQ_ABORT(label, restart)                                \
    ".byte 0x0f, 0xb9, 0x3d\n\t"                                     \
    ".long 0x53053053\n\t"                                           \
    label ":\n\t"                                                    \
    "jmp " restart "\n\t"

#define SA_RSEQ_PROLOGUE(slab, slab32) "0:\n\t" SA_RSEQ_START("3f", "1", slab, slab32)

#define SA_RSEQ_EPILOGUE_TO(restart)                                 \
    "2:\n\t"                                                         \
    SA_RSEQ_DESC("3", "1b", "2b", "4f")                              \
    ".pushsection .text.unlikely.sa_rseq, \"ax\"\n\t"                \
    SA_RSEQ_ABORT("4", restart)                                      \
    ".popsection\n\t"

/* A section with outputs that cannot complete (empty, full) leaves through
 * label 5, out of line, which sets ZF; a committed one ends with ZF clear
 * (its commit's result is never 0: the low 16 bits are a slot index past the
 * headers).  The C side branches on ZF. */
#define SA_RSEQ_FAIL_STUB                                            \
    ".pushsection .text.unlikely.sa_rseq, \"ax\"\n\t"                \
    "5:\n\t"                                                         \
    "xorl %k[cur], %k[cur]\n\t"                                      \
    "jmp 2b\n\t"                                                     \
    ".popsection\n\t"

/* The one pop section: take the top block of a class (the slot below cur)
 * and commit with one add of DELTA to the header word.  A pop that cannot
 * complete (empty class, or the CPU's slab not set up, or being drained)
 * leaves through STUB, out of line.  FLAG_OUT(fail_) is either
 * SA_POP_ZF_OUT (`fail_` gets ZF at label 2, which SA_RSEQ_FAIL_STUB sets)
 * or SA_POP_NO_FLAG (no flag output: one the caller did not use would still
 * change the compiler's register choice around the section).  `slab_out_`
 * gets the slab the pop came from.  The two pops below differ only in DELTA,
 * the stub and the flag. */
#define SA_POP_ZF_OUT(fail_) , "=@ccz"(fail_)
#define SA_POP_NO_FLAG(fail_)
#define SA_SLAB_POP_SECTION(off_, delta_, result_, slab_out_, stub_, flag_out_, fail_) \
    do {                                                                        \
        uintptr_t sa_cur_;                                                      \
        __asm__ volatile(SA_RSEQ_PROLOGUE("%[slab]", "%k[slab]")                \
                 "movzwl (%[slab],%[off]), %k[cur]\n\t"                         \
                 "cmpw 8(%[slab],%[off]), %w[cur]\n\t"                          \
                 "jbe 5f\n\t"                                                   \
                 "movq -8(%[slab],%[cur],8), %[res]\n\t"                        \
                 "addq %[d], (%[slab],%[off])\n\t"                              \
                 SA_RSEQ_EPILOGUE_TO("0b") stub_                                \
                 : [res] "=&a"(result_), [slab] "=&r"(slab_out_), [cur] "=&r"(sa_cur_) \
                   flag_out_(fail_)                                             \
                 : [area] "r"(sa_tls.cpu), [off] "r"((uintptr_t)(off_)),        \
                   [base] "r"(sa_tls.table), [d] "i"(delta_)                    \
                 : "memory", "cc");                                             \
    } while (0)

/* Pop the top block of a class; goto `empty` if there is none.  DELTA is
 * the commit: 0xffff counts a malloc, -1 does not (a block taken back by
 * the slow path). */
#define SA_SLAB_POP(off_, delta_, result_, slab_out_, empty_)                  \
    do {                                                                        \
        bool sa_fail_;                                                          \
        SA_SLAB_POP_SECTION(off_, delta_, result_, slab_out_, SA_RSEQ_FAIL_STUB, \
                            SA_POP_ZF_OUT, sa_fail_);                           \
        if (SA_UNLIKELY(sa_fail_))                                              \
            goto empty_;                                                        \
    } while (0)

/* malloc's pop: as SA_SLAB_POP with a malloc counted, but a failed pop
 * leaves `result` = sa_poison_block instead of setting a flag, so that the
 * caller's mark check (which fails on it) is the only branch: the miss path
 * tells the poison block from a corrupted one. */
#define SA_RSEQ_POISON_STUB                                          \
    ".pushsection .text.unlikely.sa_rseq, \"ax\"\n\t"                \
    "5:\n\t"                                                         \
    "leaq sa_poison_block(%%rip), %[res]\n\t"                        \
    "jmp 2b\n\t"                                                     \
    ".popsection\n\t"

#define SA_SLAB_POP_MALLOC(off_, result_)                                      \
    do {                                                                        \
        uintptr_t sa_slab_;                                                     \
        SA_SLAB_POP_SECTION(off_, 0xffff, result_, sa_slab_, SA_RSEQ_POISON_STUB, \
                            SA_POP_NO_FLAG, ~ /* no flag */);                   \
        (void)sa_slab_;                                                         \
    } while (0)

/* free's push: also the double-free check and the free mark, inside the
 * section (word 1 gets word 0 ^ address ^ sa_mark_key: the mark
 * sa_block_is_free recognises).  A block already carrying the mark
 * goes to `full` like a full class: the slow path checks again and reports.
 * The mark is read after the room check, so that a slab without room (the
 * zero slab under valgrind) never reads user memory.  Scratch: rax (slab),
 * rcx (cur), r11 (mark).
 *
 * Restarted, the section may find the mark it wrote itself before it was
 * interrupted: the abort handler goes to a copy of the section without the
 * check (labels 6-10, a section of its own).  If the copy finds no room
 * (the CPU's slab was swapped out by a drain meanwhile) it clears word 1
 * before going to the slow path, which would otherwise take its own mark
 * for a double free.  A double free that a preemption catches inside the
 * window goes unreported there (or is reported later as a corrupted block):
 * the check is best effort, as it is for two threads freeing one block at
 * once. */
#define SA_PUSH_MARKED_BODY(full)                                               \
    "movzwl (%%rax,%[off]), %%ecx\n\t"                                          \
    "cmpw 10(%%rax,%[off]), %%cx\n\t"                                           \
    "jae " full "\n\t"                                                          \
    "movq (%[blk]), %%r11\n\t"                                                  \
    "xorq %[blk], %%r11\n\t"                                                    \
    "xorq sa_mark_key(%%rip), %%r11\n\t"

#define SA_PUSH_MARKED_COMMIT                                                   \
    "movq %%r11, 8(%[blk])\n\t"                                                 \
    "movq %[blk], (%%rax,%%rcx,8)\n\t"                                          \
    "addq $1, (%%rax,%[off])\n\t"

#define SA_SLAB_PUSH_MARKED(off_, block_, full_)                               \
    __asm__ goto("0:\n\t" SA_RSEQ_START("3f", "1", "%%rax", "%%eax")           \
                 SA_PUSH_MARKED_BODY("%l[" #full_ "]")                          \
                 "cmpq %%r11, 8(%[blk])\n\t"                                    \
                 "je %l[" #full_ "]\n\t"                                        \
                 SA_PUSH_MARKED_COMMIT                                          \
                 SA_RSEQ_EPILOGUE_TO("6f")                                      \
                 ".pushsection .text.unlikely.sa_rseq, \"ax\"\n\t"              \
                 "6:\n\t" SA_RSEQ_START("8f", "7", "%%rax", "%%eax")            \
                 SA_PUSH_MARKED_BODY("11f")                                     \
                 SA_PUSH_MARKED_COMMIT                                          \
                 "9:\n\t"                                                       \
                 "jmp 2b\n\t"                                                   \
                 "11:\n\t"                                                      \
                 "movq $0, 8(%[blk])\n\t"                                       \
                 "jmp %l[" #full_ "]\n\t"                                       \
                 SA_RSEQ_ABORT("10", "6b")                                      \
                 ".popsection\n\t"                                              \
                 SA_RSEQ_DESC("8", "7b", "9b", "10b")                           \
                 : /* none */                                                   \
                 : [area] "r"(sa_tls.cpu), [off] "r"((uintptr_t)(off_)),        \
                   [base] "r"(sa_tls.table), [blk] "r"(block_)                  \
                 : "memory", "cc", "rax", "rcx", "r11"                          \
                 : full_)

/* The batch sections (slow paths: a refill's blocks onto the slab, a
 * flush's off it): up to n pointers copied between the class's slots and
 * the caller's array, then one commit that moves cur by the count, as that
 * many single pushes or pops (delta -1: no malloc counted) would.  The
 * copy runs inside the section: restarted, it copies again from the top,
 * on whatever slab the CPU then has (a push's stores above cur, or a pop's
 * copies into the array, are seen by nobody until the commit).  No room
 * (or no block) leaves through label 5 with the count 0.  n > 0: the copy
 * loop tests at its end. */
#define SA_RSEQ_ZERO_COUNT_STUB                                      \
    ".pushsection .text.unlikely.sa_rseq, \"ax\"\n\t"                \
    "5:\n\t"                                                         \
    "xorl %k[k], %k[k]\n\t"                                          \
    "jmp 2b\n\t"                                                     \
    ".popsection\n\t"

/* The copy loop: k words from src[] to dst[], k > 0. */
#define SA_RSEQ_COPY_LOOP                                            \
    "xorl %k[i], %k[i]\n\t"                                          \
    "6:\n\t"                                                         \
    "movq (%[src],%[i],8), %[tmp]\n\t"                               \
    "movq %[tmp], (%[dst],%[i],8)\n\t"                               \
    "incl %k[i]\n\t"                                                 \
    "cmpl %k[k], %k[i]\n\t"                                          \
    "jb 6b\n\t"

static inline uint32_t sa_slab_push_batch(size_t off, void *const *blocks, uint32_t n)
{
    uintptr_t slab, cur, k, dst, i, tmp;
    __asm__ volatile(SA_RSEQ_PROLOGUE("%[slab]", "%k[slab]")
                     "movzwl (%[slab],%[off]), %k[cur]\n\t"
                     "movzwl 10(%[slab],%[off]), %k[k]\n\t"
                     "subl %k[cur], %k[k]\n\t" /* room: end - cur */
                     "jbe 5f\n\t"
                     "cmpl %k[n], %k[k]\n\t"
                     "cmoval %k[n], %k[k]\n\t"
                     "leaq (%[slab],%[cur],8), %[dst]\n\t"
                     SA_RSEQ_COPY_LOOP
                     "addq %[k], (%[slab],%[off])\n\t"
                     SA_RSEQ_EPILOGUE_TO("0b") SA_RSEQ_ZERO_COUNT_STUB
                     : [slab] "=&r"(slab), [cur] "=&r"(cur), [k] "=&r"(k), [dst] "=&r"(dst),
                       [i] "=&r"(i), [tmp] "=&r"(tmp)
                     : [area] "r"(sa_tls.cpu), [off] "r"((uintptr_t)off), [base] "r"(sa_tls.table),
                       [src] "r"(blocks), [n] "r"(n)
                     : "memory", "cc");
    (void)slab, (void)cur, (void)dst, (void)i, (void)tmp;
    return (uint32_t)k;
}

static inline uint32_t sa_slab_pop_batch(size_t off, void **blocks, uint32_t n)
{
    uintptr_t slab, cur, k, src, i, tmp;
    __asm__ volatile(SA_RSEQ_PROLOGUE("%[slab]", "%k[slab]")
                     "movzwl (%[slab],%[off]), %k[cur]\n\t"
                     "movzwl 8(%[slab],%[off]), %k[tmp]\n\t"
                     "movl %k[cur], %k[k]\n\t"
                     "subl %k[tmp], %k[k]\n\t" /* cached: cur - begin */
                     "jbe 5f\n\t"
                     "cmpl %k[n], %k[k]\n\t"
                     "cmoval %k[n], %k[k]\n\t"
                     "subl %k[k], %k[cur]\n\t" /* the lowest slot taken */
                     "leaq (%[slab],%[cur],8), %[src]\n\t"
                     SA_RSEQ_COPY_LOOP
                     "subq %[k], (%[slab],%[off])\n\t"
                     SA_RSEQ_EPILOGUE_TO("0b") SA_RSEQ_ZERO_COUNT_STUB
                     : [slab] "=&r"(slab), [cur] "=&r"(cur), [k] "=&r"(k), [src] "=&r"(src),
                       [i] "=&r"(i), [tmp] "=&r"(tmp)
                     : [area] "r"(sa_tls.cpu), [off] "r"((uintptr_t)off), [base] "r"(sa_tls.table),
                       [dst] "r"(blocks), [n] "r"(n)
                     : "memory", "cc");
    (void)slab, (void)cur, (void)src, (void)i, (void)tmp;
    return (uint32_t)k;
}

#else /* the per-thread fallback only: the same operations in C */

static inline char *sa_slab_current(void)
{
    return sa_tls.table[sa_tls.cpu->cpu_id_start];
}

/* Both operations start from the current slab's header of the class:
 * sa_s_ (the slab), sa_h_ (the header), sa_w_ (its word), sa_cur_. */
#define SA_SLAB_READ_HEADER(off)                                                \
    char *sa_s_ = sa_slab_current();                                            \
    struct sa_slab_class *sa_h_ = sa_slab_class_at(sa_s_, (off));               \
    uint64_t sa_w_ = SA_PEER_READ(sa_h_->word);                                 \
    uint16_t sa_cur_ = (uint16_t)(sa_w_ & SA_SLAB_CUR_MASK)

#define SA_SLAB_POP(off, delta, result, slab_out, empty)                       \
    do {                                                                        \
        SA_SLAB_READ_HEADER(off);                                               \
        if (SA_UNLIKELY(sa_cur_ <= sa_h_->begin))                               \
            goto empty;                                                         \
        (result) = sa_slab_slots(sa_s_)[sa_cur_ - 1];                           \
        __atomic_store_n(&sa_h_->word, sa_w_ + (uint64_t)(int64_t)(delta), __ATOMIC_RELAXED); \
        (slab_out) = sa_s_;                                                     \
    } while (0)

#define SA_SLAB_PUSH_BODY(off, block, slab_out, full, extra)                   \
    do {                                                                        \
        SA_SLAB_READ_HEADER(off);                                               \
        if (SA_UNLIKELY(sa_cur_ >= sa_h_->end))                                 \
            goto full;                                                          \
        extra;                                                                  \
        sa_slab_slots(sa_s_)[sa_cur_] = (block);                                \
        __atomic_store_n(&sa_h_->word, sa_w_ + 1, __ATOMIC_RELAXED);            \
        (slab_out) = sa_s_;                                                     \
    } while (0)

#define SA_SLAB_PUSH_MARKED(off, block, full)                                   \
    do {                                                                        \
        char *sa_ign_;                                                          \
        SA_SLAB_PUSH_BODY(off, block, sa_ign_, full, {                          \
            uintptr_t *sa_b_ = (uintptr_t *)(block);                            \
            uintptr_t sa_mark_ = sa_b_[0] ^ (uintptr_t)sa_b_ ^ sa_mark_key;     \
            if (SA_UNLIKELY(sa_b_[1] == sa_mark_))                              \
                goto full;                                                      \
            sa_b_[1] = sa_mark_;                                                \
        });                                                                     \
        (void)sa_ign_;                                                          \
    } while (0)


static inline uint32_t sa_slab_push_batch(size_t off, void *const *blocks, uint32_t n)
{
    SA_SLAB_READ_HEADER(off);
    uint32_t k = sa_cur_ < sa_h_->end ? (uint32_t)(sa_h_->end - sa_cur_) : 0;
    k = k < n ? k : n;
    for (uint32_t i = 0; i < k; i++)
        sa_slab_slots(sa_s_)[sa_cur_ + i] = blocks[i];
    if (k != 0)
        __atomic_store_n(&sa_h_->word, sa_w_ + k, __ATOMIC_RELAXED);
    return k;
}

static inline uint32_t sa_slab_pop_batch(size_t off, void **blocks, uint32_t n)
{
    SA_SLAB_READ_HEADER(off);
    uint32_t k = sa_cur_ > sa_h_->begin ? (uint32_t)(sa_cur_ - sa_h_->begin) : 0;
    k = k < n ? k : n;
    for (uint32_t i = 0; i < k; i++)
        blocks[i] = sa_slab_slots(sa_s_)[sa_cur_ - k + i];
    if (k != 0)
        __atomic_store_n(&sa_h_->word, sa_w_ - k, __ATOMIC_RELAXED);
    return k;
}

#endif

/* ---- Per-CPU mode (alloc/percpu.c) */
/* Whether this process runs per-CPU caches: decided once, on the first
 * thread setup after init (rseq registered, membarrier's rseq fence
 * available, SPANALLOC_PERCPU not off). */
bool sa_percpu_enabled(void);
/* Make the calling thread use the CPU slabs; false if it cannot (its rseq
 * registration failed): it then uses a slab of its own. */
bool sa_percpu_attach_thread(void);
/* Set up the slab of the CPU the thread runs on, if not yet (slow path,
 * after an operation found it all zero). */
void sa_percpu_prepare_current(void);
/* Every set-up CPU slab's blocks back to the mcentrals (free_os_memory,
 * the memory limit). */
void sa_percpu_drain_all(void);
/* Scavenger hook: drain the slab of each CPU that did no cache operation
 * since the previous call.  Returns the number of CPU caches drained. */
unsigned sa_percpu_drain_idle(void);
unsigned sa_percpu_cpus_ready(void);
unsigned sa_percpu_ncpus(void);
char *sa_percpu_slab_of(unsigned cpu); /* NULL unless set up */
uint64_t sa_percpu_sys_bytes(void);
void sa_percpu_fold_stats(uint64_t *mallocs, uint64_t *arrivals); /* sa_slab_fold each */
void sa_percpu_fork_prepare(void);
void sa_percpu_fork_parent(void);
void sa_percpu_fork_child(void);

/* ---- Shared with mcache.c: the slab layout and the moves to and from the
 * mcentrals. */
size_t sa_slab_bytes(void);               /* one slab, rounded to OS pages */
void sa_slab_init(char *slab, bool full_caps); /* before the slab is published */
uint16_t sa_slab_region_base(unsigned cls);
uint16_t sa_slab_region_cap(unsigned cls);
/* Fold one slab's counters in: per class its mallocs, and its arrivals
 * (cached blocks + mallocs: the frees pushed there plus the blocks refills
 * moved in, minus the blocks flushes took out).  `seen` is updated, so
 * callers serialise. */
void sa_slab_fold(char *slab, uint64_t *mallocs, uint64_t *arrivals);
/* Every block of every class back to the mcentrals.  The caller owns the
 * slab exclusively (its thread, or a CPU slab swapped out and fenced);
 * may_wait false if it holds the drain lock (sa_mcentral_move_begin). */
void sa_slab_flush_exclusive(char *slab, bool may_wait);

#endif /* SPANALLOC_PERCPU_H */
