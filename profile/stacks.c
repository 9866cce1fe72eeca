/*
 * stacks.c: the stack of a sampled allocation.
 *
 * Debian's binaries have no frame pointers, so the stack is unwound from
 * the DWARF call-frame information: by spanalloc's own walker
 * (profile/frames.c, x86-64), which caches each return address's rule in
 * one fixed process-wide table and takes no lock, and by libgcc's
 * _Unwind_Backtrace for a stack with a frame the walker does not handle (a
 * signal frame, a CFA given by an expression) and on other architectures.
 * Why not libunwind, which this file used before: about 100 KiB of
 * per-thread cache resident in every thread that sampled once, and the
 * loader's lock on a cache miss, which fork had to be kept away from (docs/
 * design.md).  Neither unwinder is called with a lock of spanalloc's held,
 * neither allocates, and neither takes a lock a fork or a signal could leave
 * held (libgcc finds FDEs with glibc's lock-free _dl_find_object); if one
 * ever called malloc, the sampler's reentry guard would serve that call
 * unsampled.
 *
 * Dropped: the sampler's own frames and, when spanalloc is a shared object,
 * every frame in spanalloc's own text that leads into it (malloc, calloc,
 * realloc, ...), so that a profile's leaf is the program's call to malloc.
 * When spanalloc is linked into the executable (the unit tests), the
 * sampler's frames are dropped and the entry point's frame stays.
 */
#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/auxv.h>
#include <unwind.h>

#include "../alloc/internal.h"
#include "profile_internal.h"

extern const ElfW(Ehdr) __ehdr_start; /* this object's ELF header (the linker's) */

#define MAX_TEXT_RANGES 4
static uintptr_t own_text[MAX_TEXT_RANGES][2];
static unsigned own_text_n;
static _Atomic int own_text_state; /* 0 unknown, 1 computing, 2 known */

/* The executable segments of the object holding this code, from its own
 * program headers in memory: no loader call, no lock. */
static void find_own_text(void)
{
    int expected = 0;
    if (!atomic_compare_exchange_strong(&own_text_state, &expected, 1))
        return; /* another thread is at it; its frames stay in this stack */
    const ElfW(Ehdr) *eh = &__ehdr_start;
    const ElfW(Phdr) *ph = (const ElfW(Phdr) *)((const char *)eh + eh->e_phoff);
    bool is_main = (uintptr_t)ph == getauxval(AT_PHDR);
    uintptr_t bias = (uintptr_t)eh;
    for (unsigned i = 0; i < eh->e_phnum; i++)
        if (ph[i].p_type == PT_LOAD && ph[i].p_offset == 0) {
            bias = (uintptr_t)eh - ph[i].p_vaddr;
            break;
        }
    for (unsigned i = 0; !is_main && i < eh->e_phnum && own_text_n < MAX_TEXT_RANGES; i++)
        if (ph[i].p_type == PT_LOAD && (ph[i].p_flags & PF_X)) {
            own_text[own_text_n][0] = bias + ph[i].p_vaddr;
            own_text[own_text_n][1] = bias + ph[i].p_vaddr + ph[i].p_memsz;
            own_text_n++;
        }
    atomic_store_explicit(&own_text_state, 2, memory_order_release);
}

static bool in_own_text(uintptr_t pc)
{
    if (atomic_load_explicit(&own_text_state, memory_order_acquire) != 2)
        return false;
    for (unsigned i = 0; i < own_text_n; i++)
        if (pc >= own_text[i][0] && pc < own_text[i][1])
            return true;
    return false;
}

struct walk {
    uintptr_t *pcs;
    unsigned n, max;
    uintptr_t above_cfa;
};

static _Unwind_Reason_Code on_frame(struct _Unwind_Context *uc, void *arg)
{
    struct walk *w = arg;
    /* libgcc reports, with each frame's pc, the CFA of the frame it called
     * (the caller's stack pointer at the call): below the sampler's CFA are
     * the sampler's own frames; at it, the frame that called the sampler. */
    if (_Unwind_GetCFA(uc) < w->above_cfa)
        return _URC_NO_REASON;
    int before_insn = 0;
    uintptr_t pc = _Unwind_GetIPInfo(uc, &before_insn);
    if (pc == 0)
        return _URC_END_OF_STACK;
    if (w->n == 0 && in_own_text(pc))
        return _URC_NO_REASON; /* malloc and the entry points above the sampler */
    w->pcs[w->n++] = pc;
    return w->n == w->max ? _URC_END_OF_STACK : _URC_NO_REASON;
}

SA_NOINLINE const uintptr_t *sa_stack_capture(uintptr_t *buf, unsigned max, struct sa_frame from,
                                              unsigned *depth)
{
    if (SA_UNLIKELY(atomic_load_explicit(&own_text_state, memory_order_relaxed) == 0))
        find_own_text();
    /* Walked into buf with room for the leading frames in spanalloc's
     * text, which the answer then starts after (no copy). */
    int got = sa_frames_capture_from(from, buf, max + SA_STACK_LEAD);
    if (got >= 0) {
        unsigned i = 0;
        while (i < (unsigned)got && in_own_text(buf[i]))
            i++;
        unsigned n = (unsigned)got - i;
        *depth = n < max ? n : max;
        return buf + i;
    }
    struct walk w = {buf, 0, max, from.sp};
    _Unwind_Backtrace(on_frame, &w);
    *depth = w.n;
    return buf;
}

const char *sa_stack_symbol(uintptr_t pc, uintptr_t *offset)
{
    Dl_info info;
    if (dladdr((void *)(pc - 1), &info) == 0) {
        *offset = pc;
        return "?";
    }
    if (info.dli_sname != NULL) {
        *offset = pc - (uintptr_t)info.dli_saddr;
        return info.dli_sname;
    }
    if (info.dli_fname != NULL) {
        *offset = pc - (uintptr_t)info.dli_fbase;
        return info.dli_fname;
    }
    *offset = pc;
    return "?";
}
