#!/usr/bin/env bash
# Compare `snapsync push` with `rsync -a --delete` over ssh, both talking to the same
# private sshd on 127.0.0.1 (so both ends run on this machine).
#
# Usage: bench/ssh.sh                (from anywhere; paths resolve to the repo)
#   Settings (environment variables; each also accepted as --name VALUE):
#     FILES=100000     number of files in the generated tree
#     BIG=2G           size of the single big file of scenario 5 (K/M/G = KiB/MiB/GiB)
#     REPS=3           timed repetitions per tool per scenario
#     SEED=1           seed for tree contents and for every change made to it
#     MODIFY_PCT=1     percentage of files changed in scenario 3
#     RENAME_FILES=1000 files in the directory renamed in scenario 4
#     CACHE=auto       cold: `sync; echo 3 > /proc/sys/vm/drop_caches` before
#                      every timed run; warm: never drop (one untimed warm-up
#                      run per tool first); auto: cold if permitted, else warm
#     WORK=/tmp/snapsync-bench-ssh   scratch dir (deleted at the end unless KEEP=1)
#     KEEP=0           1 = keep WORK afterwards
#     OUT=bench/results-ssh.md   markdown report (also printed to stdout)
#     SNAPSYNC=        binary to test (both ends); default: `cargo build
#                      --release` and use target/release/snapsync
#
# Installs openssh-server, openssh-client, rsync, time and openssl with
# apt-get when missing, and starts its own sshd (keys made by ssh-keygen in
# WORK, free loopback port, killed on exit). Both tools use the same ssh
# command and so the same cipher, MAC and (no) compression:
#   ssh -p PORT -i KEY -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
#       -o BatchMode=yes -o LogLevel=ERROR
#
# Scenarios (each tool writes to its own target; tools interleave A B A B):
#   1. initial       push into a target that does not exist
#   2. no-change     re-sync with nothing changed
#   3. modified      re-sync after MODIFY_PCT% of files were rewritten; before
#                    each repetition the same source change is made once,
#                    while every target is in sync, then each tool syncs
#   4. rename        a directory of RENAME_FILES files (added and synced,
#                    untimed, before the first repetition) is renamed, then
#                    each tool syncs
#   5. big file      a) push of one BIG-byte pseudo-random file into a target
#                    that does not exist; b) after 3 x 1 MiB of it were
#                    overwritten at spread-out, unaligned offsets, re-sync
# After every run the target is compared with the source (path, type, mode,
# size, mtime in ns and a content hash of every file; directory mode and
# mtime), ignoring the top-level `.snapsync/`. Any difference aborts the
# benchmark. Wall time and peak RSS of the local process come from
# `/usr/bin/time -f '%e %M'`; the far end is started under
# `/usr/bin/time -f %M` too, for its peak RSS. rsync runs as
# `rsync -a --delete --stats -e "<ssh command>"`: `--delete` because
# `snapsync push` makes a replica (the rename of scenario 4 leaves the old
# names behind otherwise), `--stats` for its byte counts (snapsync's come from
# `--json`).

set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$BENCH_DIR/lib.sh"

SETTINGS=(FILES BIG REPS SEED MODIFY_PCT RENAME_FILES CACHE WORK KEEP OUT SNAPSYNC)
parse_settings "$@"
FILES=${FILES:-100000}
BIG=${BIG:-2G}
REPS=${REPS:-3}
SEED=${SEED:-1}
MODIFY_PCT=${MODIFY_PCT:-1}
RENAME_FILES=${RENAME_FILES:-1000}
CACHE=${CACHE:-auto}
WORK=${WORK:-/tmp/snapsync-bench-ssh}
KEEP=${KEEP:-0}
resolve_out "$BENCH_DIR/results-ssh.md"
need_positive_int FILES REPS RENAME_FILES
BIG_BYTES=$(numfmt --from=iec "$BIG" 2>/dev/null) || die "BIG must be a size like 2G, 64M or 100000000"
PATCH_COUNT=3
PATCH_SIZE=$((1 << 20))
[[ "$BIG_BYTES" -ge $((PATCH_COUNT * PATCH_SIZE + PATCH_COUNT)) ]] ||
    die "BIG must be larger than $PATCH_COUNT MiB (the size of its change in scenario 5)"

prepare_ssh_comparison

prepare_work
# paths travel inside remote shell command lines below, unquoted
[[ "$WORK" != *[[:space:]]* ]] || die "WORK may not contain white space: $WORK"
SRC="$WORK/src"                  # the tree of scenarios 1-4
BIG_SRC="$WORK/big-src"          # the single big file of scenario 5
RESULTS="$WORK/results.tsv"
REMOTE_TIME="$WORK/remote-time.out"
: >"$RESULTS"
: >"$WORK/snapsync-json.tsv"
trap cleanup_work EXIT

# --- sshd ----------------------------------------------------------------------
start_sshd "$WORK/ssh"
measure_ssh

setup_cache

# --- the tools under test ------------------------------------------------------
# The far end of either tool runs as `/usr/bin/time -f %M -o FILE PROGRAM ...`
# so its peak RSS can be reported too.
REMOTE_WRAP="/usr/bin/time -f %M -o $REMOTE_TIME"

# set_scenario scenario tool -> CUR_SRC CUR_TARGET CUR_STATE CUR_MANIFEST CUR_FRESH
set_scenario() {
    case "$1" in
        big-*)
            CUR_SRC=$BIG_SRC
            CUR_TARGET="$WORK/big-dst-$2"
            CUR_STATE="$WORK/state-big"
            CUR_MANIFEST="$WORK/big-src.manifest"
            ;;
        *)
            CUR_SRC=$SRC
            CUR_TARGET="$WORK/dst-$2"
            CUR_STATE="$WORK/state-tree"
            CUR_MANIFEST="$WORK/src.manifest"
            ;;
    esac
    case "$1" in initial|big-initial) CUR_FRESH=1 ;; *) CUR_FRESH=0 ;; esac
}

tool_cmd() { # tool -> sets the CMD array (uses CUR_*)
    case "$1" in
        snapsync) CMD=("$SNAPSYNC" push --json --state-dir "$CUR_STATE"
            --rsh "$RSH" --remote-command "$REMOTE_WRAP $SNAPSYNC"
            "$CUR_SRC" "$USERHOST:$CUR_TARGET") ;;
        rsync) CMD=("$RSYNC_BIN" -a --delete --stats -e "$RSH"
            --rsync-path "$REMOTE_WRAP $RSYNC_BIN"
            "$CUR_SRC/" "$USERHOST:$CUR_TARGET/") ;;
    esac
}

# Byte counts of one run -> "wire_sent wire_received literal"
snapsync_bytes() { summary_fields "$1" wire_sent wire_received bytes_sent; } # stdout-file
rsync_bytes() { # stdout-file
    awk '
        /^Literal data:/        { gsub(/,/, "", $3); lit = $3 }
        /^Total bytes sent:/     { gsub(/,/, "", $4); sent = $4 }
        /^Total bytes received:/ { gsub(/,/, "", $4); recv = $4 }
        END {
            if (sent == "" || recv == "" || lit == "") exit 1
            print sent, recv, lit
        }' "$1" || { echo "rsync --stats output not understood" >&2; return 1; }
}

# run_one scenario tool rep timed(0/1)
run_one() {
    local scenario=$1 tool=$2 rep=$3 timed=$4
    local label base rrss bytes
    set_scenario "$scenario" "$tool"
    label="$scenario rep $rep"
    base="$WORK/logs/$scenario-$tool-$rep"
    if [[ $timed -eq 0 ]]; then
        label="$scenario (untimed)"
        base="$WORK/logs/$scenario-$tool-untimed"
    fi
    if [[ $CUR_FRESH -eq 1 ]]; then
        rm -rf "$CUR_TARGET"
        [[ $tool == snapsync ]] && rm -rf "$CUR_STATE"
    fi
    tool_cmd "$tool"
    printf '%q ' "${CMD[@]}" >"$base.cmd"
    rm -f "$REMOTE_TIME"
    cold_start
    if ! timed_run "$base.out" "$base.err" "${CMD[@]}"; then
        cat "$base.err" >&2
        tail -n 20 "$SSHDIR/sshd.log" >&2
        die "$tool failed ($label): ${CMD[*]}"
    fi
    rrss=$(far_end_rss "$REMOTE_TIME")
    if [[ $tool == snapsync ]]; then
        bytes=$(snapsync_bytes "$base.out") || die "snapsync ($label): see $base.out"
    else
        bytes=$(rsync_bytes "$base.out") || die "rsync ($label): see $base.out"
    fi
    verify_target "$tool" "$label" "$CUR_SRC" "$CUR_TARGET" "$CUR_MANIFEST"
    if [[ $timed -eq 1 ]]; then
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$scenario" "$tool" "$rep" "$SECS" "$RSS_KIB" "$rrss" \
            "${bytes// /$'\t'}" >>"$RESULTS"
        log "$label  $tool: ${SECS}s, peak RSS ${RSS_KIB} KiB local / ${rrss} KiB remote, bytes sent/received/literal: $bytes — target verified"
        if [[ $tool == snapsync ]]; then
            printf '%s\t%s\t%s\n' "$scenario" "$rep" "$(tail -n 1 "$base.out")" >>"$WORK/snapsync-json.tsv"
        fi
    else
        log "$label  $tool: ${SECS}s — target verified"
    fi
}

# --- go ------------------------------------------------------------------------
load_start=$(loadavg)
generate_tree "$SRC" "$WORK/src.manifest"

generate_big_file "$BIG_SRC/big.bin" "$BIG_BYTES"
refresh_manifest "$BIG_SRC" "$WORK/big-src.manifest"

if [[ $CACHE == warm ]]; then
    # Untimed warm-up into each tool's own target; the verification after
    # every run reads all of source and target, so later runs start warm too.
    for tool in snapsync rsync; do run_one initial "$tool" 0 0; done
    for tool in snapsync rsync; do run_one big-initial "$tool" 0 0; done
fi

modify_files() { modify_tree "$SRC" "$1" "$WORK/src.manifest"; } # rep
INITIAL_VERB=push scenarios_1_to_3 "snapsync rsync" "snapsync rsync"

log "scenario 4: re-sync after renaming a directory of $RENAME_FILES files"
python3 "$GEN" gen "$SRC/renamed-0" --files "$RENAME_FILES" --seed "$((SEED * 1000 + 500))" --flat >/dev/null
refresh_manifest "$SRC" "$WORK/src.manifest"
for tool in snapsync rsync; do run_one rename-setup "$tool" 0 0; done
for ((r = 1; r <= REPS; r++)); do
    mv "$SRC/renamed-$((r - 1))" "$SRC/renamed-$r"
    refresh_manifest "$SRC" "$WORK/src.manifest"
    log "rep $r: renamed renamed-$((r - 1)) -> renamed-$r"
    for tool in snapsync rsync; do run_one rename "$tool" "$r" 1; done
done

log "scenario 5: one $BIG_BYTES-byte file, initial push and re-sync after $PATCH_COUNT x $PATCH_SIZE bytes changed"
patch_desc=""
for ((r = 1; r <= REPS; r++)); do
    for tool in snapsync rsync; do run_one big-initial "$tool" "$r" 1; done
    patch_desc=$(python3 "$GEN" patch "$BIG_SRC/big.bin" --count "$PATCH_COUNT" \
        --size "$PATCH_SIZE" --seed "$((SEED * 1000 + 700 + r))")
    refresh_manifest "$BIG_SRC" "$WORK/big-src.manifest"
    log "rep $r: $patch_desc"
    for tool in snapsync rsync; do run_one big-modified "$tool" "$r" 1; done
done
load_end=$(loadavg)

# --- report ----------------------------------------------------------------------
SCENARIOS=("initial=1. initial push" "no-change=2. re-sync, no change"
    "modified=3. re-sync, files modified" "rename=4. re-sync, directory renamed"
    "big-initial=5a. big file, initial push" "big-modified=5b. big file, 3 × 1 MiB changed")
if [[ $CACHE == cold ]]; then
    cache_desc="cold: \`sync; echo 3 > /proc/sys/vm/drop_caches\` (untimed) before every timed run; this empties the cache of both ends, which share the machine. No tool fsyncs, so the writeback of what a run wrote is not in its time for either tool."
else
    cache_desc="warm: page cache never dropped (dropping was not permitted, or CACHE=warm). One untimed warm-up push per tool before scenarios 1 and 5; after every run the verification reads all of source and target, so every timed run starts with a warm cache."
fi
rsync_remote_version=$("${RSH_WORDS[@]}" "$USERHOST" "$RSYNC_BIN" --version </dev/null | version_line)

{
    echo "# snapsync vs rsync over ssh — loopback benchmark"
    echo
    report_run_lines "$load_start" "$load_end" "; both ends run on it and share its CPUs, memory and disk"
    echo "- Versions: snapsync $(snapsync_version); $(rsync --version | version_line) (far end: $rsync_remote_version); $(ssh -V 2>&1)"
    echo "- snapsync binary (both ends): $SNAPSYNC — $SNAPSYNC_ORIGIN"
    echo "- Transport: $(ssh_transport_desc) Both tools use that ssh command; neither compresses (no \`-z\`)."
    echo "- Tree (scenarios 1–3): $(tree_desc)"
    echo "- Page cache: $cache_desc"
    echo "- Repetitions: $REPS per tool per scenario, tools interleaved (snapsync, rsync, snapsync, ...)."
    echo "- Commands timed (each tool writes its own target; local side timed with \`/usr/bin/time -f '%e %M'\`, which counts the tool and its ssh client; the far end is started under \`/usr/bin/time -f %M -o FILE\` for its peak RSS):"
    echo "  - snapsync: \`snapsync push --json --state-dir STATE --rsh '<ssh command>' --remote-command '/usr/bin/time -f %M -o FILE $SNAPSYNC' SRC $(id -un)@127.0.0.1:DST\` (STATE outside SRC so rsync does not copy it; DST/.snapsync is snapsync's far-side state; the far end runs \`snapsync serve\`)"
    echo "  - rsync: \`rsync -a --delete --stats -e '<ssh command>' --rsync-path '/usr/bin/time -f %M -o FILE $RSYNC_BIN' SRC/ $(id -un)@127.0.0.1:DST/\` (\`--delete\` because snapsync push makes a replica, deleting what the source no longer has; \`--stats\` only prints counters rsync keeps anyway)"
    scenarios_1_to_3_line
    echo "- Scenario 4: a flat directory \`renamed-0\` of $RENAME_FILES files (100 B–16 KiB each) is added to the tree and synced by both tools (untimed); then before each repetition it is renamed (\`renamed-N\` → \`renamed-N+1\`, same parent, same inodes) and each tool syncs. rsync has no rename detection, so it is expected to send the files again and delete the old ones."
    echo "- Scenario 5: one file of $BIG_BYTES bytes (AES-128-CTR keystream: incompressible). a) pushed into a target that does not exist; b) then $PATCH_COUNT blocks of $PATCH_SIZE bytes are overwritten in place with new pseudo-random bytes at seeded, unaligned offsets, one in each third of the file (last repetition: $patch_desc), and each tool re-syncs. rsync uses its delta algorithm (the default when the target is remote)."
    verified_line
    echo
    python3 - "$RESULTS" "${SCENARIOS[@]}" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines() if l]
data = {}
for scen, tool, rep, secs, rss, rrss, sent, recv, lit in rows:
    data.setdefault((scen, tool), []).append(
        dict(secs=float(secs), rss=int(rss),
             rrss=None if rrss == "NA" else int(rrss),
             sent=int(sent), recv=int(recv), lit=int(lit)))
names = dict(a.split("=", 1) for a in sys.argv[2:])
order = list(names)
tools = ["snapsync", "rsync"]
def med(scen, tool, key):
    v = [r[key] for r in data.get((scen, tool), []) if r[key] is not None]
    return statistics.median(v) if v else None
def ratio(a, b, zero="n/a (0.00 s)"):
    if a is None or b is None:
        return "–"
    if b == 0:
        return zero if a else "–"
    return f"{a / b:.2f}×"
def mib(kib):
    return "–" if kib is None else f"{kib / 1024:.1f}"
def num(n):
    if n is None:
        return "–"
    n = int(round(n))
    if n < 10 * 1024:
        return f"{n:,}"
    return f"{n:,} ({n / 1048576:.2f} MiB)"

print("## Time and memory")
print()
print("| Scenario | Tool | Median wall (s) | Min–max (s) | snapsync ÷ rsync | Median peak RSS, local (MiB) | Median peak RSS, far end (MiB) |")
print("|---|---|---:|---:|---:|---:|---:|")
for scen in order:
    for tool in tools:
        v = data.get((scen, tool))
        if not v:
            continue
        secs = [r["secs"] for r in v]
        r = ratio(med(scen, "snapsync", "secs"), med(scen, "rsync", "secs")) if tool == "snapsync" else ""
        print(f"| {names[scen]} | {tool} | {statistics.median(secs):.2f} | "
              f"{min(secs):.2f}–{max(secs):.2f} | {r} | {mib(med(scen, tool, 'rss'))} | "
              f"{mib(med(scen, tool, 'rrss'))} |")
print()
print("Ratios are of medians; below 1 means snapsync was faster. Wall time has")
print("0.01 s resolution, so ratios of sub-0.1 s times mean little. Local peak RSS")
print("is the larger of the tool's and its ssh client's; far-end peak RSS is that")
print("of `snapsync serve`, or the largest of the `rsync --server` processes.")
print()
print("## Bytes")
print()
print("| Scenario | Tool | Sent over the connection | Received over the connection | Literal file data sent | snapsync ÷ rsync (sent) |")
print("|---|---|---:|---:|---:|---:|")
for scen in order:
    for tool in tools:
        if not data.get((scen, tool)):
            continue
        r = ratio(med(scen, "snapsync", "sent"), med(scen, "rsync", "sent"), "n/a") if tool == "snapsync" else ""
        print(f"| {names[scen]} | {tool} | {num(med(scen, tool, 'sent'))} | "
              f"{num(med(scen, tool, 'recv'))} | {num(med(scen, tool, 'lit'))} | {r} |")
print()
print("Medians over the repetitions, in bytes. Both tools count what they write to")
print("and read from their ssh client's pipes (file data, file lists, checksums and")
print("protocol framing), not ssh's own encryption overhead. snapsync: `wire_sent`,")
print("`wire_received`, `bytes_sent` of `--json`; rsync: `Total bytes sent`,")
print("`Total bytes received`, `Literal data` of `--stats`.")
print()
PY
    json_summaries "$WORK/snapsync-json.tsv" \
        "created updated deleted renamed copied errors bytes_sent bytes_received wire_sent wire_received files_scanned seconds" \
        "${SCENARIOS[@]}"
} >"$WORK/report.md"

publish_report
ok=1
