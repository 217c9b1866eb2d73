#!/usr/bin/env bash
# What the QUIC data channel costs against the ssh stream on loopback:
# throughput and CPU of `snapsync push --transport quic` and `--transport
# ssh` through the same private sshd on 127.0.0.1 (both ends on this
# machine, no delay, no loss: this measures the cost per byte, not the
# behaviour on a long link; bench/wan.sh does that through an emulated one).
#
# Usage: bench/transports.sh         (from anywhere; paths resolve to the repo)
#   Settings (environment variables; each also accepted as --name VALUE):
#     BIG=200M         size of the single big file of scenario 1
#     FILES=10000      number of files of scenario 2 ...
#     SIZE=16K         ... each of this size
#     REPS=3           timed repetitions per transport per scenario
#     WORK=/tmp/snapsync-bench-transports   scratch dir (deleted at the end unless KEEP=1)
#     KEEP=0           1 = keep WORK afterwards
#     OUT=bench/results-transports.md   markdown report (also printed to stdout)
#     SNAPSYNC=        binary to test (both ends); default: `cargo build
#                      --release` and use target/release/snapsync
#
# Scenarios (transports interleave quic ssh quic ssh ...; each run pushes
# into a target that does not exist; warm page cache):
#   1. big file      one BIG-byte pseudo-random file
#   2. small files   FILES files of SIZE bytes each, pseudo-random, in 100
#                    directories
# Every run is verified (bench/gen_tree.py compare). Reported per run:
# wall time; CPU time of everything the session ran, on both hosts: the
# near snapsync and its ssh client (`/usr/bin/time`), and the sshd session
# with the far snapsync under it (the growth of the sshd listener's
# children's user + system time in /proc/PID/stat, which counts each
# session once it has ended); peak RSS of each snapsync. From these:
# MB/s (10^6 bytes of file data per second) and CPU seconds per GB of file
# data, and the share of one core per 100 Mbit/s.

set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$BENCH_DIR/lib.sh"

SETTINGS=(BIG FILES SIZE REPS WORK KEEP OUT SNAPSYNC)
parse_settings "$@"
BIG=${BIG:-200M}
FILES=${FILES:-10000}
SIZE=${SIZE:-16K}
REPS=${REPS:-3}
WORK=${WORK:-/tmp/snapsync-bench-transports}
KEEP=${KEEP:-0}
resolve_out "$BENCH_DIR/results-transports.md"
need_positive_int FILES REPS
BIG_BYTES=$(numfmt --from=iec "$BIG") || die "BIG must be a size like 200M"
SIZE_BYTES=$(numfmt --from=iec "$SIZE") || die "SIZE must be a size like 16K"

need_common_tools
need_ssh_tools
select_snapsync
prepare_work
[[ "$WORK" != *[[:space:]]* ]] || die "WORK may not contain white space: $WORK"
trap cleanup_work EXIT
start_sshd "$WORK/ssh"
measure_ssh

REMOTE_TIME="$WORK/remote-time.out"
RESULTS="$WORK/results.tsv"
: >"$RESULTS"

# --- the trees -----------------------------------------------------------------
log "making the trees: one file of $BIG; $FILES files of $SIZE"
python3 - "$WORK" "$BIG_BYTES" "$FILES" "$SIZE_BYTES" <<'PY'
import os, random, sys
work, big, files, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(1)
os.makedirs(f"{work}/big-src")
with open(f"{work}/big-src/big.bin", "wb") as f:
    left = big
    while left:
        n = min(left, 1 << 20)
        f.write(rng.randbytes(n))
        left -= n
for i in range(files):
    d = f"{work}/small-src/d{i % 100:02d}"
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/f{i:06d}.bin", "wb") as f:
        f.write(rng.randbytes(size))
PY
# shellcheck disable=SC2034  # read as ${!data_var} in the report
DATA_big=$BIG_BYTES
# shellcheck disable=SC2034
DATA_small=$((FILES * SIZE_BYTES))

# Children's user + system time of the sshd listener, in clock ticks.
sshd_child_ticks() { awk '{print $16 + $17}' "/proc/$SSHD_PID/stat"; }
TICK=$(getconf CLK_TCK)

run_one() { # scenario transport rep
    local scenario=$1 transport=$2 rep=$3 src target before after far_rss near
    src="$WORK/$scenario-src"
    # A new target each time (a new session): the last one is removed.
    target="$WORK/targets/$scenario-$transport-$rep"
    rm -rf "$WORK/targets"
    mkdir -p "$WORK/targets"
    before=$(sshd_child_ticks)
    /usr/bin/time -f '%e %U %S %M' -o "$WORK/near-time.out" -- \
        "$SNAPSYNC" push --json --transport "$transport" --rsh "$RSH" \
        --remote-command "/usr/bin/time -f %M -o $REMOTE_TIME $SNAPSYNC" \
        "$src" "$USERHOST:$target" \
        >"$WORK/logs/$scenario-$transport-$rep.json" 2>"$WORK/logs/$scenario-$transport-$rep.err" </dev/null ||
        die "$scenario over $transport failed: $(cat "$WORK/logs/$scenario-$transport-$rep.err")"
    # The sshd session is counted once it has ended.
    for _ in $(seq 50); do
        after=$(sshd_child_ticks)
        [[ "$after" != "$before" ]] && break
        sleep 0.1
    done
    read -r SECS NEAR_USER NEAR_SYS NEAR_RSS <<<"$(tail -n 1 "$WORK/near-time.out")"
    far_rss=$(far_end_rss "$REMOTE_TIME")
    near=$(summary_fields "$WORK/logs/$scenario-$transport-$rep.json" transport)
    [[ "$near" == "$transport" ]] || die "$scenario: asked for $transport, ran over $near"
    python3 "$GEN" compare "$src" "$target" >/dev/null ||
        die "$scenario over $transport: TARGET DIFFERS FROM SOURCE (kept in $WORK)"
    local cpu
    cpu=$(awk -v u="$NEAR_USER" -v s="$NEAR_SYS" -v t="$((after - before))" -v hz="$TICK" \
        'BEGIN {printf "%.2f", u + s + t / hz}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$scenario" "$transport" "$rep" "$SECS" "$cpu" \
        "$NEAR_RSS" "$far_rss" >>"$RESULTS"
    log "$scenario $transport rep $rep: ${SECS}s wall, ${cpu}s CPU, RSS near ${NEAR_RSS} KiB far ${far_rss} KiB"
}

LOAD_START=$(loadavg)
for scenario in big small; do
    for ((r = 1; r <= REPS; r++)); do
        for transport in quic ssh; do run_one "$scenario" "$transport" "$r"; done
    done
done
LOAD_END=$(loadavg)
ok=1

# --- report --------------------------------------------------------------------
{
    echo "## Transports on loopback: QUIC data channel vs ssh stream"
    echo
    report_run_lines "$LOAD_START" "$LOAD_END"
    echo "- snapsync: $(snapsync_version) ($SNAPSYNC_ORIGIN)"
    echo "- Transport: $(ssh_transport_desc)"
    echo "- Scenarios: push of one $BIG pseudo-random file; push of $FILES files of $SIZE; into a new target, warm cache, $REPS repetitions, medians."
    echo "- CPU: everything on both hosts (near snapsync + ssh client, sshd session + far snapsync)."
    echo
    echo "| scenario | transport | wall s | MB/s | CPU s | CPU s per GB | core % per 100 Mbit/s | peak RSS near / far MiB |"
    echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    for scenario in big small; do
        data_var="DATA_$scenario"
        for transport in quic ssh; do
            awk -F'\t' -v s="$scenario" -v t="$transport" -v bytes="${!data_var}" '
                $1 == s && $2 == t { n++; wall[n] = $4; cpu[n] = $5; if ($6 > rn) rn = $6; if ($7 > rf) rf = $7 }
                function median(a, n,   i, j, x) {
                    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { x = a[i]; a[i] = a[j]; a[j] = x }
                    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
                }
                END {
                    w = median(wall, n); c = median(cpu, n)
                    mbs = bytes / w / 1e6
                    printf "| %s | %s | %.2f | %.1f | %.2f | %.1f | %.1f | %.0f / %.0f |\n",
                        s, t, w, mbs, c, c / (bytes / 1e9), (c / w * 100) / (mbs * 8 / 100), rn / 1024, rf / 1024
                }' "$RESULTS"
        done
    done
} >"$WORK/report.md"
publish_report
