//! bidi through the real binary (DESIGN.md, "Semantics: bidi"): changes go
//! both ways, renames stay renames, what cannot be merged is a conflict
//! left as it is on both sides, listed by `conflicts` and settled by
//! `resolve`. Local roots here; over `--rsh` and real sshd at the end and
//! in `tests/ssh.rs`.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn roots() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    (tmp, a, b)
}

fn ino(root: &Path, rel: &str) -> u64 {
    fs::metadata(root.join(rel)).unwrap().ino()
}

fn resolve(keep: &str, paths: &[&Path]) -> std::process::Output {
    let mut cmd = Command::new(bin());
    cmd.args(["resolve", "--keep", keep]).args(paths);
    cmd.output().expect("run snapsync")
}

#[test]
fn first_run_merges_two_trees() {
    let (_tmp, a, b) = roots();
    write(&a, "only-a", b"a");
    write(&a, "deep/er/file", b"deep");
    write(&b, "only-b", b"b");
    write(&a, "same", b"same content");
    write(&b, "same", b"same content");
    set_mtime(&a, "same", 1_000_000, 0);
    set_mtime(&b, "same", 2_000_000, 0);
    write(&a, "differs", b"local version");
    write(&b, "differs", b"remote versio");
    let s = bidi_json(&a, &b, &[], 4);
    assert_eq!(count(&s, "conflicts"), 1, "{s}");
    assert_eq!(count(&s, "errors"), 0, "{s}");
    for root in [&a, &b] {
        assert_eq!(read(root, "only-a"), b"a");
        assert_eq!(read(root, "only-b"), b"b");
        assert_eq!(read(root, "deep/er/file"), b"deep");
        // Equal content is no conflict: the later mtime goes to both.
        assert_eq!(fs::metadata(root.join("same")).unwrap().mtime(), 2_000_000);
    }
    assert_eq!(read(&a, "differs"), b"local version");
    assert_eq!(read(&b, "differs"), b"remote versio");
    let listed = conflicts(&a);
    assert_eq!(
        listed,
        vec![("differs".into(), "created".into(), "created".into())]
    );
    // The far root lists it too, in its own words.
    assert_eq!(conflicts(&b).len(), 1);

    // It persists: the next run changes nothing and still exits 4.
    let s = bidi_json(&a, &b, &[], 4);
    assert_eq!(count(&s, "conflicts"), 1);
    assert_eq!(
        count(&s, "created") + count(&s, "updated") + count(&s, "deleted"),
        0
    );
    assert_eq!(read(&a, "differs"), b"local version");
    assert_eq!(read(&b, "differs"), b"remote versio");
}

#[test]
fn conflicts_json_names_path_sides_session_and_time() {
    let (_tmp, a, b) = roots();
    write(&a, "x", b"1");
    write(&b, "x", b"22");
    bidi_json(&a, &b, &["-N", "pair"], 4);
    let out = Command::new(bin())
        .args(["conflicts", "--json"])
        .current_dir(&a)
        .output()
        .unwrap();
    assert_code(&out, 4);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = &list[0];
    assert_eq!(c["path"], "x");
    assert_eq!(c["local"], "created");
    assert_eq!(c["remote"], "created");
    assert_eq!(c["session"], "pair");
    let detected = c["detected"].as_str().unwrap();
    assert!(
        detected.len() == 20 && detected.ends_with('Z') && detected.contains('T'),
        "{detected}"
    );
    // Text form, from a directory inside the root.
    write(&a, "sub/keep", b"k");
    let out = Command::new(bin())
        .args(["conflicts"])
        .current_dir(a.join("sub"))
        .output()
        .unwrap();
    assert_code(&out, 4);
    assert!(
        stdout(&out).contains("x\tlocal created, remote created"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn changes_flow_both_ways_and_renames_stay_renames() {
    let (_tmp, a, b) = roots();
    for i in 0..40 {
        write(&a, &format!("big/f{i}"), &vec![i as u8; 20_000]);
    }
    write(&a, "edit-here", b"v1");
    write(&a, "edit-there", b"v1");
    write(&a, "gone-there", b"bye");
    write(&a, "mode", b"m");
    bidi_json(&a, &b, &[], 0);
    assert_same_tree(&a, &b);
    let before: Vec<u64> = (0..40).map(|i| ino(&b, &format!("big/f{i}"))).collect();

    // Local: a directory rename and an edit. Remote: unrelated changes.
    fs::rename(a.join("big"), a.join("big2")).unwrap();
    write(&a, "edit-here", b"v2 local");
    write(&b, "edit-there", b"v2 remote");
    write(&b, "new-there", b"new");
    fs::remove_file(b.join("gone-there")).unwrap();
    chmod(&b, "mode", 0o600);
    let s = bidi_json(&a, &b, &[], 0);
    assert_eq!(count(&s, "conflicts"), 0, "{s}");
    assert_eq!(count(&s, "renamed"), 1, "{s}");
    // Only the edited files' bytes travel: the renamed directory does not.
    assert_eq!(count(&s, "bytes_sent"), 8, "{s}");
    assert_eq!(count(&s, "bytes_received"), 9 + 3, "{s}");
    let after: Vec<u64> = (0..40).map(|i| ino(&b, &format!("big2/f{i}"))).collect();
    assert_eq!(before, after, "the remote's files were moved, not copied");
    assert_same_tree(&a, &b);
    assert_eq!(read(&a, "edit-there"), b"v2 remote");
    assert_eq!(read(&b, "edit-here"), b"v2 local");
    assert!(!a.join("gone-there").exists());
    assert_eq!(fs::metadata(a.join("mode")).unwrap().mode() & 0o777, 0o600);

    // Renames on both sides in one run.
    fs::rename(a.join("big2"), a.join("big3")).unwrap();
    fs::rename(b.join("new-there"), b.join("renamed-there")).unwrap();
    let s = bidi_json(&a, &b, &[], 0);
    assert_eq!(count(&s, "renamed"), 2, "{s}");
    assert_eq!(
        count(&s, "bytes_sent") + count(&s, "bytes_received"),
        0,
        "{s}"
    );
    assert_same_tree(&a, &b);

    // Nothing changed: nothing to do.
    let s = bidi_json(&a, &b, &[], 0);
    for key in [
        "created",
        "updated",
        "deleted",
        "renamed",
        "copied",
        "bytes_sent",
    ] {
        assert_eq!(count(&s, key), 0, "{key}: {s}");
    }
}

#[test]
fn what_cannot_be_merged_is_left_alone_on_both_sides() {
    let (_tmp, a, b) = roots();
    write(&a, "both-edit", b"base");
    write(&a, "edit-vs-delete", b"base");
    write(&a, "dir/changed", b"base");
    write(&a, "dir/untouched", b"base");
    write(&a, "rename-vs-edit", b"base");
    write(&a, "same-edit", b"base");
    write(&a, "file-vs-dir", b"base");
    bidi_json(&a, &b, &[], 0);

    write(&a, "both-edit", b"local");
    write(&b, "both-edit", b"remote!");
    write(&a, "edit-vs-delete", b"local edit");
    fs::remove_file(b.join("edit-vs-delete")).unwrap();
    fs::remove_dir_all(a.join("dir")).unwrap();
    write(&b, "dir/changed", b"remote edit");
    fs::rename(a.join("rename-vs-edit"), a.join("renamed")).unwrap();
    write(&b, "rename-vs-edit", b"remote edit");
    write(&a, "same-edit", b"same new");
    write(&b, "same-edit", b"same new");
    fs::remove_file(b.join("file-vs-dir")).unwrap();
    write(&b, "file-vs-dir/inside", b"x");
    write(&a, "file-vs-dir", b"local edit");

    let s = bidi_json(&a, &b, &[], 4);
    let listed: Vec<(String, String, String)> = conflicts(&a);
    let paths: Vec<&str> = listed.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "both-edit",
            "dir/changed",
            "edit-vs-delete",
            "file-vs-dir",
            "rename-vs-edit"
        ],
        "{s}"
    );
    assert!(listed.contains(&("dir/changed".into(), "deleted".into(), "modified".into())));
    assert!(listed.contains(&("edit-vs-delete".into(), "modified".into(), "deleted".into())));
    assert!(listed.contains(&(
        "file-vs-dir".into(),
        "modified".into(),
        "type-changed".into()
    )));
    // Both sides as they were.
    assert_eq!(read(&a, "both-edit"), b"local");
    assert_eq!(read(&b, "both-edit"), b"remote!");
    assert_eq!(read(&a, "edit-vs-delete"), b"local edit");
    assert!(!b.join("edit-vs-delete").exists());
    assert!(!a.join("dir").exists());
    assert_eq!(read(&b, "dir/changed"), b"remote edit");
    // ... except what the deleted directory held unchanged: deleted.
    assert!(!b.join("dir/untouched").exists());
    assert_eq!(read(&b, "rename-vs-edit"), b"remote edit");
    assert!(!a.join("rename-vs-edit").exists());
    // The renamed copy is a new file on the other side.
    assert_eq!(read(&b, "renamed"), b"base");
    assert_eq!(read(&a, "file-vs-dir"), b"local edit");
    assert_eq!(read(&b, "file-vs-dir/inside"), b"x");
    // The same edit on both sides is no conflict.
    assert_eq!(read(&b, "same-edit"), b"same new");

    // Again: the same conflicts, nothing touched.
    let s = bidi_json(&a, &b, &[], 4);
    assert_eq!(count(&s, "conflicts"), 5, "{s}");
    assert_eq!(
        count(&s, "created") + count(&s, "updated") + count(&s, "deleted"),
        0
    );
}

#[test]
fn resolve_settles_conflicts_the_way_chosen() {
    let (_tmp, a, b) = roots();
    for name in ["k-local", "k-remote", "k-newer", "k-both.txt", "k-far"] {
        write(&a, name, b"base");
    }
    bidi_json(&a, &b, &[], 0);
    for name in ["k-local", "k-remote", "k-newer", "k-both.txt", "k-far"] {
        write(&a, name, format!("{name} local").as_bytes());
        write(&b, name, format!("{name} remote!").as_bytes());
    }
    set_mtime(&a, "k-newer", 3_000_000, 0);
    set_mtime(&b, "k-newer", 2_000_000, 0);
    bidi_json(&a, &b, &[], 4);
    assert_eq!(conflicts(&a).len(), 5);

    assert_code(&resolve("local", &[&a.join("k-local")]), 0);
    assert_code(&resolve("remote", &[&a.join("k-remote")]), 0);
    assert_code(&resolve("newer", &[&a.join("k-newer")]), 0);
    assert_code(&resolve("both", &[&a.join("k-both.txt")]), 0);
    // Resolved on the far root: there, `local` is that root.
    assert_code(&resolve("local", &[&b.join("k-far")]), 0);
    // A path in no conflict is an error that says so.
    let out = resolve("local", &[&a.join("k-nothing")]);
    assert_code(&out, 1);
    assert_stderr_says(&out, "not in conflict");

    let s = bidi_json(&a, &b, &[], 0);
    assert_eq!(count(&s, "conflicts"), 0, "{s}");
    assert!(conflicts(&a).is_empty());
    assert!(conflicts(&b).is_empty());
    for root in [&a, &b] {
        assert_eq!(read(root, "k-local"), b"k-local local");
        assert_eq!(read(root, "k-remote"), b"k-remote remote!");
        assert_eq!(read(root, "k-newer"), b"k-newer local");
        assert_eq!(read(root, "k-both.txt"), b"k-both.txt local");
        assert_eq!(read(root, "k-far"), b"k-far remote!");
    }
    // `both`: the remote version beside, named after the remote root's id.
    let id = fs::read_to_string(b.join(".snapsync/id")).unwrap();
    let aside: Vec<String> = fs::read_dir(&a)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("k-both.conflict-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let name = &aside[0];
    assert!(
        name.starts_with(&format!("k-both.conflict-{}-", &id[..8])),
        "{name}"
    );
    assert!(
        name.ends_with(".txt")
            && name.len() == "k-both.conflict-12345678-20261125-183000.txt".len()
    );
    assert_eq!(read(&a, name), b"k-both.txt remote!");
    assert_same_tree(&a, &b);
}

#[test]
fn conflict_made_equal_by_hand_disappears() {
    let (_tmp, a, b) = roots();
    write(&a, "f", b"base");
    bidi_json(&a, &b, &[], 0);
    write(&a, "f", b"one");
    write(&b, "f", b"two");
    bidi_json(&a, &b, &[], 4);
    write(&b, "f", b"one");
    let s = bidi_json(&a, &b, &[], 0);
    assert_eq!(count(&s, "conflicts"), 0);
    assert!(conflicts(&a).is_empty());
    assert_same_tree(&a, &b);
}

#[test]
fn dry_run_shows_both_directions_and_changes_nothing() {
    let (_tmp, a, b) = roots();
    write(&a, "to-remote", b"1");
    write(&b, "to-local", b"2");
    write(&a, "c", b"x");
    write(&b, "c", b"yy");
    let before = (tree(&a), tree(&b));
    let out = bidi(&a, &b, &["-n"]);
    assert_code(&out, 4);
    let text = stdout(&out);
    assert!(text.contains("-> create  to-remote"), "{text}");
    assert!(text.contains("<- create  to-local"), "{text}");
    assert_stderr_says(&out, "conflict: c");
    assert_eq!((tree(&a), tree(&b)), before);
    assert!(!a.join(".snapsync").exists() || !a.join(".snapsync/id").exists());
}

#[test]
fn replica_only_options_are_refused() {
    let (_tmp, a, b) = roots();
    for flag in ["--newer", "--no-delete"] {
        let out = bidi(&a, &b, &[flag]);
        assert_code(&out, 2);
        assert_stderr_says(&out, "push and pull only");
    }
}

#[test]
fn filters_apply_both_ways() {
    let (_tmp, a, b) = roots();
    write(&a, "keep.txt", b"k");
    write(&a, "skip.log", b"s");
    write(&b, "other.log", b"o");
    write(&b, "other.txt", b"t");
    bidi_json(&a, &b, &["--exclude", "*.log"], 0);
    assert!(b.join("keep.txt").exists() && !b.join("skip.log").exists());
    assert!(a.join("other.txt").exists() && !a.join("other.log").exists());
    // Excluded paths are never deleted either.
    fs::remove_file(a.join("keep.txt")).unwrap();
    bidi_json(&a, &b, &["--exclude", "*.log"], 0);
    assert!(!b.join("keep.txt").exists());
    assert!(b.join("other.log").exists() && a.join("skip.log").exists());
}

#[test]
fn bidi_over_the_protocol() {
    let (tmp, a, b) = roots();
    let shim = rsh_shim(tmp.path());
    let remote = format!("far.example:{}", b.display());
    let rsh = ["--rsh", shim.to_str().unwrap(), "--remote-command"];
    let run = |code: i32| {
        let mut args: Vec<&str> = rsh.to_vec();
        args.push(bin().to_str().unwrap().to_string().leak());
        args.push("--json");
        let mut cmd = Command::new(bin());
        cmd.arg("bidi").args(&args).arg(&a).arg(&remote);
        let out = cmd.output().unwrap();
        assert_code(&out, code);
        summary(&out)
    };
    write(&a, "dir/a", b"from a");
    write(&b, "dir/b", b"from b");
    write(&a, "c", b"1");
    write(&b, "c", b"22");
    run(4);
    assert_eq!(read(&a, "dir/b"), b"from b");
    assert_eq!(read(&b, "dir/a"), b"from a");
    assert_eq!(
        conflicts(&b),
        vec![("c".into(), "created".into(), "created".into())]
    );
    // Resolved on the far side, carried out by the next run from here.
    assert_code(&resolve("remote", &[&b.join("c")]), 0);
    fs::rename(b.join("dir"), b.join("dir2")).unwrap();
    write(&a, "new", b"n");
    let s = run(0);
    assert_eq!(count(&s, "renamed"), 1, "{s}");
    assert_eq!(read(&a, "c"), b"1");
    assert_eq!(read(&b, "c"), b"1");
    assert_same_tree(&a, &b);
}

/// Generates files on both sides big enough that a run takes a while.
fn busy_roots(a: &Path, b: &Path) {
    for i in 0..150 {
        write(a, &format!("from-a/f{i}"), &vec![(i % 251) as u8; 200_000]);
        write(b, &format!("from-b/f{i}"), &vec![(i % 241) as u8; 200_000]);
    }
}

/// Kills a bidi run after `delay`, by killing the process `victim` names.
fn kill_after(cmd: &mut Command, delay: Duration, victim: impl Fn(u32) -> Option<u32>) -> bool {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while start.elapsed() < delay {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if let Some(pid) = victim(child.id()) {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    let _ = child.wait();
    true
}

#[test]
fn killed_runs_lose_no_edit_and_make_no_false_conflict() {
    for far_side in [false, true] {
        let (tmp, a, b) = roots();
        busy_roots(&a, &b);
        write(&a, "shared", b"base");
        let shim = rsh_shim(tmp.path());
        let remote = format!("far.example:{}", b.display());
        let command = || {
            let mut cmd = Command::new(bin());
            cmd.args(["bidi", "--rsh", shim.to_str().unwrap(), "--remote-command"])
                .arg(bin())
                .arg(&a)
                .arg(&remote);
            cmd
        };
        let pidfile = tmp.path().join("far.pid");
        let mut kills = 0;
        for delay in [150, 300, 600] {
            let killed = kill_after(&mut command(), Duration::from_millis(delay), |near| {
                if far_side {
                    fs::read_to_string(&pidfile).ok()?.trim().parse().ok()
                } else {
                    Some(near)
                }
            });
            kills += killed as u32;
            // The far end of a killed near end goes once it has finished
            // what it was doing and found its input closed; a run started
            // before then is refused as a second run of the session.
            if let Some(far) = fs::read_to_string(&pidfile)
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok())
            {
                let gone = Instant::now() + Duration::from_secs(30);
                // (Gone: no such process, or a zombie nobody reaped yet.)
                let alive = || {
                    fs::read_to_string(format!("/proc/{far}/stat"))
                        .is_ok_and(|stat| !stat.contains(") Z "))
                };
                while alive() && Instant::now() < gone {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            // Edits made between the killed run and the next.
            write(
                &a,
                &format!("edit-{delay}"),
                format!("a {delay}").as_bytes(),
            );
        }
        let out = command().output().unwrap();
        assert_code(&out, 0);
        assert!(!stderr(&out).contains("conflict"), "{}", stderr(&out));
        assert!(kills > 0, "no run was slow enough to be killed");
        assert_same_tree(&a, &b);
        for i in 0..150 {
            assert_eq!(
                read(&b, &format!("from-a/f{i}")),
                vec![(i % 251) as u8; 200_000]
            );
            assert_eq!(
                read(&a, &format!("from-b/f{i}")),
                vec![(i % 241) as u8; 200_000]
            );
        }
        for delay in [150, 300, 600] {
            assert_eq!(
                read(&b, &format!("edit-{delay}")),
                format!("a {delay}").as_bytes()
            );
        }
        let leftovers: Vec<_> = [&a, &b]
            .iter()
            .flat_map(|root| tree(root).into_keys())
            .filter(|k| String::from_utf8_lossy(k).contains(".snapsync-tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}

#[test]
fn reset_adopts_equal_trees_without_sending() {
    let (_tmp, a, b) = roots();
    for i in 0..20 {
        write(&a, &format!("f{i}"), format!("content {i}").as_bytes());
    }
    bidi_json(&a, &b, &[], 0);
    let s = bidi_json(&a, &b, &["-x"], 0);
    for key in [
        "created",
        "updated",
        "deleted",
        "bytes_sent",
        "bytes_received",
        "conflicts",
    ] {
        assert_eq!(count(&s, key), 0, "{key}: {s}");
    }
    // Without snapshots nothing says which side changed a differing file.
    write(&a, "f3", b"edited");
    let s = bidi_json(&a, &b, &["-x"], 4);
    assert_eq!(count(&s, "conflicts"), 1, "{s}");
}

#[test]
fn checksum_finds_content_changes_the_stat_hides() {
    let (_tmp, a, b) = roots();
    write(&a, "f", b"aaaa");
    set_mtime(&a, "f", 1_500_000, 0);
    bidi_json(&a, &b, &["--checksum"], 0);
    // Same size and mtime, other content, new inode on the remote.
    fs::remove_file(b.join("f")).unwrap();
    write(&b, "f", b"bbbb");
    set_mtime(&b, "f", 1_500_000, 0);
    let s = bidi_json(&a, &b, &["--checksum"], 0);
    assert_eq!(count(&s, "updated"), 1, "{s}");
    assert_eq!(read(&a, "f"), b"bbbb");
}

#[test]
fn links_are_carried_both_ways_or_skipped() {
    let (_tmp, a, b) = roots();
    write(&a, "target", b"t");
    link(&a, "to-target", "target");
    link(&b, "dangling", "nowhere");
    bidi_json(&a, &b, &[], 0);
    assert_eq!(
        fs::read_link(b.join("to-target")).unwrap(),
        Path::new("target")
    );
    assert_eq!(
        fs::read_link(a.join("dangling")).unwrap(),
        Path::new("nowhere")
    );
    let (_tmp2, c, d) = roots();
    link(&c, "l", "x");
    write(&c, "plain", b"p");
    bidi_json(&c, &d, &["--links", "skip"], 0);
    assert!(d.join("plain").exists());
    assert!(fs::symlink_metadata(d.join("l")).is_err());
}

#[test]
fn owner_and_xattrs_go_both_ways() {
    let (_tmp, a, b) = roots();
    write(&a, "owned", b"o");
    write(&b, "tagged", b"t");
    bidi_json(&a, &b, &["--owner", "--group", "--xattrs"], 0);
    std::os::unix::fs::chown(a.join("owned"), Some(4321), Some(4322)).unwrap();
    xattr::set(b.join("tagged"), "user.tag", b"blue").unwrap();
    let s = bidi_json(&a, &b, &["--owner", "--group", "--xattrs"], 0);
    assert_eq!(count(&s, "conflicts"), 0, "{s}");
    let meta = fs::metadata(b.join("owned")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (4321, 4322));
    assert_eq!(
        xattr::get(a.join("tagged"), "user.tag").unwrap(),
        Some(b"blue".to_vec())
    );
}
