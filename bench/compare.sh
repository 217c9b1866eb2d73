#!/usr/bin/env bash
# Compare `snapsync push` with `rsync -a` and `cp -a` on a generated local tree.
#
# Usage: bench/compare.sh            (from anywhere; paths resolve to the repo)
#   Settings (environment variables; each also accepted as --name VALUE):
#     FILES=100000     number of files in the generated tree
#     REPS=3           timed repetitions per tool per scenario
#     SEED=1           seed for tree contents and for the 1% modifications
#     MODIFY_PCT=1     percentage of files changed in scenario 3
#     CACHE=auto       cold: `sync; echo 3 > /proc/sys/vm/drop_caches` before
#                      every timed run; warm: never drop (one untimed warm-up
#                      run per tool first); auto: cold if permitted, else warm
#     WORK=/tmp/snapsync-bench   scratch dir (deleted at the end unless KEEP=1)
#     KEEP=0           1 = keep WORK afterwards
#     OUT=bench/results-local.md markdown report (also printed to stdout)
#     SNAPSYNC=        binary to test; default: `cargo build --release` and
#                      use target/release/snapsync
#
# Scenarios (each tool writes to its own target; tools interleave A B A B):
#   1. initial   copy into a target that does not exist (snapsync, rsync, cp)
#   2. no-change re-sync with nothing changed           (snapsync, rsync)
#   3. modified  re-sync after MODIFY_PCT% of files were rewritten (snapsync,
#                rsync); before each repetition the same source change is
#                made once, while every tool's target is in sync with the
#                source, then each tool syncs its own target.
# After every timed run the target is compared with the source (path, type,
# mode, size, mtime in ns and a content hash of every file; directory mode
# and mtime), ignoring the top-level `.snapsync/`. Any difference aborts the
# benchmark. Times and peak RSS come from `/usr/bin/time -f '%e %M'`.

set -euo pipefail

invocation="$0${*:+ $*}"
explicit_env=""
for v in FILES REPS SEED MODIFY_PCT CACHE WORK KEEP OUT SNAPSYNC; do
    if [[ -n "${!v+x}" ]]; then explicit_env+="$v=${!v} "; fi
done

while [[ $# -gt 0 ]]; do
    case "$1" in
        --files) FILES=$2; shift 2 ;;
        --reps) REPS=$2; shift 2 ;;
        --seed) SEED=$2; shift 2 ;;
        --modify-pct) MODIFY_PCT=$2; shift 2 ;;
        --cache) CACHE=$2; shift 2 ;;
        --work) WORK=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --out) OUT=$2; shift 2 ;;
        --snapsync) SNAPSYNC=$2; shift 2 ;;
        -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "compare.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done

FILES=${FILES:-100000}
REPS=${REPS:-3}
SEED=${SEED:-1}
MODIFY_PCT=${MODIFY_PCT:-1}
CACHE=${CACHE:-auto}
WORK=${WORK:-/tmp/snapsync-bench}
KEEP=${KEEP:-0}

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
GEN="$BENCH_DIR/gen_tree.py"
if [[ -n "${OUT:-}" ]]; then
    case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac
else
    OUT="$BENCH_DIR/results-local.md"
fi

die() { echo "compare.sh: ERROR: $*" >&2; exit 1; }
log() { echo "[$(date +%T)] $*" >&2; }

[[ "$FILES" =~ ^[0-9]+$ && "$FILES" -ge 1 ]] || die "FILES must be a positive integer"
[[ "$REPS" =~ ^[0-9]+$ && "$REPS" -ge 1 ]] || die "REPS must be a positive integer"

# --- tools -------------------------------------------------------------------
apt_updated=0
need_pkg() { # command package
    command -v "$1" >/dev/null 2>&1 && return 0
    log "installing $2"
    if [[ $apt_updated -eq 0 ]]; then apt-get update -qq; apt_updated=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
    command -v "$1" >/dev/null 2>&1 || die "could not install $2"
}
need_pkg rsync rsync
[[ -x /usr/bin/time ]] || need_pkg /usr/bin/time time
command -v python3 >/dev/null || die "python3 is required"

src_state="binary given by SNAPSYNC, not built by this script"
if [[ -z "${SNAPSYNC:-}" ]]; then
    # read-only look at the checkout, so the report says what was measured
    if dirty=$(git -C "$REPO" status --porcelain -- src Cargo.toml Cargo.lock build.rs 2>/dev/null); then
        if [[ -n "$dirty" ]]; then
            src_state="built from HEAD plus $(wc -l <<<"$dirty") uncommitted changed/new path(s) under src/, Cargo.*, build.rs"
        else
            src_state="built from a clean checkout of HEAD"
        fi
    else
        src_state="built from $REPO (not a git checkout)"
    fi
    log "cargo build --release (may wait for the build lock)"
    (cd "$REPO" && cargo build --release --quiet) || die "cargo build failed"
    SNAPSYNC="$REPO/target/release/snapsync"
fi
[[ -x "$SNAPSYNC" ]] || die "snapsync binary not found: $SNAPSYNC"
SNAPSYNC=$(cd "$(dirname "$SNAPSYNC")" && pwd)/$(basename "$SNAPSYNC")

# --- work dir ----------------------------------------------------------------
case "$WORK" in /|/tmp|/tmp/|"") die "refusing WORK=$WORK" ;; esac
if [[ -e "$WORK" ]]; then
    [[ -f "$WORK/.snapsync-bench" || -z "$(ls -A "$WORK")" ]] ||
        die "$WORK exists and was not made by this script; pick another WORK"
    rm -rf "$WORK"
fi
mkdir -p "$WORK/logs"
touch "$WORK/.snapsync-bench"
WORK=$(cd "$WORK" && pwd)
SRC="$WORK/src"
STATE="$WORK/snapsync-state"   # snapsync's source-side state, kept out of SRC
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
ok=0
cleanup() {
    if [[ $ok -eq 1 && "$KEEP" != 1 ]]; then
        rm -rf "$WORK"
    else
        echo "compare.sh: work dir kept: $WORK" >&2
    fi
}
trap cleanup EXIT

# --- page cache ----------------------------------------------------------------
drop_caches() { sync && echo 3 >/proc/sys/vm/drop_caches; }
case "$CACHE" in
    auto) if drop_caches 2>/dev/null; then CACHE=cold; else CACHE=warm; fi ;;
    cold) drop_caches 2>/dev/null || die "CACHE=cold but drop_caches is not permitted here" ;;
    warm) ;;
    *) die "CACHE must be auto, cold or warm" ;;
esac
log "cache mode: $CACHE"

# --- the tools under test ------------------------------------------------------
tool_cmd() { # tool target -> sets the CMD array
    case "$1" in
        snapsync) CMD=("$SNAPSYNC" push --json --state-dir "$STATE" "$SRC" "$2") ;;
        rsync) CMD=(rsync -a "$SRC/" "$2/") ;;
        cp) CMD=(cp -a "$SRC" "$2") ;;
    esac
}
target_of() { echo "$WORK/dst-$1"; }

SRC_MANIFEST="$WORK/src.manifest"
refresh_src_manifest() { python3 "$GEN" manifest "$SRC" >"$SRC_MANIFEST"; }

verify() { # tool target label
    if ! python3 "$GEN" compare "$SRC" "$2" --src-manifest "$SRC_MANIFEST"; then
        echo >&2
        echo "!!!!!!!! $1 ($3): TARGET DIFFERS FROM SOURCE — benchmark aborted !!!!!!!!" >&2
        echo "!!!!!!!! target: $2  (logs: $WORK/logs)" >&2
        exit 1
    fi
}

# run_one scenario tool rep timed(0/1)
run_one() {
    local scenario=$1 tool=$2 rep=$3 timed=$4
    local target label logf tf line secs rss
    target=$(target_of "$tool")
    label="$scenario rep $rep"
    [[ $timed -eq 1 ]] || label="$scenario warm-up"
    if [[ $scenario == initial ]]; then
        rm -rf "$target"
        [[ $tool == snapsync ]] && rm -rf "$STATE"
    fi
    tool_cmd "$tool" "$target"
    logf="$WORK/logs/$scenario-$tool-$rep.log"
    [[ $timed -eq 1 ]] || logf="$WORK/logs/$scenario-$tool-warmup.log"
    tf="$WORK/time.out"
    if [[ $CACHE == cold ]]; then drop_caches; fi
    if ! /usr/bin/time -f '%e %M' -o "$tf" -- "${CMD[@]}" >"$logf" 2>&1; then
        cat "$logf" >&2
        die "$tool failed ($label): ${CMD[*]}"
    fi
    line=$(tail -n 1 "$tf")
    read -r secs rss <<<"$line"
    verify "$tool" "$target" "$label"
    if [[ $timed -eq 1 ]]; then
        printf '%s\t%s\t%s\t%s\t%s\n' "$scenario" "$tool" "$rep" "$secs" "$rss" >>"$RESULTS"
        log "$label  $tool: ${secs}s, peak RSS ${rss} KiB — target verified"
        if [[ $tool == snapsync ]]; then
            printf '%s\t%s\t%s\n' "$scenario" "$rep" "$(tail -n 1 "$logf")" >>"$WORK/snapsync-json.tsv"
        fi
    else
        log "$label  $tool: ${secs}s (untimed) — target verified"
    fi
}

# --- go ------------------------------------------------------------------------
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
log "generating $FILES files (seed $SEED) in $SRC"
gen_out=$(python3 "$GEN" gen "$SRC" --files "$FILES" --seed "$SEED")
log "$gen_out"
refresh_src_manifest
tree_files=$(grep -c '^f ' "$SRC_MANIFEST" || true)
tree_dirs=$(grep -c '^d ' "$SRC_MANIFEST" || true)
tree_bytes=$(awk '$1=="f"{s+=$4} END{printf "%d", s}' "$SRC_MANIFEST")
: >"$WORK/snapsync-json.tsv"

if [[ $CACHE == warm ]]; then
    # Untimed warm-up into each tool's own target; the verification after
    # every run reads all of source and target, so later runs start warm too.
    for tool in snapsync rsync cp; do run_one initial "$tool" 0 0; done
fi

log "scenario 1: initial copy"
for ((r = 1; r <= REPS; r++)); do
    for tool in snapsync rsync cp; do run_one initial "$tool" "$r" 1; done
done

log "scenario 2: re-sync, nothing changed"
for ((r = 1; r <= REPS; r++)); do
    for tool in snapsync rsync; do run_one no-change "$tool" "$r" 1; done
done

log "scenario 3: re-sync after modifying ${MODIFY_PCT}% of files"
modified_count=""
for ((r = 1; r <= REPS; r++)); do
    # every target is in sync with SRC here (verified after its last run)
    mod_out=$(python3 "$GEN" modify "$SRC" --files "$FILES" \
        --percent "$MODIFY_PCT" --seed "$((SEED * 1000 + r))")
    modified_count=${mod_out//[!0-9]/}
    refresh_src_manifest
    log "rep $r: $mod_out"
    for tool in snapsync rsync; do run_one modified "$tool" "$r" 1; done
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report ----------------------------------------------------------------------
mem_total=$(awk '/^MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)
cpu_model=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)
fs_desc=$(findmnt -no SOURCE,FSTYPE,OPTIONS -T "$WORK" 2>/dev/null || df -T "$WORK" | tail -n 1)
if [[ $CACHE == cold ]]; then
    cache_desc="cold: \`sync; echo 3 > /proc/sys/vm/drop_caches\` (untimed) before every timed run. No tool fsyncs, so the writeback of what a run wrote is not in its time for any tool."
else
    cache_desc="warm: page cache never dropped (dropping was not permitted, or CACHE=warm). One untimed warm-up run per tool before scenario 1; after every run the verification reads all of source and target, so every timed run starts with a warm cache."
fi

{
    echo "# snapsync vs rsync vs cp — local tree benchmark"
    echo
    echo "- Command: \`${explicit_env}${invocation}\`"
    echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- Machine: $(nproc) CPUs ($cpu_model), $mem_total RAM, kernel $(uname -r)"
    echo "- Filesystem of WORK ($WORK): $fs_desc"
    echo "- Load average (1/5/15 min) at start: $load_start; at end: $load_end"
    echo "- Versions: snapsync $("$SNAPSYNC" --version | sed 's/^snapsync //'); $(rsync --version | sed -n '1{s/  */ /g;p}'); $(cp --version | sed -n 1p)"
    echo "- snapsync binary: $SNAPSYNC — $src_state"
    echo "- Tree: $tree_files files in $tree_dirs directories, $tree_bytes bytes (seed $SEED; sizes uniform 100 B–16 KiB, pseudo-random content)"
    echo "- Page cache: $cache_desc"
    echo "- Repetitions: $REPS per tool per scenario, tools interleaved (snapsync, rsync, cp, snapsync, ...)."
    echo "- Commands timed (each tool writes its own target; \`/usr/bin/time -f '%e %M'\`):"
    echo "  - snapsync: \`snapsync push --json --state-dir STATE SRC DST\` (STATE outside SRC so the other tools do not copy it; DST/.snapsync is snapsync's target-side state)"
    echo "  - rsync: \`rsync -a SRC/ DST/\`"
    echo "  - cp: \`cp -a SRC DST\` (scenario 1 only; DST does not exist)"
    echo "- Scenario 1: target does not exist. Scenario 2: nothing changed since the previous sync. Scenario 3: before each repetition ${modified_count:-?} files (${MODIFY_PCT}%) are rewritten once (half in place with the same size, half with new content and size), then each tool syncs its own, previously in-sync target."
    echo "- Every run was verified: target == source by path, type, mode, size, mtime (ns) and content hash of each file and mode/mtime of each directory, ignoring \`.snapsync/\`."
    echo
    python3 - "$RESULTS" "$WORK/snapsync-json.tsv" <<'PY'
import json, statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines() if l]
data = {}
for scen, tool, rep, secs, rss in rows:
    data.setdefault((scen, tool), []).append((float(secs), int(rss)))
names = {"initial": "1. initial copy", "no-change": "2. re-sync, no change",
         "modified": "3. re-sync, files modified"}
def med(key):
    v = data.get(key)
    return statistics.median(s for s, _ in v) if v else None
def ratio(a, b):
    if a is None or b is None:
        return "–"
    if b == 0:
        return "n/a (0.00 s)"
    return f"{a / b:.2f}×"
print("| Scenario | Tool | Median wall (s) | Min–max (s) | Median peak RSS (MiB) | snapsync ÷ tool |")
print("|---|---|---:|---:|---:|---:|")
for scen in ["initial", "no-change", "modified"]:
    for tool in ["snapsync", "rsync", "cp"]:
        v = data.get((scen, tool))
        if not v:
            continue
        secs = [s for s, _ in v]
        rss = statistics.median(r for _, r in v) / 1024
        r = "1.00×" if tool == "snapsync" else ratio(med((scen, "snapsync")), med((scen, tool)))
        print(f"| {names[scen]} | {tool} | {statistics.median(secs):.2f} | "
              f"{min(secs):.2f}–{max(secs):.2f} | {rss:.1f} | {r} |")
print()
print("| Scenario | snapsync / rsync | snapsync / cp |")
print("|---|---:|---:|")
for scen in ["initial", "no-change", "modified"]:
    print(f"| {names[scen]} | {ratio(med((scen, 'snapsync')), med((scen, 'rsync')))} | "
          f"{ratio(med((scen, 'snapsync')), med((scen, 'cp')))} |")
print()
print("Ratios are of medians; below 1 means snapsync was faster. Wall time has")
print("0.01 s resolution, so ratios of sub-0.1 s times mean little.")
print()
print("snapsync `--json` summaries (last repetition of each scenario):")
print()
last = {}
for l in open(sys.argv[2]).read().splitlines():
    scen, rep, js = l.split("\t", 2)
    last[scen] = js
for scen in ["initial", "no-change", "modified"]:
    js = last.get(scen, "")
    try:
        d = json.loads(js)
        keys = ["created", "updated", "deleted", "renamed", "copied",
                "bytes_sent", "files_scanned", "seconds"]
        js = ", ".join(f"{k}={d.get(k)}" for k in keys)
    except ValueError:
        js = "(not JSON) " + js
    print(f"- {names[scen]}: {js}")
PY
} >"$WORK/report.md"

mkdir -p "$(dirname "$OUT")"
cp "$WORK/report.md" "$OUT"
cat "$OUT"
log "report written to $OUT"
ok=1
