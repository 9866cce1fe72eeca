# redis_lib.sh: start Debian's redis-server on the library, for the redis
# preload tests.  Source after lib.sh and pl_init.
#
# redis_start [VAR=VALUE...]: our own instance on 127.0.0.1 (a free port, no
# persistence, the test's temp dir), LD_PRELOAD=$PL_LIB plus the given
# variables; waits until it listens.  Sets port and pid, and defines cli
# (redis-cli against it) and fail (shows the server's logs, then pl_fail).

cli() { timeout 120 redis-cli -h 127.0.0.1 -p "$port" "$@"; }
fail() { pl_show "$PL_TMP/redis.log"; pl_show "$PL_TMP/redis.err"; pl_fail "$*"; }

redis_start() {
    port=$(pl_free_port)
    env LD_PRELOAD="$PL_LIB" "$@" \
        redis-server --bind 127.0.0.1 --port "$port" --protected-mode yes \
            --save '' --appendonly no --enable-debug-command yes \
            --dir "$PL_TMP" --daemonize no --supervised no \
            --logfile "$PL_TMP/redis.log" \
        >"$PL_TMP/redis.out" 2>"$PL_TMP/redis.err" </dev/null &
    pid=$!
    pl_at_exit "kill -9 $pid"
    pl_wait_port "$port" 30 "$pid" || fail "redis-server did not listen on 127.0.0.1:$port within 30 s"
}
