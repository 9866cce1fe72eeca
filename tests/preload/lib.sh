# tests/preload/lib.sh: helpers shared by the preload tests (sourced, not run).
#
# Each preload test runs a real program with LD_PRELOAD=<library> and must show
# two things: the program succeeds by its own account (its test summary, every
# benchmark line, a clean exit), and the preloaded library really served its
# allocations.  The second part is the "proof": the library prints, at process
# exit on stderr, one JSON object of its counters when SPANALLOC_STATS=json is
# set; pl_prove parses that and compares it with the same run on glibc counted
# by malloc_count.so (or with a floor measured that way once).
#
# Only the program under test gets LD_PRELOAD: helpers (python3, curl, wrk,
# redis-cli, timeout) run on glibc so that their own exit stats never mix with
# the program's.
#
# Environment knobs:
#   PRELOAD_PROOF=0   skip the JSON proof (for trying the scripts with a peer
#                     allocator such as libjemalloc.so.2, which prints no
#                     spanalloc stats). Default 1. The /proc/PID/maps check
#                     still runs for servers.
#   PRELOAD_KEEP_TMP=1  keep the temporary directory (its path is printed).

set -euo pipefail

PL_NAME=""
PL_LIB=""
PL_TMP=""
PL_T0=0
PL_PROOF="${PRELOAD_PROOF:-1}"
PL_PROOF_NOTE=""
PL_CLEANUPS=()

# The python used for helper scripts (never preloaded).  Debian's own python3
# is the safe choice; fall back to whatever is on PATH.
if [[ -x /usr/bin/python3 ]]; then PL_PY=/usr/bin/python3; else PL_PY=python3; fi

pl_log() { printf '[preload %s] %s\n' "$PL_NAME" "$*" >&2; }

# pl_fail MESSAGE: print the one-line summary and exit 1.
pl_fail() {
    printf 'preload %s: FAIL (%s)\n' "$PL_NAME" "$*"
    exit 1
}

# pl_pass FIGURES: print the one-line summary and exit 0.
pl_pass() {
    local secs=$(( SECONDS - PL_T0 ))
    printf 'preload %s: PASS (%s; %s; %ds)\n' "$PL_NAME" "$*" "$PL_PROOF_NOTE" "$secs"
    exit 0
}

# pl_at_exit COMMAND...: run COMMAND (a string, eval'ed) when the script exits.
# Cleanups run in reverse order of registration.
pl_at_exit() { PL_CLEANUPS+=("$*"); }

# pl_forget_cleanups: drop registered cleanups (e.g. once a server exited by
# itself, so that no stale pid is signalled later).
pl_forget_cleanups() { PL_CLEANUPS=(); }

_pl_cleanup() {
    local rc=$? i
    set +e
    for (( i=${#PL_CLEANUPS[@]}-1; i>=0; i-- )); do
        eval "${PL_CLEANUPS[i]}" >/dev/null 2>&1
    done
    if [[ -n "$PL_TMP" && -d "$PL_TMP" ]]; then
        if [[ "${PRELOAD_KEEP_TMP:-0}" == 1 ]]; then
            pl_log "kept $PL_TMP"
        else
            rm -rf "$PL_TMP"
        fi
    fi
    exit "$rc"
}

# pl_init NAME LIBPATH: check arguments, make the temp dir, install the trap.
pl_init() {
    PL_NAME="$1"
    PL_T0=$SECONDS
    if [[ $# -lt 2 || -z "$2" ]]; then
        pl_fail "usage: $0 /path/to/libspanalloc.so"
    fi
    [[ -f "$2" ]] || pl_fail "library not found: $2"
    PL_LIB="$(readlink -f "$2")"
    PL_TMP="$(mktemp -d "${TMPDIR:-/tmp}/spanalloc-preload-$1.XXXXXX")"
    trap _pl_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    if [[ "$PL_PROOF" == 0 ]]; then
        PL_PROOF_NOTE="proof skipped (PRELOAD_PROOF=0)"
    fi
}

# pl_need CMD...: every command must exist (tests/run.sh installs them).
pl_need() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || pl_fail "required program '$c' not found (tests/run.sh installs it)"
    done
}

# pl_free_port: print a TCP port on 127.0.0.1 that is free right now.
pl_free_port() {
    "$PL_PY" -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# pl_wait_port PORT TIMEOUT_S [PID]: wait until 127.0.0.1:PORT accepts a
# connection; fail early if PID dies.  Polls every 0.1 s, bounded.
pl_wait_port() {
    local port="$1" timeout="$2" pid="${3:-}" deadline
    deadline=$(( SECONDS + timeout ))
    while (( SECONDS < deadline )); do
        if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
            return 1
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# pl_wait_exit PID TIMEOUT_S: wait (bounded) for our child PID to exit; sets
# PL_EXIT_STATUS to its exit status.  Returns 1 on timeout.
pl_wait_exit() {
    local pid="$1" timeout="$2" deadline
    deadline=$(( SECONDS + timeout ))
    while kill -0 "$pid" 2>/dev/null; do
        # a zombie still answers kill -0; wait reaps it once it has exited
        if [[ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" == Z ]]; then break; fi
        (( SECONDS < deadline )) || return 1
        sleep 0.1
    done
    PL_EXIT_STATUS=0
    wait "$pid" || PL_EXIT_STATUS=$?
    return 0
}

# pl_maps_has_lib PID: the preloaded library is mapped into PID.
pl_maps_has_lib() {
    grep -qF "$PL_LIB" "/proc/$1/maps" 2>/dev/null
}

# pl_stats FILE MODE: read every stats JSON object (one with a "mallocs" key)
# that appears anywhere in FILE, possibly mixed with other output, and print
# "COUNT MALLOCS FREES HEAP_SYS_MAX" where MALLOCS/FREES are those of the last
# object (MODE=last) or summed over all objects (MODE=sum).  COUNT is 0 when
# there is none.
pl_stats() {
    "$PL_PY" - "$1" "$2" <<'PY'
import json, sys
path, mode = sys.argv[1], sys.argv[2]
text = open(path, "rb").read().decode("utf-8", "replace")
dec = json.JSONDecoder()
objs, i = [], text.find("{")
while i != -1:
    try:
        obj, end = dec.raw_decode(text, i)
    except ValueError:
        i = text.find("{", i + 1)
        continue
    if isinstance(obj, dict) and isinstance(obj.get("mallocs"), int):
        objs.append(obj)
    i = text.find("{", end)
if not objs:
    print(0, 0, 0, 0)
    sys.exit(0)
pick = objs[-1:] if mode == "last" else objs
m = sum(o["mallocs"] for o in pick)
f = sum(int(o.get("frees", 0)) for o in pick)
hs = max(int(o.get("heap_sys", 0)) for o in objs)
print(len(objs), m, f, hs)
PY
}

# The yardstick: tests/preload/malloc_count.so (built by meson, path in
# PRELOAD_MALLOC_COUNT), preloaded into a glibc run, counts the allocations
# the program asks for.  pl_glibc_env sets PL_GLIBC_ENV, the environment of
# such a run (empty with PRELOAD_PROOF=0); pl_glibc_mallocs prints the count
# of its main process (the largest of the processes' counts), or with `sum`
# the sum over its processes (a forked child's count starts from its
# parent's, as spanalloc's stats do).
PL_GLIBC_ENV=()
pl_glibc_env() {
    PL_GLIBC_ENV=()
    [[ "$PL_PROOF" == 0 ]] && return 0
    [[ -n "${PRELOAD_MALLOC_COUNT:-}" && -f "$PRELOAD_MALLOC_COUNT" ]] ||
        pl_fail "PRELOAD_MALLOC_COUNT does not name malloc_count.so (meson test sets it; or PRELOAD_PROOF=0)"
    rm -f "$PL_TMP/glibc.count"
    PL_GLIBC_ENV=(LD_PRELOAD="$PRELOAD_MALLOC_COUNT" MALLOC_COUNT_FILE="$PL_TMP/glibc.count")
}
pl_glibc_mallocs() {
    [[ -f "$PL_TMP/glibc.count" ]] || { echo 0; return; }
    local counts
    counts=$(sed -n 's/^malloc_count pid=[0-9]* mallocs=\([0-9]*\)$/\1/p' "$PL_TMP/glibc.count")
    if [[ "${1:-}" == sum ]]; then
        awk '{ n += $1 } END { print n + 0 }' <<<"$counts"
    else
        sort -n <<<"$counts" | tail -n 1
    fi
}

# pl_prove FILE MODE MIN_MALLOCS [REF_MALLOCS]: the stats JSON in FILE
# proves the library served the program's work (see pl_stats for MODE): at
# least MIN_MALLOCS allocations, and with REF_MALLOCS (the same work counted
# on the reference allocator: pl_glibc_mallocs of the glibc run, or a figure
# measured once), between half and twice that count.  Sets
# PL_PROOF_NOTE for the summary line.  A no-op when PRELOAD_PROOF=0.
pl_prove() {
    local file="$1" mode="$2" min="$3" glibc="${4:-}" n m f hs
    [[ "$PL_PROOF" == 0 ]] && return 0
    [[ -f "$file" ]] || pl_fail "proof: no stats file $file"
    read -r n m f hs < <(pl_stats "$file" "$mode")
    if (( n == 0 )); then
        pl_fail "proof: no SPANALLOC_STATS JSON in $(basename "$file") (was the library preloaded?)"
    fi
    if (( m < min )); then
        pl_fail "proof: spanalloc served only $m mallocs (< $min) [$mode of $n JSON objects]"
    fi
    local vs=""
    if [[ -n "$glibc" ]]; then
        (( glibc > 0 )) || pl_fail "proof: the reference run counted no allocation (malloc_count.so not loaded?)"
        if (( m * 2 < glibc || m > glibc * 2 )); then
            pl_fail "proof: spanalloc served $m mallocs, the same work on the reference allocator asked for $glibc (want between half and twice)"
        fi
        vs=" (reference allocator: $glibc, ratio $(( m * 100 / glibc ))%)"
    fi
    PL_PROOF_NOTE="spanalloc mallocs=$m$vs frees=$f heap_sys_max=$(( hs / 1048576 ))MiB over $n stats object(s)"
}

# pl_show FILE [LINES]: print the tail of a log file to stderr (diagnostics).
pl_show() {
    local f="$1" n="${2:-40}"
    [[ -f "$f" ]] || return 0
    printf -- '----- tail -n %s %s -----\n' "$n" "$f" >&2
    tail -n "$n" "$f" >&2 || true
    printf -- '-----\n' >&2
}
