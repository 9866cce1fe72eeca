/*
 * profile_internal.h: the types the profile's files share.
 *
 * A sampled block's record (struct sa_prof_block) hangs off its span
 * (s->prof) and points to the bucket of its stack.  Buckets are never freed
 * (a profile reports what was ever allocated from a stack); they and the
 * records come from memory mapped for the profile alone, so the profile
 * never allocates from the heap it describes.  Everything here is under
 * sa_prof_lock except where said.
 */
#ifndef SPANALLOC_PROFILE_INTERNAL_H
#define SPANALLOC_PROFILE_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../alloc/lock.h"
#include "profile.h"

#define SA_PROF_MAX_DEPTH 64

struct sa_prof_bucket {
    struct sa_prof_bucket *hash_next;
    struct sa_prof_bucket *all_next; /* every bucket, newest first */
    uint64_t hash;
    /* Estimated (already divided by the sampling probability). */
    double alloc_objects, alloc_bytes, free_objects, free_bytes;
    uint32_t depth;
    uintptr_t pcs[]; /* return addresses, innermost first */
};

struct sa_prof_block {
    struct sa_prof_bucket *bucket;
    struct sa_prof_block *next_free;
    uint64_t usable; /* what malloc_usable_size says */
    double weight;   /* 1 / (1 - exp(-request/rate)) */
    uint32_t cls;    /* size class of a small block, 0 if large */
};

extern struct sa_lock sa_prof_lock;
extern struct sa_prof_bucket *sa_prof_buckets; /* all_next list */

/* frames.c: spanalloc's own stack walker (x86-64 Linux; elsewhere it
 * always answers -1).  A frame as the walk sees it: a return address into
 * the function, the function's stack pointer once the callee returned, and
 * its rbp. */
struct sa_frame {
    uintptr_t pc, sp, rbp;
};
#define SA_FRAMES_MAX_FRAME ((uintptr_t)1 << 20) /* one frame at most 1 MiB */
#define SA_FRAMES_MAX_STACK ((uintptr_t)1 << 30) /* a stack's known top within 1 GiB */
/* The return addresses of the calling thread's stack, innermost first,
 * from the first frame whose sp is at or above `above` (the CFA of the
 * frame to drop with the ones it called): how many (at most max), or -1 if
 * a frame's unwind rule is beyond this walker and libgcc must unwind.  No
 * malloc, no lock, no per-thread memory. */
int sa_frames_capture(uintptr_t *pcs, unsigned max, uintptr_t above);
/* The same from frame f, reading the stack only below hi (tests). */
int sa_frames_walk(struct sa_frame f, uintptr_t hi, uintptr_t above, uintptr_t *pcs,
                   unsigned max);
/* The same from frame `from` of the calling thread's stack (every frame
 * from it on), as SA_CALLER_FRAME gives it; one whose pc is 0 (the frame
 * was not found) is walked from here as sa_frames_capture(from.sp). */
int sa_frames_capture_from(struct sa_frame from, uintptr_t *pcs, unsigned max);

/* The frame of the caller of the function this is expanded in, as the walk
 * sees it: pc the return address, sp the function's CFA, rbp the caller's
 * rbp.  __builtin_frame_address makes the compiler give the function a
 * frame pointer, whose prologue (push %rbp; mov %rsp, %rbp) leaves the
 * caller's rbp at CFA - 16, where the frame pointer then points: if it does
 * not (another architecture, another prologue), the frame is not known
 * (pc 0) and only sp says where the walk's frames start.  So the walk
 * starts at the caller without walking through the sampler's own frames,
 * whether or not the caller keeps a frame pointer (rbp is callee-saved: its
 * value at the call is the caller's). */
#define SA_CALLER_FRAME()                                                                  \
    sa_caller_frame((uintptr_t)__builtin_frame_address(0), (uintptr_t)__builtin_dwarf_cfa(), \
                    (uintptr_t)__builtin_return_address(0))
static inline struct sa_frame sa_caller_frame(uintptr_t fp, uintptr_t cfa, uintptr_t ra)
{
    struct sa_frame f = {0, cfa, 0};
#if defined(__x86_64__)
    if (fp + 16 == cfa) {
        f.pc = ra;
        f.rbp = *(const uintptr_t *)fp;
    }
#else
    (void)fp, (void)ra;
#endif
    return f;
}

/* stacks.c: the stack from frame `from` (SA_CALLER_FRAME of the function
 * whose own frame and callees are dropped; the frames with sp at or above
 * from.sp when from.pc is 0), without the leading frames in spanalloc's own
 * object: *depth return addresses (at most max) from the answer, which
 * points into buf (room for max + SA_STACK_LEAD).  No malloc, no lock of
 * ours. */
#define SA_STACK_LEAD 8
const uintptr_t *sa_stack_capture(uintptr_t *buf, unsigned max, struct sa_frame from,
                                  unsigned *depth);
/* A human name for pc (dladdr), for the leak report: never NULL. */
const char *sa_stack_symbol(uintptr_t pc, uintptr_t *offset);

/* profile.c */
struct sa_prof_bucket *sa_prof_bucket_for(const uintptr_t *pcs, unsigned depth); /* locked */
void sa_prof_record(struct sa_span *s, const uintptr_t *pcs, unsigned depth, size_t request,
                    size_t usable, uint32_t cls);

/* No lock held, after a sample: start the interval writer if configured. */
void sa_prof_after_sample(void);

/* pprof.c: encode every bucket as profile.proto, gzip it, and write it to
 * fd.  0 or an errno value.  Takes sa_prof_lock only to copy the counts. */
int sa_pprof_write_fd(int fd);

/* Memory for the profile alone: mapped, zeroed, never from the heap. */
void *sa_prof_map(size_t bytes);
void sa_prof_unmap(void *p, size_t bytes);

/* Tests: the estimated totals over every bucket (profile.c). */
void sa_prof_totals(double *alloc_objects, double *alloc_bytes, double *inuse_bytes);

/* sampler.c, for tests: set this thread's random state and draw again. */
void sa_sampler_reseed(uint64_t seed);
double sa_sampler_weight(size_t size, uint64_t rate);
/* A standard exponential draw from this thread's state (tests). */
double sa_sampler_exp_draw(void);

#endif /* SPANALLOC_PROFILE_INTERNAL_H */
