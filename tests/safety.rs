//! Safety: what a run must never do, whatever happens to it. Each test drives
//! the real binary on temporary directories (see DESIGN.md, "Nothing is
//! lost", "Roots", "State" and the exit codes).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const TEMP_PREFIX: &[u8] = b".snapsync-tmp-";

/// A temporary directory and its canonical path (so messages can be
/// matched against the path the binary resolves).
fn scratch() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().canonicalize().unwrap();
    (dir, path)
}

fn is_temp_name(name: &OsStr) -> bool {
    name.as_bytes().starts_with(TEMP_PREFIX)
}

/// Regular files under real names below `root` (not in `.snapsync`, not
/// temporary names): relative path → absolute path. Tolerates a tree that
/// changes while it is read.
fn real_files(root: &Path) -> BTreeMap<PathBuf, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(items) = fs::read_dir(&dir) else {
            continue;
        };
        for item in items.flatten() {
            let name = item.file_name();
            if dir == root && name == ".snapsync" {
                continue;
            }
            let Ok(kind) = item.file_type() else {
                continue;
            };
            let path = item.path();
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() && !is_temp_name(&name) {
                out.insert(path.strip_prefix(root).unwrap().to_path_buf(), path);
            }
        }
    }
    out
}

/// Every `.snapsync-tmp-*` below `root`, the state directory included.
fn temp_leftovers(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(items) = fs::read_dir(&dir) else {
            continue;
        };
        for item in items.flatten() {
            if is_temp_name(&item.file_name()) {
                out.push(item.path());
            } else if item.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(item.path());
            }
        }
    }
    out
}

/// Why `copy` is not an exact copy of `original` (content, mtime to the
/// nanosecond, permission bits), or None.
fn copy_differs(original: &Path, copy: &Path) -> Option<String> {
    let (a, b) = match (fs::metadata(original), fs::metadata(copy)) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => return Some(format!("stat: {:?} / {:?}", a.err(), b.err())),
    };
    if !a.is_file() || !b.is_file() {
        return Some("not a regular file on both sides".into());
    }
    if (a.mtime(), a.mtime_nsec()) != (b.mtime(), b.mtime_nsec()) {
        return Some(format!(
            "mtime {}.{:09} vs {}.{:09}",
            a.mtime(),
            a.mtime_nsec(),
            b.mtime(),
            b.mtime_nsec()
        ));
    }
    if a.mode() & 0o7777 != b.mode() & 0o7777 {
        return Some(format!("mode {:o} vs {:o}", a.mode(), b.mode()));
    }
    if a.len() != b.len() {
        return Some(format!("size {} vs {}", a.len(), b.len()));
    }
    if fs::read(original).ok() != fs::read(copy).ok() {
        return Some("content differs".into());
    }
    None
}

/// The one session database in `root/.snapsync`.
fn session_db(root: &Path) -> PathBuf {
    let dbs: Vec<PathBuf> = fs::read_dir(root.join(".snapsync"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension() == Some(OsStr::new("db")))
        .collect();
    assert_eq!(dbs.len(), 1, "expected one session database: {dbs:?}");
    dbs.into_iter().next().unwrap()
}

/// Compares two trees by key and node, printing only the paths that differ
/// (a failing `assert_eq!` on trees would print every byte).
#[track_caller]
fn assert_trees_equal(actual: &BTreeMap<Vec<u8>, Node>, expected: &BTreeMap<Vec<u8>, Node>) {
    let differ: Vec<String> = actual
        .keys()
        .chain(expected.keys())
        .filter(|k| actual.get(*k) != expected.get(*k))
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    assert!(differ.is_empty(), "trees differ at: {differ:?}");
}

// ---------------------------------------------------------------------------
// 1. kill -9 mid-run

#[test]
fn killed_push_never_leaves_partial_files_and_next_run_finishes_without_resending() {
    const FILES: usize = 3000;
    const KILLS: usize = 3;
    /// New files on the target before each kill.
    const STEP: usize = 200;

    let (_dir, base) = scratch();
    let (src, dst) = (base.join("src"), base.join("dst"));
    generate_tree(&src, 0x5AFE, FILES, 1024, 64 * 1024);
    let sources = real_files(&src);
    assert_eq!(sources.len(), FILES);

    let mut kills = 0;
    for round in 1..=KILLS {
        let before = real_files(&dst).len();
        assert!(
            before + STEP < FILES,
            "round {round}: target already holds {before} files"
        );
        let mut child = Command::new(bin())
            .arg("push")
            .arg(&src)
            .arg(&dst)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() && real_files(&dst).len() < before + STEP {
            assert!(
                Instant::now() < deadline,
                "round {round}: push made no progress"
            );
            thread::sleep(Duration::from_millis(2));
        }
        // SIGKILL: no handler runs, nothing is flushed.
        let _ = child.kill();
        let status = child.wait().unwrap();
        let arrived = real_files(&dst);
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "round {round}: the push ended ({status}) before it could be killed \
             ({} of {FILES} files arrived); the tree must be larger",
            arrived.len()
        );
        assert!(
            arrived.len() < FILES,
            "round {round}: killed only after every file had arrived"
        );
        kills += 1;
        eprintln!(
            "round {round}: killed with {} of {FILES} files in place",
            arrived.len()
        );

        // Whatever is under a real name is complete and exact.
        for (rel, copy) in &arrived {
            let original = sources
                .get(rel)
                .unwrap_or_else(|| panic!("round {round}: {rel:?} is not in the source"));
            if let Some(why) = copy_differs(original, copy) {
                panic!("round {round}: {rel:?} is under its real name but not complete: {why}");
            }
        }
    }
    assert_eq!(kills, KILLS, "the push must really be killed mid-run");

    // What the final run may send: the files not already there, exact.
    let arrived = real_files(&dst);
    let mut missing_bytes = 0u64;
    let mut total_bytes = 0u64;
    for (rel, original) in &sources {
        let size = fs::metadata(original).unwrap().len();
        total_bytes += size;
        let complete = arrived
            .get(rel)
            .is_some_and(|copy| copy_differs(original, copy).is_none());
        if !complete {
            missing_bytes += size;
        }
    }
    assert!(
        missing_bytes < total_bytes,
        "nothing arrived before the kills"
    );

    let out = push(&src, &dst, &["--json"]);
    assert_code(&out, 0);
    let sent = count(&summary(&out), "bytes_sent");
    assert!(
        sent <= missing_bytes,
        "the final run re-sent completed files: sent {sent} bytes, only {missing_bytes} were missing (of {total_bytes})"
    );
    assert_same_tree(&src, &dst);
    let leftovers: Vec<PathBuf> = temp_leftovers(&dst)
        .into_iter()
        .chain(temp_leftovers(&src))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

// ---------------------------------------------------------------------------
// 2. and 3. roots that cannot be synced

#[test]
fn missing_source_is_an_error_naming_it_and_creates_no_target() {
    let (_dir, base) = scratch();
    let (src, dst) = (base.join("no-such-source"), base.join("dst"));
    let out = push(&src, &dst, &[]);
    assert_code(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains(src.to_str().unwrap()),
        "stderr does not name {}: {err}",
        src.display()
    );
    assert!(!dst.exists(), "the target was created");
    assert!(!src.exists(), "the source was created");
}

#[test]
fn target_inside_source_is_refused_before_anything_is_written() {
    let (_dir, base) = scratch();
    let src = base.join("src");
    generate_tree(&src, 31, 20, 10, 500);
    let before = tree(&src);
    let ids = identities(&src);
    std::os::unix::fs::symlink(&src, base.join("alias")).unwrap();

    // Spelled directly, through `..`, and through a symlink to the source.
    for dst in [
        src.join("backup"),
        src.join("d1/../d2/nested"),
        base.join("alias/backup"),
    ] {
        let out = push(&src, &dst, &[]);
        assert_code(&out, 1);
        let err = stderr(&out);
        assert!(
            err.contains("inside"),
            "no clear message for {}: {err}",
            dst.display()
        );
        assert!(!src.join("backup").exists(), "the target was created");
        assert!(!src.join("d2/nested").exists(), "the target was created");
        assert!(!src.join(".snapsync").exists(), "state was written");
        assert_trees_equal(&tree(&src), &before);
        assert_eq!(identities(&src), ids, "the source was touched");
    }
}

#[test]
fn source_inside_target_is_refused_before_anything_is_written() {
    let (_dir, base) = scratch();
    let dst = base.join("dst");
    generate_tree(&dst, 32, 20, 10, 500);
    let src = dst.join("d3/inner");
    generate_tree(&src, 33, 10, 10, 500);
    let before = tree(&dst);
    let ids = identities(&dst);

    for (verb, out) in [
        ("push", push(&src, &dst, &[])),
        // The same pair seen from the other side: pull into the outer root.
        ("pull", pull(&dst, &src, &[])),
    ] {
        assert_code(&out, 1);
        let err = stderr(&out);
        assert!(err.contains("inside"), "{verb}: no clear message: {err}");
        assert!(!dst.join(".snapsync").exists(), "{verb}: state was written");
        assert!(!src.join(".snapsync").exists(), "{verb}: state was written");
        assert_trees_equal(&tree(&dst), &before);
        assert_eq!(identities(&dst), ids, "{verb}: the trees were touched");
    }
}

// ---------------------------------------------------------------------------
// 4. one unreadable file

const NOBODY: u32 = 65534;

fn chown_tree(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap();
    if fs::symlink_metadata(path).unwrap().is_dir() {
        for item in fs::read_dir(path).unwrap() {
            chown_tree(&item.unwrap().path(), uid);
        }
    }
}

#[test]
fn unreadable_source_file_fails_alone_and_everything_else_syncs() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: needs root to run snapsync as an unprivileged user (setpriv)");
        return;
    }
    let (_dir, base) = scratch();
    fs::set_permissions(&base, fs::Permissions::from_mode(0o755)).unwrap();
    let src = base.join("src");
    generate_tree(&src, 41, 60, 10, 3000);
    write(&src, "d1/s1/secret.dat", b"nobody may read this");
    // The user owns the tree (its state directory goes there too) but has
    // taken read permission away from one file.
    chown_tree(&src, NOBODY);
    chmod(&src, "d1/s1/secret.dat", 0o000);
    let parent = base.join("out");
    fs::create_dir(&parent).unwrap();
    std::os::unix::fs::chown(&parent, Some(NOBODY), Some(NOBODY)).unwrap();
    let dst = parent.join("dst");

    let out = Command::new("setpriv")
        .arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .arg("--clear-groups")
        .arg(bin())
        .arg("push")
        .arg(&src)
        .arg(&dst)
        .output()
        .expect("run setpriv");
    assert_code(&out, 3);
    let err = stderr(&out);
    assert!(
        err.contains("d1/s1/secret.dat"),
        "stderr does not name the file: {err}"
    );
    let mut expected = tree(&src);
    assert!(expected.remove(b"d1/s1/secret.dat".as_slice()).is_some());
    assert_trees_equal(&tree(&dst), &expected);
    assert!(temp_leftovers(&dst).is_empty());
}

// ---------------------------------------------------------------------------
// 5. a file that changes while it is copied

const BLOCK: usize = 1 << 20;

/// File contents built from 1 MiB blocks, each generated from a seed, so a
/// version is a short list of seeds and can be compared by streaming.
#[derive(Default)]
struct Blocks(HashMap<u64, Vec<u8>>);

impl Blocks {
    fn get(&mut self, seed: u64) -> &[u8] {
        self.0
            .entry(seed)
            .or_insert_with(|| Rng::new(seed).bytes(BLOCK))
    }

    fn write(&mut self, path: &Path, version: &[u64]) {
        let mut file = File::create(path).unwrap();
        for &seed in version {
            file.write_all(self.get(seed)).unwrap();
        }
    }

    /// Appends one block, or overwrites block `index` in place.
    fn change(&mut self, path: &Path, how: Change, index: usize, seed: u64) {
        let data = self.get(seed);
        match how {
            Change::Append => {
                let mut file = OpenOptions::new().append(true).open(path).unwrap();
                file.write_all(data).unwrap();
            }
            Change::Rewrite => {
                let file = OpenOptions::new().write(true).open(path).unwrap();
                file.write_all_at(data, (index * BLOCK) as u64).unwrap();
            }
        }
    }

    /// True when `path` holds exactly `version`.
    fn holds(&mut self, path: &Path, version: &[u64]) -> bool {
        let Ok(mut file) = File::open(path) else {
            return false;
        };
        if file.metadata().unwrap().len() != (version.len() * BLOCK) as u64 {
            return false;
        }
        let mut buf = vec![0u8; BLOCK];
        for &seed in version {
            if file.read_exact(&mut buf).is_err() || buf != self.get(seed) {
                return false;
            }
        }
        true
    }
}

/// How the source file changes during the copy.
#[derive(Clone, Copy, Debug)]
enum Change {
    /// Grows: size and mtime change.
    Append,
    /// Same size, new bytes from the start on: only mtime (and content) change.
    Rewrite,
}

/// The file after the first `k` of `changes` were made to `version`.
fn changed_version(version: &[u64], how: Change, changes: &[u64], k: usize) -> Vec<u64> {
    match how {
        Change::Append => [version, &changes[..k]].concat(),
        Change::Rewrite => [&changes[..k], &version[k..]].concat(),
    }
}

/// Timing is made as deterministic as it can be without hooks in the
/// binary: the test waits until the push has created the temporary file for
/// the big file in the target (so the copy is under way; copying 160 MiB
/// takes far longer than the 1 ms poll), and only then starts changing the
/// source, one 1 MiB block every 5 ms. The push must notice before it renames
/// the copy into place. Should the copy ever win the race, the attempt still
/// checks that what arrived is a real version, and the next attempt starts
/// from a new version.
fn file_changing_during_copy(how: Change) {
    const CHANGES: usize = 16;
    const BLOCKS: usize = 160;
    let (_dir, base) = scratch();
    let (src, dst) = (base.join("src"), base.join("dst"));
    generate_tree(&src, 51, 10, 10, 1000);
    let big = src.join("big.bin");
    let big_copy = dst.join("big.bin");
    let mut blocks = Blocks::default();
    let mut version: Vec<u64> = vec![1; 24];
    blocks.write(&big, &version);
    push_json(&src, &dst, &[]);
    assert!(blocks.holds(&big_copy, &version));
    // The complete version the target holds.
    let mut synced = version.clone();

    let mut caught = false;
    for attempt in 0..5u64 {
        let seed = 10 * (attempt + 1);
        version = vec![seed; BLOCKS];
        blocks.write(&big, &version);
        let mut child = Command::new(bin())
            .arg("push")
            .arg(&src)
            .arg(&dst)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none()
            && !fs::read_dir(&dst)
                .unwrap()
                .flatten()
                .any(|e| is_temp_name(&e.file_name()))
        {
            assert!(Instant::now() < deadline, "the copy never started");
            thread::sleep(Duration::from_millis(1));
        }

        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (stop, big) = (Arc::clone(&stop), big.clone());
            let mut blocks = Blocks::default();
            thread::spawn(move || {
                let mut made = Vec::new();
                for k in 0..CHANGES {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let seed = 1000 * (attempt + 1) + k as u64;
                    blocks.change(&big, how, k, seed);
                    made.push(seed);
                    thread::sleep(Duration::from_millis(5));
                }
                made
            })
        };
        let out = child.wait_with_output().unwrap();
        stop.store(true, Ordering::SeqCst);
        let made = writer.join().unwrap();
        // Every state the source file was in during the run.
        let real_versions: Vec<Vec<u64>> = (0..=made.len())
            .map(|k| changed_version(&version, how, &made, k))
            .chain([synced.clone()])
            .collect();
        version = changed_version(&version, how, &made, made.len());

        assert!(
            real_versions.iter().any(|v| blocks.holds(&big_copy, v)),
            "attempt {attempt}: the target holds a torn big.bin (exit {:?})",
            out.status.code()
        );
        assert!(
            temp_leftovers(&dst).is_empty(),
            "attempt {attempt}: temporary files left"
        );
        match out.status.code() {
            Some(3) => {
                let err = stderr(&out);
                assert!(
                    err.contains("changed while") && err.contains("big.bin"),
                    "attempt {attempt}: {err}"
                );
                assert!(
                    blocks.holds(&big_copy, &synced),
                    "attempt {attempt}: the refused copy replaced the old version"
                );
                eprintln!("{how:?}, attempt {attempt}: the change was noticed");
                caught = true;
                break;
            }
            Some(0) => {
                // The copy won the race; it must be one real version.
                synced = real_versions
                    .into_iter()
                    .find(|v| blocks.holds(&big_copy, v))
                    .unwrap();
            }
            _ => assert_code(&out, 3),
        }
    }
    assert!(caught, "the change during the copy was never noticed");

    // Left alone, the file is synced by the next run, in full.
    let summary = push_json(&src, &dst, &[]);
    assert!(
        count(&summary, "bytes_sent") >= (version.len() * BLOCK) as u64,
        "big.bin was not sent again: {summary}"
    );
    assert!(blocks.holds(&big_copy, &version));
    assert_same_tree(&src, &dst);
}

#[test]
fn file_growing_during_copy_is_never_synced_torn_and_next_run_picks_it_up() {
    file_changing_during_copy(Change::Append);
}

#[test]
fn file_rewritten_in_place_during_copy_is_never_synced_torn_and_next_run_picks_it_up() {
    file_changing_during_copy(Change::Rewrite);
}

// ---------------------------------------------------------------------------
// 6. and 7. state databases this binary cannot trust

#[test]
fn corrupt_state_database_stops_the_run_and_reset_recovers() {
    let (_dir, base) = scratch();
    let (src, dst) = (base.join("src"), base.join("dst"));
    generate_tree(&src, 61, 40, 10, 4000);
    push_json(&src, &dst, &[]);

    let db = session_db(&dst);
    let garbage = Rng::new(0xBAD).bytes(16 * 1024);
    fs::write(&db, &garbage).unwrap();
    for suffix in ["-wal", "-shm"] {
        let mut side = db.clone().into_os_string();
        side.push(suffix);
        let _ = fs::remove_file(side);
    }
    write(&src, "d0/s0/f0.dat", b"changed after the database broke");
    let before = tree(&dst);
    let ids = identities(&dst);

    let out = push(&src, &dst, &[]);
    assert_code(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("corrupt") || err.contains("unreadable"),
        "stderr does not say the database is damaged: {err}"
    );
    assert!(err.contains("-x"), "stderr does not suggest -x: {err}");
    assert_trees_equal(&tree(&dst), &before);
    assert_eq!(identities(&dst), ids, "the target was touched");
    assert_eq!(
        fs::read(&db).unwrap(),
        garbage,
        "the damaged database was replaced"
    );

    let summary = push_json(&src, &dst, &["-x"]);
    assert_eq!(count(&summary, "errors"), 0);
    assert_same_tree(&src, &dst);
    assert_eq!(
        read(&dst, "d0/s0/f0.dat"),
        b"changed after the database broke"
    );
}

fn user_version(db: &Path) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap()
}

fn set_user_version(db: &Path, version: i64) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.pragma_update(None, "user_version", version).unwrap();
}

/// Words of a message, so a version number can be found as a whole word.
fn words(text: &str) -> Vec<&str> {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect()
}

#[test]
fn newer_schema_database_is_refused_naming_both_versions() {
    let known = snapsync::state::SCHEMA_VERSION;
    let (_dir, base) = scratch();
    let (src, dst) = (base.join("src"), base.join("dst"));
    generate_tree(&src, 71, 30, 10, 4000);
    push_json(&src, &dst, &[]);
    write(
        &src,
        "d2/s2/f2.dat",
        b"changed while the database is too new",
    );

    // On the target, then on the source: either side refuses.
    for root in [&dst, &src] {
        let db = session_db(root);
        assert_eq!(user_version(&db), known);
        set_user_version(&db, 99);
        let before = tree(&dst);
        let ids = identities(&dst);

        let out = push(&src, &dst, &[]);
        assert_code(&out, 1);
        let err = stderr(&out);
        let said = words(&err);
        assert!(
            said.contains(&"99") && said.contains(&known.to_string().as_str()),
            "the message does not name versions 99 and {known}: {err}"
        );
        assert_trees_equal(&tree(&dst), &before);
        assert_eq!(identities(&dst), ids, "the target was touched");
        assert_eq!(user_version(&db), 99, "the newer database was changed");
        set_user_version(&db, known);
    }

    // Back at the known version, the run goes ahead.
    push_json(&src, &dst, &[]);
    assert_same_tree(&src, &dst);
}
