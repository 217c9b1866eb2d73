//! push and pull with one root behind `snapsync serve`, reached through a
//! local `--rsh` shim (drops the host, runs the rest here), so the protocol
//! is covered without sshd. `tests/ssh.rs` runs the same through real sshd.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Remote {
    tmp: tempfile::TempDir,
    shim: PathBuf,
}

impl Remote {
    fn new() -> Self {
        Self::with_shim("#!/bin/sh\n# Drops the host; runs the rest here.\nshift\nexec \"$@\"\n")
    }

    fn with_shim(script: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let shim = tmp.path().join("rsh.sh");
        fs::write(&shim, script).unwrap();
        fs::set_permissions(&shim, fs::Permissions::from_mode(0o755)).unwrap();
        Remote { tmp, shim }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn spec(&self, path: &Path) -> String {
        format!("far.example:{}", path.display())
    }

    fn command(&self, verb: &str, local: &Path, remote: &Path, extra: &[&str]) -> Command {
        self.command_with(&bin(), verb, local, remote, extra)
    }

    fn command_with(
        &self,
        far_program: &Path,
        verb: &str,
        local: &Path,
        remote: &Path,
        extra: &[&str],
    ) -> Command {
        let mut cmd = Command::new(bin());
        cmd.arg(verb)
            .arg("--rsh")
            .arg(&self.shim)
            .arg("--remote-command")
            .arg(far_program)
            .args(extra)
            .arg(local)
            .arg(self.spec(remote));
        cmd
    }

    fn run(&self, verb: &str, local: &Path, remote: &Path, extra: &[&str]) -> Output {
        self.command(verb, local, remote, extra)
            .output()
            .expect("run snapsync")
    }

    fn json(&self, verb: &str, local: &Path, remote: &Path, extra: &[&str]) -> serde_json::Value {
        let mut args = vec!["--json"];
        args.extend_from_slice(extra);
        let out = self.run(verb, local, remote, &args);
        assert_code(&out, 0);
        summary(&out)
    }
}

fn sample_tree(root: &Path) {
    generate_tree(root, 21, 120, 0, 40_000);
    write(root, "top.txt", b"top");
    link(root, "link", "top.txt");
    fs::create_dir_all(root.join("empty")).unwrap();
    chmod(root, "top.txt", 0o600);
    set_mtime(root, "top.txt", 1_234_567_890, 987_654_321);
    fs::write(
        root.join(std::ffi::OsStr::new(
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"n\xe4me"),
        )),
        b"bytes",
    )
    .unwrap();
}

#[test]
fn push_to_a_remote_root_replicates_the_tree() {
    let r = Remote::new();
    let (src, dst) = (r.path("src"), r.path("dst"));
    fs::create_dir(&src).unwrap();
    sample_tree(&src);
    let s = r.json("push", &src, &dst, &[]);
    assert_same_tree(&src, &dst);
    assert!(count(&s, "bytes_sent") > 0);
    assert!(count(&s, "wire_sent") >= count(&s, "bytes_sent"));
    // Both sides keep their own snapshot.
    assert!(dst.join(".snapsync").is_dir() && src.join(".snapsync").is_dir());
}

#[test]
fn pull_from_a_remote_root_replicates_the_tree() {
    let r = Remote::new();
    let (remote, local) = (r.path("remote"), r.path("local"));
    fs::create_dir(&remote).unwrap();
    sample_tree(&remote);
    let s = r.json("pull", &local, &remote, &[]);
    assert_same_tree(&remote, &local);
    assert!(count(&s, "bytes_received") > 0);
    assert_eq!(count(&s, "bytes_sent"), 0);
    // Changes on the far side arrive, renames as renames.
    fs::rename(remote.join("d3"), remote.join("d3-renamed")).unwrap();
    write(&remote, "new/file", b"fresh");
    fs::remove_file(remote.join("top.txt")).unwrap();
    let s = r.json("pull", &local, &remote, &[]);
    assert_same_tree(&remote, &local);
    assert_eq!(count(&s, "renamed"), 1, "{s}");
    assert_eq!(count(&s, "bytes_received"), 5, "{s}");
}

#[test]
fn no_change_rerun_moves_only_a_few_kilobytes() {
    let r = Remote::new();
    let (src, dst) = (r.path("src"), r.path("dst"));
    generate_tree(&src, 5, 3000, 10, 200);
    r.json("push", &src, &dst, &[]);
    // Files written within a clock tick of the first scan are checked again
    // by content on the next run (their stat could not vouch for them):
    // measure the run after that.
    r.json("push", &src, &dst, &[]);
    let s = r.json("push", &src, &dst, &[]);
    assert_eq!(count(&s, "bytes_sent"), 0);
    let wire = count(&s, "wire_sent") + count(&s, "wire_received");
    assert!(wire < 8 * 1024, "a no-change run moved {wire} bytes: {s}");
    // The same for pull.
    let back = r.path("back");
    r.json("pull", &back, &src, &[]);
    r.json("pull", &back, &src, &[]);
    let s = r.json("pull", &back, &src, &[]);
    let wire = count(&s, "wire_sent") + count(&s, "wire_received");
    assert!(wire < 8 * 1024, "a no-change pull moved {wire} bytes: {s}");
}

fn big_file(len: usize, seed: u64) -> Vec<u8> {
    // Random 64 KiB blocks chosen by a seeded generator: fast to make, and
    // no two blocks alike.
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let block = rng.bytes(4096);
        out.extend_from_slice(&block);
    }
    out.truncate(len);
    out
}

#[test]
fn modified_large_file_travels_as_a_delta_both_ways() {
    let r = Remote::new();
    let (src, dst) = (r.path("src"), r.path("dst"));
    let mut data = big_file(64 << 20, 3);
    write(&src, "big.bin", &data);
    r.json("push", &src, &dst, &[]);
    data[10_000_000..10_004_096].copy_from_slice(&Rng::new(99).bytes(4096));
    write(&src, "big.bin", &data);
    let s = r.json("push", &src, &dst, &[]);
    assert_eq!(read(&dst, "big.bin"), data);
    let sent = count(&s, "bytes_sent");
    assert!(sent < 1 << 20, "sent {sent} bytes for a 4 KiB change");
    assert!(count(&s, "wire_sent") < 2 << 20, "{s}");

    // Pull: the near end is the target and describes its version.
    data[50_000_000..50_004_096].copy_from_slice(&Rng::new(98).bytes(4096));
    write(&src, "big.bin", &data);
    let s = r.json("pull", &dst, &src, &["-N", "back"]);
    assert_eq!(read(&dst, "big.bin"), data);
    let received = count(&s, "bytes_received");
    assert!(
        received < 1 << 20,
        "received {received} bytes for a 4 KiB change"
    );
}

#[test]
fn compression_shrinks_what_crosses_the_wire() {
    let r = Remote::new();
    let src = r.path("src");
    let text: Vec<u8> = b"the quick brown fox jumps over the lazy dog\n"
        .iter()
        .cycle()
        .take(2 << 20)
        .copied()
        .collect();
    write(&src, "a.txt", &text);
    write(&src, "b.txt", &text[..1 << 20]);
    let plain = r.json("push", &src, &r.path("plain"), &[]);
    let packed = r.json("push", &src, &r.path("packed"), &["-z"]);
    assert_same_tree(&src, &r.path("packed"));
    assert!(
        count(&packed, "wire_sent") * 10 < count(&plain, "wire_sent"),
        "-z: {packed} vs {plain}"
    );
}

#[test]
fn missing_far_end_program_is_named() {
    let r = Remote::new();
    let src = r.path("src");
    write(&src, "f", b"1");
    let missing = Path::new("/no/such/snapsync");
    let out = r
        .command_with(missing, "push", &src, &r.path("dst"), &[])
        .output()
        .unwrap();
    assert_code(&out, 1);
    let err = stderr(&out);
    assert!(err.contains("--remote-command"), "{err}");
    assert!(!r.path("dst").exists());
}

#[test]
fn far_end_closing_during_handshake_is_an_error() {
    let r = Remote::with_shim("#!/bin/sh\nexit 0\n");
    let src = r.path("src");
    write(&src, "f", b"1");
    let out = r.run("push", &src, &r.path("dst"), &[]);
    assert_code(&out, 1);
    assert_stderr_says(&out, "handshake");
}

/// The files named `f…` in `dir` (none while it does not exist).
fn files_in(dir: &Path) -> usize {
    fs::read_dir(dir).map_or(0, |d| {
        d.flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('f'))
            .count()
    })
}

/// Waits until `done`, for 30 s at most (`what` names it on failure).
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The output of `child` once it ends, within `limit`; else it is killed
/// and the test fails with `why`.
fn ended_within(mut child: std::process::Child, limit: Duration, why: &str) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{why}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Sends `signal` to process `pid`, which the test started.
fn signal(pid: i32, signal: i32) {
    // SAFETY: a signal to a process of this test's; no memory involved.
    unsafe { libc::kill(pid, signal) };
}

/// A push from `src` to `dst` with `extra` whose far end (its pid noted by
/// the shim, which `Remote` must have) is killed once three files are in.
fn push_and_kill_the_far_end(
    r: &Remote,
    src: &Path,
    dst: &Path,
    extra: &[&str],
) -> std::process::Child {
    let pid_file = r.path("far.pid");
    let child = r
        .command("push", src, dst, extra)
        .env("FAR_PID_FILE", &pid_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("no file arrived", || files_in(dst) >= 3);
    let pid: i32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    signal(pid, libc::SIGKILL);
    child
}

/// A shim that notes the far end's pid in `$FAR_PID_FILE` (exec keeps it).
const PID_SHIM: &str = "#!/bin/sh\nshift\necho $$ > \"$FAR_PID_FILE\"\nexec \"$@\"\n";

#[test]
fn far_end_killed_mid_transfer_leaves_no_partial_file_and_next_run_finishes() {
    let r = Remote::with_shim(PID_SHIM);
    let (src, dst) = (r.path("src"), r.path("dst"));
    for i in 0..40 {
        write(&src, &format!("f{i:02}.bin"), &big_file(4 << 20, i));
    }
    let child = push_and_kill_the_far_end(&r, &src, &dst, &["--json"]);
    let out = child.wait_with_output().unwrap();
    assert_code(&out, 1);
    assert_stderr_says(&out, "connection");
    assert!(!stderr(&out).contains("panicked"));
    // Every file under a real name is complete.
    let mut complete = 0u64;
    let mut complete_bytes = 0u64;
    for entry in fs::read_dir(&dst).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".snapsync") {
            continue;
        }
        assert_eq!(
            fs::read(entry.path()).unwrap(),
            read(&src, &name),
            "{name} is partial"
        );
        complete += 1;
        complete_bytes += entry.metadata().unwrap().len();
    }
    assert!((3..40).contains(&complete), "{complete} files complete");
    let s = r.json("push", &src, &dst, &[]);
    assert_same_tree(&src, &dst);
    let total: u64 = 40 * (4 << 20);
    assert!(
        count(&s, "bytes_sent") <= total - complete_bytes,
        "re-sent finished files: {s}"
    );
}

/// A far end that dies mid-push is reported as soon as the next file
/// would go to it: the files left are not read for nobody. At the rate
/// given, reading them (even one paced block each) would take well over
/// the minute the test waits; the run is over in moments.
#[test]
fn a_far_end_that_dies_mid_push_is_reported_without_reading_the_files_left() {
    let r = Remote::with_shim(PID_SHIM);
    let (src, dst) = (r.path("src"), r.path("dst"));
    for i in 0..400 {
        write(&src, &format!("f{i:03}.bin"), &Rng::new(i).bytes(64 << 10));
    }
    let child = push_and_kill_the_far_end(&r, &src, &dst, &["--bwlimit", "256K"]);
    let out = ended_within(
        child,
        Duration::from_secs(60),
        "the run went on reading the files left for a far end that is gone",
    );
    assert_code(&out, 1);
    assert_stderr_says(&out, "lost the connection");
}

/// A stopped pull (SIGINT) waits only for what it has asked for ahead,
/// about a second's worth at the rate files arrive, and not for four
/// chunks of up to 16 MiB each: at the rate given here, those would be all
/// the files there are, and the stop would wait for every one.
#[test]
fn a_stopped_pull_waits_for_what_it_asked_ahead_not_for_every_file() {
    let r = Remote::new();
    let (far, near) = (r.path("far"), r.path("near"));
    for i in 0..100 {
        write(&far, &format!("f{i:03}.bin"), &Rng::new(i).bytes(256 << 10));
    }
    let child = r
        .command("pull", &near, &far, &["--bwlimit", "1M"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("no file arrived", || files_in(&near) >= 2);
    signal(child.id() as i32, libc::SIGINT);
    let out = ended_within(
        child,
        Duration::from_secs(120),
        "the stopped pull did not end",
    );
    assert_code(&out, 130);
    let arrived = files_in(&near);
    assert!(arrived < 60, "{arrived} of 100 files arrived");
}

#[test]
fn far_disk_full_fails_those_files_and_leaves_no_partial_file() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a small filesystem needs root");
        return;
    }
    let r = Remote::new();
    let (src, dst) = (r.path("src"), r.path("dst"));
    fs::create_dir(&dst).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(&dst)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount tmpfs");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(dst.clone());
    // The small file first: written in parallel with the large ones, it
    // could meet the full disk itself.
    write(&src, "small", b"fits");
    assert_code(&r.run("push", &src, &dst, &[]), 0);
    write(&src, "large1", &big_file(2 << 20, 1));
    write(&src, "large2", &big_file(2 << 20, 2));
    let out = r.run("push", &src, &dst, &["--json"]);
    assert_code(&out, 3);
    assert_stderr_says(&out, "No space left");
    assert_eq!(read(&dst, "small"), b"fits");
    for name in ["large1", "large2"] {
        if let Ok(data) = fs::read(dst.join(name)) {
            assert_eq!(data, read(&src, name), "{name} is partial");
        }
    }
    let leftovers: Vec<_> = fs::read_dir(&dst)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".snapsync-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn serve_exits_when_its_input_closes() {
    let mut child = spawn_serve();
    drop(child.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "serve did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn renamed_directory_costs_a_few_bytes_on_the_wire() {
    let r = Remote::new();
    let (src, dst) = (r.path("src"), r.path("dst"));
    let mut size = 0u64;
    for i in 0..1000u64 {
        let data = Rng::new(i).bytes(2000 + (i as usize * 37) % 14000);
        size += data.len() as u64;
        write(&src, &format!("album/photo{i}.jpg"), &data);
    }
    r.json("push", &src, &dst, &[]);
    fs::rename(src.join("album"), src.join("album-2024")).unwrap();
    let s = r.json("push", &src, &dst, &[]);
    assert_same_tree(&src, &dst);
    assert_eq!(count(&s, "renamed"), 1, "{s}");
    assert_eq!(count(&s, "bytes_sent"), 0, "{s}");
    let wire = count(&s, "wire_sent") + count(&s, "wire_received");
    assert!(
        wire * 100 <= size,
        "{wire} bytes on the wire for {size} bytes renamed: {s}"
    );
}

#[test]
fn handshake_exchanges_root_ids_and_each_side_records_its_peer() {
    let r = Remote::new();
    let (src, dst) = (r.path("src"), r.path("dst"));
    write(&src, "f", b"1");
    r.json("push", &src, &dst, &["-N", "ids"]);
    let id = |root: &Path| {
        fs::read_to_string(root.join(".snapsync/id"))
            .unwrap()
            .trim()
            .to_string()
    };
    let peer = |root: &Path| -> String {
        let conn = rusqlite::Connection::open(root.join(".snapsync/ids.db")).unwrap();
        conn.query_row(
            "SELECT value FROM meta WHERE key = 'peer_root_id'",
            [],
            |row| row.get(0),
        )
        .unwrap()
    };
    assert_eq!(id(&src).len(), 32);
    assert_ne!(id(&src), id(&dst));
    assert_eq!(peer(&src), id(&dst));
    assert_eq!(peer(&dst), id(&src));
}

/// A far end reached through the shim, serving `far` (one file, `a.txt`),
/// connected with `probe` and `scan` asked ahead, for one run or more.
fn far_endpoint(
    tmp: &Path,
    transport: snapsync::endpoint::Transport,
    probe: Option<snapsync::endpoint::SessionRequest>,
    scan: Option<snapsync::changes::DiffOptions>,
    one_run: bool,
) -> snapsync::endpoint::RemoteEndpoint {
    use snapsync::endpoint::{ConnectOptions, RemoteEndpoint, RemoteSpec};
    let far = tmp.join("far");
    fs::create_dir_all(&far).unwrap();
    write(&far, "a.txt", b"a");
    let connect = ConnectOptions {
        rsh: rsh_shim(tmp).display().to_string(),
        remote_command: bin().display().to_string(),
        compress: false,
        transport,
        udp_ports: None,
        probe,
        scan,
        one_run,
    };
    let spec = RemoteSpec::parse(&format!("far.example:{}", far.display())).unwrap();
    RemoteEndpoint::connect(spec, &connect, Default::default()).unwrap()
}

/// The look at the far root a session starts with is asked on ssh right
/// behind the handshake: opening with it sends nothing more. It is used
/// once; asked again, or any other request, goes on the wire, and the far
/// end's answer is the same.
#[test]
fn the_first_look_at_the_far_root_comes_with_the_handshake() {
    use snapsync::endpoint::{Endpoint, Role, Transport};
    let tmp = tempfile::tempdir().unwrap();
    let probe = snapsync::endpoint::SessionRequest {
        probe: true,
        ..session_request("early", "push", Role::Target)
    };
    for transport in [Transport::Ssh, Transport::Auto] {
        let remote = far_endpoint(tmp.path(), transport, Some(probe.clone()), None, false);
        let before = remote.wire_bytes();
        let early = remote.open_session(&probe).unwrap();
        assert_eq!(remote.wire_bytes(), before, "{transport:?}");
        let again = remote.open_session(&probe).unwrap();
        assert!(remote.wire_bytes().0 > before.0, "{transport:?}");
        assert_eq!(format!("{early:?}"), format!("{again:?}"));
        assert!(early.root_id.is_none(), "a look creates nothing");
    }
}

/// A one-time run's first scan is asked right behind the session's open:
/// scanning then sends nothing more. A scan with other options is asked
/// when it is wanted.
#[test]
fn the_first_scan_is_asked_behind_the_open() {
    use snapsync::changes::DiffOptions;
    use snapsync::endpoint::{Endpoint, Role, Transport};
    let tmp = tempfile::tempdir().unwrap();
    let remote = far_endpoint(
        tmp.path(),
        Transport::Ssh,
        None,
        Some(DiffOptions::default()),
        false,
    );
    remote
        .open_session(&session_request("early", "push", Role::Target))
        .unwrap();
    let sent = remote.wire_bytes().0;
    let paths = |set: &snapsync::changes::ChangeSet| -> Vec<String> {
        set.changes.iter().map(|c| c.path.to_string()).collect()
    };
    let first = remote.scan(&DiffOptions::default()).unwrap();
    assert_eq!(remote.wire_bytes().0, sent);
    assert_eq!(paths(&first), ["a.txt"]);
    let checksum = DiffOptions {
        checksum: true,
        ..DiffOptions::default()
    };
    let second = remote.scan(&checksum).unwrap();
    assert!(remote.wire_bytes().0 > sent);
    assert_eq!(paths(&second), ["a.txt"]);
}

/// A one-time run's `Finish` ends the session at the far end before it is
/// answered: the session's lock is free while the far end still runs (so
/// the near end need not wait for ssh to end). A session that carries
/// more runs keeps its lock.
#[test]
fn a_one_time_runs_finish_lets_go_of_the_far_session() {
    use snapsync::endpoint::{Endpoint, LocalEndpoint, Role, RunEnd, Transport};
    for one_run in [true, false] {
        let tmp = tempfile::tempdir().unwrap();
        let remote = far_endpoint(tmp.path(), Transport::Ssh, None, None, one_run);
        let request = session_request("once", "push", Role::Target);
        remote.open_session(&request).unwrap();
        let end = RunEnd {
            complete: true,
            failures: Vec::new(),
            started: "2026-11-26T00:00:00Z".into(),
            summary: "{}".into(),
            peer_root_id: None,
            peer: "here".into(),
            conflicts: Vec::new(),
            examined: None,
        };
        remote.finish(&[], &end).unwrap();
        let far_pid = fs::read_to_string(tmp.path().join("far.pid")).unwrap();
        let far_alive = || Path::new("/proc").join(far_pid.trim()).exists();
        assert!(far_alive(), "the far end runs until the near end goes");
        let again = LocalEndpoint::new(tmp.path().join("far"), None, Default::default())
            .open_session(&request);
        match (one_run, again) {
            (true, Ok(_)) => {}
            (false, Err(e)) => assert!(e.to_string().contains("already running"), "{e}"),
            (one_run, other) => panic!("one run: {one_run}: {other:?}"),
        }
        drop(remote);
        let deadline = Instant::now() + Duration::from_secs(10);
        while far_alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!far_alive(), "the far end ends with the near end");
    }
}

/// A far root given relative to where the far end starts (an ssh login's
/// home): the session's log is recorded there by its absolute path, so
/// `status` names it wherever it is run from.
#[test]
fn the_far_log_is_recorded_by_its_absolute_path() {
    let remote = Remote::new();
    let src = remote.path("src");
    sample_tree(&src);
    let out = remote
        .command("push", &src, Path::new("dst"), &[])
        .current_dir(remote.tmp.path())
        .output()
        .unwrap();
    assert_code(&out, 0);
    let out = Command::new(bin())
        .args(["status", "--json"])
        .arg(remote.path("dst"))
        .output()
        .unwrap();
    assert_code(&out, 0);
    let sessions: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let log = Path::new(sessions[0]["logs"].as_str().unwrap()).to_path_buf();
    assert!(log.is_absolute(), "{}", log.display());
    assert!(log.is_file(), "{}", log.display());
}
