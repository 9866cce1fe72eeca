#!/usr/bin/env bash
# tests/fuzz/run.sh: build fuzz_ops with clang (libFuzzer + ASan + UBSan, the
# allocator core compiled with the same flags so coverage includes it) into a
# temporary directory and run it for a bounded time from tests/fuzz/corpus.
#
#   tests/fuzz/run.sh [SECONDS] [extra libFuzzer flags...]     (default 60 s)
#
# The committed corpus is only read; new inputs go to a temporary corpus.
# Findings (crash-*, timeout-*, ...) are kept in $FUZZ_ARTIFACTS (default
# /tmp/spanalloc-fuzz-artifacts).  Prints the number of executions; exits
# non-zero on a finding, a build failure, or fewer than FUZZ_MIN_EXECS inputs
# executed (default 1000: a fuzzer that barely ran tested nothing; 60 s runs
# on this 2-core machine under load executed 4,000-12,000).  FUZZ_KEEP=DIR builds into DIR
# and keeps the binary (DIR/fuzz_ops) for reproducing: DIR/fuzz_ops crash-file.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
secs=${1:-60}
min_execs=${FUZZ_MIN_EXECS:-1000}
[[ $# -gt 0 ]] && shift
CC=${FUZZ_CC:-clang}
artifacts=${FUZZ_ARTIFACTS:-/tmp/spanalloc-fuzz-artifacts}
if [[ -n ${FUZZ_KEEP:-} ]]; then
    work=$FUZZ_KEEP
    rm -rf "$work/obj" "$work/corpus"
else
    work=$(mktemp -d /tmp/spanalloc-fuzz.XXXXXX)
    trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work/obj" "$work/corpus" "$artifacts"

# The allocator core: the same list meson.build compiles (core_sources).
mapfile -t sources < <(sed -n '/^core_sources = files(/,/^)/p' "$root/meson.build" |
                       grep -o "'[^']*\.c'" | tr -d "'")
[[ ${#sources[@]} -gt 0 ]] || { echo "run.sh: no core_sources in meson.build" >&2; exit 2; }

san=(-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g -O1)
common=(-std=c11 -D_GNU_SOURCE -fno-builtin -I"$root/include" -I"$root/alloc" -I"$root/profile" -Wno-division-by-zero)
lib=(-fvisibility=hidden -ftls-model=initial-exec -DSPANALLOC_VERSION='"fuzz"')

echo "fuzz: building ${#sources[@]} core sources + fuzz_ops.c with $CC"
pids=()
for src in "${sources[@]}"; do
    obj="$work/obj/$(echo "$src" | tr / _).o"
    "$CC" "${san[@]}" -fsanitize=fuzzer-no-link "${common[@]}" "${lib[@]}" \
        -c "$root/$src" -o "$obj" &
    pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
"$CC" "${san[@]}" -fsanitize=fuzzer "${common[@]}" "$here/fuzz_ops.c" "$work"/obj/*.o \
    -pthread -lm -lgcc_s -o "$work/fuzz_ops"

echo "fuzz: running for ${secs}s from $here/corpus ($(ls "$here/corpus" | wc -l) seeds)"
set +e
ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=0} \
UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1} \
"$work/fuzz_ops" -max_total_time="$secs" -timeout=30 -print_final_stats=1 \
    -artifact_prefix="$artifacts/" "$@" "$work/corpus" "$here/corpus" 2>"$work/log"
rc=$?
set -e
execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$work/log" | grep -o '[0-9]*$' || true)
cov=$(grep -o 'cov: [0-9]*' "$work/log" | tail -1 || true)
if [[ $rc -ne 0 ]]; then
    tail -n 60 "$work/log" >&2
    echo "fuzz: FINDING (exit $rc) after ${execs:-?} executions; inputs in $artifacts" >&2
    exit "$rc"
fi
if [[ -z "$execs" || "$execs" -lt "$min_execs" ]]; then
    tail -n 20 "$work/log" >&2
    echo "fuzz: only ${execs:-an unknown number of} executions in ${secs}s (fewer than FUZZ_MIN_EXECS=$min_execs)" >&2
    exit 3
fi
echo "fuzz: ${execs:-?} executions in ${secs}s, ${cov:-cov: ?} edges, corpus grew to $(ls "$work/corpus" | wc -l) new inputs; no finding"
