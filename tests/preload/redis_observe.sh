#!/usr/bin/env bash
# Preload test: watching an unmodified redis-server through spanalloc's
# snapshot file, as an operator would (docs/observability.md).
#
# redis-server runs with SPANALLOC_STATS_FILE=<tmp>/redis-%p.prom and a 1 s
# interval.  Checked: the file appears under the server's pid, passes
# `promtool check metrics`, is replaced (a new inode) every interval, and its
# heap figures follow a load (DEBUG POPULATE + redis-benchmark: heap_alloc up
# by at least 40 MiB; FLUSHALL + MEMORY PURGE: heap_alloc down and
# heap_released up); spanalloc-top, running in a tmux pane of 100x40, shows
# the HeapAlloc of the file it reads.  Every wait polls a condition with a
# deadline; none is a bare sleep.
#
# Usage: redis_observe.sh /path/to/libspanalloc.so /path/to/spanalloc-top
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"
pl_init redis-observe "${1:-}"
TOP=${2:-}
[[ -x "$TOP" ]] || pl_fail "spanalloc-top not found at '$TOP'"
pl_need redis-server redis-cli redis-benchmark promtool tmux timeout

source "$here/redis_lib.sh"
redis_start SPANALLOC_STATS_FILE="$PL_TMP/redis-%p.prom" SPANALLOC_STATS_INTERVAL=1s
session="spanalloc-observe-$$"
pl_at_exit "tmux kill-session -t $session 2>/dev/null"
file="$PL_TMP/redis-$pid.prom"

# metric NAME: its value in the current file (the snapshot is replaced
# atomically, so one read sees one whole snapshot).  With %p in the path the
# samples carry a pid="..." label.
metric() { awk -v m="$1" '{ n = $1; sub(/\{.*/, "", n) } n == m { print $2; exit }' "$file"; }
inode() { stat -c %i "$file" 2>/dev/null || echo none; }

# wait_for SECONDS CONDITION...: poll CONDITION every 0.1 s until it holds.
wait_for() {
    local deadline=$(( SECONDS + $1 )); shift
    until "$@"; do
        (( SECONDS < deadline )) || return 1
        sleep 0.1
    done
}
file_exists() { [[ -s "$file" ]]; }
replaced_since() { [[ "$(inode)" != "$1" ]]; }

# 1. The file appears, under the server's pid, and promtool accepts it.
wait_for 15 file_exists || fail "no snapshot at $file within 15 s"
promtool check metrics <"$file" >"$PL_TMP/promtool.out" 2>&1 ||
    fail "promtool rejects $file: $(head -n 5 "$PL_TMP/promtool.out")"

# 2. It is replaced every interval.
first=$(inode)
wait_for 5 replaced_since "$first" || fail "$file not replaced within 5 s (interval 1 s)"

# 3. The heap figures follow a load.
alloc0=$(metric spanalloc_heap_alloc_bytes)
[[ -n "$alloc0" ]] || fail "no spanalloc_heap_alloc_bytes in $file"
[[ "$(cli debug populate 300000 obs 200)" == OK ]] || fail "DEBUG POPULATE failed"
timeout 120 redis-benchmark -h 127.0.0.1 -p "$port" -q -n 20000 -d 1024 -r 100000 -t set,lpush \
    >"$PL_TMP/bench.out" 2>&1 </dev/null || fail "redis-benchmark failed"
grown() { local a; a=$(metric spanalloc_heap_alloc_bytes); [[ -n "$a" ]] && (( a >= alloc0 + 40 * 1048576 )); }
wait_for 10 grown || fail "heap_alloc did not grow by 40 MiB with the load ($alloc0 -> $(metric spanalloc_heap_alloc_bytes))"
alloc1=$(metric spanalloc_heap_alloc_bytes)
released1=$(metric spanalloc_heap_released_bytes)
promtool check metrics <"$file" >"$PL_TMP/promtool.out" 2>&1 ||
    fail "promtool rejects the loaded snapshot: $(head -n 5 "$PL_TMP/promtool.out")"

# 4. spanalloc-top shows the same HeapAlloc, live in a terminal.  The load is
# over, so the figure holds still; compare in MiB with two decimals.
tmux new-session -d -s "$session" -x 100 -y 40 "$TOP $file"
top_alloc() { tmux capture-pane -p -t "$session" 2>/dev/null | awk '$1 == "HeapAlloc" { print $2, $3; exit }'; }
want_mib=$(awk -v b="$(metric spanalloc_heap_alloc_bytes)" 'BEGIN { printf "%.1f MiB", b / 1048576 }')
shows_alloc() { [[ "$(top_alloc)" == "$want_mib" ]]; }
if ! wait_for 10 shows_alloc; then
    tmux capture-pane -p -t "$session" >"$PL_TMP/screen.txt" 2>&1 || true
    pl_show "$PL_TMP/screen.txt"
    fail "spanalloc-top shows HeapAlloc '$(top_alloc)', the file says '$want_mib'"
fi
tmux capture-pane -p -t "$session" | grep -q "HeapReleased" || fail "spanalloc-top's screen has no HeapReleased line"
tmux kill-session -t "$session"
"$TOP" --once "$file" | awk '$1 == "HeapAlloc" { print $2 }' >"$PL_TMP/once.txt"
[[ -s "$PL_TMP/once.txt" ]] || fail "spanalloc-top --once printed no HeapAlloc"

# 5. FLUSHALL + MEMORY PURGE: heap_alloc falls, heap_released rises.
[[ "$(cli flushall)" == OK ]] || fail "FLUSHALL failed"
[[ "$(cli memory purge)" == OK ]] || fail "MEMORY PURGE failed"
freed() {
    local a r; a=$(metric spanalloc_heap_alloc_bytes); r=$(metric spanalloc_heap_released_bytes)
    [[ -n "$a" && -n "$r" ]] && (( a + 40 * 1048576 <= alloc1 && r >= released1 + 40 * 1048576 ))
}
wait_for 10 freed || fail "after FLUSHALL + MEMORY PURGE: heap_alloc $(metric spanalloc_heap_alloc_bytes) (was $alloc1), heap_released $(metric spanalloc_heap_released_bytes) (was $released1)"
alloc2=$(metric spanalloc_heap_alloc_bytes)
released2=$(metric spanalloc_heap_released_bytes)

cli shutdown nosave >/dev/null 2>&1 || true
pl_wait_exit "$pid" 60 || fail "redis-server did not exit within 60 s of SHUTDOWN"
pl_forget_cleanups
(( PL_EXIT_STATUS == 0 )) || fail "redis-server exited with status $PL_EXIT_STATUS"

mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
pl_pass "$file: promtool OK, replaced every 1 s; heap_alloc $(mib "$alloc0") -> $(mib "$alloc1") MiB under load -> $(mib "$alloc2") after FLUSHALL+MEMORY PURGE (heap_released $(mib "$released1") -> $(mib "$released2") MiB); spanalloc-top in tmux showed HeapAlloc $want_mib"
