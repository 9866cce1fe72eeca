#!/usr/bin/env bash
# callgrind.sh: instructions per malloc+free pair, per allocator, counted by
# `valgrind --tool=callgrind` (repeatable: the same count every run).
#
# insn_driver runs each workload PAIRS times after a fixed warm-up; it is run
# with PAIRS = K and 2K, and (Ir(2K) - Ir(K)) / K is the exact cost of one
# pair: startup, warm-up and exit cancel out.  Only the main thread's count
# is used (--separate-threads=yes), so a background thread (spanalloc's
# scavenger) cannot add noise.  Every allocator comes in through LD_PRELOAD;
# callgrind does not replace malloc (only memcheck-like tools do), and each
# run is checked: the driver reports, via dladdr, which object's malloc it
# called, and for spanalloc how many mallocs read_mem_stats counted.
#
# spanalloc is measured as shipped (build/libspanalloc.so): it turns its
# thread caches off only under memcheck, never under callgrind.
set -euo pipefail

usage() {
  cat <<USAGE
usage: $0 [-b BUILD_DIR] [-k K] [-a ALLOCATORS] [-j JOBS]
  -b DIR   meson build directory (default: <repo>/build)
  -k K     pairs in the short run (default 200000, multiple of 64); long run = 2K;
           the 64 KiB and 1 MiB pairs use K/32
  -a LIST  comma list from glibc,jemalloc,tcmalloc,mimalloc,spanalloc (default all)
  -j N     valgrind runs in parallel (default 2)
Prints a markdown table on stdout; progress on stderr.
USAGE
}

here=$(cd "$(dirname "$0")" && pwd)
build="$here/../../build"
K=200000
allocs="glibc,jemalloc,tcmalloc,mimalloc,spanalloc"
jobs=2
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    -b) build=$2; shift 2 ;;
    -k) K=$2; shift 2 ;;
    -a) allocs=$2; shift 2 ;;
    -j) jobs=$2; shift 2 ;;
    *) usage >&2; exit 2 ;;
  esac
done
build=$(cd "$build" && pwd)
driver="$build/bench/micro/insn_driver"
[ -x "$driver" ] || { echo "no $driver: build first (ninja -C $build)" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "valgrind not installed" >&2; exit 1; }
[ $((K % 64)) -eq 0 ] || { echo "K must be a multiple of 64" >&2; exit 2; }

L=/usr/lib/x86_64-linux-gnu
lib_of() {
  case "$1" in
    glibc) echo "" ;;
    jemalloc) echo "$L/libjemalloc.so.2" ;;
    tcmalloc) echo "$L/libtcmalloc_minimal.so.4" ;;
    mimalloc) echo "$L/libmimalloc.so.2" ;;
    spanalloc) echo "$build/libspanalloc.so" ;;
    stub) echo "" ;;
  esac
}
# What dladdr must report as malloc's home for the run to count.
expect_of() {
  case "$1" in
    glibc|stub) echo "libc.so.6" ;;
    *) basename "$(lib_of "$1")" ;;
  esac
}

# The 64 KiB and 1 MiB pairs run K/32 times (rounded to 64): some allocators spend tens
# of thousands of instructions on it, and the difference method is exact anyway.
k_of() {
  if [ "$1" = pair64k ] || [ "$1" = pair1m ]; then
    local k=$((K / 32 / 64 * 64)); [ $k -ge 64 ] || k=64; echo $k
  else
    echo "$K"
  fi
}
IFS=, read -r -a alist <<<"$allocs"
workloads=(live64 pair32 pair1k pair64k pair1m)
tmp=$(mktemp -d /tmp/sa-callgrind.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# One job = allocator workload pairs
jobfile="$tmp/jobs"
for a in stub "${alist[@]}"; do
  lib=$(lib_of "$a")
  if [ "$a" != glibc ] && [ "$a" != stub ] && [ ! -e "$lib" ]; then
    echo "skip $a: $lib missing" >&2; continue
  fi
  for w in "${workloads[@]}"; do
    k=$(k_of "$w")
    for n in "$k" $((2 * k)); do echo "$a $w $n"; done
  done
done >"$jobfile"

run_one() { # allocator workload pairs
  local a=$1 w=$2 n=$3 lib out extra=()
  lib=$(lib_of "$a")
  out="$tmp/$a.$w.$n"
  [ "$a" = stub ] && extra=(--stub)
  env ${lib:+LD_PRELOAD=$lib} valgrind --tool=callgrind --separate-threads=yes \
    --callgrind-out-file="$out.cg.%p" "$driver" "$w" "$n" "${extra[@]}" \
    >"$out.log" 2>&1 || { echo "FAILED: $a $w $n (see log)" >&2; cat "$out.log" >&2; return 1; }
  # main thread = part -01
  local f; f=$(ls "$out".cg.*-01)
  grep '^totals:' "$f" | awk '{print $2}' >"$out.ir"
  rm -f "$out".cg.*
  echo "  $a $w $n: $(cat "$out.ir") Ir" >&2
}
export -f run_one lib_of k_of
export K
export tmp driver build L

total=$(wc -l <"$jobfile")
echo "callgrind: $total valgrind runs, K=$K, -j $jobs" >&2
start=$(date +%s)
xargs -P "$jobs" -L 1 bash -c 'run_one "$@"' _ <"$jobfile"
echo "callgrind: done in $(( $(date +%s) - start )) s" >&2

# Check every run used the intended allocator.
fail=0
for a in stub "${alist[@]}"; do
  [ -e "$tmp/$a.live64.$K.log" ] || continue
  exp=$(expect_of "$a")
  for log in "$tmp/$a".*.log; do
    line=$(grep '^insn_driver:' "$log" || true)
    case "$line" in
      *"malloc_from="*"$exp"*) ;;
      *) echo "CHECK FAILED ($a, expected malloc from $exp): $line" >&2; fail=1 ;;
    esac
    case "$a" in spanalloc*)
      d=$(sed -n 's/.*spanalloc_mallocs_delta=\([0-9]*\).*/\1/p' <<<"$line")
      p=$(sed -n 's/.*pairs=\([0-9]*\).*/\1/p' <<<"$line")
      if [ -z "$d" ] || [ "$d" -lt "$p" ]; then
        echo "CHECK FAILED ($a: read_mem_stats counted ${d:-no} mallocs for $p pairs)" >&2; fail=1
      fi ;;
    esac
  done
  echo "verified $a: $(grep -h '^insn_driver:' "$tmp/$a.live64.$K.log" | sed 's/.*malloc_from=//')" >&2
done
[ $fail -eq 0 ] || exit 1

per_pair() { # allocator workload -> insns per pair (1 decimal)
  local a=$1 w=$2 k
  k=$(k_of "$w")
  [ -e "$tmp/$a.$w.$k.ir" ] || { echo "-"; return; }
  awk -v s="$(cat "$tmp/$a.$w.$k.ir")" -v l="$(cat "$tmp/$a.$w.$((2 * k)).ir")" -v k="$k" \
    'BEGIN { printf "%.1f", (l - s) / k }'
}

declare -A ipp
for a in stub "${alist[@]}"; do
  for w in "${workloads[@]}"; do ipp[$a.$w]=$(per_pair "$a" "$w"); done
done

echo "### Instructions per malloc+free pair (callgrind, (Ir(2K)-Ir(K))/K, K=$K ($(k_of pair64k) for 64 KiB and 1 MiB), main thread)"
echo
echo "| allocator | live64 16..256 B LIFO | 32 B pair | 1 KiB pair | 64 KiB pair | 1 MiB pair |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
for a in "${alist[@]}"; do
  printf "| %s |" "$a"
  for w in "${workloads[@]}"; do printf " %s |" "${ipp[$a.$w]}"; done
  echo
done
printf "| (driver loop, stub allocator) |"
for w in "${workloads[@]}"; do printf " %s |" "${ipp[stub.$w]}"; done
echo
echo
if [[ " ${alist[*]} " == *" spanalloc "* ]]; then
  echo "| ratio spanalloc / peer | live64 | 32 B | 1 KiB | 64 KiB | 1 MiB |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: |"
  for a in "${alist[@]}"; do
    case "$a" in spanalloc*) continue ;; esac
    printf "| spanalloc / %s |" "$a"
    for w in "${workloads[@]}"; do
      awk -v s="${ipp[spanalloc.$w]}" -v p="${ipp[$a.$w]}" \
        'BEGIN { if (p > 0 && s != "-") printf " %.2f |", s / p; else printf " - |" }'
    done
    echo
  done
fi
