#!/usr/bin/env bash
# Push over a long, lossy link: snapsync over QUIC (`--transport quic`),
# snapsync over ssh and `rsync -a -e ssh`, in one run, through the WAN test
# bed: two network namespaces joined by a userspace router
# (examples/wan_router.rs) that adds one-way delay, a rate limit, a drop-tail
# queue and seeded random loss, with a private sshd in the far namespace.
# Both ends run on this machine; all traffic stays between the namespaces.
#
# Usage: bench/wan.sh                (from anywhere; paths resolve to the repo)
#   Settings (environment variables; each also accepted as --name VALUE):
#     RATE_MBIT=200    link rate, each direction
#     RTT_MS=100       round trip (the router delays each direction by half)
#     LOSSES="0 0.005 0.02"  random loss probabilities (both directions);
#                      one bed per value, all scenarios run on each
#     QUEUE_BYTES=     the router's drop-tail queue per direction; default
#                      1.5 x the bandwidth-delay product
#     TCP_CC=          TCP congestion control in both namespaces (default:
#                      the kernel's; a namespace may only pick one of
#                      net.ipv4.tcp_allowed_congestion_control)
#     BIG=200M         size of the single big file (K/M/G = KiB/MiB/GiB)
#     SMALL_FILES=10000  files in the small-file tree ...
#     SMALL_SIZE=16K   ... each this size
#     TOOLS="quic ssh rsync"  which of snapsync --transport quic, snapsync over
#                      ssh and rsync -e ssh to run, interleaved in this order
#     CONCURRENT=1     1 = also two sessions of each tool at once, each
#                      pushing the big file, sharing the link
#     REPS=1           timed repetitions per tool per scenario
#     SEED=1           seed of file contents and of the router's loss
#     WORK=/tmp/snapsync-bench-wan   scratch dir (deleted at the end unless KEEP=1)
#     KEEP=0           1 = keep WORK afterwards
#     OUT=bench/results-wan.md   markdown report (also printed to stdout)
#     SNAPSYNC=        binary to test (both ends); default: `cargo build
#                      --release` and use target/release/snapsync
#     WAN_ROUTER=      router binary; default: `cargo build --example
#                      wan_router`, release unless SNAPSYNC is this checkout's
#                      debug build
#
# Needs root, /dev/net/tun and iproute2 (installed with apt-get when
# missing, as are openssh, rsync, time and openssl); where the bed cannot be
# set up it says "SKIPPED: ..." and writes a report saying so.
#
# Scenarios, on each loss rate (every push goes into a target that does not
# exist, and is verified against the source afterwards):
#   big      one BIG-byte pseudo-random file
#   small    SMALL_FILES files of SMALL_SIZE pseudo-random bytes
#   pair     two sessions of one tool at once, each pushing the big file
#            into its own target (each session's rate, and their sum)
# snapsync --transport quic runs only when `snapsync push --help` lists
# --transport; otherwise its rows say it is not available in this build.
# snapsync over ssh is given `--transport ssh` when the option exists (the
# default, auto, would pick QUIC on this link).
#
# Reported per run: throughput (data bytes x 8 / wall time, which includes
# the ssh login and the tool's own start, as a user sees it) in Mbit/s and
# as a share of the link rate; CPU (user + system) of the near side (the tool
# and its ssh client) plus the far side (the sshd that served the run, its
# session and the far tool), in ms per Mbit moved; and the router's counters
# in the direction of the data (near -> far): packets dropped by queue
# overflow (as a share of the packets that reached the queue), by random loss,
# and by the tun device's own kernel queue (the router reading too slowly).

set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$BENCH_DIR/lib.sh"

SETTINGS=(RATE_MBIT RTT_MS LOSSES QUEUE_BYTES TCP_CC BIG SMALL_FILES SMALL_SIZE TOOLS CONCURRENT
    REPS SEED WORK KEEP OUT SNAPSYNC WAN_ROUTER)
parse_settings "$@"
RATE_MBIT=${RATE_MBIT:-200}
RTT_MS=${RTT_MS:-100}
LOSSES=${LOSSES:-0 0.005 0.02}
QUEUE_BYTES=${QUEUE_BYTES:-}
TCP_CC=${TCP_CC:-}
BIG=${BIG:-200M}
SMALL_FILES=${SMALL_FILES:-10000}
SMALL_SIZE=${SMALL_SIZE:-16K}
TOOLS=${TOOLS:-quic ssh rsync}
CONCURRENT=${CONCURRENT:-1}
REPS=${REPS:-1}
SEED=${SEED:-1}
WORK=${WORK:-/tmp/snapsync-bench-wan}
KEEP=${KEEP:-0}
resolve_out "$BENCH_DIR/results-wan.md"
need_positive_int SMALL_FILES REPS RTT_MS
if ! [[ "$RATE_MBIT" =~ ^[0-9]+(\.[0-9]+)?$ ]] || ! awk -v r="$RATE_MBIT" 'BEGIN { exit !(r > 0) }'; then
    die "RATE_MBIT must be a positive number"
fi
for loss in $LOSSES; do
    awk -v p="$loss" 'BEGIN { exit !(p ~ /^[0-9.]+$/ && p >= 0 && p < 1) }' ||
        die "LOSSES must be probabilities between 0 and 1 (got $loss)"
done
for tool in $TOOLS; do
    case "$tool" in quic|ssh|rsync) ;; *) die "TOOLS may name quic, ssh and rsync (got $tool)" ;; esac
done
BIG_BYTES=$(numfmt --from=iec "$BIG" 2>/dev/null) || die "BIG must be a size like 200M"
SMALL_BYTES=$(numfmt --from=iec "$SMALL_SIZE" 2>/dev/null) || die "SMALL_SIZE must be a size like 16K"

# Write a report that says the benchmark was skipped, and why.
skip() { # why
    echo "SKIPPED: $SCRIPT: $1" >&2
    mkdir -p "$(dirname "$OUT")"
    {
        echo "# snapsync over a long, lossy link — WAN test bed benchmark"
        echo
        echo "SKIPPED on $(date -u '+%Y-%m-%d %H:%M UTC'): $1"
    } >"$OUT"
    cat "$OUT"
    exit 0
}

[[ $(id -u) -eq 0 ]] || skip "not root (the WAN test bed needs network namespaces and tun devices)"
[[ -c /dev/net/tun ]] || skip "no /dev/net/tun"
need_pkg ip iproute2
prepare_ssh_comparison

# Use WAN_ROUTER, or build the example in the profile SNAPSYNC comes from.
select_router() {
    local profile_args=(--release) dir=release
    if [[ -z "${WAN_ROUTER:-}" ]]; then
        if [[ "$SNAPSYNC" == "$REPO/target/debug/"* ]]; then profile_args=(); dir=debug; fi
        log "cargo build ${profile_args[*]} --example wan_router (may wait for the build lock)"
        (cd "$REPO" && cargo build --quiet "${profile_args[@]}" --example wan_router) ||
            die "cargo build --example wan_router failed"
        WAN_ROUTER="$REPO/target/$dir/examples/wan_router"
    fi
    [[ -x "$WAN_ROUTER" ]] || die "router binary not found: $WAN_ROUTER"
}
select_router

QUIC=0
if "$SNAPSYNC" push --help 2>/dev/null | grep -q -- '--transport'; then QUIC=1; fi
QUIC_MISSING="not available in this build (\`snapsync push --help\` lists no --transport)"

prepare_work
[[ "$WORK" != *[[:space:]]* ]] || die "WORK may not contain white space: $WORK"
RESULTS="$WORK/results.tsv"   # loss scenario tool rep secs cpu_near cpu_far bytes stats_before stats_after
LOGINS="$WORK/logins.tsv"     # loss login-seconds tcp_cc queue_bytes
: >"$RESULTS"
: >"$LOGINS"
ROUTER_PID=""

# --- the bed -------------------------------------------------------------------

# Start the router with random loss $1 and the far sshd (sets BED, ROUTER_PID,
# NEAR_NS, FAR_NS, FAR_IP, BED_QUEUE, BED_CC and, through start_sshd, RSH...).
start_bed() { # loss
    local i ready args=(--rate-mbit "$RATE_MBIT" --rtt-ms "$RTT_MS" --loss "$1" --seed "$SEED")
    [[ -z "$QUEUE_BYTES" ]] || args+=(--queue-bytes "$QUEUE_BYTES")
    [[ -z "$TCP_CC" ]] || args+=(--tcp-congestion "$TCP_CC")
    BED="$WORK/bed-$1"
    mkdir -p "$BED"
    # Made before the router starts: the loop below may read it before the
    # background job's redirection has made it.
    : >"$BED/ready"
    "$WAN_ROUTER" "${args[@]}" --stats "$BED/stats.json" </dev/null >"$BED/ready" 2>"$BED/router.log" &
    ROUTER_PID=$!
    for ((i = 0; i < 300; i++)); do
        ready=$(sed -n 's/^ready //p' "$BED/ready")
        [[ -z "$ready" ]] || break
        if ! kill -0 "$ROUTER_PID" 2>/dev/null; then
            wait "$ROUTER_PID" && i=0 || i=$?
            ROUTER_PID=""
            [[ $i -ne 77 ]] || skip "the WAN test bed cannot run here: $(cat "$BED/router.log")"
            die "wan_router did not start; its log:"$'\n'"$(cat "$BED/router.log")"
        fi
        sleep 0.1
    done
    [[ -n "$ready" ]] || die "wan_router did not get ready within 30 s"
    field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<" $ready"; }
    NEAR_NS=$(field near_ns)
    FAR_NS=$(field far_ns)
    FAR_IP=$(field far_ip)
    BED_QUEUE=$(field queue_bytes)
    BED_CC=$(field tcp_cc)
    log "bed up: $RATE_MBIT Mbit/s, RTT $RTT_MS ms, loss $1, queue $BED_QUEUE bytes, TCP $BED_CC ($NEAR_NS -> $FAR_NS)"
    start_sshd "$BED/ssh" "$FAR_IP" "$FAR_NS" "$NEAR_NS"
    measure_ssh
    printf '%s\t%s\t%s\t%s\n' "$1" "$SSH_LOGIN" "$BED_CC" "$BED_QUEUE" >>"$LOGINS"
}

# Stop the far sshd and the router, which deletes its namespaces.
stop_bed() {
    stop_sshd
    if [[ -n "$ROUTER_PID" ]]; then
        kill "$ROUTER_PID" 2>/dev/null || true
        wait "$ROUTER_PID" 2>/dev/null || true
        ROUTER_PID=""
    fi
}
trap 'stop_bed; cleanup_work' EXIT

# Copy the router's counters, fresh (SIGUSR1 makes it write them), to $1.
router_stats() { # file
    local seq0 seq i
    stats_seq() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["seq"])' "$BED/stats.json" 2>/dev/null || echo 0; }
    seq0=$(stats_seq)
    kill -USR1 "$ROUTER_PID"
    for ((i = 0; i < 250; i++)); do
        seq=$(stats_seq)
        [[ $seq -le $seq0 ]] || break
        sleep 0.02
    done
    cp "$BED/stats.json" "$1"
}

# CPU seconds the far sshd and everything it started have used so far (the
# runs' sessions are counted once they have ended and been waited for).
far_cpu() {
    local i
    for ((i = 0; i < 100; i++)); do
        [[ -n "$(cat "/proc/$SSHD_PID/task/$SSHD_PID/children" 2>/dev/null)" ]] || break
        sleep 0.05
    done
    awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15 + $16 + $17) / hz }' "/proc/$SSHD_PID/stat"
}

# --- data ----------------------------------------------------------------------

BIG_SRC="$WORK/big-src"
SMALL_SRC="$WORK/small-src"
generate_data() {
    generate_big_file "$BIG_SRC/big.bin" "$BIG_BYTES"
    refresh_manifest "$BIG_SRC" "$WORK/big.manifest"
    log "generating $SMALL_FILES files of $SMALL_BYTES bytes in $SMALL_SRC"
    python3 "$GEN" gen "$SMALL_SRC" --files "$SMALL_FILES" --seed "$SEED" \
        --min-size "$SMALL_BYTES" --max-size "$SMALL_BYTES" >/dev/null
    refresh_manifest "$SMALL_SRC" "$WORK/small.manifest"
}

# dataset -> CUR_SRC CUR_MANIFEST CUR_BYTES
set_data() {
    case "$1" in
        big) CUR_SRC=$BIG_SRC; CUR_MANIFEST="$WORK/big.manifest"; CUR_BYTES=$BIG_BYTES ;;
        small) CUR_SRC=$SMALL_SRC; CUR_MANIFEST="$WORK/small.manifest"; CUR_BYTES=$((SMALL_FILES * SMALL_BYTES)) ;;
    esac
}

# tool target state -> sets CMD: the push, run in the near namespace.
tool_cmd() {
    local transport=()
    case "$1" in
        quic) transport=(--transport quic) ;;
        ssh) if [[ $QUIC -eq 1 ]]; then transport=(--transport ssh); fi ;;
    esac
    case "$1" in
        quic|ssh) CMD=("$SNAPSYNC" push "${transport[@]}" --json --state-dir "$3"
            --rsh "$RSH" --remote-command "$SNAPSYNC" "$CUR_SRC" "$USERHOST:$2") ;;
        rsync) CMD=("$RSYNC_BIN" -a --delete --stats -e "$RSH" "$CUR_SRC/" "$USERHOST:$2/") ;;
    esac
    CMD=(ip netns exec "$NEAR_NS" "${CMD[@]}")
}

# Check a run's output and its target; abort the benchmark when wrong.
check_run() { # tool label out-file target
    if [[ $1 != rsync ]]; then
        summary_fields "$3" bytes_sent >/dev/null || die "snapsync ($2): see $3"
    fi
    verify_target "$1" "$2" "$CUR_SRC" "$4" "$CUR_MANIFEST"
}

# --- runs ----------------------------------------------------------------------

# run_one loss dataset tool rep
run_one() {
    local loss=$1 data=$2 tool=$3 rep=$4 base target state cpu0 cpu1 label
    label="loss $loss, $data, rep $rep"
    if [[ $tool == quic && $QUIC -eq 0 ]]; then
        log "$label  snapsync --transport quic: $QUIC_MISSING"
        printf '%s\t%s\t%s\t%s\tNA\tNA\tNA\t%s\t-\t-\n' "$loss" "$data" "$tool" "$rep" "$CUR_BYTES" >>"$RESULTS"
        return
    fi
    base="$WORK/logs/$loss-$data-$tool-$rep"
    target="$WORK/dst-$tool-$data"
    state="$WORK/state-$tool-$data"
    rm -rf "$target" "$state"
    tool_cmd "$tool" "$target" "$state"
    printf '%q ' "${CMD[@]}" >"$base.cmd"
    router_stats "$base.before.json"
    cpu0=$(far_cpu)
    if ! timed_run "$base.out" "$base.err" "${CMD[@]}"; then
        cat "$base.err" >&2
        tail -n 20 "$SSHDIR/sshd.log" >&2
        die "$tool failed ($label): ${CMD[*]}"
    fi
    cpu1=$(far_cpu)
    router_stats "$base.after.json"
    check_run "$tool" "$label" "$base.out" "$target"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$loss" "$data" "$tool" "$rep" "$SECS" "$CPU_SECS" \
        "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.2f", b - a }')" "$CUR_BYTES" \
        "$base.before.json" "$base.after.json" >>"$RESULTS"
    log "$label  $tool: ${SECS}s ($(awk -v b="$CUR_BYTES" -v s="$SECS" 'BEGIN { printf "%.1f", b * 8 / s / 1e6 }') Mbit/s) — target verified"
}

# run_pair loss tool rep: two sessions of one tool at once, each pushing the big file.
run_pair() {
    local loss=$1 tool=$2 rep=$3 base s pids=() target label secs
    label="loss $loss, two sessions at once, rep $rep"
    set_data big
    if [[ $tool == quic && $QUIC -eq 0 ]]; then
        log "$label  snapsync --transport quic: $QUIC_MISSING"
        for s in 1 2; do
            printf '%s\tpair%s\t%s\t%s\tNA\tNA\tNA\t%s\t-\t-\n' "$loss" "$s" "$tool" "$rep" "$CUR_BYTES" >>"$RESULTS"
        done
        return
    fi
    base="$WORK/logs/$loss-pair-$tool-$rep"
    router_stats "$base.before.json"
    for s in 1 2; do
        target="$WORK/dst-$tool-pair$s"
        rm -rf "$target" "$WORK/state-$tool-pair$s"
        tool_cmd "$tool" "$target" "$WORK/state-$tool-pair$s"
        printf '%q ' "${CMD[@]}" >"$base.$s.cmd"
        /usr/bin/time -f '%e' -o "$base.$s.time" -- "${CMD[@]}" >"$base.$s.out" 2>"$base.$s.err" </dev/null &
        pids+=($!)
    done
    for s in 1 2; do
        wait "${pids[$((s - 1))]}" || { cat "$base.$s.err" >&2; die "$tool failed ($label, session $s)"; }
    done
    router_stats "$base.after.json"
    for s in 1 2; do
        check_run "$tool" "$label, session $s" "$base.$s.out" "$WORK/dst-$tool-pair$s"
        secs=$(tail -n 1 "$base.$s.time")
        printf '%s\tpair%s\t%s\t%s\t%s\tNA\tNA\t%s\t%s\t%s\n' "$loss" "$s" "$tool" "$rep" "$secs" "$CUR_BYTES" \
            "$base.before.json" "$base.after.json" >>"$RESULTS"
        log "$label  $tool session $s: ${secs}s — target verified"
    done
}

# --- go ------------------------------------------------------------------------
load_start=$(loadavg)
generate_data
[[ $QUIC -eq 1 ]] || log "snapsync --transport quic: $QUIC_MISSING"
for loss in $LOSSES; do
    start_bed "$loss"
    for ((r = 1; r <= REPS; r++)); do
        for data in big small; do
            set_data "$data"
            for tool in $TOOLS; do run_one "$loss" "$data" "$tool" "$r"; done
        done
        if [[ $CONCURRENT -eq 1 ]]; then
            for tool in $TOOLS; do run_pair "$loss" "$tool" "$r"; done
        fi
    done
    stop_bed
done
load_end=$(loadavg)

# --- report --------------------------------------------------------------------
{
    echo "# snapsync over a long, lossy link — WAN test bed benchmark"
    echo
    report_run_lines "$load_start" "$load_end" "; both ends and the router run on it and share its CPUs"
    echo "- Versions: snapsync $(snapsync_version); $(rsync --version | version_line); $(ssh -V 2>&1)"
    echo "- snapsync binary (both ends): $SNAPSYNC — $SNAPSYNC_ORIGIN"
    echo "- Link: the WAN test bed (\`examples/wan_router.rs\`, binary $WAN_ROUTER): two network namespaces joined by a userspace router; $RATE_MBIT Mbit/s each direction, round trip $RTT_MS ms ($(awk -v r="$RTT_MS" 'BEGIN { print r / 2 }') ms one-way delay each direction), drop-tail queue of $(cut -f4 "$LOGINS" | sort -u | paste -sd/) bytes per direction ($([[ -n "$QUEUE_BYTES" ]] && echo "set by QUEUE_BYTES" || echo "1.5 × the bandwidth-delay product")), random loss in both directions as given per row (seed $SEED), MTU 1500. TCP congestion control in the namespaces: $(cut -f3 "$LOGINS" | sort -u | paste -sd/)$([[ -n "$TCP_CC" ]] && echo " (set by TCP_CC)" || echo " (the kernel's default here)")."
    echo "- Transport: a private \`sshd\` in the far namespace on $FAR_IP:22 (ed25519 keys made for the run), logging in as $(id -un), with \`$(sed "s|$SSHDIR|KEYDIR|g; s|$NEAR_NS|NEAR_NS|g" <<<"$RSH")\`; negotiated client->server cipher: $SSH_KEX. One login running \`true\` takes (median of 5) $(awk -F'\t' '{ printf "%s%s s at loss %s", (NR > 1 ? ", " : ""), $2, $1 }' "$LOGINS"); every run of every tool includes one."
    echo "- Data: one file of $BIG_BYTES bytes (AES-128-CTR keystream, incompressible); a tree of $SMALL_FILES files of $SMALL_BYTES bytes ($((SMALL_FILES * SMALL_BYTES)) bytes, pseudo-random, seed $SEED). Every push goes into a target that does not exist and is verified against the source afterwards (path, type, mode, size, mtime to the ns, content hash)."
    echo "- Commands (each run in the near namespace with \`ip netns exec\`, timed with \`/usr/bin/time\`):"
    if [[ $QUIC -eq 1 ]]; then
        echo "  - snapsync quic: \`snapsync push --transport quic --json --state-dir STATE --rsh '<ssh command>' --remote-command $SNAPSYNC SRC $(id -un)@$FAR_IP:DST\`"
        echo "  - snapsync ssh: the same with \`--transport ssh\`"
    else
        echo "  - snapsync quic: $QUIC_MISSING — its rows are empty"
        echo "  - snapsync ssh: \`snapsync push --json --state-dir STATE --rsh '<ssh command>' --remote-command $SNAPSYNC SRC $(id -un)@$FAR_IP:DST\` (this build has only the ssh transport)"
    fi
    echo "  - rsync: \`rsync -a --delete --stats -e '<ssh command>' SRC/ $(id -un)@$FAR_IP:DST/\`"
    echo "- Repetitions: $REPS per tool per scenario, tools interleaved ($TOOLS); medians with min–max."
    echo "- Throughput = data bytes × 8 / wall time (ssh login and the tool's start included, as a user sees it); % of link = of $RATE_MBIT Mbit/s. CPU = user + system time of the near side (the tool and its ssh client) plus the far side (the sshd that served the run, its session and the far tool), in ms per Mbit moved (= ms of CPU per second for each Mbit/s; 5 ms/Mbit at 200 Mbit/s is one core). Router counters are of the near → far direction (the data's), between just before and just after the run: queue-overflow drops as a share of the packets that reached the queue (the loss the transfer itself causes), drops by random loss, and drops of the near tun's kernel queue (the router too slow; should be 0)."
    echo
    python3 - "$RESULTS" "$RATE_MBIT" "$QUIC" "$QUIC_MISSING" "$LOGINS" <<'PY'
import json, statistics, sys
path, rate, quic, missing = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
# the median ssh login (running `true`) measured on each bed: every run pays one
login = {l.split("\t")[0]: float(l.split("\t")[1]) for l in open(sys.argv[5]).read().splitlines() if l}
rows = [l.split("\t") for l in open(path).read().splitlines() if l]
names = {"quic": "snapsync quic", "ssh": "snapsync ssh", "rsync": "rsync"}
def delta(before, after):
    if before == "-":
        return None
    a, b = json.load(open(before))["to_far"], json.load(open(after))["to_far"]
    return {k: b[k] - a[k] for k in a if isinstance(a[k], int)}
runs = {}
for loss, data, tool, rep, secs, cpu_near, cpu_far, nbytes, before, after in rows:
    runs.setdefault((loss, data, tool), []).append(dict(
        secs=None if secs == "NA" else float(secs),
        cpu=None if cpu_near == "NA" else float(cpu_near) + float(cpu_far),
        bytes=int(nbytes), router=delta(before, after)))
def mbit(r):
    return r["bytes"] * 8 / r["secs"] / 1e6
def fmt_rates(rs):
    v = [mbit(r) for r in rs]
    med = statistics.median(v)
    span = f" ({min(v):.1f}–{max(v):.1f})" if len(v) > 1 else ""
    return med, f"{med:.1f}{span}"
def router_cells(rs):
    d = [r["router"] for r in rs if r["router"]]
    if not d:
        return "–", "–", "–"
    last = d[-1]
    pct = 100 * last["dropped_queue"] / max(1, last["packets_in"] - last["dropped_loss"] - last["dropped_udp"] - last["dropped_other"])
    return (f"{pct:.2f}% ({last['dropped_queue']:,} of {last['packets_in']:,})",
            f"{last['dropped_loss']:,}", f"{last['tun_tx_dropped']:,}")
losses = list(dict.fromkeys(k[0] for k in runs))
tools = list(dict.fromkeys(k[2] for k in runs))
print("## One session")
print()
print("| loss | data | tool | Mbit/s (min–max) | % of link | after login: Mbit/s, % of link | wall s | CPU ms per Mbit | ÷ rsync | queue-overflow drops | random-loss drops | tun drops |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for loss in losses:
    for data, dname in (("big", "big file"), ("small", "small files")):
        ref = runs.get((loss, data, "rsync"))
        ref_rate = fmt_rates(ref)[0] if ref and ref[0]["secs"] else None
        for tool in tools:
            rs = runs.get((loss, data, tool))
            if not rs:
                continue
            label = f"| {float(loss) * 100:g}% | {dname} | {names[tool]} |"
            if rs[0]["secs"] is None:
                print(f"{label} {missing} | | | | | | | | |")
                continue
            med, cell = fmt_rates(rs)
            after = statistics.median(r["bytes"] * 8 / max(0.01, r["secs"] - login.get(loss, 0)) / 1e6 for r in rs)
            cpu = statistics.median(r["cpu"] * 1000 / (r["bytes"] * 8 / 1e6) for r in rs)
            wall = statistics.median(r["secs"] for r in rs)
            vs = f"{med / ref_rate:.2f}×" if ref_rate and tool != "rsync" else ""
            q, l, t = router_cells(rs)
            print(f"{label} {cell} | {100 * med / rate:.0f}% | {after:.1f}, {100 * after / rate:.0f}% | {wall:.2f} | {cpu:.2f} | {vs} | {q} | {l} | {t} |")
print()
print("÷ rsync: throughput relative to rsync's in the same row group (above 1: faster).")
print("After login: the same bytes over the wall time less one ssh login (the bed's median, above),")
print("which every run of every tool pays before its first byte of data.")
print("Router counters are of the last repetition.")
print()
pairs = [k for k in runs if k[1].startswith("pair")]
if pairs:
    print("## Two sessions at once, sharing the link (each pushes the big file)")
    print()
    print("| loss | tool | session 1 Mbit/s | session 2 Mbit/s | sum Mbit/s | % of link | queue-overflow drops |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for loss in losses:
        for tool in tools:
            s1, s2 = runs.get((loss, "pair1", tool)), runs.get((loss, "pair2", tool))
            if not s1 or not s2:
                continue
            label = f"| {float(loss) * 100:g}% | {names[tool]} |"
            if s1[0]["secs"] is None:
                print(f"{label} {missing} | | | | |")
                continue
            a, b = fmt_rates(s1)[0], fmt_rates(s2)[0]
            # the sum over the time both ran: total bytes over the longer session
            total = statistics.median(
                (x["bytes"] + y["bytes"]) * 8 / max(x["secs"], y["secs"]) / 1e6 for x, y in zip(s1, s2))
            q = router_cells(s1)[0]
            print(f"{label} {a:.1f} | {b:.1f} | {total:.1f} | {100 * total / rate:.0f}% | {q} |")
    print()
    print("Each session's rate is its bytes over its own wall time; the sum is both")
    print("sessions' bytes over the longer one's wall time (medians over repetitions).")
PY
} >"$WORK/report.md"

publish_report
ok=1
