#!/usr/bin/env bash
# Peak memory of a no-change re-sync of a tree of many tiny files, per file:
# snapsync push against rsync -a, both local, warm cache.
#
# Usage: bench/memory.sh
#   FILES=1000000   files in the tree (0-64 bytes each)
#   REPS=3          timed no-change runs per tool, interleaved
#   WORK=/tmp/snapsync-memory   scratch dir (deleted at the end unless KEEP=1)
#   OUT=bench/results-memory.md report (also printed)
#   SNAPSYNC=       binary to test; default: cargo build --release
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$BENCH_DIR/lib.sh"

FILES=${FILES:-1000000}
REPS=${REPS:-3}
WORK=${WORK:-/tmp/snapsync-memory}
KEEP=${KEEP:-0}
resolve_out "$BENCH_DIR/results-memory.md"

need_common_tools
select_snapsync

case "$WORK" in /tmp/*|/var/tmp/*) ;; *) die "WORK must be under /tmp or /var/tmp" ;; esac
rm -rf "$WORK"
mkdir -p "$WORK"
cleanup() { [[ "$KEEP" == 1 ]] || rm -rf "$WORK"; }
trap cleanup EXIT

log "generating $FILES tiny files"
python3 "$GEN" gen "$WORK/src" --files "$FILES" --min-size 0 --max-size 64 >&2

snap=( "$SNAPSYNC" push -q --state-dir "$WORK/state" "$WORK/src" "$WORK/dst-snapsync" )
rsy=( rsync -a "$WORK/src/" "$WORK/dst-rsync/" )
log "initial syncs (untimed)"
"${snap[@]}"
"${rsy[@]}"
same_tree "$WORK/src" "$WORK/dst-snapsync" >/dev/null || die "snapsync target differs"

declare -a s_rss r_rss s_sec r_sec
for ((i = 1; i <= REPS; i++)); do
    timed_run /dev/null "$WORK/err.out" "${snap[@]}" || { cat "$WORK/err.out" >&2; die "$SNAPSYNC failed"; }
    s_sec+=("$SECS"); s_rss+=("$RSS_KIB")
    log "no-change rep $i snapsync: ${SECS}s, peak RSS ${RSS_KIB} KiB"
    timed_run /dev/null "$WORK/err.out" "${rsy[@]}" || { cat "$WORK/err.out" >&2; die "rsync failed"; }
    r_sec+=("$SECS"); r_rss+=("$RSS_KIB")
    log "no-change rep $i rsync: ${SECS}s, peak RSS ${RSS_KIB} KiB"
done
same_tree "$WORK/src" "$WORK/dst-snapsync" >/dev/null || die "snapsync target differs"

s_med=$(median "${s_rss[@]}"); r_med=$(median "${r_rss[@]}")
s_t=$(median "${s_sec[@]}"); r_t=$(median "${r_sec[@]}")
entries=$(find "$WORK/src" | wc -l)
{
    echo "# Memory: no-change re-sync of $FILES tiny files"
    echo
    echo "- Command: \`FILES=$FILES REPS=$REPS bench/memory.sh\`; $(nproc) CPUs, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -r)"
    echo "- snapsync: $("$SNAPSYNC" --version)"
    echo "- Tree: $FILES files of 0–64 bytes ($entries entries with directories); warm cache; local push"
    echo
    echo "| tool | median peak RSS (KiB) | bytes per entry | median wall (s) |"
    echo "|---|---:|---:|---:|"
    echo "| snapsync push | $s_med | $(awk -v k="$s_med" -v n="$entries" 'BEGIN {printf "%.0f", k*1024/n}') | $s_t |"
    echo "| rsync -a | $r_med | $(awk -v k="$r_med" -v n="$entries" 'BEGIN {printf "%.0f", k*1024/n}') | $r_t |"
} | tee "$OUT"
