//! `--backup-dir` and `--remove-source-files`, end to end through the real
//! binary: between two local roots, and with the second root behind
//! `snapsync serve` reached through the `--rsh` shim (`far.example:/path`).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// How the second root is reached.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Via {
    Local,
    Shim,
}

/// Two roots, `local` and `remote`, in one temporary directory.
struct Pair {
    tmp: tempfile::TempDir,
    local: PathBuf,
    remote: PathBuf,
    via: Via,
}

impl Pair {
    fn new(via: Via) -> Pair {
        let tmp = tempfile::tempdir().unwrap();
        let local = tmp.path().join("local");
        let remote = tmp.path().join("remote");
        fs::create_dir(&local).unwrap();
        fs::create_dir(&remote).unwrap();
        Pair {
            tmp,
            local,
            remote,
            via,
        }
    }

    /// A directory beside both roots.
    fn outside(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn command(&self, verb: &str, extra: &[&str]) -> Command {
        let mut cmd = Command::new(bin());
        cmd.arg(verb).args(extra);
        if self.via == Via::Shim {
            cmd.arg("--rsh")
                .arg(rsh_shim(self.tmp.path()))
                .arg("--remote-command")
                .arg(bin());
        }
        cmd.arg(&self.local);
        match self.via {
            Via::Local => cmd.arg(&self.remote),
            Via::Shim => cmd.arg(format!("far.example:{}", self.remote.display())),
        };
        cmd
    }

    fn run(&self, verb: &str, extra: &[&str]) -> Output {
        self.command(verb, extra).output().expect("run snapsync")
    }

    /// Runs with `--json`, expecting exit 0; the summary.
    #[track_caller]
    fn ok(&self, verb: &str, extra: &[&str]) -> serde_json::Value {
        let mut args = vec!["--json"];
        args.extend_from_slice(extra);
        let out = self.run(verb, &args);
        assert_code(&out, 0);
        summary(&out)
    }
}

/// What a backup must keep of a path: its content (a link: its target),
/// mtime and inode.
#[derive(Debug, PartialEq)]
struct Kept {
    content: Vec<u8>,
    mtime: (i64, i64),
    ino: u64,
}

fn kept(path: &Path) -> Kept {
    let meta = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let content = if meta.file_type().is_symlink() {
        fs::read_link(path)
            .unwrap()
            .into_os_string()
            .into_encoded_bytes()
    } else if meta.is_dir() {
        Vec::new()
    } else {
        fs::read(path).unwrap()
    };
    Kept {
        content,
        mtime: (meta.mtime(), meta.mtime_nsec()),
        ino: meta.ino(),
    }
}

/// The one run directory in a backup directory, checked to be named
/// `YYYYmmdd-HHMMSS[-N]`.
#[track_caller]
fn only_run(dir: &Path) -> PathBuf {
    let runs: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        runs.len(),
        1,
        "one run directory in {}: {runs:?}",
        dir.display()
    );
    let name = runs[0].file_name().unwrap().to_str().unwrap().to_string();
    let stamp = name.split('-').take(2).collect::<Vec<_>>();
    assert!(
        stamp.len() == 2
            && stamp[0].len() == 8
            && stamp[1].len() == 6
            && name.bytes().all(|b| b.is_ascii_digit() || b == b'-'),
        "run directory named YYYYmmdd-HHMMSS: {name}"
    );
    runs[0].clone()
}

/// A tree as [`tree`] sees it, without what lies under `skip`.
fn tree_without(root: &Path, skip: &str) -> BTreeMap<Vec<u8>, Node> {
    let mut all = tree(root);
    all.retain(|path, _| {
        !(path == skip.as_bytes() || path.starts_with(format!("{skip}/").as_bytes()))
    });
    all
}

#[track_caller]
fn assert_same_except(a: &Path, b: &Path, skip: &str) {
    assert_eq!(tree_without(a, skip), tree_without(b, skip));
}

/// Paths a push replaces or deletes (and their versions on the target),
/// after a first sync of this tree.
const REPLACED: [&str; 5] = ["edit.txt", "gone.txt", "tree", "tree/sub/b", "link"];

fn first_tree(src: &Path) {
    write(src, "keep.txt", b"unchanged");
    write(src, "edit.txt", b"version 1");
    write(src, "gone.txt", b"deleted later");
    write(src, "tree/a", b"a");
    write(src, "tree/sub/b", b"b");
    write(src, "moved.txt", b"renamed later");
    link(src, "link", "keep.txt");
}

/// Deletes and replaces on the source what `REPLACED` names, and renames
/// `moved.txt`.
fn change_tree(src: &Path) {
    write(src, "edit.txt", b"version 2, longer");
    fs::remove_file(src.join("gone.txt")).unwrap();
    fs::remove_dir_all(src.join("tree")).unwrap();
    fs::rename(src.join("moved.txt"), src.join("moved-too.txt")).unwrap();
    fs::remove_file(src.join("link")).unwrap();
    link(src, "link", "edit.txt");
}

#[track_caller]
fn assert_kept_in(run: &Path, before: &BTreeMap<&str, Kept>) {
    for (path, old) in before {
        assert_eq!(&kept(&run.join(path)), old, "{path} in the backup");
    }
    for path in ["keep.txt", "moved.txt", "moved-too.txt"] {
        assert!(
            !run.join(path).exists(),
            "{path} was neither deleted nor replaced (renames are not deletions)"
        );
    }
}

/// A push with `--backup-dir .bak` keeps, on the target, every version it
/// deletes or replaces (a deleted directory moves whole); the backup is
/// never synced nor deleted, in later runs without the option too, and the
/// source's own `.bak` is never sent.
fn push_keeps_deleted_and_replaced_versions(via: Via) {
    let pair = Pair::new(via);
    let (src, dst) = (&pair.local, &pair.remote);
    first_tree(src);
    pair.ok("push", &["--backup-dir", ".bak"]);
    assert!(
        !dst.join(".bak").exists(),
        "a run that deletes and replaces nothing makes no backup"
    );
    let before: BTreeMap<&str, Kept> = REPLACED.iter().map(|p| (*p, kept(&dst.join(p)))).collect();
    change_tree(src);
    let s = pair.ok("push", &["--backup-dir", ".bak"]);
    assert_eq!(count(&s, "renamed"), 1, "{s}");
    let run = only_run(&dst.join(".bak"));
    assert_kept_in(&run, &before);
    assert_same_except(src, dst, ".bak");

    // Later runs, without the option: the backup stays where it is, and a
    // `.bak` on the source is never sent.
    write(src, ".bak/mine", b"the source's own");
    write(src, "edit.txt", b"version 3");
    pair.ok("push", &[]);
    assert_kept_in(&run, &before);
    assert!(
        !dst.join(".bak/mine").exists(),
        "the backup dir is never synced"
    );
    assert_eq!(read(src, ".bak/mine"), b"the source's own");
    assert_eq!(
        only_run(&dst.join(".bak")),
        run,
        "no backup without the option"
    );
    assert_eq!(read(dst, "edit.txt"), b"version 3");
    // Nor does `-x`, which starts the snapshots afresh, forget it.
    pair.ok("push", &["-x"]);
    assert_kept_in(&run, &before);
    assert!(!dst.join(".bak/mine").exists());
}

#[test]
fn push_keeps_deleted_and_replaced_versions_locally() {
    push_keeps_deleted_and_replaced_versions(Via::Local);
}

#[test]
fn push_keeps_deleted_and_replaced_versions_on_the_far_root() {
    push_keeps_deleted_and_replaced_versions(Via::Shim);
}

/// A pull backs up on the local root, the one it changes.
fn pull_keeps_versions_on_the_local_root(via: Via) {
    let pair = Pair::new(via);
    let (dst, src) = (&pair.local, &pair.remote);
    first_tree(src);
    pair.ok("pull", &["--backup-dir", "old/kept"]);
    let before: BTreeMap<&str, Kept> = REPLACED.iter().map(|p| (*p, kept(&dst.join(p)))).collect();
    change_tree(src);
    pair.ok("pull", &["--backup-dir", "./old/kept/"]);
    assert_kept_in(&only_run(&dst.join("old/kept")), &before);
    assert!(!src.join("old").exists(), "the source keeps no backup");
    assert_same_except(src, dst, "old");
}

#[test]
fn pull_keeps_versions_on_the_local_root_locally() {
    pull_keeps_versions_on_the_local_root(Via::Local);
}

#[test]
fn pull_keeps_versions_on_the_local_root_from_the_far_root() {
    pull_keeps_versions_on_the_local_root(Via::Shim);
}

/// In bidi each side backs up what it deletes or replaces on its own
/// root; neither backup travels to the other side.
fn bidi_each_side_keeps_what_it_loses(via: Via) {
    let pair = Pair::new(via);
    let (here, there) = (&pair.local, &pair.remote);
    write(here, "a", b"a 1");
    write(here, "b", b"b 1");
    write(here, "c", b"c 1");
    write(here, "d/inner", b"d 1");
    pair.ok("bidi", &["--backup-dir", ".bak"]);
    let old_there: BTreeMap<&str, Kept> = ["a", "b"]
        .iter()
        .map(|p| (*p, kept(&there.join(p))))
        .collect();
    let old_here: BTreeMap<&str, Kept> = ["c", "d", "d/inner"]
        .iter()
        .map(|p| (*p, kept(&here.join(p))))
        .collect();
    write(here, "a", b"a 2, edited here");
    fs::remove_file(here.join("b")).unwrap();
    write(there, "c", b"c 2, edited there");
    fs::remove_dir_all(there.join("d")).unwrap();
    pair.ok("bidi", &["--backup-dir", ".bak"]);
    let run_there = only_run(&there.join(".bak"));
    let run_here = only_run(&here.join(".bak"));
    for (path, old) in &old_there {
        assert_eq!(&kept(&run_there.join(path)), old, "{path} kept there");
        assert!(!run_here.join(path).exists(), "{path} was not lost here");
    }
    for (path, old) in &old_here {
        assert_eq!(&kept(&run_here.join(path)), old, "{path} kept here");
        assert!(!run_there.join(path).exists(), "{path} was not lost there");
    }
    assert_same_except(here, there, ".bak");
    // Without the option: each backup stays on its own side.
    pair.ok("bidi", &[]);
    assert_eq!(read(&run_there, "a"), b"a 1");
    assert_eq!(read(&run_here, "c"), b"c 1");
    assert!(!there
        .join(".bak")
        .join(run_here.file_name().unwrap())
        .join("c")
        .exists());
    assert!(!here
        .join(".bak")
        .join(run_there.file_name().unwrap())
        .join("a")
        .exists());
}

#[test]
fn bidi_each_side_keeps_what_it_loses_locally() {
    bidi_each_side_keeps_what_it_loses(Via::Local);
}

#[test]
fn bidi_each_side_keeps_what_it_loses_over_the_protocol() {
    bidi_each_side_keeps_what_it_loses(Via::Shim);
}

/// An absolute backup dir is a place on the receiving host, outside both
/// roots.
fn absolute_backup_dir_is_on_the_receiving_host(via: Via) {
    let pair = Pair::new(via);
    let (src, dst) = (&pair.local, &pair.remote);
    let kept_dir = pair.outside("kept");
    let arg = kept_dir.to_str().unwrap();
    first_tree(src);
    pair.ok("push", &["--backup-dir", arg]);
    let before: BTreeMap<&str, Kept> = REPLACED.iter().map(|p| (*p, kept(&dst.join(p)))).collect();
    change_tree(src);
    pair.ok("push", &["--backup-dir", arg]);
    assert_kept_in(&only_run(&kept_dir), &before);
    assert_same_tree(src, dst);
}

#[test]
fn absolute_backup_dir_locally() {
    absolute_backup_dir_is_on_the_receiving_host(Via::Local);
}

#[test]
fn absolute_backup_dir_on_the_far_host() {
    absolute_backup_dir_is_on_the_receiving_host(Via::Shim);
}

/// Across filesystems a version is copied (content, mode, mtime), then
/// removed: here to `/dev/shm` when it is another filesystem than the
/// temporary directory's.
#[test]
fn a_backup_on_another_filesystem_is_copied_then_removed() {
    let pair = Pair::new(Via::Local);
    let shm = Path::new("/dev/shm");
    let other_fs = shm.is_dir()
        && fs::metadata(shm).unwrap().dev() != fs::metadata(pair.tmp.path()).unwrap().dev();
    if !other_fs {
        eprintln!("skipped: /dev/shm is missing or on the same filesystem as the test's root");
        return;
    }
    let kept_dir = tempfile::tempdir_in(shm).unwrap();
    let arg = kept_dir.path().to_str().unwrap();
    let (src, dst) = (&pair.local, &pair.remote);
    first_tree(src);
    pair.ok("push", &["--backup-dir", arg]);
    let before: BTreeMap<&str, Kept> = REPLACED.iter().map(|p| (*p, kept(&dst.join(p)))).collect();
    change_tree(src);
    pair.ok("push", &["--backup-dir", arg]);
    let run = only_run(kept_dir.path());
    for (path, old) in &before {
        let now = kept(&run.join(path));
        assert_eq!(
            (&now.content, now.mtime),
            (&old.content, old.mtime),
            "{path}"
        );
    }
    assert!(!dst.join("gone.txt").exists() && !dst.join("tree").exists());
    assert_same_tree(src, dst);
}

/// Two runs in one second: the second gets `-1` (here every name the next
/// few seconds could take is taken already).
#[test]
fn a_taken_run_directory_gets_a_numbered_one() {
    let pair = Pair::new(Via::Local);
    let (src, dst) = (&pair.local, &pair.remote);
    write(src, "f", b"one");
    pair.ok("push", &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let taken: Vec<String> = (now..now + 10).map(snapsync::state::compact_utc).collect();
    for name in &taken {
        fs::create_dir_all(dst.join(".bak").join(name)).unwrap();
    }
    write(src, "f", b"two, longer");
    pair.ok("push", &["--backup-dir", ".bak"]);
    for name in &taken {
        let numbered = dst.join(".bak").join(format!("{name}-1"));
        if numbered.exists() {
            assert_eq!(read(&numbered, "f"), b"one");
            for name in &taken {
                assert_eq!(
                    fs::read_dir(dst.join(".bak").join(name)).unwrap().count(),
                    0
                );
            }
            return;
        }
    }
    panic!(
        "no numbered run directory in {:?}",
        fs::read_dir(dst.join(".bak")).unwrap().collect::<Vec<_>>()
    );
}

#[test]
fn a_backup_dir_outside_the_root_by_dots_is_a_usage_error() {
    let pair = Pair::new(Via::Local);
    write(&pair.local, "f", b"x");
    for bad in ["../elsewhere", "a/../../b", "."] {
        let out = pair.run("push", &["--backup-dir", bad]);
        assert_code(&out, 2);
    }
    assert!(!pair.remote.join("f").exists());
}

// --remove-source-files

/// Every file (and link) below `root` with its content, `.snapsync` left out.
fn files(root: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    tree(root)
        .into_iter()
        .filter_map(|(path, node)| match node {
            Node::File { content, .. } => Some((path, content)),
            Node::Link { target } => Some((path, target)),
            Node::Dir { .. } => None,
        })
        .collect()
}

fn directories(root: &Path) -> Vec<Vec<u8>> {
    tree(root)
        .into_iter()
        .filter(|(_, node)| matches!(node, Node::Dir { .. }))
        .map(|(path, _)| path)
        .collect()
}

/// The source loses each file once the target holds it (directories stay),
/// deletions are not carried over (`--no-delete` is implied), and a later
/// plain run deletes none of the files the source removed.
fn source_files_move_to_the_target(via: Via, verb: &str) {
    let pair = Pair::new(via);
    let (src, dst) = match verb {
        "push" => (&pair.local, &pair.remote),
        _ => (&pair.remote, &pair.local),
    };
    write(src, "old.txt", b"synced before");
    pair.ok(verb, &[]);
    fs::remove_file(src.join("old.txt")).unwrap();
    write(src, "f1", b"one");
    write(src, "dir/f2", b"two");
    write(src, "dir/sub/f3", b"three");
    link(src, "dir/link", "../f1");
    let wanted = files(src);
    let s = pair.ok(verb, &["--remove-source-files"]);
    assert_eq!(count(&s, "source_removed"), 4, "{s}");
    assert!(
        files(src).is_empty(),
        "left on the source: {:?}",
        files(src)
    );
    assert_eq!(directories(src), [b"dir".to_vec(), b"dir/sub".to_vec()]);
    let mut held = wanted.clone();
    held.insert(b"old.txt".to_vec(), b"synced before".to_vec());
    assert_eq!(
        files(dst),
        held,
        "the target holds everything, old.txt kept"
    );

    // A file the target already holds goes from the source too, once its
    // content is found equal there.
    write(src, "again", b"same");
    write(dst, "again", b"same");
    set_mtime(src, "again", 1_600_000_000, 0);
    set_mtime(dst, "again", 1_600_000_000, 0);
    let s = pair.ok(verb, &["--remove-source-files"]);
    assert_eq!(count(&s, "source_removed"), 1, "{s}");
    assert!(!src.join("again").exists());

    // Later runs without the option delete none of what the source removed.
    write(src, "later", b"plain");
    pair.ok(verb, &[]);
    pair.ok(verb, &[]);
    let now = files(dst);
    for (path, content) in &wanted {
        let path_shown = String::from_utf8_lossy(path);
        assert_eq!(now.get(path), Some(content), "{path_shown} on the target");
    }
    assert_eq!(read(dst, "again"), b"same");
    assert_eq!(read(src, "later"), b"plain");
    assert_eq!(read(dst, "later"), b"plain");
}

#[test]
fn push_removes_source_files_locally() {
    source_files_move_to_the_target(Via::Local, "push");
}

#[test]
fn push_removes_source_files_to_the_far_root() {
    source_files_move_to_the_target(Via::Shim, "push");
}

#[test]
fn pull_removes_source_files_locally() {
    source_files_move_to_the_target(Via::Local, "pull");
}

#[test]
fn pull_removes_source_files_on_the_far_root() {
    source_files_move_to_the_target(Via::Shim, "pull");
}

#[test]
fn remove_source_files_is_refused_with_bidi() {
    let pair = Pair::new(Via::Local);
    write(&pair.local, "f", b"x");
    let out = pair.run("bidi", &["--remove-source-files"]);
    assert_code(&out, 2);
    assert!(pair.local.join("f").exists());
    assert!(!pair.remote.join("f").exists());
}

/// Killed (SIGKILL) while moving many files, a push leaves every file on
/// the source or complete on the target; the next run finishes the move,
/// and a plain run after it deletes nothing the source removed.
fn killed_mid_move_loses_no_file(via: Via) {
    let pair = Pair::new(via);
    let (src, dst) = (&pair.local, &pair.remote);
    generate_tree(src, 10, 4000, 1, 3000);
    let originals = files(src);
    let mut child = pair
        .command("push", &["--remove-source-files", "-q"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut killed_midway = false;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        // Killed once the source has begun to lose files.
        let left = walk_count(src);
        if left < originals.len() {
            child.kill().unwrap();
            child.wait().unwrap();
            killed_midway = left > 0;
            break;
        }
        assert!(Instant::now() < deadline, "the push never started removing");
        std::thread::sleep(Duration::from_millis(2));
    }
    let check = |when: &str| {
        let (here, there) = (files(src), files(dst));
        for (path, content) in &originals {
            let on_source = here.get(path) == Some(content);
            let on_target = there.get(path) == Some(content);
            assert!(
                on_source || on_target,
                "{when}: {} is on neither side",
                String::from_utf8_lossy(path)
            );
        }
    };
    check("after the kill");
    if via == Via::Shim {
        // The far end exits once its input closes; its lock goes with it.
        wait_for_far_end(pair.tmp.path());
    }
    eprintln!("killed midway: {killed_midway}");
    let out = pair.run("push", &["--remove-source-files", "-q"]);
    assert_code(&out, 0);
    check("after the next run");
    assert!(files(src).is_empty(), "every file moved");
    assert_eq!(files(dst), originals);
    let out = pair.run("push", &["-q"]);
    assert_code(&out, 0);
    assert_eq!(
        files(dst),
        originals,
        "a plain push deletes nothing that moved"
    );
}

/// Waits until the far end the shim started (its pid in `far.pid`) is gone.
fn wait_for_far_end(dir: &Path) {
    let Ok(pid) = fs::read_to_string(dir.join("far.pid")) else {
        return;
    };
    let proc_dir = Path::new("/proc").join(pid.trim());
    let deadline = Instant::now() + Duration::from_secs(30);
    while proc_dir.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Files below `root` (not `.snapsync`), counted without reading them.
fn walk_count(root: &Path) -> usize {
    let mut count = 0;
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(listing) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in listing.flatten() {
            if entry.file_name() == ".snapsync" {
                continue;
            }
            match entry.file_type() {
                Ok(t) if t.is_dir() => dirs.push(entry.path()),
                Ok(_) => count += 1,
                Err(_) => {}
            }
        }
    }
    count
}

#[test]
fn killed_mid_move_loses_no_file_locally() {
    killed_mid_move_loses_no_file(Via::Local);
}

#[test]
fn killed_mid_move_loses_no_file_over_the_protocol() {
    killed_mid_move_loses_no_file(Via::Shim);
}
