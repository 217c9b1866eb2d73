//! Continuous mode (`-C`) through the real binary: the first pass, then
//! changes replicated as they happen, without waiting for a rescan (the
//! safety rescan is left at its default of an hour, so only watching can
//! deliver them in time); SIGINT ends the session with exit 0; `--json`
//! prints one line per cycle. No timing assertions: each check waits up to
//! a generous deadline for the state it expects.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

/// How long a change may take to arrive before the test gives up.
const DEADLINE: Duration = Duration::from_secs(20);

struct Session {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Session {
    fn start(verb: &str, args: &[&str], local: &Path, remote: &str) -> Session {
        let mut child = Command::new(bin())
            .arg(verb)
            .args(["-C", "--json"])
            .args(args)
            .arg(local)
            .arg(remote)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let session = Session { child, lines };
        // The first pass prints its summary.
        let first = session
            .lines
            .recv_timeout(DEADLINE)
            .expect("the first pass never finished");
        assert!(first.starts_with('{'), "{first}");
        session
    }

    /// A session whose remote root `remote` is reached through the
    /// protocol (the `--rsh` shim made in `tmp`).
    fn far(verb: &str, tmp: &Path, local: &Path, remote: &Path) -> Session {
        let shim = rsh_shim(tmp);
        let spec = format!("far.example:{}", remote.display());
        let (shim, bin) = (shim.to_str().unwrap().to_string(), bin());
        let args = ["--rsh", &shim, "--remote-command", bin.to_str().unwrap()];
        Session::start(verb, &args, local, &spec)
    }

    /// SIGINT: the session ends with exit 0.
    fn stop(mut self) -> Vec<serde_json::Value> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-INT", &pid]).status().unwrap();
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(start.elapsed() < DEADLINE, "-C did not stop on SIGINT");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(0), "exit code after SIGINT");
        self.lines
            .try_iter()
            .map(|l| serde_json::from_str(&l).expect("one JSON object per line"))
            .collect()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `check` holds, or fails after [`DEADLINE`].
#[track_caller]
fn eventually(what: &str, check: impl Fn() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < DEADLINE, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Both trees hold the same (content, kinds, modes, mtimes), read while a
/// session may be writing: an entry that vanishes while being read (a
/// temporary file) makes them differ for now, it does not fail the test.
fn same(a: &Path, b: &Path) -> bool {
    /// Path, content, mode, mtime (s, ns).
    type Seen = (PathBuf, Vec<u8>, u32, i64, i64);
    fn read(root: &Path) -> Option<Vec<Seen>> {
        use std::os::unix::fs::MetadataExt;
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for item in fs::read_dir(&dir).ok()? {
                let path = item.ok()?.path();
                let rel = path.strip_prefix(root).ok()?.to_path_buf();
                if rel.as_os_str() == ".snapsync" {
                    continue;
                }
                let meta = fs::symlink_metadata(&path).ok()?;
                let content = if meta.is_file() {
                    fs::read(&path).ok()?
                } else {
                    Vec::new()
                };
                if meta.is_dir() {
                    stack.push(path.clone());
                }
                out.push((rel, content, meta.mode(), meta.mtime(), meta.mtime_nsec()));
            }
        }
        out.sort();
        Some(out)
    }
    matches!((read(a), read(b)), (Some(x), Some(y)) if x == y)
}

fn roots() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    fs::create_dir_all(&a).unwrap();
    (tmp, a, b)
}

#[test]
fn push_follows_changes_as_they_happen() {
    let (_tmp, a, b) = roots();
    write(&a, "keep", b"k");
    write(&a, "dir/old", b"o");
    let session = Session::start("push", &[], &a, b.to_str().unwrap());
    assert!(same(&a, &b));
    write(&a, "new", b"fresh");
    eventually("a new file arrives", || same(&a, &b));
    write(&a, "keep", b"changed");
    fs::rename(a.join("dir"), a.join("dir2")).unwrap();
    eventually("an edit and a directory rename arrive", || same(&a, &b));
    // An editor's save: write a temporary file, rename it over the old one.
    write(&a, ".keep.swp", b"saved by an editor");
    fs::rename(a.join(".keep.swp"), a.join("keep")).unwrap();
    eventually("an editor save arrives", || same(&a, &b));
    // rm -rf of a directory of many files.
    for i in 0..300 {
        write(&a, &format!("many/f{i}"), b"x");
    }
    eventually("300 new files arrive", || same(&a, &b));
    fs::remove_dir_all(a.join("many")).unwrap();
    eventually("rm -rf arrives", || same(&a, &b));
    let lines = session.stop();
    assert!(!lines.is_empty(), "no cycle printed a summary line");
    for line in &lines {
        for key in ["created", "updated", "deleted", "renamed", "seconds"] {
            assert!(line.get(key).is_some(), "{key} missing: {line}");
        }
    }
}

#[test]
fn bidi_follows_changes_on_both_sides() {
    let (_tmp, a, b) = roots();
    fs::create_dir_all(&b).unwrap();
    write(&a, "from-a", b"a");
    write(&b, "from-b", b"b");
    let session = Session::start("bidi", &[], &a, b.to_str().unwrap());
    assert!(same(&a, &b));
    write(&a, "later-a", b"1");
    eventually("a local change reaches the remote", || same(&a, &b));
    write(&b, "later-b", b"2");
    eventually("a remote change reaches the local root", || same(&a, &b));
    session.stop();
}

#[test]
fn the_far_end_reports_its_own_changes() {
    let (tmp, a, b) = roots();
    fs::create_dir_all(&b).unwrap();
    write(&a, "from-a", b"a");
    let session = Session::far("bidi", tmp.path(), &a, &b);
    write(&b, "far-change", b"from the far side");
    eventually("a far change arrives", || same(&a, &b));
    write(&a, "near-change", b"from here");
    eventually("a near change arrives", || same(&a, &b));
    session.stop();
}

#[test]
fn a_lost_connection_is_made_again_and_what_changed_meanwhile_arrives() {
    let (tmp, a, b) = roots();
    fs::create_dir_all(&b).unwrap();
    write(&a, "first", b"1");
    let session = Session::far("bidi", tmp.path(), &a, &b);
    let pidfile = tmp.path().join("far.pid");
    let far = fs::read_to_string(&pidfile).unwrap().trim().to_string();
    Command::new("kill").args(["-9", &far]).status().unwrap();
    // Changed on both sides while the far end is gone.
    write(&a, "while-down-near", b"n");
    write(&b, "while-down-far", b"f");
    eventually("both changes arrive after reconnecting", || same(&a, &b));
    let again = fs::read_to_string(&pidfile).unwrap().trim().to_string();
    assert_ne!(again, far, "a new far end was started");
    session.stop();
}

#[test]
fn bidi_conflicts_are_reported_and_resolved_while_running() {
    let (_tmp, a, b) = roots();
    fs::create_dir_all(&b).unwrap();
    write(&a, "f", b"base");
    let session = Session::start("bidi", &["--cooloff", "300"], &a, b.to_str().unwrap());
    // Both sides edit within one cooloff: a conflict, left as it is.
    write(&a, "f", b"local edit");
    write(&b, "f", b"remote edit!");
    eventually("the conflict is recorded", || !conflicts(&a).is_empty());
    assert_eq!(read(&a, "f"), b"local edit");
    assert_eq!(read(&b, "f"), b"remote edit!");
    // Other changes still flow while it is pending.
    write(&a, "other", b"o");
    eventually("other changes still arrive", || b.join("other").exists());
    // Resolved beside the running session: carried out without restarting.
    let out = Command::new(bin())
        .args(["resolve", "--keep", "remote"])
        .arg(a.join("f"))
        .output()
        .unwrap();
    assert_code(&out, 0);
    eventually("the decision is carried out", || {
        fs::read(a.join("f")).is_ok_and(|c| c == b"remote edit!")
    });
    eventually("no conflict is left", || conflicts(&a).is_empty());
    let lines = session.stop();
    assert!(
        lines.iter().any(|l| l["conflicts"].as_u64() > Some(0)),
        "a cycle line reports the conflict"
    );
}

#[test]
fn pull_follows_the_far_roots_changes() {
    let (tmp, a, b) = roots();
    fs::create_dir_all(&b).unwrap();
    write(&b, "there", b"t");
    let session = Session::far("pull", tmp.path(), &a, &b);
    assert!(same(&a, &b));
    write(&b, "new-there", b"n");
    fs::remove_file(b.join("there")).unwrap();
    eventually("the far root's changes arrive", || same(&a, &b));
    session.stop();
}
