//! The guards against losing data through deletes (DESIGN.md, Semantics,
//! "Guards against losing data through deletes", and `--max-delete`),
//! through the real binary, for push, pull and bidi, between local roots
//! and over the protocol (`far.example:/path` through the `--rsh` shim).
//!
//! Each guard case stops the run before any change on either side: exit 1,
//! a message saying what was found and the way past, and both roots, their
//! state directories and the session databases (row by row) as they were;
//! a root that lost its state gets none. `-x` gets past each root guard.
//! A first run, and a run after a first pass that never completed, are
//! not blocked. In continuous mode a cycle that meets a guard ends the
//! session with exit 1, changing nothing.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Reach {
    Local,
    Far,
}

const REACHES: [Reach; 2] = [Reach::Local, Reach::Far];
const VERBS: [&str; 3] = ["push", "pull", "bidi"];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Side {
    Local,
    Remote,
}

const SIDES: [Side; 2] = [Side::Local, Side::Remote];

/// Two roots under one temporary directory, synced once by `verb`.
struct Pair {
    tmp: tempfile::TempDir,
    verb: &'static str,
    reach: Reach,
    local: PathBuf,
    remote: PathBuf,
}

/// The files the source root starts with: 2 at the top, and a directory
/// of 5 entries (`dir/`, 3 files, `dir/sub/`... see [`Pair::new`]).
const FILES: [&str; 5] = ["a.txt", "b.txt", "dir/c.txt", "dir/d.txt", "dir/sub/e.txt"];

impl Pair {
    /// A pair whose data starts in the source root (bidi: the local one).
    fn new(verb: &'static str, reach: Reach) -> Pair {
        let pair = Pair::unsynced(verb, reach);
        for (i, file) in FILES.iter().enumerate() {
            write(pair.source(), file, format!("content {i}").as_bytes());
        }
        assert_code(&pair.run(&[]), 0);
        assert_same_tree(&pair.local, &pair.remote);
        pair
    }

    fn unsynced(verb: &'static str, reach: Reach) -> Pair {
        let tmp = tempfile::tempdir().unwrap();
        let (local, remote) = (tmp.path().join("local"), tmp.path().join("remote"));
        fs::create_dir_all(&local).unwrap();
        fs::create_dir_all(&remote).unwrap();
        Pair {
            tmp,
            verb,
            reach,
            local,
            remote,
        }
    }

    /// `snapsync VERB EXTRA LOCAL REMOTE`, the remote root reached as the
    /// pair says.
    fn command(&self, extra: &[&str]) -> Command {
        let mut cmd = Command::new(bin());
        cmd.arg(self.verb).args(extra);
        match self.reach {
            Reach::Local => {
                cmd.arg(&self.local).arg(&self.remote);
            }
            Reach::Far => {
                let shim = rsh_shim(self.tmp.path());
                cmd.arg("--rsh")
                    .arg(shim)
                    .arg("--remote-command")
                    .arg(bin())
                    .arg(&self.local)
                    .arg(format!("far.example:{}", self.remote.display()));
            }
        }
        cmd
    }

    fn run(&self, extra: &[&str]) -> Output {
        self.command(extra).output().expect("run snapsync")
    }

    fn root(&self, side: Side) -> &Path {
        match side {
            Side::Local => &self.local,
            Side::Remote => &self.remote,
        }
    }

    /// Where data comes from (bidi: the local root).
    fn source(&self) -> &Path {
        match self.verb {
            "pull" => &self.remote,
            _ => &self.local,
        }
    }

    fn source_side(&self) -> Side {
        match self.verb {
            "pull" => Side::Remote,
            _ => Side::Local,
        }
    }

    /// A root only data leaves: never created, even with `-x`.
    fn is_source_only(&self, side: Side) -> bool {
        self.verb != "bidi" && side == self.source_side()
    }

    /// How messages name a root.
    fn name(&self, side: Side) -> String {
        match (side, self.reach) {
            (Side::Local, _) => format!("local root {}", self.local.display()),
            (Side::Remote, Reach::Local) => format!("remote root {}", self.remote.display()),
            (Side::Remote, Reach::Far) => {
                format!("remote root far.example:{}", self.remote.display())
            }
        }
    }

    /// Everything a run could change on both sides.
    fn everything(&self) -> BTreeMap<String, String> {
        let mut out = everything(&self.local);
        for (path, what) in everything(&self.remote) {
            out.insert(format!("remote/{path}"), what);
        }
        out
    }

    fn case(&self, side: Side) -> String {
        format!("{} {:?}, {:?} root", self.verb, self.reach, side)
    }
}

/// Every directory and file under `root`, state directory included: files
/// by size, mode, mtime and content, session databases by their rows. The
/// session logs are left out (a refused run that got as far as opening the
/// session notes it there), and so are SQLite's write-ahead files (their
/// content is in the rows), the times of the state directory and of the
/// session locks (which such a run takes and lets go).
fn everything(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    match fs::symlink_metadata(root) {
        Err(_) => {
            out.insert(String::new(), "absent".into());
            return out;
        }
        Ok(meta) if !meta.is_dir() => {
            out.insert(String::new(), format!("{:?}", fs::read(root).unwrap()));
            return out;
        }
        Ok(_) => {}
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for item in fs::read_dir(&dir).unwrap() {
            let path = item.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let in_state = rel.starts_with(".snapsync");
            if rel.starts_with(".snapsync/logs") || rel.ends_with("-wal") || rel.ends_with("-shm") {
                continue;
            }
            let meta = fs::symlink_metadata(&path).unwrap();
            let what = if meta.is_dir() {
                stack.push(path.clone());
                if in_state {
                    "dir".to_string()
                } else {
                    format!(
                        "dir {:o} {}.{}",
                        meta.mode(),
                        meta.mtime(),
                        meta.mtime_nsec()
                    )
                }
            } else if rel.ends_with(".db") {
                dump(&path)
            } else if rel.ends_with(".lock") {
                format!("lock {:?}", fs::read(&path).unwrap())
            } else {
                format!(
                    "file {} {:o} {}.{} {:?}",
                    meta.len(),
                    meta.mode(),
                    meta.mtime(),
                    meta.mtime_nsec(),
                    String::from_utf8_lossy(&fs::read(&path).unwrap())
                )
            };
            out.insert(rel, what);
        }
    }
    out
}

/// Every row of every table of a session database.
fn dump(db: &Path) -> String {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("open {}: {e}", db.display()));
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut out = String::new();
    for table in tables {
        let mut query = conn.prepare(&format!("SELECT * FROM \"{table}\"")).unwrap();
        let columns = query.column_count();
        let mut rows: Vec<String> = query
            .query_map([], |row| {
                let values: Vec<rusqlite::types::Value> =
                    (0..columns).map(|i| row.get(i).unwrap()).collect();
                Ok(format!("{values:?}"))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        rows.sort();
        out.push_str(&format!("{table}: {rows:?}\n"));
    }
    out
}

#[track_caller]
fn assert_unchanged(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
    case: &str,
) {
    if before != after {
        let keys: std::collections::BTreeSet<_> = before.keys().chain(after.keys()).collect();
        let diffs: Vec<String> = keys
            .into_iter()
            .filter(|k| before.get(*k) != after.get(*k))
            .map(|k| format!("{k}: {:?} -> {:?}", before.get(k), after.get(k)))
            .collect();
        panic!(
            "{case}: a refused run changed something:\n{}",
            diffs.join("\n")
        );
    }
}

/// Refused (exit 1) with a message holding each of `says`.
#[track_caller]
fn assert_refused(out: &Output, case: &str, says: &[&str]) {
    assert_eq!(
        out.status.code(),
        Some(1),
        "{case}: exit code\nstdout: {}\nstderr: {}",
        stdout(out),
        stderr(out)
    );
    let err = stderr(out);
    for part in says.iter().chain(&["Nothing was changed"]) {
        assert!(
            err.contains(part),
            "{case}: the message lacks {part:?}: {err}"
        );
    }
}

/// Replaces a root by an empty directory: an unmounted disk's mount point.
fn unmount(root: &Path) {
    let away = root.with_extension("mounted");
    fs::rename(root, &away).unwrap();
    fs::create_dir(root).unwrap();
}

/// Deletes everything in a root but its state directory.
fn empty(root: &Path) {
    for item in fs::read_dir(root).unwrap() {
        let path = item.unwrap().path();
        if path.file_name() == Some(".snapsync".as_ref()) {
            continue;
        }
        if path.is_dir() {
            fs::remove_dir_all(path).unwrap();
        } else {
            fs::remove_file(path).unwrap();
        }
    }
}

/// Runs `-x` and expects the session to be made whole again: both roots
/// hold the same.
#[track_caller]
fn assert_x_gets_past(pair: &Pair, case: &str) {
    let out = pair.run(&["-x"]);
    assert_code(&out, 0);
    assert_same_tree(&pair.local, &pair.remote);
    assert!(
        pair.local.join(".snapsync").is_dir() && pair.remote.join(".snapsync").is_dir(),
        "{case}: -x left a root without state"
    );
}

// ---------------------------------------------------------------------------
// The snapshot on one side only

#[test]
fn an_unmounted_disk_is_refused_on_either_side() {
    for verb in VERBS {
        for reach in REACHES {
            for side in SIDES {
                let pair = Pair::new(verb, reach);
                let case = pair.case(side);
                unmount(pair.root(side));
                let before = pair.everything();
                let out = pair.run(&[]);
                assert_refused(
                    &out,
                    &case,
                    &[&pair.name(side), "no snapshot", "no state directory", "-x"],
                );
                assert_unchanged(&before, &pair.everything(), &case);
                assert!(!pair.root(side).join(".snapsync").exists(), "{case}");
                // A dry run is refused alike.
                assert_refused(&pair.run(&["-n"]), &case, &["no snapshot"]);
                assert_x_gets_past(&pair, &case);
            }
        }
    }
}

#[test]
fn a_root_restored_without_its_state_is_refused() {
    for verb in VERBS {
        for reach in REACHES {
            for side in SIDES {
                let pair = Pair::new(verb, reach);
                let case = pair.case(side);
                fs::remove_dir_all(pair.root(side).join(".snapsync")).unwrap();
                let before = pair.everything();
                let out = pair.run(&[]);
                assert_refused(
                    &out,
                    &case,
                    &[&pair.name(side), "no snapshot", "no state directory", "-x"],
                );
                assert_unchanged(&before, &pair.everything(), &case);
                assert_x_gets_past(&pair, &case);
            }
        }
    }
}

#[test]
fn a_root_that_lost_only_the_sessions_database_is_refused() {
    for verb in VERBS {
        for reach in REACHES {
            let pair = Pair::new(verb, reach);
            let side = Side::Remote;
            let case = pair.case(side);
            let state = pair.root(side).join(".snapsync");
            for item in fs::read_dir(&state).unwrap() {
                let path = item.unwrap().path();
                if path.extension() == Some("db".as_ref()) {
                    fs::remove_file(path).unwrap();
                }
            }
            let before = pair.everything();
            let out = pair.run(&[]);
            assert_refused(
                &out,
                &case,
                &[&pair.name(side), "has no database for it", "-x"],
            );
            assert_unchanged(&before, &pair.everything(), &case);
            assert_x_gets_past(&pair, &case);
        }
    }
}

// ---------------------------------------------------------------------------
// A missing root, a root that is not a directory

#[test]
fn a_missing_root_of_an_established_session_is_refused_not_made_again() {
    for verb in VERBS {
        for reach in REACHES {
            for side in SIDES {
                let pair = Pair::new(verb, reach);
                let case = pair.case(side);
                fs::rename(pair.root(side), pair.root(side).with_extension("away")).unwrap();
                let before = pair.everything();
                let out = pair.run(&[]);
                assert_refused(
                    &out,
                    &case,
                    &[&pair.name(side), "does not exist", "synced it before", "-x"],
                );
                assert_unchanged(&before, &pair.everything(), &case);
                assert!(!pair.root(side).exists(), "{case}: the root was made again");
                if pair.is_source_only(side) {
                    // Nothing to sync from: -x is no way past.
                    let out = pair.run(&["-x"]);
                    assert_code(&out, 1);
                    assert_stderr_says(&out, "does not exist");
                    assert!(!pair.root(side).exists(), "{case}");
                } else {
                    assert_x_gets_past(&pair, &case);
                }
            }
        }
    }
}

#[test]
fn a_root_that_is_not_a_directory_is_refused_before_either_side_changes() {
    for verb in VERBS {
        for reach in REACHES {
            for side in SIDES {
                let pair = Pair::unsynced(verb, reach);
                let case = pair.case(side);
                write(pair.source(), "f", b"data");
                fs::remove_dir_all(pair.root(side)).unwrap();
                fs::write(pair.root(side), b"a file, not a directory").unwrap();
                let before = pair.everything();
                let other = match side {
                    Side::Local => &pair.remote,
                    Side::Remote => &pair.local,
                };
                for extra in [&[][..], &["-x"]] {
                    let out = pair.run(extra);
                    assert_code(&out, 1);
                    assert!(
                        stderr(&out).contains("is not a directory"),
                        "{case}: {}",
                        stderr(&out)
                    );
                    assert_unchanged(&before, &pair.everything(), &case);
                    assert!(!other.join(".snapsync").exists(), "{case}: state written");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Another tree at a root's path

#[test]
fn another_tree_at_a_roots_path_is_refused() {
    for verb in VERBS {
        for reach in REACHES {
            for side in SIDES {
                let pair = Pair::new(verb, reach);
                let case = pair.case(side);
                // Another tree, synced in a session of its own (so it has a
                // root id of its own), is moved to the root's path.
                let other = pair.tmp.path().join("other");
                write(&other, "theirs.txt", b"another tree");
                let out = push(&other, &pair.tmp.path().join("other-copy"), &[]);
                assert_code(&out, 0);
                fs::rename(pair.root(side), pair.root(side).with_extension("away")).unwrap();
                fs::rename(&other, pair.root(side)).unwrap();
                let before = pair.everything();
                let out = pair.run(&[]);
                assert_refused(
                    &out,
                    &case,
                    &[&pair.name(side), "another tree", "root id", "-x"],
                );
                assert_unchanged(&before, &pair.everything(), &case);
                assert_x_gets_past(&pair, &case);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// An emptied root

#[test]
fn an_emptied_root_is_refused_on_either_side() {
    for verb in VERBS {
        for reach in REACHES {
            for side in SIDES {
                let pair = Pair::new(verb, reach);
                let case = pair.case(side);
                empty(pair.root(side));
                let before = pair.everything();
                let out = pair.run(&[]);
                assert_refused(
                    &out,
                    &case,
                    &[
                        &pair.name(side),
                        "is empty",
                        "snapshot holds 7 entries",
                        "-x",
                    ],
                );
                assert_unchanged(&before, &pair.everything(), &case);
                assert_refused(&pair.run(&["-n"]), &case, &["is empty"]);
                assert_x_gets_past(&pair, &case);
            }
        }
    }
}

#[test]
fn a_root_whose_state_lives_elsewhere_is_judged_by_that_state() {
    for reach in REACHES {
        let pair = Pair::unsynced("pull", reach);
        let state = pair.tmp.path().join("state");
        let state_arg = state.to_str().unwrap();
        let case = format!("{reach:?}");
        for file in FILES {
            write(&pair.remote, file, b"data");
        }
        assert_code(&pair.run(&["--state-dir", state_arg]), 0);
        // The disk holding the local root unmounted: its state, kept
        // elsewhere, still says what the root held.
        unmount(&pair.local);
        // That state directory's log aside, as `everything` leaves out the
        // ones in `.snapsync/`.
        let state_now = || -> BTreeMap<String, String> {
            everything(&state)
                .into_iter()
                .filter(|(path, _)| !path.starts_with("logs"))
                .collect()
        };
        let before = (pair.everything(), state_now());
        let out = pair.run(&["--state-dir", state_arg]);
        assert_refused(&out, &case, &[&pair.name(Side::Local), "is empty"]);
        assert_eq!((pair.everything(), state_now()), before, "{case}");
        // The mount point gone too.
        fs::remove_dir(&pair.local).unwrap();
        let out = pair.run(&["--state-dir", state_arg]);
        assert_refused(&out, &case, &["does not exist", "synced it before"]);
        assert!(!pair.local.exists(), "{case}: the root was made again");
    }
}

#[test]
fn a_root_holding_only_excluded_entries_counts_as_empty() {
    for reach in REACHES {
        let pair = Pair::new("push", reach);
        empty(&pair.local);
        write(&pair.local, "scratch.tmp", b"excluded");
        let before = pair.everything();
        let out = pair.run(&["--exclude", "*.tmp"]);
        assert_refused(&out, &format!("{reach:?}"), &["is empty"]);
        assert_unchanged(&before, &pair.everything(), &format!("{reach:?}"));
    }
}

// ---------------------------------------------------------------------------
// Not blocked: a first run, a first pass that never completed

#[test]
fn a_first_run_is_not_blocked() {
    for verb in VERBS {
        for reach in REACHES {
            // A missing target (or bidi root) is made.
            let pair = Pair::unsynced(verb, reach);
            write(pair.source(), "f", b"data");
            let target = match pair.source_side() {
                Side::Local => &pair.remote,
                Side::Remote => &pair.local,
            };
            fs::remove_dir(target).unwrap();
            assert_code(&pair.run(&[]), 0);
            assert_same_tree(&pair.local, &pair.remote);
        }
        for reach in REACHES {
            // An empty source root with no state, into a target that holds
            // files: a first run, so the target follows the source.
            let pair = Pair::unsynced(verb, reach);
            let other = match pair.source_side() {
                Side::Local => &pair.remote,
                Side::Remote => &pair.local,
            };
            write(other, "there", b"data");
            assert_code(&pair.run(&[]), 0);
            assert_same_tree(&pair.local, &pair.remote);
        }
    }
}

#[test]
fn a_session_whose_first_pass_never_completed_is_not_blocked() {
    for verb in VERBS {
        for reach in REACHES {
            let pair = Pair::new(verb, reach);
            let case = pair.case(pair.source_side());
            unestablish(&pair.local);
            unestablish(&pair.remote);
            // The source root lost its state; its files are still there.
            fs::remove_dir_all(pair.source().join(".snapsync")).unwrap();
            let out = pair.run(&[]);
            assert_code(&out, 0);
            assert_same_tree(&pair.local, &pair.remote);
            // That run completed: from now on the guards hold.
            empty(pair.source());
            assert_refused(&pair.run(&[]), &case, &["is empty"]);
        }
    }
}

// ---------------------------------------------------------------------------
// A first run stopped midway, then a root that lost what it had

/// Files the interrupted first runs start with: small, and sent slowly
/// (`--bwlimit`), so that a run is stopped with part of them across.
const FIRST_RUN_FILES: usize = 1200;

impl Pair {
    /// Where data goes (bidi: the remote root).
    fn target(&self) -> &Path {
        match self.verb {
            "pull" => &self.local,
            _ => &self.remote,
        }
    }

    /// Starts the session's first run on a source of
    /// [`FIRST_RUN_FILES`] files, lets part of them arrive and stops it
    /// with `signal` (SIGINT: the run saves what it did and exits 130;
    /// SIGKILL: what its last batch of rows recorded stays). The source's
    /// snapshot then records files as synced, and the session is not
    /// established.
    fn interrupt_first_run(&self, signal: i32) {
        let case = format!("{} {:?}", self.verb, self.reach);
        generate_tree(self.source(), 0xF125, FIRST_RUN_FILES, 1024, 3 * 1024);
        let mut child = self
            .command(&["--bwlimit", "1M"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        // Past the first batch of rows (written every 0.5 s), so that a
        // kill -9 leaves some too.
        while child.try_wait().unwrap().is_none()
            && (start.elapsed() < Duration::from_millis(1200)
                || files_in(self.target()) < FIRST_RUN_FILES / 5)
        {
            assert!(
                start.elapsed() < DEADLINE,
                "{case}: the run made no progress"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = child.wait().unwrap();
        let arrived = files_in(self.target());
        if signal == libc::SIGINT {
            assert_eq!(
                status.code(),
                Some(130),
                "{case}: {status}, {arrived} files arrived"
            );
        } else {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(status.signal(), Some(signal), "{case}: {status}");
        }
        // (A pull from a far root may have all of them by then: the far
        // end sends what it has started on, and the run still ends
        // interrupted.)
        assert!(arrived > 0, "{case}: stopped before any file arrived");
        let rows = snapshot_rows(self.source());
        assert!(rows > 0, "{case}: the source's snapshot recorded nothing");
    }
}

/// Regular files below `root`, its state directory aside.
fn files_in(root: &Path) -> usize {
    let mut count = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(items) = fs::read_dir(&dir) else {
            continue;
        };
        for item in items.flatten() {
            let path = item.path();
            if path == root.join(".snapsync") {
                continue;
            }
            match item.file_type() {
                Ok(kind) if kind.is_dir() => stack.push(path),
                Ok(kind) if kind.is_file() => count += 1,
                _ => {}
            }
        }
    }
    count
}

/// The rows of the one session database in `root/.snapsync`.
fn snapshot_rows(root: &Path) -> u64 {
    let db = fs::read_dir(root.join(".snapsync"))
        .unwrap()
        .map(|item| item.unwrap().path())
        .find(|path| path.extension() == Some("db".as_ref()))
        .expect("a session database");
    let conn =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.query_row("SELECT count(*) FROM entries", [], |row| row.get(0))
        .unwrap()
}

/// After the run that finishes the work, the session is established: a
/// root that loses its state now is refused.
#[track_caller]
fn assert_established(pair: &Pair, case: &str) {
    let out = pair.run(&["--json"]);
    assert_code(&out, 0);
    let s = summary(&out);
    assert_eq!(
        count(&s, "created") + count(&s, "updated"),
        0,
        "{case}: {s}"
    );
    unmount(pair.target());
    assert_refused(&pair.run(&[]), case, &["no snapshot"]);
}

#[test]
fn a_first_run_stopped_midway_then_its_target_deleted_sends_every_file() {
    for verb in VERBS {
        for reach in REACHES {
            let pair = Pair::unsynced(verb, reach);
            let case = format!("{verb} {reach:?}");
            pair.interrupt_first_run(libc::SIGINT);
            // The target, its state with it, is gone.
            fs::remove_dir_all(pair.target()).unwrap();
            let out = pair.run(&[]);
            assert_code(&out, 0);
            assert_eq!(files_in(pair.target()), FIRST_RUN_FILES, "{case}");
            assert_same_tree(&pair.local, &pair.remote);
            let err = stderr(&out);
            assert!(
                err.contains("never completed a run")
                    && err.contains("compared in full, as with -x"),
                "{case}: {err}"
            );
            assert_established(&pair, &case);
        }
    }
}

#[test]
fn a_first_run_killed_midway_then_its_target_deleted_sends_every_file() {
    // Between local roots, where settled rows are written as the files
    // arrive (over the protocol the far end reports them at the end).
    let pair = Pair::unsynced("push", Reach::Local);
    pair.interrupt_first_run(libc::SIGKILL);
    fs::remove_dir_all(pair.target()).unwrap();
    let out = pair.run(&[]);
    assert_code(&out, 0);
    assert_same_tree(&pair.local, &pair.remote);
    assert_established(&pair, "push Local");
}

#[test]
fn a_first_run_stopped_midway_then_the_targets_state_removed_adopts_what_arrived() {
    for verb in VERBS {
        for reach in REACHES {
            let pair = Pair::unsynced(verb, reach);
            let case = format!("{verb} {reach:?}");
            pair.interrupt_first_run(libc::SIGINT);
            fs::remove_dir_all(pair.target().join(".snapsync")).unwrap();
            let missing = bytes_missing(pair.source(), pair.target());
            // A dry run says what a run would do, and changes nothing.
            let before = pair.everything();
            let dry = pair.run(&["-n"]);
            assert_code(&dry, 0);
            assert_unchanged(&before, &pair.everything(), &case);
            assert!(stderr(&dry).contains("compared in full"), "{case}");
            let out = pair.run(&["--json"]);
            assert_code(&out, 0);
            let err = stderr(&out);
            assert!(err.contains("compared in full"), "{case}: {err}");
            // The target's files are this session's own, not drift.
            assert!(!err.contains("changed since"), "{case}: {err}");
            let s = summary(&out);
            let sent = count(&s, "bytes_sent") + count(&s, "bytes_received");
            assert!(
                sent <= missing,
                "{case}: sent {sent} bytes, only {missing} were missing"
            );
            assert_same_tree(&pair.local, &pair.remote);
            assert_established(&pair, &case);
        }
    }
}

/// The bytes of the files under `source` that `target` lacks.
fn bytes_missing(source: &Path, target: &Path) -> u64 {
    let mut missing = 0;
    let mut stack = vec![source.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for item in fs::read_dir(&dir).unwrap() {
            let path = item.unwrap().path();
            if path == source.join(".snapsync") {
                continue;
            }
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path);
            } else if !target.join(path.strip_prefix(source).unwrap()).exists() {
                missing += meta.len();
            }
        }
    }
    missing
}

// ---------------------------------------------------------------------------
// --max-delete

#[test]
fn max_delete_refuses_a_plan_that_deletes_more() {
    for verb in VERBS {
        for reach in REACHES {
            let pair = Pair::new(verb, reach);
            let case = format!("{verb} {reach:?}");
            // The source deletes a file and a directory of 5 entries: 6
            // paths, of the 7 in each snapshot.
            fs::remove_file(pair.source().join("a.txt")).unwrap();
            fs::remove_dir_all(pair.source().join("dir")).unwrap();
            let target = match pair.source_side() {
                Side::Local => Side::Remote,
                Side::Remote => Side::Local,
            };
            let before = pair.everything();
            for (limit, says) in [
                ("5", "deletes 6 paths on the "),
                ("80%", "deletes 6 of the 7 paths of the "),
                ("0", "deletes 6 paths on the "),
            ] {
                let out = pair.run(&["--max-delete", limit]);
                assert_refused(
                    &out,
                    &case,
                    &[says, &pair.name(target), &format!("--max-delete {limit}")],
                );
                assert_unchanged(&before, &pair.everything(), &case);
            }
            // A dry run shows the plan, and says a run would be refused.
            let out = pair.run(&["-n", "--max-delete", "5"]);
            assert_code(&out, 1);
            assert!(
                stdout(&out).contains("delete  dir/"),
                "{case}: {}",
                stdout(&out)
            );
            assert!(
                stderr(&out).contains("would be refused"),
                "{case}: {}",
                stderr(&out)
            );
            assert_unchanged(&before, &pair.everything(), &case);
            // Within the limit, the run goes on.
            for limit in ["6", "86%"] {
                let out = pair.run(&["-n", "--max-delete", limit]);
                assert_code(&out, 0);
            }
            let s = summary(&pair.run(&["--max-delete", "6", "--json"]));
            assert_eq!(count(&s, "deleted"), 6, "{case}: {s}");
            assert_same_tree(&pair.local, &pair.remote);
        }
    }
}

#[test]
fn max_delete_counts_both_sides_of_a_bidi_run_together() {
    for reach in REACHES {
        let pair = Pair::new("bidi", reach);
        fs::remove_dir_all(pair.local.join("dir")).unwrap();
        fs::remove_file(pair.remote.join("a.txt")).unwrap();
        let before = pair.everything();
        let out = pair.run(&["--max-delete", "5"]);
        assert_refused(
            &out,
            &format!("{reach:?}"),
            &[
                "deletes 6 paths",
                &format!("5 on the {}", pair.name(Side::Remote)),
                &format!("1 on the {}", pair.name(Side::Local)),
            ],
        );
        assert_unchanged(&before, &pair.everything(), &format!("{reach:?}"));
        // Each side's share is of its own snapshot: 5 of 7 on one side.
        let out = pair.run(&["--max-delete", "70%"]);
        assert_refused(&out, &format!("{reach:?}"), &["5 of the 7 paths"]);
        assert_code(&pair.run(&["--max-delete", "72%"]), 0);
        assert_same_tree(&pair.local, &pair.remote);
    }
}

#[test]
fn max_delete_measures_a_first_run_against_the_scanned_tree() {
    for reach in REACHES {
        // No snapshot yet: the target's extra entries are all of its tree.
        let pair = Pair::unsynced("push", reach);
        write(&pair.local, "keep", b"k");
        for name in ["x1", "x2", "x3"] {
            write(&pair.remote, name, b"extra");
        }
        write(&pair.remote, "keep", b"k");
        let before = pair.everything();
        let out = pair.run(&["--max-delete", "50%"]);
        assert_refused(
            &out,
            &format!("{reach:?}"),
            &["deletes 3 of the 4 paths of the remote root"],
        );
        assert_unchanged(&before, &pair.everything(), &format!("{reach:?}"));
        assert_code(&pair.run(&["--max-delete", "75%"]), 0);
        assert_same_tree(&pair.local, &pair.remote);
    }
}

#[test]
fn a_refused_reset_keeps_the_snapshot_it_would_have_dropped() {
    for reach in REACHES {
        let pair = Pair::new("push", reach);
        let case = format!("{reach:?}");
        // Drift on the target that -x, comparing in full, would delete.
        write(&pair.remote, "drift", b"written on the target");
        let before = pair.everything();
        let out = pair.run(&["-x", "--max-delete", "0"]);
        assert_refused(&out, &case, &["--max-delete 0"]);
        assert_unchanged(&before, &pair.everything(), &case);
        // The session goes on from its snapshot.
        write(&pair.local, "new", b"n");
        let s = summary(&pair.run(&["--json"]));
        assert_eq!(count(&s, "created"), 1, "{case}: {s}");
        assert_eq!(count(&s, "deleted"), 1, "{case}: {s}");
    }
}

// ---------------------------------------------------------------------------
// Continuous mode

const DEADLINE: Duration = Duration::from_secs(20);

/// A `-C` session of `pair`, its first pass done. A long cooloff makes
/// each burst of changes one cycle.
struct Running {
    child: std::process::Child,
    _stdout: Option<BufReader<std::process::ChildStdout>>,
}

impl Running {
    fn start(pair: &Pair, extra: &[&str]) -> Running {
        let mut child = pair
            .command(&[&["-C", "--json", "--cooloff", "500"][..], extra].concat())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        assert!(
            first.starts_with('{'),
            "the first pass never finished: {first}"
        );
        Running {
            child,
            _stdout: Some(stdout),
        }
    }

    /// Waits for the session to end on its own: its exit code and stderr.
    fn ended(mut self) -> (Option<i32>, String) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(&mut self.child.stderr.take().unwrap(), &mut err)
                    .unwrap();
                return (status.code(), err);
            }
            if start.elapsed() > DEADLINE {
                let _ = self.child.kill();
                panic!("the session did not end");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_continuous_session_ends_when_a_root_is_emptied_under_it() {
    for (verb, reach) in [
        ("push", Reach::Local),
        ("pull", Reach::Far),
        ("bidi", Reach::Far),
    ] {
        let pair = Pair::new(verb, reach);
        let case = format!("{verb} {reach:?}");
        let session = Running::start(&pair, &[]);
        let other = match pair.source_side() {
            Side::Local => &pair.remote,
            Side::Remote => &pair.local,
        };
        let kept = tree(other);
        empty(pair.source());
        let (code, err) = session.ended();
        assert_eq!(code, Some(1), "{case}: {err}");
        assert!(err.contains("is empty"), "{case}: {err}");
        assert_eq!(tree(other), kept, "{case}: the other root changed");
    }
}

#[test]
fn a_continuous_session_ends_when_its_disk_goes() {
    for (verb, reach, side) in [
        ("push", Reach::Local, Side::Local),
        ("push", Reach::Far, Side::Local),
        ("bidi", Reach::Far, Side::Remote),
    ] {
        let pair = Pair::new(verb, reach);
        let case = pair.case(side);
        let session = Running::start(&pair, &[]);
        let other = match side {
            Side::Local => &pair.remote,
            Side::Remote => &pair.local,
        };
        let kept = tree(other);
        unmount(pair.root(side));
        let (code, err) = session.ended();
        assert_eq!(code, Some(1), "{case}: {err}");
        assert!(err.contains("state directory"), "{case}: {err}");
        assert!(err.contains("is gone"), "{case}: {err}");
        assert_eq!(tree(other), kept, "{case}: the other root changed");
        assert!(
            fs::read_dir(pair.root(side)).unwrap().next().is_none(),
            "{case}: something was written into the empty mount point"
        );
        // Started again on the unmounted root, its first pass is refused.
        let again = pair
            .command(&["-C"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (code, err) = Running {
            child: again,
            _stdout: None,
        }
        .ended();
        assert_eq!(code, Some(1), "{case}: {err}");
        assert!(err.contains("no snapshot"), "{case}: {err}");
    }
}

#[test]
fn a_continuous_session_ends_when_a_cycle_deletes_more_than_max_delete() {
    for reach in REACHES {
        let pair = Pair::new("push", reach);
        let session = Running::start(&pair, &["--max-delete", "0"]);
        let kept = tree(&pair.remote);
        fs::remove_file(pair.local.join("a.txt")).unwrap();
        let (code, err) = session.ended();
        assert_eq!(code, Some(1), "{reach:?}: {err}");
        assert!(err.contains("--max-delete 0"), "{reach:?}: {err}");
        assert_eq!(tree(&pair.remote), kept, "{reach:?}: the target changed");
    }
}
