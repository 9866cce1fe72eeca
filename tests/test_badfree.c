/* Bad frees: every misuse of a pointer ends in SIGABRT with one line on
 * stderr that names the problem, the address and (for small blocks) the size
 * class, and nothing else printed.  Each misuse runs in a forked child; the
 * parent reads the child's stdout and stderr through pipes until both close
 * or a deadline passes (poll, never a sleep), then reaps it. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test_helpers.h"
#include "internal.h"

#if defined(__has_include)
#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#define HAVE_VG 1
#endif
#endif
#ifndef HAVE_VG
#define RUNNING_ON_VALGRIND 0
#define VALGRIND_MAKE_MEM_DEFINED(p, n) ((void)(p), (void)(n))
#endif

/* ------------------------------------------------------------ harness -- */

struct outcome {
    int status;        /* from waitpid */
    bool timed_out;
    char err[8192];    /* child's stderr, valgrind's own lines removed */
    size_t err_len;
    char out[1024];    /* child's stdout */
    size_t out_len;
};

static int deadline_ms(void)
{
    return RUNNING_ON_VALGRIND ? 120000 : 20000;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Drop valgrind's "==pid== ..." lines (its report of the abort) so that
 * the check below sees only what the program itself wrote. */
static void strip_valgrind_lines(struct outcome *o)
{
    if (!RUNNING_ON_VALGRIND)
        return;
    char kept[sizeof(o->err)];
    size_t k = 0;
    for (size_t i = 0; i < o->err_len;) {
        size_t j = i;
        while (j < o->err_len && o->err[j] != '\n')
            j++;
        if (j < o->err_len)
            j++;
        bool vg = o->err[i] == '=' && i + 1 < o->err_len && o->err[i + 1] == '=';
        if (!vg) {
            memcpy(kept + k, o->err + i, j - i);
            k += j - i;
        }
        i = j;
    }
    memcpy(o->err, kept, k);
    o->err_len = k;
    o->err[k] = '\0';
}

static void child_prepare(int out_fd, int err_fd)
{
    /* cmocka's handlers would longjmp back into the test runner: a crash in
     * the child must show as what it is. */
    static const int sigs[] = {SIGABRT, SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGSYS};
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
        signal(sigs[i], SIG_DFL);
    struct rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    dup2(out_fd, STDOUT_FILENO);
    dup2(err_fd, STDERR_FILENO);
    alarm((unsigned)(deadline_ms() / 1000)); /* a hung child dies of SIGALRM */
}

/* Run fn(arg) in a child; it is expected not to return. */
static struct outcome run_child(void (*fn)(void *), void *arg)
{
    struct outcome o;
    memset(&o, 0, sizeof(o));
    int out_pipe[2], err_pipe[2];
    assert_int_equal(pipe2(out_pipe, O_CLOEXEC), 0);
    assert_int_equal(pipe2(err_pipe, O_CLOEXEC), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(out_pipe[0]);
        close(err_pipe[0]);
        child_prepare(out_pipe[1], err_pipe[1]);
        fn(arg);
        _exit(0); /* not reached if the allocator caught the misuse */
    }
    close(out_pipe[1]);
    close(err_pipe[1]);
    struct pollfd fds[2] = {{.fd = out_pipe[0], .events = POLLIN},
                            {.fd = err_pipe[0], .events = POLLIN}};
    int open_fds = 2;
    int64_t end = now_ms() + deadline_ms();
    while (open_fds > 0) {
        int64_t left = end - now_ms();
        if (left <= 0) {
            o.timed_out = true;
            break;
        }
        int n = poll(fds, 2, (int)left);
        if (n < 0 && errno == EINTR)
            continue;
        assert_true(n >= 0);
        for (int i = 0; i < 2; i++) {
            if (fds[i].fd < 0 || fds[i].revents == 0)
                continue;
            char *buf = i == 0 ? o.out : o.err;
            size_t *len = i == 0 ? &o.out_len : &o.err_len;
            size_t cap = (i == 0 ? sizeof(o.out) : sizeof(o.err)) - 1;
            char scratch[512];
            ssize_t got = read(fds[i].fd, scratch, sizeof(scratch));
            if (got <= 0) {
                close(fds[i].fd);
                fds[i].fd = -1;
                open_fds--;
                continue;
            }
            size_t take = (size_t)got < cap - *len ? (size_t)got : cap - *len;
            memcpy(buf + *len, scratch, take);
            *len += take;
        }
    }
    if (o.timed_out)
        kill(pid, SIGKILL);
    for (int i = 0; i < 2; i++)
        if (fds[i].fd >= 0)
            close(fds[i].fd);
    assert_int_equal(waitpid(pid, &o.status, 0), pid);
    o.out[o.out_len] = '\0';
    o.err[o.err_len] = '\0';
    strip_valgrind_lines(&o);
    return o;
}

/* What the report line must say. */
struct expect {
    const char *phrase;   /* the problem, as alloc/report.c or mcache.h words it */
    const char *op;       /* "free: ", "malloc_usable_size: ", or NULL */
    const void *addr;     /* " at 0x..." */
    unsigned cls;         /* small: " (size class C, S bytes)"; 0: no class */
    size_t large_bytes;   /* large: " (large object of N bytes)"; 0: none */
};

static void check_report(const struct outcome *o, const struct expect *e)
{
    if (getenv("BADFREE_VERBOSE") != NULL)
        fprintf(stderr, "    child stderr: %s", o->err);
    if (o->timed_out || !WIFSIGNALED(o->status) || WTERMSIG(o->status) != SIGABRT) {
        print_error("child: timed_out=%d exited=%d code=%d signalled=%d sig=%d\n"
                    "stderr: %s\nstdout: %s\n",
                    o->timed_out, WIFEXITED(o->status), WEXITSTATUS(o->status),
                    WIFSIGNALED(o->status), WTERMSIG(o->status), o->err, o->out);
        fail();
    }
    if (o->out_len != 0) {
        print_error("child printed on stdout: %s\n", o->out);
        fail();
    }
    /* Exactly one line, and it is ours. */
    const char *nl = strchr(o->err, '\n');
    if (nl == NULL || nl[1] != '\0' || strncmp(o->err, "spanalloc: ", 11) != 0 ||
        strstr(o->err, "; aborting\n") == NULL) {
        print_error("stderr is not one report line: [%s]\n", o->err);
        fail();
    }
    if (strstr(o->err, e->phrase) == NULL) {
        print_error("report lacks \"%s\": %s", e->phrase, o->err);
        fail();
    }
    if (e->op != NULL && strncmp(o->err + 11, e->op, strlen(e->op)) != 0) {
        print_error("report does not name the operation \"%s\": %s", e->op, o->err);
        fail();
    }
    char want[128];
    snprintf(want, sizeof(want), " at 0x%lx", (unsigned long)(uintptr_t)e->addr);
    const char *at = strstr(o->err, want);
    if (at == NULL || (at[strlen(want)] != ' ' && at[strlen(want)] != ';')) {
        print_error("report lacks \"%s\": %s", want, o->err);
        fail();
    }
    if (e->cls != 0) {
        snprintf(want, sizeof(want), " (size class %u, %u bytes)", e->cls,
                 (unsigned)sa_class_size[e->cls]);
        if (strstr(o->err, want) == NULL) {
            print_error("report lacks \"%s\": %s", want, o->err);
            fail();
        }
    }
    if (e->large_bytes != 0) {
        snprintf(want, sizeof(want), " (large object of %zu bytes)", e->large_bytes);
        if (strstr(o->err, want) == NULL) {
            print_error("report lacks \"%s\": %s", want, o->err);
            fail();
        }
    }
}

/* ------------------------------------------------------------ misuses -- */

static void op_double_free(void *p)
{
    spanalloc_free(p);
    spanalloc_free(p);
}

static void op_free(void *p)
{
    spanalloc_free(p);
}

static void op_realloc(void *p)
{
    void *q = spanalloc_realloc(p, 200);
    (void)q;
}

static void op_realloc_freed(void *p)
{
    spanalloc_free(p);
    void *q = spanalloc_realloc(p, 200);
    (void)q;
}

static void op_usable_size_freed(void *p)
{
    spanalloc_free(p);
    volatile size_t n = spanalloc_usable_size(p);
    (void)n;
}

static unsigned cls_of(size_t size)
{
    return sa_size_class(size);
}

/* A small block and a live neighbour in its span: when the block is freed the
 * span stays a span of its class (no cache under valgrind: an emptied span
 * would go straight back to the heap, and its class with it). */
static void *small_with_neighbour(size_t size, void **neighbour)
{
    enum { N = 64 };
    void *blocks[N];
    void *p = NULL;
    for (int i = 0; i < N && p == NULL; i++) {
        blocks[i] = spanalloc_malloc(size);
        assert_non_null(blocks[i]);
        struct sa_span *s = sa_pagemap_lookup((uintptr_t)blocks[i]);
        for (int j = 0; j < i; j++) {
            if (blocks[j] != NULL && sa_pagemap_lookup((uintptr_t)blocks[j]) == s) {
                *neighbour = blocks[j];
                p = blocks[i];
                blocks[i] = blocks[j] = NULL;
                break;
            }
        }
        if (p != NULL)
            for (int k = 0; k < i; k++)
                spanalloc_free(blocks[k]); /* NULL for the pair */
    }
    assert_non_null(p);
    return p;
}

static void double_free_small(void **state)
{
    (void)state;
    void *keep, *p = small_with_neighbour(48, &keep);
    struct outcome o = run_child(op_double_free, p);
    check_report(&o, &(struct expect){"block already freed (double free)", "free: ", p,
                                      cls_of(48), 0});
    spanalloc_free(p); /* still live in the parent */
    spanalloc_free(keep);
}

/* A block that went back to its span (the cache flushed) is still caught. */
static void op_double_free_after_flush(void *p)
{
    spanalloc_free(p);
    sa_mcache_flush_current();
    spanalloc_free(p);
}

static void double_free_small_after_flush(void **state)
{
    (void)state;
    void *keep, *p = small_with_neighbour(96, &keep);
    struct outcome o = run_child(op_double_free_after_flush, p);
    check_report(&o, &(struct expect){"block already freed (double free)", "free: ", p,
                                      cls_of(96), 0});
    spanalloc_free(p);
    spanalloc_free(keep);
}

static void check_large_double_free(size_t size)
{
    void *p = spanalloc_malloc(size);
    struct outcome o = run_child(op_double_free, p);
    check_report(&o, &(struct expect){"block already freed (double free)", "free: ", p, 0, 0});
    spanalloc_free(p);
}

/* 100 KiB: the freed span waits in the large-span cache. */
static void double_free_large(void **state)
{
    (void)state;
    check_large_double_free(100 * 1024);
}

/* Above the large-span cache's 256 KiB: the span goes back to the heap. */
static void double_free_large_uncached(void **state)
{
    (void)state;
    check_large_double_free(1024 * 1024);
}

static void free_stack_address(void **state)
{
    (void)state;
    char local[64];
    memset(local, 0, sizeof(local));
    struct outcome o = run_child(op_free, local + 16);
    check_report(&o, &(struct expect){"pointer not allocated by spanalloc", "free: ",
                                      local + 16, 0, 0});
}

static char static_buffer[256] __attribute__((aligned(64)));

static void free_static_address(void **state)
{
    (void)state;
    struct outcome o = run_child(op_free, static_buffer);
    check_report(&o, &(struct expect){"pointer not allocated by spanalloc", "free: ",
                                      static_buffer, 0, 0});
}

static void free_mmap_address(void **state)
{
    (void)state;
    void *m = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(m != MAP_FAILED);
    struct outcome o = run_child(op_free, m);
    check_report(&o, &(struct expect){"pointer not allocated by spanalloc", "free: ", m, 0, 0});
    munmap(m, 1 << 16);
}

/* A page inside spanalloc's heap that no span holds (the middle of a free
 * span): the page map has a leaf there, whose entry is sa_span_none. */
static void free_unheld_heap_page(void **state)
{
    (void)state;
    char *p = spanalloc_malloc(300 * SA_PAGE_SIZE); /* too big for the large-span cache */
    spanalloc_free(p);
    char *inner = p + 7 * SA_PAGE_SIZE;
    assert_null(sa_pagemap_lookup((uintptr_t)inner));
    struct outcome o = run_child(op_free, inner);
    check_report(&o, &(struct expect){"pointer not allocated by spanalloc", "free: ", inner, 0, 0});
}

/* glibc is the process malloc in this test (it links spanalloc_core). */
static void free_glibc_pointer(void **state)
{
    (void)state;
    void *g = malloc(64);
    assert_non_null(g);
    struct outcome o = run_child(op_free, g);
    check_report(&o, &(struct expect){"pointer not allocated by spanalloc", "free: ", g, 0, 0});
    free(g);
}

static void free_interior_small(void **state)
{
    (void)state;
    char *p = spanalloc_malloc(64);
    struct outcome o = run_child(op_free, p + 16);
    check_report(&o, &(struct expect){"interior or misaligned pointer", "free: ", p + 16,
                                      cls_of(64), 0});
    spanalloc_free(p);
}

/* Inside the first or last page, the span is found and the pointer is not
 * its start; in between (pages a large span does not map) no span is found:
 * reported either way, and the block is intact. */
static void free_interior_large(void **state)
{
    (void)state;
    size_t size = 300 * 1024; /* past the medium classes */
    char *p = spanalloc_malloc(size);
    size_t span_bytes = (size + SA_PAGE_SIZE - 1) & ~(SA_PAGE_SIZE - 1);
    struct outcome o = run_child(op_free, p + 64);
    check_report(&o, &(struct expect){"interior pointer into a large object", "free: ",
                                      p + 64, 0, span_bytes});
    o = run_child(op_free, p + span_bytes - 16);
    check_report(&o, &(struct expect){"interior pointer into a large object", "free: ",
                                      p + span_bytes - 16, 0, span_bytes});
    o = run_child(op_free, p + 8192);
    check_report(&o, &(struct expect){"pointer not allocated by spanalloc", "free: ",
                                      p + 8192, 0, 0});
    o = run_child(op_realloc, p + 5 * 8192);
    check_report(&o, &(struct expect){"pointer not allocated by spanalloc", "realloc: ",
                                      p + 5 * 8192, 0, 0});
    spanalloc_free(p);
}

static void free_misaligned(void **state)
{
    (void)state;
    char *p = spanalloc_malloc(64);
    struct outcome o = run_child(op_free, p + 1);
    check_report(&o, &(struct expect){"interior or misaligned pointer", "free: ", p + 1,
                                      cls_of(64), 0});
    spanalloc_free(p);
}

/* 48-byte objects: 170 fit in an 8 KiB page with a 32-byte tail.  The
 * address right after the last object is page-internal, 48-aligned from the
 * span base, and still not an object. */
static void free_span_tail(void **state)
{
    (void)state;
    char *p = spanalloc_malloc(48);
    struct sa_span *s = sa_pagemap_lookup((uintptr_t)p);
    assert_non_null(s);
    assert_int_equal(s->elem_size, 48);
    assert_int_equal(s->npages, 1);
    assert_int_equal(s->nelems, 170);
    char *tail = (char *)s->base + 170 * 48;
    assert_true(tail < (char *)s->base + SA_PAGE_SIZE);
    struct outcome o = run_child(op_free, tail);
    check_report(&o, &(struct expect){"interior or misaligned pointer", "free: ", tail,
                                      cls_of(48), 0});
    spanalloc_free(p);
}

static void realloc_of_freed_small(void **state)
{
    (void)state;
    void *keep, *p = small_with_neighbour(48, &keep);
    struct outcome o = run_child(op_realloc_freed, p);
    /* realloc validates through malloc_usable_size: the report names that
     * operation (see the report to the lead), so only the problem is checked. */
    check_report(&o, &(struct expect){"block already freed (double free)", NULL, p,
                                      cls_of(48), 0});
    spanalloc_free(p);
    spanalloc_free(keep);
}

static void realloc_of_freed_large(void **state)
{
    (void)state;
    void *p = spanalloc_malloc(100 * 1024);
    struct outcome o = run_child(op_realloc_freed, p);
    check_report(&o, &(struct expect){"block already freed (double free)", NULL, p, 0, 0});
    spanalloc_free(p);
}

static void usable_size_of_freed(void **state)
{
    (void)state;
    void *keep, *p = small_with_neighbour(48, &keep);
    struct outcome o = run_child(op_usable_size_freed, p);
    check_report(&o, &(struct expect){"block already freed (double free)",
                                      "malloc_usable_size: ", p, cls_of(48), 0});
    spanalloc_free(p);
    spanalloc_free(keep);
}

/* ----------------------------------------------------- use after free -- */

struct uaf {
    char *block;
    size_t size;
    size_t offset;          /* word overwritten: 0 the link, 8 the mark */
    unsigned char bytes[8]; /* what is written there */
};

/* Free the block, write over a word of it, then allocate its class until
 * the allocator pops it.  Every block handed out meanwhile must be heap
 * memory; exit code 3 says one was not. */
static void op_write_after_free(void *arg)
{
    struct uaf *u = arg;
    spanalloc_free(u->block);
    VALGRIND_MAKE_MEM_DEFINED(u->block, 16); /* the misuse is intended */
    memcpy(u->block + u->offset, u->bytes, 8);
    for (int i = 0; i < 100000; i++) {
        void *q = spanalloc_malloc(u->size);
        if (q == NULL)
            _exit(4);
        struct sa_span *s = sa_pagemap_lookup((uintptr_t)q);
        if (s == NULL || s->state != SA_SPAN_SMALL)
            _exit(3);
    }
}

static void write_after_free(size_t offset, const unsigned char *bytes)
{
    struct uaf u = {.size = 80, .offset = offset};
    memcpy(u.bytes, bytes, 8);
    /* Some live neighbours, so the block sits in a list among others. */
    void *before[8], *after[8];
    for (int i = 0; i < 8; i++)
        before[i] = spanalloc_malloc(u.size);
    u.block = spanalloc_malloc(u.size);
    for (int i = 0; i < 8; i++)
        after[i] = spanalloc_malloc(u.size);
    for (int i = 0; i < 8; i += 2) {
        spanalloc_free(before[i]);
        spanalloc_free(after[i]);
    }
    struct outcome o = run_child(op_write_after_free, &u);
    if (WIFEXITED(o.status) && WEXITSTATUS(o.status) == 3) {
        print_error("a block outside the heap was handed out\n");
        fail();
    }
    /* The thread cache reports a bad block without its class (its mark or
     * link is what is wrong); the mcentral (valgrind: no caches) with it. */
    check_report(&o, &(struct expect){"corrupted", NULL, u.block,
                                      RUNNING_ON_VALGRIND ? cls_of(u.size) : 0, 0});
    for (int i = 1; i < 8; i += 2) {
        spanalloc_free(before[i]);
        spanalloc_free(after[i]);
    }
    spanalloc_free(u.block);
}

static void write_over_link_word(void **state)
{
    (void)state;
    for (int round = 0; round < 8; round++) {
        unsigned char bytes[8];
        assert_int_equal(getrandom(bytes, sizeof(bytes), 0), (ssize_t)sizeof(bytes));
        write_after_free(0, bytes);
    }
}

static void write_over_mark_word(void **state)
{
    (void)state;
    static const unsigned char bytes[8] = {0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41};
    write_after_free(8, bytes);
    static const unsigned char zero[8] = {0};
    write_after_free(8, zero);
}

/* A link aimed (by a use-after-free write that knows the link key) at an
 * unmapped page of an arena the page map covers.  Before e54a6e8 the only
 * check was that the arena had a leaf, so the next malloc of the class
 * faulted (SIGSEGV) instead of reporting; now the mark seals the link and
 * the rewritten link is reported before it is followed. */
static void op_link_to_unmapped_arena_page(void *arg)
{
    uintptr_t *b = arg;
    uintptr_t arena = (uintptr_t)b & ~(SA_ARENA_SIZE - 1);
    uintptr_t target = 0;
    unsigned char v;
    for (uintptr_t a = arena; a < arena + SA_ARENA_SIZE && target == 0; a += SA_PAGE_SIZE)
        if (mincore((void *)a, 4096, &v) != 0 && errno == ENOMEM)
            target = a;
    if (target == 0)
        _exit(2); /* the arena is fully mapped: nothing to aim at */
    spanalloc_free(b);
    VALGRIND_MAKE_MEM_DEFINED(b, 16);
    b[0] = sa_encode_link((void *)target);
    for (int i = 0; i < 4; i++) {
        void *q = spanalloc_malloc(112);
        struct sa_span *s = sa_pagemap_lookup((uintptr_t)q);
        if (s == NULL || s->state != SA_SPAN_SMALL)
            _exit(3);
    }
}

static void link_to_unmapped_arena_page(void **state)
{
    (void)state;
    void *keep, *p = small_with_neighbour(112, &keep);
    struct outcome o = run_child(op_link_to_unmapped_arena_page, p);
    if (WIFEXITED(o.status) && WEXITSTATUS(o.status) == 2) {
        spanalloc_free(p); /* skip() does not return: give the pair back first */
        spanalloc_free(keep);
        skip();
    }
    check_report(&o, &(struct expect){"corrupted", NULL, p, 0, 0});
    spanalloc_free(p);
    spanalloc_free(keep);
}

/* Before the first case: what the parent's heap held. */
static struct mem_stats baseline;

static int record_baseline(void **state)
{
    (void)state;
    baseline = stats_now();
    return 0;
}

/* The parent's heap after all of the above: each case handed a child blocks
 * that the child misused, and freed its own copies once; so every object is
 * back (in total and in every class), the invariants hold, and blocks of
 * every class and a large one can be had again, written and read back. */
static void parent_heap_is_intact(void **state)
{
    (void)state;
    struct mem_stats st = stats_now();
    assert_stats_invariants(&st);
    assert_int_equal(st.heap_objects, baseline.heap_objects);
    assert_int_equal(st.heap_alloc, baseline.heap_alloc);
    for (int c = 1; c < SPANALLOC_NUM_SIZE_CLASSES; c++)
        assert_int_equal(st.by_size[c].mallocs - st.by_size[c].frees,
                         baseline.by_size[c].mallocs - baseline.by_size[c].frees);
    enum { PER_CLASS = 8 };
    unsigned char *blocks[SPANALLOC_NUM_SIZE_CLASSES][PER_CLASS];
    for (int c = 1; c < SPANALLOC_NUM_SIZE_CLASSES; c++) {
        for (int i = 0; i < PER_CLASS; i++) {
            blocks[c][i] = spanalloc_malloc(sa_class_size[c]);
            assert_non_null(blocks[c][i]);
            memset(blocks[c][i], c ^ i, sa_class_size[c]);
        }
    }
    unsigned char *large = spanalloc_malloc(300 * 1024);
    assert_non_null(large);
    memset(large, 0xa5, 300 * 1024);
    for (int c = 1; c < SPANALLOC_NUM_SIZE_CLASSES; c++) {
        for (int i = 0; i < PER_CLASS; i++) {
            for (size_t k = 0; k < sa_class_size[c]; k++)
                assert_int_equal(blocks[c][i][k], (unsigned char)(c ^ i));
            spanalloc_free(blocks[c][i]);
        }
    }
    for (size_t k = 0; k < 300 * 1024; k += 4096)
        assert_int_equal(large[k], 0xa5);
    spanalloc_free(large);
    st = stats_now();
    assert_stats_invariants(&st);
    assert_int_equal(st.heap_objects, baseline.heap_objects);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(double_free_small),
        cmocka_unit_test(double_free_small_after_flush),
        cmocka_unit_test(double_free_large),
        cmocka_unit_test(double_free_large_uncached),
        cmocka_unit_test(free_stack_address),
        cmocka_unit_test(free_static_address),
        cmocka_unit_test(free_mmap_address),
        cmocka_unit_test(free_glibc_pointer),
        cmocka_unit_test(free_unheld_heap_page),
        cmocka_unit_test(free_interior_small),
        cmocka_unit_test(free_interior_large),
        cmocka_unit_test(free_misaligned),
        cmocka_unit_test(free_span_tail),
        cmocka_unit_test(realloc_of_freed_small),
        cmocka_unit_test(realloc_of_freed_large),
        cmocka_unit_test(usable_size_of_freed),
        cmocka_unit_test(write_over_link_word),
        cmocka_unit_test(write_over_mark_word),
        cmocka_unit_test(link_to_unmapped_arena_page),
        cmocka_unit_test(parent_heap_is_intact),
    };
    return cmocka_run_group_tests(tests, record_baseline, NULL);
}
