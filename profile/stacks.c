/*
 * stacks.c: the stack of a sampled allocation.
 *
 * Debian's binaries have no frame pointers, so the stack is unwound from
 * the DWARF call-frame information.  Two unwinders were measured (docs/
 * design.md, docs/benchmarks.md): libunwind's unw_backtrace keeps a
 * per-thread cache of each return address's frame rule and walks a stack of
 * 6 to 32 frames in 0.04 to 0.27 us; libgcc's _Unwind_Backtrace interprets
 * the CFI again for every frame, 3 to 15 us, which alone would cost more
 * than the 2% the profile may take from a churning program at the default
 * rate.  So libunwind (Debian's libunwind8) when the build finds it, libgcc
 * otherwise.  Neither is called with a lock of spanalloc's held, and neither
 * allocates from the heap in the common case; if either calls malloc, the
 * sampler's reentry guard serves that call unsampled.  What each takes:
 * libunwind, on a cache miss, glibc's dl_iterate_phdr (the loader's
 * recursive lock) and its own locks with signals blocked; libgcc, glibc's
 * lock-free _dl_find_object.
 *
 * Dropped: the sampler's own frames and, when spanalloc is a shared object,
 * every frame in spanalloc's own text that leads into it (malloc, calloc,
 * realloc, ...), so that a profile's leaf is the program's call to malloc.
 * When spanalloc is linked into the executable (the unit tests), the
 * sampler's frames are dropped by count and the entry point's frame stays.
 */
#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <sched.h>
#include <stdatomic.h>
#include <sys/auxv.h>
#include <unwind.h>
#ifdef SA_HAVE_LIBUNWIND
#define UNW_LOCAL_ONLY
#include <libunwind.h>
#endif

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

/* ---- The fork gate
 *
 * libunwind takes locks of its own, and the loader's, on a cache miss; a
 * fork while another thread held one would leave it held in the child.  So
 * fork's prepare handler (before it takes any allocator lock) raises
 * `forking` and waits until no thread is inside libunwind; a sampler that
 * finds the gate raised unwinds with libgcc instead, which takes no lock.
 * The wait is short (one stack walk) and cannot deadlock: an unwinder may
 * call malloc, and no allocator lock is held yet.  Sequentially consistent
 * on both sides (each writes one flag and reads the other's). */
static _Atomic unsigned unwinders;
static _Atomic bool forking;
/* A signal handler that forks while its thread is inside libunwind must not
 * wait for itself. */
static __thread bool self_unwinding __attribute__((tls_model("initial-exec")));

void sa_stack_fork_prepare(void)
{
    atomic_store(&forking, true);
    while (atomic_load(&unwinders) > (self_unwinding ? 1u : 0u))
        sched_yield();
}

void sa_stack_fork_parent(void)
{
    atomic_store(&forking, false);
}

void sa_stack_fork_child(void)
{
    atomic_store(&unwinders, 0);
    atomic_store(&forking, false);
}

/* Frames of the sampler itself (sa_stack_capture, sample, sa_profile_malloc:
 * none inlined into another) that unw_backtrace reports first. */
#define SAMPLER_FRAMES 3

#ifdef SA_HAVE_LIBUNWIND
static unsigned capture_libunwind(uintptr_t *pcs, unsigned max)
{
    void *raw[SA_PROF_MAX_DEPTH + SAMPLER_FRAMES + 8];
    unsigned cap = max + SAMPLER_FRAMES + 8;
    if (cap > sizeof(raw) / sizeof(raw[0]))
        cap = sizeof(raw) / sizeof(raw[0]);
    int r = unw_backtrace(raw, (int)cap);
    unsigned got = r > 0 ? (unsigned)r : 0;
    unsigned i = got > SAMPLER_FRAMES ? SAMPLER_FRAMES : got;
    while (i < got && in_own_text((uintptr_t)raw[i]))
        i++;
    unsigned n = 0;
    for (; i < got && n < max; i++)
        pcs[n++] = (uintptr_t)raw[i];
    return n;
}
#endif

SA_NOINLINE unsigned sa_stack_capture(uintptr_t *pcs, unsigned max, uintptr_t above_cfa)
{
    if (SA_UNLIKELY(atomic_load_explicit(&own_text_state, memory_order_relaxed) == 0))
        find_own_text();
#ifdef SA_HAVE_LIBUNWIND
    /* Under memcheck, libunwind's probe of each address (a write() of stack
     * bytes it did not initialise) is reported as an error; speed does not
     * matter there, so libgcc unwinds.  While a fork is being prepared,
     * libgcc unwinds too (see the fork gate below). */
    if (!sa_on_valgrind) {
        atomic_fetch_add(&unwinders, 1);
        if (!atomic_load(&forking)) {
            self_unwinding = true;
            unsigned n = capture_libunwind(pcs, max);
            self_unwinding = false;
            atomic_fetch_sub(&unwinders, 1);
            return n;
        }
        atomic_fetch_sub(&unwinders, 1);
    }
#endif
    struct walk w = {pcs, 0, max, above_cfa};
    _Unwind_Backtrace(on_frame, &w);
    return w.n;
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
