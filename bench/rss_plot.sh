#!/usr/bin/env bash
# rss_plot.sh: the RSS-vs-HeapAlloc picture, for spanalloc and its peers.
#
# Runs bench/rss_vs_heap (busy -> shrink -> idle -> release call -> tail)
# under each allocator, keeps the CSVs in bench/out/rss_<alloc>.csv
# (rss_small_<alloc>.csv for --small) and draws with gnuplot:
#   panel 1: spanalloc's heap_* lines, live bytes, RSS and LazyFree over time
#   panel 2: the RSS of every allocator on the same time axis, with live bytes
# with the phase boundaries marked.  Then prints, per allocator, RSS/live while
# busy (median), RSS after the idle phase and after the release call.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<EOF
usage: bash bench/rss_plot.sh [options]
Runs rss_vs_heap under each allocator and draws bench/out/rss_vs_heap.png (pool
workload) and bench/out/rss_vs_heap_small.png (--small variant).
  --real-idle         spanalloc with its real 5 min idle threshold (idle phase
                      320 s) instead of SPANALLOC_SCAVENGE_IDLE=1s (idle 15 s)
  --variant V         pool, small or both (default both)
  --allocators LIST   default: ${ALL_ALLOCATORS// /,}
  --busy-seconds S    busy phase (default 10)
  --idle-seconds S    idle phase (default 15, or 320 with --real-idle)
  --serial            one allocator at a time (default: all at once; the runs
                      are paced and mostly sleep, and RSS is per process)
  --build DIR         meson build dir (default build)
  --outdir DIR        default bench/out
  --no-install        do not apt-get install missing peers or gnuplot
  --help              this text
EOF
}

REAL_IDLE=0 VARIANT=both ALLOCS=$ALL_ALLOCATORS BUSY=10 IDLE="" SERIAL=0 BUILD=build
OUTDIR="" INSTALL=1
while [ $# -gt 0 ]; do
    case "$1" in
        --real-idle) REAL_IDLE=1; shift ;;
        --variant) VARIANT=$2; shift 2 ;;
        --allocators) ALLOCS=$2; shift 2 ;;
        --busy-seconds) BUSY=$2; shift 2 ;;
        --idle-seconds) IDLE=$2; shift 2 ;;
        --serial) SERIAL=1; shift ;;
        --build) BUILD=$2; shift 2 ;;
        --outdir) OUTDIR=$2; shift 2 ;;
        --no-install) INSTALL=0; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done
case "$VARIANT" in pool | small | both) ;; *) die "--variant: pool, small or both" ;; esac
BUILD=$(abs_build_dir "$BUILD")
OUTDIR=${OUTDIR:-$BENCH_DIR/out}
SHRINK=3 TAIL=2
if [ -z "$IDLE" ]; then
    if [ "$REAL_IDLE" = 1 ]; then IDLE=320; else IDLE=15; fi
fi
need_bench_binaries rss_vs_heap bench_run
if [ "$INSTALL" = 1 ]; then
    install_peers
    command -v gnuplot >/dev/null || apt_install gnuplot-nox || true
fi
read -r -a allocs <<<"$(usable_allocators "$ALLOCS" "$BUILD")"
[ ${#allocs[@]} -gt 0 ] || die "no usable allocator"
mkdir -p "$OUTDIR"

if [ "$REAL_IDLE" = 1 ]; then
    unset SPANALLOC_SCAVENGE_IDLE
    SCAV_NOTE="SPANALLOC_SCAVENGE_IDLE unset (5m)"
else
    export SPANALLOC_SCAVENGE_IDLE=${SPANALLOC_SCAVENGE_IDLE:-1s}
    SCAV_NOTE="SPANALLOC_SCAVENGE_IDLE=$SPANALLOC_SCAVENGE_IDLE"
fi

# run_variant VARIANT PREFIX EXTRA_ARGS...: one rss_vs_heap per allocator.
run_variant() {
    local variant=$1 prefix=$2 a pre pids=() t0
    shift 2
    t0=$(date +%s)
    for a in $ALL_ALLOCATORS; do # no stale data from an earlier run in the plot
        rm -f "$OUTDIR/${prefix}_$a.csv" "$OUTDIR/${prefix}_$a.log" "$OUTDIR/${prefix}_$a.time"
    done
    local total
    total=$(awk -v b="$BUSY" -v s="$SHRINK" -v i="$IDLE" -v t="$TAIL" 'BEGIN{printf "%.0f", b+s+i+t}')
    if [ "$SERIAL" = 1 ]; then
        log "rss_plot: $variant variant, ${allocs[*]} one after another (~${total}s each)"
    else
        log "rss_plot: $variant variant, ${allocs[*]} at once (~${total}s)"
    fi
    for a in "${allocs[@]}"; do
        pre=$(preload_path "$a" "$BUILD")
        "$BUILD/bench/bench_run" --preload "$pre" --out "$OUTDIR/${prefix}_$a.time" -- \
            "$BUILD/bench/rss_vs_heap" "$@" --busy-seconds "$BUSY" --shrink-seconds "$SHRINK" \
            --idle-seconds "$IDLE" --tail-seconds "$TAIL" --out "$OUTDIR/${prefix}_$a.csv" \
            2>"$OUTDIR/${prefix}_$a.log" &
        pids+=($!)
        if [ "$SERIAL" = 1 ]; then
            wait "${pids[-1]}" || warn "rss_vs_heap under $a failed: see $OUTDIR/${prefix}_$a.log"
            log "rss_plot:   $a done ($(($(date +%s) - t0))s)"
        fi
    done
    if [ "$SERIAL" = 0 ]; then
        local k
        for k in "${!pids[@]}"; do
            wait "${pids[$k]}" || warn "rss_vs_heap under ${allocs[$k]} failed: see $OUTDIR/${prefix}_${allocs[$k]}.log"
            log "rss_plot:   ${allocs[$k]} done ($(($(date +%s) - t0))s)"
        done
    fi
}

alloc_color() {
    case "$1" in
        spanalloc) echo '#d62728' ;; glibc) echo '#1f77b4' ;; jemalloc) echo '#2ca02c' ;;
        tcmalloc) echo '#ff7f0e' ;; *) echo '#9467bd' ;;
    esac
}

# summary_field LOG KEY: a value from the "summary k=v ..." line.
summary_field() {
    sed -n 's/^summary .*/&/p' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -1
}

# plot VARIANT PREFIX PNG TITLE
plot() {
    local variant=$1 prefix=$2 png=$3 title=$4 a ref="" gp
    gp=$OUTDIR/$prefix.gp
    for a in "${allocs[@]}"; do
        if [ -s "$OUTDIR/${prefix}_$a.csv" ] && grep -q '^summary ' "$OUTDIR/${prefix}_$a.log"; then
            ref=${ref:-$a}
        fi
    done
    [ -n "$ref" ] || { warn "no data for the $variant plot"; return 0; }
    local tshr tidl trel tend
    tshr=$(summary_field "$OUTDIR/${prefix}_$ref.log" t_shrink)
    tidl=$(summary_field "$OUTDIR/${prefix}_$ref.log" t_idle)
    trel=$(summary_field "$OUTDIR/${prefix}_$ref.log" t_release)
    tend=$(summary_field "$OUTDIR/${prefix}_$ref.log" t_end)
    local have_sa=0
    [ -s "$OUTDIR/${prefix}_spanalloc.csv" ] && grep -q '^summary ' "$OUTDIR/${prefix}_spanalloc.log" && have_sa=1
    {
        cat <<EOF
set terminal pngcairo size 1400,1100 font "DejaVu Sans,11" noenhanced
set output '$png'
set datafile separator ','
MiB = 1048576.0
set multiplot layout 2,1 title "$title"
set xrange [0:$tend]
set xlabel 'time (s)'
set ylabel 'MiB'
set grid ytics lc rgb '#dddddd'
set key outside right top vertical
set lmargin 10
set rmargin 30
set yrange [0:*]
set style line 1 lc rgb 'black' lw 4
set style line 2 lc rgb '#1f77b4' lw 2
set style line 3 lc rgb '#ff7f0e' lw 2 dt (6,4)
set style line 4 lc rgb '#2ca02c' lw 2
set style line 5 lc rgb '#9467bd' lw 2
set style line 6 lc rgb '#8c564b' lw 2 dt 2
set style line 7 lc rgb '#d62728' lw 3
set style line 8 lc rgb '#e377c2' lw 2 dt 3
EOF
        local x name
        for x in "0:busy" "$tshr:shrink" "$tidl:idle" "$trel:release call"; do
            name=${x#*:}
            x=${x%%:*}
            echo "set arrow from $x, graph 0 to $x, graph 1 nohead dt 2 lc rgb '#888888'"
            echo "set label '$name' at $x, graph 0.97 offset 0.4,0 tc rgb '#555555'"
        done
        if [ "$have_sa" = 1 ]; then
            local f=$OUTDIR/${prefix}_spanalloc.csv
            echo "set title 'spanalloc ($SCAV_NOTE): heap statistics and RSS'"
            echo "plot '$f' skip 1 using 1:(\$3/MiB) with lines ls 1 title 'live (requested bytes)', \\"
            echo "  '' skip 1 using 1:(\$4/MiB) with lines ls 2 title 'heap_alloc', \\"
            echo "  '' skip 1 using 1:(\$5/MiB) with lines ls 3 title 'heap_inuse', \\"
            echo "  '' skip 1 using 1:(\$6/MiB) with lines ls 4 title 'heap_idle', \\"
            echo "  '' skip 1 using 1:(\$7/MiB) with lines ls 5 title 'heap_released', \\"
            echo "  '' skip 1 using 1:(\$8/MiB) with lines ls 6 title 'heap_sys', \\"
            echo "  '' skip 1 using 1:(\$10/MiB) with lines ls 7 title 'RSS', \\"
            echo "  '' skip 1 using 1:(\$11/MiB) with lines ls 8 title 'LazyFree'"
        else
            local f=$OUTDIR/${prefix}_$ref.csv
            echo "set title 'spanalloc not built: live bytes and RSS under $ref'"
            echo "plot '$f' skip 1 using 1:(\$3/MiB) with lines ls 1 title 'live', \\"
            echo "  '' skip 1 using 1:(\$10/MiB) with lines ls 7 title 'RSS ($ref)'"
        fi
        echo "set title 'RSS of every allocator (same workload, same seed; phase marks from the $ref run)'"
        echo -n "plot '$OUTDIR/${prefix}_$ref.csv' skip 1 using 1:(\$3/MiB) with lines ls 1 dt 2 title 'live bytes'"
        for a in "${allocs[@]}"; do
            if [ -s "$OUTDIR/${prefix}_$a.csv" ]; then
                echo ", \\"
                echo -n "  '$OUTDIR/${prefix}_$a.csv' skip 1 using 1:(\$10/MiB) with lines lw 2 lc rgb '$(alloc_color "$a")' title 'RSS $a'"
            fi
        done
        echo
        echo "unset multiplot"
    } >"$gp"
    if gnuplot "$gp" 2>"$OUTDIR/${prefix}.gnuplot.log"; then
        log "rss_plot: wrote $png"
    else
        warn "gnuplot failed: $(head -c 400 "$OUTDIR/${prefix}.gnuplot.log")"
    fi
}

# table VARIANT PREFIX: the summary table, markdown, on stdout.
table() {
    local variant=$1 prefix=$2 a
    echo "### RSS vs live: $variant workload ($SCAV_NOTE for spanalloc; busy ${BUSY}s, idle ${IDLE}s)"
    echo
    echo "| allocator | busy live MiB | busy RSS MiB | busy RSS/live | live at end MiB | RSS after idle MiB | after idle /live | RSS after release MiB | after release /live | release call (ms) |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for a in "${allocs[@]}"; do
        local lg=$OUTDIR/${prefix}_$a.log
        if ! grep -q '^summary ' "$lg" 2>/dev/null; then
            echo "| $a | failed | | | | | | | | |"
            continue
        fi
        grep '^summary ' "$lg" | tr ' ' '\n' | awk -F= -v a="$a" '
            NF == 2 { v[$1] = $2 }
            END {
                le = v["live_end_mib"] + 0
                printf "| %s | %.1f | %.1f | %.2f | %.1f | %.1f | %.2f | %.1f | %.2f | %.1f |\n", a,
                    v["busy_live_mib"], v["busy_rss_mib"], v["busy_ratio"], le,
                    v["rss_after_idle_mib"], (le > 0 ? v["rss_after_idle_mib"] / le : 0),
                    v["rss_after_release_mib"], (le > 0 ? v["rss_after_release_mib"] / le : 0),
                    v["release_ms"]
            }'
    done
    echo
    echo "Release calls: $(for a in "${allocs[@]}"; do
        r=$(summary_field "$OUTDIR/${prefix}_$a.log" release 2>/dev/null || true)
        [ -n "$r" ] && printf '%s %s; ' "$a" "$r"
    done | sed 's/; $//')."
    local bk
    bk=$(summary_field "$OUTDIR/${prefix}_${allocs[0]}.log" bookkeeping_busy_mib 2>/dev/null || true)
    echo "busy: median over the second half of the busy phase (after the build for --small)." \
        "live at end: bytes still allocated after the shrink. RSS includes the program's own" \
        "tables (${bk:-?} MiB while busy, about 1 MiB after the shrink) and ~2 MiB of binaries."
    local la=$OUTDIR/${prefix}_spanalloc.log
    if [ -f "$la" ] && grep -q '^summary ' "$la"; then
        echo "spanalloc after idle: heap_released $(summary_field "$la" heap_released_after_idle_mib) MiB of heap_sys $(summary_field "$la" heap_sys_after_idle_mib) MiB."
    fi
    echo
}

tables=$OUTDIR/rss_table.md
: >"$tables"
if [ "$VARIANT" != small ]; then
    run_variant pool rss
    plot pool rss "$OUTDIR/rss_vs_heap.png" \
        "Pool workload: 20 slots of 5..10 MB buffers (busy, shrink to 2 slots, idle, release call)"
    table pool rss >>"$tables"
fi
if [ "$VARIANT" != pool ]; then
    run_variant small rss_small --small
    plot small rss_small "$OUTDIR/rss_vs_heap_small.png" \
        "Small objects: 1M objects of 16..1024 B, 95% freed in random order (fragmentation)"
    table small rss_small >>"$tables"
fi
cat "$tables"
log "rss_plot: tables in $tables; CSVs and logs in $OUTDIR"
