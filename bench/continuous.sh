#!/usr/bin/env bash
# Continuous mode (`snapsync push -C`): how soon a write in the source is
# visible in the target, and how soon a burst of new files has all arrived;
# local (two directories) and over ssh (a loopback sshd this script starts),
# beside lsyncd (`delay = 0`, rsync as its transport) locally.
#
# Usage: bench/continuous.sh         (from anywhere; paths resolve to the repo)
#   Settings (environment variables; each also accepted as --name VALUE):
#     FILES=100000     files in the generated tree the tools watch (as in
#                      the other families; each tool's first pass is not timed)
#     COUNT=500        writes per run of scenario A
#     INTERVAL=50      ms between two writes of scenario A
#     DIRS=4           directories scenario A writes into
#     BURST=10000      new files per run of scenario B
#     BURST_DIRS=10    new directories they are spread over
#     REPS=3           runs per tool per scenario, tools interleaved
#     SEED=1           seed for the tree and for every write
#     TRANSPORTS="local ssh"  which of the two to run
#     LSYNCD=1         1 = run lsyncd beside snapsync locally (installed with
#                      apt-get when missing); 0 = snapsync alone
#     COOLOFF=         snapsync's --cooloff in ms; empty = its default (10)
#     TIMEOUT=60       seconds after the last write to wait for the target
#                      before the run counts the writes not seen as missed
#     WORK=/tmp/snapsync-bench-continuous   scratch dir (deleted at the end
#                      unless KEEP=1)
#     KEEP=0           1 = keep WORK afterwards
#     OUT=bench/results-continuous.md  markdown report (also printed)
#     SNAPSYNC=        binary to test (both ends); default: `cargo build
#                      --release` and use target/release/snapsync
#
# Installs rsync, time, lsyncd (LSYNCD=1), openssh-server and -client (ssh)
# with apt-get when missing, and starts its own sshd (keys made by
# ssh-keygen in WORK, free loopback port, killed on exit).
#
# Every run starts the tool on the one source tree and its own target, waits
# for its first pass (snapsync: its first `--json` line; lsyncd: "Startup
# ... finished" in its log), lets bench/continuous_probe.py write and watch,
# waits 0.5 s, sends SIGINT, requires snapsync to exit 0 within 60 s,
# compares the target with the source, and deletes what the run wrote from
# the source, so that every run watches the same tree (snapsync's cycles
# cost more as the tree grows). The tools run one at a time; a tool's first
# pass carries what changed since its last run.
#   snapsync, local: snapsync push -C --json --state-dir STATE SRC DST
#   snapsync, ssh:   the same with --rsh "<ssh command>" --remote-command
#                    SNAPSYNC and USER@127.0.0.1:DST, as bench/ssh.sh drives
#                    push (the far end watches DST and streams its changes)
#   lsyncd, local:   lsyncd CONFIG, a config written into WORK: nodaemon,
#                    sync { default.rsync, delay = 0, rsync = { archive =
#                    true } } from SRC to DST (it deletes, as push does)
#
# Scenarios:
#   A. latency   COUNT writes, one every INTERVAL ms on a fixed schedule,
#                each creating a small file (100 B-4 KiB) in one of DIRS
#                directories made for the run, or rewriting in place one it
#                made at least 1 s before, unique content each time; per
#                write, written (close returned) -> visible (the target
#                holds the new bytes): p50, p90, p99, max over all runs' writes
#   B. burst     BURST new files (100 B-4 KiB) written as fast as one process
#                can, spread over BURST_DIRS new directories; last write ->
#                all present with the right content in the target
# The seed fixes what is written, so each tool gets the same schedule (its
# own file names and content, so no tool can copy a file it already holds).
# The watcher polls the target with a 1 ms sleep between sweeps, so a time is
# late by at most one sweep; the report gives the mean sweep period. The
# writer, the watcher and the tool share the machine's CPUs.
#
# After every run the target is compared with the source (path, type, mode,
# size, mtime in ns and a content hash of every file; directory mode and
# mtime), ignoring the top-level `.snapsync/`. A write never seen, a
# difference, a conflict or an error in snapsync's `--json`, or another exit
# status than 0 after SIGINT aborts the benchmark (WORK is kept). The one
# error that does not: a file still being written when a cycle copied it
# ("changed while it was being copied"), which the next cycle syncs, as
# designed; the report counts them.

set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$BENCH_DIR/lib.sh"
PROBE="$BENCH_DIR/continuous_probe.py"

SETTINGS=(FILES COUNT INTERVAL DIRS BURST BURST_DIRS REPS SEED TRANSPORTS LSYNCD COOLOFF
    TIMEOUT WORK KEEP OUT SNAPSYNC)
parse_settings "$@"
FILES=${FILES:-100000}
COUNT=${COUNT:-500}
INTERVAL=${INTERVAL:-50}
DIRS=${DIRS:-4}
BURST=${BURST:-10000}
BURST_DIRS=${BURST_DIRS:-10}
REPS=${REPS:-3}
SEED=${SEED:-1}
TRANSPORTS=${TRANSPORTS:-local ssh}
LSYNCD=${LSYNCD:-1}
COOLOFF=${COOLOFF:-}
TIMEOUT=${TIMEOUT:-60}
WORK=${WORK:-/tmp/snapsync-bench-continuous}
KEEP=${KEEP:-0}
resolve_out "$BENCH_DIR/results-continuous.md"
need_positive_int FILES COUNT INTERVAL DIRS BURST BURST_DIRS REPS TIMEOUT
for t in $TRANSPORTS; do
    [[ $t == local || $t == ssh ]] || die "TRANSPORTS may hold only local and ssh, not $t"
done
[[ -n "$TRANSPORTS" ]] || die "TRANSPORTS is empty"
[[ -z "$COOLOFF" || "$COOLOFF" =~ ^[0-9]+$ ]] || die "COOLOFF must be a number of ms, or empty"
[[ $LSYNCD == 0 || $LSYNCD == 1 ]] || die "LSYNCD must be 0 or 1"
[[ " $TRANSPORTS " == *" local "* ]] || LSYNCD=0   # lsyncd runs only locally

need_common_tools
if [[ " $TRANSPORTS " == *" ssh "* ]]; then need_ssh_tools; fi
if [[ $LSYNCD == 1 ]]; then need_pkg lsyncd lsyncd; fi

select_snapsync
[[ "$SNAPSYNC" != *[[:space:]]* ]] || die "the snapsync path may not contain white space: $SNAPSYNC"

prepare_work
# paths travel inside remote shell command lines and lsyncd's config, unquoted
[[ "$WORK" != *[[:space:]\"\\]* ]] || die "WORK may not contain white space, quotes or backslashes: $WORK"
SRC="$WORK/src"
STEADY="$WORK/steady.tsv"   # transport, tool, rep, the probe's JSON summary, cycle stats
BURSTS="$WORK/burst.tsv"    # transport, tool, rep, the probe's JSON summary, cycle stats
mkdir -p "$WORK/samples"
: >"$STEADY"
: >"$BURSTS"

TOOL_PID=""      # the tool running now, if any
on_exit() {
    if [[ -n "$TOOL_PID" ]]; then
        kill -INT "$TOOL_PID" 2>/dev/null || true
        sleep 1
        kill -KILL "$TOOL_PID" 2>/dev/null || true
        wait "$TOOL_PID" 2>/dev/null || true
    fi
    cleanup_work
}
trap on_exit EXIT

if [[ " $TRANSPORTS " == *" ssh "* ]]; then
    start_sshd "$WORK/ssh"
    measure_ssh
fi

# --- the tools under test ------------------------------------------------------
TRANSPORT=""     # local or ssh: the phase running now

target_of() { echo "$WORK/dst-$TRANSPORT-$1"; } # tool

# Write lsyncd's config for one run (its log goes to $1.lsyncd.log).
lsyncd_config() { # base -> prints the config's path
    cat >"$1.lua" <<EOF
settings {
    nodaemon = true,
    logfile = "$1.lsyncd.log",
    statusFile = "$1.lsyncd.status",
    statusInterval = 3600,
}
sync {
    default.rsync,
    source = "$SRC",
    target = "$(target_of lsyncd)",
    delay = 0,
    rsync = { archive = true },
}
EOF
    echo "$1.lua"
}

tool_cmd() { # tool base -> sets the CMD array
    local cooloff=()
    if [[ -n "$COOLOFF" ]]; then cooloff=(--cooloff "$COOLOFF"); fi
    case "$1/$TRANSPORT" in
        snapsync/local) CMD=("$SNAPSYNC" push -C --json "${cooloff[@]}"
            --state-dir "$WORK/state-local" "$SRC" "$(target_of snapsync)") ;;
        snapsync/ssh) CMD=("$SNAPSYNC" push -C --json "${cooloff[@]}"
            --state-dir "$WORK/state-ssh" --rsh "$RSH" --remote-command "$SNAPSYNC"
            "$SRC" "$USERHOST:$(target_of snapsync)") ;;
        lsyncd/local) CMD=(lsyncd "$(lsyncd_config "$2")") ;;
        *) die "no $1 over $TRANSPORT" ;;
    esac
}

# Succeed once the tool's first pass is over.
first_pass_done() { # tool base
    case "$1" in
        snapsync) [[ -f "$2.out" && $(wc -l <"$2.out") -ge 1 ]] ;;
        lsyncd) grep -q 'Startup of .* finished' "$2.lsyncd.log" 2>/dev/null ;;
    esac
}

# Start a tool in the background and wait for its first pass (sets TOOL_PID).
start_tool() { # tool base
    local started
    tool_cmd "$1" "$2"
    printf '%q ' "${CMD[@]}" >"$2.cmd"
    started=$(date +%s.%N)
    "${CMD[@]}" >"$2.out" 2>"$2.err" </dev/null &
    TOOL_PID=$!
    until first_pass_done "$1" "$2"; do
        if ! kill -0 "$TOOL_PID" 2>/dev/null; then
            wait "$TOOL_PID" || true
            TOOL_PID=""
            tail -n 20 "$2.out" "$2.err" >&2
            die "$1 ($TRANSPORT) ended before its first pass was over: ${CMD[*]}"
        fi
        sleep 0.01
    done
    log "$1 ($TRANSPORT, pid $TOOL_PID): first pass over after $(awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN {printf "%.2f", e - s}') s"
}

# SIGINT the running tool, wait at most 60 s for it; snapsync must exit 0.
stop_tool() { # tool base
    local rc=0 i
    kill -INT "$TOOL_PID"
    for ((i = 0; i < 600; i++)); do
        kill -0 "$TOOL_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$TOOL_PID" 2>/dev/null; then
        die "$1 ($TRANSPORT, pid $TOOL_PID) still runs 60 s after SIGINT (now killed; logs: $2.*)"
    fi
    wait "$TOOL_PID" || rc=$?
    TOOL_PID=""
    echo "$rc" >"$2.rc"
    if [[ $1 == snapsync && $rc -ne 0 ]]; then
        tail -n 20 "$2.err" >&2
        die "snapsync ($TRANSPORT) exited $rc after SIGINT, not 0 (logs: $2.*)"
    fi
}

# Print, as JSON, what snapsync's --json lines after the first pass say:
# cycles, files created and updated, the median and longest cycle (its own
# `seconds`), and copies retried: a file still being written when a cycle
# copied it fails that cycle ("changed while it was being copied") and is
# synced by the next, as designed, so such errors are counted, not fatal.
# Fail on any other error, on a conflict, or on errors stderr does not
# explain that way.
cycle_stats() { # stdout-file stderr-file
    python3 - "$1" "$2" <<'PY'
import json, re, statistics, sys
lines = [l for l in open(sys.argv[1]).read().splitlines() if l.strip()]
try:
    runs = [json.loads(l) for l in lines]
except ValueError as e:
    sys.exit(f"snapsync printed a line that is not JSON: {e}")
said = open(sys.argv[2]).read().splitlines()
errors = [l for l in said if re.match(r"snapsync: error: ", l)]
retried = [l for l in errors if l.endswith("changed while it was being copied; it will be synced on the next run")]
conflicts = sum(r.get("conflicts") or 0 for r in runs)
counted = sum(r.get("errors") or 0 for r in runs)
if conflicts or len(retried) != len(errors) or counted != len(retried):
    sys.exit(f"snapsync reported {counted} errors and {conflicts} conflicts in --json; "
             f"stderr has {len(errors)} error lines, {len(retried)} of them a file changed while copied: "
             + " | ".join(errors[:3]))
cycles = runs[1:]
print(json.dumps({
    "first_pass_s": runs[0]["seconds"] if runs else None,
    "cycles": len(cycles),
    "created": sum(r["created"] for r in cycles),
    "updated": sum(r["updated"] for r in cycles),
    "longest_cycle_s": max((r["seconds"] for r in cycles), default=None),
    "median_cycle_s": statistics.median(r["seconds"] for r in cycles) if cycles else None,
    "retried": len(retried),
}))
PY
}

# Abort, loudly, if the probe saw a write never arrive.
check_missed() { # tool label probe-json base
    local missed
    missed=$(python3 -c 'import json, sys; d = json.loads(sys.argv[1]); print(d["missed"], *d["missed_paths"])' "$3")
    if [[ ${missed%% *} != 0 ]]; then
        echo >&2
        echo "!!!!!!!! $1 ($2): $missed — NEVER VISIBLE in the target within $TIMEOUT s — benchmark aborted !!!!!!!!" >&2
        echo "!!!!!!!! target: $(target_of "$1")  (logs: $4.*)" >&2
        exit 1
    fi
}

# One run of either scenario: start the tool, let the probe write and watch,
# stop the tool, verify (rows go to STEADY or BURSTS).
run_one() { # scenario(steady|burst) tool rep
    local scenario=$1 tool=$2 rep=$3
    local label="$TRANSPORT $scenario rep $rep" name="$scenario-$TRANSPORT-$tool-$rep"
    local base="$WORK/logs/$name" dst probe stats="{}" loose=()
    dst=$(target_of "$tool")
    start_tool "$tool" "$base"
    if [[ $scenario == steady ]]; then
        probe=$(python3 "$PROBE" steady "$SRC" "$dst" --name "$name" --count "$COUNT" \
            --interval-ms "$INTERVAL" --dirs "$DIRS" --seed "$((SEED * 1000 + 100 + rep))" \
            --timeout "$TIMEOUT" --samples "$WORK/samples/$TRANSPORT-$tool-$rep.tsv")
    else
        probe=$(python3 "$PROBE" burst "$SRC" "$dst" --name "$name" --files "$BURST" \
            --dirs "$BURST_DIRS" --seed "$((SEED * 1000 + 200 + rep))" --timeout "$TIMEOUT")
    fi
    echo "$probe" >"$base.probe.json"
    sleep 0.5
    stop_tool "$tool" "$base"
    check_missed "$tool" "$label" "$probe" "$base"
    if [[ $tool == snapsync ]]; then
        stats=$(cycle_stats "$base.out" "$base.err") || die "snapsync ($label): see $base.out and $base.err"
    fi
    if [[ $tool == lsyncd ]]; then loose=(--no-dir-times); fi
    if ! python3 "$GEN" compare "$SRC" "$dst" "${loose[@]}"; then
        echo >&2
        echo "!!!!!!!! $tool ($label): TARGET DIFFERS FROM SOURCE — benchmark aborted !!!!!!!!" >&2
        echo "!!!!!!!! target: $dst  (logs: $base.*)" >&2
        exit 1
    fi
    rm -rf "${SRC:?}/$name"
    if [[ $scenario == steady ]]; then
        printf '%s\t%s\t%s\t%s\t%s\n' "$TRANSPORT" "$tool" "$rep" "$probe" "$stats" >>"$STEADY"
        log "$label  $tool: $(python3 -c 'import json, sys; d = json.loads(sys.argv[1]); print("p50 %.1f, p90 %.1f, p99 %.1f, max %.1f ms over %d writes (sweep %.2f ms)" % (d["p50_ms"], d["p90_ms"], d["p99_ms"], d["max_ms"], d["visible"], d["sweep_mean_ms"]))' "$probe") — target verified"
    else
        printf '%s\t%s\t%s\t%s\t%s\n' "$TRANSPORT" "$tool" "$rep" "$probe" "$stats" >>"$BURSTS"
        log "$label  $tool: $(python3 -c 'import json, sys; d = json.loads(sys.argv[1]); print("%d files written in %.2f s, all visible %.3f s after the last" % (d["files"], d["write_s"], d["last_to_all_s"]))' "$probe") — target verified"
    fi
}

# --- go ------------------------------------------------------------------------
load_start=$(loadavg)
generate_tree "$SRC" "$WORK/src.manifest"

for TRANSPORT in $TRANSPORTS; do
    tools="snapsync"
    if [[ $TRANSPORT == local && $LSYNCD == 1 ]]; then tools="snapsync lsyncd"; fi
    log "=== $TRANSPORT: scenario A, $COUNT writes every $INTERVAL ms"
    for ((r = 1; r <= REPS; r++)); do
        for tool in $tools; do run_one steady "$tool" "$r"; done
    done
    log "=== $TRANSPORT: scenario B, a burst of $BURST new files"
    for ((r = 1; r <= REPS; r++)); do
        for tool in $tools; do run_one burst "$tool" "$r"; done
    done
done
load_end=$(loadavg)

# --- report ----------------------------------------------------------------------
versions="snapsync $(snapsync_version); $(rsync --version | version_line)"
if [[ $LSYNCD == 1 ]]; then versions+="; lsyncd $(lsyncd --version | sed -n 's/^Version: //p')"; fi
if [[ " $TRANSPORTS " == *" ssh "* ]]; then versions+="; $(ssh -V 2>&1)"; fi
cooloff_desc="snapsync's default, 10 ms"
if [[ -n "$COOLOFF" ]]; then cooloff_desc="$COOLOFF ms"; fi
# what snapsync said on stderr over all runs, the commonest lines first
said=$(cat "$WORK"/logs/*-snapsync-*.err 2>/dev/null | sort | uniq -c | sort -rn | head -n 10)

{
    echo "# snapsync -C — continuous-mode latency and burst"
    echo
    report_run_lines "$load_start" "$load_end" "; the writer, the watcher, the tool (and over ssh both its ends and sshd) share its CPUs"
    echo "- Versions: $versions"
    echo "- snapsync binary (both ends): $SNAPSYNC — $SNAPSYNC_ORIGIN"
    echo "- Watched tree: $(tree_desc); every run starts on it: what a run wrote is deleted from the source once the run is verified, and a tool's first pass (untimed) carries what changed since its previous run (the first one copies the whole tree)."
    if [[ " $TRANSPORTS " == *" ssh "* ]]; then
        echo "- Transport (ssh runs): $(ssh_transport_desc)"
    fi
    echo "- Commands (each tool syncs the one source into its own target, one tool at a time):"
    echo "  - snapsync, local: \`snapsync push -C --json${COOLOFF:+ --cooloff $COOLOFF} --state-dir STATE SRC DST\`; over ssh: \`snapsync push -C --json${COOLOFF:+ --cooloff $COOLOFF} --state-dir STATE --rsh '<ssh command>' --remote-command $SNAPSYNC SRC $(id -un)@127.0.0.1:DST\` (the far end runs \`snapsync serve\` and watches DST). Cooloff: $cooloff_desc."
    if [[ $LSYNCD == 1 ]]; then
        echo "  - lsyncd, local: \`lsyncd CONFIG\` with \`settings { nodaemon = true }\` and \`sync { default.rsync, source = SRC, target = DST, delay = 0, rsync = { archive = true } }\` (rsync -a with --delete, one rsync at a time with the list of changed paths)."
    fi
    echo "- A run: start the tool; wait for its first pass (snapsync: its first \`--json\` line; lsyncd: \"Startup of ... finished\" in its log); the probe (\`bench/continuous_probe.py\`) writes and watches; 0.5 s later SIGINT; snapsync must exit 0 (exit status on SIGINT: $(cat "$WORK"/logs/*-snapsync-*.rc | sort -u | tr '\n' ' ' | sed 's/ $//')$(if [[ $LSYNCD == 1 ]]; then echo "; lsyncd's: $(cat "$WORK"/logs/*-lsyncd-*.rc | sort -u | tr '\n' ' ' | sed 's/ $//')"; fi)); then the target is compared with the source."
    echo "- Scenario A (latency): $COUNT writes per run, one every $INTERVAL ms on a fixed schedule, into $DIRS directories made for the run (the probe waits until the target has them, then 0.5 s more); each write creates a file of 100 B–4 KiB or rewrites in place one the run wrote at least 1 s before (about half each; the choice comes from the seed, the same for every tool), with unique content. Latency = the time the watcher first saw the new bytes in the target − the time the writer's \`close\` returned. Percentiles are nearest-rank over the writes of all runs ($REPS per tool and transport)."
    echo "- Scenario B (burst): $BURST new files of 100 B–4 KiB in $BURST_DIRS new directories, written by one process as fast as it can; the time from its last \`close\` to the sweep in which the watcher had found every file with its content in the target; $REPS run(s) per tool and transport, each in fresh directories."
    echo "- Watching the target: a Python loop with a 1 ms sleep between sweeps. Scenario A stats each awaited path and reads it only when its inode, size or mtime changed; scenario B lists the new directories and reads each expected file once it is listed. A time is thus late by at most one sweep (mean sweep periods below). The writer, the watcher and the tool all run on this 2-CPU machine."
    if [[ $LSYNCD == 1 ]]; then
        echo "- Every run was verified: target == source by path, type, mode, size, mtime (ns) and content hash of each file, and mode/mtime of each directory, ignoring \`.snapsync/\`; for lsyncd directory mtimes are not compared (rsync sets a directory's mtime only when that directory is in the list it is given)."
    else
        verified_line
    fi
    echo
    python3 - "$STEADY" "$BURSTS" "$WORK/samples" "$REPS" <<'PY'
import json, math, os, statistics, sys
steady_path, burst_path, samples_dir, reps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

def rows(path):
    out = []
    for l in open(path).read().splitlines():
        transport, tool, rep, probe, stats = l.split("\t")
        out.append((transport, tool, int(rep), json.loads(probe), json.loads(stats)))
    return out

def percentile(values, p):
    values = sorted(values)
    return values[max(1, math.ceil(p / 100 * len(values))) - 1]

steady, burst = rows(steady_path), rows(burst_path)
pairs = []
for transport, tool, *_ in steady + burst:
    if (transport, tool) not in pairs:
        pairs.append((transport, tool))
LAT_TARGET = {"local": "p50 ≤ 15, p99 ≤ 100", "ssh": "p50 ≤ 30"}

print("## A. Write → visible latency")
print()
print("| Transport | Tool | Writes seen | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) | p50 of each run, min–max (ms) | p99 of each run, min–max (ms) | snapsync cycle, median (ms) | Mean sweep (ms) | Target (DESIGN.md, ms) |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
pooled = {}
for transport, tool in pairs:
    runs = [r for r in steady if r[0] == transport and r[1] == tool]
    if not runs:
        continue
    lat = []
    for _, _, rep, _, _ in runs:
        with open(os.path.join(samples_dir, f"{transport}-{tool}-{rep}.tsv")) as f:
            lat += [float(l.split("\t")[5]) for l in f if l.split("\t")[6].strip() == "visible"]
    pooled[(transport, tool)] = lat
    p50s = [r[3]["p50_ms"] for r in runs]
    p99s = [r[3]["p99_ms"] for r in runs]
    writes = sum(r[3]["writes"] for r in runs)
    superseded = sum(r[3]["superseded"] for r in runs)
    seen = f"{len(lat):,} of {writes:,}" + (f" ({superseded} superseded)" if superseded else "")
    sweep = statistics.fmean(r[3]["sweep_mean_ms"] for r in runs)
    target = LAT_TARGET[transport] if tool == "snapsync" else ""
    cycle = ""
    if tool == "snapsync":
        cycle = f"{statistics.median(r[4]['median_cycle_s'] for r in runs) * 1000:.1f}"
    print(f"| {transport} | {tool} | {seen} | {percentile(lat, 50):.1f} | {percentile(lat, 90):.1f} | "
          f"{percentile(lat, 99):.1f} | {max(lat):.1f} | {min(p50s):.1f}–{max(p50s):.1f} | "
          f"{min(p99s):.1f}–{max(p99s):.1f} | {cycle} | {sweep:.2f} | {target} |")
print()
lag = max(r[3]["writer_worst_lag_ms"] for r in steady)
print(f"The writer kept its schedule to within {lag:.1f} ms (worst lag of a write behind its due time).")
snap_steady = [r for r in steady if r[1] == "snapsync"]
if snap_steady:
    print("snapsync ran " + ", ".join(
        f"{t}: {sum(r[4]['cycles'] for r in snap_steady if r[0] == t):,} cycles for "
        f"{sum(r[3]['writes'] for r in snap_steady if r[0] == t):,} writes"
        for t in dict.fromkeys(r[0] for r in snap_steady)) + " (its `--json` lines after the first pass; "
        "a cycle's time is the `seconds` it reports, the median of each run's median); "
        f"{sum(r[4]['retried'] for r in snap_steady)} copies were retried (a file still being written when a cycle copied it).")
print()

print("## B. Burst of new files: last write → all visible")
print()
print("| Transport | Tool | Files | Median (s) | Min–max (s) | Writing them took, median (s) | First write → all visible, median (s) | snapsync cycles per run | Longest cycle, median (s) | Copies retried, all runs | Mean sweep (ms) | Target (DESIGN.md) |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
for transport, tool in pairs:
    runs = [r for r in burst if r[0] == transport and r[1] == tool]
    if not runs:
        continue
    last = [r[3]["last_to_all_s"] for r in runs]
    cycles = longest = retried = ""
    if tool == "snapsync":
        retried = f"{sum(r[4]['retried'] for r in runs)}"
        c = [r[4]["cycles"] for r in runs]
        cycles = f"{min(c)}–{max(c)}" if min(c) != max(c) else f"{c[0]}"
        longest = f"{statistics.median(r[4]['longest_cycle_s'] for r in runs):.2f}"
    target = "≤ 0.5 s" if tool == "snapsync" and transport == "local" else ""
    print(f"| {transport} | {tool} | {runs[0][3]['files']:,} | {statistics.median(last):.2f} | "
          f"{min(last):.2f}–{max(last):.2f} | {statistics.median(r[3]['write_s'] for r in runs):.2f} | "
          f"{statistics.median(r[3]['first_to_all_s'] for r in runs):.2f} | {cycles} | {longest} | {retried} | "
          f"{statistics.fmean(r[3]['sweep_mean_ms'] for r in runs):.1f} | {target} |")
print()

def fmt_lat(key, p):
    lat = pooled.get(key)
    return f"{percentile(lat, p):.0f} ms" if lat else "not run"
def fmt_burst(key):
    runs = [r for r in burst if (r[0], r[1]) == key]
    return f"{statistics.median(r[3]['last_to_all_s'] for r in runs):.2f} s" if runs else "not run"
lsyncd_here = ("local", "lsyncd") in pairs
print("## Beside the targets and other tools")
print()
print("| Figure | DESIGN.md target | snapsync, local | snapsync, ssh | lsyncd, measured here | lsyncd, quoted in DESIGN.md | Syncthing, quoted in DESIGN.md |")
print("|---|---|---:|---:|---:|---:|---:|")
print(f"| latency p50 | local ≤ 15 ms; ssh ≤ 30 ms | {fmt_lat(('local', 'snapsync'), 50)} | {fmt_lat(('ssh', 'snapsync'), 50)} | {fmt_lat(('local', 'lsyncd'), 50)} | 10 ms | ≥ 1 s |")
print(f"| latency p99 | local ≤ 100 ms | {fmt_lat(('local', 'snapsync'), 99)} | {fmt_lat(('ssh', 'snapsync'), 99)} | {fmt_lat(('local', 'lsyncd'), 99)} | 14 ms | — |")
print(f"| burst: last write → all visible (median) | ≤ 0.5 s | {fmt_burst(('local', 'snapsync'))} | {fmt_burst(('ssh', 'snapsync'))} | {fmt_burst(('local', 'lsyncd'))} | ~1 s | ~9 s |")
print()
print("Syncthing is not run here" + ("" if lsyncd_here else ", nor lsyncd") +
      ": its figures (and lsyncd's in the quoted column) are DESIGN.md's, measured elsewhere and quoted, not measured in this run.")
print()
PY
    if [[ -n "$said" ]]; then
        echo "What snapsync printed on stderr in these runs (count, line; at most 10 distinct lines):"
        echo
        echo '```'
        echo "$said"
        echo '```'
    else
        echo "snapsync printed nothing on stderr in these runs."
    fi
} >"$WORK/report.md"

publish_report
ok=1
