#!/usr/bin/env bash
# Preload test: Debian's nginx on the library.  Our own config in a temp dir
# (127.0.0.1, random free port, master + 2 workers, pid/logs/temp paths in the
# temp dir) serves static files of several sizes; wrk loads it for a few
# seconds over all the files; there must be no socket errors and no non-2xx
# answers, and curl must fetch every file byte-identical.  SIGQUIT stops it
# gracefully; nginx redirects its stderr to error_log, so the stats JSON of the
# master and of each worker lands in error.log, which gives the proof.
#
# The same run is made first on glibc with malloc_count.so (the yardstick):
# spanalloc's mallocs must be between half and twice glibc's count, scaled to
# the spanalloc run's number of requests.
#
# Usage: nginx.sh /path/to/libspanalloc.so
# Env:   NGINX_WRK_SECONDS (default 5)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"
pl_init nginx "${1:-}"

NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[[ -x "$NGINX" ]] || pl_fail "nginx not found (package nginx-light)"
pl_need wrk curl cmp timeout
DURATION=${NGINX_WRK_SECONDS:-5}

# Workers run as root when we are root (a 0700 temp dir is unreadable for
# nobody); the directive is ignored with a notice when we are not.
chmod 755 "$PL_TMP"
mkdir -p "$PL_TMP/html" "$PL_TMP/temp"
files=(empty.txt tiny.html page.html k64.bin k300.bin m2.bin)
: >"$PL_TMP/html/empty.txt"
printf '<html><body>spanalloc</body></html>\n' >"$PL_TMP/html/tiny.html"
head -c 7000 /dev/urandom | base64 >"$PL_TMP/html/page.html"
head -c 65536 /dev/urandom >"$PL_TMP/html/k64.bin"
head -c 300000 /dev/urandom >"$PL_TMP/html/k300.bin"
head -c 2097152 /dev/urandom >"$PL_TMP/html/m2.bin"

# The load: wrk cycles through every file (keep-alive, 2 threads, 32
# connections).
cat >"$PL_TMP/paths.lua" <<EOF
local paths = { "/status", "/$(IFS=,; echo "${files[*]}" | sed 's|,|", "/|g')", "/missing-404" }
local n = 0
request = function()
    n = n + 1
    local p = paths[(n % (#paths - 1)) + 1]
    return wrk.format("GET", p, { ["Accept-Encoding"] = (n % 3 == 0) and "gzip" or "identity" })
end
EOF

# write_conf LABEL PORT: the config of one run (its pid and log paths
# carry the label).
write_conf() {
    cat >"$PL_TMP/$1.conf" <<EOF
daemon off;
master_process on;
worker_processes 2;
$( [[ $(id -u) == 0 ]] && echo "user root;" )
pid $PL_TMP/$1.pid;
# nginx clears the environment of its processes except what 'env' keeps.
env LD_PRELOAD;
env SPANALLOC_STATS;
env MALLOC_COUNT_FILE;
error_log $PL_TMP/$1.error.log notice;
events { worker_connections 512; }
http {
    access_log off;
    client_body_temp_path $PL_TMP/temp/body;
    proxy_temp_path $PL_TMP/temp/proxy;
    fastcgi_temp_path $PL_TMP/temp/fastcgi;
    uwsgi_temp_path $PL_TMP/temp/uwsgi;
    scgi_temp_path $PL_TMP/temp/scgi;
    types { text/html html; text/plain txt; application/octet-stream bin; }
    sendfile off;
    gzip on;
    gzip_types text/plain;
    keepalive_requests 1000;
    server {
        listen 127.0.0.1:$2;
        server_name localhost;
        root $PL_TMP/html;
        location / { }
        location = /status { return 200 "ok\n"; }
    }
}
EOF
}

# serve LABEL ENV...: one run of nginx with ENV (LD_PRELOAD and its knobs)
# under wrk, its content checked, then its graceful stop; the files are
# $PL_TMP/LABEL.*.  Sets requests, rps and nworkers.
serve() {
    local label="$1" port pid workers w f code
    shift
    local log="$PL_TMP/$label.error.log" err="$PL_TMP/$label.err"
    port=$(pl_free_port)
    write_conf "$label" "$port"
    "$NGINX" -t -q -p "$PL_TMP" -c "$PL_TMP/$label.conf" -e "$PL_TMP/$label.test.log" \
        >"$PL_TMP/$label.t.out" 2>&1 ||
        { cat "$PL_TMP/$label.t.out" "$PL_TMP/$label.test.log" >&2 2>/dev/null;
          pl_fail "nginx -t rejected the config"; }

    env "$@" "$NGINX" -p "$PL_TMP" -c "$PL_TMP/$label.conf" -e "$log" \
        >"$PL_TMP/$label.out" 2>"$err" </dev/null &
    pid=$!
    pl_at_exit "kill -9 $pid"
    fail() { pl_show "$log"; pl_show "$err"; pl_fail "$label run: $*"; }

    pl_wait_port "$port" 30 "$pid" || fail "nginx did not listen on 127.0.0.1:$port within 30 s"
    workers=$(pgrep -P "$pid" | tr '\n' ' ')
    [[ -n "$workers" ]] || fail "no nginx worker processes"
    pl_at_exit "kill -9 $workers"
    if [[ "$label" == spanalloc ]]; then
        pl_maps_has_lib "$pid" || fail "$PL_LIB is not mapped in the nginx master (pid $pid)"
        for w in $workers; do
            pl_maps_has_lib "$w" || fail "$PL_LIB is not mapped in nginx worker $w"
        done
    fi

    timeout $(( DURATION + 60 )) wrk -t2 -c32 -d"${DURATION}s" --timeout 10s -s "$PL_TMP/paths.lua" \
        "http://127.0.0.1:$port/" >"$PL_TMP/$label.wrk" 2>&1 </dev/null ||
        fail "wrk failed: $(tail -n 5 "$PL_TMP/$label.wrk")"
    if grep -Eq 'Non-2xx|Socket errors' "$PL_TMP/$label.wrk"; then
        cat "$PL_TMP/$label.wrk" >&2
        fail "wrk saw errors: $(grep -E 'Non-2xx|Socket errors' "$PL_TMP/$label.wrk" | tr '\n' ' ')"
    fi
    requests=$(sed -n 's/^ *\([0-9]*\) requests in .*/\1/p' "$PL_TMP/$label.wrk")
    rps=$(sed -n 's/^Requests\/sec: *\([0-9.]*\).*/\1/p' "$PL_TMP/$label.wrk")
    (( ${requests:-0} > 0 )) || fail "wrk made no requests: $(cat "$PL_TMP/$label.wrk")"
    kill -0 "$pid" 2>/dev/null || fail "nginx died under load"

    # Content: every file, plain and gzip-decoded, must match.
    for f in "${files[@]}"; do
        timeout 30 curl -sf -o "$PL_TMP/got" "http://127.0.0.1:$port/$f" || fail "curl /$f failed"
        cmp -s "$PL_TMP/got" "$PL_TMP/html/$f" || fail "/$f content differs"
    done
    timeout 30 curl -sf --compressed -o "$PL_TMP/got" "http://127.0.0.1:$port/empty.txt" ||
        fail "curl --compressed failed"
    code=$(timeout 30 curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/missing-404")
    [[ "$code" == 404 ]] || fail "expected 404 for a missing file, got $code"

    # Graceful stop: the master waits for its workers, then exits 0.
    kill -QUIT "$pid"
    pl_wait_exit "$pid" 60 || fail "nginx did not exit within 60 s of SIGQUIT"
    pl_forget_cleanups
    (( PL_EXIT_STATUS == 0 )) || fail "nginx exited with status $PL_EXIT_STATUS"
    if grep -Eq '\[(alert|emerg|crit)\]' "$log"; then
        fail "error.log has alert/crit/emerg lines: $(grep -E '\[(alert|emerg|crit)\]' "$log" | head -n 3)"
    fi
    nworkers=$(wc -w <<<"$workers")
    cat "$err" >>"$log"
}

# The yardstick: the same load on glibc, the allocations of the master and
# of each worker counted by malloc_count.so.  A timed load makes a number of
# requests that varies from run to run, so the reference is glibc's count
# scaled to the spanalloc run's requests (nginx allocates per connection and
# per request: the start-up's allocations are a small part of the total,
# see docs/benchmarks.md section 5).
if [[ "$PL_PROOF" != 0 ]]; then
    pl_glibc_env
    serve glibc "${PL_GLIBC_ENV[@]}"
    glibc_requests=$requests
    glibc_mallocs=$(pl_glibc_mallocs sum)
    (( ${glibc_mallocs:-0} > 0 )) || pl_fail "the glibc run counted no allocation (malloc_count.so not loaded?)"
fi

serve spanalloc LD_PRELOAD="$PL_LIB" SPANALLOC_STATS=json
if [[ "$PL_PROOF" != 0 ]]; then
    # master + workers each print their stats: sum them.
    pl_prove "$PL_TMP/spanalloc.error.log" sum 10000 $(( glibc_mallocs * requests / glibc_requests ))
    nobj=$(pl_stats "$PL_TMP/spanalloc.error.log" sum | cut -d' ' -f1)
    (( nobj >= nworkers + 1 )) || pl_fail "only $nobj stats JSON objects for 1 master + $nworkers workers"
    PL_PROOF_NOTE="$PL_PROOF_NOTE; glibc run: $glibc_mallocs mallocs for $glibc_requests requests"
fi

pl_pass "wrk ${DURATION}s: $requests requests, ${rps} req/s, no errors; ${#files[@]} files byte-identical; $nworkers workers"
