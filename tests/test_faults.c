/* Faults from the OS: every entry point gives NULL (posix_memalign: ENOMEM)
 * with errno ENOMEM when the heap must grow and cannot, leaves the counters
 * and every lock as they were, and works again once memory can be had.
 *
 * Growth is forced by first filling every idle page of the heap with spans
 * taken straight from the mheap while maps are made to fail (so the filling
 * cannot itself grow the heap); then sa_os_fail_maps fails the growth the
 * call under test needs.  Small requests use a size class nothing else in
 * this program uses, so neither a thread cache nor an mcentral holds a free
 * object of it.
 *
 * In child processes: a real address-space limit (RLIMIT_AS) instead of the
 * hook, and a real madvise failure (a seccomp filter makes madvise return
 * EAGAIN), since the kernel gives no other way to make madvise fail. */
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test_helpers.h"
#include "internal.h"

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define HAVE_VG 1
#endif
#endif
#ifndef HAVE_VG
#define RUNNING_ON_VALGRIND 0
#endif

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)

/* ------------------------------------------------ filling the heap -- */

static struct sa_span *fillers[4096];
static size_t nfillers;

static size_t idle_pages(void)
{
    struct sa_heap_counters h;
    sa_mheap_read(&h);
    return (size_t)(h.sys_bytes >> SA_PAGE_SHIFT) - (size_t)h.inuse_pages;
}

/* Take every idle page of the heap, without growing it. */
static void exhaust_heap(void)
{
    atomic_store(&sa_os_fail_maps, 1 << 20);
    sa_mheap_flush_large_cache(); /* cached spans would serve a request without growth */
    size_t idle = idle_pages();
    size_t n = idle;
    while (idle > 0 && n > 0) {
        if (n > idle)
            n = idle;
        struct sa_span *s = sa_mheap_alloc_large(n, 1);
        if (s == NULL) {
            n /= 2; /* no free span that big: the rest is in smaller ones */
            continue;
        }
        assert_true(nfillers < sizeof(fillers) / sizeof(fillers[0]));
        fillers[nfillers++] = s;
        idle -= n;
    }
    atomic_store(&sa_os_fail_maps, 0);
    assert_int_equal(idle_pages(), 0);
}

static void release_heap(void)
{
    while (nfillers > 0)
        sa_mheap_free_large(fillers[--nfillers]);
}

/* --------------------------------------------- one failing call each -- */

static void fail_maps(int n)
{
    atomic_store(&sa_os_fail_maps, n);
}


static struct mem_stats snapshot(void)
{
    struct mem_stats st = stats_now();
    assert_stats_invariants(&st);
    return st;
}

/* The failed call changed no count and no byte of the heap. */
static void assert_unchanged(const struct mem_stats *b)
{
    struct mem_stats a = snapshot();
    assert_int_equal(a.heap_objects, b->heap_objects);
    assert_int_equal(a.mallocs, b->mallocs);
    assert_int_equal(a.frees, b->frees);
    assert_int_equal(a.heap_alloc, b->heap_alloc);
    assert_int_equal(a.heap_sys, b->heap_sys);
    assert_int_equal(a.heap_inuse, b->heap_inuse);
    for (int c = 1; c < SPANALLOC_NUM_SIZE_CLASSES; c++)
        assert_int_equal(a.by_size[c].mallocs, b->by_size[c].mallocs);
}

/* Every map fails while the call runs; errno must say ENOMEM. */
static void expect_enomem(void *(*call)(void), const char *name)
{
    struct mem_stats before = snapshot();
    fail_maps(1000);
    errno = 0;
    void *r = call();
    int e = errno;
    fail_maps(0);
    assert_null(r);
    if (e != ENOMEM) {
        print_error("%s: errno %d (%s), want ENOMEM\n", name, e, strerror(e));
        fail();
    }
    assert_unchanged(&before);
}

static void fill_check_free(void *p, size_t size, unsigned char byte)
{
    assert_non_null(p);
    memset(p, byte, size);
    for (size_t i = 0; i < size; i += 511)
        assert_int_equal(((unsigned char *)p)[i], byte);
    assert_int_equal(((unsigned char *)p)[size - 1], byte);
    spanalloc_free(p);
}

struct thread_job {
    size_t small, large;
    bool done;
};

static void *other_thread(void *arg)
{
    struct thread_job *job = arg;
    for (int i = 0; i < 100; i++) {
        void *a = spanalloc_malloc(job->small);
        void *b = spanalloc_malloc(job->large);
        if (a == NULL || b == NULL)
            return NULL;
        memset(a, 1, job->small);
        memset(b, 2, job->large);
        spanalloc_free(b);
        spanalloc_free(a);
    }
    free_os_memory();
    struct mem_stats st;
    read_mem_stats(&st);
    job->done = true;
    return NULL;
}

/* No lock is left held: another thread allocates in the same class and from
 * the heap, and the join does not time out. */
static void another_thread_can_allocate(size_t small, size_t large)
{
    struct thread_job job = {small, large, false};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, other_thread, &job), 0);
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += RUNNING_ON_VALGRIND ? 300 : 30;
    int rc = pthread_timedjoin_np(t, NULL, &deadline);
    if (rc != 0) {
        print_error("the other thread is stuck (a lock left held?): %s\n", strerror(rc));
        fail(); /* the thread stays blocked; the process ends with the test */
    }
    assert_true(job.done);
}

/* The common shape: fill the heap, fail, check, succeed, check. */
static void fault_case(void *(*call)(void), const char *name, size_t ok_size,
                       size_t small_size, size_t large_size)
{
    struct mem_stats start = snapshot();
    exhaust_heap();
    expect_enomem(call, name);
    another_thread_can_allocate(small_size, large_size);
    exhaust_heap(); /* the other thread may have grown it again */
    struct mem_stats before = snapshot();
    void *ok = call();
    assert_non_null(ok);
    assert_true(snapshot().heap_sys > before.heap_sys); /* it had to grow */
    fill_check_free(ok, ok_size, 0x5c);
    release_heap();
    struct mem_stats end = snapshot();
    assert_int_equal(end.heap_objects, start.heap_objects);
    assert_int_equal(end.heap_alloc, start.heap_alloc);
}

#define CALL(name, expr)           \
    static void *name(void)        \
    {                              \
        return (expr);             \
    }

/* Runs first: the thread cache exists, so only the heap can fail below. */
static void warm_up(void **state)
{
    (void)state;
    void *p = spanalloc_malloc(16);
    spanalloc_free(p);
    struct mem_stats st = snapshot();
    assert_true(st.heap_sys > 0);
}

/* Sizes of distinct classes that only the case named uses. */
#define MALLOC_SMALL 20000    /* class of 20480 */
#define CALLOC_SMALL 900      /* class of 896 */
#define ALIGNED_SMALL 3000    /* aligned 256: class of 3072 */
#define MEMALIGN_SMALL 5000   /* aligned 512: class of 5120 */
#define REALLOCARRAY_SMALL 11000 /* class of 11264 */

static void classes_are_unused(void **state)
{
    (void)state;
    struct mem_stats st = snapshot();
    const size_t sizes[] = {MALLOC_SMALL, CALLOC_SMALL, 3072, 5120, REALLOCARRAY_SMALL};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        unsigned cls = sa_size_class(sizes[i]);
        assert_int_equal(st.by_size[cls].mallocs, 0);
        for (size_t j = 0; j < i; j++)
            assert_int_not_equal(cls, sa_size_class(sizes[j]));
    }
}

CALL(call_malloc_small, spanalloc_malloc(MALLOC_SMALL))
CALL(call_malloc_large, spanalloc_malloc(300 * KiB))
CALL(call_calloc_small, spanalloc_calloc(1, CALLOC_SMALL))
CALL(call_calloc_large, spanalloc_calloc(256, 4 * KiB))
CALL(call_aligned_small, spanalloc_aligned_alloc(256, ALIGNED_SMALL))
CALL(call_aligned_large, spanalloc_aligned_alloc(64 * KiB, 100 * KiB))
CALL(call_reallocarray_small, spanalloc_reallocarray(NULL, 10, REALLOCARRAY_SMALL / 10))
CALL(call_reallocarray_large, spanalloc_reallocarray(NULL, 1000, 1000))

static void malloc_small_fails_cleanly(void **state)
{
    (void)state;
    fault_case(call_malloc_small, "malloc(20000)", MALLOC_SMALL, MALLOC_SMALL, 40 * KiB);
}

static void malloc_large_fails_cleanly(void **state)
{
    (void)state;
    fault_case(call_malloc_large, "malloc(300 KiB)", 300 * KiB, 64, 300 * KiB);
}

static void calloc_small_fails_cleanly(void **state)
{
    (void)state;
    fault_case(call_calloc_small, "calloc(1, 900)", CALLOC_SMALL, CALLOC_SMALL, 48 * KiB);
}

static void calloc_large_fails_cleanly(void **state)
{
    (void)state;
    fault_case(call_calloc_large, "calloc(256, 4 KiB)", MiB, 64, MiB);
}

static void aligned_alloc_fails_cleanly(void **state)
{
    (void)state;
    fault_case(call_aligned_small, "aligned_alloc(256, 3000)", ALIGNED_SMALL, 3072, 64 * KiB);
    fault_case(call_aligned_large, "aligned_alloc(64 KiB, 100 KiB)", 100 * KiB, 64, 100 * KiB);
}

static void *memalign_call(size_t align, size_t size, int *rc, int *saved_errno)
{
    void *sentinel = (void *)(uintptr_t)0x5eed;
    void *out = sentinel;
    errno = 1234;
    *rc = spanalloc_posix_memalign(&out, align, size);
    *saved_errno = errno;
    if (*rc != 0) {
        assert_ptr_equal(out, sentinel); /* untouched on failure */
        return NULL;
    }
    return out;
}

static void posix_memalign_fails_cleanly(void **state)
{
    (void)state;
    const size_t cases[][2] = {{512, MEMALIGN_SMALL}, {MiB, 2 * MiB}};
    for (size_t i = 0; i < 2; i++) {
        size_t align = cases[i][0], size = cases[i][1];
        exhaust_heap();
        struct mem_stats b = snapshot();
        int rc, e;
        fail_maps(1000);
        void *r = memalign_call(align, size, &rc, &e);
        fail_maps(0);
        assert_null(r);
        assert_int_equal(rc, ENOMEM);
        assert_int_equal(e, 1234); /* reports through its result only */
        assert_unchanged(&b);
        another_thread_can_allocate(64, 40 * KiB);
        exhaust_heap();
        r = memalign_call(align, size, &rc, &e);
        assert_int_equal(rc, 0);
        assert_int_equal((uintptr_t)r % align, 0);
        fill_check_free(r, size, 0x6d);
        release_heap();
    }
}

static void reallocarray_fails_cleanly(void **state)
{
    (void)state;
    fault_case(call_reallocarray_small, "reallocarray(NULL, 10, 1100)", REALLOCARRAY_SMALL,
               REALLOCARRAY_SMALL, 40 * KiB);
    fault_case(call_reallocarray_large, "reallocarray(NULL, 1000, 1000)", 1000 * 1000, 64,
               1000 * 1000);
}

static void *grow_target;
CALL(call_realloc_grow, spanalloc_realloc(grow_target, 300 * KiB))
CALL(call_reallocarray_grow, spanalloc_reallocarray(grow_target, 300, KiB))

/* realloc and reallocarray growing a small block into a large one: NULL,
 * ENOMEM, and the old block untouched and still owned by the caller. */
static void realloc_growth_fails_and_keeps_the_block(void **state)
{
    (void)state;
    for (int variant = 0; variant < 2; variant++) {
        unsigned char *p = spanalloc_malloc(700);
        memset(p, 0xa7, 700);
        exhaust_heap();
        grow_target = p;
        if (variant == 0)
            expect_enomem(call_realloc_grow, "realloc(small, 300 KiB)");
        else
            expect_enomem(call_reallocarray_grow, "reallocarray(small, 300, 1 KiB)");
        for (size_t i = 0; i < 700; i++)
            assert_int_equal(p[i], 0xa7);
        assert_true(spanalloc_usable_size(p) >= 700);
        another_thread_can_allocate(700, 300 * KiB);
        exhaust_heap();
        unsigned char *q = variant == 0 ? spanalloc_realloc(p, 300 * KiB)
                                        : spanalloc_reallocarray(p, 300, KiB);
        assert_non_null(q);
        for (size_t i = 0; i < 700; i++)
            assert_int_equal(q[i], 0xa7);
        fill_check_free(q, 300 * KiB, 0x3e);
        release_heap();
    }
}

/* Fail only the first n maps of a growth: with one failure the heap takes
 * just the bytes asked for instead of a whole 64 MiB chunk. */
/* Growth maps SA_HEAP_GROW_MIN (64 MiB) and, if that fails, just what was
 * asked.  One failed map: the fallback serves the request with exactly its 38
 * pages.  Two or more: both maps failed, NULL with ENOMEM and nothing
 * changed, and no further map was tried (the rest of the budget is left). */
static void partial_map_failures(void **state)
{
    (void)state;
    for (int n = 1; n <= 4; n++) {
        exhaust_heap();
        struct mem_stats b = snapshot();
        fail_maps(n);
        errno = 0;
        void *p = spanalloc_malloc(300 * KiB);
        int e = errno;
        int left = atomic_load(&sa_os_fail_maps);
        fail_maps(0);
        struct mem_stats a = snapshot();
        if (n == 1) {
            assert_non_null(p);
            assert_int_equal(left, 0);
            assert_int_equal(a.heap_sys - b.heap_sys, 304 * KiB); /* 38 pages */
            assert_int_equal(a.heap_objects, b.heap_objects + 1);
            fill_check_free(p, 300 * KiB, 0x11);
        } else {
            assert_null(p);
            assert_int_equal(e, ENOMEM);
            assert_int_equal(left, n - 2);
            assert_unchanged(&b);
        }
        release_heap();
    }
}

/* Whatever a failed assertion left behind: maps work, fillers are freed. */
static int cleanup(void **state)
{
    (void)state;
    fail_maps(0);
    release_heap();
    return 0;
}

static void allocator_still_works(void **state)
{
    (void)state;
    void *ptrs[64];
    for (int i = 0; i < 64; i++) {
        size_t size = (size_t)1 << (4 + i % 16);
        ptrs[i] = spanalloc_malloc(size);
        assert_non_null(ptrs[i]);
        memset(ptrs[i], i, size);
    }
    for (int i = 0; i < 64; i++)
        spanalloc_free(ptrs[i]);
    another_thread_can_allocate(MALLOC_SMALL, 300 * KiB);
    struct mem_stats st = snapshot();
    (void)st;
}

/* ------------------------------------------------ in a child process -- */

/* Run fn in a child that dies of SIGALRM if it hangs; returns its status. */
static int run_in_child(int (*fn)(void), unsigned seconds)
{
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        static const int sigs[] = {SIGABRT, SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGSYS};
        for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
            signal(sigs[i], SIG_DFL);
        alarm(seconds);
        _exit(fn());
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return status;
}

static void expect_child_ok(int status, const char *what)
{
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return;
    if (WIFEXITED(status))
        print_error("%s: child exited with %d\n", what, WEXITSTATUS(status));
    else
        print_error("%s: child killed by signal %d\n", what, WTERMSIG(status));
    fail();
}

static void say(const char *s)
{
    ssize_t ignored = write(STDERR_FILENO, s, strlen(s));
    (void)ignored;
}

static size_t vm_size_bytes(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    size_t kb = 0;
    while (f != NULL && fgets(line, sizeof(line), f) != NULL)
        if (sscanf(line, "VmSize: %zu kB", &kb) == 1)
            break;
    if (f != NULL)
        fclose(f);
    return kb * KiB;
}

/* Exit codes say which step went wrong. */
static int rlimit_child(void)
{
    enum { NBIG = 4096, NSMALL = 1 << 16 };
    static void *big[NBIG], *small[NSMALL];
    size_t vm = vm_size_bytes();
    if (vm == 0)
        return 10;
    struct rlimit lim = {vm + 200 * MiB, vm + 200 * MiB};
    if (setrlimit(RLIMIT_AS, &lim) != 0)
        return 11;
    size_t nbig = 0, nsmall = 0;
    for (;;) {
        errno = 0;
        void *p = spanalloc_malloc(MiB);
        if (p == NULL) {
            if (errno != ENOMEM)
                return 12;
            break;
        }
        if (nbig == NBIG)
            return 13; /* the limit never bit */
        ((char *)p)[0] = 1;
        ((char *)p)[MiB - 1] = 1;
        big[nbig++] = p;
    }
    /* What is left of the address space goes to small objects, a page at
     * a time once a 64 MiB growth no longer fits. */
    for (;;) {
        errno = 0;
        void *p = spanalloc_malloc(4096);
        if (p == NULL) {
            if (errno != ENOMEM) {
                say("rlimit child: small malloc failed without ENOMEM\n");
                return 14;
            }
            break;
        }
        if (nsmall == NSMALL)
            return 15;
        memset(p, 3, 4096);
        small[nsmall++] = p;
    }
    errno = 0;
    if (spanalloc_calloc(1, 2 * MiB) != NULL || errno != ENOMEM)
        return 16;
    if (getenv("FAULTS_VERBOSE") != NULL) {
        char line[160];
        snprintf(line, sizeof(line), "    RLIMIT_AS child: %zu x 1 MiB and %zu x 4 KiB before NULL\n",
                 nbig, nsmall);
        say(line);
    }
    struct mem_stats st;
    read_mem_stats(&st);
    if (st.heap_sys != st.heap_idle + st.heap_inuse || st.heap_objects != nbig + nsmall)
        return 17;
    for (size_t i = 0; i < nbig; i++)
        spanalloc_free(big[i]);
    for (size_t i = 0; i < nsmall; i++)
        spanalloc_free(small[i]);
    /* Everything freed: the same again fits in the heap as it is. */
    for (size_t i = 0; i < nbig; i++) {
        big[i] = spanalloc_malloc(MiB);
        if (big[i] == NULL)
            return 18;
        memset(big[i], 4, 4096);
    }
    for (size_t i = 0; i < nsmall && i < 1000; i++) {
        small[i] = spanalloc_malloc(4096);
        if (small[i] == NULL)
            return 19;
        memset(small[i], 5, 4096);
    }
    read_mem_stats(&st);
    if (st.heap_sys != st.heap_idle + st.heap_inuse)
        return 20;
    return 0;
}

static void address_space_limit(void **state)
{
    (void)state;
    if (RUNNING_ON_VALGRIND)
        skip(); /* valgrind itself runs out of memory under the limit */
    expect_child_ok(run_in_child(rlimit_child, 120), "RLIMIT_AS");
}

/* madvise fails (a seccomp filter answers EAGAIN): the release is counted as
 * a failure, nothing is counted as released, the memory stays usable, and
 * neither free_os_memory nor a memory limit spins on it. */
static int install_madvise_filter(void)
{
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_madvise, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EAGAIN & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {sizeof(filter) / sizeof(filter[0]), filter};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return -1;
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0);
}

static int madvise_child(void)
{
    free_os_memory(); /* start with nothing resident and idle */
    char *p = spanalloc_malloc(4 * MiB);
    if (p == NULL)
        return 10;
    memset(p, 7, 4 * MiB);
    spanalloc_free(p);
    struct mem_stats b;
    read_mem_stats(&b);
    if (install_madvise_filter() != 0)
        return 11;
    if (madvise(p, 8192, MADV_DONTNEED) == 0 || errno != EAGAIN)
        return 12; /* the filter is not in force */
    free_os_memory();
    struct mem_stats a;
    read_mem_stats(&a);
    if (a.madvise_failures != b.madvise_failures + 1)
        return 13;
    if (a.heap_released != b.heap_released || a.released_total != b.released_total)
        return 14;
    if (a.heap_sys != a.heap_idle + a.heap_inuse || a.heap_released > a.heap_idle)
        return 15;
    /* The span it failed to release is reused, and still holds its data. */
    char *q = spanalloc_malloc(4 * MiB);
    if (q == NULL)
        return 16;
    memset(q, 8, 4 * MiB);
    spanalloc_free(q);
    /* A limit the heap is far above: every growth tries to release, fails,
     * and goes on. */
    spanalloc_set_memory_limit(1);
    for (int i = 0; i < 50; i++) {
        void *r = spanalloc_malloc((size_t)(i + 1) * 3 * MiB);
        if (r == NULL)
            return 17;
        memset(r, 9, 4096);
        spanalloc_free(r);
        free_os_memory();
    }
    spanalloc_set_memory_limit(0);
    read_mem_stats(&a);
    if (a.madvise_failures < b.madvise_failures + 50)
        return 18;
    if (a.released_total != b.released_total)
        return 19;
    if (a.heap_sys != a.heap_idle + a.heap_inuse || a.heap_released > a.heap_idle)
        return 20;
    return 0;
}

static void madvise_failure(void **state)
{
    (void)state;
    expect_child_ok(run_in_child(madvise_child, 120), "madvise failure");
}

/* An aligned large request whose lead was trimmed off but whose tail could
 * not be split (no span record left) puts the span back merged with that
 * lead: the free memory is one span again, not two neighbours that never
 * merge. */
static void aligned_failure_coalesces(void **state)
{
    (void)state;
    spanalloc_free(spanalloc_malloc(64 << 20)); /* free room: no growth below */
    bool tried = false;
    for (size_t align = 1 << 20; align <= (32u << 20) && !tried; align *= 2) {
        struct sa_heap_counters before, after;
        sa_mheap_read(&before);
        sa_mheap_lock();
        sa_span_records_fail_after = 1; /* the lead's record, then none */
        sa_span_records_fail = 1;
        sa_mheap_unlock();
        void *p = spanalloc_aligned_alloc(align, 100 << 10);
        sa_mheap_lock();
        sa_span_records_fail = sa_span_records_fail_after = 0;
        sa_mheap_unlock();
        if (p != NULL) { /* already aligned: no lead to trim; try another */
            spanalloc_free(p);
            continue;
        }
        tried = true;
        sa_mheap_read(&after);
        assert_int_equal(after.span_records, before.span_records);
        assert_int_equal(after.inuse_pages, before.inuse_pages);
    }
    assert_true(tried);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(warm_up, cleanup),
        cmocka_unit_test_teardown(classes_are_unused, cleanup),
        cmocka_unit_test_teardown(malloc_small_fails_cleanly, cleanup),
        cmocka_unit_test_teardown(malloc_large_fails_cleanly, cleanup),
        cmocka_unit_test_teardown(calloc_small_fails_cleanly, cleanup),
        cmocka_unit_test_teardown(calloc_large_fails_cleanly, cleanup),
        cmocka_unit_test_teardown(aligned_alloc_fails_cleanly, cleanup),
        cmocka_unit_test_teardown(posix_memalign_fails_cleanly, cleanup),
        cmocka_unit_test_teardown(reallocarray_fails_cleanly, cleanup),
        cmocka_unit_test_teardown(realloc_growth_fails_and_keeps_the_block, cleanup),
        cmocka_unit_test_teardown(partial_map_failures, cleanup),
        cmocka_unit_test_teardown(allocator_still_works, cleanup),
        cmocka_unit_test_teardown(address_space_limit, cleanup),
        cmocka_unit_test_teardown(madvise_failure, cleanup),
        cmocka_unit_test_teardown(aligned_failure_coalesces, cleanup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
