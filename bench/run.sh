#!/usr/bin/env bash
# run.sh: the benchmark in one command (bash bench/run.sh).
#
# Installs what is missing (when root), builds with meson/ninja, then runs
#   1. rss_plot.sh: RSS vs HeapAlloc over time under every allocator, plots
#      bench/out/rss_vs_heap.png and rss_vs_heap_small.png, and a table of
#      RSS/live while busy, after idling and after the release call;
#   2. compare.sh: wall time and peak RSS of every workload under every
#      allocator, with spanalloc/peer ratios (bench/out/compare.md).
# About 2-4 minutes with the defaults on a 2-core machine.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<EOF
usage: bash bench/run.sh [options]
Builds spanalloc and the benchmarks, then runs the RSS-vs-heap comparison
(bench/rss_plot.sh) and the time/RSS table (bench/compare.sh) against glibc,
jemalloc, tcmalloc and mimalloc.  Outputs go to bench/out/.
  --runs N        runs per workload and allocator in the table (default 3)
  --real-idle     spanalloc's real 5 min scavenger threshold (adds ~5 min)
  --busy-seconds S  busy phase of the RSS runs (default 10)
  --skip-rss      no RSS-vs-heap runs and plots
  --skip-compare  no time/RSS table
  --build DIR     meson build dir (default build)
  --no-install    do not apt-get install missing tools and peers
  --help          this text
EOF
}

RUNS=3 REAL_IDLE=0 BUSY=10 SKIP_RSS=0 SKIP_CMP=0 BUILD=build INSTALL=1
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;
        --real-idle) REAL_IDLE=1; shift ;;
        --busy-seconds) BUSY=$2; shift 2 ;;
        --skip-rss) SKIP_RSS=1; shift ;;
        --skip-compare) SKIP_CMP=1; shift ;;
        --build) BUILD=$2; shift 2 ;;
        --no-install) INSTALL=0; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done
BUILD_ARG=$BUILD
BUILD=$(abs_build_dir "$BUILD")
OUTDIR=$BENCH_DIR/out
mkdir -p "$OUTDIR"
t_start=$(date +%s)

# ---- 1. tools and peers
# Only what the library and these benchmarks need: the unit tests (cmocka) and
# the micro-benchmarks (g++, google-benchmark) are optional parts of the build
# (meson_options.txt, 'auto'), left out when their packages are absent; `bash
# tests/run.sh` installs those and enables the tests.
if [ "$INSTALL" = 1 ]; then
    missing=()
    command -v meson >/dev/null || missing+=(meson)
    command -v ninja >/dev/null || missing+=(ninja-build)
    command -v gcc >/dev/null || missing+=(gcc)
    command -v pkg-config >/dev/null || missing+=(pkg-config)
    command -v gnuplot >/dev/null || missing+=(gnuplot-nox)
    [ -x /usr/bin/time ] || missing+=(time)
    for a in jemalloc tcmalloc mimalloc; do
        [ -e "$(preload_path "$a" .)" ] || missing+=("$(apt_package "$a")")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        apt_install "${missing[@]}" || warn "some packages could not be installed: ${missing[*]}"
    fi
fi
command -v meson >/dev/null && command -v ninja >/dev/null || die "meson and ninja are needed"

# ---- 2. build
cd "$REPO_DIR"
buildlog=$OUTDIR/build.log
log "run: building in $BUILD_ARG (log: $buildlog)"
if [ ! -f "$BUILD/build.ninja" ]; then
    meson setup "$BUILD" --buildtype=release -Dtests=auto -Dmicro_benchmarks=auto >"$buildlog" 2>&1 ||
        { tail -20 "$buildlog" >&2; die "meson setup failed"; }
fi
bench_targets=(bench/workloads bench/rss_vs_heap bench/bench_run)
spanalloc_ok=1
if ! ninja -C "$BUILD" >>"$buildlog" 2>&1; then
    tail -15 "$buildlog" >&2
    warn "the full build failed; building the library and the benchmarks alone"
    lib_target=$(ninja -C "$BUILD" -t targets all 2>/dev/null |
        awk -F: '$1 ~ /^libspanalloc\.so[.0-9]*$/ && length($1) > length(t) { t = $1 } END { print t }')
    ninja -C "$BUILD" "${lib_target:-libspanalloc.so}" >>"$buildlog" 2>&1 || spanalloc_ok=0
fi
# A build dir configured before bench/meson.build existed has no bench targets.
if [ ! -x "$BUILD/bench/workloads" ]; then
    meson setup --reconfigure "$BUILD" >>"$buildlog" 2>&1 || die "meson reconfigure failed (see $buildlog)"
fi
ninja -C "$BUILD" "${bench_targets[@]}" >>"$buildlog" 2>&1 ||
    { tail -20 "$buildlog" >&2; die "the benchmarks did not build (see $buildlog)"; }

allocators=$ALL_ALLOCATORS
if [ "$spanalloc_ok" = 0 ]; then
    warn "libspanalloc.so did not build: the spanalloc column is skipped"
    allocators=${ALL_ALLOCATORS/spanalloc /}
fi
common=(--build "$BUILD" --no-install --allocators "${allocators// /,}")

# ---- 3. RSS vs heap
if [ "$SKIP_RSS" = 0 ]; then
    rss_args=("${common[@]}" --busy-seconds "$BUSY")
    [ "$REAL_IDLE" = 1 ] && rss_args+=(--real-idle)
    bash "$BENCH_DIR/rss_plot.sh" "${rss_args[@]}"
fi

# ---- 4. time / RSS table
if [ "$SKIP_CMP" = 0 ]; then
    echo
    bash "$BENCH_DIR/compare.sh" "${common[@]}" --runs "$RUNS"
fi

elapsed=$(($(date +%s) - t_start))
echo
echo "Outputs ($((elapsed / 60))m$((elapsed % 60))s):"
if [ "$SKIP_RSS" = 0 ]; then
    for f in rss_vs_heap.png rss_vs_heap_small.png rss_table.md; do
        [ -e "$OUTDIR/$f" ] && echo "  $OUTDIR/$f"
    done
    echo "  $OUTDIR/rss_<allocator>.csv, rss_small_<allocator>.csv (samples every 100 ms)"
fi
[ "$SKIP_CMP" = 0 ] && echo "  $OUTDIR/compare.md"
exit 0
