#!/usr/bin/env bash
# compare.sh: every workload under every allocator, as a markdown table.
#
# Runs bench/workloads (one process per workload and run) under spanalloc,
# glibc, jemalloc, tcmalloc and mimalloc, alternating allocators: each
# repetition runs every workload under every allocator back to back, starting
# with a different allocator each time, so slow drift on a noisy machine hits
# all columns alike.  bench_run measures wall time (CLOCK_MONOTONIC) and peak
# RSS (ru_maxrss).  Prints medians, spanalloc/peer ratios and a geometric-mean
# row, and writes the same table to bench/out/compare.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<EOF
usage: bash bench/compare.sh [options]
Runs every workload of bench/workloads under each allocator (LD_PRELOAD),
alternating allocators, and prints median wall time and peak RSS per allocator,
spanalloc/peer ratios and a geometric-mean row as markdown.
  --runs N            runs per workload and allocator (default 5)
  --workloads LIST    comma-separated subset (default: all; see workloads --list)
  --allocators LIST   default: ${ALL_ALLOCATORS// /,}
  --scale F           passed to workloads --scale (default 1)
  --build DIR         meson build dir (default build)
  --out FILE          markdown copy (default bench/out/compare.md)
  --no-install        do not apt-get install missing peers
  --help              this text
spanalloc is skipped with a warning if DIR/libspanalloc.so is missing.
EOF
}

RUNS=5 WORKLOADS="" ALLOCS=$ALL_ALLOCATORS SCALE=1 BUILD=build OUT="" INSTALL=1
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;
        --workloads) WORKLOADS=$2; shift 2 ;;
        --allocators) ALLOCS=$2; shift 2 ;;
        --scale) SCALE=$2; shift 2 ;;
        --build) BUILD=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --no-install) INSTALL=0; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "--runs wants a positive integer"
BUILD=$(abs_build_dir "$BUILD")
OUT=${OUT:-$BENCH_DIR/out/compare.md}
need_bench_binaries workloads bench_run
[ "$INSTALL" = 1 ] && install_peers
read -r -a allocs <<<"$(usable_allocators "$ALLOCS" "$BUILD")"
[ ${#allocs[@]} -gt 0 ] || die "no usable allocator"
# spanalloc first: the ratio columns are spanalloc/peer.
read -r -a allocs <<<"$(printf '%s\n' "${allocs[@]}" | awk '$0=="spanalloc"{print; next} {r=r" "$0} END{print r}' | tr '\n' ' ')"
if [ -n "$WORKLOADS" ]; then
    read -r -a workloads <<<"${WORKLOADS//,/ }"
else
    mapfile -t workloads < <("$BUILD/bench/workloads" --list)
fi

mkdir -p "$(dirname "$OUT")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
results=$tmp/results
: >"$results"

n=${#allocs[@]}
start=$(date +%s)
log "compare: ${#workloads[@]} workloads x ${n} allocators x $RUNS runs (${allocs[*]})"
for ((rep = 0; rep < RUNS; rep++)); do
    for w in "${workloads[@]}"; do
        line="[run $((rep + 1))/$RUNS] $(printf '%-9s' "$w")"
        for ((k = 0; k < n; k++)); do
            a=${allocs[$(((k + rep) % n))]} # rotate the starting allocator per run
            pre=$(preload_path "$a" "$BUILD")
            rc=0
            "$BUILD/bench/bench_run" --preload "$pre" --out "$tmp/m" -- \
                "$BUILD/bench/workloads" --workload "$w" --scale "$SCALE" \
                >"$tmp/stdout" 2>"$tmp/stderr" || rc=$?
            if [ ! -s "$tmp/m" ]; then
                echo "0 0 $rc" >"$tmp/m"
            fi
            read -r wall kib status <"$tmp/m"
            if [ "$status" != 0 ]; then
                warn "$w under $a failed (status $status): $(tail -n 3 "$tmp/stderr")"
            fi
            echo "$w $a $rep $wall $kib $status" >>"$results"
            line+=" $a $(printf '%.2fs %dM' "$wall" $((kib / 1024)))"
        done
        log "$line"
    done
done
elapsed=$(($(date +%s) - start))

{
    echo "## Allocator comparison"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, kernel $(uname -r); $RUNS runs each," \
        "alternating allocators; median of wall time (s) and peak RSS (MiB) per process;" \
        "ratios are spanalloc/peer (< 1: spanalloc better); best peer: the fastest" \
        "(time) or leanest (RSS) peer of each row. Run took ${elapsed}s."
    echo
    awk -v allocs="${allocs[*]}" -v wls="${workloads[*]}" '
    function median(key,   m, i, j, t, v) {
        m = cnt[key]
        for (i = 1; i <= m; i++) v[i] = vals[key, i]
        for (i = 2; i <= m; i++) { t = v[i]; for (j = i - 1; j >= 1 && v[j] > t; j--) v[j + 1] = v[j]; v[j + 1] = t }
        return (m % 2) ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2
    }
    {
        w = $1; a = $2
        if ($6 != 0) { fail[w, a] = $6 }
        cnt[w, a, "t"]++; vals[w, a, "t", cnt[w, a, "t"]] = $4
        cnt[w, a, "r"]++; vals[w, a, "r", cnt[w, a, "r"]] = $5 / 1024
    }
    function table(kind, title, unit, fmt,   i, j, w, a, hdr, sep, line, v, r, gsum, gn, peers, np, has_sa) {
        na = split(allocs, A, " "); nw = split(wls, W, " ")
        has_sa = (A[1] == "spanalloc")
        hdr = "| " title " |"; sep = "|---|"
        for (j = 1; j <= na; j++) { hdr = hdr " " A[j] " |"; sep = sep "---:|" }
        if (has_sa) for (j = 2; j <= na; j++) { hdr = hdr " sa/" A[j] " |"; sep = sep "---:|" }
        if (has_sa && na > 2) { hdr = hdr " best peer | sa/best |"; sep = sep "---|---:|" }
        bsum = 0; bn = 0
        print hdr; print sep
        for (j = 1; j <= na; j++) { gsum[j] = 0; gn[j] = 0; rsum[j] = 0; rn[j] = 0 }
        for (i = 1; i <= nw; i++) {
            w = W[i]; line = "| " w " |"
            for (j = 1; j <= na; j++) {
                a = A[j]
                if ((w, a) in fail) { med[j] = -1; line = line " FAIL(" fail[w, a] ") |"; continue }
                med[j] = median(w SUBSEP a SUBSEP kind)
                line = line " " sprintf(fmt, med[j]) " |"
                if (med[j] > 0) { gsum[j] += log(med[j]); gn[j]++ }
            }
            if (has_sa) for (j = 2; j <= na; j++) {
                if (med[1] > 0 && med[j] > 0) {
                    r = med[1] / med[j]; rsum[j] += log(r); rn[j]++
                    line = line " " sprintf("%.2f", r) " |"
                } else line = line " - |"
            }
            # The best peer of this row: the fastest (time) or leanest (RSS).
            if (has_sa && na > 2) {
                b = 0
                for (j = 2; j <= na; j++) if (med[j] > 0 && (b == 0 || med[j] < med[b])) b = j
                if (b && med[1] > 0) {
                    r = med[1] / med[b]; bsum += log(r); bn++
                    line = line " " A[b] " |" sprintf(" %.2f", r) " |"
                } else line = line " - | - |"
            }
            print line
        }
        line = "| **geomean** |"
        for (j = 1; j <= na; j++) line = line " " (gn[j] ? sprintf(fmt, exp(gsum[j] / gn[j])) : "-") " |"
        if (has_sa) for (j = 2; j <= na; j++) line = line " **" (rn[j] ? sprintf("%.2f", exp(rsum[j] / rn[j])) : "-") "** |"
        if (has_sa && na > 2) line = line " | **" (bn ? sprintf("%.2f", exp(bsum / bn)) : "-") "** |"
        print line
        print ""
    }
    END {
        table("t", "wall time (s)", "s", "%.3f")
        table("r", "peak RSS (MiB)", "MiB", "%.1f")
    }' "$results"
    if [ "${allocs[0]}" != spanalloc ]; then
        echo "(spanalloc not measured: no ratio columns.)"
        echo
    fi
    echo "Workloads: $("$BUILD/bench/workloads" --help | sed -n '/^workloads:/,$p' | tail -n +2 |
        awk '{n=$1; $1=""; printf "%s%s:%s", (NR>1?"; ":""), n, $0} END{print ""}')."
} >"$OUT"
cat "$OUT"
log "compare: table written to $OUT"
