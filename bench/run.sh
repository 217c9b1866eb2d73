#!/usr/bin/env bash
# The whole benchmark, one command:
#
#   bench/run.sh all     full sizes (100k files ~ 820 MB, a 2 GiB file, 1M
#                        tiny files); writes the results into BENCHMARKS.md
#   bench/run.sh quick   tiny sizes, one repetition: checks that the harness
#                        works (CI runs this; no thresholds); writes nothing
#                        into the repository
#
# Each scenario family is one script beside this one, run in turn:
#   compare.sh  local push: snapsync vs rsync -a vs cp -a
#   ssh.sh      push over a loopback sshd it starts: snapsync vs rsync -e ssh
#   bidi.sh     two-way sync, local and over a loopback sshd: snapsync bidi
#               vs unison -batch
#   memory.sh   no-change re-sync of many tiny files: peak RSS per entry
#   continuous.sh  `push -C`, local and over a loopback sshd: write -> visible
#               latency at a steady write rate, and a burst of new files;
#               beside lsyncd (delay = 0) locally
#   wan.sh      push through the WAN test bed (200 Mbit/s, 100 ms round
#               trip, loss 0 / 0.5% / 2%): snapsync over QUIC and over ssh
#               vs rsync -e ssh, one session and two at once (needs root;
#               says SKIPPED otherwise)
# A new family is one more script here and one more line in SCRIPTS below.
#
# Settings pass through to the scripts (FILES, REPS, CACHE, BIG, SNAPSYNC...).
# SNAPSYNC defaults to a release build of this checkout.
set -euo pipefail

MODE=${1:-all}
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
SCRIPTS=(compare.sh ssh.sh bidi.sh memory.sh continuous.sh wan.sh)

if [[ -z "${SNAPSYNC:-}" ]]; then
    (cd "$REPO" && cargo build --release --quiet)
    SNAPSYNC="$REPO/target/release/snapsync"
fi
export SNAPSYNC

RESULTS=$(mktemp -d /tmp/snapsync-bench-results.XXXXXX)
trap 'rm -rf "$RESULTS"' EXIT

run_family() { # script, then VAR=VALUE settings
    local script=$1
    shift
    echo "== bench/$script ($*)" >&2
    env "$@" OUT="$RESULTS/${script%.sh}.md" "$BENCH_DIR/$script" >&2
}

case "$MODE" in
    quick)
        run_family compare.sh FILES=${FILES:-300} REPS=1 CACHE=warm WORK=/tmp/snapsync-bench-quick
        run_family ssh.sh FILES=${FILES:-300} BIG=4M REPS=1 CACHE=warm RENAME_FILES=50 WORK=/tmp/snapsync-ssh-quick
        run_family bidi.sh FILES=${FILES:-300} REPS=1 CACHE=warm WORK=/tmp/snapsync-bidi-quick
        run_family memory.sh FILES=2000 REPS=1 WORK=/tmp/snapsync-memory-quick
        run_family continuous.sh FILES=300 COUNT=50 BURST=500 REPS=1 WORK=/tmp/snapsync-continuous-quick
        run_family wan.sh RATE_MBIT=20 RTT_MS=20 LOSSES="0 0.02" BIG=2M SMALL_FILES=100 REPS=1 \
            WORK=/tmp/snapsync-wan-quick
        for script in "${SCRIPTS[@]}"; do
            [[ -s "$RESULTS/${script%.sh}.md" ]] || { echo "run.sh: $script wrote no report" >&2; exit 1; }
        done
        echo "bench: ${#SCRIPTS[@]} passed, 0 failed"
        ;;
    all)
        run_family compare.sh FILES=${FILES:-100000} REPS=${REPS:-3} CACHE=${CACHE:-auto}
        run_family ssh.sh FILES=${FILES:-100000} BIG=${BIG:-2G} REPS=${REPS:-3} CACHE=${CACHE:-auto}
        run_family bidi.sh FILES=${FILES:-100000} REPS=${REPS:-3} CACHE=${CACHE:-auto}
        run_family memory.sh FILES=${MEMORY_FILES:-1000000} REPS=${REPS:-3}
        run_family continuous.sh FILES="${FILES:-100000}" REPS="${REPS:-3}"
        # 200 MB at ~100 Mbit/s is ~16 s a run; lossy TCP takes longer
        run_family wan.sh REPS="${WAN_REPS:-1}"
        out="$REPO/BENCHMARKS.md"
        {
            echo "<!-- results:start (written by bench/run.sh all; do not edit by hand) -->"
            echo
            echo "Measured $(date -u +%Y-%m-%dT%H:%MZ) with \`bench/run.sh all\` at commit $(git -C "$REPO" rev-parse --short HEAD)."
            for script in "${SCRIPTS[@]}"; do
                echo
                # a report's headings two levels down: its title becomes ###
                sed -E 's/^(#+) /\1## /' "$RESULTS/${script%.sh}.md"
            done
            echo
            echo "<!-- results:end -->"
        } > "$RESULTS/section.md"
        python3 - "$out" "$RESULTS/section.md" <<'PY'
import re, sys
path, section = sys.argv[1], open(sys.argv[2]).read()
try:
    text = open(path).read()
except FileNotFoundError:
    text = "# Benchmarks\n\n<!-- results:start -->\n<!-- results:end -->\n"
pattern = re.compile(r"<!-- results:start.*?<!-- results:end -->\n?", re.S)
if not pattern.search(text):
    text += "\n" + section
else:
    text = pattern.sub(lambda _: section, text, count=1)
open(path, "w").write(text)
PY
        echo "results written to $out" >&2
        ;;
    *)
        echo "usage: bench/run.sh all|quick" >&2
        exit 2
        ;;
esac
