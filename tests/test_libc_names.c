/*
 * The libc names exported by libspanalloc.so.  This binary links the shared
 * library, so the whole process (cmocka, stdio, glibc's own helpers) runs on
 * spanalloc: the first tests prove it, the next ones check each libc name's
 * semantics (glibc's where C leaves a choice), and the last one checks that
 * the library exports exactly the intended symbols.
 *
 * The semantic tests call the library's own definitions, looked up with
 * dlsym on its handle: in a plain build they are the process's malloc (a
 * test checks that), and under ASan, whose interceptors take the libc names
 * in the executable, they still exercise spanalloc's code.  Tests that need
 * the process malloc to be spanalloc's are skipped under ASan.  Under
 * valgrind (which redirects the library's malloc family too, unless run with
 * --soname-synonyms=somalloc=nouserintercepts) the semantic tests are
 * skipped as well; only the export check is meaningful there.
 */
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test_helpers.h"

/* C23, not in glibc 2.36's headers. */
void free_sized(void *ptr, size_t size);
void free_aligned_sized(void *ptr, size_t alignment, size_t size);

/* ASan and TSan bring their own malloc, which the process calls instead. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define ASAN_BUILD 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define ASAN_BUILD 1
#endif
#endif
#ifndef ASAN_BUILD
#define ASAN_BUILD 0
#endif

#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define UNDER_VALGRIND() (RUNNING_ON_VALGRIND != 0)
#else
#define UNDER_VALGRIND() 0
#endif

/* ---- The library's own definitions of the libc names */

static struct {
    void *(*malloc)(size_t);
    void (*free)(void *);
    void *(*calloc)(size_t, size_t);
    void *(*realloc)(void *, size_t);
    void *(*reallocarray)(void *, size_t, size_t);
    int (*posix_memalign)(void **, size_t, size_t);
    void *(*aligned_alloc)(size_t, size_t);
    void *(*memalign)(size_t, size_t);
    void *(*valloc)(size_t);
    void *(*pvalloc)(size_t);
    size_t (*malloc_usable_size)(void *);
    void (*free_sized)(void *, size_t);
    void (*free_aligned_sized)(void *, size_t, size_t);
} L;

static char lib_path[4096];
static void *lib_handle;

#define LIBC_NAMES                                                                     \
    X(malloc) X(free) X(calloc) X(realloc) X(reallocarray) X(posix_memalign)            \
    X(aligned_alloc) X(memalign) X(valloc) X(pvalloc) X(malloc_usable_size) X(free_sized) \
    X(free_aligned_sized)

#define X(name) #name,
static const char *const libc_names[] = {LIBC_NAMES};
#undef X
enum { NUM_LIBC_NAMES = sizeof(libc_names) / sizeof(libc_names[0]) };
static void *lib_addr[NUM_LIBC_NAMES]; /* the library's definitions, in that order */

static void *lib_sym(const char *name)
{
    void *p = dlsym(lib_handle, name);
    if (p == NULL)
        print_error("libspanalloc does not define %s\n", name);
    return p;
}

static void probe_interposers(void);

static int resolve_library(void **state)
{
    (void)state;
    Dl_info info;
    if (dladdr((void *)spanalloc_malloc, &info) == 0 || info.dli_fname == NULL)
        return -1;
    snprintf(lib_path, sizeof(lib_path), "%s", info.dli_fname);
    lib_handle = dlopen(lib_path, RTLD_NOW | RTLD_NOLOAD);
    if (lib_handle == NULL)
        return -1;
    for (int i = 0; i < NUM_LIBC_NAMES; i++)
        if ((lib_addr[i] = lib_sym(libc_names[i])) == NULL)
            return -1;
    int i = 0;
#define X(name) L.name = (__typeof__(L.name))lib_addr[i++];
    LIBC_NAMES
#undef X
    probe_interposers();
    return 0;
}

static int close_library(void **state)
{
    (void)state;
    if (lib_handle != NULL)
        dlclose(lib_handle);
    return 0;
}

/* ---- Pattern and small helpers */

static inline uint64_t pattern_word(uint64_t seed, size_t i)
{
    uint64_t x = (seed + 1) * 0x9E3779B97F4A7C15ull ^ (uint64_t)(i >> 3) * 0xD6E8FEB86659FD93ull;
    return x ^ (x >> 29);
}

static void fill(void *p, size_t n, uint64_t seed)
{
    unsigned char *b = p;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w = pattern_word(seed, i);
        memcpy(b + i, &w, 8);
    }
    for (; i < n; i++)
        b[i] = (unsigned char)(pattern_word(seed, i) >> ((i & 7) * 8));
}

static bool intact(const void *p, size_t n, uint64_t seed)
{
    const unsigned char *b = p;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w = pattern_word(seed, i), got;
        memcpy(&got, b + i, 8);
        if (got != w)
            return false;
    }
    for (; i < n; i++)
        if (b[i] != (unsigned char)(pattern_word(seed, i) >> ((i & 7) * 8)))
            return false;
    return true;
}

static bool all_zero(const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != 0)
            return false;
    return true;
}

static bool aligned_to(const void *p, size_t align)
{
    return ((uintptr_t)p & (align - 1)) == 0;
}

/* Tools that bring their own malloc take the libc names: ASan's interceptors
 * in the executable take the process's malloc, and valgrind redirects the
 * malloc family of every object, libspanalloc.so included, unless run with
 * --soname-synonyms=somalloc=nouserintercepts.  Under those tools (only),
 * a probe decides whether spanalloc still serves the call, and the tests
 * that need it are skipped if not. */
static bool process_malloc_is_ours, library_names_are_ours;

static bool counted_by_spanalloc(void *(*alloc)(size_t), void (*release)(void *))
{
    struct mem_stats before = stats_now();
    void *p = alloc(100);
    struct mem_stats after = stats_now();
    release(p);
    return after.mallocs == before.mallocs + 1;
}

static void probe_interposers(void)
{
    process_malloc_is_ours = counted_by_spanalloc(malloc, free);
    library_names_are_ours = counted_by_spanalloc(L.malloc, L.free);
}

#define UNDER_A_TOOL() (ASAN_BUILD || UNDER_VALGRIND())
#define REQUIRE_PROCESS_MALLOC()                                                \
    do {                                                                        \
        if (UNDER_A_TOOL() && !process_malloc_is_ours) {                        \
            print_message("a tool owns the process malloc: skipped\n");        \
            skip();                                                             \
        }                                                                       \
    } while (0)
#define REQUIRE_LIBRARY_NAMES()                                                 \
    do {                                                                        \
        if (UNDER_A_TOOL() && !library_names_are_ours) {                        \
            print_message("a tool redirects libspanalloc's malloc: skipped\n"); \
            skip();                                                             \
        }                                                                       \
    } while (0)

/* ---- The process runs on spanalloc */

static void every_libc_name_resolves_to_spanalloc(void **state)
{
    (void)state;
    REQUIRE_PROCESS_MALLOC();
    for (int i = 0; i < NUM_LIBC_NAMES; i++) {
        void *process = dlsym(RTLD_DEFAULT, libc_names[i]);
        if (process != lib_addr[i])
            print_error("%s resolves to %p, libspanalloc's is %p\n", libc_names[i], process,
                        lib_addr[i]);
        assert_ptr_equal(process, lib_addr[i]);
    }
    Dl_info info;
    assert_int_not_equal(dladdr((void *)malloc, &info), 0);
    assert_string_equal(info.dli_fname, lib_path);
}

static void malloc_is_counted_by_spanalloc(void **state)
{
    (void)state;
    REQUIRE_PROCESS_MALLOC();
    struct mem_stats before = stats_now();
    void *p = malloc(100);
    struct mem_stats mid = stats_now();
    assert_non_null(p);
    assert_int_equal(mid.mallocs - before.mallocs, 1);
    assert_int_equal(mid.heap_objects - before.heap_objects, 1);
    assert_int_equal(mid.heap_alloc - before.heap_alloc, 112);
    assert_int_equal(malloc_usable_size(p), 112); /* the class size, not glibc's 104 */
    assert_int_equal(spanalloc_usable_size(p), 112);
    free(p);
    struct mem_stats after = stats_now();
    assert_int_equal(after.frees - mid.frees, 1);
    assert_int_equal(after.heap_objects, before.heap_objects);
    assert_stats_invariants(&after);
    /* Blocks move freely between the two sets of names. */
    void *q = spanalloc_malloc(300);
    assert_int_equal(malloc_usable_size(q), spanalloc_usable_size(q));
    free(q);
    q = calloc(3, 100);
    spanalloc_free(q);
    assert_int_equal(stats_now().heap_objects, before.heap_objects);
}

static void glibc_internal_allocations_are_spanallocs(void **state)
{
    (void)state;
    REQUIRE_PROCESS_MALLOC();
    struct mem_stats before = stats_now();

    char *s = strdup("a string that glibc copies with malloc");
    assert_non_null(s);
    assert_int_equal(stats_now().heap_objects, before.heap_objects + 1);
    assert_true(malloc_usable_size(s) >= strlen(s) + 1);
    free(s);

    s = strndup("0123456789", 4);
    assert_string_equal(s, "0123");
    free(s);

    char *a = NULL;
    int n = asprintf(&a, "%s-%d-%0*d", "asprintf", 42, 3000, 7); /* grows via realloc */
    assert_int_equal(n, 3000 + 12);
    assert_non_null(a);
    assert_int_equal(stats_now().heap_objects, before.heap_objects + 1);
    assert_true(malloc_usable_size(a) >= (size_t)n + 1);
    assert_int_equal(a[n - 1], '7');
    free(a);

    static char text[] = "first line\nsecond, a much longer line that makes getline grow its "
                         "buffer past glibc's first guess of one hundred and twenty bytes, "
                         "and then some more words to be quite sure of it\n";
    FILE *f = fmemopen(text, sizeof(text) - 1, "r");
    assert_non_null(f);
    char *line = NULL;
    size_t cap = 0;
    assert_int_equal(getline(&line, &cap, f), 11);
    assert_string_equal(line, "first line\n");
    assert_true(getline(&line, &cap, f) > 120);
    assert_true(malloc_usable_size(line) >= cap);
    assert_int_equal(getdelim(&line, &cap, ',', f), -1);
    fclose(f);
    assert_int_equal(stats_now().heap_objects, before.heap_objects + 1);
    free(line);

    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    assert_non_null(m);
    for (int i = 0; i < 2000; i++)
        fprintf(m, "%d,", i);
    fclose(m);
    assert_true(len > 2000);
    assert_true(malloc_usable_size(buf) > len);
    free(buf);

    char *rp = realpath("/", NULL);
    assert_string_equal(rp, "/");
    free(rp);

    struct mem_stats after = stats_now();
    assert_int_equal(after.heap_objects, before.heap_objects);
    assert_true(after.mallocs - before.mallocs >= 8);
    assert_stats_invariants(&after);
}

/* ---- malloc, free, malloc_usable_size */

static void malloc_zero_and_alignment(void **state)
{
    (void)state;
    REQUIRE_LIBRARY_NAMES();
    void *z[64];
    for (int i = 0; i < 64; i++) {
        z[i] = L.malloc(0);
        assert_non_null(z[i]);
        for (int j = 0; j < i; j++)
            assert_ptr_not_equal(z[i], z[j]);
    }
    for (int i = 0; i < 64; i++)
        L.free(z[i]);

    size_t step = UNDER_VALGRIND() ? 601 : 7;
    for (size_t n = 1; n <= 100000; n += (n < 2048 ? 1 : step)) {
        unsigned char *p = L.malloc(n);
        assert_non_null(p);
        assert_true(aligned_to(p, 16));
        size_t usable = L.malloc_usable_size(p);
        assert_true(usable >= n);
        memset(p, 0x5a, usable);
        L.free(p);
    }
    L.free(NULL);
    L.free_sized(NULL, 10);
    L.free_aligned_sized(NULL, 64, 10);
    assert_int_equal(L.malloc_usable_size(NULL), 0);
}

static void impossible_sizes_fail_with_enomem(void **state)
{
    (void)state;
    REQUIRE_LIBRARY_NAMES();
    static const size_t sizes[] = {SIZE_MAX, (size_t)PTRDIFF_MAX + 1, (size_t)1 << 50};
    struct mem_stats before = stats_now();
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        errno = 0;
        assert_null(L.malloc(sizes[k]));
        assert_int_equal(errno, ENOMEM);
        errno = 0;
        assert_null(L.calloc(1, sizes[k]));
        assert_int_equal(errno, ENOMEM);
        errno = 0;
        assert_null(L.realloc(NULL, sizes[k]));
        assert_int_equal(errno, ENOMEM);
        errno = 0;
        assert_null(L.pvalloc(sizes[k]));
        assert_int_equal(errno, ENOMEM);
    }
    assert_int_equal(stats_now().heap_objects, before.heap_objects);
}

/* The same through the aligned entry points: an aligned request whose size
 * is close to SIZE_MAX must not wrap around to a small block. */
static void impossible_aligned_sizes_fail_with_enomem(void **state)
{
    (void)state;
    REQUIRE_LIBRARY_NAMES();
    static const size_t sizes[] = {SIZE_MAX, SIZE_MAX - 100, (size_t)PTRDIFF_MAX + 1};
    void *const sentinel = (void *)(uintptr_t)0x5e17e1;
    int failures = 0;
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        for (size_t align = 16; align <= 8192; align <<= 1) {
            void *out = sentinel;
            int rc = L.posix_memalign(&out, align, sizes[k]);
            errno = 0;
            void *a = L.aligned_alloc(align, sizes[k]);
            int a_errno = errno;
            errno = 0;
            void *m = L.memalign(align, sizes[k]);
            int m_errno = errno;
            if (rc != ENOMEM || out != sentinel || a != NULL || a_errno != ENOMEM ||
                m != NULL || m_errno != ENOMEM) {
                print_error("align %zu size %#zx: posix_memalign %d (%p), aligned_alloc %p "
                            "(errno %d), memalign %p (errno %d)\n",
                            align, sizes[k], rc, out, a, a_errno, m, m_errno);
                failures++;
            }
        }
        errno = 0;
        void *v = L.valloc(sizes[k]);
        if (v != NULL || errno != ENOMEM) {
            print_error("valloc(%#zx) = %p (errno %d)\n", sizes[k], v, errno);
            failures++;
        }
    }
    assert_int_equal(failures, 0);
}

/* ---- calloc */

static void calloc_zeroes_and_checks_overflow(void **state)
{
    (void)state;
    REQUIRE_LIBRARY_NAMES();
    static const size_t sizes[] = {100, 4000, 40000, 1 << 20, (3 << 20) + 5};
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        size_t n = sizes[k];
        for (int round = 0; round < 3; round++) {
            void *p = L.malloc(n);
            assert_non_null(p);
            memset(p, 0xff, L.malloc_usable_size(p));
            L.free(p);
            unsigned char *z = L.calloc(1, n);
            assert_non_null(z);
            assert_true(all_zero(z, n));
            if (n <= 32768)
                assert_ptr_equal(z, p); /* the dirty block itself came back */
            L.free(z);
        }
    }
    errno = 0;
    assert_null(L.calloc(SIZE_MAX / 2 + 1, 4));
    assert_int_equal(errno, ENOMEM);
    errno = 0;
    assert_null(L.calloc(4, SIZE_MAX / 2 + 1));
    assert_int_equal(errno, ENOMEM);
    void *e = L.calloc(0, 0);
    assert_non_null(e);
    L.free(e);
}

/* ---- realloc, reallocarray */

static void realloc_semantics(void **state)
{
    (void)state;
    REQUIRE_LIBRARY_NAMES();
    struct mem_stats before = stats_now();
    void *p = L.realloc(NULL, 100);
    assert_non_null(p);
    assert_int_equal(stats_now().heap_objects, before.heap_objects + 1);
    assert_null(L.realloc(p, 0)); /* glibc: frees, returns NULL */
    assert_int_equal(stats_now().heap_objects, before.heap_objects);

    p = L.malloc(200000);
    assert_null(L.realloc(p, 0));
    assert_int_equal(stats_now().heap_objects, before.heap_objects);

    static const size_t sizes[] = {1, 16, 17, 500, 4096, 32768, 32769, 65536, 1 << 20};
    enum { K = sizeof(sizes) / sizeof(sizes[0]) };
    for (size_t a = 0; a < K; a++) {
        for (size_t b = 0; b < K; b++) {
            size_t keep = sizes[a] < sizes[b] ? sizes[a] : sizes[b];
            void *q = L.malloc(sizes[a]);
            fill(q, sizes[a], a * K + b);
            q = L.realloc(q, sizes[b]);
            assert_non_null(q);
            assert_true(L.malloc_usable_size(q) >= sizes[b]);
            assert_true(intact(q, keep, a * K + b));
            q = L.reallocarray(q, 1, sizes[a]);
            assert_non_null(q);
            assert_true(intact(q, keep, a * K + b));
            L.free(q);
        }
    }

    p = L.malloc(1000);
    fill(p, 1000, 5);
    errno = 0;
    assert_null(L.reallocarray(p, SIZE_MAX / 2 + 1, 4));
    assert_int_equal(errno, ENOMEM);
    errno = 0;
    assert_null(L.realloc(p, SIZE_MAX));
    assert_int_equal(errno, ENOMEM);
    assert_true(intact(p, 1000, 5));
    p = L.reallocarray(p, 100, 100);
    assert_non_null(p);
    assert_true(intact(p, 1000, 5));
    L.free(p);
    assert_int_equal(stats_now().heap_objects, before.heap_objects);
}

/* ---- posix_memalign, aligned_alloc, memalign, valloc, pvalloc */

static void posix_memalign_semantics(void **state)
{
    (void)state;
    REQUIRE_LIBRARY_NAMES();
    static const size_t bad[] = {0, 1, 2, 3, 4, 24, 48, 4097};
    void *const sentinel = (void *)(uintptr_t)0x5e17e1;
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        void *out = sentinel;
        assert_int_equal(L.posix_memalign(&out, bad[k], 64), EINVAL);
        assert_ptr_equal(out, sentinel);
    }
    static const size_t sizes[] = {1, 100, 4095, 4096, 30000, 32769, 100000};
    for (size_t align = 8; align <= ((size_t)1 << 20); align <<= 1) {
        for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
            void *out = sentinel;
            assert_int_equal(L.posix_memalign(&out, align, sizes[k]), 0);
            assert_true(aligned_to(out, align));
            size_t usable = L.malloc_usable_size(out);
            assert_true(usable >= sizes[k]);
            memset(out, 1, usable);
            L.free(out);
        }
    }
    void *out = sentinel;
    assert_int_equal(L.posix_memalign(&out, 16, SIZE_MAX), ENOMEM);
    assert_ptr_equal(out, sentinel);
}

static void aligned_alloc_semantics(void **state)
{
    (void)state;
    REQUIRE_LIBRARY_NAMES();
    static const size_t bad[] = {0, 3, 24, 100, 3 * 4096};
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        errno = 0;
        assert_null(L.aligned_alloc(bad[k], 100));
        assert_int_equal(errno, EINVAL);
    }
    void *p = L.aligned_alloc(64, 100);
    assert_non_null(p);
    assert_true(aligned_to(p, 64));
    assert_true(L.malloc_usable_size(p) >= 100);
    memset(p, 1, 100);
    L.free_aligned_sized(p, 64, 100);
    for (size_t align = 16; align <= 65536; align <<= 1) {
        p = L.aligned_alloc(align, 3 * align + 1);
        assert_true(aligned_to(p, align));
        memset(p, 2, 3 * align + 1);
        L.free(p);
    }
}

static void memalign_rounds_the_alignment_up(void **state)
{
    (void)state;
    REQUIRE_LIBRARY_NAMES();
    enum { N = 64 };
    void *b[N];
    /* 16-byte blocks are only 16-aligned: half of them would miss 32. */
    for (int i = 0; i < N; i++) {
        b[i] = L.memalign(24, 8);
        assert_non_null(b[i]);
        assert_true(aligned_to(b[i], 32));
    }
    for (int i = 0; i < N; i++)
        L.free(b[i]);
    for (int i = 0; i < N; i++) {
        b[i] = L.memalign(100, 1 + (size_t)i * 50);
        assert_true(aligned_to(b[i], 128));
        memset(b[i], 3, 1 + (size_t)i * 50);
    }
    for (int i = 0; i < N; i++)
        L.free(b[i]);
    for (size_t align = 1; align <= ((size_t)1 << 20); align <<= 1) {
        void *p = L.memalign(align, 1000);
        assert_non_null(p);
        assert_true(aligned_to(p, align > 16 ? align : 16));
        memset(p, 4, 1000);
        L.free(p);
    }
    void *z = L.memalign(0, 10);
    assert_non_null(z);
    L.free(z);
    /* glibc: an alignment above SIZE_MAX/2 + 1 is EINVAL. */
    errno = 0;
    assert_null(L.memalign(SIZE_MAX / 2 + 2, 1));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(L.memalign(SIZE_MAX, 1));
    assert_int_equal(errno, EINVAL);
}

static void valloc_and_pvalloc_are_page_aligned(void **state)
{
    (void)state;
    REQUIRE_LIBRARY_NAMES();
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    static const size_t sizes[] = {0, 1, 100, 4095, 4096, 4097, 5000, 30000, 100000};
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        size_t n = sizes[k];
        void *v = L.valloc(n);
        assert_non_null(v);
        assert_true(aligned_to(v, page));
        assert_true(L.malloc_usable_size(v) >= n);
        memset(v, 5, n);

        void *pv = L.pvalloc(n);
        assert_non_null(pv);
        assert_true(aligned_to(pv, page));
        size_t rounded = n == 0 ? page : (n + page - 1) / page * page;
        size_t usable = L.malloc_usable_size(pv);
        assert_true(usable >= rounded);
        memset(pv, 6, rounded); /* pvalloc promises the whole pages */
        L.free(v);
        L.free_sized(pv, n);
    }
}

static void sized_frees_release(void **state)
{
    (void)state;
    REQUIRE_LIBRARY_NAMES();
    struct mem_stats before = stats_now();
    void *a = L.malloc(100), *b = L.malloc(50000);
    void *c = L.aligned_alloc(128, 300), *d = L.aligned_alloc(16384, 70000);
    L.free_sized(a, 100);
    L.free_sized(b, 50000);
    L.free_aligned_sized(c, 128, 300);
    L.free_aligned_sized(d, 16384, 70000);
    struct mem_stats after = stats_now();
    assert_int_equal(after.mallocs - before.mallocs, 4);
    assert_int_equal(after.frees - before.frees, 4);
    assert_int_equal(after.heap_objects, before.heap_objects);
    assert_stats_invariants(&after);
}

/* ---- Exports */

static const char *const exported_required[] = {
    "malloc", "free", "calloc", "realloc", "reallocarray", "posix_memalign", "aligned_alloc",
    "memalign", "valloc", "pvalloc", "malloc_usable_size", "free_sized", "free_aligned_sized",
    "spanalloc_malloc", "spanalloc_free", "spanalloc_calloc", "spanalloc_realloc",
    "spanalloc_reallocarray", "spanalloc_aligned_alloc", "spanalloc_posix_memalign",
    "spanalloc_usable_size", "spanalloc_free_sized", "spanalloc_free_aligned_sized",
    "read_mem_stats", "spanalloc_stats_print", "free_os_memory", "spanalloc_set_memory_limit",
    "spanalloc_profile_write",
};
static const char *const exported_optional[] = {
    "mallctl", "nallocx", "malloc_stats_print",           /* jemalloc compatibility */
    "_init", "_fini", "__bss_start", "_edata", "_end",  /* linker-made */
};
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static int find_name(const char *const *set, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(set[i], name) == 0)
            return (int)i;
    return -1;
}

static void library_exports_exactly_the_api(void **state)
{
    (void)state;
    char cmd[4200];
    snprintf(cmd, sizeof(cmd), "nm -D --defined-only '%s' 2>&1", lib_path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    bool seen[COUNT(exported_required)] = {false};
    int unexpected = 0, lines = 0;
    char line[512];
    while (fgets(line, sizeof(line), p) != NULL) {
        char type, name[400];
        if (sscanf(line, "%*s %c %399s", &type, name) != 2) {
            print_error("unparsed nm line: %s", line);
            unexpected++;
            continue;
        }
        lines++;
        char *at = strchr(name, '@');
        if (at != NULL)
            *at = '\0';
        int i = find_name(exported_required, COUNT(exported_required), name);
        if (i >= 0)
            seen[i] = true;
        else if (find_name(exported_optional, COUNT(exported_optional), name) < 0) {
            print_error("unexpected export: %c %s\n", type, name);
            unexpected++;
        }
    }
    int status = pclose(p);
    assert_int_equal(status, 0);
    assert_true(lines > 0);
    int missing = 0;
    for (size_t i = 0; i < COUNT(exported_required); i++)
        if (!seen[i]) {
            print_error("missing export: %s\n", exported_required[i]);
            missing++;
        }
    assert_int_equal(missing, 0);
    assert_int_equal(unexpected, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_libc_name_resolves_to_spanalloc),
        cmocka_unit_test(malloc_is_counted_by_spanalloc),
        cmocka_unit_test(glibc_internal_allocations_are_spanallocs),
        cmocka_unit_test(malloc_zero_and_alignment),
        cmocka_unit_test(impossible_sizes_fail_with_enomem),
        cmocka_unit_test(impossible_aligned_sizes_fail_with_enomem),
        cmocka_unit_test(calloc_zeroes_and_checks_overflow),
        cmocka_unit_test(realloc_semantics),
        cmocka_unit_test(posix_memalign_semantics),
        cmocka_unit_test(aligned_alloc_semantics),
        cmocka_unit_test(memalign_rounds_the_alignment_up),
        cmocka_unit_test(valloc_and_pvalloc_are_page_aligned),
        cmocka_unit_test(sized_frees_release),
        cmocka_unit_test(library_exports_exactly_the_api),
    };
    return cmocka_run_group_tests_name("libc_names", tests, resolve_library, close_library);
}
