#!/usr/bin/env python3
"""Deterministic test trees for bench/compare.sh and bench/ssh.sh.

  gen_tree.py gen    DIR --files N [--seed S] [--flat] [--min-size B] [--max-size B]
                                                 create a fresh tree in DIR
                                                 (--flat: all files in DIR)
  gen_tree.py modify DIR --percent P [--seed S]   rewrite P% of the files
  gen_tree.py patch  FILE --count C --size B [--seed S]
                                                 overwrite C blocks of B bytes
  gen_tree.py manifest DIR [--ignore NAME]        print a listing (see below)
  gen_tree.py compare SRC DST [--ignore NAME]     exit 1 if DST != SRC

Content comes from random.Random(seed), so the same seed gives the same
bytes; sizes are uniform in [100, 16384]. About FILES_PER_DIR files go into
each leaf directory; leaves sit 2 or 3 levels deep (every third leaf has an
extra level).

The manifest has one line per entry below the root (the top-level entry
named by --ignore, default `.snapsync`, is skipped):
  f PATH MODE SIZE MTIME_NS BLAKE2B   regular file
  d PATH MODE MTIME_NS                directory
  l PATH -> TARGET                    symlink
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


def file_paths(n_files, flat=False):
    if flat:
        for i in range(n_files):
            yield "f%06d.bin" % i
        return
    leaves = leaf_dirs(n_files)
    for i in range(n_files):
        yield os.path.join(leaves[i // FILES_PER_DIR], "f%06d.bin" % i)


def cmd_gen(args):
    root = args.dir
    if os.path.exists(root) and os.listdir(root):
        sys.exit(f"gen_tree: {root} exists and is not empty")
    rng = random.Random(args.seed)
    made = set()
    total = 0
    for rel in file_paths(args.files, args.flat):
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
    uses, so DIR must have been made by `gen` with the same --files."""
    root = args.dir
    paths = list(file_paths(args.files))
    rng = random.Random(args.seed)
    count = max(1, round(len(paths) * args.percent / 100))
    chosen = sorted(rng.sample(range(len(paths)), count))
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


def manifest(root, ignore):
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
            if stat.S_ISDIR(st.st_mode):
                lines.append(f"d {rel} {mode} {st.st_mtime_ns}")
            elif stat.S_ISLNK(st.st_mode):
                lines.append(f"l {rel} -> {os.readlink(full)}")
            elif stat.S_ISREG(st.st_mode):
                lines.append(
                    f"f {rel} {mode} {st.st_size} {st.st_mtime_ns} {hash_file(full)}"
                )
            else:
                lines.append(f"? {rel} {mode}")
    return lines


def cmd_manifest(args):
    for line in manifest(args.dir, args.ignore):
        print(line)


def cmd_compare(args):
    if args.src_manifest:
        with open(args.src_manifest) as f:
            src = f.read().splitlines()
    else:
        src = manifest(args.src, args.ignore)
    dst = manifest(args.dst, args.ignore)
    if src == dst:
        return
    src_set, dst_set = set(src), set(dst)
    missing = [l for l in src if l not in dst_set]
    extra = [l for l in dst if l not in src_set]
    print(
        f"MISMATCH: {len(missing)} source entries not matched in target, "
        f"{len(extra)} target entries not in source",
        file=sys.stderr,
    )
    for l in missing[:10]:
        print(f"  source only: {l}", file=sys.stderr)
    for l in extra[:10]:
        print(f"  target only: {l}", file=sys.stderr)
    sys.exit(1)


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
    m = sub.add_parser("modify")
    m.add_argument("dir")
    m.add_argument("--files", type=int, default=100000)
    m.add_argument("--percent", type=float, default=1.0)
    m.add_argument("--seed", type=int, default=1)
    pa = sub.add_parser("patch")
    pa.add_argument("file")
    pa.add_argument("--count", type=int, default=3)
    pa.add_argument("--size", type=int, default=1 << 20)
    pa.add_argument("--seed", type=int, default=1)
    l = sub.add_parser("manifest")
    l.add_argument("dir")
    l.add_argument("--ignore", default=".snapsync")
    c = sub.add_parser("compare")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--ignore", default=".snapsync")
    c.add_argument("--src-manifest", help="use this saved manifest for SRC")
    args = p.parse_args()
    {"gen": cmd_gen, "modify": cmd_modify, "patch": cmd_patch,
     "manifest": cmd_manifest, "compare": cmd_compare}[args.cmd](args)
    if args.cmd in ("gen", "modify", "patch"):
        settle()


if __name__ == "__main__":
    main()
