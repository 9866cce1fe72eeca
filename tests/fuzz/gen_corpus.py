#!/usr/bin/env python3
"""Write the seed corpus of fuzz_ops (tests/fuzz/corpus/); see the format at
the top of fuzz_ops.c.  Deterministic: rerunning rewrites the same files."""
import os
import random

MALLOC, FREE, REALLOC, CALLOC, ALIGNED, MEMALIGN, FREE_OS, STATS, CHECK, \
    REALLOCARRAY, FREE_SIZED, REALLOC_NEAR, HUGE = range(13)


def size(n):
    if n < 256:
        return bytes([0x00, n, 0])
    if n <= 1024:
        return bytes([0x40, n >> 8, n & 255])
    if n <= 32768:
        return bytes([0x80, n >> 8, n & 255])
    assert n <= 2560 * 1024
    return bytes([0xC0 | (n >> 16), (n >> 8) & 255, n & 255])


def op(code, slot=None, *rest):
    out = bytes([code]) + (bytes([slot]) if slot is not None else b"")
    for r in rest:
        out += r if isinstance(r, bytes) else bytes([r])
    return out


def align_shift(a):  # 2^(3 + b % 18)
    return a.bit_length() - 1 - 3


seeds = {}
SMALL = [0, 1, 8, 16, 24, 48, 64, 100, 255, 256, 512, 1000, 1024, 2048, 4096, 8192,
         10000, 20000, 32768]
LARGE = [32769, 40960, 65536, 100 * 1024, 200 * 1024, 300 * 1024]

seeds["small_classes"] = b"".join(op(MALLOC, i, size(n)) for i, n in enumerate(SMALL)) + \
    op(STATS) + b"".join(op(FREE, i) for i in range(len(SMALL))) + op(STATS)
seeds["large_and_release"] = b"".join(op(MALLOC, i, size(n)) for i, n in enumerate(LARGE)) + \
    op(STATS) + b"".join(op(FREE, i) for i in range(0, len(LARGE), 2)) + op(FREE_OS) + \
    b"".join(op(CHECK, i) for i in range(len(LARGE))) + op(STATS)
seeds["realloc_chain"] = op(MALLOC, 7, size(10)) + b"".join(
    op(REALLOC, 7, size(n)) for n in [20, 100, 1000, 5000, 33000, 100000, 300000, 64, 0, 50]) + \
    op(STATS)
seeds["calloc"] = b"".join(op(CALLOC, i, c, size(n)) for i, (c, n) in enumerate(
    [(0, 10), (3, 300), (15, 4000), (1, 40000), (7, 250000), (255, 100)])) + op(STATS)
seeds["aligned_alloc"] = b"".join(op(ALIGNED, i, align_shift(a), size(n)) for i, (a, n) in enumerate(
    [(16, 10), (64, 100), (256, 3000), (4096, 5000), (8192, 100), (65536, 100000),
     (1 << 20, 200000)])) + op(ALIGNED, 20, 0x80 + 24, size(64)) + op(STATS)
seeds["posix_memalign"] = b"".join(op(MEMALIGN, i, align_shift(a), size(n)) for i, (a, n) in enumerate(
    [(8, 1), (32, 48), (512, 5000), (16384, 20000), (131072, 300000)])) + \
    op(MEMALIGN, 30, 0x80 + 4, size(8)) + op(MEMALIGN, 31, 0x80 + 48, size(8)) + op(STATS)
seeds["reallocarray"] = op(MALLOC, 3, size(100)) + op(REALLOCARRAY, 3, 4, size(4000)) + \
    op(REALLOCARRAY, 3, 255, size(10)) + op(REALLOCARRAY, 3, 9, size(90000)) + \
    op(REALLOCARRAY, 9, 2, size(64)) + op(STATS)
seeds["realloc_in_place"] = op(MALLOC, 1, size(700)) + op(REALLOC_NEAR, 1, size(100)) + \
    op(MALLOC, 2, size(100000)) + op(REALLOC_NEAR, 2, size(30000)) + op(CHECK, 1) + \
    op(CHECK, 2) + op(STATS)
seeds["free_sized"] = op(MALLOC, 5, size(80)) + op(MALLOC, 6, size(50000)) + \
    op(FREE_SIZED, 5) + op(FREE_SIZED, 6) + op(FREE_SIZED, 6) + op(STATS)
seeds["all_slots"] = b"".join(op(MALLOC, i, size((i * 997) % 40000)) for i in range(256)) + \
    op(STATS) + b"".join(op(FREE, i) for i in range(0, 256, 3)) + op(FREE_OS) + \
    b"".join(op(MALLOC, i, size(200 + i)) for i in range(0, 256, 3)) + op(STATS)
MEDIUM = [32769, 40960, 40961, 49152, 65536, 65537, 100 * 1024, 131072, 200 * 1024, 262144]
seeds["medium_classes"] = b"".join(op(MALLOC, i, size(n)) for i, n in enumerate(MEDIUM)) + \
    op(STATS) + b"".join(op(FREE, i) for i in range(0, len(MEDIUM), 2)) + \
    b"".join(op(MALLOC, i, size(n)) for i, n in enumerate(MEDIUM) if i % 2 == 0) + \
    op(CALLOC, 40, 1, size(100000)) + op(STATS) + op(FREE_OS) + op(STATS)
seeds["large_shrink"] = op(MALLOC, 1, size(2500 * 1024)) + op(REALLOC, 1, size(1500 * 1024)) + \
    op(REALLOC, 1, size(600 * 1024)) + op(REALLOC, 1, size(262145)) + op(STATS) + \
    op(MALLOC, 2, size(1024 * 1024)) + op(FREE, 2) + op(MALLOC, 3, size(700 * 1024)) + \
    op(MALLOC, 2, size(1024 * 1024)) + op(REALLOC, 2, size(100 * 1024)) + op(CHECK, 1) + \
    op(STATS) + op(FREE_OS) + op(STATS)
rng = random.Random(20240601)
mixed = b""
for _ in range(400):
    code = rng.randrange(12)
    slot = rng.randrange(32)
    if code in (MALLOC, REALLOC, REALLOC_NEAR):
        mixed += op(code, slot, size(rng.choice([rng.randrange(256), rng.randrange(33000),
                                                 rng.randrange(300 * 1024),
                                                 rng.randrange(2560 * 1024)])))
    elif code in (CALLOC, REALLOCARRAY):
        mixed += op(code, slot, rng.randrange(20), size(rng.randrange(70000)))
    elif code in (ALIGNED, MEMALIGN):
        mixed += op(code, slot, rng.randrange(18), size(rng.randrange(70000)))
    elif code in (FREE_OS, STATS):
        mixed += op(code)
    else:
        mixed += op(code, slot)
seeds["mixed"] = mixed + op(STATS)
# Sizes no machine backs, through every entry point, beside a live block.
seeds["huge_sizes"] = op(MALLOC, 3, size(100)) + op(MALLOC, 4, size(200 * 1024)) + \
    b"".join(op(HUGE, 3 + w % 2, w, n) for w in range(6) for n in range(7)) + \
    op(CHECK, 3) + op(CHECK, 4) + op(STATS) + op(FREE, 3) + op(FREE, 4) + op(STATS)

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
os.makedirs(out, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
print(f"wrote {len(seeds)} seeds to {out}")
