# bench/lib.sh: shell helpers shared by run.sh, compare.sh and rss_plot.sh.
# Sourced, not run.  Knows where each allocator lives and how to install it.

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
LIBDIR=/usr/lib/x86_64-linux-gnu
ALL_ALLOCATORS="spanalloc glibc jemalloc tcmalloc mimalloc"

log() { printf '%s\n' "$*" >&2; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# The LD_PRELOAD value for an allocator ("" for glibc); $1 name, $2 build dir.
preload_path() {
    case "$1" in
        spanalloc) echo "$2/libspanalloc.so" ;;
        glibc) echo "" ;;
        jemalloc) echo "$LIBDIR/libjemalloc.so.2" ;;
        tcmalloc) echo "$LIBDIR/libtcmalloc_minimal.so.4" ;;
        mimalloc) echo "$LIBDIR/libmimalloc.so.2" ;;
        *) return 1 ;;
    esac
}

apt_package() {
    case "$1" in
        jemalloc) echo libjemalloc2 ;;
        tcmalloc) echo libtcmalloc-minimal4 ;;
        mimalloc) echo libmimalloc2.0 ;;
    esac
}

# apt-get install the given packages when root; otherwise just say what is missing.
apt_install() {
    [ $# -gt 0 ] || return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        warn "missing packages (not root, not installing): $*"
        return 1
    fi
    log "installing: $*"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2
    fi
}

# Install the peers that are missing (jemalloc, tcmalloc, mimalloc).
install_peers() {
    local pkgs=() a
    for a in jemalloc tcmalloc mimalloc; do
        [ -e "$(preload_path "$a" .)" ] || pkgs+=("$(apt_package "$a")")
    done
    apt_install "${pkgs[@]}" || true
}

# Keep only the allocators that can be used; warn about the others.
# $1 comma/space list, $2 build dir; prints the usable list.
usable_allocators() {
    local out=() a p
    for a in ${1//,/ }; do
        if ! p=$(preload_path "$a" "$2"); then
            warn "unknown allocator '$a' (known: $ALL_ALLOCATORS)"
            continue
        fi
        if [ -n "$p" ] && [ ! -e "$p" ]; then
            if [ "$a" = spanalloc ]; then
                warn "$p not built: the spanalloc column is skipped"
            else
                warn "$p missing: the $a column is skipped"
            fi
            continue
        fi
        out+=("$a")
    done
    echo "${out[*]}"
}

# Absolute path of a build dir given relative to the repo.
abs_build_dir() {
    case "$1" in
        /*) echo "$1" ;;
        *) echo "$REPO_DIR/$1" ;;
    esac
}

need_bench_binaries() {
    local b
    for b in "$@"; do
        [ -x "$BUILD/bench/$b" ] ||
            die "$BUILD/bench/$b not found: build first (bash bench/run.sh, or meson setup $BUILD && ninja -C $BUILD)"
    done
}
