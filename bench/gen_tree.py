#!/usr/bin/env python3
"""Deterministic test trees for the benchmark scripts beside this file.

  gen_tree.py gen    DIR --files N [--seed S] [--flat] [--min-size B] [--max-size B]
                     [--prefix P]                create a fresh tree in DIR
                                                 (--flat: all files in DIR;
                                                 files are named P000123.bin)
  gen_tree.py modify DIR --percent P [--seed S] [--part K/N]
                                                 rewrite P% of the files
  gen_tree.py patch  FILE --count C --size B [--seed S]
                                                 overwrite C blocks of B bytes
  gen_tree.py manifest DIR [--ignore NAME] [--content]
                                                 print a listing (see below)
  gen_tree.py compare SRC DST [--ignore NAME] [--expect FILE] [--mtime-tolerance NS]
                     [--no-dir-times]            exit 1 if DST != SRC
  gen_tree.py merge BASE A B                     print the contents two-way
                                                 sync of A and B must give

Content comes from random.Random(seed), so the same seed gives the same
bytes; sizes are uniform in [100, 16384]. About FILES_PER_DIR files go into
each leaf directory; leaves sit 2 or 3 levels deep (every third leaf has an
extra level).

The manifest has one line per entry below the root (the top-level entry
named by --ignore, default `.snapsync`, is skipped):
  f PATH MODE SIZE MTIME_NS BLAKE2B   regular file
  d PATH MODE MTIME_NS                directory
  l PATH -> TARGET                    symlink
With --content, times are left out (`f PATH MODE SIZE BLAKE2B`, `d PATH
MODE`): what a sync must carry whatever it does with times.
"""

import argparse
import hashlib
import math
import os
import random
import stat
import sys
import time

MIN_SIZE = 100
MAX_SIZE = 16 * 1024
FILES_PER_DIR = 100


def leaf_dirs(n_files):
    leaves = max(1, math.ceil(n_files / FILES_PER_DIR))
    fanout = max(1, math.ceil(math.sqrt(leaves)))
    out = []
    for leaf in range(leaves):
        parts = ["a%03d" % (leaf // fanout), "b%03d" % (leaf % fanout)]
        if leaf % 3 == 2:
            parts.append("c%d" % (leaf % 7))
        out.append(os.path.join(*parts))
    return out


def file_paths(n_files, flat=False, prefix="f"):
    if flat:
        for i in range(n_files):
            yield "%s%06d.bin" % (prefix, i)
        return
    leaves = leaf_dirs(n_files)
    for i in range(n_files):
        yield os.path.join(leaves[i // FILES_PER_DIR], "%s%06d.bin" % (prefix, i))


def cmd_gen(args):
    root = args.dir
    if os.path.exists(root) and os.listdir(root):
        sys.exit(f"gen_tree: {root} exists and is not empty")
    rng = random.Random(args.seed)
    made = set()
    total = 0
    for rel in file_paths(args.files, args.flat, args.prefix):
        d = os.path.join(root, os.path.dirname(rel))
        if d not in made:
            os.makedirs(d, exist_ok=True)
            made.add(d)
        data = rng.randbytes(rng.randint(args.min_size, args.max_size))
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
        total += len(data)
    print(f"{args.files} files, {len(made)} leaf dirs, {total} bytes")


def cmd_modify(args):
    """Rewrite a deterministic choice of P% of the files (at least one):
    half keep their size with a new block written in the middle, half get
    wholly new content of a new size. Paths come from the same layout `gen`
    uses, so DIR must have been made by `gen` with the same --files. With
    --part K/N only the files whose number is K modulo N are candidates (P%
    is still of all files), so trees changed with different K never change
    the same file."""
    root = args.dir
    paths = list(file_paths(args.files))
    rng = random.Random(args.seed)
    count = max(1, round(len(paths) * args.percent / 100))
    part, parts = (int(x) for x in args.part.split("/"))
    candidates = range(part, len(paths), parts)
    if count > len(candidates):
        sys.exit(f"gen_tree: cannot modify {count} of the {len(candidates)} files of part {args.part}")
    chosen = sorted(rng.sample(candidates, count))
    for n, i in enumerate(chosen):
        path = os.path.join(root, paths[i])
        if n % 2 == 0:
            size = os.path.getsize(path)
            block = rng.randbytes(min(size, 4096))
            with open(path, "r+b") as f:
                f.seek((size - len(block)) // 2)
                f.write(block)
        else:
            with open(path, "wb") as f:
                f.write(rng.randbytes(rng.randint(MIN_SIZE, MAX_SIZE)))
    print(f"modified {count} files")


def cmd_patch(args):
    """Overwrite COUNT blocks of SIZE bytes of FILE in place (same file
    size) with new pseudo-random bytes: block k starts at a seeded offset
    inside the k-th of COUNT equal slices of the file, so the blocks are
    spread out, do not overlap and are not aligned to any block size."""
    size = os.path.getsize(args.file)
    slice_len = size // args.count
    if slice_len < args.size:
        sys.exit(f"gen_tree: {args.file} is too small for {args.count} blocks of {args.size}")
    rng = random.Random(args.seed)
    offsets = []
    with open(args.file, "r+b") as f:
        for k in range(args.count):
            off = k * slice_len + rng.randrange(slice_len - args.size + 1)
            f.seek(off)
            f.write(rng.randbytes(args.size))
            offsets.append(off)
    print(f"patched {args.count} x {args.size} bytes at offsets "
          + " ".join(str(o) for o in offsets))


def hash_file(path):
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


def manifest(root, ignore, content=False):
    lines = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            rel_dir = ""
            if ignore in dirnames:
                dirnames.remove(ignore)
            if ignore in filenames:
                filenames.remove(ignore)
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.join(rel_dir, name)
            st = os.lstat(full)
            mode = "%o" % stat.S_IMODE(st.st_mode)
            mtime = "" if content else f" {st.st_mtime_ns}"
            if stat.S_ISDIR(st.st_mode):
                lines.append(f"d {rel} {mode}{mtime}")
            elif stat.S_ISLNK(st.st_mode):
                lines.append(f"l {rel} -> {os.readlink(full)}")
            elif stat.S_ISREG(st.st_mode):
                lines.append(
                    f"f {rel} {mode} {st.st_size}{mtime} {hash_file(full)}"
                )
            else:
                lines.append(f"? {rel} {mode}")
    return lines


def cmd_manifest(args):
    for line in manifest(args.dir, args.ignore, args.content):
        print(line)


def without_dir_time(line):
    """A manifest line without its directory mtime."""
    fields = line.split(" ")
    if fields[0] == "d":
        del fields[3]
    return " ".join(fields)


def within_tolerance(src, dst, tolerance):
    """DST's listing with the mtime of each file whose mtime is at most
    tolerance ns from its SRC entry's (all else equal) replaced by SRC's."""
    src_files = {}
    for l in src:
        fields = l.split(" ")
        if fields[0] == "f":
            src_files[fields[1]] = fields
    out = []
    for l in dst:
        fields = l.split(" ")
        other = src_files.get(fields[1]) if fields[0] == "f" else None
        if (other and fields[:4] + fields[5:] == other[:4] + other[5:]
                and abs(int(fields[4]) - int(other[4])) <= tolerance):
            l = " ".join(other)
        out.append(l)
    return out


def content_of(line):
    """A manifest line as `manifest --content` prints it."""
    fields = line.split(" ")
    if fields[0] == "f":
        del fields[4]
    elif fields[0] == "d":
        del fields[3]
    return " ".join(fields)


def report_difference(src, dst, src_name, dst_name):
    """Print how two listings differ (stderr); False if they do."""
    if src == dst:
        return True
    src_set, dst_set = set(src), set(dst)
    missing = [l for l in src if l not in dst_set]
    extra = [l for l in dst if l not in src_set]
    print(
        f"MISMATCH: {len(missing)} {src_name} entries not matched in {dst_name}, "
        f"{len(extra)} {dst_name} entries not in {src_name}",
        file=sys.stderr,
    )
    for l in missing[:10]:
        print(f"  {src_name} only: {l}", file=sys.stderr)
    for l in extra[:10]:
        print(f"  {dst_name} only: {l}", file=sys.stderr)
    return False


def cmd_compare(args):
    """--expect FILE also checks SRC's contents against a `manifest
    --content` listing (as sets: the order of FILE does not matter)."""
    if args.src_manifest:
        with open(args.src_manifest) as f:
            src = f.read().splitlines()
    else:
        src = manifest(args.src, args.ignore)
    dst = manifest(args.dst, args.ignore)
    ok = True
    if args.expect:
        with open(args.expect) as f:
            expected = sorted(f.read().splitlines())
        ok = report_difference(expected, sorted(content_of(l) for l in src),
                               "expected", "source")
    if args.no_dir_times:
        src = [without_dir_time(l) for l in src]
        dst = [without_dir_time(l) for l in dst]
    if args.mtime_tolerance:
        dst = within_tolerance(src, dst, args.mtime_tolerance)
    ok = report_difference(src, dst, "source", "target") and ok
    if not ok:
        sys.exit(1)


def read_listing(path):
    """A `manifest --content` listing as {path: line}."""
    with open(path) as f:
        return {l.split(" ")[1]: l for l in f.read().splitlines()}


def cmd_merge(args):
    """Print, as a `manifest --content` listing, what both replicas must hold
    after a two-way sync: BASE is the listing both held after their last
    sync (an empty file before the first), A and B what each holds now. A
    path that changed on one side only takes that side's line; one that
    changed on both sides to different lines is a conflict, and no benchmark
    here should make one."""
    base, a, b = (read_listing(p) for p in (args.base, args.a, args.b))
    conflicts = 0
    for path in sorted(set(a) | set(b)):
        la, lb, lbase = a.get(path), b.get(path), base.get(path)
        if la == lb or lb == lbase:
            line = la
        elif la == lbase:
            line = lb
        else:
            conflicts += 1
            print(f"gen_tree: conflict at {path}: {la!r} vs {lb!r}", file=sys.stderr)
            continue
        if line is not None:
            print(line)
    if conflicts:
        sys.exit(f"gen_tree: {conflicts} conflicting paths")


def settle():
    """Waits until the tree's timestamps lie in a past second: rsync 3.5
    leaves a directory's mtime unset when it falls in the current second,
    and a tree written just before a timed run would count that against it."""
    time.sleep(1.1)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("dir")
    g.add_argument("--files", type=int, default=100000)
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--min-size", type=int, default=MIN_SIZE,
                   help="smallest file, bytes (default 100)")
    g.add_argument("--max-size", type=int, default=MAX_SIZE,
                   help="largest file, bytes (default 16384)")
    g.add_argument("--flat", action="store_true",
                   help="put every file directly in DIR")
    g.add_argument("--prefix", default="f",
                   help="file names start with this (default f)")
    m = sub.add_parser("modify")
    m.add_argument("dir")
    m.add_argument("--files", type=int, default=100000)
    m.add_argument("--percent", type=float, default=1.0)
    m.add_argument("--seed", type=int, default=1)
    m.add_argument("--part", default="0/1",
                   help="K/N: change only files whose number is K modulo N")
    pa = sub.add_parser("patch")
    pa.add_argument("file")
    pa.add_argument("--count", type=int, default=3)
    pa.add_argument("--size", type=int, default=1 << 20)
    pa.add_argument("--seed", type=int, default=1)
    l = sub.add_parser("manifest")
    l.add_argument("dir")
    l.add_argument("--ignore", default=".snapsync")
    l.add_argument("--content", action="store_true",
                   help="leave out mtimes")
    c = sub.add_parser("compare")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--ignore", default=".snapsync")
    c.add_argument("--src-manifest", help="use this saved manifest for SRC")
    c.add_argument("--expect", metavar="FILE",
                   help="also check SRC's contents against this `manifest --content` listing")
    c.add_argument("--mtime-tolerance", type=int, default=0, metavar="NS",
                   help="file mtimes at most NS nanoseconds apart count as equal")
    c.add_argument("--no-dir-times", action="store_true",
                   help="leave directory mtimes out of the comparison")
    me = sub.add_parser("merge")
    me.add_argument("base")
    me.add_argument("a")
    me.add_argument("b")
    args = p.parse_args()
    {"gen": cmd_gen, "modify": cmd_modify, "patch": cmd_patch,
     "manifest": cmd_manifest, "compare": cmd_compare,
     "merge": cmd_merge}[args.cmd](args)
    if args.cmd in ("gen", "modify", "patch"):
        settle()


if __name__ == "__main__":
    main()
