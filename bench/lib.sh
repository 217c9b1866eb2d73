# shellcheck shell=bash
# shellcheck disable=SC2034  # variables set here are read by the scripts that source this file
# Helpers shared by the benchmark scripts beside this file (compare.sh,
# ssh.sh, bidi.sh, memory.sh). A script sets BENCH_DIR to this directory, then
#   source "$BENCH_DIR/lib.sh"
# Sourcing only sets SCRIPT, REPO and GEN and defines the functions below.
# Names in capitals that a function sets for its caller are listed in its comment.

SCRIPT=${0##*/}                     # the script's name, for its messages
REPO=$(cd "$BENCH_DIR/.." && pwd)
GEN="$BENCH_DIR/gen_tree.py"

# --- messages ------------------------------------------------------------------

# Print an error, prefixed with the script's name, and exit 1.
die() { echo "$SCRIPT: ERROR: $*" >&2; exit 1; }

# Print a progress line with the time of day to stderr.
log() { echo "[$(date +%T)] $*" >&2; }

# --- settings ------------------------------------------------------------------

# Note the SETTINGS given in the environment (sets INVOCATION, EXPLICIT_ENV
# for the report), then apply the script's arguments: --name VALUE sets the
# setting NAME (--modify-pct sets MODIFY_PCT), --keep sets KEEP=1, --help
# prints the script's header comment.
parse_settings() { # script arguments...
    local name
    INVOCATION="$0${*:+ $*}"
    EXPLICIT_ENV=""
    for name in "${SETTINGS[@]}"; do
        if [[ -n "${!name+x}" ]]; then EXPLICIT_ENV+="$name=${!name} "; fi
    done
    while [[ $# -gt 0 ]]; do
        case "$1" in
            -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
            --keep) KEEP=1; shift; continue ;;
        esac
        name=$(setting_of_flag "$1")
        if [[ -z "$name" ]]; then echo "$SCRIPT: unknown argument: $1" >&2; exit 2; fi
        if [[ $# -lt 2 ]]; then echo "$SCRIPT: $1 needs a value" >&2; exit 2; fi
        printf -v "$name" '%s' "$2"
        shift 2
    done
}

# Print the name in SETTINGS that a flag stands for (--modify-pct -> MODIFY_PCT), if any.
setting_of_flag() { # flag
    local name flag
    for name in "${SETTINGS[@]}"; do
        flag=${name,,}
        if [[ "$1" == "--${flag//_/-}" ]]; then echo "$name"; fi
    done
}

# Die unless each named setting is a positive integer.
need_positive_int() { # NAME...
    local name
    for name in "$@"; do
        [[ "${!name}" =~ ^[0-9]+$ && "${!name}" -ge 1 ]] || die "$name must be a positive integer"
    done
}

# Default OUT to $1 and make it absolute (relative to the current directory).
resolve_out() { # default
    OUT=${OUT:-$1}
    case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac
}

# --- tools ---------------------------------------------------------------------

apt_updated=0
# Install a Debian package with apt-get (as root only) unless the command is there.
need_pkg() { # command package
    command -v "$1" >/dev/null 2>&1 && return 0
    [[ $(id -u) -eq 0 ]] || die "$1 is missing; install $2 (this script installs it only as root)"
    log "installing $2"
    if [[ $apt_updated -eq 0 ]]; then apt-get update -qq; apt_updated=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
    command -v "$1" >/dev/null 2>&1 || die "could not install $2"
}

# Make sure of what every benchmark uses: rsync, /usr/bin/time and python3.
need_common_tools() {
    need_pkg rsync rsync
    need_pkg /usr/bin/time time
    command -v python3 >/dev/null || die "python3 is required"
}

# Use the binary named by SNAPSYNC, or build a release binary of this checkout
# (sets SNAPSYNC to an absolute path, SNAPSYNC_ORIGIN to what it was built from).
select_snapsync() {
    SNAPSYNC_ORIGIN="binary given by SNAPSYNC, not built by this script"
    if [[ -z "${SNAPSYNC:-}" ]]; then
        SNAPSYNC_ORIGIN=$(describe_checkout)
        log "cargo build --release (may wait for the build lock)"
        (cd "$REPO" && cargo build --release --quiet) || die "cargo build failed"
        SNAPSYNC="$REPO/target/release/snapsync"
    fi
    [[ -x "$SNAPSYNC" ]] || die "snapsync binary not found: $SNAPSYNC"
    SNAPSYNC=$(cd "$(dirname "$SNAPSYNC")" && pwd)/$(basename "$SNAPSYNC")
}

# What a push over ssh against rsync needs (sets RSYNC_BIN), and a snapsync
# binary whose path can travel unquoted in a remote command line.
prepare_ssh_comparison() {
    need_common_tools
    need_ssh_tools
    need_pkg openssl openssl
    RSYNC_BIN=$(command -v rsync)
    select_snapsync
    [[ "$SNAPSYNC" != *[[:space:]]* ]] || die "the snapsync path may not contain white space: $SNAPSYNC"
}

# Say what a build of the checkout contains (a read-only look, so the report says what was measured).
describe_checkout() {
    local dirty
    if dirty=$(git -C "$REPO" status --porcelain -- src Cargo.toml Cargo.lock build.rs 2>/dev/null); then
        if [[ -n "$dirty" ]]; then
            echo "built from HEAD plus $(wc -l <<<"$dirty") uncommitted changed/new path(s) under src/, Cargo.*, build.rs"
        else
            echo "built from a clean checkout of HEAD"
        fi
    else
        echo "built from $REPO (not a git checkout)"
    fi
}

# Print snapsync's version without the leading "snapsync ".
snapsync_version() { "$SNAPSYNC" --version | sed 's/^snapsync //'; }

# Print the first line of a --version output read on stdin, runs of spaces squeezed.
version_line() { sed -n '1{s/  */ /g;p}'; }

# --- work dir ------------------------------------------------------------------

# Make WORK a fresh directory with WORK/logs (absolute path; sets ok=0). It
# refuses / and /tmp, and replaces an existing WORK only if it is empty or a
# benchmark script made it.
prepare_work() {
    case "$WORK" in /|/tmp|/tmp/|"") die "refusing WORK=$WORK" ;; esac
    if [[ -e "$WORK" ]]; then
        [[ -f "$WORK/.snapsync-bench" || -z "$(ls -A "$WORK")" ]] ||
            die "$WORK exists and was not made by this script; pick another WORK"
        rm -rf "$WORK"
    fi
    mkdir -p "$WORK/logs"
    touch "$WORK/.snapsync-bench"
    WORK=$(cd "$WORK" && pwd)
    ok=0
}

# On exit: stop the benchmark sshd if one runs, then delete WORK if the run
# got to its end (ok=1) and KEEP is not 1, else say where it is.
cleanup_work() {
    stop_sshd
    if [[ $ok -eq 1 && "$KEEP" != 1 ]]; then
        rm -rf "$WORK"
    else
        echo "$SCRIPT: work dir kept: $WORK" >&2
    fi
}

# --- loopback sshd --------------------------------------------------------------

# Install what a private loopback sshd and its clients need.
need_ssh_tools() {
    need_pkg ssh openssh-client
    need_pkg ssh-keygen openssh-client
    need_pkg /usr/sbin/sshd openssh-server
}

# Print a free TCP port on 127.0.0.1.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Succeed if something accepts connections on 127.0.0.1:port.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Start a private sshd with ed25519 host and client keys made in DIR, and
# check that it lets us log in (sets SSHDIR, SSHD_PID, PORT, USERHOST, and
# RSH, the ssh command every tool is given, also as the array RSH_WORDS).
# Without more arguments it listens on a free port of 127.0.0.1; with an
# address and two network namespaces (the WAN test bed, see wan.sh) it runs
# in FAR-NS on ADDRESS port 22, and RSH enters NEAR-NS first (`ip netns exec
# NEAR-NS ssh ...`), the only place from which ADDRESS is reachable.
# cleanup_work, the scripts' exit trap, stops it.
start_sshd() { # dir [address far-ns near-ns]
    local port i address=${2:-127.0.0.1} far_ns=${3:-} near_ns=${4:-} launch=()
    SSHDIR=$1
    SSHD_PID=""
    PORT=""
    SSH_PREFIX=()
    if [[ -n "$far_ns" ]]; then
        launch=(ip netns exec "$far_ns")
        SSH_PREFIX=(ip netns exec "$near_ns")
    fi
    mkdir -p "$SSHDIR"
    ssh-keygen -q -t ed25519 -N '' -C snapsync-bench-host -f "$SSHDIR/host_key"
    ssh-keygen -q -t ed25519 -N '' -C snapsync-bench-client -f "$SSHDIR/client_key"
    cp "$SSHDIR/client_key.pub" "$SSHDIR/authorized_keys"
    chmod 600 "$SSHDIR/authorized_keys"
    # sshd running as root insists on its privilege separation directory
    if [[ $(id -u) -eq 0 ]]; then mkdir -p /run/sshd; fi
    USERHOST="$(id -un)@$address"
    for _ in 1 2 3 4 5; do
        if [[ -n "$far_ns" ]]; then port=22; else port=$(free_port); fi
        cat >"$SSHDIR/sshd_config" <<EOF
ListenAddress $address
Port $port
HostKey $SSHDIR/host_key
AuthorizedKeysFile $SSHDIR/authorized_keys
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
PidFile $SSHDIR/sshd.pid
EOF
        "${launch[@]}" /usr/sbin/sshd -D -e -f "$SSHDIR/sshd_config" </dev/null >/dev/null 2>"$SSHDIR/sshd.log" &
        SSHD_PID=$!
        for ((i = 0; i < 100; i++)); do
            kill -0 "$SSHD_PID" 2>/dev/null || break
            if [[ -n "$far_ns" ]]; then
                if grep -q "Server listening on $address port $port" "$SSHDIR/sshd.log" 2>/dev/null; then PORT=$port; break; fi
            elif port_open "$port"; then
                PORT=$port
                break
            fi
            sleep 0.1
        done
        [[ -z "$PORT" ]] || break
        stop_sshd
        grep -q 'Address already in use' "$SSHDIR/sshd.log" ||
            die "sshd did not start; its log:"$'\n'"$(cat "$SSHDIR/sshd.log")"
    done
    [[ -n "$PORT" ]] || die "sshd found no free port in 5 tries"
    log "sshd (pid $SSHD_PID) listening on $address:$PORT${far_ns:+ in namespace $far_ns}"
    SSH_OPTS=(-p "$PORT" -i "$SSHDIR/client_key" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR)
    RSH_WORDS=("${SSH_PREFIX[@]}" ssh "${SSH_OPTS[@]}")
    RSH="${RSH_WORDS[*]}"
    "${RSH_WORDS[@]}" "$USERHOST" true </dev/null ||
        die "cannot log in through the benchmark sshd; its log:"$'\n'"$(cat "$SSHDIR/sshd.log")"
}

# Stop the sshd start_sshd started, if it runs (cleanup_work calls this).
stop_sshd() {
    if [[ -n "${SSHD_PID:-}" ]]; then
        kill "$SSHD_PID" 2>/dev/null || true
        wait "$SSHD_PID" 2>/dev/null || true
        SSHD_PID=""
    fi
}

# Measure what every run through the sshd pays: the negotiated cipher, and
# the median of 5 logins that run `true` (connect, key exchange, login, start
# a command on the far end, tear down) (sets SSH_KEX, SSH_LOGIN).
measure_ssh() {
    local logins=()
    # -v must come before the LogLevel option, which then no longer applies.
    SSH_KEX=$("${SSH_PREFIX[@]}" ssh -v "${SSH_OPTS[@]}" "$USERHOST" true </dev/null 2>&1 |
        sed -n 's/^debug1: kex: client->server cipher: //p' | sed -n 1p)
    SSH_KEX=${SSH_KEX:-unknown}
    for _ in 1 2 3 4 5; do
        timed_run /dev/null "$WORK/ssh-login.err" "${RSH_WORDS[@]}" "$USERHOST" true ||
            die "ssh login failed: $(cat "$WORK/ssh-login.err")"
        logins+=("$SECS")
    done
    SSH_LOGIN=$(median "${logins[@]}")
    log "ssh login round trip: ${SSH_LOGIN}s"
}

# Print the peak RSS in KiB that a far end run under `/usr/bin/time -f %M -o
# FILE` left in FILE, or NA.
far_end_rss() { # file
    local kib
    kib=$(tail -n 1 "$1" 2>/dev/null || true)
    if [[ "$kib" =~ ^[0-9]+$ ]]; then echo "$kib"; else echo NA; fi
}

# Print the report's description of the sshd and the ssh command (after
# measure_ssh), for "Transport: ...".
ssh_transport_desc() {
    echo "a private \`sshd\` on 127.0.0.1 (ed25519 host and client keys made by ssh-keygen for this run), logging in as $(id -un), with \`$(sed "s|$SSHDIR|KEYDIR|g; s|-p $PORT|-p PORT|" <<<"$RSH")\`; negotiated client->server cipher: $SSH_KEX. One \`<ssh command> $(id -un)@127.0.0.1 true\` takes ${SSH_LOGIN} s (median of 5, before the scenarios): every run of either tool includes such a connection."
}

# --- page cache ----------------------------------------------------------------

# Empty the page cache (needs root).
drop_caches() { sync && echo 3 >/proc/sys/vm/drop_caches; }

# Settle CACHE: auto becomes cold if dropping the page cache is permitted, else warm.
setup_cache() {
    case "$CACHE" in
        auto) if drop_caches 2>/dev/null; then CACHE=cold; else CACHE=warm; fi ;;
        cold) drop_caches 2>/dev/null || die "CACHE=cold but drop_caches is not permitted here" ;;
        warm) ;;
        *) die "CACHE must be auto, cold or warm" ;;
    esac
    log "cache mode: $CACHE"
}

# Before a timed run: drop the page cache if CACHE is cold.
cold_start() { if [[ $CACHE == cold ]]; then drop_caches; fi; }

# --- timing --------------------------------------------------------------------

# Run a command under /usr/bin/time, stdin from /dev/null, stdout to $1 and
# stderr to $2 (may be the same file); fails if the command fails, else sets
# SECS (wall time, 0.01 s resolution), RSS_KIB (peak RSS) and CPU_SECS (user
# + system time of the command and the children it waited for).
timed_run() { # out-file err-file command...
    local out=$1 err=$2 tf="$WORK/time.out" user sys
    shift 2
    if [[ "$err" == "$out" ]]; then
        /usr/bin/time -f '%e %M %U %S' -o "$tf" -- "$@" >"$out" 2>&1 </dev/null || return 1
    else
        /usr/bin/time -f '%e %M %U %S' -o "$tf" -- "$@" >"$out" 2>"$err" </dev/null || return 1
    fi
    read -r SECS RSS_KIB user sys <<<"$(tail -n 1 "$tf")"
    CPU_SECS=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
}

# Print the median of the numbers given as arguments.
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# Print the 1/5/15 minute load averages.
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# --- trees and verification ----------------------------------------------------

# Write BYTES pseudo-random, incompressible bytes from SEED into FILE: an
# AES-128-CTR keystream (key from SEED), deterministic and fast. Needs openssl.
generate_big_file() { # file bytes
    local key
    log "generating the $2-byte file $1"
    mkdir -p "$(dirname "$1")"
    key=$(printf 'snapsync-bench-big-%s' "$SEED" | openssl dgst -sha256 -r | cut -c1-32)
    { openssl enc -aes-128-ctr -nosalt -K "$key" -iv 0 -in /dev/zero 2>/dev/null || true; } |
        head -c "$2" >"$1"
    [[ $(stat -c %s "$1") -eq $2 ]] || die "could not generate $1"
}

# Scenarios 1-3, the same in every family: initial sync (tools: $1), a
# no-change re-sync and one after MODIFY_PCT% of the files were modified
# (tools: $2), REPS times each, tools interleaved. run_one and modify_files
# are the family's own; modify_files REP makes scenario 3's change (compare.sh
# and ssh.sh: modify_tree on SRC).
scenarios_1_to_3() { # "initial tools" "re-sync tools"
    local r tool
    log "scenario 1: initial ${INITIAL_VERB:-copy}"
    for ((r = 1; r <= REPS; r++)); do
        for tool in $1; do run_one initial "$tool" "$r" 1; done
    done
    log "scenario 2: re-sync, nothing changed"
    for ((r = 1; r <= REPS; r++)); do
        for tool in $2; do run_one no-change "$tool" "$r" 1; done
    done
    log "scenario 3: re-sync after modifying ${MODIFY_PCT}% of files"
    for ((r = 1; r <= REPS; r++)); do
        # every tool is in sync here (verified after its last run)
        modify_files "$r"
        for tool in $2; do run_one modified "$tool" "$r" 1; done
    done
}

# Save the manifest of a tree (gen_tree.py manifest) for later comparisons.
refresh_manifest() { python3 "$GEN" manifest "$1" >"$2"; } # dir manifest

# Generate the tree of FILES files from SEED in a directory and save its
# manifest (sets TREE_FILES, TREE_DIRS, TREE_BYTES).
generate_tree() { # dir manifest
    local gen_out
    log "generating $FILES files (seed $SEED) in $1"
    gen_out=$(python3 "$GEN" gen "$1" --files "$FILES" --seed "$SEED")
    log "$gen_out"
    refresh_manifest "$1" "$2"
    TREE_FILES=$(grep -c '^f ' "$2" || true)
    TREE_DIRS=$(grep -c '^d ' "$2" || true)
    TREE_BYTES=$(awk '$1=="f"{s+=$4} END{printf "%d", s}' "$2")
}

# Rewrite MODIFY_PCT% of the files of a generated tree for one repetition and
# refresh its manifest (sets MODIFIED_COUNT).
modify_tree() { # dir rep manifest
    local mod_out
    mod_out=$(python3 "$GEN" modify "$1" --files "$FILES" \
        --percent "$MODIFY_PCT" --seed "$((SEED * 1000 + $2))")
    MODIFIED_COUNT=${mod_out//[!0-9]/}
    refresh_manifest "$1" "$3"
    log "rep $2: $mod_out"
}

# Succeed if the target tree equals the source (or its saved manifest), ignoring .snapsync/.
same_tree() { # src target [src-manifest]
    if [[ -n "${3:-}" ]]; then
        python3 "$GEN" compare "$1" "$2" --src-manifest "$3"
    else
        python3 "$GEN" compare "$1" "$2"
    fi
}

# Abort the benchmark, loudly, if the target of a run differs from its source.
verify_target() { # tool label src target src-manifest
    if ! same_tree "$3" "$4" "$5"; then
        echo >&2
        echo "!!!!!!!! $1 ($2): TARGET DIFFERS FROM SOURCE — benchmark aborted !!!!!!!!" >&2
        echo "!!!!!!!! target: $4  (logs: $WORK/logs)" >&2
        exit 1
    fi
}

# --- report --------------------------------------------------------------------

# Print the report lines on the run: command, date, machine (plus $3), filesystem of WORK, load.
report_run_lines() { # load-at-start load-at-end [machine-remark]
    local cpu_model mem_total fs_desc
    mem_total=$(awk '/^MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)
    cpu_model=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)
    fs_desc=$(findmnt -no SOURCE,FSTYPE,OPTIONS -T "$WORK" 2>/dev/null || df -T "$WORK" | tail -n 1)
    echo "- Command: \`${EXPLICIT_ENV}${INVOCATION}\`"
    echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- Machine: $(nproc) CPUs ($cpu_model), $mem_total RAM, kernel $(uname -r)${3:-}"
    echo "- Filesystem of WORK ($WORK): $fs_desc"
    echo "- Load average (1/5/15 min) at start: $1; at end: $2"
}

# Print the description of the generated tree (after generate_tree).
tree_desc() {
    echo "$TREE_FILES files in $TREE_DIRS directories, $TREE_BYTES bytes (seed $SEED; sizes uniform 100 B–16 KiB, pseudo-random content)"
}

# Print the report line on scenarios 1-3, which compare.sh and ssh.sh share.
scenarios_1_to_3_line() {
    echo "- Scenario 1: target does not exist. Scenario 2: nothing changed since the previous sync. Scenario 3: before each repetition ${MODIFIED_COUNT:-?} files (${MODIFY_PCT}%) are rewritten once (half in place with the same size, half with new content and size), then each tool syncs its own, previously in-sync target."
}

# Print the report line on the verification after every run.
verified_line() {
    echo "- Every run was verified: target == source by path, type, mode, size, mtime (ns) and content hash of each file and mode/mtime of each directory, ignoring \`.snapsync/\`."
}

# Print the given keys of the --json summary a snapsync run printed last on
# stdout, space-separated; fail unless there is one and it counts no errors
# and no conflicts.
summary_fields() { # stdout-file key...
    python3 - "$@" <<'PY'
import json, sys
lines = [l for l in open(sys.argv[1]).read().splitlines() if l.strip()]
try:
    d = json.loads(lines[-1])
except (IndexError, ValueError):
    sys.exit("snapsync printed no JSON summary on stdout")
if d.get("errors") or d.get("conflicts"):
    sys.exit(f"snapsync reported errors={d.get('errors')} conflicts={d.get('conflicts')}")
print(*(d[k] for k in sys.argv[2:]))
PY
}

# Print the given keys of snapsync's --json summary of the last repetition of
# each scenario (json-tsv lines: scenario, rep, JSON), in the given order.
json_summaries() { # json-tsv "key ..." scenario=name...
    python3 - "$@" <<'PY'
import json, sys
path, keys = sys.argv[1], sys.argv[2].split()
scenarios = [a.split("=", 1) for a in sys.argv[3:]]
print("snapsync `--json` summaries (last repetition of each scenario):")
print()
last = {}
for l in open(path).read().splitlines():
    scen, rep, js = l.split("\t", 2)
    last[scen] = js
for scen, name in scenarios:
    js = last.get(scen, "")
    try:
        d = json.loads(js)
        js = ", ".join(f"{k}={d.get(k)}" for k in keys)
    except ValueError:
        js = "(not JSON) " + js
    print(f"- {name}: {js}")
PY
}

# Copy the report in WORK/report.md to OUT, print it and say where it went.
publish_report() {
    mkdir -p "$(dirname "$OUT")"
    cp "$WORK/report.md" "$OUT"
    cat "$OUT"
    log "report written to $OUT"
}
