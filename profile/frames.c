/*
 * frames.c: spanalloc's own x86-64 stack walker, from the DWARF call-frame
 * information (.eh_frame) of code built without frame pointers.
 *
 * Why not libunwind (which the profile used before): libunwind's
 * unw_backtrace keeps its cache of frame rules per thread, about 100 KiB
 * resident in every thread that took one sample, so that a server's 1000
 * idle threads held 100 MiB more with the profile on than off; and it takes
 * the loader's lock on a cache miss, which fork had to be kept away from.
 * libgcc's _Unwind_Backtrace has neither problem but interprets the CFI
 * again for every frame (microseconds per stack).  This walker keeps one
 * process-wide rule cache of fixed size and takes no lock at all.
 *
 * A frame is (pc, sp, rbp): pc a return address into the function, sp its
 * stack pointer once the callee returned (the callee's CFA), rbp its frame
 * register.  The rule for pc says CFA = rsp or rbp + offset, the return
 * address is at CFA - 8 and rbp either kept or saved at CFA - k; that is all
 * the CFI gcc and clang emit for ordinary x86-64 functions.  Anything else
 * (a CFA or a register given by a DWARF expression, a signal frame, a CFA
 * on another register, an unknown opcode or augmentation) is "foreign": the
 * walk gives up and the caller unwinds with libgcc, which handles them all.
 *
 * The FDE of a pc comes from the object's .eh_frame_hdr search table;
 * glibc's _dl_find_object (2.35+) gives its address without a lock and is
 * async-signal-safe.  Rules are cached by return address in `rule_cache`, a
 * process-wide table of 64-bit words (each an atomic, whole entry, so a
 * reader sees an entry entirely or not at all; no lock, no per-thread
 * memory, no malloc).  A cached rule stays valid while its code stays
 * mapped: code unloaded by dlclose and other code loaded at the same
 * address would be walked with the old rules (a wrong stack, never a read
 * outside the stack, below).
 *
 * Reads of the stack: only words between the frame's sp and its CFA, and
 * never at or above `hi`: for a thread of glibc's, its thread pointer (its
 * TCB sits at the top of its stack mapping, so [sp, tp) is mapped); for the
 * main thread, the top glibc recorded at start-up (__libc_stack_end, with
 * the argument words above it).  On another stack (a coroutine's, a signal
 * stack) only the step checks apply: each CFA above the last, by at most
 * SA_FRAMES_MAX_FRAME.  A check that fails ends the walk where it is.
 */
#include <dlfcn.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "../alloc/internal.h"
#include "profile_internal.h"

#if defined(__x86_64__) && defined(__linux__)

/* The register state at the return address into the caller:
 * {pc, sp, rbp}, as struct sa_frame.  No frame of its own, so it needs no
 * CFI of interest; its own is given for debuggers. */
__asm__(".text\n"
        ".p2align 4\n"
        ".globl sa_frames_here\n"
        ".hidden sa_frames_here\n"
        ".type sa_frames_here, @function\n"
        "sa_frames_here:\n"
        ".cfi_startproc\n"
        "movq (%rsp), %rax\n"
        "movq %rax, 0(%rdi)\n"
        "leaq 8(%rsp), %rax\n"
        "movq %rax, 8(%rdi)\n"
        "movq %rbp, 16(%rdi)\n"
        "ret\n"
        ".cfi_endproc\n"
        ".size sa_frames_here, .-sa_frames_here\n");
void sa_frames_here(struct sa_frame *out);

extern void *__libc_stack_end; /* glibc's: the main thread's sp at start-up */

enum { REG_RBP = 6, REG_RSP = 7, REG_RA = 16 };

enum rule_kind { RULE_NONE = 0, RULE_WALK = 1, RULE_END = 2, RULE_FOREIGN = 3 };

struct rule {
    enum rule_kind kind;
    bool cfa_on_rbp;    /* CFA = rbp + cfa_off, else rsp + cfa_off */
    bool rbp_saved;     /* the caller's rbp at CFA - rbp_below, else unchanged */
    uint64_t cfa_off;
    uint64_t rbp_below;
};

/* ---- The rule cache: RULE_CACHE_SLOTS words, each
 *   bits 0-1 kind, 2 cfa_on_rbp, 3-19 cfa_off (a multiple of 8, below
 *   1 MiB: the word's bits are the offset's own), 20-28 rbp_below / 8 (0:
 *   rbp unchanged, a saved rbp being at least 16 below the CFA), 29-63
 *   pc >> 12 (user addresses are below 2^47); laid out so that the walk
 *   decodes a field with one or two operations (WORD_*).
 * The slot is a function of pc whose low 12 bits, with pc >> 12, give pc
 * back, so the word names its pc exactly.  Rules that do not fit are not
 * cached (they are worked out again).  Written and read by any thread,
 * relaxed: an entry is a pure function of its pc, so any word read is
 * either the right rule for it or another pc's (which the key rejects). */
#define RULE_CACHE_SLOTS 4096
static _Atomic uint64_t rule_cache[RULE_CACHE_SLOTS];

#define WORD_KIND(w) ((enum rule_kind)((w) & 3))
#define WORD_CFA_ON_RBP(w) (((w) >> 2) & 1)
#define WORD_CFA_OFF(w) ((w) & (uint64_t)0xffff8)
#define WORD_RBP_BELOW(w) (((w) >> 17) & (uint64_t)0xff8)
#define WORD_KEY(w) ((w) >> 29)

static unsigned cache_slot(uintptr_t pc)
{
    return (unsigned)((pc ^ (pc >> 12) ^ (pc >> 24)) & (RULE_CACHE_SLOTS - 1));
}

static bool cache_get(uintptr_t pc, struct rule *r)
{
    uint64_t w = atomic_load_explicit(&rule_cache[cache_slot(pc)], memory_order_relaxed);
    if (WORD_KIND(w) == RULE_NONE || WORD_KEY(w) != (uint64_t)(pc >> 12))
        return false;
    r->kind = WORD_KIND(w);
    r->cfa_on_rbp = WORD_CFA_ON_RBP(w);
    r->cfa_off = WORD_CFA_OFF(w);
    r->rbp_below = WORD_RBP_BELOW(w);
    r->rbp_saved = r->rbp_below != 0;
    return true;
}

static void cache_put(uintptr_t pc, const struct rule *r)
{
    if ((pc >> 47) != 0 || r->cfa_off % 8 != 0 || r->cfa_off > 0xffff8 ||
        r->rbp_below % 8 != 0 || r->rbp_below > 0xff8 || r->rbp_saved != (r->rbp_below != 0))
        return;
    uint64_t w = (uint64_t)r->kind | (uint64_t)r->cfa_on_rbp << 2 | r->cfa_off |
                 (r->rbp_below / 8) << 20 | (uint64_t)(pc >> 12) << 29;
    atomic_store_explicit(&rule_cache[cache_slot(pc)], w, memory_order_relaxed);
}

/* ---- Reading .eh_frame_hdr, CIEs and FDEs, within [p, end) */

struct cursor {
    const uint8_t *p, *end;
    bool bad;
};

static uint64_t read_fixed(struct cursor *c, unsigned n)
{
    if (c->bad || (size_t)(c->end - c->p) < n) {
        c->bad = true;
        return 0;
    }
    uint64_t v = 0;
    memcpy(&v, c->p, n); /* little-endian */
    c->p += n;
    return v;
}

/* A LEB128 number's bits; *sign_fill gets the bits an sleb128 sets above
 * them when its last byte's sign bit (0x40) is set, else 0. */
static uint64_t read_leb(struct cursor *c, uint64_t *sign_fill)
{
    uint64_t v = 0;
    for (unsigned shift = 0; !c->bad; shift += 7) {
        if (c->p >= c->end || shift > 63) {
            c->bad = true;
            break;
        }
        uint8_t b = *c->p++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *sign_fill = shift + 7 < 64 && (b & 0x40) ? ~(uint64_t)0 << (shift + 7) : 0;
            return v;
        }
    }
    *sign_fill = 0;
    return 0;
}

static uint64_t read_uleb(struct cursor *c)
{
    uint64_t unused;
    return read_leb(c, &unused);
}

static int64_t read_sleb(struct cursor *c)
{
    uint64_t fill;
    uint64_t v = read_leb(c, &fill);
    return (int64_t)(v | fill);
}

enum {
    PE_OMIT = 0xff,
    PE_FORMAT = 0x0f,
    PE_APPLY = 0x70,
    PE_PCREL = 0x10,
    PE_DATAREL = 0x30,
    PE_INDIRECT = 0x80,
};

/* A pointer in encoding enc (DW_EH_PE_*); `apply` false for a length
 * (an FDE's address range), which has the format only.  Indirect pointers
 * are returned undereferenced (only a personality routine, which is
 * skipped, is one).  datarel is relative to the .eh_frame_hdr. */
static uint64_t read_encoded(struct cursor *c, uint8_t enc, bool apply, uintptr_t datarel)
{
    uintptr_t at = (uintptr_t)c->p;
    uint64_t v;
    switch (enc & PE_FORMAT) {
    case 0x00: v = read_fixed(c, 8); break;                          /* absptr */
    case 0x01: v = read_uleb(c); break;                              /* uleb128 */
    case 0x02: v = read_fixed(c, 2); break;                          /* udata2 */
    case 0x03: v = read_fixed(c, 4); break;                          /* udata4 */
    case 0x04: v = read_fixed(c, 8); break;                          /* udata8 */
    case 0x09: v = (uint64_t)read_sleb(c); break;                    /* sleb128 */
    case 0x0a: v = (uint64_t)(int64_t)(int16_t)read_fixed(c, 2); break; /* sdata2 */
    case 0x0b: v = (uint64_t)(int64_t)(int32_t)read_fixed(c, 4); break; /* sdata4 */
    case 0x0c: v = read_fixed(c, 8); break;                          /* sdata8 */
    default: c->bad = true; return 0;
    }
    if (!apply)
        return v;
    switch (enc & PE_APPLY) {
    case 0x00: return v;
    case PE_PCREL: return v + at;
    case PE_DATAREL:
        if (datarel != 0)
            return v + datarel;
        break;
    default: break;
    }
    c->bad = true;
    return 0;
}

/* What a CIE says about its FDEs. */
struct cie {
    uint64_t code_align;
    int64_t data_align;
    uint8_t fde_enc;
    bool has_z;
    const uint8_t *insns, *end;
};

static bool parse_cie(const uint8_t *at, const uint8_t *limit, struct cie *cie)
{
    struct cursor c = {at, limit, false};
    uint64_t len = read_fixed(&c, 4);
    if (c.bad || len == 0 || len >= 0xfffffff0u || len > (uint64_t)(limit - c.p))
        return false; /* 64-bit DWARF is not emitted for x86-64 .eh_frame */
    c.end = c.p + len;
    if (read_fixed(&c, 4) != 0) /* a CIE's id */
        return false;
    uint8_t version = (uint8_t)read_fixed(&c, 1);
    if (version != 1 && version != 3 && version != 4)
        return false;
    const char *aug = (const char *)c.p;
    size_t aug_len = strnlen(aug, (size_t)(c.end - c.p));
    if (aug_len == (size_t)(c.end - c.p))
        return false;
    c.p += aug_len + 1;
    if (version == 4 && (read_fixed(&c, 1) != 8 || read_fixed(&c, 1) != 0))
        return false; /* address size 8, no segments */
    cie->code_align = read_uleb(&c);
    cie->data_align = read_sleb(&c);
    uint64_t ra = version == 1 ? read_fixed(&c, 1) : read_uleb(&c);
    if (c.bad || ra != REG_RA)
        return false;
    cie->fde_enc = 0;
    cie->has_z = aug[0] == 'z';
    if (cie->has_z) {
        uint64_t n = read_uleb(&c);
        if (c.bad || n > (uint64_t)(c.end - c.p))
            return false;
        const uint8_t *aug_end = c.p + n;
        for (size_t i = 1; i < aug_len && !c.bad; i++) {
            uint8_t enc;
            switch (aug[i]) {
            case 'R': cie->fde_enc = (uint8_t)read_fixed(&c, 1); break;
            case 'L': (void)read_fixed(&c, 1); break;
            case 'P':
                enc = (uint8_t)read_fixed(&c, 1);
                if ((enc & PE_APPLY) == PE_DATAREL)
                    return false; /* no base for it here, and never emitted */
                (void)read_encoded(&c, enc & (uint8_t)~PE_INDIRECT, false, 0);
                break;
            default: return false; /* 'S' (a signal frame) and the unknown */
            }
        }
        c.p = aug_end;
    } else if (aug_len != 0) {
        return false;
    }
    cie->insns = c.p;
    cie->end = c.end;
    return !c.bad;
}

/* ---- The CFA program: the rules of the row that covers `target`, for the
 * registers the walk needs (rbp and the return address). */

enum reg_how { HOW_SAME = 0, HOW_UNDEF, HOW_AT_CFA, HOW_OTHER };

struct row {
    uint64_t cfa_reg;
    int64_t cfa_off;
    bool cfa_expr;
    uint8_t how[2]; /* [0] rbp, [1] return address */
    int64_t off[2];
};

#define REMEMBER_DEPTH 8

struct program {
    struct row row, initial, stack[REMEMBER_DEPTH];
    unsigned depth;
    uintptr_t loc;
    bool foreign;
};

static int tracked(uint64_t reg)
{
    return reg == REG_RBP ? 0 : reg == REG_RA ? 1 : -1;
}

static void set_how(struct program *pr, uint64_t reg, uint8_t how, int64_t off)
{
    int i = tracked(reg);
    if (i >= 0) {
        pr->row.how[i] = how;
        pr->row.off[i] = off;
    }
}

/* Runs [c) until the location passes target (true: target reached or the
 * program ended; false: a malformed or foreign program). */
static bool run_program(struct program *pr, struct cursor *c, const struct cie *cie,
                        uintptr_t target, uintptr_t datarel)
{
    while (c->p < c->end && !c->bad) {
        uint8_t op = *c->p++;
        uint64_t reg, delta = 0, n;
        int64_t off;
        int i;
        switch (op >> 6) {
        case 1: delta = (op & 0x3f) * cie->code_align; goto advance;
        case 2:
            set_how(pr, op & 0x3f, HOW_AT_CFA, (int64_t)read_uleb(c) * cie->data_align);
            continue;
        case 3:
            i = tracked(op & 0x3f);
            if (i >= 0) {
                pr->row.how[i] = pr->initial.how[i];
                pr->row.off[i] = pr->initial.off[i];
            }
            continue;
        default: break;
        }
        switch (op) {
        case 0x00: continue; /* nop */
        case 0x01: {         /* set_loc */
            uintptr_t to = (uintptr_t)read_encoded(c, cie->fde_enc, true, datarel);
            if (to > target)
                return !c->bad;
            pr->loc = to;
            continue;
        }
        case 0x02: delta = read_fixed(c, 1) * cie->code_align; goto advance;
        case 0x03: delta = read_fixed(c, 2) * cie->code_align; goto advance;
        case 0x04: delta = read_fixed(c, 4) * cie->code_align; goto advance;
        case 0x05: /* offset_extended */
            reg = read_uleb(c);
            set_how(pr, reg, HOW_AT_CFA, (int64_t)read_uleb(c) * cie->data_align);
            continue;
        case 0x06: /* restore_extended */
            i = tracked(read_uleb(c));
            if (i >= 0) {
                pr->row.how[i] = pr->initial.how[i];
                pr->row.off[i] = pr->initial.off[i];
            }
            continue;
        case 0x07: set_how(pr, read_uleb(c), HOW_UNDEF, 0); continue;
        case 0x08: set_how(pr, read_uleb(c), HOW_SAME, 0); continue;
        case 0x09: /* register: the value is in another register */
            reg = read_uleb(c);
            (void)read_uleb(c);
            set_how(pr, reg, HOW_OTHER, 0);
            continue;
        case 0x0a: /* remember_state (the whole row, CFA too, as gcc means it) */
            if (pr->depth == REMEMBER_DEPTH)
                return false;
            pr->stack[pr->depth++] = pr->row;
            continue;
        case 0x0b: /* restore_state */
            if (pr->depth == 0)
                return false;
            pr->row = pr->stack[--pr->depth];
            continue;
        case 0x0c: /* def_cfa */
            pr->row.cfa_reg = read_uleb(c);
            pr->row.cfa_off = (int64_t)read_uleb(c);
            pr->row.cfa_expr = false;
            continue;
        case 0x0d: /* def_cfa_register */
            pr->row.cfa_reg = read_uleb(c);
            pr->row.cfa_expr = false;
            continue;
        case 0x0e: pr->row.cfa_off = (int64_t)read_uleb(c); continue; /* def_cfa_offset */
        case 0x0f:                                                    /* def_cfa_expression */
            n = read_uleb(c);
            if (n > (uint64_t)(c->end - c->p))
                return false;
            c->p += n;
            pr->row.cfa_expr = true;
            continue;
        case 0x10: /* expression */
        case 0x16: /* val_expression */
            reg = read_uleb(c);
            n = read_uleb(c);
            if (c->bad || n > (uint64_t)(c->end - c->p))
                return false;
            c->p += n;
            set_how(pr, reg, HOW_OTHER, 0);
            continue;
        case 0x11: /* offset_extended_sf */
            reg = read_uleb(c);
            set_how(pr, reg, HOW_AT_CFA, read_sleb(c) * cie->data_align);
            continue;
        case 0x12: /* def_cfa_sf */
            pr->row.cfa_reg = read_uleb(c);
            pr->row.cfa_off = read_sleb(c) * cie->data_align;
            pr->row.cfa_expr = false;
            continue;
        case 0x13: pr->row.cfa_off = read_sleb(c) * cie->data_align; continue; /* def_cfa_offset_sf */
        case 0x14: /* val_offset */
            reg = read_uleb(c);
            (void)read_uleb(c);
            set_how(pr, reg, HOW_OTHER, 0);
            continue;
        case 0x15: /* val_offset_sf */
            reg = read_uleb(c);
            (void)read_sleb(c);
            set_how(pr, reg, HOW_OTHER, 0);
            continue;
        case 0x2e: (void)read_uleb(c); continue; /* GNU_args_size */
        case 0x2f:                               /* GNU_negative_offset_extended */
            reg = read_uleb(c);
            off = -(int64_t)read_uleb(c) * cie->data_align;
            set_how(pr, reg, HOW_AT_CFA, off);
            continue;
        default: return false;
        }
    advance:
        if (pr->loc + delta > target)
            return !c->bad;
        pr->loc += delta;
    }
    return !c->bad;
}

static struct rule rule_from_row(const struct row *row)
{
    struct rule r = {RULE_FOREIGN, false, false, 0, 0};
    if (row->how[1] == HOW_UNDEF) {
        r.kind = RULE_END; /* the outermost frame (_start, a thread's start) */
        return r;
    }
    if (row->cfa_expr || (row->cfa_reg != REG_RSP && row->cfa_reg != REG_RBP) ||
        row->cfa_off < 8 || row->how[1] != HOW_AT_CFA || row->off[1] != -8)
        return r;
    if (row->how[0] == HOW_AT_CFA) {
        if (row->off[0] > -16) /* below the return address, inside the frame */
            return r;
        r.rbp_saved = true;
        r.rbp_below = (uint64_t)-row->off[0];
    } else if (row->how[0] == HOW_OTHER) {
        return r;
    }
    r.kind = RULE_WALK;
    r.cfa_on_rbp = row->cfa_reg == REG_RBP;
    r.cfa_off = (uint64_t)row->cfa_off;
    return r;
}

/* The FDE covering target in the object described by its .eh_frame_hdr,
 * by binary search of the header's table; NULL if none covers it. */
static const uint8_t *find_fde(const uint8_t *hdr, const uint8_t *limit, uintptr_t target,
                               bool *foreign)
{
    struct cursor c = {hdr, limit, false};
    uint8_t version = (uint8_t)read_fixed(&c, 1);
    uint8_t ptr_enc = (uint8_t)read_fixed(&c, 1);
    uint8_t count_enc = (uint8_t)read_fixed(&c, 1);
    uint8_t table_enc = (uint8_t)read_fixed(&c, 1);
    if (c.bad || version != 1 || ptr_enc == PE_OMIT || count_enc == PE_OMIT ||
        table_enc != (PE_DATAREL | 0x0b)) {
        *foreign = true; /* no table to search: libgcc scans .eh_frame */
        return NULL;
    }
    (void)read_encoded(&c, ptr_enc, true, (uintptr_t)hdr);
    uint64_t count = read_encoded(&c, count_enc, true, (uintptr_t)hdr);
    if (c.bad || count > (uint64_t)(limit - c.p) / 8) {
        *foreign = true;
        return NULL;
    }
    const uint8_t *table = c.p;
    uint64_t lo = 0, hi = count;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        int32_t start;
        memcpy(&start, table + mid * 8, 4);
        if ((uintptr_t)hdr + (intptr_t)start <= target)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return NULL;
    int32_t fde;
    memcpy(&fde, table + (lo - 1) * 8 + 4, 4);
    return hdr + fde;
}

/* The rule of the frame whose return address is pc (worked out, uncached). */
static struct rule rule_for(uintptr_t pc)
{
    struct rule foreign = {RULE_FOREIGN, false, false, 0, 0};
    struct rule end = {RULE_END, false, false, 0, 0};
    uintptr_t target = pc - 1; /* inside the call, not after it */
    struct dl_find_object dlfo;
    if (_dl_find_object((void *)target, &dlfo) != 0)
        return end; /* code in no object (JIT): libgcc would stop here too */
    if (dlfo.dlfo_eh_frame == NULL)
        return foreign;
    const uint8_t *limit = dlfo.dlfo_map_end;
    const uint8_t *hdr = dlfo.dlfo_eh_frame;
    if (hdr < (const uint8_t *)dlfo.dlfo_map_start || hdr >= limit)
        return foreign;
    bool is_foreign = false;
    const uint8_t *fde = find_fde(hdr, limit, target, &is_foreign);
    if (fde == NULL)
        return is_foreign ? foreign : end;
    if (fde < (const uint8_t *)dlfo.dlfo_map_start || fde >= limit)
        return foreign;
    struct cursor c = {fde, limit, false};
    uint64_t len = read_fixed(&c, 4);
    if (c.bad || len == 0 || len >= 0xfffffff0u || len > (uint64_t)(limit - c.p))
        return foreign;
    c.end = c.p + len;
    const uint8_t *id_at = c.p;
    uint64_t cie_off = read_fixed(&c, 4);
    struct cie cie;
    if (c.bad || cie_off == 0 || cie_off > (uint64_t)(id_at - (const uint8_t *)dlfo.dlfo_map_start) ||
        !parse_cie(id_at - cie_off, limit, &cie))
        return foreign;
    uintptr_t begin = (uintptr_t)read_encoded(&c, cie.fde_enc, true, (uintptr_t)hdr);
    uintptr_t range = (uintptr_t)read_encoded(&c, cie.fde_enc, false, 0);
    if (c.bad)
        return foreign;
    if (target < begin || target - begin >= range)
        return end; /* between functions: no FDE covers it */
    if (cie.has_z) {
        uint64_t n = read_uleb(&c);
        if (c.bad || n > (uint64_t)(c.end - c.p))
            return foreign;
        c.p += n;
    }
    struct program pr;
    memset(&pr, 0, sizeof(pr));
    pr.loc = begin;
    struct cursor ci = {cie.insns, cie.end, false};
    if (!run_program(&pr, &ci, &cie, UINTPTR_MAX, (uintptr_t)hdr))
        return foreign;
    pr.initial = pr.row;
    pr.loc = begin;
    if (!run_program(&pr, &c, &cie, target, (uintptr_t)hdr))
        return foreign;
    return rule_from_row(&pr.row);
}

static struct rule rule_cached(uintptr_t pc)
{
    struct rule r;
    if (cache_get(pc, &r))
        return r;
    r = rule_for(pc);
    cache_put(pc, &r);
    return r;
}

/* One word of the stack.  The walk's own checks bound the address; the
 * sanitizers would see a read of another function's frame, so there it is
 * a call to an uninstrumented function; elsewhere a plain (volatile) load. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define PEEK_OUT_OF_LINE 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define PEEK_OUT_OF_LINE 1
#endif
#endif
#ifdef PEEK_OUT_OF_LINE
__attribute__((no_sanitize_address, no_sanitize_thread, noinline))
#else
inline __attribute__((always_inline))
#endif
static uintptr_t peek(uintptr_t at)
{
    return *(const volatile uintptr_t *)at;
}

/* The rule of a pc the cache did not answer for with a walkable rule:
 * worked out (and cached) if missing, else the cached END or FOREIGN. */
static SA_NOINLINE struct rule rule_uncached(uintptr_t pc)
{
    return rule_cached(pc);
}

int sa_frames_walk(struct sa_frame f, uintptr_t hi, uintptr_t above, uintptr_t *pcs,
                   unsigned max)
{
    unsigned n = 0;
    while (n < max) {
        if (f.pc == 0)
            break;
        if (f.sp >= above)
            pcs[n++] = f.pc;
        /* The cache's word for pc, decoded in place when it is a walkable
         * rule (the common case); anything else by rule_uncached. */
        uint64_t w = atomic_load_explicit(&rule_cache[cache_slot(f.pc)], memory_order_relaxed);
        bool hit = WORD_KEY(w) == (uint64_t)(f.pc >> 12);
        uint64_t cfa_off, rbp_below;
        bool cfa_on_rbp;
        if (SA_LIKELY(hit && WORD_KIND(w) == RULE_WALK)) {
            cfa_on_rbp = WORD_CFA_ON_RBP(w);
            cfa_off = WORD_CFA_OFF(w);
            rbp_below = WORD_RBP_BELOW(w);
        } else if (hit && WORD_KIND(w) == RULE_END) {
            break; /* the outermost frame */
        } else {
            struct rule r = rule_uncached(f.pc);
            if (r.kind == RULE_END)
                break;
            if (r.kind != RULE_WALK)
                return -1;
            cfa_on_rbp = r.cfa_on_rbp;
            cfa_off = r.cfa_off;
            rbp_below = r.rbp_saved ? r.rbp_below : 0;
        }
        uintptr_t cfa = (cfa_on_rbp ? f.rbp : f.sp) + cfa_off;
        /* The frame lies in [sp, cfa): above the last, within the stack, at
         * least the return address (cfa - sp in [8, SA_FRAMES_MAX_FRAME]:
         * one unsigned compare, which a cfa at or below sp fails too). */
        uintptr_t size = cfa - f.sp;
        if (size - 8 > SA_FRAMES_MAX_FRAME - 8 || cfa > hi)
            break;
        if (rbp_below != 0) { /* saved: rbp_below >= 16, under the return address */
            if (rbp_below > size)
                break;
            f.rbp = peek(cfa - rbp_below);
        }
        f.pc = peek(cfa - 8);
        f.sp = cfa;
    }
    return (int)n;
}

/* The top of the current thread's stack, or UINTPTR_MAX if unknown. */
static uintptr_t stack_top(uintptr_t sp)
{
    uintptr_t tp;
    __asm__("movq %%fs:0, %0" : "=r"(tp)); /* the TCB's pointer to itself */
    if (sp < tp && tp - sp <= SA_FRAMES_MAX_STACK)
        return tp;
    uintptr_t start = (uintptr_t)__libc_stack_end;
    if (start != 0 && sp < start && start - sp <= SA_FRAMES_MAX_STACK)
        return start + 64; /* argc and the argv, envp and auxv arrays above it */
    return UINTPTR_MAX;
}

SA_NOINLINE int sa_frames_capture(uintptr_t *pcs, unsigned max, uintptr_t above)
{
    struct sa_frame f;
    sa_frames_here(&f);
    return sa_frames_walk(f, stack_top(f.sp), above, pcs, max);
}

int sa_frames_capture_from(struct sa_frame from, uintptr_t *pcs, unsigned max)
{
    if (from.pc == 0)
        return sa_frames_capture(pcs, max, from.sp);
    return sa_frames_walk(from, stack_top(from.sp), from.sp, pcs, max);
}

#else /* not x86-64 Linux: libgcc unwinds every stack */

int sa_frames_walk(struct sa_frame f, uintptr_t hi, uintptr_t above, uintptr_t *pcs,
                   unsigned max)
{
    (void)f, (void)hi, (void)above, (void)pcs, (void)max;
    return -1;
}

int sa_frames_capture(uintptr_t *pcs, unsigned max, uintptr_t above)
{
    (void)pcs, (void)max, (void)above;
    return -1;
}

int sa_frames_capture_from(struct sa_frame from, uintptr_t *pcs, unsigned max)
{
    (void)from, (void)pcs, (void)max;
    return -1;
}

#endif
