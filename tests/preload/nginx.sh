#!/usr/bin/env bash
# Preload test: Debian's nginx on the library.  Our own config in a temp dir
# (127.0.0.1, random free port, master + 2 workers, pid/logs/temp paths in the
# temp dir) serves static files of several sizes; wrk loads it for a few
# seconds over all the files; there must be no socket errors and no non-2xx
# answers, and curl must fetch every file byte-identical.  SIGQUIT stops it
# gracefully; nginx redirects its stderr to error_log, so the stats JSON of the
# master and of each worker lands in error.log, which gives the proof.
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
port=$(pl_free_port)

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

cat >"$PL_TMP/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 2;
$( [[ $(id -u) == 0 ]] && echo "user root;" )
pid $PL_TMP/nginx.pid;
# nginx clears the environment of its processes except what 'env' keeps.
env LD_PRELOAD;
env SPANALLOC_STATS;
error_log $PL_TMP/error.log notice;
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
        listen 127.0.0.1:$port;
        server_name localhost;
        root $PL_TMP/html;
        location / { }
        location = /status { return 200 "ok\n"; }
    }
}
EOF

"$NGINX" -t -q -p "$PL_TMP" -c "$PL_TMP/nginx.conf" -e "$PL_TMP/test.log" >"$PL_TMP/t.out" 2>&1 \
    || { cat "$PL_TMP/t.out" "$PL_TMP/test.log" >&2 2>/dev/null; pl_fail "nginx -t rejected the config"; }

env LD_PRELOAD="$PL_LIB" SPANALLOC_STATS=json \
    "$NGINX" -p "$PL_TMP" -c "$PL_TMP/nginx.conf" -e "$PL_TMP/error.log" \
    >"$PL_TMP/nginx.out" 2>"$PL_TMP/nginx.err" </dev/null &
pid=$!
pl_at_exit "kill -9 $pid"

fail() { pl_show "$PL_TMP/error.log"; pl_show "$PL_TMP/nginx.err"; pl_fail "$*"; }

pl_wait_port "$port" 30 "$pid" || fail "nginx did not listen on 127.0.0.1:$port within 30 s"
pl_maps_has_lib "$pid" || fail "$PL_LIB is not mapped in the nginx master (pid $pid)"
workers=$(pgrep -P "$pid" | tr '\n' ' ')
[[ -n "$workers" ]] || fail "no nginx worker processes"
pl_at_exit "kill -9 $workers"
for w in $workers; do
    pl_maps_has_lib "$w" || fail "$PL_LIB is not mapped in nginx worker $w"
done

# Load: wrk cycles through every file (keep-alive, 2 threads, 32 connections).
cat >"$PL_TMP/paths.lua" <<EOF
local paths = { "/status", "/$(IFS=,; echo "${files[*]}" | sed 's|,|", "/|g')", "/missing-404" }
local n = 0
request = function()
    n = n + 1
    local p = paths[(n % (#paths - 1)) + 1]
    return wrk.format("GET", p, { ["Accept-Encoding"] = (n % 3 == 0) and "gzip" or "identity" })
end
EOF
timeout $(( DURATION + 60 )) wrk -t2 -c32 -d"${DURATION}s" --timeout 10s -s "$PL_TMP/paths.lua" \
    "http://127.0.0.1:$port/" >"$PL_TMP/wrk.out" 2>&1 </dev/null || fail "wrk failed: $(tail -n 5 "$PL_TMP/wrk.out")"
if grep -Eq 'Non-2xx|Socket errors' "$PL_TMP/wrk.out"; then
    cat "$PL_TMP/wrk.out" >&2
    fail "wrk saw errors: $(grep -E 'Non-2xx|Socket errors' "$PL_TMP/wrk.out" | tr '\n' ' ')"
fi
requests=$(sed -n 's/^ *\([0-9]*\) requests in .*/\1/p' "$PL_TMP/wrk.out")
rps=$(sed -n 's/^Requests\/sec: *\([0-9.]*\).*/\1/p' "$PL_TMP/wrk.out")
(( ${requests:-0} > 0 )) || fail "wrk made no requests: $(cat "$PL_TMP/wrk.out")"
kill -0 "$pid" 2>/dev/null || fail "nginx died under load"

# Content: every file, plain and gzip-decoded, must match.
for f in "${files[@]}"; do
    timeout 30 curl -sf -o "$PL_TMP/got" "http://127.0.0.1:$port/$f" || fail "curl /$f failed"
    cmp -s "$PL_TMP/got" "$PL_TMP/html/$f" || fail "/$f content differs"
done
timeout 30 curl -sf --compressed -o "$PL_TMP/got" "http://127.0.0.1:$port/empty.txt" || fail "curl --compressed failed"
code=$(timeout 30 curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/missing-404")
[[ "$code" == 404 ]] || fail "expected 404 for a missing file, got $code"

# Graceful stop: the master waits for its workers, then exits 0.
kill -QUIT "$pid"
pl_wait_exit "$pid" 60 || fail "nginx did not exit within 60 s of SIGQUIT"
pl_forget_cleanups
(( PL_EXIT_STATUS == 0 )) || fail "nginx exited with status $PL_EXIT_STATUS"
if grep -Eq '\[(alert|emerg|crit)\]' "$PL_TMP/error.log"; then
    fail "error.log has alert/crit/emerg lines: $(grep -E '\[(alert|emerg|crit)\]' "$PL_TMP/error.log" | head -n 3)"
fi
nworkers=$(wc -w <<<"$workers")
cat "$PL_TMP/nginx.err" >>"$PL_TMP/error.log"
# master + workers each print their stats: sum them.
pl_prove "$PL_TMP/error.log" sum 10000
if [[ "$PL_PROOF" != 0 ]]; then
    nobj=$(pl_stats "$PL_TMP/error.log" sum | cut -d' ' -f1)
    (( nobj >= nworkers + 1 )) || fail "only $nobj stats JSON objects for 1 master + $nworkers workers"
fi

pl_pass "wrk ${DURATION}s: $requests requests, ${rps} req/s, no errors; ${#files[@]} files byte-identical; $nworkers workers"
