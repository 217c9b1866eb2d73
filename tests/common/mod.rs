//! Helpers shared by the integration tests: build trees, run the real
//! binary, and compare trees the way a user would (content, kind, mode,
//! mtime to the nanosecond, link targets); find and run other programs
//! with a time limit, and build an example program. `sshd` holds what the
//! tests through a real sshd share, `wan` the WAN test bed.
#![allow(dead_code)]

pub mod sshd;
pub mod wan;

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_snapsync"))
}

/// `snapsync serve`, its input and output piped: a far end the test
/// speaks the protocol to itself.
pub fn spawn_serve() -> std::process::Child {
    Command::new(bin())
        .arg("serve")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// What a run asks of a root when it opens `session` (no probe, none of
/// the optional behaviours).
pub fn session_request(
    session: &str,
    direction: &str,
    role: snapsync::endpoint::Role,
) -> snapsync::endpoint::SessionRequest {
    snapsync::endpoint::SessionRequest {
        session: session.into(),
        direction: direction.into(),
        role,
        reset: false,
        dry_run: false,
        log_max: snapsync::log::DEFAULT_MAX,
        log_verbose: false,
        backup_dir: None,
        remove_source_files: false,
        bwlimit: None,
        probe: false,
        count_rows: false,
    }
}

pub fn snapsync(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env_remove("SNAPSYNC_LOG")
        .output()
        .expect("run snapsync")
}

/// Runs snapsync with path arguments, returning the output.
pub fn run(args: &[&OsStr]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("run snapsync")
}

pub fn push(src: &Path, dst: &Path, extra: &[&str]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.arg("push").args(extra).arg(src).arg(dst);
    cmd.output().expect("run snapsync")
}

pub fn pull(local: &Path, remote: &Path, extra: &[&str]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.arg("pull").args(extra).arg(local).arg(remote);
    cmd.output().expect("run snapsync")
}

/// Asserts the exit code, showing the output when it differs.
#[track_caller]
pub fn assert_code(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit code\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a push with `--json` and returns the summary object.
#[track_caller]
pub fn push_json(src: &Path, dst: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    let out = push(src, dst, &args);
    assert_code(&out, 0);
    summary(&out)
}

#[track_caller]
pub fn summary(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Fails, showing all of stderr, unless it says `needle`.
#[track_caller]
pub fn assert_stderr_says(out: &Output, needle: &str) {
    let err = stderr(out);
    assert!(
        err.contains(needle),
        "stderr does not say {needle:?}:\n{err}"
    );
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn write(root: &Path, rel: &str, content: &[u8]) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

pub fn read(root: &Path, rel: &str) -> Vec<u8> {
    fs::read(root.join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

pub fn link(root: &Path, rel: &str, target: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    symlink(target, path).unwrap();
}

pub fn chmod(root: &Path, rel: &str, mode: u32) {
    fs::set_permissions(root.join(rel), fs::Permissions::from_mode(mode)).unwrap();
}

pub fn set_mtime(root: &Path, rel: &str, sec: i64, nsec: u32) {
    filetime::set_symlink_file_times(
        root.join(rel),
        filetime::FileTime::from_unix_time(sec, nsec),
        filetime::FileTime::from_unix_time(sec, nsec),
    )
    .unwrap();
}

/// A deterministic pseudo-random generator (xorshift), so trees are the
/// same on every run without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Writes `count` files of `min..max` bytes in nested directories.
pub fn generate_tree(root: &Path, seed: u64, count: usize, min: usize, max: usize) {
    let mut rng = Rng::new(seed);
    for i in 0..count {
        let dir = format!("d{}/s{}", i % 17, i % 5);
        let len = min + rng.below((max - min + 1) as u64) as usize;
        write(root, &format!("{dir}/f{i}.dat"), &rng.bytes(len));
    }
}

/// What a user sees of one path.
#[derive(Debug, PartialEq, Eq)]
pub enum Node {
    File {
        content: Vec<u8>,
        mode: u32,
        mtime: (i64, i64),
    },
    Dir {
        mode: u32,
        mtime: (i64, i64),
    },
    Link {
        target: Vec<u8>,
    },
}

/// Every path below `root` (not `.snapsync`), byte-named.
pub fn tree(root: &Path) -> BTreeMap<Vec<u8>, Node> {
    let mut out = BTreeMap::new();
    collect(root, root, &mut out, true);
    out
}

/// Like [`tree`] but without directory mtimes (which a test that adds
/// files by hand changes on one side only).
pub fn tree_without_dir_times(root: &Path) -> BTreeMap<Vec<u8>, Node> {
    let mut out = BTreeMap::new();
    collect(root, root, &mut out, false);
    out
}

/// The entries of `dir` (not following links), sorted by name, each with
/// its path relative to `root`; the top-level `.snapsync` is left out.
fn children(root: &Path, dir: &Path) -> Vec<(Vec<u8>, PathBuf, fs::Metadata)> {
    let mut items: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
    items.sort_by_key(|e| e.file_name());
    items
        .into_iter()
        .filter_map(|item| {
            let path = item.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            if rel == b".snapsync" {
                return None;
            }
            let meta = fs::symlink_metadata(&path).unwrap();
            Some((rel, path, meta))
        })
        .collect()
}

fn collect(root: &Path, dir: &Path, out: &mut BTreeMap<Vec<u8>, Node>, dir_times: bool) {
    for (rel, path, meta) in children(root, dir) {
        let mtime = (meta.mtime(), meta.mtime_nsec());
        let node = if meta.file_type().is_symlink() {
            Node::Link {
                target: fs::read_link(&path)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec(),
            }
        } else if meta.is_dir() {
            collect(root, &path, out, dir_times);
            Node::Dir {
                mode: meta.mode() & 0o7777,
                mtime: if dir_times { mtime } else { (0, 0) },
            }
        } else if meta.is_file() {
            Node::File {
                content: fs::read(&path).unwrap(),
                mode: meta.mode() & 0o7777,
                mtime,
            }
        } else {
            continue;
        };
        out.insert(rel, node);
    }
}

#[track_caller]
pub fn assert_same_tree(a: &Path, b: &Path) {
    let (ta, tb) = (tree(a), tree(b));
    if ta != tb {
        let keys: std::collections::BTreeSet<_> = ta.keys().chain(tb.keys()).collect();
        let mut diffs = Vec::new();
        for key in keys {
            if ta.get(key) != tb.get(key) {
                diffs.push(format!(
                    "{}: {:?} vs {:?}",
                    String::from_utf8_lossy(key),
                    ta.get(key).map(short),
                    tb.get(key).map(short)
                ));
            }
        }
        panic!("trees differ:\n{}", diffs.join("\n"));
    }
}

fn short(node: &Node) -> String {
    match node {
        Node::File {
            content,
            mode,
            mtime,
        } => format!("file {} bytes mode {mode:o} mtime {mtime:?}", content.len()),
        Node::Dir { mode, mtime } => format!("dir mode {mode:o} mtime {mtime:?}"),
        Node::Link { target } => format!("link -> {}", String::from_utf8_lossy(target)),
    }
}

pub fn count(value: &serde_json::Value, key: &str) -> u64 {
    value[key]
        .as_u64()
        .unwrap_or_else(|| panic!("summary has no {key}: {value}"))
}

/// (inode, ctime) of every path: unchanged when nothing touched them.
pub fn identities(root: &Path) -> BTreeMap<Vec<u8>, (u64, i64, i64)> {
    let mut out = BTreeMap::new();
    walk_identities(root, root, &mut out);
    out
}

fn walk_identities(root: &Path, dir: &Path, out: &mut BTreeMap<Vec<u8>, (u64, i64, i64)>) {
    for (rel, path, meta) in children(root, dir) {
        out.insert(rel, (meta.ino(), meta.ctime(), meta.ctime_nsec()));
        if meta.is_dir() {
            walk_identities(root, &path, out);
        }
    }
}

pub fn bidi(local: &Path, remote: &Path, extra: &[&str]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.arg("bidi").args(extra).arg(local).arg(remote);
    cmd.output().expect("run snapsync")
}

/// Runs a bidi sync with `--json`, expecting exit `code`; the summary.
#[track_caller]
pub fn bidi_json(local: &Path, remote: &Path, extra: &[&str], code: i32) -> serde_json::Value {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    let out = bidi(local, remote, &args);
    assert_code(&out, code);
    summary(&out)
}

/// `snapsync conflicts --json` for the root holding `dir`: (path, local, remote).
#[track_caller]
pub fn conflicts(dir: &Path) -> Vec<(String, String, String)> {
    let out = Command::new(bin())
        .args(["conflicts", "--json"])
        .arg(dir)
        .output()
        .expect("run snapsync");
    let code = out.status.code();
    assert!(
        code == Some(0) || code == Some(4),
        "conflicts exit {code:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("conflicts JSON");
    let rows: Vec<(String, String, String)> = list
        .as_array()
        .expect("an array")
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap().to_string(),
                c["local"].as_str().unwrap().to_string(),
                c["remote"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        code == Some(4),
        !rows.is_empty(),
        "exit code 4 iff conflicts listed"
    );
    rows
}

/// Makes the session databases in `root/.snapsync` look as a first pass
/// stopped before its end leaves them: snapshot rows for what was done,
/// but not established (the flag a complete run sets last).
pub fn unestablish(root: &Path) {
    for item in fs::read_dir(root.join(".snapsync")).unwrap() {
        let path = item.unwrap().path();
        if path.extension() == Some("db".as_ref()) {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute("DELETE FROM meta WHERE key = 'established'", [])
                .unwrap();
        }
    }
}

/// A `--rsh` program that drops the host and runs the rest here, noting
/// its process id (that of the far end, which it becomes) in `PIDFILE`.
pub fn rsh_shim(dir: &Path) -> PathBuf {
    let shim = dir.join("rsh.sh");
    fs::write(
        &shim,
        "#!/bin/sh\n# Drops the host; runs the rest here.\nshift\necho $$ > \"$(dirname \"$0\")/far.pid\"\nexec \"$@\"\n",
    )
    .unwrap();
    fs::set_permissions(&shim, fs::Permissions::from_mode(0o755)).unwrap();
    shim
}

/// The absolute path of a program, searching `PATH` and then `extra`.
pub fn find_program(name: &str, extra: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .filter(|candidate| candidate.is_absolute())
}

/// Like [`find_program`], failing the test with what to install.
#[track_caller]
pub fn require_program(name: &str, package: &str, extra: &[&str]) -> PathBuf {
    find_program(name, extra).unwrap_or_else(|| {
        panic!(
            "`{name}` is missing, so this test cannot run: run ./scripts/test.sh as root \
             (it installs {package}), or `apt-get install {package}`"
        )
    })
}

/// Runs a command that must succeed.
#[track_caller]
pub fn run_tool(command: &mut Command) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a command with its output captured, killing it after `limit` so a
/// stuck connection fails the test instead of hanging.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the command") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "did not finish within {limit:?}: {cmd:?}\nstderr so far: {}",
                String::from_utf8_lossy(&err_reader.join().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

/// The path of example program `name`, built once per test process.
/// `cargo test` builds examples, but `cargo test --test NAME` does not (and
/// would leave a stale one), so it is built here; cargo makes that a no-op
/// when it is fresh.
pub fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT.get_or_init(Default::default).lock().unwrap();
    if let Some(path) = built.get(name) {
        return path.clone();
    }
    // This test runs from target/<profile>/deps/; examples land in
    // target/<profile>/examples/.
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let fallback = profile_dir.join("examples").join(name);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut build = Command::new(cargo);
    build
        .args(["build", "--example", name, "--message-format=json"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    // `debug` is the directory of the dev (and test) profile.
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some(profile) => {
            build.args(["--profile", profile]);
        }
    }
    let out = build.output();
    let path = out
        .as_ref()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == name)
                .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        });
    let why = || match &out {
        Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
        Err(e) => format!("cannot run cargo: {e}"),
    };
    let path = match path {
        Some(path) => path,
        None if fallback.exists() => {
            eprintln!(
                "warning: cannot build the {name} example, using {}:\n{}",
                fallback.display(),
                why()
            );
            fallback
        }
        None => panic!("cannot build the {name} example:\n{}", why()),
    };
    built.insert(name.to_string(), path.clone());
    path
}
