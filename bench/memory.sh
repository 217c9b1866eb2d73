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

FILES=${FILES:-1000000}
REPS=${REPS:-3}
WORK=${WORK:-/tmp/snapsync-memory}
KEEP=${KEEP:-0}
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
OUT=${OUT:-$BENCH_DIR/results-memory.md}
case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac

log() { echo "[$(date +%T)] $*" >&2; }
die() { echo "memory.sh: ERROR: $*" >&2; exit 1; }

command -v rsync >/dev/null || { apt-get update -qq && apt-get install -y -qq rsync >/dev/null; }
[[ -x /usr/bin/time ]] || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
if [[ -z "${SNAPSYNC:-}" ]]; then
    (cd "$REPO" && cargo build --release --quiet) || die "cargo build failed"
    SNAPSYNC="$REPO/target/release/snapsync"
fi
[[ -x "$SNAPSYNC" ]] || die "no snapsync binary at $SNAPSYNC"

case "$WORK" in /tmp/*|/var/tmp/*) ;; *) die "WORK must be under /tmp or /var/tmp" ;; esac
rm -rf "$WORK"
mkdir -p "$WORK"
cleanup() { [[ "$KEEP" == 1 ]] || rm -rf "$WORK"; }
trap cleanup EXIT

log "generating $FILES tiny files"
python3 "$BENCH_DIR/gen_tree.py" gen "$WORK/src" --files "$FILES" --min-size 0 --max-size 64 >&2

timed() { # label command... -> "seconds kib"
    /usr/bin/time -f '%e %M' -o "$WORK/time.out" "$@" >/dev/null 2>"$WORK/err.out" \
        || { cat "$WORK/err.out" >&2; die "$1 failed"; }
    cat "$WORK/time.out"
}

snap=( "$SNAPSYNC" push -q --state-dir "$WORK/state" "$WORK/src" "$WORK/dst-snapsync" )
rsy=( rsync -a "$WORK/src/" "$WORK/dst-rsync/" )
log "initial syncs (untimed)"
"${snap[@]}"
"${rsy[@]}"
python3 "$BENCH_DIR/gen_tree.py" compare "$WORK/src" "$WORK/dst-snapsync" >/dev/null || die "snapsync target differs"

declare -a s_rss r_rss s_sec r_sec
for ((i = 1; i <= REPS; i++)); do
    read -r sec kib < <(timed "${snap[@]}"); s_sec+=("$sec"); s_rss+=("$kib")
    log "no-change rep $i snapsync: ${sec}s, peak RSS ${kib} KiB"
    read -r sec kib < <(timed "${rsy[@]}"); r_sec+=("$sec"); r_rss+=("$kib")
    log "no-change rep $i rsync: ${sec}s, peak RSS ${kib} KiB"
done
python3 "$BENCH_DIR/gen_tree.py" compare "$WORK/src" "$WORK/dst-snapsync" >/dev/null || die "snapsync target differs"

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
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
