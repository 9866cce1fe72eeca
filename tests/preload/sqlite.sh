#!/usr/bin/env bash
# Preload test: the sqlite3 CLI on the library runs a million-row workload in
# an in-memory database (every page lives in malloc'ed memory): create, insert
# 1,000,000 rows of varied sizes in one transaction via a recursive CTE,
# indexes, aggregates, a join, update, delete, integrity check.  The output
# must be byte-identical to the same run on glibc, and the stats must show the
# library served the allocations: mallocs between half and twice the glibc
# run's count (malloc_count.so).
#
# Usage: sqlite.sh /path/to/libspanalloc.so
# Env:   SQLITE_ROWS (default 1000000)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"
pl_init sqlite "${1:-}"
pl_need sqlite3 timeout

ROWS=${SQLITE_ROWS:-1000000}
sql="$PL_TMP/workload.sql"
cat >"$sql" <<EOF
.bail on
.mode list
.headers off
PRAGMA cache_size = -1048576;
CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER NOT NULL, s TEXT NOT NULL, b BLOB, r REAL);
BEGIN;
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < $ROWS)
INSERT INTO t(id, k, s, b, r)
  SELECT x,
         (x * 7919) % 100003,
         printf('%-*d', 4 + (x * 31) % 300, x),
         CASE WHEN x % 7 = 0 THEN zeroblob((x * 13) % 2000) END,
         x / 7.0
  FROM c;
COMMIT;
SELECT 'rows', count(*), sum(k), sum(length(s)), sum(length(b)), round(total(r), 3) FROM t;
CREATE INDEX t_k ON t(k);
CREATE INDEX t_s ON t(s);
SELECT 'groups', k % 10, count(*), round(avg(length(s)), 6), max(id) FROM t GROUP BY k % 10 ORDER BY 2;
SELECT 'distinct', count(DISTINCT k) FROM t;
SELECT 'lookup', group_concat(id, ',') FROM (SELECT id FROM t WHERE k = 4242 ORDER BY id);
SELECT 'range', count(*), min(s), max(id) FROM t WHERE k BETWEEN 1000 AND 2000;
SELECT 'join', count(*), sum(b.k) FROM t AS a JOIN t AS b ON b.id = a.k + 1 WHERE a.id <= 200000;
SELECT 'top', group_concat(id, ',') FROM (SELECT id FROM t ORDER BY length(s) DESC, k, id LIMIT 20);
BEGIN;
UPDATE t SET s = s || '-updated-' || hex(k), k = k + 1 WHERE id % 3 = 0;
DELETE FROM t WHERE id % 5 = 0;
COMMIT;
SELECT 'after', count(*), sum(k), sum(length(s)), sum(length(b)), round(total(r), 3) FROM t;
SELECT 'agg', k % 7, count(*), sum(length(s)) FROM t GROUP BY 2 ORDER BY 2;
SELECT 'string', length(group_concat(s, '')) FROM (SELECT s FROM t WHERE id % 1000 = 1);
DELETE FROM t WHERE id > $ROWS / 2;
SELECT 'half', count(*), sum(k) FROM t;
PRAGMA integrity_check;
DROP INDEX t_s;
VACUUM;
SELECT 'end', count(*) FROM t;
EOF

run() { # LABEL [ENV...]
    local label="$1"; shift
    local rc=0
    timeout 600 env "$@" sqlite3 :memory: <"$sql" >"$PL_TMP/$label.out" 2>"$PL_TMP/$label.err" || rc=$?
    echo "$rc"
}

pl_glibc_env
t0=$SECONDS
rc=$(run glibc "${PL_GLIBC_ENV[@]}")
t_glibc=$(( SECONDS - t0 ))
[[ "$rc" == 0 ]] || { pl_show "$PL_TMP/glibc.err"; pl_fail "sqlite3 on glibc failed (exit $rc)"; }

t0=$SECONDS
rc=$(run preload LD_PRELOAD="$PL_LIB" SPANALLOC_STATS=json)
t_pre=$(( SECONDS - t0 ))
[[ "$rc" == 0 ]] || { pl_show "$PL_TMP/preload.err"; pl_fail "sqlite3 preloaded failed (exit $rc)"; }

if ! cmp -s "$PL_TMP/glibc.out" "$PL_TMP/preload.out"; then
    diff -u "$PL_TMP/glibc.out" "$PL_TMP/preload.out" | head -n 40 >&2 || true
    pl_fail "query output differs from glibc"
fi
grep -qx 'ok' "$PL_TMP/preload.out" || pl_fail "integrity_check did not say ok"
grep -q "^rows|$ROWS|" "$PL_TMP/preload.out" || pl_fail "row count is not $ROWS"
# The preloaded stderr holds nothing but the stats JSON.
if grep -v '^{' "$PL_TMP/preload.err" | grep -q .; then
    pl_show "$PL_TMP/preload.err"; pl_fail "unexpected stderr output from the preloaded run"
fi
pl_prove "$PL_TMP/preload.err" last 10000 "$(pl_glibc_mallocs)"

pl_pass "$ROWS rows, $(wc -l <"$PL_TMP/preload.out") output lines identical to glibc; glibc ${t_glibc}s, preload ${t_pre}s"
