#!/usr/bin/env bash
# threads.sh: the multi-thread workloads of bench/threads under every
# allocator, one markdown table per workload.
#
# Each run is one process (bench/threads --workload W) started by bench_run
# with LD_PRELOAD set to the allocator.  Allocators alternate round-robin:
# every repetition runs every workload under every allocator back to back,
# starting with a different allocator each time, so slow drift on a noisy
# machine hits all rows alike.  Each table gives, per allocator, the median
# of every figure the workload printed, the best peer of each column and the
# spanalloc/best-peer ratio (> 1: spanalloc behind, for every column; for
# throughput columns the ratio is best peer / spanalloc).  A summary table
# of every figure comes first.  The tables go to bench/out/threads.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<EOF
usage: bash bench/threads.sh [options]
Runs the workloads of bench/threads under each allocator (LD_PRELOAD),
alternating allocators, and prints one markdown table per workload: median of
every figure per allocator, best peer, spanalloc/best-peer ratio.
  --runs N            runs per workload and allocator (default 7)
  --quick             3 runs at --scale 0.5 (about a third of the time)
  --workloads LIST    comma-separated subset (default: all; bench/threads --list)
  --allocators LIST   default: ${ALL_ALLOCATORS// /,}; NAME:VAR=VAL[:VAR=VAL]
                      runs NAME with those environment settings as a row of its
                      own (never a "peer"), e.g. spanalloc:SPANALLOC_PERCPU=off;
                      LABEL@LIB[:VAR=VAL] preloads LIB (another build) as a row of
                      its own, e.g. before@/tmp/before/build/libspanalloc.so
  --scale F           passed to threads --scale (default 1)
  --build DIR         meson build dir (default build); bench/threads is built if missing
  --out FILE          markdown copy (default bench/out/threads.md); the raw
                      figures of every run go beside it (FILE without .md + .raw)
  --render RAW        run nothing: print the tables of an earlier run's .raw file
  --no-install        do not apt-get install missing peers
  --help              this text
The full default run takes about 10 minutes on 2 cores.
spanalloc is skipped with a warning if DIR/libspanalloc.so is missing.
EOF
}

RUNS=7 WORKLOADS="" ALLOCS=$ALL_ALLOCATORS SCALE=1 BUILD=build OUT="" INSTALL=1 RENDER=
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;
        --quick) RUNS=3 SCALE=0.5; shift ;;
        --workloads) WORKLOADS=$2; shift 2 ;;
        --allocators) ALLOCS=$2; shift 2 ;;
        --scale) SCALE=$2; shift 2 ;;
        --build) BUILD=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --no-install) INSTALL=0; shift ;;
        --render) RENDER=$2; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "--runs wants a positive integer"
BUILD=$(abs_build_dir "$BUILD")
OUT=${OUT:-$BENCH_DIR/out/threads.md}
RAW=${RENDER:-${OUT%.md}.raw}

# The raw file: "META key value..." lines, "DESC workload<TAB>text", then one
# "R workload figure allocator rep value low|high" per figure and run, and
# "FAIL workload allocator status" for a failed run.
run_all() {
    if [ ! -x "$BUILD/bench/threads" ] || [ ! -x "$BUILD/bench/bench_run" ]; then
        [ -f "$BUILD/build.ninja" ] || die "$BUILD is not a meson build dir (meson setup $BUILD)"
        ninja -C "$BUILD" -j2 bench/threads bench/bench_run >&2
    fi
    [ "$INSTALL" = 1 ] && install_peers
    local allocs=() workloads tok
    # NAME or NAME:VAR=VAL[:VAR=VAL...] (the same allocator run with settings)
    # or LABEL@LIBRARY[:VAR=VAL...] (another build, e.g. the code before a change)
    for tok in ${ALLOCS//,/ }; do
        local base=${tok%%:*}
        if [[ "$base" == *@* ]]; then
            if [ -e "${base#*@}" ]; then allocs+=("$tok"); else warn "${base#*@} missing: $tok skipped"; fi
        elif [ -n "$(usable_allocators "$base" "$BUILD")" ]; then
            allocs+=("$tok")
        fi
    done
    [ ${#allocs[@]} -gt 0 ] || die "no usable allocator"
    # spanalloc first: the ratio columns are spanalloc/best peer.
    read -r -a allocs <<<"$(printf '%s\n' "${allocs[@]}" | awk '$0=="spanalloc"{print; next} {r=r" "$0} END{print r}' | tr '\n' ' ')"
    if [ -n "$WORKLOADS" ]; then
        read -r -a workloads <<<"${WORKLOADS//,/ }"
    else
        mapfile -t workloads < <("$BUILD/bench/threads" --list)
    fi
    mkdir -p "$(dirname "$RAW")"
    tmp=$(mktemp -d) # global: the EXIT trap runs after run_all returned
    trap 'rm -rf "$tmp"' EXIT
    {
        echo "META allocs ${allocs[*]}"
        echo "META workloads ${workloads[*]}"
        echo "META runs $RUNS"
        echo "META scale $SCALE"
        echo "META date $(date -u '+%Y-%m-%d %H:%M UTC')"
        echo "META machine $(nproc) CPUs, kernel $(uname -r)"
        echo "META load_start $(cut -d' ' -f1-3 /proc/loadavg)"
        echo "META commit $(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo '?')"
        "$BUILD/bench/threads" --describe | sed 's/^/DESC /'
    } >"$RAW"
    local n=${#allocs[@]} start rep w k a base pre rc status kib line settings
    start=$(date +%s)
    log "threads: ${#workloads[@]} workloads x ${n} allocators x $RUNS runs (${allocs[*]}), scale $SCALE"
    for ((rep = 0; rep < RUNS; rep++)); do
        for w in "${workloads[@]}"; do
            line="[run $((rep + 1))/$RUNS] $(printf '%-16s' "$w")"
            for ((k = 0; k < n; k++)); do
                a=${allocs[$(((k + rep) % n))]} # rotate the starting allocator per run
                base=${a%%:*}
                if [[ "$base" == *@* ]]; then pre=${base#*@}; else pre=$(preload_path "$base" "$BUILD"); fi
                settings=()
                [[ "$a" == *:* ]] && IFS=: read -r -a settings <<<"${a#*:}"
                rc=0
                rm -f "$tmp/m"
                env ${settings[@]+"${settings[@]}"} \
                    "$BUILD/bench/bench_run" --preload "$pre" --out "$tmp/m" -- \
                    "$BUILD/bench/threads" --workload "$w" --scale "$SCALE" \
                    >"$tmp/stdout" 2>"$tmp/stderr" || rc=$?
                status=$rc kib=0
                [ -s "$tmp/m" ] && read -r _ kib status <"$tmp/m"
                if [ "$status" != 0 ]; then
                    warn "$w under $a failed (status $status): $(tail -n 3 "$tmp/stderr")"
                    echo "FAIL $w $a $status" >>"$RAW"
                else
                    awk -v a="$a" -v rep="$rep" '$1 == "result" { print "R", $2, $3, a, rep, $4, $5 }' \
                        "$tmp/stdout" >>"$RAW"
                    # bench_run's ru_maxrss: the whole process's peak, every workload alike
                    echo "R $w peak_MiB $a $rep $(awk -v k="$kib" 'BEGIN { print k / 1024 }') low" >>"$RAW"
                fi
                line+=" $a $(awk '$1 == "result" { printf "%s ", $4; exit }' "$tmp/stdout")"
            done
            log "$line"
        done
    done
    echo "META elapsed $(($(date +%s) - start))s" >>"$RAW"
    echo "META load_end $(cut -d' ' -f1-3 /proc/loadavg)" >>"$RAW"
}

meta() { awk -v k="$1" '$1 == "META" && $2 == k { $1 = ""; $2 = ""; sub(/^  /, ""); print; exit }' "$RAW"; }

render() {
    echo "## Multi-thread workloads (bench/threads.sh)"
    echo
    echo "$(meta date), $(meta machine), commit $(meta commit); $(meta runs) runs each" \
        "(scale $(meta scale)), allocators alternating round-robin; median per allocator." \
        "Ratio: spanalloc / best peer for lower-is-better figures, best peer / spanalloc for" \
        "throughput (Mops): > 1 always means spanalloc is behind. Run took $(meta elapsed);" \
        "load average (1, 5, 15 min) $(meta load_start) at the start, $(meta load_end) at the end" \
        "(the workloads' own runnable threads count in it: idle-threads and server-1000 add up to 1000)."
    echo
    awk -v allocs="$(meta allocs)" -v wls="$(meta workloads)" '
    function median(key,   m, i, j, t, v) {
        m = cnt[key]
        for (i = 1; i <= m; i++) v[i] = vals[key, i]
        for (i = 2; i <= m; i++) { t = v[i]; for (j = i - 1; j >= 1 && v[j] > t; j--) v[j + 1] = v[j]; v[j + 1] = t }
        return (m % 2) ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2
    }
    function range(key,   i, lo, hi) {
        if (!(key in cnt)) return "-"
        lo = hi = vals[key, 1]
        for (i = 2; i <= cnt[key]; i++) { if (vals[key, i] < lo) lo = vals[key, i]; if (vals[key, i] > hi) hi = vals[key, i] }
        return fmt(lo) ".." fmt(hi)
    }
    function fmt(v) {
        if (v >= 100) return sprintf("%.0f", v)
        if (v >= 10) return sprintf("%.1f", v)
        if (v >= 1) return sprintf("%.2f", v)
        return sprintf("%.3g", v)
    }
    # best peer of figure f of workload w: sets bp (index into A, 0 if none)
    function best(w, f,   j, k, m) {
        bp = 0
        for (j = 2; j <= na; j++) {
            k = w SUBSEP f SUBSEP A[j]
            if (A[j] ~ /^spanalloc|@/ || !(k in cnt) || ((w, A[j]) in fail)) continue
            m = median(k)
            if (bp == 0 || (dir[w, f] == "high" ? m > bm : m < bm)) { bp = j; bm = m }
        }
    }
    function ratio(w, f,   s) {
        if (A[1] != "spanalloc" || bp == 0 || !((w, f, A[1]) in cnt) || ((w, A[1]) in fail)) return "-"
        s = median(w SUBSEP f SUBSEP A[1])
        if (dir[w, f] == "high") return (s > 0) ? sprintf("%.2f", bm / s) : "-"
        return (bm > 0) ? sprintf("%.2f", s / bm) : "-"
    }
    $1 == "DESC" { l = substr($0, 6); t = index(l, "\t"); what[substr(l, 1, t - 1)] = substr(l, t + 1); next }
    $1 == "FAIL" { fail[$2, $3] = $4; next }
    $1 == "R" {
        w = $2; f = $3; a = $4
        if (!((w, f) in dir)) { nf[w]++; F[w, nf[w]] = f; dir[w, f] = $7 }
        k = w SUBSEP f SUBSEP a
        cnt[k]++; vals[k, cnt[k]] = $6
    }
    END {
        na = split(allocs, A, " "); nw = split(wls, W, " ")
        print "### Summary: every figure under every allocator"
        print ""
        hdr = "| workload | figure | better |"; sep = "|---|---|---|"
        for (j = 1; j <= na; j++) { hdr = hdr " " A[j] " |"; sep = sep "---:|" }
        print hdr " best peer | sa/best |"; print sep "---|---:|"
        for (i = 1; i <= nw; i++) {
            w = W[i]
            if (nf[w] == 0) {
                line = "| " w " | (none) | - |"
                for (j = 1; j <= na; j++) line = line " " (((w, A[j]) in fail) ? "FAIL(" fail[w, A[j]] ")" : "-") " |"
                print line " - | - |"
            }
            for (q = 1; q <= nf[w]; q++) {
                f = F[w, q]; best(w, f)
                line = "| " w " | " f " | " dir[w, f] " |"
                for (j = 1; j <= na; j++) {
                    k = w SUBSEP f SUBSEP A[j]
                    if ((w, A[j]) in fail) line = line " FAIL |"
                    else line = line " " ((k in cnt) ? fmt(median(k)) : "-") " |"
                }
                print line " " (bp ? A[bp] : "-") " | **" ratio(w, f) "** |"
            }
        }
        print ""
        for (i = 1; i <= nw; i++) {
            w = W[i]
            print "### " w
            print ""
            print what[w] "."
            print ""
            if (nf[w] == 0) {
                line = "No figures: every run failed ("
                for (j = 1; j <= na; j++) if ((w, A[j]) in fail) line = line A[j] ": status " fail[w, A[j]] "; "
                print line "a content check fails with 3)."
                print ""
                continue
            }
            hdr = "| allocator |"; sep = "|---|"
            for (q = 1; q <= nf[w]; q++) { hdr = hdr " " F[w, q] " (" dir[w, F[w, q]] ") |"; sep = sep "---:|" }
            print hdr; print sep
            for (j = 1; j <= na; j++) {
                line = "| " A[j] " |"
                for (q = 1; q <= nf[w]; q++) {
                    k = w SUBSEP F[w, q] SUBSEP A[j]
                    if ((w, A[j]) in fail) line = line " FAIL(" fail[w, A[j]] ") |"
                    else if (k in cnt) line = line " " fmt(median(k)) " |"
                    else line = line " - |"
                }
                print line
            }
            # the spread of the runs behind each median, spanalloc and the best peer
            if (A[1] == "spanalloc" && !((w, A[1]) in fail)) {
                line = "| spanalloc min..max |"
                for (q = 1; q <= nf[w]; q++) line = line " " range(w SUBSEP F[w, q] SUBSEP A[1]) " |"
                print line
            }
            if (na > 1) {
                line = "| best peer |"; rline = "| **spanalloc / best peer** |"
                sline = "| best peer min..max |"
                for (q = 1; q <= nf[w]; q++) {
                    best(w, F[w, q])
                    line = line " " (bp ? A[bp] : "-") " |"
                    sline = sline " " (bp ? range(w SUBSEP F[w, q] SUBSEP A[bp]) : "-") " |"
                    rline = rline " **" ratio(w, F[w, q]) "** |"
                }
                print line
                print sline
                if (A[1] == "spanalloc") print rline
            }
            print ""
        }
    }' "$RAW"
}

[ -n "$RENDER" ] || run_all
mkdir -p "$(dirname "$OUT")"
[ -s "$RAW" ] || die "$RAW: no figures"
render >"$OUT"
cat "$OUT"
log "threads: tables written to $OUT (raw figures: $RAW)"
