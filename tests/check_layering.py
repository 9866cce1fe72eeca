#!/usr/bin/env python3
"""check_layering.py LIBRARY.a: the tiers call one way (docs/design.md).

Reads `nm` of the static library: each object is named for its folder
(alloc_mheap.c.o is alloc/mheap.c).  Fails, listing the offending
references, when
  - an object of alloc/ refers to a symbol defined in scavenger/, stats/,
    compat/ or tools/, or to lifecycle/ other than through sa_lifecycle_start
    (sa_init_slow's one call up);
  - alloc/ refers to profile/ by a symbol not in ALLOC_TO_PROFILE (the
    sampled allocation's hooks, documented in docs/design.md);
  - scavenger/ refers to stats/ (stats/ sits above the scavenger and reads
    its counters; not the other way);
  - scavenger/, stats/ or profile/ refer to lifecycle/;
  - bgthread/ (the background threads' start, fork and liveness, shared by
    scavenger/, stats/ and profile/) refers to any other folder, or alloc/
    refers to it (the tiers start no thread).
lifecycle/ and compat/ (the jemalloc entry points) sit at the top and may
refer to anything; tools/ (spanalloc-top) is a program outside the library.
"""
import subprocess
import sys

ALLOC_UP_OK = {'lifecycle': {'sa_lifecycle_start'}}
ALLOC_TO_PROFILE = {
    # malloc.c: the sampler's countdown and the sampled block's hooks
    'sa_profile_malloc', 'sa_profile_free',
    'sa_profile_is_small', 'sa_profile_usable',
    # options.c: the profile's options are parsed with the others
    'sa_profile_options',
}
FORBIDDEN = {
    'alloc': {'scavenger', 'stats', 'compat', 'tools', 'lifecycle', 'bgthread'},
    'bgthread': {'alloc', 'scavenger', 'stats', 'profile', 'compat', 'tools', 'lifecycle'},
    'scavenger': {'stats', 'compat', 'tools', 'lifecycle'},
    'stats': {'compat', 'tools', 'lifecycle'},
    'profile': {'scavenger', 'stats', 'compat', 'tools', 'lifecycle'},
}


def folder(obj):
    return obj.rsplit('/', 1)[-1].split('_', 1)[0]


def main():
    out = subprocess.run(['nm', '-A', sys.argv[1]], check=True,
                         capture_output=True, text=True).stdout
    defined, refs = {}, []
    for line in out.splitlines():
        parts = line.split()  # "lib.a:dir/obj.o:[addr] TYPE symbol"
        if len(parts) < 2:
            continue
        obj, kind, sym = parts[0].split(':')[1], parts[-2], parts[-1]
        if kind in ('U', 'w'):
            refs.append((folder(obj), obj, sym))
        elif kind.isupper():
            defined[sym] = folder(obj)
    bad = []
    seen_profile = set()
    for src, obj, sym in refs:
        dst = defined.get(sym)
        if dst is None or dst == src:
            continue
        if src == 'alloc' and dst == 'profile':
            seen_profile.add(sym)
            if sym not in ALLOC_TO_PROFILE:
                bad.append(f'{obj} -> profile/{sym} (not in ALLOC_TO_PROFILE)')
            continue
        if sym in ALLOC_UP_OK.get(dst, set()) and src == 'alloc':
            continue
        if dst in FORBIDDEN.get(src, set()):
            bad.append(f'{obj} -> {dst}/{sym}')
    if not refs:
        bad.append('no references read: is this the static library?')
    for b in bad:
        print('layering:', b)
    print(f'{len(refs)} references read, {len(bad)} against the layering;'
          f' alloc/ -> profile/: {", ".join(sorted(seen_profile)) or "none"}')
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
