#!/usr/bin/env bash
# Preload test: a heap profile of an unmodified redis-server
# (docs/observability.md, "Heap profiles").
#
# redis-server runs with SPANALLOC_PROFILE_FILE=<tmp>/redis-%p.pb.gz and a
# 1 s SPANALLOC_PROFILE_INTERVAL, and is filled with DEBUG POPULATE.
# Checked: the profile appears under the server's pid and `go tool pprof`
# reads it; its inuse_space total is within 15% of heap_alloc (redis's
# allocator_allocated, which is spanalloc's stats.allocated); every location
# lies in a mapping and redis-server and libc are among the mappings.  At
# SHUTDOWN the leak report (SPANALLOC_PROFILE_LEAKS=1) is on redis's stderr
# and the profile is written once more at exit.  Every wait polls a
# condition with a deadline.  spanalloc-top --once --profile lists the
# profile's top live sites, named from redis-server's symbols (redis rewrites
# its environment for its process title, so spanalloc-top cannot find the
# profile there by itself).
#
# Usage: redis_profile.sh /path/to/libspanalloc.so /path/to/spanalloc-top
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"
pl_init redis-profile "${1:-}"
TOP=${2:-}
[[ -x "$TOP" ]] || pl_fail "spanalloc-top not found at '$TOP'"
pl_need redis-server redis-cli go timeout

source "$here/redis_lib.sh"
# Rate 64K: ~1,800 samples in the ~115 MB filled, a standard error of ~2.4%,
# so the 15% bound is 6 standard errors (at the default 512K it would be 2,
# and the test would fail one run in 30).
redis_start SPANALLOC_PROFILE_RATE=64K \
    SPANALLOC_PROFILE_FILE="$PL_TMP/redis-%p.pb.gz" SPANALLOC_PROFILE_INTERVAL=1s \
    SPANALLOC_PROFILE_LEAKS=1 SPANALLOC_STATS_FILE="$PL_TMP/redis-%p.json"
file="$PL_TMP/redis-$pid.pb.gz"
export GOCACHE="$PL_TMP/gocache" HOME="${HOME:-$PL_TMP}"

cli DEBUG POPULATE 400000 key 200 >/dev/null || fail "DEBUG POPULATE failed"
alloc=$(cli INFO memory | tr -d '\r' | awk -F: '$1 == "allocator_allocated" { print $2 }')
[[ -n "$alloc" ]] || fail "no allocator_allocated in INFO memory"

# inuse_total: the total pprof reports for inuse_space, in bytes.
inuse_total() {
    go tool pprof -top -unit=B -sample_index=inuse_space "$file" 2>/dev/null |
        awk '/^Showing nodes accounting for/ { for (i = 1; i <= NF; i++) if ($i == "of") { v = $(i + 1); sub(/B,?$/, "", v); print v; exit } }'
}
close_enough() { # the profile within 15% of heap_alloc
    local t; t=$(inuse_total) || return 1
    [[ -n "$t" ]] && awk -v t="$t" -v a="$alloc" 'BEGIN { exit !(t > 0.85 * a && t < 1.15 * a) }'
}
deadline=$(( SECONDS + 30 ))
until [[ -s "$file" ]] && close_enough; do
    (( SECONDS < deadline )) || fail "profile inuse_space $(inuse_total 2>/dev/null || echo none) not within 15% of heap_alloc $alloc after 30 s"
    sleep 0.2
done
total=$(inuse_total)
pl_log "heap_alloc $alloc bytes, profile inuse_space $total bytes"

raw=$(go tool pprof -raw "$file" 2>&1) || fail "go tool pprof -raw failed: $raw"
grep -q ' /usr/bin/redis-check-rdb \| /usr/bin/redis-server ' <<<"$raw" || fail "no redis-server mapping"
grep -q 'libc.so.6' <<<"$raw" || fail "no libc mapping"
unmapped=$(awk '/^Locations/ { on = 1; next } /^Mappings/ { on = 0 } on && / M=0( |$)/' <<<"$raw" | wc -l)
(( unmapped == 0 )) || fail "$unmapped locations outside every mapping"

top=$("$TOP" --once --classes 0 --profile "$file" "$PL_TMP/redis-$pid.json" 2>&1) ||
    fail "spanalloc-top --profile failed: $top"
grep -q '^top live sites (heap profile' <<<"$top" || fail "spanalloc-top shows no sites: $top"
grep -Eq '^ *[0-9]+ +[0-9]+  [a-z_]+ \(redis' <<<"$top" || fail "no named redis site in: $top"

rm -f "$file"
cli SHUTDOWN NOSAVE >/dev/null 2>&1 || true
deadline=$(( SECONDS + 30 ))
while kill -0 "$pid" 2>/dev/null; do
    (( SECONDS < deadline )) || fail "redis-server did not exit within 30 s of SHUTDOWN"
    sleep 0.1
done
[[ -s "$file" ]] || fail "no profile written at exit"
grep -q '^spanalloc: [0-9]* bytes live at exit in sampled sites' "$PL_TMP/redis.err" ||
    fail "no leak report on stderr"
sites=$(grep -c '^ *[0-9]* bytes *[0-9]* objects:' "$PL_TMP/redis.err" || true)
(( sites > 0 )) || fail "the leak report lists no site"
pl_pass "inuse_space $total B vs heap_alloc $alloc B; leak report $sites sites"
