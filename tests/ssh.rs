//! push and pull through a real ssh connection: each test starts its own
//! sshd on a free loopback port, with host and client keys generated in a
//! temporary directory, and points `--rsh` at it. The far end is this build's
//! binary, started by sshd as `<binary> serve`.
//!
//! Needs openssh-server and openssh-client; `scripts/test.sh` installs them
//! (as root). Without them these tests fail, saying so.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::sshd::*;
use common::*;

/// The longest one snapsync run may take before the test gives up on it.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// A private sshd on 127.0.0.1, killed when dropped.
struct Sshd {
    dir: tempfile::TempDir,
    child: Child,
    port: u16,
    user: String,
}

impl Sshd {
    fn start() -> Sshd {
        let dir = tempfile::tempdir().unwrap();
        make_ssh_keys(dir.path());
        let (child, port) = start_sshd(dir.path(), |port| {
            sshd_config(dir.path(), "127.0.0.1", port)
        });
        Sshd {
            dir,
            child,
            port,
            user: current_user(),
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// The `--rsh` command reaching this sshd.
    fn rsh(&self) -> String {
        shell_words::join(ssh_words(self.port, &self.dir.path().join("client_key")))
    }

    /// `user@127.0.0.1:/abs/path`.
    fn remote(&self, path: &Path) -> String {
        assert!(path.is_absolute(), "remote roots are absolute here");
        format!("{}@127.0.0.1:{}", self.user, path.display())
    }

    /// Runs `snapsync VERB [--rsh ...] EXTRA LOCAL user@127.0.0.1:REMOTE`.
    fn snapsync(&self, verb: &str, local: &Path, remote: &Path, extra: &[&str]) -> Output {
        let cmd = sync_over_ssh(
            Command::new(bin()),
            verb,
            &self.rsh(),
            extra,
            local,
            &self.remote(remote),
        );
        let out = run_bounded(cmd, RUN_TIMEOUT);
        if out.status.code() != Some(0) {
            eprintln!("sshd log:\n{}", self.log());
        }
        out
    }

    /// Runs with `--json`, expecting success, and returns the summary.
    #[track_caller]
    fn json(&self, verb: &str, local: &Path, remote: &Path, extra: &[&str]) -> serde_json::Value {
        let mut args = vec!["--json"];
        args.extend_from_slice(extra);
        let out = self.snapsync(verb, local, remote, &args);
        assert_code(&out, 0);
        let s = summary(&out);
        assert_eq!(count(&s, "errors"), 0, "{s}");
        s
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Local and remote roots under one temporary directory (absolute paths).
fn roots() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("local");
    let remote = tmp.path().join("remote");
    fs::create_dir(&local).unwrap();
    (tmp, local, remote)
}

/// Files, nested and empty directories, links, odd modes and exact mtimes.
fn varied_tree(root: &Path) {
    generate_tree(root, 11, 60, 0, 30_000);
    write(root, "top.txt", b"hello over ssh\n");
    write(root, "a/b/c/deep.bin", &Rng::new(3).bytes(200_000));
    write(root, "name with spaces & 'quotes'", b"shell-hostile name");
    fs::create_dir_all(root.join("empty/dir")).unwrap();
    link(root, "link-to-top", "top.txt");
    link(root, "a/dangling", "../no/such/target");
    chmod(root, "top.txt", 0o640);
    chmod(root, "a/b", 0o750);
    write(root, "bin/tool", b"#!/bin/sh\necho hi\n");
    chmod(root, "bin/tool", 0o755);
    set_mtime(root, "top.txt", 1_000_000_000, 123_456_789);
    set_mtime(root, "link-to-top", 1_100_000_000, 5);
    set_mtime(root, "a/b/c/deep.bin", 1_300_000_000, 999_999_999);
    set_mtime(root, "empty/dir", 1_200_000_000, 42);
}

#[test]
fn push_then_pull_over_ssh_replicate_the_tree() {
    let sshd = Sshd::start();
    let (tmp, local, _) = roots();
    // The far root's name goes through the protocol, not the remote shell.
    let remote = tmp.path().join("far root $(touch pwned) 'q' ; x");
    varied_tree(&local);

    let s = sshd.json("push", &local, &remote, &[]);
    assert_same_tree(&local, &remote);
    assert!(count(&s, "created") >= 70, "{s}");
    assert!(count(&s, "bytes_sent") > 200_000, "{s}");
    assert!(count(&s, "wire_sent") >= count(&s, "bytes_sent"), "{s}");
    assert!(count(&s, "wire_received") > 0, "{s}");

    // Back into an empty directory, from the far side.
    let back = tmp.path().join("back");
    fs::create_dir(&back).unwrap();
    let s = sshd.json("pull", &back, &remote, &[]);
    assert_same_tree(&remote, &back);
    assert_same_tree(&local, &back);
    assert_eq!(count(&s, "bytes_sent"), 0, "{s}");
    assert!(count(&s, "bytes_received") > 200_000, "{s}");
    assert!(
        count(&s, "wire_received") >= count(&s, "bytes_received"),
        "{s}"
    );
    assert!(!tmp.path().join("pwned").exists() && !Path::new("pwned").exists());
}

#[test]
fn unchanged_rerun_over_ssh_moves_only_a_few_kilobytes() {
    let sshd = Sshd::start();
    let (tmp, local, remote) = roots();
    generate_tree(&local, 5, 2000, 0, 600);
    let s = sshd.json("push", &local, &remote, &[]);
    assert!(count(&s, "created") >= 2000, "{s}");
    assert_same_tree(&local, &remote);

    let before = identities(&remote);
    let s = sshd.json("push", &local, &remote, &[]);
    assert_eq!(count(&s, "bytes_sent"), 0, "{s}");
    let wire = count(&s, "wire_sent") + count(&s, "wire_received");
    assert!(
        wire < 64 * 1024,
        "an unchanged push moved {wire} bytes: {s}"
    );
    for key in ["created", "updated", "deleted", "renamed", "copied"] {
        assert_eq!(count(&s, key), 0, "{key}: {s}");
    }
    assert_same_tree(&local, &remote);
    assert!(before == identities(&remote), "the far tree was touched");

    // The same for a pull session, once it has run.
    let back = tmp.path().join("back");
    fs::create_dir(&back).unwrap();
    sshd.json("pull", &back, &remote, &[]);
    let s = sshd.json("pull", &back, &remote, &[]);
    assert_eq!(count(&s, "bytes_received"), 0, "{s}");
    let wire = count(&s, "wire_sent") + count(&s, "wire_received");
    assert!(
        wire < 64 * 1024,
        "an unchanged pull moved {wire} bytes: {s}"
    );
    assert_same_tree(&remote, &back);
}

/// Overwrites `len` bytes at `at` with other bytes, keeping the size.
fn scribble(root: &Path, rel: &str, at: usize, len: usize, seed: u64) {
    let mut content = read(root, rel);
    content[at..at + len].copy_from_slice(&Rng::new(seed).bytes(len));
    write(root, rel, &content);
}

#[test]
fn a_small_change_to_a_large_file_travels_as_a_delta_both_ways() {
    const SIZE: usize = 8 << 20;
    const MIB: u64 = 1 << 20;
    let sshd = Sshd::start();
    let (tmp, local, remote) = roots();
    write(&local, "big.bin", &Rng::new(21).bytes(SIZE));
    write(&local, "small.txt", b"small");
    let s = sshd.json("push", &local, &remote, &[]);
    assert_eq!(count(&s, "bytes_sent"), SIZE as u64 + 5, "{s}");

    // 4 KiB changed in the middle, off any block boundary.
    scribble(&local, "big.bin", 3 * (1 << 20) + 1234, 4096, 22);
    set_mtime(&local, "big.bin", 1_500_000_000, 7);
    let s = sshd.json("push", &local, &remote, &[]);
    assert_same_tree(&local, &remote);
    assert_eq!(count(&s, "updated"), 1, "{s}");
    assert!(count(&s, "bytes_sent") < MIB, "not a delta: {s}");
    assert!(count(&s, "wire_sent") < MIB, "not a delta: {s}");
    assert!(count(&s, "wire_received") < MIB, "{s}");

    // And the other way: change the far copy and pull it into a replica.
    let back = tmp.path().join("back");
    fs::create_dir(&back).unwrap();
    sshd.json("pull", &back, &remote, &[]);
    scribble(&remote, "big.bin", 6 * (1 << 20) + 77, 4096, 23);
    set_mtime(&remote, "big.bin", 1_600_000_000, 8);
    let s = sshd.json("pull", &back, &remote, &[]);
    assert_same_tree(&remote, &back);
    assert_eq!(count(&s, "updated"), 1, "{s}");
    assert!(count(&s, "bytes_received") < MIB, "not a delta: {s}");
    assert!(count(&s, "wire_received") < MIB, "not a delta: {s}");
    assert!(count(&s, "wire_sent") < MIB, "{s}");
}

#[test]
fn compression_over_ssh_replicates_and_shrinks_what_crosses_the_wire() {
    let sshd = Sshd::start();
    let (tmp, local, remote) = roots();
    // Compressible text, plus incompressible noise and the usual variety.
    for i in 0..40 {
        let line = format!("line {i}: the quick brown fox jumps over the lazy dog\n");
        write(
            &local,
            &format!("text/t{i}.txt"),
            line.repeat(2000).as_bytes(),
        );
    }
    varied_tree(&local);

    let s = sshd.json("push", &local, &remote, &["-z"]);
    assert_same_tree(&local, &remote);
    let (data, wire) = (count(&s, "bytes_sent"), count(&s, "wire_sent"));
    assert!(
        wire < data / 2,
        "-z sent {wire} bytes on the wire for {data}: {s}"
    );

    let back = tmp.path().join("back");
    fs::create_dir(&back).unwrap();
    let s = sshd.json("pull", &back, &remote, &["-z"]);
    assert_same_tree(&remote, &back);
    let (data, wire) = (count(&s, "bytes_received"), count(&s, "wire_received"));
    assert!(
        wire < data / 2,
        "-z received {wire} bytes on the wire for {data}: {s}"
    );

    // An update with -z, then an unchanged run.
    write(&local, "text/t3.txt", b"rewritten");
    let s = sshd.json("push", &local, &remote, &["-z"]);
    assert_eq!(count(&s, "updated"), 1, "{s}");
    assert_same_tree(&local, &remote);
    let s = sshd.json("push", &local, &remote, &["-z"]);
    assert_eq!(count(&s, "bytes_sent"), 0, "{s}");
}

#[test]
fn a_missing_remote_command_is_reported_not_hung_on() {
    let sshd = Sshd::start();
    let (_tmp, local, remote) = roots();
    write(&local, "f", b"x");
    let mut cmd = Command::new(bin());
    cmd.arg("push")
        .arg("--rsh")
        .arg(sshd.rsh())
        .arg("--remote-command")
        .arg("/nonexistent/snapsync")
        .arg(&local)
        .arg(sshd.remote(&remote));
    let out = run_bounded(cmd, RUN_TIMEOUT);
    assert_code(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("not found") && err.contains("--remote-command"),
        "{err}"
    );
    assert!(!remote.exists());
}

#[test]
fn a_refused_key_is_reported_not_hung_on() {
    let sshd = Sshd::start();
    let (_tmp, local, remote) = roots();
    write(&local, "f", b"x");
    // Nobody is authorized any more: ssh fails (BatchMode: no prompt).
    fs::write(sshd.dir.path().join("authorized_keys"), b"").unwrap();
    let out = sshd.snapsync("push", &local, &remote, &[]);
    assert_code(&out, 1);
    let err = stderr(&out);
    assert!(err.contains("127.0.0.1"), "{err}");
    assert!(!remote.exists());
}

/// bidi over real ssh: changes both ways, a rename kept as a rename, a
/// conflict reported with exit 4, listed on both roots, resolved, gone.
#[test]
fn bidi_over_ssh() {
    let sshd = Sshd::start();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for i in 0..30 {
        write(&a, &format!("dir/f{i}"), &vec![i as u8; 10_000]);
    }
    write(&b, "from-b", b"b");
    write(&a, "c", b"local");
    write(&b, "c", b"remote!");
    let out = sshd.snapsync("bidi", &a, &b, &["--json"]);
    assert_code(&out, 4);
    assert_eq!(count(&summary(&out), "conflicts"), 1);
    assert_eq!(read(&a, "from-b"), b"b");
    assert_eq!(read(&b, "dir/f7"), vec![7u8; 10_000]);
    assert_eq!(
        conflicts(&b),
        vec![("c".into(), "created".into(), "created".into())]
    );

    let out = Command::new(bin())
        .args(["resolve", "--keep", "local"])
        .arg(a.join("c"))
        .output()
        .unwrap();
    assert_code(&out, 0);
    fs::rename(a.join("dir"), a.join("dir2")).unwrap();
    write(&b, "from-b", b"b2");
    let s = sshd.json("bidi", &a, &b, &[]);
    assert_eq!(count(&s, "renamed"), 1, "{s}");
    assert_eq!(count(&s, "conflicts"), 0, "{s}");
    // The rename and one small edit each way; no file data for the directory.
    assert!(count(&s, "bytes_sent") <= 10, "{s}");
    assert!(conflicts(&a).is_empty() && conflicts(&b).is_empty());
    assert_eq!(read(&b, "c"), b"local");
    assert_eq!(read(&a, "from-b"), b"b2");
    assert_same_tree(&a, &b);
}

/// One source pushed to four targets at once over real ssh while the source
/// keeps changing; after the writer stops, one more run each, and every
/// target equals the source (DESIGN.md, "Many peers").
#[test]
fn fan_out_over_ssh_while_the_source_changes() {
    let sshd = Sshd::start();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let targets: Vec<PathBuf> = (1..=4).map(|i| tmp.path().join(format!("t{i}"))).collect();
    generate_tree(&src, 21, 300, 100, 20_000);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (src, stop) = (src.clone(), std::sync::Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                write(
                    &src,
                    &format!("live/f{}", n % 40),
                    format!("v{n}").as_bytes(),
                );
                n += 1;
                std::thread::sleep(Duration::from_millis(3));
            }
        })
    };
    let run_all = || {
        std::thread::scope(|scope| {
            let runs: Vec<_> = targets
                .iter()
                .map(|t| scope.spawn(|| sshd.snapsync("push", &src, t, &[])))
                .collect();
            runs.into_iter()
                .map(|r| r.join().unwrap())
                .collect::<Vec<Output>>()
        })
    };
    for _ in 0..2 {
        for out in run_all() {
            let code = out.status.code();
            assert!(
                code == Some(0) || code == Some(3),
                "{code:?}: {}",
                stderr(&out)
            );
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().unwrap();
    for out in run_all() {
        assert_code(&out, 0);
    }
    for t in &targets {
        assert_same_tree(&src, t);
    }
}

/// `push -C` over real ssh: changes made after the first pass arrive
/// without a rescan; SIGINT ends the session with exit 0.
#[test]
fn continuous_push_over_ssh() {
    let sshd = Sshd::start();
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    write(&src, "first", b"1");
    let mut child = Command::new(bin())
        .args(["push", "-C", "--json", "--rsh"])
        .arg(sshd.rsh())
        .arg("--remote-command")
        .arg(bin())
        .arg(&src)
        .arg(sshd.remote(&dst))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    assert!(first.starts_with('{'), "{first}");
    write(&src, "later", b"2");
    let deadline = Instant::now() + Duration::from_secs(30);
    while fs::read(dst.join("later")).ok().as_deref() != Some(b"2".as_slice()) {
        assert!(Instant::now() < deadline, "the change never arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert_same_tree(&src, &dst);
}

#[test]
fn each_root_keeps_its_records_and_log_over_ssh() {
    let sshd = Sshd::start();
    let (tmp, local, _) = roots();
    let remote = tmp.path().join("far");
    write(&local, "a.txt", b"a");
    write(&local, "sub/b.txt", b"bb");
    let out = sshd.snapsync("push", &local, &remote, &["-N", "recs", "-v"]);
    assert_code(&out, 0);

    // `ls` and `status` on the far host, in its own root.
    let out = Command::new(bin())
        .args(["ls", "--json"])
        .arg(&remote)
        .output()
        .unwrap();
    assert_code(&out, 0);
    let records: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed: Vec<(&str, &str)> = records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["path"].as_str().unwrap(), r["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        listed,
        [
            ("a.txt", "synced"),
            ("sub", "synced"),
            ("sub/b.txt", "synced")
        ]
    );
    let out = Command::new(bin())
        .args(["status", "--json"])
        .arg(&remote)
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status[0]["counts"]["synced"], 3, "{status}");
    let far_log = remote.join(".snapsync/logs/recs.log");
    assert_eq!(status[0]["logs"], far_log.display().to_string());

    // The far end logged the run into its own state dir, per file with -v;
    // the near end into its own.
    let far = fs::read_to_string(&far_log).unwrap();
    assert!(
        far.contains("is the target") && far.contains("synced file sub/b.txt"),
        "{far}"
    );
    assert!(far.contains("run complete"), "{far}");
    let near = fs::read_to_string(local.join(".snapsync/logs/recs.log")).unwrap();
    assert!(
        near.contains("is the source") && near.contains("run complete"),
        "{near}"
    );
}

#[test]
fn push_and_pull_over_the_quic_data_channel_through_real_ssh() {
    let sshd = Sshd::start();
    let (tmp, local, remote) = roots();
    varied_tree(&local);
    let s = sshd.json("push", &local, &remote, &["--transport", "quic"]);
    assert_eq!(s["transport"], "quic", "{s}");
    assert_same_tree(&local, &remote);

    let back = tmp.path().join("back");
    fs::create_dir(&back).unwrap();
    let s = sshd.json("pull", &back, &remote, &["--transport", "quic"]);
    assert_eq!(s["transport"], "quic", "{s}");
    assert_same_tree(&remote, &back);
}

#[test]
fn guards_max_delete_and_backups_hold_over_ssh() {
    let sshd = Sshd::start();
    let (tmp, local, _) = roots();
    let remote = tmp.path().join("far");
    for i in 0..4 {
        write(&local, &format!("f{i}.txt"), format!("v1 {i}").as_bytes());
    }
    assert_code(&sshd.snapsync("push", &local, &remote, &["-N", "g"]), 0);
    let before = tree(&remote);

    // An unmounted disk: the source root is an empty directory now.
    let aside = tmp.path().join("aside");
    fs::rename(&local, &aside).unwrap();
    fs::create_dir(&local).unwrap();
    let out = sshd.snapsync("push", &local, &remote, &["-N", "g"]);
    assert_code(&out, 1);
    assert_stderr_says(&out, "-x");
    assert_eq!(tree(&remote), before, "the far root was touched");
    assert!(
        !local.join(".snapsync").exists(),
        "the empty root got state"
    );
    fs::remove_dir(&local).unwrap();
    fs::rename(&aside, &local).unwrap();

    // Two deletions against a limit of one: refused, naming both numbers.
    fs::remove_file(local.join("f0.txt")).unwrap();
    fs::remove_file(local.join("f1.txt")).unwrap();
    let out = sshd.snapsync("push", &local, &remote, &["-N", "g", "--max-delete", "1"]);
    assert_code(&out, 1);
    let err = stderr(&out);
    assert!(err.contains('2') && err.contains('1'), "{err}");
    assert_eq!(tree(&remote), before);

    // Allowed, with a backup on the far root of what goes and what is replaced.
    write(&local, "f2.txt", b"v2 2");
    let out = sshd.snapsync(
        "push",
        &local,
        &remote,
        &["-N", "g", "--backup-dir", ".old"],
    );
    assert_code(&out, 0);
    let runs: Vec<_> = fs::read_dir(remote.join(".old")).unwrap().collect();
    assert_eq!(runs.len(), 1);
    let run = runs.into_iter().next().unwrap().unwrap().path();
    assert_eq!(fs::read(run.join("f0.txt")).unwrap(), b"v1 0");
    assert_eq!(fs::read(run.join("f2.txt")).unwrap(), b"v1 2");
    assert_eq!(read(&remote, "f2.txt"), b"v2 2");
    assert!(!remote.join("f0.txt").exists());
    assert!(
        !local.join(".old").exists(),
        "the backup dir was synced back"
    );
}

/// A `^C` in a terminal signals its whole foreground process group: the
/// near end, and the ssh client it started. The near end finishes the file
/// in flight, saves what was done and exits 130; ssh must not die first
/// (the run would end as a lost connection, exit 1). Here the group gets
/// SIGINT as a terminal would send it.
#[test]
fn sigint_to_the_process_group_stops_a_push_over_ssh_cleanly() {
    use std::os::unix::process::CommandExt;
    const COUNT: usize = 200;
    let sshd = Sshd::start();
    let (_tmp, local, remote) = roots();
    for i in 0..COUNT {
        write(
            &local,
            &format!("f{i:04}"),
            &Rng::new(i as u64).bytes(16 * 1024),
        );
    }
    let mut cmd = Command::new(bin());
    cmd.args(["push", "--json", "--transport", "ssh", "--bwlimit", "64K"])
        .arg("--rsh")
        .arg(sshd.rsh())
        .arg("--remote-command")
        .arg(bin())
        .arg(&local)
        .arg(sshd.remote(&remote))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let child = cmd.spawn().unwrap();
    let group = child.id();
    let arrived = || {
        fs::read_dir(&remote).map_or(0, |dir| {
            dir.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with('f'))
                .count()
        })
    };
    let deadline = Instant::now() + RUN_TIMEOUT;
    while arrived() < 3 {
        assert!(Instant::now() < deadline, "no file arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    let signalled = Command::new("kill")
        .args(["-INT", "--", &format!("-{group}")])
        .status()
        .unwrap();
    assert!(signalled.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}\n{}", sshd.log());
    assert!(
        stderr.contains("run the same command again to finish"),
        "{stderr}"
    );
    // Only complete copies under real names.
    for entry in fs::read_dir(&remote).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(i) = name.strip_prefix('f') {
            let i: u64 = i.parse().unwrap();
            assert_eq!(
                fs::read(remote.join(&name)).unwrap(),
                Rng::new(i).bytes(16 * 1024),
                "{name}"
            );
        }
    }
    let done = arrived();
    assert!(done < COUNT, "the run was not interrupted");
    let s = sshd.json("push", &local, &remote, &["--transport", "ssh"]);
    assert_eq!(count(&s, "created"), (COUNT - done) as u64, "{s}");
    assert_same_tree(&local, &remote);
}
