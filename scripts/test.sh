#!/usr/bin/env bash
# Runs snapsync's whole test suite: formatting, lints, unit and integration
# tests. Installs what the tests need (as root, with apt-get) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
command -v script >/dev/null 2>&1 || missing+=(bsdutils)
command -v mkfifo >/dev/null 2>&1 || missing+=(coreutils)
# tests/ssh.rs starts its own sshd on a loopback port and syncs through ssh;
# rsync is there for comparisons.
{ command -v sshd >/dev/null 2>&1 || test -x /usr/sbin/sshd; } || missing+=(openssh-server)
{ command -v ssh >/dev/null 2>&1 && command -v ssh-keygen >/dev/null 2>&1; } || missing+=(openssh-client)
command -v rsync >/dev/null 2>&1 || missing+=(rsync)
# bench/bidi.sh (run by bench/run.sh quick below) compares bidi with Unison.
command -v unison >/dev/null 2>&1 || missing+=(unison)
# tests/wan.rs and bench/wan.sh build the WAN test bed: network namespaces
# and tun devices set up with ip (iproute2).
{ command -v ip >/dev/null 2>&1 || test -x /usr/sbin/ip || test -x /sbin/ip; } || missing+=(iproute2)
# tests/links_acls.rs sets and reads POSIX ACLs (-A).
{ command -v setfacl >/dev/null 2>&1 && command -v getfacl >/dev/null 2>&1; } || missing+=(acl)
# tests/ship.rs loads the completion scripts in bash, zsh and fish and
# renders the man page with man; scripts/install-check.sh checks `man
# snapsync` after installing the Debian package.
command -v zsh >/dev/null 2>&1 || missing+=(zsh)
command -v fish >/dev/null 2>&1 || missing+=(fish)
command -v man >/dev/null 2>&1 || missing+=(man-db)
if ((${#missing[@]})); then
    if [ "$(id -u)" -ne 0 ]; then
        echo "scripts/test.sh: missing ${missing[*]}; run as root to install them" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

# A clean clone gains nothing from incremental compilation's caches (about
# 1 GB under target/debug/incremental); CI runs on one.
if [ -n "${CI:-}" ]; then
    export CARGO_INCREMENTAL=0
fi
df -h . 2>/dev/null | sed 's/^/scripts\/test.sh: disk: /' || true

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets 2>&1
# The benchmark harness, at tiny sizes: that it works, not how fast.
SNAPSYNC="$PWD/target/debug/snapsync" bench/run.sh quick
# CI's clone is thrown away after the run: free the test build (~1.2 GB)
# before the release build below, so the run needs ~1.2 GB of disk, not ~2.
if [ -n "${CI:-}" ]; then
    cargo clean --profile dev
fi
# Installing as a user would: the Debian package with apt-get, then
# `cargo install --path .`, each used for a real sync (needs root; CI is).
if [ "$(id -u)" -eq 0 ]; then
    scripts/install-check.sh
else
    echo "scripts/test.sh: not root, so scripts/install-check.sh (the install paths) is skipped" >&2
fi
