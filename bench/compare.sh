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

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$BENCH_DIR/lib.sh"

SETTINGS=(FILES REPS SEED MODIFY_PCT CACHE WORK KEEP OUT SNAPSYNC)
parse_settings "$@"
FILES=${FILES:-100000}
REPS=${REPS:-3}
SEED=${SEED:-1}
MODIFY_PCT=${MODIFY_PCT:-1}
CACHE=${CACHE:-auto}
WORK=${WORK:-/tmp/snapsync-bench}
KEEP=${KEEP:-0}
resolve_out "$BENCH_DIR/results-local.md"
need_positive_int FILES REPS

need_common_tools
select_snapsync

prepare_work
trap cleanup_work EXIT
SRC="$WORK/src"
STATE="$WORK/snapsync-state"   # snapsync's source-side state, kept out of SRC
SRC_MANIFEST="$WORK/src.manifest"
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
: >"$WORK/snapsync-json.tsv"

setup_cache

# --- the tools under test ------------------------------------------------------
tool_cmd() { # tool target -> sets the CMD array
    case "$1" in
        snapsync) CMD=("$SNAPSYNC" push --json --state-dir "$STATE" "$SRC" "$2") ;;
        rsync) CMD=(rsync -a "$SRC/" "$2/") ;;
        cp) CMD=(cp -a "$SRC" "$2") ;;
    esac
}

# run_one scenario tool rep timed(0/1)
run_one() {
    local scenario=$1 tool=$2 rep=$3 timed=$4
    local target label logf
    target="$WORK/dst-$tool"
    label="$scenario rep $rep"
    logf="$WORK/logs/$scenario-$tool-$rep.log"
    if [[ $timed -eq 0 ]]; then
        label="$scenario warm-up"
        logf="$WORK/logs/$scenario-$tool-warmup.log"
    fi
    if [[ $scenario == initial ]]; then
        rm -rf "$target"
        [[ $tool == snapsync ]] && rm -rf "$STATE"
    fi
    tool_cmd "$tool" "$target"
    cold_start
    if ! timed_run "$logf" "$logf" "${CMD[@]}"; then
        cat "$logf" >&2
        die "$tool failed ($label): ${CMD[*]}"
    fi
    verify_target "$tool" "$label" "$SRC" "$target" "$SRC_MANIFEST"
    if [[ $timed -eq 1 ]]; then
        printf '%s\t%s\t%s\t%s\t%s\n' "$scenario" "$tool" "$rep" "$SECS" "$RSS_KIB" >>"$RESULTS"
        log "$label  $tool: ${SECS}s, peak RSS ${RSS_KIB} KiB — target verified"
        if [[ $tool == snapsync ]]; then
            printf '%s\t%s\t%s\n' "$scenario" "$rep" "$(tail -n 1 "$logf")" >>"$WORK/snapsync-json.tsv"
        fi
    else
        log "$label  $tool: ${SECS}s (untimed) — target verified"
    fi
}

# --- go ------------------------------------------------------------------------
load_start=$(loadavg)
generate_tree "$SRC" "$SRC_MANIFEST"

if [[ $CACHE == warm ]]; then
    # Untimed warm-up into each tool's own target; the verification after
    # every run reads all of source and target, so later runs start warm too.
    for tool in snapsync rsync cp; do run_one initial "$tool" 0 0; done
fi

modify_files() { modify_tree "$SRC" "$1" "$SRC_MANIFEST"; } # rep
scenarios_1_to_3 "snapsync rsync cp" "snapsync rsync"
load_end=$(loadavg)

# --- report ----------------------------------------------------------------------
SCENARIOS=("initial=1. initial copy" "no-change=2. re-sync, no change"
    "modified=3. re-sync, files modified")
if [[ $CACHE == cold ]]; then
    cache_desc="cold: \`sync; echo 3 > /proc/sys/vm/drop_caches\` (untimed) before every timed run. No tool fsyncs, so the writeback of what a run wrote is not in its time for any tool."
else
    cache_desc="warm: page cache never dropped (dropping was not permitted, or CACHE=warm). One untimed warm-up run per tool before scenario 1; after every run the verification reads all of source and target, so every timed run starts with a warm cache."
fi

{
    echo "# snapsync vs rsync vs cp — local tree benchmark"
    echo
    report_run_lines "$load_start" "$load_end"
    echo "- Versions: snapsync $(snapsync_version); $(rsync --version | version_line); $(cp --version | sed -n 1p)"
    echo "- snapsync binary: $SNAPSYNC — $SNAPSYNC_ORIGIN"
    echo "- Tree: $(tree_desc)"
    echo "- Page cache: $cache_desc"
    echo "- Repetitions: $REPS per tool per scenario, tools interleaved (snapsync, rsync, cp, snapsync, ...)."
    echo "- Commands timed (each tool writes its own target; \`/usr/bin/time -f '%e %M'\`):"
    echo "  - snapsync: \`snapsync push --json --state-dir STATE SRC DST\` (STATE outside SRC so the other tools do not copy it; DST/.snapsync is snapsync's target-side state)"
    echo "  - rsync: \`rsync -a SRC/ DST/\`"
    echo "  - cp: \`cp -a SRC DST\` (scenario 1 only; DST does not exist)"
    scenarios_1_to_3_line
    verified_line
    echo
    python3 - "$RESULTS" "${SCENARIOS[@]}" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines() if l]
data = {}
for scen, tool, rep, secs, rss in rows:
    data.setdefault((scen, tool), []).append((float(secs), int(rss)))
names = dict(a.split("=", 1) for a in sys.argv[2:])
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
for scen in names:
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
for scen in names:
    print(f"| {names[scen]} | {ratio(med((scen, 'snapsync')), med((scen, 'rsync')))} | "
          f"{ratio(med((scen, 'snapsync')), med((scen, 'cp')))} |")
print()
print("Ratios are of medians; below 1 means snapsync was faster. Wall time has")
print("0.01 s resolution, so ratios of sub-0.1 s times mean little.")
print()
PY
    json_summaries "$WORK/snapsync-json.tsv" \
        "created updated deleted renamed copied bytes_sent files_scanned seconds" "${SCENARIOS[@]}"
} >"$WORK/report.md"

publish_report
ok=1
