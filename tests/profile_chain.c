/*
 * profile_chain.c: known call chains for test_profile's stack-walker tests,
 * built with -O2 -fomit-frame-pointer as Debian's binaries are (so the
 * frames are described by CFI only), in the shapes that compiled code
 * takes: a small rsp-based frame, a large one, one whose CFA is on rbp (a
 * variable-length array), one that uses rbp as an ordinary saved register,
 * recursion, and a trip through libc (a qsort comparator).
 *
 * Each function stores its own return address (the pc the walk must report
 * for its caller's frame) in chain_ra[level], so the test knows the exact
 * stack to expect.  Nothing is inlined or turned into a tail call: each
 * call's result is used after it.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "profile_chain.h"

#if defined(__clang__)
#define CHAIN_FN __attribute__((noinline, used))
#else
#define CHAIN_FN __attribute__((noinline, noclone, used))
#endif

void *chain_ra[CHAIN_LEVELS];
static volatile int sink;

CHAIN_FN static int chain_leaf_call(chain_leaf_fn leaf, void *arg)
{
    chain_ra[0] = __builtin_return_address(0);
    return leaf(arg) + sink;
}

/* rbp as an ordinary callee-saved register: many values live across the
 * call (the CFI says where rbp was saved, at an rsp-based CFA). */
CHAIN_FN static int chain_pressure(chain_leaf_fn leaf, void *arg, int k)
{
    chain_ra[1] = __builtin_return_address(0);
    int a = sink + k, b = sink * 3 + k, c = sink ^ 5, d = sink + 7, e = sink * 11, f = sink - 1,
        g = sink + 13, h = sink * 17;
    int r = chain_leaf_call(leaf, arg);
    return r + a * b + c * d + e * f + g * h + a + b + c + d + e + f + g + h;
}

/* A variable-length array: the CFA is on rbp. */
CHAIN_FN static int chain_vla(chain_leaf_fn leaf, void *arg, int n)
{
    chain_ra[2] = __builtin_return_address(0);
    volatile char buf[n];
    buf[0] = (char)n;
    int r = chain_pressure(leaf, arg, n);
    return r + buf[0];
}

/* A frame larger than a page: a large rsp offset. */
CHAIN_FN static int chain_big(chain_leaf_fn leaf, void *arg)
{
    chain_ra[3] = __builtin_return_address(0);
    volatile char buf[20000];
    buf[0] = 1;
    buf[19999] = 2;
    int r = chain_vla(leaf, arg, 40 + sink);
    return r + buf[0] + buf[19999];
}

CHAIN_FN int chain_run(chain_leaf_fn leaf, void *arg)
{
    chain_ra[4] = __builtin_return_address(0);
    int r = chain_big(leaf, arg);
    return r + sink;
}

CHAIN_FN int chain_recurse(int n, chain_leaf_fn leaf, void *arg)
{
    if (n == 0)
        return leaf(arg) + sink;
    int r = chain_recurse(n - 1, leaf, arg);
    return r + sink + 1;
}

/* ---- through libc: the leaf runs in a qsort comparator */

static chain_leaf_fn qsort_leaf;
static void *qsort_arg;
static int qsort_called;

static int compare(const void *a, const void *b)
{
    if (qsort_called++ == 0)
        (void)qsort_leaf(qsort_arg);
    return *(const int *)a - *(const int *)b;
}

CHAIN_FN int chain_qsort(chain_leaf_fn leaf, void *arg)
{
    chain_ra[5] = __builtin_return_address(0);
    int v[16];
    for (int i = 0; i < 16; i++)
        v[i] = (i * 7) % 16 + sink;
    qsort_leaf = leaf;
    qsort_arg = arg;
    qsort_called = 0;
    qsort(v, 16, sizeof(v[0]), compare);
    return v[0] + sink;
}
