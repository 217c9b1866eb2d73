#!/usr/bin/env bash
# Compare `snapsync bidi` with Unison (`unison -batch`) on a generated pair of
# trees that differ, both local (two directories) and over ssh (a loopback
# sshd this script starts, so both ends run on this machine).
#
# Usage: bench/bidi.sh               (from anywhere; paths resolve to the repo)
#   Settings (environment variables; each also accepted as --name VALUE):
#     FILES=100000     number of files in side A's generated tree
#     REPS=3           timed repetitions per tool per scenario
#     SEED=1           seed for tree contents and for every change made to them
#     MODIFY_PCT=1     percentage of files changed on EACH side in scenario 3
#     CACHE=auto       cold: `sync; echo 3 > /proc/sys/vm/drop_caches` before
#                      every timed run; warm: never drop (one untimed warm-up
#                      run per tool first); auto: cold if permitted, else warm
#     WORK=/tmp/snapsync-bench-bidi   scratch dir (deleted at the end unless KEEP=1)
#     KEEP=0           1 = keep WORK afterwards
#     OUT=bench/results-bidi.md  markdown report (also printed to stdout)
#     SNAPSYNC=        binary to test (both ends); default: `cargo build
#                      --release` and use target/release/snapsync
#
# Installs unison, openssh-server, openssh-client, rsync and time with
# apt-get when missing, and starts its own sshd (keys made by ssh-keygen in
# WORK, free loopback port, killed on exit).
#
# The two sides: A is the generated tree of FILES files; B holds a copy
# (`cp -a`: same bytes, modes and times) of every tenth of A's files and
# FILES/10 files of its own (other names, in directories A has and in some it
# has not). So the first sync is a merge both ways, not a one-way copy.
#
# Scenarios, run once with LOCAL and REMOTE two directories ("local") and
# once with REMOTE reached through the sshd ("ssh"); each tool syncs its own
# pair of roots; tools interleave (snapsync, unison, snapsync, ...):
#   1. initial     merge into fresh copies of A and B, no sync state (each
#                  tool's pair copied anew, untimed, for every repetition)
#   2. no-change   re-run with nothing changed
#   3. modified    re-run after MODIFY_PCT% of the files were rewritten on
#                  EACH side, different files on each side (even-numbered on
#                  A, odd-numbered on B), so there is no conflict; the same
#                  change is made to both tools' pairs while they are in sync
#
# The commands (ROOT_A local; ROOT_B a directory, or over ssh
# user@127.0.0.1:DIR for snapsync and ssh://user@127.0.0.1//DIR for Unison):
#   snapsync bidi --json ROOT_A ROOT_B
#       over ssh also --rsh "<ssh command>" --remote-command "<far end>"
#       as bench/ssh.sh drives push; its state is in each root's .snapsync/
#   UNISON=WORK/unison-TRANSPORT unison ROOT_A ROOT_B -batch -auto -times
#       -perms 0o7777 -confirmbigdel=false -log=false
#       over ssh also -sshargs "<ssh command's options>" -servercmd
#       "env UNISON=WORK/unison-ssh-far <far end>"
# Unison's flags: -batch -auto ask nothing and carry every change that is not
# a conflict; -times syncs file mtimes and -perms 0o7777 all permission bits,
# which snapsync always does (Unison's default is no times and 0o1777);
# -confirmbigdel=false never stops to ask about a large delete; -log=false
# writes no unison.log (what it prints is kept in WORK/logs anyway). Its
# archives (its sync state) live in private UNISON directories, never in
# ~/.unison: deleted before every initial run, kept for runs 2 and 3, which
# is what makes those incremental. Everything else is Unison's default
# (fastcheck on, xferbycopying on, rsync transfers on).
#
# After every run both roots of the tool's pair are compared with each other
# (path, type, mode, size, content hash, and mtimes; `.snapsync/` ignored),
# and root A's contents with what the sync must give (computed from the two
# sides' contents and the last synced state). Unison carries file mtimes as
# floating-point seconds and sets them to the microsecond, and does not sync
# directory mtimes, so for its pair file mtimes may differ by up to 2 µs and
# directory mtimes are not compared; snapsync's pair is compared to the
# nanosecond, directories included.
# Unison keeps no files of its own in the roots (its archives are in UNISON),
# so a temporary file it left behind counts as a difference. Any difference,
# a non-zero exit, a conflict or an error aborts the benchmark. Wall time and
# peak RSS come from `/usr/bin/time -f '%e %M'`; over ssh the far end runs
# under `/usr/bin/time -f %M -o FILE` too. Bytes: snapsync's --json
# bytes_sent + bytes_received (file data) and wire_sent / wire_received;
# Unison counts none ("n/a").

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
WORK=${WORK:-/tmp/snapsync-bench-bidi}
KEEP=${KEEP:-0}
resolve_out "$BENCH_DIR/results-bidi.md"
need_positive_int FILES REPS

need_common_tools
need_ssh_tools
need_pkg unison unison
UNISON_BIN=$(command -v unison)
UNISON_FLAGS=(-batch -auto -times -perms 0o7777 -confirmbigdel=false -log=false)

select_snapsync
[[ "$SNAPSYNC" != *[[:space:]]* ]] || die "the snapsync path may not contain white space: $SNAPSYNC"

prepare_work
# paths travel inside remote shell command lines below, unquoted
[[ "$WORK" != *[[:space:]]* ]] || die "WORK may not contain white space: $WORK"
SEED_A="$WORK/seed-a"              # side A as generated; every initial run starts from a copy
SEED_B="$WORK/seed-b"              # side B likewise
UNION="$WORK/union.content"        # what both sides hold after the initial merge
EXPECTED="$WORK/expected.content"  # what both sides must hold after the next run
RESULTS="$WORK/results.tsv"
REMOTE_TIME="$WORK/remote-time.out"
: >"$RESULTS"
: >"$WORK/snapsync-json.tsv"
trap cleanup_work EXIT

# --- sshd ----------------------------------------------------------------------
start_sshd "$WORK/ssh"
measure_ssh
# The far end of either tool runs under /usr/bin/time, for its peak RSS.
REMOTE_WRAP="/usr/bin/time -f %M -o $REMOTE_TIME"

setup_cache

# --- the pairs of roots --------------------------------------------------------
TRANSPORT=""    # local or ssh: the phase running now

root_of() { # tool side(a|b) -> the directory of that side of the tool's pair
    echo "$WORK/pairs/$TRANSPORT-$1-$2"
}

content_listing() { python3 "$GEN" manifest --content "$1" >"$2"; } # dir listing

# Give a tool a fresh pair: copies of both sides and no sync state.
fresh_pair() { # tool
    local a b
    a=$(root_of "$1" a)
    b=$(root_of "$1" b)
    rm -rf "$a" "$b"
    mkdir -p "$WORK/pairs"
    cp -a "$SEED_A" "$a"
    cp -a "$SEED_B" "$b"
    if [[ $1 == unison ]]; then
        # Unison's archives: the near end's, and over ssh the far end's
        rm -rf "$WORK/unison-$TRANSPORT" "$WORK/unison-$TRANSPORT-far"
        mkdir -p "$WORK/unison-$TRANSPORT"
        if [[ $TRANSPORT == ssh ]]; then mkdir -p "$WORK/unison-ssh-far"; fi
    fi
}

# Scenario 3's change for one repetition: MODIFY_PCT% of the files rewritten
# on each side of each tool's pair (even-numbered files on A, odd-numbered on
# B), then EXPECTED moved on from the snapsync pair's new contents (sets
# MODIFIED_COUNT).
modify_files() { # rep
    local tool out
    for tool in snapsync unison; do
        out=$(python3 "$GEN" modify "$(root_of "$tool" a)" --files "$FILES" \
            --percent "$MODIFY_PCT" --seed "$((SEED * 1000 + $1))" --part 0/2)
        python3 "$GEN" modify "$(root_of "$tool" b)" --files "$FILES" \
            --percent "$MODIFY_PCT" --seed "$((SEED * 1000 + 500 + $1))" --part 1/2 >/dev/null
    done
    MODIFIED_COUNT=${out//[!0-9]/}
    log "rep $1: $out on each side of each pair"
    content_listing "$(root_of snapsync a)" "$WORK/a.content"
    content_listing "$(root_of snapsync b)" "$WORK/b.content"
    python3 "$GEN" merge "$EXPECTED" "$WORK/a.content" "$WORK/b.content" >"$WORK/next.content" ||
        die "the change of rep $1 made a conflict"
    mv "$WORK/next.content" "$EXPECTED"
}

# Abort the benchmark, loudly, unless both roots of a tool's pair are equal and
# hold what the sync must give.
verify_pair() { # tool label
    local a b loose=()
    a=$(root_of "$1" a)
    b=$(root_of "$1" b)
    # what Unison keeps of times: file mtimes to within 2 µs (it
    # holds them as floating-point seconds and sets them to the µs), no directory mtimes
    if [[ $1 == unison ]]; then loose=(--mtime-tolerance 2000 --no-dir-times); fi
    if ! python3 "$GEN" compare "$a" "$b" --expect "$EXPECTED" "${loose[@]}"; then
        echo >&2
        echo "!!!!!!!! $1 ($TRANSPORT, $2): THE TWO ROOTS DIFFER, OR DIFFER FROM THE EXPECTED MERGE — benchmark aborted !!!!!!!!" >&2
        echo "!!!!!!!! roots: $a $b  (logs: $WORK/logs)" >&2
        exit 1
    fi
}

# --- the tools under test ------------------------------------------------------
tool_cmd() { # tool -> sets the CMD array
    local a b
    a=$(root_of "$1" a)
    b=$(root_of "$1" b)
    case "$1/$TRANSPORT" in
        snapsync/local) CMD=("$SNAPSYNC" bidi --json "$a" "$b") ;;
        snapsync/ssh) CMD=("$SNAPSYNC" bidi --json --rsh "$RSH"
            --remote-command "$REMOTE_WRAP $SNAPSYNC" "$a" "$USERHOST:$b") ;;
        unison/local) CMD=(env "UNISON=$WORK/unison-local" "$UNISON_BIN" "$a" "$b"
            "${UNISON_FLAGS[@]}") ;;
        unison/ssh) CMD=(env "UNISON=$WORK/unison-ssh" "$UNISON_BIN" "$a" "ssh://$USERHOST/$b"
            "${UNISON_FLAGS[@]}" -sshargs "${RSH#ssh }"
            -servercmd "env UNISON=$WORK/unison-ssh-far $REMOTE_WRAP $UNISON_BIN") ;;
    esac
}

# run_one scenario tool rep timed(0/1)
run_one() {
    local scenario=$1 tool=$2 rep=$3 timed=$4
    local label base rrss bytes
    label="$TRANSPORT $scenario rep $rep"
    base="$WORK/logs/$TRANSPORT-$scenario-$tool-$rep"
    if [[ $timed -eq 0 ]]; then
        label="$TRANSPORT $scenario (untimed)"
        base="$WORK/logs/$TRANSPORT-$scenario-$tool-untimed"
    fi
    if [[ $scenario == initial ]]; then
        fresh_pair "$tool"
        cp "$UNION" "$EXPECTED"
    fi
    tool_cmd "$tool"
    printf '%q ' "${CMD[@]}" >"$base.cmd"
    rm -f "$REMOTE_TIME"
    cold_start
    if ! timed_run "$base.out" "$base.err" "${CMD[@]}"; then
        # snapsync bidi exits 4 when conflicts remain; none are expected here
        tail -n 20 "$base.out" "$base.err" >&2
        if [[ $TRANSPORT == ssh ]]; then tail -n 20 "$SSHDIR/sshd.log" >&2; fi
        die "$tool failed ($label): ${CMD[*]}"
    fi
    rrss=$(far_end_rss "$REMOTE_TIME")
    bytes="NA NA NA NA"
    if [[ $tool == snapsync ]]; then
        bytes=$(summary_fields "$base.out" bytes_sent bytes_received wire_sent wire_received) ||
            die "snapsync ($label): see $base.out"
    fi
    verify_pair "$tool" "$label"
    if [[ $timed -eq 1 ]]; then
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$TRANSPORT" "$scenario" "$tool" "$rep" \
            "$SECS" "$RSS_KIB" "$rrss" "${bytes// /$'\t'}" >>"$RESULTS"
        log "$label  $tool: ${SECS}s, peak RSS ${RSS_KIB} KiB local / ${rrss} KiB far end, data sent/received, wire sent/received: $bytes — both roots verified"
        if [[ $tool == snapsync ]]; then
            printf '%s\t%s\t%s\n' "$TRANSPORT-$scenario" "$rep" "$(tail -n 1 "$base.out")" >>"$WORK/snapsync-json.tsv"
        fi
    else
        log "$label  $tool: ${SECS}s — both roots verified"
    fi
}

# --- go ------------------------------------------------------------------------
load_start=$(loadavg)
generate_tree "$SEED_A" "$WORK/seed-a.manifest"
OWN_FILES=$(((FILES + 9) / 10))
log "making side B: $OWN_FILES files of its own and a copy of every tenth file of A"
python3 "$GEN" gen "$SEED_B" --files "$OWN_FILES" --seed "$((SEED * 1000 + 900))" --prefix g >/dev/null
(cd "$SEED_A" && find . -type f -name 'f*0.bin' -print0 | xargs -0 -r cp -a --parents -t "$SEED_B")
SHARED_FILES=$(find "$SEED_B" -type f -name 'f*.bin' | wc -l)
B_BYTES=$(find "$SEED_B" -type f -printf '%s\n' | awk '{s+=$1} END{printf "%d", s}')
content_listing "$SEED_A" "$WORK/seed-a.content"
content_listing "$SEED_B" "$WORK/seed-b.content"
: >"$WORK/nothing.content"
python3 "$GEN" merge "$WORK/nothing.content" "$WORK/seed-a.content" "$WORK/seed-b.content" >"$UNION" ||
    die "sides A and B conflict"
MERGED_FILES=$(grep -c '^f ' "$UNION" || true)

for TRANSPORT in local ssh; do
    log "=== $TRANSPORT"
    if [[ $CACHE == warm ]]; then
        # Untimed warm-up in each tool's own pair; the verification after
        # every run reads both roots, so later runs start warm too.
        for tool in snapsync unison; do run_one initial "$tool" 0 0; done
    fi
    INITIAL_VERB=merge scenarios_1_to_3 "snapsync unison" "snapsync unison"
    rm -rf "$WORK/pairs"
done
load_end=$(loadavg)

# --- report ----------------------------------------------------------------------
SCENARIOS=()
for t in local ssh; do
    SCENARIOS+=("$t-initial=$t: 1. initial merge" "$t-no-change=$t: 2. re-run, no change"
        "$t-modified=$t: 3. re-run, files modified on both sides")
done
if [[ $CACHE == cold ]]; then
    cache_desc="cold: \`sync; echo 3 > /proc/sys/vm/drop_caches\` (untimed) before every timed run; over ssh this empties the cache of both ends, which share the machine. Neither tool fsyncs, so the writeback of what a run wrote is not in its time for either tool."
else
    cache_desc="warm: page cache never dropped (dropping was not permitted, or CACHE=warm). One untimed warm-up merge per tool before scenario 1 of each transport; after every run the verification reads both roots, so every timed run starts with a warm cache."
fi
unison_far_version=$("${RSH_WORDS[@]}" "$USERHOST" "$UNISON_BIN" -version </dev/null | version_line)

{
    echo "# snapsync bidi vs Unison — two-way sync benchmark"
    echo
    report_run_lines "$load_start" "$load_end" "; over ssh both ends run on it and share its CPUs, memory and disk"
    echo "- Versions: snapsync $(snapsync_version); $("$UNISON_BIN" -version | version_line) (far end: $unison_far_version); $(ssh -V 2>&1)"
    echo "- snapsync binary (both ends): $SNAPSYNC — $SNAPSYNC_ORIGIN"
    echo "- Side A: $(tree_desc)."
    echo "- Side B: a copy (\`cp -a\`) of $SHARED_FILES of A's files (every tenth) and $OWN_FILES files of its own (seed $((SEED * 1000 + 900)), same size range, some in A's directories, some in directories A lacks); $B_BYTES bytes. The merge holds $MERGED_FILES files."
    echo "- Page cache: $cache_desc"
    echo "- Repetitions: $REPS per tool per scenario, tools interleaved (snapsync, unison, snapsync, ...); local first, then ssh."
    echo "- Transport (ssh runs): $(ssh_transport_desc) snapsync gets that command as \`--rsh\`; Unison gets its options as \`-sshargs\` and runs \`ssh -l $(id -un) 127.0.0.1 -e none <options> <servercmd> -server __new-rpc-mode\`. Neither compresses."
    echo "- Commands timed (each tool syncs its own pair of roots, A local, B a directory or over ssh; \`/usr/bin/time -f '%e %M'\`, which counts the tool and its ssh client; over ssh the far end runs under \`/usr/bin/time -f %M -o FILE\` for its peak RSS):"
    echo "  - snapsync, local: \`snapsync bidi --json A B\`; over ssh: \`snapsync bidi --json --rsh '<ssh command>' --remote-command '/usr/bin/time -f %M -o FILE $SNAPSYNC' A $(id -un)@127.0.0.1:B\` (state in each root's \`.snapsync/\`; the far end runs \`snapsync serve\`)"
    echo "  - Unison, local: \`UNISON=WORK/unison-local unison A B ${UNISON_FLAGS[*]}\`; over ssh: \`UNISON=WORK/unison-ssh unison A ssh://$(id -un)@127.0.0.1//B ${UNISON_FLAGS[*]} -sshargs '<ssh options>' -servercmd 'env UNISON=WORK/unison-ssh-far /usr/bin/time -f %M -o FILE $UNISON_BIN'\`. \`-times\` and \`-perms 0o7777\` make it keep file mtimes and all permission bits as snapsync does; \`-log=false\` spares it a log file. Its archives are in those private UNISON directories: deleted before every initial merge, kept for scenarios 2 and 3."
    echo "- Scenario 1: each tool gets fresh copies of A and B (untimed \`cp -a\`) and no sync state, for every repetition. Scenario 2: nothing changed since the previous run. Scenario 3: before each repetition ${MODIFIED_COUNT:-?} files (${MODIFY_PCT}%) are rewritten on side A and as many other files on side B (half in place with the same size, half with new content and size), in both tools' pairs, while they are in sync; no conflicts."
    echo "- Every run was verified: the tool exited 0 (snapsync: no conflicts, no errors in \`--json\`); its two roots are equal by path, type, mode, size, content hash and mtimes, ignoring \`.snapsync/\` (snapsync: file and directory mtimes to the ns; Unison: file mtimes within 2 µs, as it carries them as floating-point seconds and sets them to the µs, and directory mtimes not at all, as it does not sync them); and root A holds exactly the contents the merge must give."
    echo
    python3 - "$RESULTS" "${SCENARIOS[@]}" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines() if l]
data = {}
for transport, scen, tool, rep, secs, rss, rrss, dsent, drecv, wsent, wrecv in rows:
    num = lambda s: None if s == "NA" else int(s)
    data.setdefault((f"{transport}-{scen}", tool), []).append(
        dict(secs=float(secs), rss=int(rss), rrss=num(rrss),
             data=None if dsent == "NA" else int(dsent) + int(drecv),
             wsent=num(wsent), wrecv=num(wrecv)))
names = dict(a.split("=", 1) for a in sys.argv[2:])
tools = ["snapsync", "unison"]
def med(scen, tool, key):
    v = [r[key] for r in data.get((scen, tool), []) if r[key] is not None]
    return statistics.median(v) if v else None
def ratio(scen):
    a, b = med(scen, "snapsync", "secs"), med(scen, "unison", "secs")
    if a is None or b is None:
        return "–"
    if b == 0:
        return "n/a (0.00 s)"
    return f"{a / b:.2f}×"
def mib(kib):
    return "–" if kib is None else f"{kib / 1024:.1f}"
def count(n, tool):
    if tool == "unison":
        return "n/a"
    if n is None:
        return "–"
    n = int(round(n))
    return f"{n:,}" if n < 10 * 1024 else f"{n:,} ({n / 1048576:.2f} MiB)"

for transport, title in [("local", "Local: two directories"), ("ssh", "Over ssh on loopback")]:
    far = transport == "ssh"
    print(f"## {title}")
    print()
    head = "| Scenario | Tool | Median wall (s) | Min–max (s) | snapsync ÷ Unison | Median peak RSS" + (", local" if far else "") + " (MiB) |"
    rule = "|---|---|---:|---:|---:|---:|"
    if far:
        head += " Median peak RSS, far end (MiB) |"
        rule += "---:|"
    head += " File data sent + received (bytes) |"
    rule += "---:|"
    if far:
        head += " Wire sent / received (bytes) |"
        rule += "---:|"
    print(head)
    print(rule)
    for scen, name in names.items():
        if not scen.startswith(transport + "-"):
            continue
        for tool in tools:
            v = data.get((scen, tool))
            if not v:
                continue
            secs = [r["secs"] for r in v]
            line = (f"| {name.split(': ', 1)[1]} | {tool} | {statistics.median(secs):.2f} | "
                    f"{min(secs):.2f}–{max(secs):.2f} | {ratio(scen) if tool == 'snapsync' else ''} | "
                    f"{mib(med(scen, tool, 'rss'))} |")
            if far:
                line += f" {mib(med(scen, tool, 'rrss'))} |"
            line += f" {count(med(scen, tool, 'data'), tool)} |"
            if far:
                wire = "n/a" if tool == "unison" else \
                    f"{count(med(scen, tool, 'wsent'), tool)} / {count(med(scen, tool, 'wrecv'), tool)}"
                line += f" {wire} |"
            print(line)
    print()

print("## Ratios")
print()
print("| Scenario | local: snapsync ÷ Unison | ssh: snapsync ÷ Unison |")
print("|---|---:|---:|")
for scen in ["initial", "no-change", "modified"]:
    name = names[f"local-{scen}"].split(": ", 1)[1]
    print(f"| {name} | {ratio('local-' + scen)} | {ratio('ssh-' + scen)} |")
print()
print("Ratios are of median wall times; below 1 means snapsync was faster. Wall")
print("time has 0.01 s resolution, so ratios of sub-0.1 s times mean little. Bytes")
print("are medians: snapsync's `bytes_sent + bytes_received` (file data carried")
print("either way) and `wire_sent` / `wire_received` (everything written to and")
print("read from its ssh pipes, not ssh's own overhead); Unison has no byte")
print("counter. Far-end peak RSS is that of `snapsync serve` or `unison -server`.")
print()
PY
    json_summaries "$WORK/snapsync-json.tsv" \
        "created updated deleted renamed copied conflicts errors bytes_sent bytes_received wire_sent wire_received files_scanned seconds" \
        "${SCENARIOS[@]}"
} >"$WORK/report.md"

publish_report
ok=1
