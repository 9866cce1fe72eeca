#!/usr/bin/env bash
# run.sh: the google-benchmark micro suite under every allocator, then the
# callgrind instruction counts (callgrind.sh).
#
# micro_libc (bodies call malloc/free) runs under LD_PRELOAD of each peer and
# of spanalloc; micro_spanalloc (bodies call spanalloc_malloc/..., plus the
# spanalloc-only free_os_memory and read_mem_stats benchmarks) runs beside
# them.  Wall times on a shared 2-core machine are noisy, so the runs
# alternate: R rounds, each running every allocator once (in a rotated
# order), and the tables show the median over the rounds.  Each run's
# context says which object's malloc the process called; a run whose malloc
# did not come from the intended allocator aborts the script.
set -euo pipefail

usage() {
  cat <<USAGE
usage: $0 [-b BUILD_DIR] [-r ROUNDS] [-t MIN_TIME] [-f FILTER] [-a ALLOCATORS]
          [--no-callgrind] [-k K] [-o OUTDIR]
  -b DIR    meson build directory (default: <repo>/build)
  -r N      rounds; each runs every allocator once (default 5)
  -t SEC    --benchmark_min_time per benchmark and round (default 0.1)
  -f REGEX  --benchmark_filter (default: all)
  -a LIST   comma list from glibc,jemalloc,tcmalloc,mimalloc,spanalloc (default all)
  -k K      K for callgrind.sh (default 200000)
  -o DIR    keep the JSON of every run in DIR (default: a temporary directory)
  --no-callgrind  skip callgrind.sh
Markdown tables on stdout (ns per operation, median over rounds); progress on stderr.
Takes about 4 minutes with the defaults (2 of them callgrind).
USAGE
}

here=$(cd "$(dirname "$0")" && pwd)
build="$here/../../build"
rounds=5
min_time=0.1
filter=""
allocs="glibc,jemalloc,tcmalloc,mimalloc,spanalloc"
callgrind=1
K=200000
outdir=""
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    -b) build=$2; shift 2 ;;
    -r) rounds=$2; shift 2 ;;
    -t) min_time=$2; shift 2 ;;
    -f) filter=$2; shift 2 ;;
    -a) allocs=$2; shift 2 ;;
    -k) K=$2; shift 2 ;;
    -o) outdir=$2; shift 2 ;;
    --no-callgrind) callgrind=0; shift ;;
    *) usage >&2; exit 2 ;;
  esac
done
[ -f "$build/build.ninja" ] || {
  echo "no meson build in $build: configure and build first (meson setup $build --buildtype=release && ninja -C $build)" >&2
  exit 1
}
build=$(cd "$build" && pwd)
mlibc="$build/bench/micro/micro_libc"
mapi="$build/bench/micro/micro_spanalloc"
# The google-benchmark binaries are an optional part of the build
# (meson_options.txt: micro_benchmarks): configured but not built yet, build
# them; not configured (g++ or libbenchmark-dev missing when meson ran, or
# the option disabled), say so and stop.
targets=$(ninja -C "$build" -t targets all 2>/dev/null || true)
for b in "$mlibc" "$mapi"; do
  [ -x "$b" ] && continue
  rel=${b#"$build"/}
  if grep -q "^$rel:" <<<"$targets"; then
    echo "building $rel" >&2
    ninja -C "$build" "$rel" >&2 || { echo "ninja -C $build $rel failed" >&2; exit 1; }
  else
    cat >&2 <<MSG
$rel is not part of the build in $build: the micro-benchmarks need g++ and
google-benchmark (apt-get install g++ libbenchmark-dev), then
  meson setup --reconfigure $build -Dmicro_benchmarks=enabled && ninja -C $build
The instruction counts need neither: bash $here/callgrind.sh -b $build
MSG
    exit 1
  fi
done
py=/usr/bin/python3
[ -x "$py" ] || py=python3
if [ -z "$outdir" ]; then
  outdir=$(mktemp -d /tmp/sa-micro.XXXXXX)
  trap 'rm -rf "$outdir"' EXIT
else
  mkdir -p "$outdir"
fi

L=/usr/lib/x86_64-linux-gnu
lib_of() {
  case "$1" in
    glibc) echo "" ;;
    jemalloc) echo "$L/libjemalloc.so.2" ;;
    tcmalloc) echo "$L/libtcmalloc_minimal.so.4" ;;
    mimalloc) echo "$L/libmimalloc.so.2" ;;
    spanalloc) echo "$build/libspanalloc.so" ;;
  esac
}
IFS=, read -r -a alist <<<"$allocs"
runs=()
for a in "${alist[@]}"; do
  lib=$(lib_of "$a")
  if [ -n "$lib" ] && [ ! -e "$lib" ]; then
    echo "skip $a: $lib missing (apt-get install libjemalloc2 libtcmalloc-minimal4 libmimalloc2.0)" >&2
    continue
  fi
  runs+=("$a")
done
[[ " ${alist[*]} " == *" spanalloc "* ]] && runs+=(spanalloc-api)

bm_args=(--benchmark_repetitions=1 --benchmark_min_time="$min_time"
         --benchmark_format=console --benchmark_out_format=json)
[ -n "$filter" ] && bm_args+=(--benchmark_filter="$filter")

start=$(date +%s)
n=${#runs[@]}
for ((r = 1; r <= rounds; r++)); do
  for ((i = 0; i < n; i++)); do
    a=${runs[$(((i + r - 1) % n))]}
    out="$outdir/$a.round$r.json"
    echo "[$(( $(date +%s) - start ))s] round $r/$rounds: $a" >&2
    if [ "$a" = spanalloc-api ]; then
      "$mapi" "${bm_args[@]}" --benchmark_out="$out" >"$out.log" 2>&1
    else
      lib=$(lib_of "$a")
      env ${lib:+LD_PRELOAD=$lib} "$mlibc" "${bm_args[@]}" --benchmark_out="$out" >"$out.log" 2>&1
    fi || { echo "run failed: $a (log: $out.log)" >&2; cat "$out.log" >&2; exit 1; }
  done
done
echo "google-benchmark: $rounds rounds in $(( $(date +%s) - start )) s" >&2

"$py" - "$outdir" "$build" "${runs[@]}" <<'PY'
import glob, json, os, statistics, sys

outdir, build, runs = sys.argv[1], sys.argv[2], sys.argv[3:]
L = "/usr/lib/x86_64-linux-gnu/"
expect = {"glibc": "libc.so.6", "jemalloc": "libjemalloc.so.2",
          "tcmalloc": "libtcmalloc_minimal.so.4", "mimalloc": "libmimalloc.so.2",
          "spanalloc": "libspanalloc.so", "spanalloc-api": "libspanalloc.so"}
unit_ns = {"ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9}
samples = {}  # (bench, alloc) -> [ns per op]
order = []
for a in runs:
    for f in sorted(glob.glob(os.path.join(outdir, a + ".round*.json"))):
        d = json.load(open(f))
        frm = d["context"].get("malloc_from", "?")
        if expect[a] not in os.path.basename(frm):
            sys.exit(f"{f}: malloc came from {frm}, expected {expect[a]}")
        for b in d["benchmarks"]:
            if b.get("error_occurred"):
                print(f"warning: {a} {b['name']}: {b.get('error_message')}", file=sys.stderr)
                continue
            name = b["run_name"]
            for suffix in ("/real_time", "/manual_time"):
                name = name.replace(suffix, "")
            name = name.split("/iterations:")[0]
            ns = b["real_time"] * unit_ns[b["time_unit"]] / b.get("ops", 1)
            samples.setdefault((name, a), []).append(ns)
            if name not in order:
                order.append(name)

def med(name, a):
    v = samples.get((name, a))
    return statistics.median(v) if v else None

def fmt(x):
    if x is None:
        return "-"
    return f"{x:.1f}" if x < 1000 else f"{x:,.0f}"

peers = [a for a in runs if a in ("glibc", "jemalloc", "tcmalloc", "mimalloc")]
cols = [a for a in runs]
shared = [n for n in order if any((n, p) in samples for p in peers + ["spanalloc"])]
only = [n for n in order if n not in shared]
nround = max((len(v) for v in samples.values()), default=0)
print(f"### google-benchmark: ns per operation, median of {nround} alternating rounds\n")
print("spanalloc = micro_libc under LD_PRELOAD (as the peers); spanalloc-api = the same bodies "
      "calling spanalloc_malloc/free. pair = one malloc+free; batch/live64 = per block "
      "(malloc+free); realloc_grow = per chain 16 B -> 1 MiB (16 reallocs); xthread_free = per "
      "block, wall time of the producer/consumer pipeline.\n")
print("| benchmark | " + " | ".join(cols) + " | spanalloc / fastest peer |")
print("| --- |" + " ---: |" * (len(cols) + 1))
for n in shared:
    vals = {a: med(n, a) for a in cols}
    pv = [(vals[p], p) for p in peers if vals[p] is not None]
    ratio = "-"
    if pv and vals.get("spanalloc") is not None:
        best, who = min(pv)
        ratio = f"{vals['spanalloc'] / best:.2f} ({who})"
    print(f"| {n} | " + " | ".join(fmt(vals[a]) for a in cols) + f" | {ratio} |")
if only:
    print("\n### spanalloc only (micro_spanalloc), median of rounds\n")
    print("| benchmark | time per call |")
    print("| --- | ---: |")
    for n in only:
        v = med(n, "spanalloc-api")
        s = "-" if v is None else (f"{v / 1e3:,.1f} us" if v >= 1e4 else f"{v:.0f} ns")
        print(f"| {n} | {s} |")
PY

if [ $callgrind -eq 1 ]; then
  echo
  "$here/callgrind.sh" -b "$build" -k "$K" -a "$allocs"
fi
