#!/usr/bin/env bash
# Preload test: Debian's CPython 3.11 regression tests (libpython3.11-testsuite)
# with PYTHONMALLOC=malloc, once on glibc (allocations counted by
# malloc_count.so) and once preloaded.  The preloaded run must succeed by
# regrtest's own account ("Tests result: SUCCESS", every test listed OK, exit
# 0), and its stats must show that the library served the interpreter's
# allocations: mallocs between half and twice the glibc run's count.  The
# glibc run must succeed too (else the machine, not the allocator, is broken).
#
# Usage: cpython.sh /path/to/libspanalloc.so
# Env:   CPYTHON_TESTS   tests to run (default below)
#        CPYTHON_TIMEOUT per-test timeout in seconds for regrtest (default 600)
#        CPYTHON_MAX_SLOWDOWN the preloaded run may take at most this many times
#                        the glibc run's wall time, plus 60 s (default 3); a hang
#                        that a test's own timeout hides shows up here
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"
pl_init cpython "${1:-}"

PY=/usr/bin/python3.11
TESTS=${CPYTHON_TESTS:-"test_dict test_list test_set test_unicode test_bytes test_json test_re test_threading test_gc"}
PER_TEST_TIMEOUT=${CPYTHON_TIMEOUT:-600}
MAX_SLOWDOWN=${CPYTHON_MAX_SLOWDOWN:-3}
[[ -x $PY ]] || pl_fail "$PY missing (package python3.11)"
$PY -c 'import test.libregrtest' 2>/dev/null || pl_fail "CPython test suite missing (package libpython3.11-testsuite)"
pl_need timeout env

# The main regrtest process runs every test in-process (sequentially) and is
# the one whose exit stats we read.  Programs the tests spawn inherit
# LD_PRELOAD (so they run on the library too) but must not inherit
# SPANALLOC_STATS: many tests assert that a child's stderr is empty.  This
# runner hides SPANALLOC_STATS from os.environ (the Python mapping only; the C
# environment keeps it, so the library still sees it in this process) and hands
# subprocess.Popen that filtered environment.  Both runs use the same runner.
RUNNER='
import os, subprocess, sys
KEY = b"SPANALLOC_STATS"
os.environ._data.pop(KEY, None)
_init = subprocess.Popen.__init__
def _popen_init(self, args, *a, **kw):
    if kw.get("env") is None and len(a) < 10:
        kw["env"] = dict(os.environ)
    _init(self, args, *a, **kw)
subprocess.Popen.__init__ = _popen_init
from test.libregrtest import main
main()
'

# run_suite LABEL [ENV...]: run the tests; stdout -> LABEL.out, stderr -> LABEL.err
run_suite() {
    local label="$1"; shift
    local rc=0
    mkdir -p "$PL_TMP/$label.tmp"
    # timeout and env stay on glibc: the preload variables are set by env, just
    # before it execs python.
    ( cd "$PL_TMP/$label.tmp" &&
      TMPDIR="$PL_TMP/$label.tmp" timeout -k 10 $(( PER_TEST_TIMEOUT * 3 )) \
        env --default-signal=INT PYTHONMALLOC=malloc "$@" \
        "$PY" -c "$RUNNER" --timeout "$PER_TEST_TIMEOUT" $TESTS \
        >"$PL_TMP/$label.out" 2>"$PL_TMP/$label.err" </dev/null ) || rc=$?
    echo "$rc"
}

# summarize LABEL: normalised "test: outcome" lines from regrtest's summary.
summarize() {
    "$PL_PY" - "$PL_TMP/$1.out" $TESTS <<'PY'
import re, sys
text = open(sys.argv[1], errors="replace").read()
tests = sys.argv[2:]
outcome = {t: "OK" for t in tests}
m = re.search(r"^== Tests result: (.*) ==$", text, re.M)
if not m:
    print("NO-SUMMARY")
    sys.exit(0)
summary = text[m.end():]
# Sections look like "2 tests failed:" followed by indented names.
cur = None
for line in summary.splitlines():
    if not line.strip():
        cur = None
        continue
    if line.startswith(" ") and cur:
        for name in line.split():
            outcome[name] = cur
        continue
    h = re.match(r"^(?:\d+|All \d+) tests? (.*?):?$", line)
    cur = h.group(1) if h and line.endswith(":") else None
res = re.findall(r"^Tests result: (.*)$", summary, re.M)
print("RESULT", res[-1] if res else "?")
for t in tests:
    print(t, outcome[t])
PY
}

pl_log "glibc run: $TESTS"
pl_glibc_env
t0=$SECONDS
rc_glibc=$(run_suite glibc "${PL_GLIBC_ENV[@]}")
t_glibc=$(( SECONDS - t0 ))
pl_log "glibc run: exit $rc_glibc in ${t_glibc}s"

t0=$SECONDS
rc_pre=$(run_suite preload LD_PRELOAD="$PL_LIB" SPANALLOC_STATS=json)
t_pre=$(( SECONDS - t0 ))
pl_log "preload run: exit $rc_pre in ${t_pre}s"

summarize glibc >"$PL_TMP/glibc.sum"
summarize preload >"$PL_TMP/preload.sum"

if grep -q NO-SUMMARY "$PL_TMP/glibc.sum"; then
    pl_show "$PL_TMP/glibc.out"; pl_show "$PL_TMP/glibc.err"
    pl_fail "glibc run printed no regrtest summary (exit $rc_glibc)"
fi
if grep -q NO-SUMMARY "$PL_TMP/preload.sum"; then
    pl_show "$PL_TMP/preload.out" 60; pl_show "$PL_TMP/preload.err" 60
    pl_fail "preloaded run printed no regrtest summary (exit $rc_pre; crashed or timed out?)"
fi
# Success by regrtest's own account: exit 0, "Tests result: SUCCESS", and
# every requested test OK (none skipped, failed, or missing from the summary).
ntests=$(wc -w <<<"$TESTS")
succeeded() { # LABEL RC
    [[ "$2" == 0 ]] && grep -qx 'RESULT SUCCESS' "$PL_TMP/$1.sum" &&
        [[ $(grep -c ' OK$' "$PL_TMP/$1.sum") == "$ntests" ]]
}
if ! succeeded preload "$rc_pre"; then
    diff -u "$PL_TMP/glibc.sum" "$PL_TMP/preload.sum" >&2 || true
    pl_show "$PL_TMP/preload.out" 80; pl_show "$PL_TMP/preload.err" 40
    pl_fail "preloaded run did not succeed: exit $rc_pre, $(sed -n 's/^RESULT //p' "$PL_TMP/preload.sum"), $(grep -c ' OK$' "$PL_TMP/preload.sum") of $ntests tests OK"
fi
if ! succeeded glibc "$rc_glibc"; then
    cat "$PL_TMP/glibc.sum" >&2
    pl_fail "the glibc run did not succeed either (exit $rc_glibc): the machine's CPython tests fail without spanalloc"
fi

pl_prove "$PL_TMP/preload.err" last 100000 "$(pl_glibc_mallocs)"

# regrtest's progress lines carry elapsed times: name the slowest tests.
slowest() {
    "$PL_PY" - "$PL_TMP/$1.out" <<'PY'
import re, sys
prev = None; durs = []
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"^(\d+):(\d\d):(\d\d) .*\[\s*\d+/\d+\S*\] (test_\w+)", line)
    if m:
        t = int(m[1]) * 3600 + int(m[2]) * 60 + int(m[3])
        if prev: durs.append((t - prev[0], prev[1]))
        prev = (t, m[4])
print(", ".join("%s %ds" % (n, d) for d, n in sorted(durs, reverse=True)[:3]))
PY
}
limit=$(( t_glibc * MAX_SLOWDOWN + 60 ))
if (( t_pre > limit )); then
    pl_fail "preloaded run took ${t_pre}s, over ${limit}s (${MAX_SLOWDOWN}x glibc's ${t_glibc}s + 60s); slowest preloaded: $(slowest preload)"
fi

pl_pass "$ntests of $ntests tests OK, Tests result: SUCCESS; glibc ${t_glibc}s, preload ${t_pre}s"
