//! `-H` (hard links) and `-A` (POSIX ACLs), end to end through the real
//! binary: between two local roots, and with the far root behind
//! `snapsync serve` (through the `--rsh` shim), as the target (push) and as
//! the source (pull).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

/// Which way a test syncs: the far root is reached through the protocol in
/// the remote ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    LocalPush,
    LocalPull,
    /// The far root is the target.
    RemotePush,
    /// The far root is the source.
    RemotePull,
}

const ALL_WAYS: [Way; 4] = [
    Way::LocalPush,
    Way::LocalPull,
    Way::RemotePush,
    Way::RemotePull,
];

/// A source root, a target root, and how to sync one into the other.
struct Pair {
    _tmp: tempfile::TempDir,
    src: PathBuf,
    dst: PathBuf,
    shim: PathBuf,
    way: Way,
}

impl Pair {
    fn new(way: Way) -> Pair {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let dst = tmp.path().join("dst");
        fs::create_dir(&src).unwrap();
        let shim = rsh_shim(tmp.path());
        Pair {
            _tmp: tmp,
            src,
            dst,
            shim,
            way,
        }
    }

    /// Runs the sync that carries `src` into `dst`.
    fn run(&self, extra: &[&str]) -> Output {
        let (verb, local, remote) = match self.way {
            Way::LocalPush | Way::RemotePush => ("push", &self.src, &self.dst),
            Way::LocalPull | Way::RemotePull => ("pull", &self.dst, &self.src),
        };
        let mut cmd = Command::new(bin());
        cmd.arg(verb).args(extra);
        match self.way {
            Way::LocalPush | Way::LocalPull => {
                cmd.arg(local).arg(remote);
            }
            Way::RemotePush | Way::RemotePull => {
                cmd.arg("--rsh")
                    .arg(&self.shim)
                    .arg("--remote-command")
                    .arg(bin())
                    .arg(local)
                    .arg(format!("far.example:{}", remote.display()));
            }
        }
        cmd.output().expect("run snapsync")
    }

    /// Runs the sync with `--json`, expecting success; its summary.
    #[track_caller]
    fn sync(&self, extra: &[&str]) -> serde_json::Value {
        let mut args = vec!["--json"];
        args.extend_from_slice(extra);
        let out = self.run(&args);
        assert_code(&out, 0);
        summary(&out)
    }

    fn src(&self, rel: &str) -> PathBuf {
        self.src.join(rel)
    }

    fn dst(&self, rel: &str) -> PathBuf {
        self.dst.join(rel)
    }
}

/// File data that travelled between the roots, whichever way.
fn data_moved(summary: &serde_json::Value) -> u64 {
    count(summary, "bytes_sent") + count(summary, "bytes_received")
}

/// The names of each file with several names under `root` (but
/// `.snapsync`), as sets of relative paths.
fn link_groups(root: &Path) -> BTreeSet<BTreeSet<String>> {
    fn walk(root: &Path, dir: &Path, by_inode: &mut BTreeMap<u64, BTreeSet<String>>) {
        for item in fs::read_dir(dir).unwrap() {
            let path = item.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if rel == ".snapsync" {
                continue;
            }
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                walk(root, &path, by_inode);
            } else if meta.is_file() {
                by_inode.entry(meta.ino()).or_default().insert(rel);
            }
        }
    }
    let mut by_inode = BTreeMap::new();
    walk(root, root, &mut by_inode);
    by_inode
        .into_values()
        .filter(|names| names.len() > 1)
        .collect()
}

fn group(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// Both trees hold the same paths, content, modes and times, and the same
/// names share a file on both.
#[track_caller]
fn assert_same_links(pair: &Pair, step: &str) {
    assert_same_tree(&pair.src, &pair.dst);
    assert_eq!(
        link_groups(&pair.dst),
        link_groups(&pair.src),
        "{:?}, {step}: linked names on the target vs the source",
        pair.way
    );
}

/// Writes `content` to `rel` as a new file (a new inode), keeping the mtime
/// the old one had when `keep_mtime`.
fn rewrite_as_new_file(root: &Path, rel: &str, content: &[u8], keep_mtime: bool) {
    let path = root.join(rel);
    let old = fs::metadata(&path).unwrap();
    let tmp = root.join("rewrite.tmp");
    fs::write(&tmp, content).unwrap();
    if keep_mtime {
        let mtime = filetime::FileTime::from_last_modification_time(&old);
        filetime::set_file_mtime(&tmp, mtime).unwrap();
    }
    fs::rename(&tmp, &path).unwrap();
}

/// `a`, `b` and `sub/c` name one file of 1,000 bytes; `d` is a file of
/// 500 bytes of its own.
fn linked_tree(root: &Path) {
    write(root, "a", &Rng::new(7).bytes(1000));
    fs::hard_link(root.join("a"), root.join("b")).unwrap();
    fs::create_dir(root.join("sub")).unwrap();
    fs::hard_link(root.join("a"), root.join("sub/c")).unwrap();
    write(root, "d", &Rng::new(8).bytes(500));
}

fn hard_links_arrive_as_links_with_their_data_sent_once(way: Way) {
    let pair = Pair::new(way);
    linked_tree(&pair.src);
    let first = pair.sync(&["-H"]);
    assert_same_links(&pair, "first run");
    assert_eq!(
        link_groups(&pair.dst),
        BTreeSet::from([group(&["a", "b", "sub/c"])]),
        "{way:?}"
    );
    assert_eq!(data_moved(&first), 1000 + 500, "{way:?}: {first}");
    assert_eq!(count(&first, "created"), 5, "{way:?}: {first}");
}

#[test]
fn hard_links_arrive_as_links_with_their_data_sent_once_locally() {
    hard_links_arrive_as_links_with_their_data_sent_once(Way::LocalPush);
    hard_links_arrive_as_links_with_their_data_sent_once(Way::LocalPull);
}

#[test]
fn hard_links_arrive_as_links_with_their_data_sent_once_over_the_protocol() {
    hard_links_arrive_as_links_with_their_data_sent_once(Way::RemotePush);
    hard_links_arrive_as_links_with_their_data_sent_once(Way::RemotePull);
}

/// Links made, renamed, removed and split between runs.
fn link_changes_follow_in_later_runs(way: Way) {
    let pair = Pair::new(way);
    linked_tree(&pair.src);
    pair.sync(&["-H"]);

    // A new name for an existing file: linked there, no data sent.
    fs::hard_link(pair.src("a"), pair.src("e")).unwrap();
    let run = pair.sync(&["-H"]);
    assert_same_links(&pair, "new link");
    assert!(link_groups(&pair.dst).contains(&group(&["a", "b", "e", "sub/c"])));
    assert_eq!(data_moved(&run), 0, "{way:?} new link: {run}");

    // One name renamed: the link moves along.
    fs::rename(pair.src("b"), pair.src("sub/b2")).unwrap();
    let run = pair.sync(&["-H"]);
    assert_same_links(&pair, "renamed link");
    assert!(!pair.dst("b").exists());
    assert_eq!(count(&run, "renamed"), 1, "{way:?} renamed link: {run}");
    assert_eq!(data_moved(&run), 0, "{way:?} renamed link: {run}");

    // One name removed: the others keep the file.
    fs::remove_file(pair.src("sub/c")).unwrap();
    let run = pair.sync(&["-H"]);
    assert_same_links(&pair, "removed name");
    assert_eq!(count(&run, "deleted"), 1, "{way:?} removed name: {run}");
    assert_eq!(
        link_groups(&pair.dst),
        BTreeSet::from([group(&["a", "e", "sub/b2"])])
    );

    // The file's data changed (through one name): sent once, for all.
    fs::write(pair.src("a"), Rng::new(9).bytes(1200)).unwrap();
    let run = pair.sync(&["-H"]);
    assert_same_links(&pair, "content changed");
    assert_eq!(data_moved(&run), 1200, "{way:?} content changed: {run}");

    // A name rewritten as a file of its own, same content and times: the
    // group splits on the target too, and the rest stays linked.
    let content = fs::read(pair.src("e")).unwrap();
    rewrite_as_new_file(&pair.src, "e", &content, true);
    let before = fs::metadata(pair.dst("a")).unwrap().ino();
    pair.sync(&["-H"]);
    assert_same_links(&pair, "split, same content");
    assert_eq!(
        link_groups(&pair.dst),
        BTreeSet::from([group(&["a", "sub/b2"])])
    );
    assert_eq!(fs::metadata(pair.dst("a")).unwrap().ino(), before);

    // And with new content: the other names keep the old.
    rewrite_as_new_file(&pair.src, "sub/b2", b"something else", false);
    pair.sync(&["-H"]);
    assert_same_links(&pair, "split, new content");
    assert!(link_groups(&pair.dst).is_empty());
    assert_eq!(fs::read(pair.dst("a")).unwrap(), content);
}

#[test]
fn link_changes_follow_in_later_runs_locally() {
    link_changes_follow_in_later_runs(Way::LocalPush);
    link_changes_follow_in_later_runs(Way::LocalPull);
}

#[test]
fn link_changes_follow_in_later_runs_over_the_protocol() {
    link_changes_follow_in_later_runs(Way::RemotePush);
    link_changes_follow_in_later_runs(Way::RemotePull);
}

#[test]
fn links_made_on_the_target_are_undone_and_reset_relinks_a_tree() {
    for way in [Way::LocalPush, Way::RemotePush] {
        let pair = Pair::new(way);
        linked_tree(&pair.src);
        // Synced without -H first: every name a file of its own.
        pair.sync(&[]);
        assert!(link_groups(&pair.dst).is_empty(), "{way:?}");
        // -x compares everything again, links included.
        pair.sync(&["-H", "-x"]);
        assert_same_links(&pair, "reset with -H");
        // `d` linked to `a` on the target (by hand): made a file again.
        fs::remove_file(pair.dst("d")).unwrap();
        fs::hard_link(pair.dst("a"), pair.dst("d")).unwrap();
        let out = pair.run(&["-H"]);
        assert_code(&out, 0);
        assert_same_links(&pair, "target drift");
    }
}

#[test]
fn without_hard_links_each_name_is_a_file_of_its_own() {
    for way in ALL_WAYS {
        let pair = Pair::new(way);
        linked_tree(&pair.src);
        pair.sync(&[]);
        assert_same_tree(&pair.src, &pair.dst);
        assert!(link_groups(&pair.dst).is_empty(), "{way:?}");
        // A new name later: still a file of its own (content reused).
        fs::hard_link(pair.src("a"), pair.src("e")).unwrap();
        let run = pair.sync(&[]);
        assert_same_tree(&pair.src, &pair.dst);
        assert!(link_groups(&pair.dst).is_empty(), "{way:?}");
        assert_eq!(data_moved(&run), 0, "{way:?}: {run}");
    }
}

#[test]
fn links_across_the_filter_or_the_root_are_plain_files() {
    for way in [Way::LocalPush, Way::RemotePush, Way::RemotePull] {
        let pair = Pair::new(way);
        write(&pair.src, "a", b"linked to an excluded name");
        fs::create_dir(pair.src("ex")).unwrap();
        fs::hard_link(pair.src("a"), pair.src("ex/a.bak")).unwrap();
        write(&pair.src, "x", b"linked to a name outside the root");
        let outside = pair.src.parent().unwrap().join("outside");
        fs::hard_link(pair.src("x"), &outside).unwrap();
        // And one pair inside, to show -H is on.
        write(&pair.src, "p", b"pair");
        fs::hard_link(pair.src("p"), pair.src("q")).unwrap();
        pair.sync(&["-H", "--exclude", "ex/"]);
        assert_eq!(
            link_groups(&pair.dst),
            BTreeSet::from([group(&["p", "q"])]),
            "{way:?}"
        );
        assert_eq!(fs::metadata(pair.dst("a")).unwrap().nlink(), 1);
        assert_eq!(fs::metadata(pair.dst("x")).unwrap().nlink(), 1);
        assert!(!pair.dst("ex").exists());
        assert_eq!(read(&pair.dst, "x"), b"linked to a name outside the root");
    }
}

#[test]
fn continuous_mode_carries_a_write_through_one_name_to_all() {
    // A watch reports the name written through, not the file's other
    // names; the scan of dirty paths looks at those too.
    let pair = Pair::new(Way::LocalPush);
    write(&pair.src, "a", b"first");
    fs::hard_link(pair.src("a"), pair.src("b")).unwrap();
    let mut child = Command::new(bin())
        .args(["push", "-C", "-H", "--json"])
        .arg(&pair.src)
        .arg(&pair.dst)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let first = lines
        .next()
        .expect("the first pass prints its summary")
        .unwrap();
    assert!(first.starts_with('{'), "{first}");
    assert_same_links(&pair, "first pass");
    // The target's echo of the first pass (`b` made there) names `b` in a
    // cycle of its own: let it go by, so that only `a` is reported below.
    std::thread::sleep(std::time::Duration::from_secs(1));
    fs::write(pair.src("a"), b"second, longer").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let arrived = || {
        fs::read(pair.dst("b")).is_ok_and(|b| b == b"second, longer")
            && link_groups(&pair.dst) == BTreeSet::from([group(&["a", "b"])])
    };
    while !arrived() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(arrived(), "the write through `a` never reached `b` linked");
    assert_eq!(status.code(), Some(0));
    assert_same_links(&pair, "after the write");
}

#[test]
fn bidi_refuses_hard_links() {
    let pair = Pair::new(Way::LocalPush);
    fs::create_dir(&pair.dst).unwrap();
    let out = bidi(&pair.src, &pair.dst, &["-H"]);
    assert_code(&out, 2);
    assert_stderr_says(&out, "-H/--hard-links");
    assert!(!pair.src(".snapsync").exists(), "refused before anything");
}

// ---- ACLs ----

/// False (with a note on stderr saying why the test is skipped) when this
/// machine cannot give files POSIX ACLs here.
fn acls_work(dir: &Path) -> bool {
    let probe = dir.join("acl-probe");
    fs::write(&probe, b"").unwrap();
    let result = Command::new("setfacl")
        .args(["-m", "u:65534:r"])
        .arg(&probe)
        .output();
    let _ = fs::remove_file(&probe);
    match result {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            eprintln!(
                "SKIPPED: the filesystem under {} refuses POSIX ACLs: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            false
        }
        Err(e) => {
            eprintln!("SKIPPED: setfacl cannot run ({e}); install the `acl` package");
            false
        }
    }
}

#[track_caller]
fn setfacl(args: &[&str], path: &Path) {
    let out = Command::new("setfacl")
        .args(args)
        .arg(path)
        .output()
        .expect("setfacl");
    assert!(out.status.success(), "setfacl {args:?}: {out:?}");
}

/// The ACL of `path` as `getfacl` prints it (numeric ids, no header).
fn getfacl(path: &Path) -> String {
    let out = Command::new("getfacl")
        .args(["--omit-header", "--numeric", "--absolute-names"])
        .arg(path)
        .output()
        .expect("getfacl");
    assert!(out.status.success(), "getfacl {}: {out:?}", path.display());
    String::from_utf8(out.stdout).unwrap()
}

/// True when `path` has entries beyond its permission bits, or a default ACL.
fn has_acl(path: &Path) -> bool {
    let names: Vec<_> = xattr::list(path).unwrap().collect();
    names
        .iter()
        .any(|n| n == "system.posix_acl_access" || n == "system.posix_acl_default")
}

#[track_caller]
fn assert_same_acls(pair: &Pair, paths: &[&str], step: &str) {
    for rel in paths {
        assert_eq!(
            getfacl(&pair.dst(rel)),
            getfacl(&pair.src(rel)),
            "{:?}, {step}: ACL of {rel}",
            pair.way
        );
    }
}

fn acls_arrive_and_a_change_of_acl_alone_follows(way: Way) {
    let pair = Pair::new(way);
    if !acls_work(&pair.src) {
        return;
    }
    write(&pair.src, "f", b"file with an ACL");
    write(&pair.src, "plain", b"no ACL");
    write(&pair.src, "d/inside", b"under a default ACL");
    setfacl(&["-m", "u:65534:r"], &pair.src("f"));
    setfacl(&["-m", "u:65534:rx"], &pair.src("d"));
    setfacl(&["-d", "-m", "u:65534:rwx,g:65534:rx"], &pair.src("d"));
    pair.sync(&["-A"]);
    assert_same_tree(&pair.src, &pair.dst);
    assert_same_acls(&pair, &["f", "plain", "d", "d/inside"], "first run");
    assert!(has_acl(&pair.dst("f")) && has_acl(&pair.dst("d")));
    assert!(getfacl(&pair.dst("d")).contains("default:user:65534:rwx"));
    assert!(!has_acl(&pair.dst("plain")));

    // An ACL change alone (no content, mode or time changes): found and carried.
    let before = fs::metadata(pair.src("f")).unwrap();
    setfacl(&["-m", "u:1:r"], &pair.src("f"));
    let after = fs::metadata(pair.src("f")).unwrap();
    assert_eq!(
        (before.mode(), before.mtime(), before.mtime_nsec()),
        (after.mode(), after.mtime(), after.mtime_nsec()),
        "the ACL alone changed"
    );
    let run = pair.sync(&["-A"]);
    assert_eq!(count(&run, "updated"), 1, "{way:?}: {run}");
    assert_same_acls(&pair, &["f"], "ACL changed");
    assert!(getfacl(&pair.dst("f")).contains("user:1:r--"));

    // A default ACL changed, and an ACL removed.
    setfacl(&["-d", "-m", "u:1:r"], &pair.src("d"));
    setfacl(&["-b"], &pair.src("f"));
    pair.sync(&["-A"]);
    assert_same_acls(&pair, &["f", "d"], "ACL removed, default ACL changed");
    assert!(!has_acl(&pair.dst("f")));
    assert_same_tree(&pair.src, &pair.dst);
}

#[test]
fn acls_arrive_and_a_change_of_acl_alone_follows_locally() {
    acls_arrive_and_a_change_of_acl_alone_follows(Way::LocalPush);
    acls_arrive_and_a_change_of_acl_alone_follows(Way::LocalPull);
}

#[test]
fn acls_arrive_and_a_change_of_acl_alone_follows_over_the_protocol() {
    acls_arrive_and_a_change_of_acl_alone_follows(Way::RemotePush);
    acls_arrive_and_a_change_of_acl_alone_follows(Way::RemotePull);
}

#[test]
fn acls_and_other_extended_attributes_are_separate_options() {
    for way in [Way::LocalPush, Way::RemotePush] {
        let probe = tempfile::tempdir().unwrap();
        if !acls_work(probe.path()) {
            return;
        }
        let case = |flags: &[&str]| {
            let pair = Pair::new(way);
            write(&pair.src, "f", b"both");
            setfacl(&["-m", "u:65534:r"], &pair.src("f"));
            xattr::set(pair.src("f"), "user.note", b"kept").unwrap();
            pair.sync(flags);
            let note = xattr::get(pair.dst("f"), "user.note").unwrap();
            (has_acl(&pair.dst("f")), note.is_some())
        };
        assert_eq!(case(&[]), (false, false), "{way:?}: neither");
        assert_eq!(case(&["-A"]), (true, false), "{way:?}: -A");
        assert_eq!(case(&["--xattrs"]), (false, true), "{way:?}: --xattrs");
        assert_eq!(case(&["-A", "--xattrs"]), (true, true), "{way:?}: both");

        // -A leaves the target's other attributes alone.
        let pair = Pair::new(way);
        write(&pair.src, "f", b"x");
        pair.sync(&["-A"]);
        xattr::set(pair.dst("f"), "user.mine", b"target's own").unwrap();
        setfacl(&["-m", "u:65534:r"], &pair.src("f"));
        pair.sync(&["-A"]);
        assert!(has_acl(&pair.dst("f")), "{way:?}");
        assert!(xattr::get(pair.dst("f"), "user.mine").unwrap().is_some());
    }
}
