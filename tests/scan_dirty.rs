//! Scanning only the dirty paths (continuous mode), through the library
//! API: after a real push, a scan of the paths a watcher would report gives
//! what a full scan gives for them, and looks at little else.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use snapsync::changes::{Change, ChangeKind, ChangeSet, DiffOptions, Rename};
use snapsync::endpoint::{
    ConnectOptions, Endpoint, LocalEndpoint, RemoteEndpoint, RemoteSpec, Role, SessionRequest,
    Transport,
};
use snapsync::model::{Preserve, RelPath};
use snapsync::reconcile::ReplicaOptions;
use snapsync::session::{run_replica, Direction, Observer, SyncOptions};

const SESSION: &str = "dirty";

struct Quiet;

impl Observer for Quiet {}

/// Pushes `src` to `dst` as `snapsync push -N dirty` does.
fn push(src: &Path, dst: &Path) {
    let options = SyncOptions {
        direction: Direction::Push,
        session: SESSION.into(),
        reset: false,
        dry_run: false,
        log_max: snapsync::log::DEFAULT_MAX,
        log_verbose: false,
        diff: DiffOptions::default(),
        replica: ReplicaOptions::default(),
        backup_dir: None,
        remove_source_files: false,
        max_delete: None,
        bwlimit: None,
    };
    let source = LocalEndpoint::new(src.to_path_buf(), None, Preserve::default());
    let target = LocalEndpoint::new(dst.to_path_buf(), None, Preserve::default());
    let outcome = run_replica(&source, &target, &options, &Quiet, &AtomicBool::new(false))
        .expect("push runs");
    assert!(outcome.failures.is_empty(), "{:?}", outcome.failures);
}

fn request(role: Role) -> SessionRequest {
    common::session_request(SESSION, "push", role)
}

/// The source side of the session, open as a run would open it.
fn open_source(src: &Path) -> LocalEndpoint {
    let endpoint = LocalEndpoint::new(src.to_path_buf(), None, Preserve::default());
    endpoint.open_session(&request(Role::Source)).unwrap();
    endpoint
}

fn p(path: &str) -> RelPath {
    RelPath::new(path.as_bytes()).unwrap()
}

fn paths(list: &[&str]) -> Vec<RelPath> {
    list.iter().map(|s| p(s)).collect()
}

fn write(root: &Path, path: &str, data: &str) {
    let abs = root.join(path);
    fs::create_dir_all(abs.parent().unwrap()).unwrap();
    fs::write(abs, data).unwrap();
}

/// Lets the mtimes of what was just written age past the racy window, so
/// that two scans taken moments apart judge them alike.
fn settle() {
    std::thread::sleep(Duration::from_millis(50));
}

/// What a change set says, comparable between two scans: the changes
/// (entries as found, racy flags aside), the renames and what could not
/// be read.
fn said(set: &ChangeSet) -> (Vec<Change>, Vec<Rename>, Vec<(RelPath, String)>) {
    let mut changes = set.changes.clone();
    for change in &mut changes {
        if let Some(after) = change.after.as_mut() {
            after.racy = false;
        }
    }
    (changes, set.renames.clone(), set.unreadable.clone())
}

fn kind_of(set: &ChangeSet, path: &str) -> Option<ChangeKind> {
    set.get(&p(path)).map(|c| c.kind(Preserve::default()))
}

fn renames(set: &ChangeSet) -> Vec<(String, String)> {
    set.renames
        .iter()
        .map(|r| (r.from.to_string(), r.to.to_string()))
        .collect()
}

/// A pushed tree with something of every kind to change.
fn pushed_tree() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    for name in ["a", "b", "c"] {
        write(&src, &format!("keep/{name}"), &format!("kept {name}"));
    }
    write(&src, "mod.txt", "before");
    write(&src, "del.txt", "to delete");
    write(&src, "chmod.txt", "to chmod");
    write(&src, "old-name.txt", "renamed content");
    for i in 0..100 {
        write(&src, &format!("dir-a/f{i:03}"), &format!("file {i}"));
    }
    write(&src, "gone/sub/x", "x");
    write(&src, "gone/y", "y");
    write(&src, "was-file", "a file for now");
    settle();
    push(&src, &dst);
    (tmp, src, dst)
}

/// Every change of the list, made to `root`; returns the dirty paths and
/// trees a watcher would report for them.
fn change_everything(root: &Path) -> (Vec<RelPath>, Vec<RelPath>) {
    write(root, "new.txt", "created");
    write(root, "newdir/deep/n", "created below a new directory");
    fs::remove_file(root.join("was-file")).unwrap();
    write(root, "was-file/inside", "now a directory");
    write(root, "mod.txt", "after, longer");
    fs::set_permissions(root.join("chmod.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::rename(root.join("old-name.txt"), root.join("new-name.txt")).unwrap();
    fs::rename(root.join("dir-a"), root.join("dir-b")).unwrap();
    // Deletes last: a directory made after one is removed may get its
    // inode number, and pass for it renamed (in a full scan as well).
    fs::remove_file(root.join("del.txt")).unwrap();
    fs::remove_dir_all(root.join("gone")).unwrap();
    settle();
    let dirty = paths(&[
        "mod.txt",
        "del.txt",
        "chmod.txt",
        "old-name.txt",
        "new-name.txt",
        "dir-a",
        "dir-b",
        "gone/sub/x",
        "gone/sub",
        "gone/y",
        "gone",
        // Deleted, then made again as a directory: reported as a path only,
        // so the scan must see for itself that it is a directory now.
        "was-file",
        "new.txt",
    ]);
    (dirty, paths(&["dir-b", "newdir"]))
}

#[test]
fn dirty_scan_reports_what_a_full_scan_reports() {
    let (_tmp, src, _dst) = pushed_tree();
    let (dirty, trees) = change_everything(&src);
    let endpoint = open_source(&src);
    let options = DiffOptions::default();
    let quick = endpoint.scan_dirty(&dirty, &trees, &options).unwrap();
    let full = endpoint.scan(&options).unwrap();
    assert_eq!(said(&quick), said(&full));

    assert_eq!(kind_of(&quick, "mod.txt"), Some(ChangeKind::Modified));
    assert_eq!(kind_of(&quick, "del.txt"), Some(ChangeKind::Deleted));
    assert_eq!(kind_of(&quick, "chmod.txt"), Some(ChangeKind::Metadata));
    assert_eq!(kind_of(&quick, "gone/sub/x"), Some(ChangeKind::Deleted));
    assert_eq!(kind_of(&quick, "was-file"), Some(ChangeKind::TypeChanged));
    assert_eq!(
        kind_of(&quick, "was-file/inside"),
        Some(ChangeKind::Created)
    );
    assert_eq!(kind_of(&quick, "newdir/deep/n"), Some(ChangeKind::Created));
    assert_eq!(
        renames(&quick),
        [
            ("dir-a".to_string(), "dir-b".to_string()),
            ("old-name.txt".to_string(), "new-name.txt".to_string()),
        ]
    );
    // Not the untouched `keep`: what changed, and the renamed directory.
    assert!(quick.files_scanned < 120, "{}", quick.files_scanned);
    assert!(quick.forgotten.is_empty());
}

#[test]
fn dirty_path_that_did_not_change_gives_no_change() {
    let (_tmp, src, _dst) = pushed_tree();
    let endpoint = open_source(&src);
    let set = endpoint
        .scan_dirty(
            &paths(&["keep/a", "keep", "mod.txt"]),
            &[],
            &DiffOptions::default(),
        )
        .unwrap();
    assert!(set.changes.is_empty(), "{:?}", set.changes);
    assert_eq!(set.files_scanned, 3);
}

#[test]
fn dirty_scan_looks_at_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    for d in 0..20 {
        for f in 0..100 {
            write(&src, &format!("d{d:02}/f{f:03}"), "x");
        }
    }
    // Something a walk warns about, where nothing will be dirty.
    let fifo =
        std::ffi::CString::new(src.join("d07/fifo").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    settle();
    push(&src, &dst);
    write(&src, "d03/f001", "changed");
    write(&src, "d11/new", "new");
    settle();
    let endpoint = open_source(&src);
    let options = DiffOptions::default();
    let quick = endpoint
        .scan_dirty(&paths(&["d03/f001", "d11/new"]), &[], &options)
        .unwrap();
    // The two paths and their two directories.
    assert_eq!(quick.files_scanned, 4);
    assert!(quick.warnings.is_empty(), "{:?}", quick.warnings);
    let full = endpoint.scan(&options).unwrap();
    assert!(full.files_scanned > 2000);
    assert!(full.warnings.iter().any(|w| w.contains("FIFO")));
    assert_eq!(said(&quick), said(&full));
}

#[test]
fn lookups_after_a_dirty_scan_answer_as_of_it() {
    let (_tmp, src, _dst) = pushed_tree();
    // A copy of a file the snapshot holds: same size, so it is hashed and
    // its content is found where the snapshot has it.
    fs::copy(src.join("keep/a"), src.join("copy-of-a")).unwrap();
    write(&src, "mod.txt", "after, longer");
    settle();
    let endpoint = open_source(&src);
    let set = endpoint
        .scan_dirty(
            &paths(&["copy-of-a", "mod.txt"]),
            &[],
            &DiffOptions::default(),
        )
        .unwrap();
    let copy = set.get(&p("copy-of-a")).unwrap().after.clone().unwrap();
    let hash = copy.hash.expect("a copy candidate is hashed");

    let found = endpoint
        .lookup(&paths(&["copy-of-a", "mod.txt", "keep/b", "nothing"]))
        .unwrap();
    assert_eq!(found[&p("copy-of-a")], copy);
    assert_eq!(found[&p("mod.txt")].size, "after, longer".len() as u64);
    assert!(found.contains_key(&p("keep/b")));
    assert!(!found.contains_key(&p("nothing")));

    let mut holders = endpoint
        .find_content(&[hash])
        .unwrap()
        .remove(&hash)
        .unwrap();
    holders.sort();
    assert_eq!(holders, paths(&["copy-of-a", "keep/a"]));
}

#[test]
fn dirty_scan_through_serve_matches_a_full_scan() {
    let (tmp, _src, dst) = pushed_tree();
    let (dirty, trees) = change_everything(&dst);
    let shim = tmp.path().join("rsh.sh");
    fs::write(
        &shim,
        "#!/bin/sh\n# Drops the host; runs the rest here.\nshift\nexec \"$@\"\n",
    )
    .unwrap();
    fs::set_permissions(&shim, fs::Permissions::from_mode(0o755)).unwrap();
    let spec = RemoteSpec::parse(&format!("far.example:{}", dst.display())).unwrap();
    let connect = ConnectOptions {
        rsh: shim.display().to_string(),
        remote_command: env!("CARGO_BIN_EXE_snapsync").to_string(),
        compress: false,
        transport: Transport::Ssh,
        udp_ports: None,
        probe: None,
        scan: None,
        one_run: false,
    };
    let remote = RemoteEndpoint::connect(spec, &connect, Preserve::default()).unwrap();
    remote.open_session(&request(Role::Target)).unwrap();
    let options = DiffOptions::default();
    let quick = remote.scan_dirty(&dirty, &trees, &options).unwrap();
    let full = remote.scan(&options).unwrap();
    assert_eq!(said(&quick), said(&full));
    assert_eq!(renames(&quick).len(), 2);
}

/// The cost of a dirty scan of 10 paths beside a full scan, in a tree made
/// by `bench/gen_tree.py` (`SNAPSYNC_DIRTY_FILES`, default 100,000 files).
/// Run with `cargo test --release --test scan_dirty -- --ignored --nocapture`.
#[test]
#[ignore]
fn dirty_scan_cost_beside_a_full_scan() {
    let files: usize = std::env::var("SNAPSYNC_DIRTY_FILES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let generator = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/gen_tree.py");
    let made = std::process::Command::new("python3")
        .arg(&generator)
        .arg("gen")
        .arg(&src)
        .args(["--files", &files.to_string()])
        .status()
        .unwrap();
    assert!(made.success());
    settle();
    let clock = Instant::now();
    push(&src, &dst);
    eprintln!("initial push of {files} files: {:?}", clock.elapsed());

    // Ten files modified, in different directories.
    let mut all: Vec<PathBuf> = Vec::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for item in fs::read_dir(&dir).unwrap() {
            let item = item.unwrap();
            if item.file_name() == ".snapsync" {
                continue;
            }
            if item.file_type().unwrap().is_dir() {
                stack.push(item.path());
            } else {
                all.push(item.path());
            }
        }
    }
    all.sort();
    let step = all.len() / 10;
    let mut dirty = Vec::new();
    for file in all.iter().step_by(step).take(10) {
        fs::write(file, b"modified for the benchmark").unwrap();
        let rel = file.strip_prefix(&src).unwrap();
        dirty.push(RelPath::new(rel.as_os_str().as_encoded_bytes()).unwrap());
    }
    settle();

    let endpoint = open_source(&src);
    let options = DiffOptions::default();
    // Warm the caches (page cache, SQLite) once each way.
    endpoint.scan(&options).unwrap();
    endpoint.scan_dirty(&dirty, &[], &options).unwrap();

    let clock = Instant::now();
    let full = endpoint.scan(&options).unwrap();
    let full_time = clock.elapsed();
    let clock = Instant::now();
    let quick = endpoint.scan_dirty(&dirty, &[], &options).unwrap();
    let quick_time = clock.elapsed();
    eprintln!(
        "full scan: {full_time:?}, {} entries examined, {} changes",
        full.files_scanned,
        full.changes.len()
    );
    eprintln!(
        "dirty scan of {} paths: {quick_time:?}, {} entries examined, {} changes",
        dirty.len(),
        quick.files_scanned,
        quick.changes.len()
    );
    assert_eq!(said(&quick), said(&full));

    // A dirty scan first thing in a session reads the sizes worth hashing
    // from the snapshot (one query over every row) instead of a full scan.
    drop(endpoint);
    let endpoint = open_source(&src);
    let clock = Instant::now();
    let first = endpoint.scan_dirty(&dirty, &[], &options).unwrap();
    eprintln!(
        "dirty scan of {} paths first thing in a session: {:?}",
        dirty.len(),
        clock.elapsed()
    );
    assert_eq!(said(&first), said(&full));
}
