/*
 * profile.c: the sampled blocks and their stacks, and the ways a profile
 * leaves the process (spanalloc_profile_write, SPANALLOC_PROFILE_FILE at
 * exit and every SPANALLOC_PROFILE_INTERVAL, the leak report).
 *
 * Buckets (one per distinct stack) keep estimated counts of what was
 * allocated from the stack and what of it was freed; a live sampled block's
 * record points at its bucket.  Both come from mapped chunks that are never
 * unmapped, under one lock (sa_prof_lock).  It is not a leaf: a sampled
 * free holds it across the heap lock (the record and the span go in one
 * hold), so it sits between the mcentrals and the heap in the lock order
 * and fork takes it there (lifecycle.c).  It is taken once per sampled
 * malloc or free (on average once per 512 KiB allocated), never on the
 * unsampled paths.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../alloc/internal.h"
#include "../bgthread/bgthread.h"
#include "profile_internal.h"

/* The heap's lock type (alloc/lock.h): a sampler that finds it held spins
 * briefly before it sleeps; uncontended it is one compare-exchange to take
 * and one exchange to drop (glibc's mutex spent ~67 instructions of each
 * sampled malloc and each sampled free on its type checks). */
struct sa_lock sa_prof_lock = SA_LOCK_INITIALIZER;
struct sa_prof_bucket *sa_prof_buckets;
struct sa_profile_options sa_profile_options = {.rate = SA_PROFILE_DEFAULT_RATE};

#define HASH_SLOTS ((size_t)1 << 14)
#define CHUNK_BYTES ((size_t)1 << 20)

static struct sa_prof_bucket **hash_table; /* HASH_SLOTS, mapped on first use */
static char *chunk_cursor, *chunk_end;
static struct sa_prof_block *free_blocks;
static struct sa_profile_stats counters;
static uint64_t profile_sys; /* bytes mapped for buckets, records, the table */

void *sa_prof_map(size_t bytes)
{
    return sa_os_map(bytes, 0);
}

void sa_prof_unmap(void *p, size_t bytes)
{
    sa_os_unmap(p, bytes);
}

/* ---- Buckets and records (sa_prof_lock) */

static void *chunk_take(size_t bytes)
{
    bytes = (bytes + 15) & ~(size_t)15;
    if (chunk_cursor == NULL || (size_t)(chunk_end - chunk_cursor) < bytes) {
        char *c = sa_prof_map(CHUNK_BYTES);
        if (c == NULL)
            return NULL;
        profile_sys += CHUNK_BYTES;
        chunk_cursor = c;
        chunk_end = c + CHUNK_BYTES;
    }
    void *p = chunk_cursor;
    chunk_cursor += bytes;
    return p;
}

static uint64_t stack_hash(const uintptr_t *pcs, unsigned depth)
{
    uint64_t h = 0xcbf29ce484222325ull ^ depth;
    for (unsigned i = 0; i < depth; i++)
        h = (h ^ pcs[i]) * 0x100000001b3ull;
    return h ^ (h >> 29);
}

struct sa_prof_bucket *sa_prof_bucket_for(const uintptr_t *pcs, unsigned depth)
{
    if (hash_table == NULL) {
        hash_table = sa_prof_map(HASH_SLOTS * sizeof(*hash_table));
        if (hash_table == NULL)
            return NULL;
        profile_sys += HASH_SLOTS * sizeof(*hash_table);
    }
    uint64_t h = stack_hash(pcs, depth);
    struct sa_prof_bucket **slot = &hash_table[h & (HASH_SLOTS - 1)];
    for (struct sa_prof_bucket *b = *slot; b != NULL; b = b->hash_next)
        if (b->hash == h && b->depth == depth &&
            memcmp(b->pcs, pcs, depth * sizeof(*pcs)) == 0)
            return b;
    struct sa_prof_bucket *b = chunk_take(sizeof(*b) + depth * sizeof(*pcs));
    if (b == NULL)
        return NULL;
    b->hash = h;
    b->depth = depth;
    memcpy(b->pcs, pcs, depth * sizeof(*pcs));
    b->hash_next = *slot;
    *slot = b;
    b->all_next = sa_prof_buckets;
    sa_prof_buckets = b;
    return b;
}

void sa_prof_record(struct sa_span *s, const uintptr_t *pcs, unsigned depth, size_t request,
                    size_t usable, uint32_t cls)
{
    double w = sa_sampler_weight(request, sa_profile_options.rate);
    sa_lock_acquire(&sa_prof_lock);
    struct sa_prof_bucket *b = sa_prof_bucket_for(pcs, depth);
    struct sa_prof_block *blk = free_blocks;
    if (blk != NULL)
        free_blocks = blk->next_free;
    else if (b != NULL)
        blk = chunk_take(sizeof(*blk));
    if (b == NULL || blk == NULL) {
        /* No memory for the record: the block stays an unsampled one-object
         * span (its usable size is the span's, which the stats then count). */
        if (blk != NULL) {
            blk->next_free = free_blocks;
            free_blocks = blk;
        }
        sa_lock_release(&sa_prof_lock);
        if (cls != 0)
            sa_mheap_recount_large(s, usable);
        return;
    }
    blk->bucket = b;
    blk->usable = usable;
    blk->weight = w;
    blk->cls = cls;
    b->alloc_objects += w;
    b->alloc_bytes += w * (double)usable;
    if (cls != 0)
        counters.mallocs[cls]++;
    s->prof = blk;
    sa_lock_release(&sa_prof_lock);
}

/* The block's record and its span go in one hold of the profile lock, which
 * fork takes before the heap's: a child sees both gone or neither (a record
 * counted freed whose span was never given back would leave the child's
 * per-class counts ahead of its totals for good). */
void sa_profile_free(struct sa_span *s)
{
    sa_lock_acquire(&sa_prof_lock);
    struct sa_prof_block *blk = s->prof;
    size_t counted = 0; /* what the heap counted the block as (0: its span) */
    if (blk != NULL) { /* NULL: a racing double free, which the heap reports */
        counted = blk->cls != 0 ? blk->usable : 0;
        s->prof = NULL;
        struct sa_prof_bucket *b = blk->bucket;
        b->free_objects += blk->weight;
        b->free_bytes += blk->weight * (double)blk->usable;
        if (blk->cls != 0)
            counters.frees[blk->cls]++;
        blk->next_free = free_blocks;
        free_blocks = blk;
    }
    sa_mheap_free_large_cached_as(s, counted);
    sa_lock_release(&sa_prof_lock);
}

size_t sa_profile_usable(const struct sa_span *s)
{
    const struct sa_prof_block *blk = s->prof;
    return blk->cls != 0 ? blk->usable : (size_t)s->npages << SA_PAGE_SHIFT;
}

bool sa_profile_is_small(const struct sa_span *s)
{
    const struct sa_prof_block *blk = s->prof;
    return blk->cls != 0;
}

void sa_profile_read_stats(struct sa_profile_stats *out)
{
    sa_lock_acquire(&sa_prof_lock);
    *out = counters;
    out->sys_bytes = profile_sys;
    sa_lock_release(&sa_prof_lock);
}

/* ---- fork */

void sa_profile_fork_prepare(void)
{
    sa_lock_acquire(&sa_prof_lock);
}

void sa_profile_fork_parent(void)
{
    sa_lock_release(&sa_prof_lock);
}

static struct sa_bgthread writer_thread; /* the interval writer */

void sa_profile_fork_child(void)
{
    sa_lock_reset(&sa_prof_lock);
    sa_bgthread_fork_child(&writer_thread); /* it did not survive: restart */
}

/* ---- Writing a file: a temporary beside it, then rename */

static size_t append(char *dst, size_t at, size_t cap, const char *src)
{
    size_t n = strlen(src);
    if (at + n >= cap)
        return cap;
    memcpy(dst + at, src, n + 1);
    return at + n;
}

static size_t append_u64(char *dst, size_t at, size_t cap, uint64_t v)
{
    char digits[24];
    int i = sizeof(digits) - 1;
    digits[i] = '\0';
    do {
        digits[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    return append(dst, at, cap, digits + i);
}

/* A device or a pipe (/dev/stdout, /dev/full) is written in place; only a
 * regular file (or a new one) is replaced atomically. */
static bool is_special(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && !S_ISREG(st.st_mode);
}

SPANALLOC_API int spanalloc_profile_write(const char *path)
{
    if (path == NULL || path[0] == '\0')
        return EINVAL;
    sa_ensure_init();
    if (is_special(path)) {
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd < 0)
            return errno;
        int err = sa_pprof_write_fd(fd);
        if (close(fd) != 0 && err == 0)
            err = errno;
        return err;
    }
    char tmp[4096 + 64];
    size_t n = append(tmp, 0, sizeof(tmp), path);
    n = append(tmp, n, sizeof(tmp), ".");
    n = append_u64(tmp, n, sizeof(tmp), (uint64_t)getpid());
    n = append(tmp, n, sizeof(tmp), ".tmp");
    if (n >= sizeof(tmp))
        return ENAMETOOLONG;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return errno;
    int err = sa_pprof_write_fd(fd);
    if (close(fd) != 0 && err == 0)
        err = errno;
    if (err == 0 && rename(tmp, path) != 0)
        err = errno;
    if (err != 0)
        unlink(tmp);
    return err;
}

/* ---- SPANALLOC_PROFILE_FILE: at exit and every interval */

static char file_template[4096 + 4096 + 2]; /* the option, made absolute at init */

/* The file for this process: %p becomes the pid (forked children each
 * write their own). */
static bool option_path(char *out, size_t cap)
{
    size_t n = 0;
    out[0] = '\0';
    for (const char *p = file_template; *p != '\0' && n < cap; p++) {
        if (p[0] == '%' && p[1] == 'p') {
            n = append_u64(out, n, cap, (uint64_t)getpid());
            p++;
        } else if (n + 1 < cap) {
            out[n++] = *p;
            out[n] = '\0';
        } else {
            n = cap;
        }
    }
    return n < cap && out[0] != '\0';
}

int sa_profile_write_option_file(void)
{
    if (file_template[0] == '\0')
        return EINVAL;
    char path[sizeof(file_template) + 32];
    if (!option_path(path, sizeof(path)))
        return ENAMETOOLONG;
    return spanalloc_profile_write(path);
}

static void *writer_main(void *arg)
{
    (void)arg;
    sa_bgthread_enter();
    uint64_t ns = sa_profile_options.interval_ns;
    for (;;) {
        /* Wake at least once a second: when the program's own threads are
         * all gone, this thread must not keep the process alive. */
        uint64_t left = ns;
        while (left > 0) {
            uint64_t step = left < 1000000000ull ? left : 1000000000ull;
            struct timespec ts = {(time_t)(step / 1000000000ull), (long)(step % 1000000000ull)};
            nanosleep(&ts, NULL);
            left -= step;
            if (sa_bgthread_orphaned()) {
                sa_bgthread_leave(&writer_thread);
                return NULL;
            }
        }
        sa_profile_write_option_file(); /* a failed write is retried at the next interval */
    }
}

/* After a sample (no lock held): start the interval writer the first time,
 * or again in a forked child. */
void sa_prof_after_sample(void)
{
    if (SA_LIKELY(sa_profile_options.interval_ns == 0 || file_template[0] == '\0'))
        return;
    if (sa_bgthread_claim(&writer_thread))
        sa_bgthread_spawn(&writer_thread, writer_main);
}

/* ---- The leak report: the sampled sites still live, biggest first */

static int leak_fd = -1;

#define LEAK_SITES 10
#define LEAK_FRAMES 4

static void print_leaks(void)
{
    struct sa_prof_bucket *top[LEAK_SITES];
    double top_bytes[LEAK_SITES];
    unsigned n = 0;
    double total = 0;
    sa_lock_acquire(&sa_prof_lock);
    for (struct sa_prof_bucket *b = sa_prof_buckets; b != NULL; b = b->all_next) {
        double live = b->alloc_bytes - b->free_bytes;
        if (live < 1.0)
            continue;
        total += live;
        unsigned i = n < LEAK_SITES ? n++ : LEAK_SITES;
        if (i == LEAK_SITES && live <= top_bytes[LEAK_SITES - 1])
            continue;
        if (i == LEAK_SITES)
            i = LEAK_SITES - 1;
        while (i > 0 && top_bytes[i - 1] < live) {
            top[i] = top[i - 1];
            top_bytes[i] = top_bytes[i - 1];
            i--;
        }
        top[i] = b;
        top_bytes[i] = live;
    }
    sa_lock_release(&sa_prof_lock); /* buckets are never freed */
    char line[1024];
    int len = snprintf(line, sizeof(line),
                       "spanalloc: %.0f bytes live at exit in sampled sites (estimated, rate %llu)\n",
                       total, (unsigned long long)sa_profile_options.rate);
    if (len > 0 && write(leak_fd, line, (size_t)len) < 0)
        return;
    for (unsigned i = 0; i < n; i++) {
        struct sa_prof_bucket *b = top[i];
        len = snprintf(line, sizeof(line), "  %12.0f bytes %8.0f objects:", top_bytes[i],
                       b->alloc_objects - b->free_objects);
        for (unsigned f = 0; f < b->depth && f < LEAK_FRAMES && len > 0 &&
                             (size_t)len < sizeof(line) - 160;
             f++) {
            uintptr_t off;
            const char *name = sa_stack_symbol(b->pcs[f], &off);
            len += snprintf(line + len, sizeof(line) - (size_t)len, "%s %s+0x%llx",
                            f ? " <-" : "", name, (unsigned long long)off);
        }
        if (len > 0 && (size_t)len < sizeof(line) - 1) {
            line[len++] = '\n';
            if (write(leak_fd, line, (size_t)len) < 0)
                return;
        }
    }
}

static void profile_at_exit(void)
{
    if (file_template[0] != '\0')
        sa_profile_write_option_file();
    if (leak_fd >= 0) {
        print_leaks();
        close(leak_fd);
        leak_fd = -1;
    }
}

/* Make the path absolute before the program can chdir (servers do). */
static void prepare_template(void)
{
    const char *opt = sa_profile_options.file;
    size_t n = 0;
    if (opt[0] == '\0')
        return;
    if (opt[0] != '/') {
        if (getcwd(file_template, 4096) == NULL)
            return;
        n = strlen(file_template);
        if (n > 0 && file_template[n - 1] != '/')
            file_template[n++] = '/';
    }
    memcpy(file_template + n, opt, strlen(opt) + 1);
}

void sa_profile_init_late(void)
{
    prepare_template();
    if (sa_profile_options.leaks)
        leak_fd = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 3);
    if (file_template[0] != '\0' || leak_fd >= 0)
        atexit(profile_at_exit);
}

/* Tests: the estimated totals over every bucket. */
void sa_prof_totals(double *alloc_objects, double *alloc_bytes, double *inuse_bytes)
{
    double o = 0, b = 0, f = 0;
    sa_lock_acquire(&sa_prof_lock);
    for (const struct sa_prof_bucket *k = sa_prof_buckets; k != NULL; k = k->all_next) {
        o += k->alloc_objects;
        b += k->alloc_bytes;
        f += k->free_bytes;
    }
    sa_lock_release(&sa_prof_lock);
    *alloc_objects = o;
    *alloc_bytes = b;
    *inuse_bytes = b - f;
}
