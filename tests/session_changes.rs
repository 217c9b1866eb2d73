//! Session changes (DESIGN.md, "Session changes"): a session run again with
//! another direction is refused before anything else (the loop check
//! included), and changed filters never delete a newly excluded path on a
//! target, while a newly included path is synced like any other.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn roots(names: &[&str]) -> (tempfile::TempDir, Vec<PathBuf>) {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = names
        .iter()
        .map(|n| {
            let d = tmp.path().join(n);
            fs::create_dir_all(&d).unwrap();
            d
        })
        .collect();
    (tmp, dirs)
}

/// How the tests reach the remote root: as a directory, or as
/// `host:/path` through the rsh shim (a far end running `serve`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Reach {
    Local,
    Far,
}

/// `snapsync VERB [reach options] EXTRA LOCAL REMOTE`.
fn sync(verb: &str, reach: Reach, local: &Path, remote: &Path, extra: &[&str]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.arg(verb).args(extra);
    match reach {
        Reach::Local => {
            cmd.arg(local).arg(remote);
        }
        Reach::Far => {
            // The shim lives beside the roots, outside both.
            let shim = rsh_shim(local.parent().unwrap());
            cmd.arg("--rsh")
                .arg(shim)
                .arg("--remote-command")
                .arg(bin())
                .arg(local)
                .arg(format!("far.example:{}", remote.display()));
        }
    }
    cmd.output().expect("run snapsync")
}

/// A replica run from `source` to `target`: a push from the source's side,
/// or a pull from the target's side (the local root is the one named first).
fn replica(verb: &str, reach: Reach, source: &Path, target: &Path, extra: &[&str]) -> Output {
    match verb {
        "push" => sync("push", reach, source, target, extra),
        "pull" => sync("pull", reach, target, source, extra),
        _ => unreachable!("a replica verb"),
    }
}

/// The paths a root's snapshot of `session` holds, read from its database.
fn snapshot_paths(root: &Path, session: &str) -> Vec<String> {
    let path = root.join(".snapsync").join(format!("{session}.db"));
    let db =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut query = db
        .prepare("SELECT path FROM entries ORDER BY path")
        .unwrap();
    let rows = query
        .query_map([], |row| row.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(|path| String::from_utf8(path.unwrap()).unwrap())
        .collect();
    rows
}

fn strs(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------
// Another direction

/// Refused with the recorded direction named and the ways out given.
#[track_caller]
fn assert_refused_direction(out: &Output, recorded: &str) {
    assert_code(out, 1);
    let err = stderr(out);
    assert!(
        err.contains(&format!("recorded as {recorded},")),
        "names the recorded direction ({recorded}): {err}"
    );
    assert!(
        err.contains("-N") && err.contains("-x"),
        "says the way out: {err}"
    );
    assert!(
        !err.contains("flow back into its own upstream"),
        "the direction is reported, not a loop: {err}"
    );
}

fn another_direction_is_refused(reach: Reach) {
    let (_tmp, d) = roots(&["a", "b"]);
    let (a, b) = (&d[0], &d[1]);
    write(a, "f.txt", b"one");
    write(a, "dir/g.txt", b"g");
    assert_code(&sync("push", reach, a, b, &["-N", "s"]), 0);
    // Changes on both sides that any run would carry somewhere.
    write(a, "f.txt", b"two, from a");
    write(b, "only-b.txt", b"b");
    fs::remove_file(b.join("dir/g.txt")).unwrap();
    let before = (tree(a), tree(b));
    // A pull opens the far root (its source) first: there the refusal
    // comes from the far end; a bidi hears it from the near end first.
    for verb in ["pull", "bidi"] {
        let out = sync(verb, reach, a, b, &["-N", "s"]);
        assert_refused_direction(&out, "push");
        let err = stderr(&out);
        assert!(err.contains(&format!("not {verb}")), "{err}");
        let from_far_end = reach == Reach::Far && verb == "pull";
        assert_eq!(
            err.contains("far.example: session `s`"),
            from_far_end,
            "{err}"
        );
        // A dry run is refused alike.
        assert_refused_direction(&sync(verb, reach, a, b, &["-N", "s", "-n"]), "push");
        assert_eq!((tree(a), tree(b)), before, "{verb}: nothing changed");
    }
    // The session still works the way it was recorded.
    assert_code(&sync("push", reach, a, b, &["-N", "s"]), 0);
    assert_same_tree(a, b);
    // -x starts it afresh in the new direction, which is then the recorded one.
    write(b, "only-b.txt", b"b again");
    assert_code(&sync("pull", reach, a, b, &["-N", "s", "-x"]), 0);
    assert_same_tree(a, b);
    assert_eq!(read(a, "only-b.txt"), b"b again");
    assert_refused_direction(&sync("push", reach, a, b, &["-N", "s"]), "pull");
}

#[test]
fn another_direction_is_refused_until_reset() {
    another_direction_is_refused(Reach::Local);
}

#[test]
fn another_direction_is_refused_by_a_far_end() {
    another_direction_is_refused(Reach::Far);
}

#[test]
fn a_far_ends_own_refusal_reaches_the_user() {
    // Only the far root remembers the session (the near one lost its
    // database), so only the far end can refuse.
    let (_tmp, d) = roots(&["a", "b"]);
    let (a, b) = (&d[0], &d[1]);
    write(a, "f.txt", b"one");
    assert_code(&sync("push", Reach::Far, a, b, &["-N", "s"]), 0);
    for suffix in ["", "-wal", "-shm"] {
        let _ = fs::remove_file(a.join(format!(".snapsync/s.db{suffix}")));
    }
    assert!(!a.join(".snapsync/s.db").exists());
    let before = (tree(a), tree(b));
    let out = sync("bidi", Reach::Far, a, b, &["-N", "s"]);
    assert_refused_direction(&out, "push");
    assert_stderr_says(&out, "far.example");
    assert_eq!((tree(a), tree(b)), before);
}

#[test]
fn the_direction_is_checked_before_loops() {
    let (_tmp, d) = roots(&["a", "b", "c"]);
    let (a, b, c) = (&d[0], &d[1], &d[2]);
    write(a, "f.txt", b"from a");
    // s3 first carries A → C (a pull into C), then A → B → C is built.
    assert_code(&sync("pull", Reach::Local, c, a, &["-N", "s3"]), 0);
    assert_code(&sync("push", Reach::Local, a, b, &["-N", "s1"]), 0);
    assert_code(&sync("push", Reach::Local, b, c, &["-N", "s2"]), 0);
    write(c, "new-in-c.txt", b"c");
    let before = (tree(a), tree(b), tree(c));
    // s3 as a push C → A: another direction, and a loop (A → B → C → A).
    let out = sync("push", Reach::Local, c, a, &["-N", "s3"]);
    assert_refused_direction(&out, "pull");
    assert_eq!((tree(a), tree(b), tree(c)), before);
    // With the direction check passed (-x), the loop check refuses it.
    let out = sync("push", Reach::Local, c, a, &["-N", "s3", "-x"]);
    assert_code(&out, 1);
    assert_stderr_says(&out, "flow back into its own upstream");
    assert_eq!((tree(a), tree(b), tree(c)), before);
}

// ---------------------------------------------------------------------------
// Changed filters, push and pull

fn excluded_paths_stay_then_sync_again(verb: &str, reach: Reach) {
    let (_tmp, d) = roots(&["src", "dst"]);
    let (src, dst) = (&d[0], &d[1]);
    write(src, "a.txt", b"a1");
    write(src, "b.log", b"b1");
    write(src, "dir/c.log", b"c1");
    write(src, "dir/d.log", b"d1");
    write(src, "gone/e.log", b"e1");
    write(src, "gone/f.txt", b"f1");
    write(src, "gone/sub/g.log", b"g1");
    write(src, "gone/sub/h.txt", b"h1");
    write(src, "gone/z.txt", b"z1");
    write(src, "only-logs/x.log", b"x1");
    write(src, "moved.log", b"m1");
    let run = |extra: &[&str]| {
        let mut args = vec!["-N", "s"];
        args.extend_from_slice(extra);
        replica(verb, reach, src, dst, &args)
    };
    assert_code(&run(&[]), 0);
    assert_same_tree(src, dst);

    // Excluded now: the source deletes one, modifies another, and deletes
    // directories that hold some; the target keeps them all as they were,
    // and the directories that hold them, while what is included goes.
    write(src, "a.txt", b"a2 changed");
    fs::remove_file(src.join("b.log")).unwrap();
    write(src, "dir/c.log", b"c2 changed");
    fs::remove_dir_all(src.join("gone")).unwrap();
    fs::remove_dir_all(src.join("only-logs")).unwrap();
    fs::rename(src.join("moved.log"), src.join("moved.txt")).unwrap();
    let out = run(&["--exclude", "*.log"]);
    assert_code(&out, 0);
    assert_eq!(read(dst, "a.txt"), b"a2 changed");
    assert_eq!(read(dst, "b.log"), b"b1");
    assert_eq!(read(dst, "dir/c.log"), b"c1");
    assert_eq!(read(dst, "dir/d.log"), b"d1");
    assert_eq!(read(dst, "gone/e.log"), b"e1");
    assert_eq!(read(dst, "gone/sub/g.log"), b"g1");
    assert_eq!(read(dst, "only-logs/x.log"), b"x1");
    // Renamed out of the excluded name: it arrives, and the old name stays.
    assert_eq!(read(dst, "moved.txt"), b"m1");
    assert_eq!(read(dst, "moved.log"), b"m1");
    for path in ["gone/f.txt", "gone/sub/h.txt", "gone/z.txt"] {
        assert!(
            !dst.join(path).exists(),
            "{path}: what is included is deleted"
        );
    }
    assert_stderr_says(
        &out,
        "directory gone still holds excluded entries; it was kept",
    );
    assert_stderr_says(
        &out,
        "directory only-logs still holds excluded entries; it was kept",
    );
    // Both snapshots forgot the excluded paths, and the target's holds no
    // row for the directories it kept for them: they are judged again.
    for root in [src, dst] {
        assert_eq!(
            snapshot_paths(root, "s"),
            strs(&["a.txt", "dir", "moved.txt"]),
            "{}",
            root.display()
        );
    }
    // A second run with the same filters changes nothing more; the kept
    // directories are judged again, and kept again, with the warning (as
    // rsync's "cannot delete non-empty directory").
    let out = run(&["--exclude", "*.log", "--json"]);
    assert_code(&out, 0);
    let json = summary(&out);
    for key in ["created", "updated", "deleted"] {
        assert_eq!(count(&json, key), 0, "{key}: {json}");
    }
    assert_stderr_says(&out, "directory gone still holds excluded entries");
    assert_eq!(read(dst, "b.log"), b"b1");
    assert_eq!(read(dst, "gone/sub/g.log"), b"g1");

    // Included again: the target becomes the source for every path, what
    // the source deleted meanwhile going too; what did not change while it
    // was excluded is adopted where it lies, not sent again.
    let kept = identities(dst)[b"dir/d.log".as_slice()];
    let out = run(&["--json"]);
    assert_code(&out, 0);
    assert_same_tree(src, dst);
    assert!(!dst.join("b.log").exists() && !dst.join("moved.log").exists());
    assert_eq!(read(dst, "dir/c.log"), b"c2 changed");
    assert!(!dst.join("gone").exists() && !dst.join("only-logs").exists());
    assert_eq!(identities(dst)[b"dir/d.log".as_slice()], kept);
    let json = summary(&out);
    assert_eq!(
        count(&json, "bytes_sent") + count(&json, "bytes_received"),
        b"c2 changed".len() as u64,
        "only the changed file travels: {json}"
    );
    for root in [src, dst] {
        assert_eq!(
            snapshot_paths(root, "s"),
            strs(&["a.txt", "dir", "dir/c.log", "dir/d.log", "moved.txt"])
        );
    }
}

#[test]
fn push_keeps_newly_excluded_paths_and_syncs_them_when_included_again() {
    excluded_paths_stay_then_sync_again("push", Reach::Local);
}

#[test]
fn pull_keeps_newly_excluded_paths_and_syncs_them_when_included_again() {
    excluded_paths_stay_then_sync_again("pull", Reach::Local);
}

#[test]
fn push_to_a_far_end_keeps_newly_excluded_paths() {
    excluded_paths_stay_then_sync_again("push", Reach::Far);
}

#[test]
fn pull_from_a_far_end_keeps_newly_excluded_paths() {
    excluded_paths_stay_then_sync_again("pull", Reach::Far);
}

fn newly_included_directory_arrives(verb: &str, reach: Reach) {
    let (_tmp, d) = roots(&["src", "dst"]);
    let (src, dst) = (&d[0], &d[1]);
    write(src, "small.txt", b"s");
    write(src, "big/x.dat", b"x from the source");
    write(src, "big/sub/y.dat", b"y");
    write(src, "big/same.dat", b"same");
    assert_code(
        &replica(verb, reach, src, dst, &["-N", "s", "--exclude", "big/"]),
        0,
    );
    assert!(dst.join("small.txt").exists() && !dst.join("big").exists());
    // Written on the target while excluded: its own files, and one equal to
    // the source's (content and times).
    write(dst, "big/x.dat", b"x the target wrote");
    write(dst, "big/only-target.dat", b"t");
    write(dst, "big/same.dat", b"same");
    set_mtime(src, "big/same.dat", 1_600_000_000, 0);
    set_mtime(dst, "big/same.dat", 1_600_000_000, 0);
    let same = identities(dst)[b"big/same.dat".as_slice()];
    let out = replica(verb, reach, src, dst, &["-N", "s"]);
    assert_code(&out, 0);
    assert_eq!(identities(dst)[b"big/same.dat".as_slice()], same, "adopted");
    // A replica's target equals its source for every included path.
    assert_eq!(tree_without_dir_times(src), tree_without_dir_times(dst));
    assert_eq!(read(dst, "big/sub/y.dat"), b"y");
    assert_eq!(read(dst, "big/x.dat"), b"x from the source");
    assert!(!dst.join("big/only-target.dat").exists());
    // What the target's own writes lost is named.
    let err = stderr(&out);
    assert!(
        err.contains("big/x.dat") && err.contains("big/only-target.dat"),
        "{err}"
    );
    assert!(!err.contains("big/same.dat"), "{err}");
    assert_code(&replica(verb, reach, src, dst, &["-N", "s"]), 0);
    assert_same_tree(src, dst);
}

/// A directory the source deleted while it held only excluded entries is
/// kept on the target; once they are included again, it goes with them.
#[test]
fn a_directory_kept_for_excluded_entries_goes_once_they_are_included() {
    let (_tmp, d) = roots(&["src", "dst"]);
    let (src, dst) = (&d[0], &d[1]);
    write(src, "top.txt", b"t");
    write(src, "logs/x.log", b"x");
    assert_code(&push(src, dst, &["-N", "s"]), 0);
    fs::remove_dir_all(src.join("logs")).unwrap();
    for _ in 0..2 {
        let out = push(src, dst, &["-N", "s", "--exclude", "*.log"]);
        assert_code(&out, 0);
        assert_stderr_says(
            &out,
            "directory logs still holds excluded entries; it was kept",
        );
        assert_eq!(read(dst, "logs/x.log"), b"x");
    }
    assert_code(&push(src, dst, &["-N", "s"]), 0);
    assert!(!dst.join("logs").exists());
    assert_same_tree(src, dst);
}

#[test]
fn push_syncs_a_newly_included_directory() {
    newly_included_directory_arrives("push", Reach::Local);
}

#[test]
fn pull_syncs_a_newly_included_directory() {
    newly_included_directory_arrives("pull", Reach::Local);
}

#[test]
fn push_to_a_far_end_syncs_a_newly_included_directory() {
    newly_included_directory_arrives("push", Reach::Far);
}

// ---------------------------------------------------------------------------
// Changed filters, bidi

fn bidi_run(reach: Reach, a: &Path, b: &Path, extra: &[&str], code: i32) -> serde_json::Value {
    let mut args = vec!["-N", "s", "--json"];
    args.extend_from_slice(extra);
    let out = sync("bidi", reach, a, b, &args);
    assert_code(&out, code);
    summary(&out)
}

fn bidi_excluded_paths_stay_on_both_sides(reach: Reach) {
    let (_tmp, d) = roots(&["a", "b"]);
    let (a, b) = (&d[0], &d[1]);
    write(a, "a.txt", b"a1");
    write(a, "del-on-a.log", b"1");
    write(a, "del-on-b.log", b"2");
    write(a, "dir/edit-on-a.log", b"3");
    write(a, "dir/edit-on-b.log", b"4");
    write(a, "dir/edit-both.log", b"5");
    write(a, "dir/same.log", b"6");
    write(a, "gone/e.log", b"7");
    write(a, "gone/f.txt", b"8");
    bidi_run(reach, a, b, &[], 0);
    assert_same_tree(a, b);

    // Excluded now: changes on either side stay there, nothing is deleted.
    write(a, "a.txt", b"a2 changed on a");
    fs::remove_file(a.join("del-on-a.log")).unwrap();
    fs::remove_file(b.join("del-on-b.log")).unwrap();
    write(a, "dir/edit-on-a.log", b"3 edited on a");
    write(b, "dir/edit-on-b.log", b"4 edited on b");
    write(a, "dir/edit-both.log", b"5 edited on a");
    write(b, "dir/edit-both.log", b"5 edited on b");
    fs::remove_dir_all(a.join("gone")).unwrap();
    let out = sync("bidi", reach, a, b, &["-N", "s", "--exclude", "*.log"]);
    assert_code(&out, 0);
    assert_stderr_says(
        &out,
        "directory gone still holds excluded entries; it was kept",
    );
    assert_eq!(read(b, "gone/e.log"), b"7");
    assert!(!b.join("gone/f.txt").exists());
    assert_eq!(read(b, "a.txt"), b"a2 changed on a");
    assert!(!a.join("del-on-a.log").exists());
    assert_eq!(read(b, "del-on-a.log"), b"1");
    assert_eq!(read(a, "del-on-b.log"), b"2");
    assert!(!b.join("del-on-b.log").exists());
    assert_eq!(read(b, "dir/edit-on-a.log"), b"3");
    assert_eq!(read(a, "dir/edit-on-b.log"), b"4");
    for root in [a, b] {
        assert_eq!(snapshot_paths(root, "s"), strs(&["a.txt", "dir"]));
    }
    // The directory kept on b is judged again: it exists, so a has it too.
    let json = bidi_run(reach, a, b, &["--exclude", "*.log"], 0);
    assert_eq!(count(&json, "conflicts"), 0, "{json}");
    assert!(a.join("gone").is_dir() && !a.join("gone/e.log").exists());

    // Included again. The snapshot knows nothing of these paths, so each
    // is new wherever it stands: one side's copy goes to the other (a
    // deletion made while excluded is undone: nothing is lost), equal
    // copies are adopted, different copies are conflicts left untouched.
    let json = bidi_run(reach, a, b, &[], 4);
    assert_eq!(count(&json, "conflicts"), 3, "{json}");
    assert_eq!(read(a, "del-on-a.log"), b"1");
    assert_eq!(read(b, "del-on-b.log"), b"2");
    assert_eq!(read(a, "gone/e.log"), b"7");
    assert_eq!(read(a, "dir/edit-on-a.log"), b"3 edited on a");
    assert_eq!(read(b, "dir/edit-on-a.log"), b"3");
    assert_eq!(read(a, "dir/edit-both.log"), b"5 edited on a");
    assert_eq!(read(b, "dir/edit-both.log"), b"5 edited on b");
    let found = conflicts(a);
    let paths: Vec<&str> = found.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(
        paths,
        [
            "dir/edit-both.log",
            "dir/edit-on-a.log",
            "dir/edit-on-b.log"
        ]
    );
    for (path, here, there) in &found {
        assert_eq!(
            (here.as_str(), there.as_str()),
            ("created", "created"),
            "{path}"
        );
    }
    let mut synced = snapshot_paths(a, "s");
    assert_eq!(synced, snapshot_paths(b, "s"));
    synced.retain(|p| p.ends_with(".log"));
    assert_eq!(
        synced,
        strs(&["del-on-a.log", "del-on-b.log", "dir/same.log", "gone/e.log"])
    );
}

#[test]
fn bidi_keeps_newly_excluded_paths_on_both_sides() {
    bidi_excluded_paths_stay_on_both_sides(Reach::Local);
}

#[test]
fn bidi_with_a_far_end_keeps_newly_excluded_paths() {
    bidi_excluded_paths_stay_on_both_sides(Reach::Far);
}

#[test]
fn bidi_syncs_a_newly_included_directory_both_ways() {
    let (_tmp, d) = roots(&["a", "b"]);
    let (a, b) = (&d[0], &d[1]);
    write(a, "top.txt", b"t");
    write(a, "big/from-a.dat", b"a");
    write(b, "big/sub/from-b.dat", b"b");
    write(a, "big/same.dat", b"equal content");
    write(b, "big/same.dat", b"equal content");
    set_mtime(b, "big/same.dat", 1_600_000_000, 0);
    write(a, "big/differ.dat", b"a's version");
    write(b, "big/differ.dat", b"b's version");
    bidi_run(Reach::Local, a, b, &["--exclude", "big/"], 0);
    assert_eq!(read(b, "top.txt"), b"t");
    assert!(!b.join("big/from-a.dat").exists() && !a.join("big/sub").exists());

    let json = bidi_run(Reach::Local, a, b, &[], 4);
    assert_eq!(count(&json, "conflicts"), 1, "{json}");
    assert_eq!(read(b, "big/from-a.dat"), b"a");
    assert_eq!(read(a, "big/sub/from-b.dat"), b"b");
    assert_eq!(read(a, "big/differ.dat"), b"a's version");
    assert_eq!(read(b, "big/differ.dat"), b"b's version");
    assert_eq!(
        conflicts(a),
        [(
            "big/differ.dat".to_string(),
            "created".to_string(),
            "created".to_string()
        )]
    );
    // Equal content is adopted, with the later mtime on both sides.
    let (ta, tb) = (tree(a), tree(b));
    assert_eq!(
        ta[b"big/same.dat".as_slice()],
        tb[b"big/same.dat".as_slice()]
    );
    // Once the conflict is settled by hand, both sides are equal.
    write(b, "big/differ.dat", b"a's version");
    let json = bidi_run(Reach::Local, a, b, &[], 0);
    assert_eq!(count(&json, "conflicts"), 0, "{json}");
    assert_eq!(tree_without_dir_times(a), tree_without_dir_times(b));
}
