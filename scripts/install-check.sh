#!/usr/bin/env bash
# Installs snapsync from this checkout the ways a user would, and syncs a
# real tree with each install:
#
#   1. the Debian package (scripts/package-deb.sh) with apt-get: every file
#      in place and owned by the package, the man page and completions equal
#      to what the binary generates, `man snapsync` finds the page, a push
#      with /usr/bin/snapsync; then apt-get remove, and the files gone;
#   2. `cargo install --path .` into a temporary root (it reuses the release
#      build of step 1), and a push with that binary;
#   3. a copy of the sources without .git (what a release tarball holds)
#      still builds, its build script recording the commit as "unknown".
#
# Needs root (it installs and removes the package); installs cargo-deb when
# it is missing. scripts/test.sh runs it. Ends with "install-check: passed",
# or exits non-zero after "install-check: FAILED: <what>".
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
target=${CARGO_TARGET_DIR:-$repo/target}
started=$SECONDS

note() { echo "install-check: [$((SECONDS - started)) s] $*"; }
fail() {
    echo "install-check: FAILED: $*" >&2
    exit 1
}

[ "$(id -u)" -eq 0 ] || fail "run it as root: it installs and removes the Debian package"
if dpkg-query -W -f='${Status}' snapsync 2>/dev/null | grep -q "ok installed"; then
    fail "the snapsync package is installed already; this check installs and removes it, so remove it first (apt-get remove snapsync)"
fi
[ ! -e /usr/bin/snapsync ] || fail "/usr/bin/snapsync exists but no package owns it; move it away first"

work=$(mktemp -d)
package_installed=0
cleanup() {
    if [ "$package_installed" = 1 ]; then
        apt-get remove -y -qq snapsync >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# Runs a command with its output kept aside, shown only when it fails.
quietly() {
    if ! "$@" >"$work/step.log" 2>&1; then
        cat "$work/step.log" >&2
        fail "$*"
    fi
}

# A small tree: files of several sizes, nested and empty directories, an
# empty file, a symlink, a file with its own mode.
make_tree() {
    local dir=$1 i
    mkdir -p "$dir/docs/deep/er" "$dir/empty-dir"
    for i in $(seq 1 30); do
        head -c $((i * 997)) /dev/urandom >"$dir/docs/file$i.bin"
    done
    head -c 300000 /dev/urandom >"$dir/docs/deep/er/big.bin"
    : >"$dir/empty.txt"
    echo "hello" >"$dir/hello.txt"
    chmod 600 "$dir/hello.txt"
    ln -s docs/file1.bin "$dir/link"
}

same_tree() {
    # Each root keeps its own state in .snapsync/, never synced.
    diff -r --no-dereference --exclude=.snapsync "$1" "$2" >"$work/diff.log" 2>&1 || {
        head -20 "$work/diff.log" >&2
        return 1
    }
}

# A push with BIN into a new target, then an edit, a directory rename and
# a deletion in the source and a second push, which must replay the rename.
check_sync() {
    local bin=$1 name=$2
    local src=$work/$name-src dst=$work/$name-dst state=$work/$name-state
    make_tree "$src"
    quietly "$bin" push --state-dir "$state" "$src" "$dst"
    same_tree "$src" "$dst" || fail "$name: after a push with $bin, $dst differs from $src"
    echo "changed" >>"$src/hello.txt"
    mv "$src/docs/deep" "$src/moved"
    rm "$src/docs/file3.bin"
    quietly "$bin" push --json --state-dir "$state" "$src" "$dst"
    same_tree "$src" "$dst" || fail "$name: after a second push with $bin, $dst differs from $src"
    grep -q '"renamed":[1-9]' "$work/step.log" ||
        fail "$name: the second push did not replay the rename: $(cat "$work/step.log")"
    note "$name: $bin pushed a tree, then only its changes (a rename replayed)"
}

# 1. The Debian package.
if ! command -v cargo-deb >/dev/null 2>&1; then
    note "installing cargo-deb"
    quietly cargo install cargo-deb --locked
fi
note "building the Debian package (release build)"
# --fast: lighter compression; the package is installed here, not shipped.
quietly scripts/package-deb.sh --fast
debs=("$target"/debian/snapsync_*.deb)
[ -f "${debs[0]}" ] || fail "scripts/package-deb.sh made no $target/debian/snapsync_*.deb"
deb=${debs[0]}
note "installing $(basename "$deb") with apt-get"
package_installed=1
quietly env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$deb"

files=(
    /usr/bin/snapsync
    /usr/share/man/man1/snapsync.1.gz
    /usr/share/bash-completion/completions/snapsync
    /usr/share/zsh/vendor-completions/_snapsync
    /usr/share/fish/vendor_completions.d/snapsync.fish
    /lib/systemd/system/snapsync@.service
)
for file in "${files[@]}"; do
    [ -f "$file" ] || fail "$file is missing after installing the package"
    dpkg -S "$file" >/dev/null 2>&1 || fail "$file is not owned by the snapsync package"
done

version=$(/usr/bin/snapsync --version) || fail "/usr/bin/snapsync --version"
version_pattern='^snapsync [0-9][^ ]* \(commit [0-9a-z]+, protocol [0-9]+\)$'
[[ $version =~ $version_pattern ]] ||
    fail "/usr/bin/snapsync --version says \`$version\`"
[ "$version" = "$("$target/release/snapsync" --version)" ] ||
    fail "/usr/bin/snapsync is not the release build: $version"
cmp -s <(zcat /usr/share/man/man1/snapsync.1.gz) <(/usr/bin/snapsync man) ||
    fail "the installed man page is not what /usr/bin/snapsync man prints"
cmp -s /usr/share/bash-completion/completions/snapsync <(/usr/bin/snapsync completions bash) ||
    fail "the installed bash completions are not what the binary prints"
cmp -s /usr/share/zsh/vendor-completions/_snapsync <(/usr/bin/snapsync completions zsh) ||
    fail "the installed zsh completions are not what the binary prints"
cmp -s /usr/share/fish/vendor_completions.d/snapsync.fish <(/usr/bin/snapsync completions fish) ||
    fail "the installed fish completions are not what the binary prints"
bash --norc --noprofile -c 'source /usr/share/bash-completion/completions/snapsync && complete -p snapsync' >/dev/null 2>&1 ||
    fail "bash cannot load /usr/share/bash-completion/completions/snapsync"
grep -q '^ExecStart=/usr/bin/snapsync ' /lib/systemd/system/snapsync@.service ||
    fail "the systemd unit does not start /usr/bin/snapsync"

[ "$(man -w snapsync 2>/dev/null)" = /usr/share/man/man1/snapsync.1.gz ] ||
    fail "man does not find the page: \`man -w snapsync\` says \`$(man -w snapsync 2>&1)\`"
MANWIDTH=120 MANPAGER=cat PAGER=cat man snapsync 2>/dev/null | grep -q "EXIT STATUS" ||
    fail "\`man snapsync\` does not show the page"
note "package: binary, man page, completions and systemd unit in place; man snapsync shows the page"

check_sync /usr/bin/snapsync package

quietly env DEBIAN_FRONTEND=noninteractive apt-get remove -y -qq snapsync
package_installed=0
for file in "${files[@]}"; do
    [ ! -e "$file" ] || fail "$file is still there after apt-get remove snapsync"
done
note "apt-get remove snapsync took its files away"

# 2. cargo install --path .
note "cargo install --path ."
quietly cargo install --locked --path . --root "$work/cargo-root"
[ -x "$work/cargo-root/bin/snapsync" ] || fail "cargo install put no binary in $work/cargo-root/bin"
check_sync "$work/cargo-root/bin/snapsync" cargo-install

# 3. The sources without .git, as a release tarball holds them: `cargo
# check` runs the build script (in this target dir, so the dependencies are
# reused and no binary of this checkout is replaced), which must record the
# commit as "unknown" rather than fail.
if git rev-parse --show-toplevel >/dev/null 2>&1; then
    note "building a copy of the sources without .git"
    copy=$work/snapsync-source
    mkdir -p "$copy"
    git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' path; do
            if [ -e "$path" ] || [ -L "$path" ]; then printf '%s\0' "$path"; fi
        done |
        tar --null -T - -cf - | tar -xf - -C "$copy"
    (cd "$copy" && env -u SNAPSYNC_COMMIT CARGO_TARGET_DIR="$target" \
        cargo check --locked --bin snapsync --message-format=json) >"$work/check.json" 2>"$work/check.log" || {
        cat "$work/check.log" >&2
        fail "the sources without .git do not build"
    }
    grep '"reason":"build-script-executed"' "$work/check.json" | grep -q '\["SNAPSYNC_COMMIT","unknown"\]' ||
        fail "built without .git, the commit is not recorded as \"unknown\": $(grep -o '\["SNAPSYNC_COMMIT","[^"]*"\]' "$work/check.json" || echo 'no SNAPSYNC_COMMIT')"
    note "without .git the build records commit \"unknown\""
else
    note "not a git checkout: the build of this tree was the build without .git"
fi

echo "install-check: passed ($((SECONDS - started)) s)"
