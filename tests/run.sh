#!/usr/bin/env bash
# tests/run.sh: install what the tests need, build, run every test pass, and
# print the totals as the last line: "N passed, N failed, N skipped".
#
# Passes (choose with SPANALLOC_TEST_PASSES, default: every pass in ALL_PASSES):
#   unit      meson test --suite unit, plus the suites 'generated' (the size
#             class table matches its generator) and 'valgrind-planted'
#             (memcheck reports a planted leak and use-after-free), in build/
#   asan      meson test --suite unit in build-asan/ (clang, ASan+UBSan, debug)
#   tsan      meson test --suite unit in build-tsan/ (clang, ThreadSanitizer, debug)
#   valgrind  meson test --suite unit --setup valgrind in build/ (memcheck,
#             exec'd and forked children included)
#   preload   meson test --suite preload in build/ (real programs preloaded)
#   fuzz      tests/fuzz/run.sh: libFuzzer against a model, 60 s (SPANALLOC_FUZZ_SECONDS);
#             fails below FUZZ_MIN_EXECS executed inputs
#   percpuoff meson test --suite unit --setup percpuoff in build/: the suite on
#             the per-thread fallback caches (SPANALLOC_PERCPU=off)
#   arm64     the unit tests cross-built for arm64 (tests/cross/aarch64.ini) in
#             build-arm64/, run under qemu-user (see the arm64 block below)
#
# Counting: test cases, not executables.  A cmocka executable counts each of
# its cases as passed, failed or skipped (its own "[       OK ]", "[  FAILED  ]",
# "[  SKIPPED ]" lines); an executable that fails with no failed case (a crash,
# a timeout, a tool's error exit) adds one failure; other tests (scripts) count
# as one case.  Skipped cases are listed at the end.  Whatever cannot run (a
# missing tool, a suite with no tests, a test that exits 77) is a failure when
# CI=true, and a listed skip otherwise.
#
# Other knobs: SPANALLOC_NO_INSTALL=1 skips the package step;
# SPANALLOC_BUILD_DIR / SPANALLOC_ASAN_BUILD_DIR / SPANALLOC_TSAN_BUILD_DIR
# rename the build dirs.
# Exit status: 0 when nothing failed, 1 otherwise.  The last line is
# "N passed, N failed, N skipped".
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -x /usr/bin/python3 ]]; then PY=/usr/bin/python3; else PY=python3; fi
ROOT=$PWD
# The pass list, in running order: one place.  Each pass is a self-contained
# block below: pass_pkgs[NAME] (its packages) and pass_NAME (build + run).
ALL_PASSES="unit percpuoff asan tsan valgrind preload fuzz arm64"
PASSES=${SPANALLOC_TEST_PASSES:-$ALL_PASSES}
BUILD=${SPANALLOC_BUILD_DIR:-build}
BUILD_ASAN=${SPANALLOC_ASAN_BUILD_DIR:-build-asan}
BUILD_TSAN=${SPANALLOC_TSAN_BUILD_DIR:-build-tsan}
BUILD_ARM64=${SPANALLOC_ARM64_BUILD_DIR:-build-arm64}
IN_CI=0
[[ "${CI:-}" == true || "${CI:-}" == 1 ]] && IN_CI=1
export DEBIAN_FRONTEND=noninteractive

has_pass() { [[ " $PASSES " == *" $1 "* ]]; }
say() { printf '\n=== %s ===\n' "$*"; }

for p in $PASSES; do
    [[ " $ALL_PASSES " == *" $p "* ]] || {
        echo "tests/run.sh: unknown pass '$p' (known: $ALL_PASSES)" >&2; exit 2; }
done

# ------------------------------------------------------------------ totals --
total_pass=0 total_fail=0 total_skip=0
summary=() skipped_cases=() failed_cases=()

# add_totals PASS P F S: one summary line per pass.
add_totals() {
    total_pass=$(( total_pass + $2 )); total_fail=$(( total_fail + $3 )); total_skip=$(( total_skip + $4 ))
    summary+=("$(printf '%-9s %4d passed, %d failed, %d skipped' "$1:" "$2" "$3" "$4")")
}

# not_run PASS WHAT WHY: something that should have run could not (a missing
# tool, header or suite): a failure under CI, a listed skip otherwise.
not_run() {
    echo "tests/run.sh: pass '$1': $2 NOT RUN: $3" >&2
    if (( IN_CI )); then
        failed_cases+=("$1: $2 (not run: $3)")
        add_totals "$1" 0 1 0
    else
        skipped_cases+=("$1: $2 (not run: $3)")
        add_totals "$1" 0 0 1
    fi
}

# ---------------------------------------------------------------- packages --
declare -A pass_pkgs=()
base_pkgs=(meson ninja-build gcc g++ pkg-config libcmocka-dev libbenchmark-dev python3 valgrind prometheus golang-go)

# ------------------------------------------------------------------ builds --
declare -A build_ok=()

# setup_dir DIR [ENV=VAL...] -- [meson options...]
setup_dir() {
    local dir=$1; shift
    local envs=()
    while [[ $1 != -- ]]; do envs+=("$1"); shift; done
    shift
    # meson caches which compiler each language is: a build dir configured
    # before packages changed the compilers (bench/run.sh on a machine with
    # clang but no g++, where c++ was clang++) must be wiped, not reconfigured.
    local stamp="$dir/spanalloc-toolchain" now
    now=$(toolchain_id)
    if [[ -f "$dir/meson-private/coredata.dat" && "$(cat "$stamp" 2>/dev/null)" == "$now" ]]; then
        env "${envs[@]}" meson setup --reconfigure "$dir" "$@" ||
            env "${envs[@]}" meson setup --wipe "$dir" "$@" || return
    elif [[ -f "$dir/meson-private/coredata.dat" ]]; then
        env "${envs[@]}" meson setup --wipe "$dir" "$@" || return
    else
        env "${envs[@]}" meson setup "$dir" "$@" || return
    fi
    echo "$now" >"$stamp"
}

# toolchain_id: where cc and c++ lead now (alternatives switch when g++ or
# clang come and go).
toolchain_id() {
    local c
    for c in cc c++; do
        printf '%s=%s ' "$c" "$(readlink -f "$(command -v "$c" 2>/dev/null)" 2>/dev/null)"
    done
}

# need_build DIR [ENV=VAL...] -- [meson options...]: configure and build DIR
# once (the first pass that needs it); returns whether it built.  The unit
# tests are required (-Dtests=enabled): without cmocka the build fails loudly.
need_build() {
    local dir=$1; shift
    if [[ -z "${build_ok[$dir]:-}" ]]; then
        say "build $dir"
        if setup_dir "$dir" "$@" -Dtests=enabled 2>&1 && ninja -C "$dir" 2>&1; then
            build_ok[$dir]=1
        else
            echo "tests/run.sh: building $dir FAILED" >&2
            build_ok[$dir]=0
        fi
    fi
    [[ "${build_ok[$dir]}" == 1 ]]
}

# ----------------------------------------------------------- meson passes --
# count_log PASS FILE RC: count FILE's test cases (see the header).
count_log() {
    local pass=$1 file=$2 rc=$3 p=0 f=0 s=0 unrun=0 kind name
    while IFS=$'\t' read -r kind name; do
        case $kind in
            P) p=$(( p + 1 )) ;;
            F) f=$(( f + 1 )); failed_cases+=("$pass: $name") ;;
            S) s=$(( s + 1 )); skipped_cases+=("$pass: $name") ;;
            U) unrun=$(( unrun + 1 )); not_run "$pass" "$name" "the test exited 77 (skip)" ;;
        esac
    done < <("$PY" - "$file" <<'PY'
import json, re, sys
status = re.compile(r"^\[\s*(OK|SKIPPED|FAILED|ERROR)\s*\] (\S+)\s*$")
try:
    lines = open(sys.argv[1], errors="replace").read().splitlines()
except OSError:
    lines = []
for line in lines:
    try:
        r = json.loads(line)
    except ValueError:
        continue
    test, result = r.get("name", "?"), r.get("result")
    out = r.get("stdout") or ""
    if "[==========]" not in out:          # not cmocka: one case
        kind = {"OK": "P", "EXPECTEDFAIL": "P", "SKIP": "U"}.get(result, "F")
        print(kind, test, sep="\t")
        continue
    cases, run = {}, []
    for l in out.splitlines():
        if l.startswith("[ RUN      ] "):
            run.append(l[13:].strip())
            continue
        m = status.match(l)
        if m and not m.group(2)[0].isdigit():
            cases.setdefault(m.group(2), m.group(1))
    failed = False
    for c in run:
        st = cases.get(c)
        kind = "P" if st == "OK" else "S" if st == "SKIPPED" else "F"
        failed |= kind == "F"
        print(kind, "%s/%s%s" % (test, c, "" if st else " (no result: crashed?)"), sep="\t")
    if result not in ("OK", "EXPECTEDFAIL") and not failed:
        print("F", "%s (meson result %s, exit %s)" % (test, result, r.get("returncode")), sep="\t")
PY
)
    if (( p + f + s + unrun == 0 )); then
        echo "tests/run.sh: pass '$pass' ran no tests (meson test exit $rc)" >&2
        f=1; failed_cases+=("$pass: ran no tests")
    elif (( rc != 0 && f == 0 && unrun == 0 )); then
        echo "tests/run.sh: pass '$pass': meson test exited $rc with no failed test recorded" >&2
        f=1; failed_cases+=("$pass: meson test exit $rc")
    fi
    add_totals "$pass" "$p" "$f" "$s"
}

# run_meson PASS DIR MESON-TEST-ARGS...: every --suite named must hold tests.
run_meson() {
    local pass=$1 dir=$2; shift 2
    say "pass $pass: meson test -C $dir $*"
    local a prev= setup=()
    for a in "$@"; do [[ $prev == --setup ]] && setup=(--setup "$a"); prev=$a; done
    prev=
    for a in "$@"; do
        if [[ $prev == --suite ]] &&
           [[ -z "$(meson test -C "$dir" --list --suite "$a" "${setup[@]}" 2>/dev/null | grep ' / ')" ]]; then
            not_run "$pass" "suite '$a'" "no test in $dir (was it configured out?)"
        fi
        prev=$a
    done
    local base="testlog-$pass" rc=0 log
    rm -f "$dir/meson-logs/$base"*.json
    meson test -C "$dir" -v --print-errorlogs --logbase "$base" "$@" 2>&1 || rc=$?
    # meson appends the wrapper or setup name to the log base
    log=$(ls -t "$dir/meson-logs/$base"*.json 2>/dev/null | head -n 1)
    count_log "$pass" "${log:-/nonexistent}" "$rc"
}

# pass_failed_build PASS DIR: the pass could not run, its build failed.
pass_failed_build() {
    echo "tests/run.sh: pass '$1' not run: $2 did not build" >&2
    failed_cases+=("$1: $2 did not build")
    total_fail=$(( total_fail + 1 ))
    summary+=("$(printf '%-9s not run (%s did not build)' "$1:" "$2")")
}

# ------------------------------------------------------------ pass: unit --
pass_pkgs[unit]=""
pass_unit() {
    need_build "$BUILD" -- --buildtype=release || { pass_failed_build unit "$BUILD"; return; }
    run_meson unit "$BUILD" --suite unit --suite generated --suite valgrind-planted
}

# ------------------------------------------------------- pass: percpuoff --
pass_pkgs[percpuoff]=""
pass_percpuoff() {
    need_build "$BUILD" -- --buildtype=release || { pass_failed_build percpuoff "$BUILD"; return; }
    run_meson percpuoff "$BUILD" --suite unit --setup percpuoff
}

# ------------------------------------------------------------ pass: asan --
pass_pkgs[asan]="clang libclang-rt-14-dev"
pass_asan() {
    need_build "$BUILD_ASAN" CC=clang CXX=clang++ -- --buildtype=debug \
        -Db_sanitize=address,undefined -Db_lundef=false -Dmicro_benchmarks=disabled \
        -Dc_args=-fno-sanitize-recover=all -Dcpp_args=-fno-sanitize-recover=all ||
        { pass_failed_build asan "$BUILD_ASAN"; return; }
    run_meson asan "$BUILD_ASAN" --suite unit
}

# ------------------------------------------------------------ pass: tsan --
pass_pkgs[tsan]="clang libclang-rt-14-dev"
pass_tsan() {
    need_build "$BUILD_TSAN" CC=clang CXX=clang++ -- --buildtype=debug \
        -Db_sanitize=thread -Db_lundef=false -Dmicro_benchmarks=disabled ||
        { pass_failed_build tsan "$BUILD_TSAN"; return; }
    run_meson tsan "$BUILD_TSAN" --suite unit
}

# -------------------------------------------------------- pass: valgrind --
pass_pkgs[valgrind]="valgrind"
pass_valgrind() {
    command -v valgrind >/dev/null || { not_run valgrind "the unit suite" "valgrind missing"; return; }
    need_build "$BUILD" -- --buildtype=release || { pass_failed_build valgrind "$BUILD"; return; }
    run_meson valgrind "$BUILD" --suite unit --setup valgrind
}

# --------------------------------------------------------- pass: preload --
pass_pkgs[preload]="redis-server redis-tools sqlite3 libpython3.11-testsuite python3.11 wrk curl tmux"
pass_preload() {
    need_build "$BUILD" -- --buildtype=release || { pass_failed_build preload "$BUILD"; return; }
    run_meson preload "$BUILD" --suite preload
}

# ------------------------------------------------------------ pass: fuzz --
pass_pkgs[fuzz]="clang libclang-rt-14-dev"
pass_fuzz() {
    say "pass fuzz: tests/fuzz/run.sh ${SPANALLOC_FUZZ_SECONDS:-60}"
    if bash tests/fuzz/run.sh "${SPANALLOC_FUZZ_SECONDS:-60}" 2>&1; then
        add_totals fuzz 1 0 0
    else
        failed_cases+=("fuzz: tests/fuzz/run.sh")
        add_totals fuzz 0 1 0
    fi
}

# ----------------------------------------------------------- pass: arm64 --
# The unit tests cross-built for arm64, under qemu-user.  Left out, with the
# reason: qemu-user (7.2) itself aborts when a threaded guest forks
# ("qemu_plugin_vcpu_init_hook: assertion failed"): fork, faults, release,
# snapshot; and badfree reads the exact stderr of an abort, to which qemu adds
# its own line.  A test that re-executes itself does so through qemu
# (SPANALLOC_TEST_EXEC_WRAPPER).  Packages: the cross compiler, qemu-user, and
# the arm64 libc and cmocka (a foreign dpkg architecture, added below).
pass_pkgs[arm64]="gcc-aarch64-linux-gnu qemu-user libc6-dev:arm64 libcmocka-dev:arm64"
pass_arm64() {
    need_build "$BUILD_ARM64" -- --cross-file tests/cross/aarch64.ini --buildtype=release ||
        { pass_failed_build arm64 "$BUILD_ARM64"; return; }
    SPANALLOC_TEST_EXEC_WRAPPER=$(command -v qemu-aarch64 || echo qemu-aarch64) \
        run_meson arm64 "$BUILD_ARM64" --suite unit \
        sizeclasses pagemap mheap mcentral mcache api stress libc_names reliability
}

# ---------------------------------------------------------------- packages --
pkgs=("${base_pkgs[@]}")
for p in $PASSES; do
    read -r -a extra <<<"${pass_pkgs[$p]:-}"
    pkgs+=("${extra[@]}")
done

# One status line per installed architecture (libcmocka-dev may be there twice).
installed() { dpkg-query -W -f='${Status}\n' "$1" 2>/dev/null | grep -qx 'install ok installed'; }

install_packages() {
    local missing=() p
    for p in "${pkgs[@]}"; do
        installed "$p" || [[ " ${missing[*]} " == *" $p "* ]] || missing+=("$p")
    done
    # Any Debian nginx flavour will do; nginx-light is the smallest.
    if has_pass preload && ! command -v nginx >/dev/null 2>&1 && [[ ! -x /usr/sbin/nginx ]]; then
        missing+=(nginx-light)
    fi
    (( ${#missing[@]} )) || { echo "packages: all present"; return 0; }
    if [[ $(id -u) != 0 ]]; then
        echo "tests/run.sh: missing packages: ${missing[*]}" >&2
        echo "  install them as root:  apt-get update && apt-get install -y ${missing[*]}" >&2
        echo "  (or choose fewer passes with SPANALLOC_TEST_PASSES, e.g. \"unit\")" >&2
        return 1
    fi
    echo "packages: installing ${missing[*]}"
    local log policy_added=0 rc=0
    log=$(mktemp)
    # Installing redis-server or nginx must not start system services here.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && policy_added=1
    fi
    {
        apt-get -qq -o Dpkg::Use-Pty=0 update &&
        apt-get -qq -y -o Dpkg::Use-Pty=0 install --no-install-recommends "${missing[@]}"
    } >"$log" 2>&1 || rc=$?
    (( policy_added )) && rm -f /usr/sbin/policy-rc.d
    if (( rc != 0 )); then
        tail -n 30 "$log" >&2
        echo "tests/run.sh: apt-get failed (exit $rc)" >&2
    fi
    rm -f "$log"
    return "$rc"
}

if [[ "${SPANALLOC_NO_INSTALL:-0}" != 1 ]]; then
    if has_pass arm64 && [[ $(id -u) == 0 ]] &&
       ! dpkg --print-foreign-architectures | grep -qx arm64; then
        dpkg --add-architecture arm64
    fi
    say "packages"
    install_packages || { echo "0 passed, 1 failed, 0 skipped"; exit 1; }
fi

# ------------------------------------------------------------------- run --
for p in $PASSES; do "pass_$p"; done

say "summary"
for line in "${summary[@]}"; do echo "$line"; done
if (( ${#skipped_cases[@]} )); then
    echo "skipped (${#skipped_cases[@]}):"
    printf '  %s\n' "${skipped_cases[@]}"
fi
if (( ${#failed_cases[@]} )); then
    echo "failed (${#failed_cases[@]}):"
    printf '  %s\n' "${failed_cases[@]}"
fi
echo "$total_pass passed, $total_fail failed, $total_skip skipped"
(( total_fail == 0 ))
