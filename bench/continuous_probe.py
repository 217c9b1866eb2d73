#!/usr/bin/env python3
"""Writes into the source root of a running continuous sync and times when
each write becomes visible in the target, for bench/continuous.sh.

  continuous_probe.py steady SRC DST --name NAME --count N --interval-ms MS
                     [--dirs K] [--seed S] [--timeout SECS] --samples FILE
  continuous_probe.py burst SRC DST --name NAME --files N [--dirs K]
                     [--seed S] [--timeout SECS]

steady: makes SRC/NAME/d0..d(K-1) and waits (untimed) until the target has
  them; then one small file every MS ms, N writes on a fixed schedule (start
  + i * MS, never catching up by writing faster): each creates a new file or
  rewrites one this run made before and last wrote at least 1 s earlier,
  chosen from --seed, so every tool given the same seed writes the same
  sequence. A write is open, write, close of the whole file (in place, as an
  editor that truncates does); its time is taken when close returns. One
  line per write goes to FILE (tab-separated: seq, op, path, size,
  written_ms since the first write, latency_ms or NA, status), and a JSON
  summary to stdout.
burst: makes SRC/NAME/d0..d(K-1) and N new files spread over them as fast
  as it can, then polls until the target holds every one with the right
  content; prints a JSON summary (times from the last write, and from the
  first, to the moment the last file was seen).

Content: a line naming NAME and the write's number, then pseudo-random
bytes (sizes uniform in 100 B-4 KiB) from NAME and the seed, so no two
writes of any run have the same content (a sync tool cannot satisfy one
from a copy it already holds). The schedule and sizes come from the seed
alone.

How visibility is seen: a watcher thread loops over the writes not yet
seen, with a 1 ms sleep between sweeps. steady stats each target path and
reads the file only when its (inode, size, mtime) changed since it last
looked, so the target is opened about once per write (opens are inotify
events a tool watching the target must filter out), and a write counts as
visible when the target file holds its exact bytes. burst lists the target
directories and stats each expected file once it is listed; when all are
there with their sizes, it reads every one (untimed), and if any content is
wrong it polls again, reading, until all are right, and that later time
counts. The time taken is that of the stat (steady) or of the sweep (burst)
that found the last, so a time is late by at most one sweep: the summary
gives the mean and longest sweep period. Temporary names a tool writes first
and renames are ignored, since their names are not expected.

A steady write that is overwritten by the writer before it was ever seen
counts as "superseded" (its latency then exceeded 1 s); one not seen within
--timeout seconds of the last write counts as "missed". Exit status 0
either way: the caller decides what a miss means.
"""

import argparse
import json
import math
import os
import random
import statistics
import sys
import threading
import time

MIN_SIZE = 100
MAX_SIZE = 4096
POLL_SLEEP = 0.001
REWRITE_GAP_MS = 1000


def now_ns():
    return time.monotonic_ns()


def content(rng, name, seq):
    head = f"{name} write {seq}\n".encode()
    size = max(len(head), rng.randint(MIN_SIZE, MAX_SIZE))
    return head + rng.randbytes(size - len(head))


def write_file(path, data):
    """Write a whole file in place; return the time close() returned."""
    with open(path, "wb") as f:
        f.write(data)
    return now_ns()


def read_or_none(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return None


def percentile(sorted_values, p):
    """Nearest-rank percentile (the smallest value with at least p% at or
    below it)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


class SweepClock:
    """Counts the watcher's sweeps and the longest gap between two."""

    def __init__(self):
        self.start = now_ns()
        self.last = self.start
        self.count = 0
        self.longest = 0

    def tick(self):
        t = now_ns()
        self.longest = max(self.longest, t - self.last)
        self.last = t
        self.count += 1

    def summary(self):
        mean = (self.last - self.start) / self.count if self.count else 0
        return {"sweeps": self.count, "sweep_mean_ms": round(mean / 1e6, 3),
                "sweep_max_ms": round(self.longest / 1e6, 3)}


def wait_for_dirs(dst_dirs, timeout):
    deadline = time.monotonic() + timeout
    while not all(os.path.isdir(d) for d in dst_dirs):
        if time.monotonic() > deadline:
            sys.exit(f"continuous_probe: the target did not get {dst_dirs[0]} ... within {timeout} s")
        time.sleep(POLL_SLEEP)


# --- steady ----------------------------------------------------------------------

class SteadyWatcher(threading.Thread):
    """Polls the target for the writes in `pending` (path -> write) and
    stamps each with the time it was seen."""

    def __init__(self, dst):
        super().__init__(daemon=True)
        self.dst = dst
        self.lock = threading.Lock()
        self.pending = {}
        self.last_key = {}
        self.writing_done = False
        self.deadline_ns = None
        self.clock = SweepClock()

    def expect(self, write):
        """Add a write; the one it replaces, if still unseen, is superseded."""
        with self.lock:
            old = self.pending.get(write["path"])
            if old is not None:
                old["status"] = "superseded"
            self.pending[write["path"]] = write

    def run(self):
        while True:
            with self.lock:
                items = list(self.pending.items())
                finished = self.writing_done and not items
            if finished or (self.deadline_ns and now_ns() > self.deadline_ns):
                return
            for rel, write in items:
                full = os.path.join(self.dst, rel)
                try:
                    st = os.stat(full)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                seen_ns = now_ns()
                key = (st.st_ino, st.st_size, st.st_mtime_ns)
                if key == self.last_key.get(rel):
                    continue
                self.last_key[rel] = key
                if st.st_size != len(write["data"]) or read_or_none(full) != write["data"]:
                    continue
                with self.lock:
                    if self.pending.get(rel) is write:
                        del self.pending[rel]
                        write["seen_ns"] = seen_ns
                        write["status"] = "visible"
            self.clock.tick()
            time.sleep(POLL_SLEEP)


def cmd_steady(args):
    src_root = os.path.join(args.src, args.name)
    dst_root = os.path.join(args.dst, args.name)
    dirs = ["d%d" % k for k in range(args.dirs)]
    for d in dirs:
        os.makedirs(os.path.join(src_root, d))
    wait_for_dirs([os.path.join(dst_root, d) for d in dirs], args.timeout)
    # let the cycle that carried the directories finish before the clock starts
    time.sleep(0.5)

    ops = random.Random(args.seed)
    data_rng = random.Random(f"{args.seed}:{args.name}")
    gap = max(1, math.ceil(REWRITE_GAP_MS / args.interval_ms))
    last_write = {}          # path -> seq of its last write
    writes = []
    watcher = SteadyWatcher(dst_root)
    watcher.start()
    interval_ns = int(args.interval_ms * 1e6)
    start = now_ns()
    worst_lag = 0
    for seq in range(args.count):
        due = start + seq * interval_ns
        wait = due - now_ns()
        if wait > 0:
            time.sleep(wait / 1e9)
        worst_lag = max(worst_lag, now_ns() - due)
        eligible = [p for p, s in last_write.items() if s <= seq - gap]
        if eligible and ops.random() >= 0.5:
            op = "rewrite"
            rel = ops.choice(sorted(eligible))
        else:
            op = "create"
            rel = os.path.join(ops.choice(dirs), "f%06d.txt" % seq)
        write = {"seq": seq, "op": op, "path": rel,
                 "data": content(data_rng, args.name, seq), "status": "missed"}
        written = write_file(os.path.join(src_root, rel), write["data"])
        write["written_ns"] = written
        watcher.expect(write)
        last_write[rel] = seq
        writes.append(write)
    with watcher.lock:
        watcher.writing_done = True
        watcher.deadline_ns = now_ns() + int(args.timeout * 1e9)
    watcher.join()

    latencies = []
    with open(args.samples, "w") as out:
        for w in writes:
            lat = "NA"
            if w["status"] == "visible":
                ms = (w["seen_ns"] - w["written_ns"]) / 1e6
                latencies.append(ms)
                lat = f"{ms:.3f}"
            out.write(f"{w['seq']}\t{w['op']}\t{w['path']}\t{len(w['data'])}\t"
                      f"{(w['written_ns'] - start) / 1e6:.3f}\t{lat}\t{w['status']}\n")
    latencies.sort()
    summary = {
        "writes": len(writes),
        "creates": sum(w["op"] == "create" for w in writes),
        "visible": len(latencies),
        "superseded": sum(w["status"] == "superseded" for w in writes),
        "missed": sum(w["status"] == "missed" for w in writes),
        "p50_ms": percentile(latencies, 50), "p90_ms": percentile(latencies, 90),
        "p99_ms": percentile(latencies, 99), "max_ms": latencies[-1] if latencies else None,
        "mean_ms": statistics.fmean(latencies) if latencies else None,
        "writer_worst_lag_ms": round(worst_lag / 1e6, 3),
        "missed_paths": [w["path"] for w in writes if w["status"] == "missed"][:10],
    }
    summary.update(watcher.clock.summary())
    print(json.dumps(summary))


# --- burst -----------------------------------------------------------------------

def cmd_burst(args):
    src_root = os.path.join(args.src, args.name)
    dst_root = os.path.join(args.dst, args.name)
    dirs = ["d%d" % k for k in range(args.dirs)]
    rng = random.Random(f"{args.seed}:{args.name}")
    # what each target directory must end up holding: name -> content
    expected = {d: {} for d in dirs}
    for seq in range(args.files):
        expected[dirs[seq % len(dirs)]]["f%06d.txt" % seq] = content(rng, args.name, seq)
    total_bytes = sum(len(v) for e in expected.values() for v in e.values())

    first_ns = now_ns()
    for d in dirs:
        os.makedirs(os.path.join(src_root, d))
    last_ns = first_ns
    for seq in range(args.files):
        d = dirs[seq % len(dirs)]
        name = "f%06d.txt" % seq
        last_ns = write_file(os.path.join(src_root, d, name), expected[d][name])

    # Timed: a file has arrived once it is listed under its name with its
    # size (tools write a temporary name and rename it, so such a file is
    # whole); reading 10,000 files inside the loop would make a sweep last
    # 100 ms and more. The content is checked afterwards; a file whose
    # content is wrong goes back to being awaited, read on every sweep.
    clock = SweepClock()
    deadline_ns = last_ns + int(args.timeout * 1e9)
    remaining = {d: set(names) for d, names in expected.items()}
    left = args.files
    all_seen_ns = None
    rechecked = 0
    by_content = False
    while True:
        while left and now_ns() <= deadline_ns:
            for d in dirs:
                if not remaining[d]:
                    continue
                try:
                    listed = os.listdir(os.path.join(dst_root, d))
                except (FileNotFoundError, NotADirectoryError):
                    continue
                for name in remaining[d].intersection(listed):
                    full = os.path.join(dst_root, d, name)
                    if by_content:
                        ok = read_or_none(full) == expected[d][name]
                    else:
                        try:
                            ok = os.stat(full).st_size == len(expected[d][name])
                        except FileNotFoundError:
                            ok = False
                    if ok:
                        remaining[d].discard(name)
                        left -= 1
            clock.tick()
            if not left:
                all_seen_ns = now_ns()
                break
            time.sleep(POLL_SLEEP)
        if left or by_content:
            break
        # untimed: every file's content; the wrong ones are awaited again
        for d in dirs:
            for name, data in expected[d].items():
                if read_or_none(os.path.join(dst_root, d, name)) != data:
                    remaining[d].add(name)
                    left += 1
        if not left:
            break
        rechecked = left
        all_seen_ns = None
        by_content = True

    summary = {
        "files": args.files, "dirs": len(dirs), "bytes": total_bytes,
        "write_s": round((last_ns - first_ns) / 1e9, 4),
        "last_to_all_s": round((all_seen_ns - last_ns) / 1e9, 4) if all_seen_ns else None,
        "first_to_all_s": round((all_seen_ns - first_ns) / 1e9, 4) if all_seen_ns else None,
        "missed": left,
        "missed_paths": sorted(os.path.join(d, n) for d in dirs for n in remaining[d])[:10],
        "content_rechecked": rechecked,
    }
    summary.update(clock.summary())
    print(json.dumps(summary))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("steady")
    b = sub.add_parser("burst")
    for q in (s, b):
        q.add_argument("src")
        q.add_argument("dst")
        q.add_argument("--name", required=True, help="directory made under SRC for this run")
        q.add_argument("--seed", type=int, default=1)
        q.add_argument("--timeout", type=float, default=60.0,
                       help="seconds after the last write to wait for the target")
    s.add_argument("--count", type=int, default=500)
    s.add_argument("--interval-ms", type=float, default=50.0)
    s.add_argument("--dirs", type=int, default=4)
    s.add_argument("--samples", required=True, help="file for one line per write")
    b.add_argument("--files", type=int, default=10000)
    b.add_argument("--dirs", type=int, default=10)
    args = p.parse_args()
    {"steady": cmd_steady, "burst": cmd_burst}[args.cmd](args)


if __name__ == "__main__":
    main()
