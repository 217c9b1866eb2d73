//! push and pull between local directories, through the real binary.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};

use common::*;

fn dirs() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    fs::create_dir(&src).unwrap();
    (tmp, src, dst)
}

fn ino(path: &Path) -> u64 {
    fs::symlink_metadata(path).unwrap().ino()
}

#[test]
fn push_replicates_files_directories_links_modes_mtimes_and_byte_names() {
    let (_tmp, src, dst) = dirs();
    write(&src, "a.txt", b"hello");
    write(&src, "deep/er/b.bin", &Rng::new(1).bytes(100_000));
    fs::create_dir_all(src.join("empty/dir")).unwrap();
    link(&src, "link-to-a", "a.txt");
    link(&src, "dangling", "no/such/target");
    chmod(&src, "a.txt", 0o640);
    chmod(&src, "deep", 0o750);
    set_mtime(&src, "a.txt", 1_000_000_000, 123_456_789);
    set_mtime(&src, "link-to-a", 1_100_000_000, 5);
    let odd = std::ffi::OsStr::from_bytes(b"caf\xe9 \x01name");
    fs::write(src.join(odd), b"latin-1").unwrap();
    set_mtime(&src, "empty/dir", 1_200_000_000, 42);

    let out = push(&src, &dst, &["--json"]);
    assert_code(&out, 0);
    assert_same_tree(&src, &dst);
    let s = summary(&out);
    assert_eq!(count(&s, "errors"), 0);
    assert_eq!(count(&s, "bytes_sent"), 5 + 100_000 + 7);
    assert!(count(&s, "created") >= 9, "{s}");
}

use std::os::unix::ffi::OsStrExt;

#[test]
fn pull_makes_local_a_replica_of_remote() {
    let (_tmp, remote, local) = dirs();
    generate_tree(&remote, 7, 50, 10, 2000);
    fs::create_dir(&local).unwrap();
    write(&local, "only-local", b"goes away");
    let out = pull(&local, &remote, &["--json"]);
    assert_code(&out, 0);
    assert_same_tree(&remote, &local);
    let s = summary(&out);
    assert!(count(&s, "bytes_received") > 0);
    assert_eq!(count(&s, "bytes_sent"), 0);
    assert_eq!(count(&s, "deleted"), 1);
    // The pull session keeps its snapshot on both sides.
    assert!(has_db(&local) && has_db(&remote));
}

fn has_db(root: &Path) -> bool {
    fs::read_dir(root.join(".snapsync"))
        .map(|dir| {
            dir.flatten()
                .any(|e| e.path().extension() == Some("db".as_ref()))
        })
        .unwrap_or(false)
}

#[test]
fn special_files_are_skipped_with_a_warning() {
    let (_tmp, src, dst) = dirs();
    write(&src, "regular", b"x");
    let fifo = src.join("pipe");
    let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    let out = push(&src, &dst, &[]);
    assert_code(&out, 0);
    assert_stderr_says(&out, "pipe");
    assert_stderr_says(&out, "FIFO");
    assert!(dst.join("regular").exists());
    assert!(fs::symlink_metadata(dst.join("pipe")).is_err());
}

#[test]
fn missing_target_is_created_with_its_parents() {
    let (_tmp, src, dst) = dirs();
    write(&src, "f", b"1");
    let nested = dst.join("a/b/c");
    assert_code(&push(&src, &nested, &[]), 0);
    assert_eq!(read(&nested, "f"), b"1");
}

#[test]
fn second_run_with_nothing_changed_touches_nothing_and_reads_no_content() {
    let (tmp, src, dst) = dirs();
    generate_tree(&src, 3, 300, 1, 5000);
    // Files written within a clock tick of a scan are re-read by the next
    // one (see the racy-write test); these are older than that.
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_code(&push(&src, &dst, &[]), 0);

    // Make every source file's atime older than its mtime: under relatime
    // any read of its content would then move the atime.
    let old = filetime::FileTime::from_unix_time(946_684_800, 0);
    let mut files = Vec::new();
    for (rel, node) in tree(&src) {
        if let Node::File { .. } = node {
            let path = src.join(std::ffi::OsStr::from_bytes(&rel));
            let mtime =
                filetime::FileTime::from_last_modification_time(&fs::metadata(&path).unwrap());
            filetime::set_file_times(&path, old, mtime).unwrap();
            files.push(path);
        }
    }
    // Control: this filesystem does record reads in atime.
    let control = tmp.path().join("control");
    fs::write(&control, b"c").unwrap();
    let mtime = filetime::FileTime::from_last_modification_time(&fs::metadata(&control).unwrap());
    filetime::set_file_times(&control, old, mtime).unwrap();
    fs::read(&control).unwrap();
    assert_ne!(
        fs::metadata(&control).unwrap().atime(),
        old.unix_seconds(),
        "this filesystem does not update atime on read (noatime?): the test cannot see reads"
    );

    let before_src = identities(&src);
    let before_dst = identities(&dst);
    let s = push_json(&src, &dst, &[]);
    for key in [
        "created",
        "updated",
        "deleted",
        "renamed",
        "copied",
        "errors",
        "bytes_sent",
    ] {
        assert_eq!(count(&s, key), 0, "{key} in {s}");
    }
    assert!(count(&s, "files_scanned") >= 300);
    assert_eq!(identities(&src), before_src, "source changed");
    assert_eq!(identities(&dst), before_dst, "target changed");
    for path in files {
        assert_eq!(
            fs::metadata(&path).unwrap().atime(),
            old.unix_seconds(),
            "{} was read",
            path.display()
        );
    }
}

#[test]
fn a_second_write_in_the_same_clock_tick_is_picked_up_by_the_next_run() {
    // A second write within one tick of the file clock keeps size and mtime,
    // so stat cannot see it. The run that recorded the first version knew
    // its mtime was too recent to trust; the next run reads the content.
    let (_tmp, src, dst) = dirs();
    write(&src, "f", b"version 1");
    // An mtime at (or after) the moment of the scan, whatever the machine's
    // speed: a little in the future.
    let soon =
        filetime::FileTime::from_unix_time(filetime::FileTime::now().unix_seconds() + 5, 123);
    filetime::set_file_mtime(src.join("f"), soon).unwrap();
    assert_code(&push(&src, &dst, &[]), 0);
    let meta = fs::metadata(src.join("f")).unwrap();
    let inode = meta.ino();
    let mtime = filetime::FileTime::from_last_modification_time(&meta);
    // Rewrite in place, same size, and put the mtime back to the nanosecond.
    fs::OpenOptions::new()
        .write(true)
        .open(src.join("f"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"version 2"))
        .unwrap();
    filetime::set_file_mtime(src.join("f"), mtime).unwrap();
    assert_eq!(fs::metadata(src.join("f")).unwrap().ino(), inode);
    let s = push_json(&src, &dst, &[]);
    assert_eq!(read(&dst, "f"), b"version 2", "{s}");
    // Looking again finds nothing more to do.
    let s = push_json(&src, &dst, &[]);
    assert_eq!(count(&s, "updated"), 0, "{s}");
}

#[test]
fn created_modified_deleted_and_metadata_only_changes_propagate() {
    let (_tmp, src, dst) = dirs();
    write(&src, "keep", b"keep");
    write(&src, "modify", b"old");
    write(&src, "delete", b"bye");
    write(&src, "chmod", b"same");
    fs::create_dir(src.join("olddir")).unwrap();
    assert_code(&push(&src, &dst, &[]), 0);
    let chmod_inode = ino(&dst.join("chmod"));

    write(&src, "modify", b"new content");
    fs::remove_file(src.join("delete")).unwrap();
    fs::remove_dir(src.join("olddir")).unwrap();
    write(&src, "created", b"fresh");
    chmod(&src, "chmod", 0o600);
    let s = push_json(&src, &dst, &[]);
    assert_same_tree(&src, &dst);
    assert_eq!(count(&s, "created"), 1, "{s}");
    assert_eq!(count(&s, "updated"), 2, "{s}");
    assert_eq!(count(&s, "deleted"), 2, "{s}");
    assert_eq!(count(&s, "bytes_sent"), 11 + 5, "{s}");
    // A metadata-only change is applied in place, not by copying.
    assert_eq!(ino(&dst.join("chmod")), chmod_inode);
}

#[test]
fn renamed_and_moved_files_are_renamed_on_the_target() {
    let (_tmp, src, dst) = dirs();
    write(&src, "a", &Rng::new(2).bytes(50_000));
    write(&src, "sub/b", &Rng::new(3).bytes(40_000));
    assert_code(&push(&src, &dst, &[]), 0);
    let (ino_a, ino_b) = (ino(&dst.join("a")), ino(&dst.join("sub/b")));

    fs::rename(src.join("a"), src.join("a-renamed")).unwrap();
    fs::create_dir(src.join("other")).unwrap();
    fs::rename(src.join("sub/b"), src.join("other/b-moved")).unwrap();
    let s = push_json(&src, &dst, &[]);
    assert_same_tree(&src, &dst);
    assert_eq!(count(&s, "renamed"), 2, "{s}");
    assert_eq!(count(&s, "bytes_sent"), 0, "{s}");
    assert_eq!(ino(&dst.join("a-renamed")), ino_a);
    assert_eq!(ino(&dst.join("other/b-moved")), ino_b);
}

#[test]
fn renamed_directory_moves_as_one_operation() {
    let (_tmp, src, dst) = dirs();
    for i in 0..300 {
        write(
            &src,
            &format!("photos/2024/img{i}.jpg"),
            &Rng::new(i).bytes(3000),
        );
    }
    assert_code(&push(&src, &dst, &[]), 0);
    let dir_inode = ino(&dst.join("photos/2024"));
    let file_inode = ino(&dst.join("photos/2024/img7.jpg"));

    fs::rename(src.join("photos/2024"), src.join("photos/archive-2024")).unwrap();
    let s = push_json(&src, &dst, &["-v"]);
    assert_same_tree(&src, &dst);
    assert_eq!(count(&s, "renamed"), 1, "{s}");
    assert_eq!(count(&s, "bytes_sent"), 0, "{s}");
    assert_eq!(count(&s, "created") + count(&s, "deleted"), 0, "{s}");
    assert_eq!(ino(&dst.join("photos/archive-2024")), dir_inode);
    assert_eq!(ino(&dst.join("photos/archive-2024/img7.jpg")), file_inode);
}

#[test]
fn new_file_with_content_already_on_target_is_copied_there_not_sent() {
    let (_tmp, src, dst) = dirs();
    let data = Rng::new(9).bytes(80_000);
    write(&src, "original", &data);
    assert_code(&push(&src, &dst, &[]), 0);
    write(&src, "dir/duplicate", &data);
    let s = push_json(&src, &dst, &[]);
    assert_same_tree(&src, &dst);
    assert_eq!(count(&s, "copied"), 1, "{s}");
    assert_eq!(count(&s, "bytes_sent"), 0, "{s}");
}

#[test]
fn target_drift_is_repaired_from_the_source() {
    let (_tmp, src, dst) = dirs();
    generate_tree(&src, 11, 40, 10, 500);
    write(&src, "x/kept", b"source version");
    assert_code(&push(&src, &dst, &[]), 0);

    write(&dst, "x/kept", b"edited on the target");
    write(&dst, "x/stray", b"created on the target");
    fs::remove_file(dst.join("d0/s0/f0.dat")).unwrap();
    chmod(&dst, "d1/s1/f1.dat", 0o777);
    let s = push_json(&src, &dst, &[]);
    assert_same_tree(&src, &dst);
    assert!(count(&s, "deleted") >= 1, "{s}");
}

#[test]
fn newer_keeps_a_target_file_that_is_newer_than_the_source() {
    let (_tmp, src, dst) = dirs();
    write(&src, "f", b"v1");
    write(&src, "g", b"v1");
    assert_code(&push(&src, &dst, &[]), 0);
    write(&src, "f", b"v2 source");
    set_mtime(&src, "f", 1_500_000_000, 0);
    write(&dst, "f", b"v3 target, newer");
    set_mtime(&dst, "f", 1_600_000_000, 0);
    write(&src, "g", b"v2 source");
    set_mtime(&src, "g", 1_600_000_000, 0);
    set_mtime(&dst, "g", 1_500_000_000, 0);
    assert_code(&push(&src, &dst, &["--newer"]), 0);
    assert_eq!(read(&dst, "f"), b"v3 target, newer");
    assert_eq!(read(&dst, "g"), b"v2 source");
    assert_code(&push(&src, &dst, &["--newer"]), 0);
    assert_eq!(read(&dst, "f"), b"v3 target, newer");
    // Without --newer the source wins.
    assert_code(&push(&src, &dst, &[]), 0);
    assert_eq!(read(&dst, "f"), b"v2 source");
}

#[test]
fn no_delete_keeps_paths_deleted_on_the_source() {
    let (_tmp, src, dst) = dirs();
    write(&src, "a", b"a");
    write(&src, "d/b", b"b");
    assert_code(&push(&src, &dst, &[]), 0);
    fs::remove_file(src.join("a")).unwrap();
    fs::remove_dir_all(src.join("d")).unwrap();
    write(&src, "c", b"c");
    assert_code(&push(&src, &dst, &["--no-delete"]), 0);
    assert_eq!(read(&dst, "a"), b"a");
    assert_eq!(read(&dst, "d/b"), b"b");
    assert_eq!(read(&dst, "c"), b"c");
    // Kept again on the next run with the flag...
    let s = push_json(&src, &dst, &["--no-delete"]);
    assert_eq!(count(&s, "deleted"), 0, "{s}");
    assert_eq!(read(&dst, "a"), b"a");
    // ...and a run without it makes the target equal to the source.
    let s = push_json(&src, &dst, &[]);
    assert_eq!(count(&s, "deleted"), 3, "{s}");
    assert_same_tree(&src, &dst);
}

// ---------------------------------------------------------------------------
// The drift warning: "X on the target changed since this session's last
// run", given only when X differs from what this session's snapshot
// recorded after a completed run.

const DRIFT: &str = "changed since this session's last run";

/// `snapsync push EXTRA SRC DST`, the target a local directory or, when
/// `far`, reached through the protocol (the `--rsh` shim made in `tmp`).
fn push_to(far: bool, tmp: &Path, src: &Path, dst: &Path, extra: &[&str]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.arg("push").args(extra);
    if far {
        cmd.arg("--rsh")
            .arg(rsh_shim(tmp))
            .arg("--remote-command")
            .arg(bin())
            .arg(src)
            .arg(format!("far.example:{}", dst.display()));
    } else {
        cmd.arg(src).arg(dst);
    }
    cmd.output().expect("run snapsync")
}

/// The paths the run named in drift warnings.
#[track_caller]
fn drift_named(out: &Output) -> Vec<String> {
    assert_code(out, 0);
    stderr(out)
        .lines()
        .filter_map(|line| line.split_once(" on the target "))
        .filter(|(_, rest)| rest.starts_with(DRIFT))
        .map(|(head, _)| head.rsplit(' ').next().unwrap_or(head).to_string())
        .collect()
}

#[test]
fn no_drift_warning_on_a_first_run_into_a_target_that_holds_files() {
    for far in [false, true] {
        let (tmp, src, dst) = dirs();
        write(&src, "shared", b"the source's");
        write(&dst, "shared", b"the target's own version");
        write(&dst, "stray", b"only on the target");
        let out = push_to(far, tmp.path(), &src, &dst, &[]);
        assert_eq!(drift_named(&out), Vec::<String>::new(), "far {far}");
        assert_same_tree(&src, &dst);
        // Nor after a first run that stopped before its end: its snapshot
        // is not that of a completed run.
        let (tmp, src, dst) = dirs();
        write(&src, "a", b"a");
        assert_code(&push_to(far, tmp.path(), &src, &dst, &[]), 0);
        unestablish(&src);
        unestablish(&dst);
        write(&dst, "a", b"written on the target");
        write(&dst, "stray", b"only on the target");
        let out = push_to(far, tmp.path(), &src, &dst, &[]);
        assert_eq!(drift_named(&out), Vec::<String>::new(), "far {far}");
        assert_same_tree(&src, &dst);
    }
}

#[test]
fn no_drift_warning_on_a_reset_run() {
    for far in [false, true] {
        let (tmp, src, dst) = dirs();
        write(&src, "a", b"a");
        assert_code(&push_to(far, tmp.path(), &src, &dst, &[]), 0);
        write(&dst, "a", b"written on the target");
        write(&dst, "stray", b"only on the target");
        let out = push_to(far, tmp.path(), &src, &dst, &["-x"]);
        assert_eq!(drift_named(&out), Vec::<String>::new(), "far {far}");
        assert_same_tree(&src, &dst);
    }
}

#[test]
fn no_drift_warning_for_a_path_the_last_run_kept() {
    for far in [false, true] {
        let (tmp, src, dst) = dirs();
        let push = |extra: &[&str]| push_to(far, tmp.path(), &src, &dst, extra);
        write(&src, "gone", b"deleted on the source");
        write(&src, "d/gone", b"and a directory of it");
        write(&src, "newer", b"v1");
        // A first run that keeps what only the target holds.
        write(&dst, "stray", b"only on the target");
        assert_code(&push(&["--no-delete"]), 0);
        fs::remove_file(src.join("gone")).unwrap();
        fs::remove_dir_all(src.join("d")).unwrap();
        write(&src, "newer", b"v2 on the source");
        set_mtime(&src, "newer", 1_500_000_000, 0);
        write(&dst, "newer", b"v3 on the target, newer");
        set_mtime(&dst, "newer", 1_600_000_000, 0);
        assert_code(&push(&["--no-delete", "--newer"]), 0);
        assert_eq!(read(&dst, "gone"), b"deleted on the source");
        assert_eq!(read(&dst, "newer"), b"v3 on the target, newer");
        // Kept again, nothing named...
        let out = push(&["--no-delete", "--newer", "--json"]);
        assert_eq!(drift_named(&out), Vec::<String>::new(), "far {far}");
        assert_eq!(count(&summary(&out), "deleted"), 0, "far {far}");
        // ...and a run without the flags settles each, naming none: the
        // session kept them as they are.
        let out = push(&["--json"]);
        assert_eq!(drift_named(&out), Vec::<String>::new(), "far {far}");
        let s = summary(&out);
        assert_eq!(count(&s, "deleted"), 4, "far {far}: {s}");
        assert_eq!(count(&s, "updated"), 1, "far {far}: {s}");
        assert_same_tree(&src, &dst);
    }
}

#[test]
fn drift_warning_names_target_files_changed_since_the_last_run() {
    for far in [false, true] {
        let (tmp, src, dst) = dirs();
        let push = |extra: &[&str]| push_to(far, tmp.path(), &src, &dst, extra);
        write(&src, "edited", b"v1");
        write(&src, "kept", b"kept by --no-delete");
        write(&src, "same", b"left alone");
        assert_code(&push(&[]), 0);
        fs::remove_file(src.join("kept")).unwrap();
        assert_code(&push(&["--no-delete"]), 0);
        // Written on the target since: an edit, a new file, and the kept
        // file edited after the run that kept it.
        write(&dst, "edited", b"edited on the target");
        write(&dst, "new", b"written on the target");
        write(&dst, "kept", b"edited after it was kept");
        let out = push(&[]);
        let mut named = drift_named(&out);
        named.sort();
        assert_eq!(named, ["edited", "kept", "new"], "far {far}");
        let err = stderr(&out);
        assert!(
            err.contains(&format!("edited on the target {DRIFT} (another session or a local edit wrote it); replaced by the source's version")),
            "far {far}: {err}"
        );
        assert!(
            err.contains(&format!(
                "new on the target {DRIFT} (another session or a local edit wrote it); deleted"
            )),
            "far {far}: {err}"
        );
        assert_same_tree(&src, &dst);
        // Once settled, nothing more to name.
        assert_eq!(drift_named(&push(&[])), Vec::<String>::new(), "far {far}");
    }
}

#[test]
fn filters_first_match_wins_with_anchors_directories_and_globstar() {
    let (tmp, src, dst) = dirs();
    for rel in [
        "keep.log",
        "drop.log",
        "src/main.rs",
        "src/deep/x.o",
        "build/out.bin",
        "nested/build/kept.txt",
        "cache/file",
        "cachefile",
        "a/b/c/skip.tmp",
    ] {
        write(&src, rel, rel.as_bytes());
    }
    let rules = tmp.path().join("rules");
    fs::write(&rules, "# comment\n\n- **/*.tmp\n").unwrap();
    let out = push(
        &src,
        &dst,
        &[
            "--include",
            "keep.log",
            "--exclude",
            "*.log",
            "--exclude",
            "/build",
            "--exclude",
            "cache/",
            "--exclude",
            "/src/**/*.o",
            "--filter-from",
            rules.to_str().unwrap(),
        ],
    );
    assert_code(&out, 0);
    let got: Vec<String> = tree(&dst)
        .into_iter()
        .filter(|(_, n)| matches!(n, Node::File { .. }))
        .map(|(k, _)| String::from_utf8(k).unwrap())
        .collect();
    assert_eq!(
        got,
        [
            "cachefile",
            "keep.log",
            "nested/build/kept.txt",
            "src/main.rs"
        ]
    );
}

#[test]
fn excluded_target_paths_are_never_deleted() {
    let (_tmp, src, dst) = dirs();
    write(&src, "a", b"a");
    fs::create_dir_all(&dst).unwrap();
    write(&dst, "local.cfg", b"target's own");
    write(&dst, "logs/x.log", b"target's log");
    let out = push(&src, &dst, &["--exclude", "*.cfg", "--exclude", "logs/"]);
    assert_code(&out, 0);
    assert_eq!(read(&dst, "local.cfg"), b"target's own");
    assert_eq!(read(&dst, "logs/x.log"), b"target's log");
    // A file excluded after it was synced stays on the target.
    write(&src, "later.dat", b"1");
    assert_code(&push(&src, &dst, &[]), 0);
    fs::remove_file(src.join("later.dat")).unwrap();
    let out = push(&src, &dst, &["--exclude", "*.dat"]);
    assert_code(&out, 0);
    assert!(dst.join("later.dat").exists());
}

#[test]
fn state_directory_is_never_synced() {
    let (_tmp, src, dst) = dirs();
    write(&src, "f", b"1");
    assert_code(&push(&src, &dst, &[]), 0);
    // The source's own state must not appear inside the target's.
    let listed: Vec<_> = fs::read_dir(dst.join(".snapsync"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(listed
        .iter()
        .all(|n| n.to_str().is_some_and(|n| !n.contains("tmp"))));
    assert!(src.join(".snapsync").is_dir());
    let s = push_json(&src, &dst, &[]);
    assert_eq!(count(&s, "created"), 0);
}

#[test]
fn links_follow_copies_what_links_point_to_and_skip_ignores_them() {
    let (tmp, src, _) = dirs();
    write(&src, "real/data", b"payload");
    link(&src, "to-file", "real/data");
    link(&src, "to-dir", "real");
    let follow = tmp.path().join("follow");
    assert_code(&push(&src, &follow, &["--links", "follow"]), 0);
    assert!(fs::symlink_metadata(follow.join("to-file"))
        .unwrap()
        .is_file());
    assert_eq!(read(&follow, "to-file"), b"payload");
    assert_eq!(read(&follow, "to-dir/data"), b"payload");

    let skip = tmp.path().join("skip");
    fs::create_dir(&skip).unwrap();
    link(&skip, "targets-own-link", "anywhere");
    assert_code(&push(&src, &skip, &["--links", "skip"]), 0);
    assert!(fs::symlink_metadata(skip.join("to-file")).is_err());
    assert!(fs::symlink_metadata(skip.join("targets-own-link")).is_ok());
    assert_eq!(read(&skip, "real/data"), b"payload");
}

#[test]
fn owner_and_group_are_kept_only_when_asked() {
    let (tmp, src, _) = dirs();
    write(&src, "f", b"x");
    std::os::unix::fs::chown(src.join("f"), Some(1234), Some(5678)).unwrap();
    let plain = tmp.path().join("plain");
    assert_code(&push(&src, &plain, &[]), 0);
    let meta = fs::metadata(plain.join("f")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    let kept = tmp.path().join("kept");
    assert_code(&push(&src, &kept, &["--owner", "--group"]), 0);
    let meta = fs::metadata(kept.join("f")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
    // A later chown alone is a metadata change that propagates.
    std::os::unix::fs::chown(src.join("f"), Some(42), None).unwrap();
    assert_code(&push(&src, &kept, &["--owner", "--group"]), 0);
    assert_eq!(fs::metadata(kept.join("f")).unwrap().uid(), 42);
}

#[test]
fn xattrs_are_kept_only_when_asked() {
    let (tmp, src, _) = dirs();
    write(&src, "f", b"x");
    xattr::set(src.join("f"), "user.color", b"blue").unwrap();
    let plain = tmp.path().join("plain");
    assert_code(&push(&src, &plain, &[]), 0);
    assert_eq!(xattr::get(plain.join("f"), "user.color").unwrap(), None);
    let kept = tmp.path().join("kept");
    assert_code(&push(&src, &kept, &["--xattrs"]), 0);
    assert_eq!(
        xattr::get(kept.join("f"), "user.color").unwrap(),
        Some(b"blue".to_vec())
    );
    xattr::set(src.join("f"), "user.color", b"red").unwrap();
    assert_code(&push(&src, &kept, &["--xattrs"]), 0);
    assert_eq!(
        xattr::get(kept.join("f"), "user.color").unwrap(),
        Some(b"red".to_vec())
    );
}

#[test]
fn checksum_finds_content_changes_that_keep_size_and_mtime() {
    let (_tmp, src, dst) = dirs();
    write(&src, "f", b"aaaa");
    set_mtime(&src, "f", 1_300_000_000, 0);
    assert_code(&push(&src, &dst, &[]), 0);
    let before = fs::metadata(src.join("f")).unwrap();
    write(&src, "f", b"bbbb");
    set_mtime(&src, "f", 1_300_000_000, 0);
    assert_eq!(fs::metadata(src.join("f")).unwrap().ino(), before.ino());
    assert_code(&push(&src, &dst, &[]), 0);
    assert_eq!(read(&dst, "f"), b"aaaa", "size+mtime+inode cannot see it");
    let s = push_json(&src, &dst, &["--checksum"]);
    assert_eq!(read(&dst, "f"), b"bbbb");
    assert_eq!(count(&s, "updated"), 1, "{s}");
}

#[test]
fn reset_compares_trees_in_full_and_adopts_equal_files() {
    let (tmp, src, dst) = dirs();
    generate_tree(&src, 5, 60, 100, 3000);
    let copy = Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(&dst)
        .status()
        .unwrap();
    assert!(copy.success());
    write(&dst, "d0/s0/f0.dat", b"differs");
    let s = push_json(&src, &dst, &["-x"]);
    assert_same_tree(&src, &dst);
    let f0 = fs::metadata(src.join("d0/s0/f0.dat")).unwrap().len();
    assert_eq!(
        count(&s, "bytes_sent"),
        f0,
        "only the differing file is sent: {s}"
    );
    // -x also drops a snapshot that exists.
    let s = push_json(&src, &dst, &["-x"]);
    assert_eq!(count(&s, "bytes_sent"), 0, "{s}");
    let _ = tmp;
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let (_tmp, src, dst) = dirs();
    write(&src, "a", b"a");
    let out = push(&src, &dst, &["-n"]);
    assert_code(&out, 0);
    assert!(stdout(&out).contains("create  a"), "{}", stdout(&out));
    assert!(!dst.exists(), "dry run created the target");
    assert!(!src.join(".snapsync").exists(), "dry run wrote state");

    assert_code(&push(&src, &dst, &[]), 0);
    let db = fs::read_dir(dst.join(".snapsync"))
        .unwrap()
        .flatten()
        .find(|e| e.path().extension() == Some("db".as_ref()))
        .unwrap()
        .path();
    let state_before = fs::read(&db).unwrap();
    let tree_before = tree(&dst);
    write(&src, "b", b"b");
    fs::remove_file(src.join("a")).unwrap();
    let out = push(&src, &dst, &["--dry-run", "--json"]);
    assert_code(&out, 0);
    let s = summary(&out);
    assert_eq!(count(&s, "created"), 1);
    assert_eq!(count(&s, "deleted"), 1);
    let plan: Vec<&str> = s["plan"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        plan.iter().any(|l| l.contains("delete") && l.contains('a')),
        "{plan:?}"
    );
    assert_eq!(tree(&dst), tree_before);
    assert_eq!(fs::read(&db).unwrap(), state_before);
}

#[test]
fn named_sessions_keep_separate_snapshots() {
    let (tmp, src, dst) = dirs();
    write(&src, "f", b"1");
    assert_code(&push(&src, &dst, &["-N", "site"]), 0);
    assert!(dst.join(".snapsync/site.db").exists());
    assert!(src.join(".snapsync/site.db").exists());
    // Another session between the same roots starts from nothing.
    let s = push_json(&src, &dst, &["-N", "other"]);
    assert_eq!(count(&s, "bytes_sent"), 0, "equal files are adopted: {s}");
    // Its direction is part of it.
    let out = pull(&src, &dst, &["-N", "site"]);
    assert_code(&out, 1);
    assert_stderr_says(&out, "push");
    let _ = tmp;
}

#[test]
fn state_dir_moves_this_sides_state() {
    let (tmp, src, dst) = dirs();
    write(&src, "f", b"1");
    let state = tmp.path().join("state");
    let out = push(
        &src,
        &dst,
        &["--state-dir", state.to_str().unwrap(), "-N", "s"],
    );
    assert_code(&out, 0);
    assert!(state.join("s.db").exists());
    assert!(state.join("id").exists());
    assert!(!src.join(".snapsync").exists());
    // A state dir inside the root is not synced.
    let inner = src.join("meta-state");
    assert_code(
        &push(
            &src,
            &dst,
            &["--state-dir", inner.to_str().unwrap(), "-N", "t"],
        ),
        0,
    );
    assert!(inner.join("t.db").exists());
    assert!(!dst.join("meta-state").exists());
}

#[test]
fn verbose_lists_operations_and_quiet_prints_nothing() {
    let (_tmp, src, dst) = dirs();
    write(&src, "one", b"1");
    let out = push(&src, &dst, &["-v"]);
    assert_code(&out, 0);
    assert_stderr_says(&out, "create  one");
    write(&src, "two", b"2");
    let out = push(&src, &dst, &["-q"]);
    assert_code(&out, 0);
    assert!(stdout(&out).is_empty() && stderr(&out).is_empty());
}

#[test]
fn progress_bar_draws_on_a_terminal_only() {
    let (_tmp, src, dst) = dirs();
    generate_tree(&src, 13, 3000, 1000, 20_000);
    let out = push(&src, &dst, &["--progress"]);
    assert_code(&out, 0);
    let err = stderr(&out);
    assert!(
        !err.contains("scanning") && !err.contains(" files  "),
        "no bar without a terminal: {err}"
    );
    // `script` gives the command a pseudo-terminal.
    let other = dst.with_file_name("tty-dst");
    let command = format!(
        "{} push --progress {} {}",
        bin().display(),
        src.display(),
        other.display()
    );
    let out = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .output()
        .expect("script (util-linux) is needed for this test");
    assert_code(&out, 0);
    let screen = String::from_utf8_lossy(&out.stdout);
    // Its first frame, drawn as soon as the run starts (the transfer's
    // frames are tests/terminal.rs's business).
    assert!(
        screen.contains("scanning"),
        "no progress bar drawn: {screen}"
    );
    assert_same_tree(&src, &other);
}

#[test]
fn non_utf8_names_are_shown_escaped() {
    let (_tmp, src, dst) = dirs();
    fs::write(src.join(std::ffi::OsStr::from_bytes(b"bad\xffname")), b"x").unwrap();
    let out = push(&src, &dst, &["-v"]);
    assert_code(&out, 0);
    assert_stderr_says(&out, "bad\\xFFname");
}

#[test]
fn usage_errors_exit_2() {
    let out = snapsync(&["push", "--no-such-flag", "a", "b"]);
    assert_code(&out, 2);
    let out = snapsync(&["push"]);
    assert_code(&out, 2);
    let tmp = tempfile::tempdir().unwrap();
    let out = snapsync(&[
        "push",
        "--exclude",
        "[unclosed",
        tmp.path().to_str().unwrap(),
        tmp.path().join("x").to_str().unwrap(),
    ]);
    assert_code(&out, 2);
    assert_stderr_says(&out, "[unclosed");
}

#[test]
fn version_names_commit_and_protocol() {
    let out = snapsync(&["--version"]);
    assert_code(&out, 0);
    let text = stdout(&out);
    assert!(
        text.contains("commit")
            && text.contains(&format!("protocol {}", snapsync::PROTOCOL_VERSION)),
        "{text}"
    );
}

#[test]
fn type_changes_replace_files_directories_and_links() {
    let (_tmp, src, dst) = dirs();
    write(&src, "was-file", b"f");
    write(&src, "was-dir/inner", b"i");
    link(&src, "was-link", "was-file");
    assert_code(&push(&src, &dst, &[]), 0);
    fs::remove_file(src.join("was-file")).unwrap();
    write(&src, "was-file/now-inside", b"n");
    fs::remove_dir_all(src.join("was-dir")).unwrap();
    link(&src, "was-dir", "was-file");
    fs::remove_file(src.join("was-link")).unwrap();
    write(&src, "was-link", b"now a file");
    assert_code(&push(&src, &dst, &[]), 0);
    assert_same_tree(&src, &dst);
}

/// A reader that went away (`snapsync push --json ... | head -c0`) loses
/// the summary, not the run: no panic, exit 0, the target in place.
#[test]
fn a_closed_stdout_is_no_failure() {
    let (_tmp, src, dst) = dirs();
    write(&src, "f", b"x");
    let mut child = std::process::Command::new(bin())
        .args(["push", "--json"])
        .arg(&src)
        .arg(&dst)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_code(&out, 0);
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    assert_eq!(read(&dst, "f"), b"x");
}

/// `rm -rf` of a directory of many files is carried out as one operation,
/// not one per file; what the source never had there (excluded) stays.
#[test]
fn a_directory_removed_whole_goes_as_one_delete() {
    let (_tmp, src, dst) = dirs();
    for i in 0..300 {
        write(&src, &format!("many/sub{}/f{i}", i % 3), b"x");
    }
    write(&src, "keep", b"k");
    assert_code(&push(&src, &dst, &[]), 0);
    fs::remove_dir_all(src.join("many")).unwrap();
    let out = push(&src, &dst, &["-v", "--json"]);
    assert_code(&out, 0);
    let lines: Vec<String> = stderr(&out)
        .lines()
        .filter(|l| l.starts_with("delete"))
        .map(str::to_string)
        .collect();
    assert_eq!(lines, vec!["delete  many/ (and the 303 entries under it)"]);
    assert_eq!(count(&summary(&out), "deleted"), 304);
    assert!(!dst.join("many").exists());
    assert_same_tree(&src, &dst);
}
