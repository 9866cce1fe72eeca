#!/usr/bin/env bash
# profile_accuracy.sh: the heap profile against the truth on profile_sites
# (four sites of known size), read back with `go tool pprof -top`.
#   bench/profile_accuracy.sh [-b BUILD] [-r RATE] [-n RUNS]
# Prints one line per run and site: inuse_space and alloc_space in MiB and
# their error against the truth; then the worst error.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build="$here/../build" rate=16K runs=5
while getopts b:r:n: o; do
  case $o in b) build=$OPTARG ;; r) rate=$OPTARG ;; n) runs=$OPTARG ;; *) exit 2 ;; esac
done
build=$(cd "$build" && pwd)
prog="$build/bench/profile_sites"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# truth in MiB: inuse alloc
declare -A inuse=([site_1k]=64 [site_64b]=16 [site_1m]=128 [site_churn]=0)
declare -A alloc=([site_1k]=64 [site_64b]=16 [site_1m]=128 [site_churn]=1024)
worst=0
mib_of() { # pprof -top -unit=MB prints MiB (pprof's MB is 2^20 bytes)
  awk -v s="$2" '$NF == s { v = $1; sub(/MB$/, "", v); printf "%.3f", v; f = 1 } END { if (!f) printf "0" }' "$1"
}
for run in $(seq 1 "$runs"); do
  SPANALLOC_PROFILE_RATE=$rate LD_PRELOAD="$build/libspanalloc.so" "$prog" "$tmp/p.pb.gz"
  go tool pprof -top -unit=MB -sample_index=inuse_space "$prog" "$tmp/p.pb.gz" >"$tmp/inuse" 2>/dev/null
  go tool pprof -top -unit=MB -sample_index=alloc_space "$prog" "$tmp/p.pb.gz" >"$tmp/alloc" 2>/dev/null
  for s in site_1k site_64b site_1m site_churn; do
    i=$(mib_of "$tmp/inuse" "$s") a=$(mib_of "$tmp/alloc" "$s")
    line=$(awk -v s="$s" -v i="$i" -v a="$a" -v ti="${inuse[$s]}" -v ta="${alloc[$s]}" 'BEGIN {
      ei = ti ? (i - ti) / ti * 100 : 0; ea = (a - ta) / ta * 100
      m = ei < 0 ? -ei : ei; ma = ea < 0 ? -ea : ea; if (ma > m) m = ma
      printf "%-10s inuse %8.2f MiB (truth %4d, %+5.1f%%)  alloc %8.2f MiB (truth %4d, %+5.1f%%)|%.2f",
             s, i, ti, ei, a, ta, ea, m }')
    echo "run $run: ${line%|*}"
    worst=$(awk -v w="$worst" -v e="${line##*|}" 'BEGIN { print (e > w ? e : w) }')
  done
done
echo "worst error: ${worst}% (rate $rate, $runs runs)"
