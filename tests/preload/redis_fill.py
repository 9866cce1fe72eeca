#!/usr/bin/env python3
"""Fill and check helper for tests/preload/redis.sh (runs on glibc, not preloaded).

  redis_fill.py gen   MB SEED          RESP for `redis-cli --pipe` on stdout;
                                       prints the key count on stderr
  redis_fill.py check MB SEED PORT K   read back K sample keys (plus the first
                                       and last) and compare their content

Keys are fill:<i>; value sizes are log-uniform in [256 B, 128 KiB] from a
seeded PRNG, so both commands derive the same keys and sizes; a value's bytes
are a pattern made from its key index, so any mix-up or corruption shows.
"""
import math
import random
import socket
import sys

MIN_SIZE, MAX_SIZE = 256, 128 * 1024


def layout(mb, seed):
    """Yield (index, size) until the sizes add up to mb MiB."""
    rnd = random.Random(seed)
    target = mb * 1024 * 1024
    lo, hi = math.log(MIN_SIZE), math.log(MAX_SIZE)
    total = i = 0
    while total < target:
        size = min(MAX_SIZE, int(math.exp(rnd.uniform(lo, hi))))
        yield i, size
        total += size
        i += 1


def value(i, size):
    unit = b"<%x:%d>" % (i, size)
    return (unit * (size // len(unit) + 1))[:size]


def gen(mb, seed):
    out = sys.stdout.buffer
    n = 0
    buf = []
    pending = 0
    for i, size in layout(mb, seed):
        key = b"fill:%d" % i
        buf.append(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
                   % (len(key), key, size, value(i, size)))
        pending += size
        n += 1
        if pending > (4 << 20):
            out.write(b"".join(buf))
            buf, pending = [], 0
    out.write(b"".join(buf))
    out.flush()
    print(n, file=sys.stderr)


class Conn:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.f = self.sock.makefile("rb")

    def send(self, *args):
        parts = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(parts))

    def reply(self):
        line = self.f.readline()
        if not line:
            raise EOFError("server closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.f.read(n + 2)
            return data[:-2]
        if kind == b":":
            return int(rest)
        if kind == b"-":
            raise RuntimeError(rest.decode())
        return rest


def check(mb, seed, port, samples):
    keys = list(layout(mb, seed))
    rnd = random.Random(seed + 1)
    pick = {0, len(keys) - 1}
    while len(pick) < min(samples + 2, len(keys)):
        pick.add(rnd.randrange(len(keys)))
    c = Conn(port)
    pick = sorted(pick)
    for i in pick:  # pipelined
        c.send("GET", "fill:%d" % i)
    bad = 0
    nbytes = 0
    for i in pick:
        got = c.reply()
        want = value(i, keys[i][1])
        nbytes += len(want)
        if got != want:
            bad += 1
            if bad <= 5:
                print("mismatch at fill:%d: got %s bytes, want %d" %
                      (i, None if got is None else len(got), len(want)), file=sys.stderr)
    if bad:
        print("%d of %d sampled values wrong" % (bad, len(pick)), file=sys.stderr)
        sys.exit(1)
    print(len(pick), nbytes)


def main():
    cmd = sys.argv[1]
    if cmd == "gen":
        gen(int(sys.argv[2]), int(sys.argv[3]))
    elif cmd == "check":
        check(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    else:
        sys.exit("usage: redis_fill.py gen MB SEED | check MB SEED PORT K")


if __name__ == "__main__":
    main()
