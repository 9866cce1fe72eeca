#!/usr/bin/env bash
# Run tests/valgrind/planted under memcheck with spanalloc serving malloc and
# expect: spanalloc's usable size (112, valgrind's own allocator says 100),
# the planted leak as "definitely lost", the planted use-after-free as an
# invalid read inside a freed block.
set -u
prog=$1
out=$(valgrind --soname-synonyms=somalloc=nouserintercepts --leak-check=full \
      --errors-for-leak-kinds=definite "$prog" 2>&1)
fail=0
check() {
    if grep -qE "$1" <<<"$out"; then echo "ok: $2"; else echo "MISSING: $2"; fail=1; fi
}
check "usable size of a 100-byte block: 112" "spanalloc served malloc under valgrind"
check "100 bytes in 1 blocks are definitely lost|112 bytes in 1 blocks are definitely lost" "planted leak reported"
check "Invalid read of size 1" "planted use-after-free reported"
check "inside a block of size [0-9]+ free'd" "the read is placed in a freed block"
if [ $fail -ne 0 ]; then echo "$out" | tail -40; fi
exit $fail
