//! Per-path records (`ls`, the counts in `status`) and session logs,
//! through the real binary: errors recorded with the OS message, retried
//! and cleared; a killed run's unfinished paths listed as pending and
//! finished by the next; `ls` beside a running push; both roots of a remote
//! session keeping their own records and logs; logs rotated by size.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn roots() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    fs::create_dir_all(&a).unwrap();
    (tmp, a, b)
}

/// `snapsync ls PATH --json EXTRA…`: the records, checked to exit 0.
#[track_caller]
fn ls(path: &Path, extra: &[&str]) -> Vec<Value> {
    let out = Command::new(bin())
        .arg("ls")
        .arg(path)
        .arg("--json")
        .args(extra)
        .output()
        .unwrap();
    assert_code(&out, 0);
    match serde_json::from_slice(&out.stdout) {
        Ok(Value::Array(records)) => records,
        other => panic!("ls --json printed no array: {other:?}\n{}", stdout(&out)),
    }
}

/// The paths `ls` lists in `state`.
#[track_caller]
fn paths_in(root: &Path, state: &str) -> BTreeSet<String> {
    ls(root, &["--state", state])
        .iter()
        .map(|r| {
            assert_eq!(r["state"], state, "{r}");
            r["path"].as_str().unwrap().to_string()
        })
        .collect()
}

#[track_caller]
fn status_json(root: &Path) -> Vec<Value> {
    let out = Command::new(bin())
        .arg("status")
        .arg(root)
        .arg("--json")
        .output()
        .unwrap();
    assert_code(&out, 0);
    match serde_json::from_slice(&out.stdout) {
        Ok(Value::Array(sessions)) => sessions,
        other => panic!("status --json printed no array: {other:?}"),
    }
}

/// `chattr` on PATH; false where the filesystem does not support it.
fn chattr(flag: &str, path: &Path) -> bool {
    Command::new("chattr")
        .arg(flag)
        .arg(path)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn records_list_every_path_with_its_fields() {
    let (_tmp, a, b) = roots();
    write(&a, "x.txt", b"hello");
    write(&a, "dir/y.bin", b"\x00\x01\x02");
    link(&a, "dir/to-x", "../x.txt");
    assert_code(&push(&a, &b, &[]), 0);

    for root in [&a, &b] {
        let records = ls(root, &[]);
        let paths: Vec<&str> = records
            .iter()
            .map(|r| r["path"].as_str().unwrap())
            .collect();
        assert_eq!(paths, ["dir", "dir/to-x", "dir/y.bin", "x.txt"], "{root:?}");
        let x = &records[3];
        assert_eq!(x["state"], "synced");
        assert_eq!(x["kind"], "file");
        assert_eq!(x["size"], 5);
        assert_eq!(
            x["hash"].as_str().unwrap(),
            blake3::hash(b"hello").to_hex().as_str()
        );
        assert!(x["mtime"].as_str().unwrap().ends_with('Z'));
        assert!(x["since"].as_str().unwrap().ends_with('Z'));
        assert!(x["message"].is_null());
        assert_eq!(records[0]["kind"], "dir");
        assert_eq!(records[1]["kind"], "symlink");
    }
    // PATH narrows the listing to what is at and under it, from anywhere.
    let under: Vec<Value> = ls(&b.join("dir"), &[]);
    assert_eq!(under.len(), 3);
    let one = ls(&b.join("x.txt"), &[]);
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["path"], "x.txt");
    // The plain listing names each path once, with its state.
    let out = Command::new(bin()).arg("ls").arg(&b).output().unwrap();
    assert_code(&out, 0);
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(text.lines().all(|l| l.starts_with("synced ")), "{text}");
    // No root: exit 1 with what to do.
    let out = Command::new(bin())
        .arg("ls")
        .arg(a.parent().unwrap())
        .output()
        .unwrap();
    assert_code(&out, 1);
    assert_stderr_says(&out, "no snapsync root");
}

#[test]
fn a_failed_path_is_an_error_with_the_os_message_retried_and_cleared() {
    let (_tmp, a, b) = roots();
    write(&a, "ok.txt", b"fine");
    write(&a, "locked/old.txt", b"old");
    assert_code(&push(&a, &b, &[]), 0);
    // The target directory stops even root from writing into it.
    if !chattr("+i", &b.join("locked")) {
        eprintln!("skipping: chattr +i is not supported here");
        return;
    }
    write(&a, "locked/new.txt", b"new");
    write(&a, "ok2.txt", b"also fine");
    let first = push(&a, &b, &[]);
    let second = push(&a, &b, &[]);
    chattr("-i", &b.join("locked"));
    assert_code(&first, 3);
    assert_code(&second, 3);
    assert_stderr_says(&first, "locked/new.txt");
    assert_eq!(read(&b, "ok2.txt"), b"also fine");

    // Both roots record it: the OS's words, when, and how many tries. (The
    // directory's times, which the run could not put back, failed too.)
    for root in [&a, &b] {
        let errors = ls(root, &["--state", "error"]);
        let paths: Vec<&str> = errors.iter().map(|e| e["path"].as_str().unwrap()).collect();
        assert_eq!(paths, ["locked", "locked/new.txt"], "{root:?}: {errors:?}");
        let e = &errors[1];
        assert_eq!(e["kind"], "file", "what was planned stays known: {e}");
        assert_eq!(e["planned"], "create", "{e}");
        let message = e["message"].as_str().unwrap();
        assert!(
            message.contains("Operation not permitted"),
            "not the OS message: {message}"
        );
        assert_eq!(e["attempts"], 2, "both runs tried it");
        assert!(e["since"].as_str().unwrap().ends_with('Z'));
        let counts = &status_json(root)[0]["counts"];
        assert_eq!(counts["error"], 2, "{counts}");
        assert_eq!(counts["pending"], 0, "{counts}");
    }
    // The session log says what failed.
    let log = fs::read_to_string(log_of(&b)).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("error locked/new.txt: ") && l.contains("not permitted")),
        "{log}"
    );

    // Once it can succeed, the next run syncs it and the error is gone.
    assert_code(&push(&a, &b, &[]), 0);
    assert_eq!(read(&b, "locked/new.txt"), b"new");
    for root in [&a, &b] {
        assert!(paths_in(root, "error").is_empty(), "{root:?}");
        assert!(paths_in(root, "synced").contains("locked/new.txt"));
    }
}

#[test]
fn an_error_whose_path_went_away_is_dropped() {
    let (_tmp, a, b) = roots();
    write(&a, "locked/keep.txt", b"k");
    assert_code(&push(&a, &b, &[]), 0);
    if !chattr("+i", &b.join("locked")) {
        eprintln!("skipping: chattr +i is not supported here");
        return;
    }
    write(&a, "locked/brief.txt", b"gone soon");
    let out = push(&a, &b, &[]);
    chattr("-i", &b.join("locked"));
    assert_code(&out, 3);
    assert!(paths_in(&b, "error").contains("locked/brief.txt"));
    // The file is deleted at the source before anything retried it: no
    // run will settle it, and its error must not stay forever.
    fs::remove_file(a.join("locked/brief.txt")).unwrap();
    assert_code(&push(&a, &b, &[]), 0);
    assert!(paths_in(&a, "error").is_empty());
    assert!(paths_in(&b, "error").is_empty());
}

/// The session's log file on `root` (the only session there).
fn log_of(root: &Path) -> PathBuf {
    let sessions = status_json(root);
    assert_eq!(sessions.len(), 1);
    PathBuf::from(sessions[0]["logs"].as_str().unwrap())
}

#[test]
fn a_killed_run_leaves_its_unfinished_paths_pending_and_the_next_run_finishes_them() {
    const FILES: usize = 3000;
    let (_tmp, a, b) = roots();
    generate_tree(&a, 0x9e4d, FILES, 1024, 64 * 1024);
    let all = all_files(&a);
    assert_eq!(all.len(), FILES);

    let mut child = Command::new(bin())
        .arg("push")
        .arg(&a)
        .arg(&b)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() && all_files(&b).len() < 300 {
        assert!(Instant::now() < deadline, "the push made no progress");
        thread::sleep(Duration::from_millis(2));
    }
    let _ = child.kill();
    let status = child.wait().unwrap();
    let arrived = all_files(&b);
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the push ended ({status}) before it was killed, with {} of {FILES} files there; the tree must be larger",
        arrived.len()
    );

    // Every file that has not arrived is listed as pending, on both roots.
    let missing: BTreeSet<String> = all.difference(&arrived).cloned().collect();
    assert!(!missing.is_empty());
    for root in [&a, &b] {
        let pending = ls(root, &["--state", "pending"]);
        let paths: BTreeSet<String> = pending
            .iter()
            .map(|r| r["path"].as_str().unwrap().to_string())
            .collect();
        let unlisted: Vec<&String> = missing.difference(&paths).collect();
        assert!(
            unlisted.is_empty(),
            "{root:?}: {} unfinished files not pending, e.g. {:?}",
            unlisted.len(),
            &unlisted[..unlisted.len().min(3)]
        );
        let sample = pending
            .iter()
            .find(|r| r["path"] == missing.iter().next().unwrap().as_str())
            .unwrap();
        assert_eq!(sample["planned"], "create", "{sample}");
        assert_eq!(sample["kind"], "file", "{sample}");
        assert!(sample["since"].as_str().unwrap().ends_with('Z'));
        assert!(
            status_json(root)[0]["counts"]["pending"].as_u64().unwrap() >= missing.len() as u64
        );
    }
    // The plain listing says what was planned.
    let out = Command::new(bin())
        .args(["ls", "--state", "pending"])
        .arg(&b)
        .output()
        .unwrap();
    assert_code(&out, 0);
    assert!(stdout(&out).contains("planned: create"), "{}", stdout(&out));

    // The next run finishes them, and nothing is pending any more.
    assert_code(&push(&a, &b, &[]), 0);
    assert_same_tree(&a, &b);
    for root in [&a, &b] {
        assert!(paths_in(root, "pending").is_empty(), "{root:?}");
        let counts = &status_json(root)[0]["counts"];
        assert_eq!(counts["pending"], 0);
        assert!(
            counts["synced"].as_u64().unwrap() >= FILES as u64,
            "{counts}"
        );
    }
}

/// The relative paths of the regular files under `root`, outside `.snapsync`.
fn all_files(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(listing) = fs::read_dir(&dir) else {
            continue;
        };
        for item in listing.flatten() {
            let path = item.path();
            let name = item.file_name();
            let name = name.to_string_lossy();
            if name == ".snapsync" || name.starts_with(".snapsync-tmp-") {
                continue;
            }
            match item.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(t) if t.is_file() => {
                    let rel = path.strip_prefix(root).unwrap();
                    out.insert(rel.to_string_lossy().into_owned());
                }
                _ => {}
            }
        }
    }
    out
}

#[test]
fn ls_and_status_beside_a_long_push_never_block_or_break_it() {
    let (_tmp, a, b) = roots();
    generate_tree(&a, 0x15, 3000, 1024, 64 * 1024);
    // A first run makes both databases; the long one is the second.
    write(&a, "seed.txt", b"seed");
    assert_code(
        &push(
            &a,
            &b,
            &["-N", "seed", "--include", "seed.txt", "--exclude", "*"],
        ),
        0,
    );
    let mut child = Command::new(bin())
        .arg("push")
        .arg(&a)
        .arg(&b)
        .arg("-N")
        .arg("long")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut looks = 0;
    let mut slowest = Duration::ZERO;
    while child.try_wait().unwrap().is_none() {
        for root in [&a, &b] {
            let clock = Instant::now();
            for args in [
                vec!["ls", "--json"],
                vec!["status", "--json"],
                vec!["ls", "--state", "pending"],
            ] {
                let out = Command::new(bin()).args(&args).arg(root).output().unwrap();
                assert_code(&out, 0);
            }
            slowest = slowest.max(clock.elapsed());
            looks += 1;
        }
    }
    let out = child.wait_with_output().unwrap();
    assert_code(&out, 0);
    assert_same_tree(&a, &b);
    assert!(looks > 0, "the push ended before anything looked");
    eprintln!("{looks} looks during the push, slowest {slowest:?}");
}

#[test]
fn the_far_end_keeps_its_own_records_and_log() {
    let (tmp, a, b) = roots();
    let shim = rsh_shim(tmp.path());
    write(&a, "one.txt", b"1");
    write(&a, "sub/two.txt", b"22");
    let remote = format!("far.example:{}", b.display());
    let run = |extra: &[&str]| -> Output {
        Command::new(bin())
            .arg("push")
            .args(["--rsh", shim.to_str().unwrap(), "--remote-command"])
            .arg(bin())
            .args(["-N", "far", "-v"])
            .args(extra)
            .arg(&a)
            .arg(&remote)
            .output()
            .unwrap()
    };
    assert_code(&run(&[]), 0);
    // `ls` run on the far host, in the far root.
    let records = ls(&b, &[]);
    let paths: Vec<&str> = records
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["one.txt", "sub", "sub/two.txt"]);
    assert!(records
        .iter()
        .all(|r| r["state"] == "synced" && r["session"] == "far"));

    // Its log is in its own state dir, with per-file lines (-v).
    let far_log = b.join(".snapsync/logs/far.log");
    let text = fs::read_to_string(&far_log).unwrap();
    assert!(
        text.contains("this root (") && text.contains("is the target"),
        "{text}"
    );
    assert!(text.contains("synced file sub/two.txt"), "{text}");
    assert!(text.contains("run complete"), "{text}");
    assert_eq!(log_of(&b), far_log);

    // A failure there is recorded there too.
    if chattr("+i", &b.join("sub")) {
        write(&a, "sub/three.txt", b"333");
        let out = run(&[]);
        chattr("-i", &b.join("sub"));
        assert_code(&out, 3);
        assert!(paths_in(&b, "error").contains("sub/three.txt"));
        assert!(fs::read_to_string(&far_log)
            .unwrap()
            .contains("error sub/three.txt: "));
        assert_code(&run(&[]), 0);
        assert!(paths_in(&b, "error").is_empty());
    }
}

#[test]
fn logs_record_runs_errors_and_conflicts_and_rotate_by_size() {
    let (tmp, a, b) = roots();
    let custom = tmp.path().join("elsewhere/a.log");
    let bidi_run = |extra: &[&str]| -> Output {
        Command::new(bin())
            .arg("bidi")
            .args(["-N", "both", "--log-max", "1K", "--log-file"])
            .arg(&custom)
            .args(extra)
            .arg(&a)
            .arg(&b)
            .output()
            .unwrap()
    };
    write(&a, "c.txt", b"base");
    assert_code(&bidi_run(&[]), 0);
    write(&a, "c.txt", b"from a");
    write(&b, "c.txt", b"from b!");
    assert_code(&bidi_run(&[]), 4);

    // This side logs where --log-file says; the other side in its state dir.
    let here = fs::read_to_string(&custom).unwrap();
    let there = fs::read_to_string(b.join(".snapsync/logs/both.log")).unwrap();
    for text in [&here, &there] {
        assert!(text.contains("run started"), "{text}");
        assert!(text.contains("run complete"), "{text}");
        assert!(
            text.contains("conflict c.txt: modified here, modified on the peer"),
            "{text}"
        );
        assert!(text.contains("created 1"), "{text}");
    }
    assert!(!a.join(".snapsync/logs/both.log").exists());
    // `status` says where the log is.
    let out = Command::new(bin()).arg("status").arg(&a).output().unwrap();
    assert!(
        stdout(&out).contains(&format!("log {}", custom.display())),
        "{}",
        stdout(&out)
    );

    // Many runs with per-file lines into a 1 KiB log: rotated, and only
    // five old files are kept.
    for round in 0..12 {
        for i in 0..8 {
            write(&a, &format!("many/f{i}.txt"), format!("{round}").as_bytes());
        }
        bidi_run(&["-v"]);
    }
    let dir = custom.parent().unwrap();
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["a.log", "a.log.1", "a.log.2", "a.log.3", "a.log.4", "a.log.5"]
    );
    for name in &names {
        let size = fs::metadata(dir.join(name)).unwrap().len();
        assert!(size < 1024 + 512, "{name} is {size} bytes");
    }
    let newest = fs::read_to_string(dir.join("a.log")).unwrap()
        + &fs::read_to_string(dir.join("a.log.1")).unwrap();
    assert!(newest.contains("synced file many/f"), "{newest}");
}

/// Makes files immutable for as long as it lives (`chattr +i`), so that
/// even root cannot write them; undone on drop, panic or not.
struct Immutable(Vec<PathBuf>);

impl Drop for Immutable {
    fn drop(&mut self) {
        for path in &self.0 {
            chattr("-i", path);
        }
    }
}

/// A peer sends `RecordPending` and, without waiting for its answer, what
/// the records announce. A far end that could not write the records
/// changes nothing after: the operations and the file are refused with
/// the reason, and neither appears on disk.
#[test]
fn a_far_end_that_cannot_record_pending_rows_changes_nothing_after() {
    use snapsync::endpoint::{FileJob, Role, SourceEnd};
    use snapsync::model::{Entry, Kind, Preserve, RelPath};
    use snapsync::plan::Op;
    use snapsync::protocol::{read_message, write_message, Body, Envelope};
    use snapsync::state::{Pending, PlannedOp};
    use std::io::{BufReader, BufWriter, Write};

    let tmp = tempfile::tempdir().unwrap();
    let far = tmp.path().join("far");
    fs::create_dir_all(&far).unwrap();
    let mut child = spawn_serve();
    let mut to = BufWriter::new(child.stdin.take().unwrap());
    let mut from = BufReader::new(child.stdout.take().unwrap());
    let mut call = 0;
    let mut send = |body: Body| {
        call += 1;
        write_message(&mut to, &Envelope { call, body }).unwrap();
        to.flush().unwrap();
    };
    let mut receive = || read_message(&mut from).unwrap().0.body;

    send(Body::Hello {
        protocol: snapsync::PROTOCOL_VERSION,
        version: "test".into(),
        capabilities: Vec::new(),
    });
    assert!(matches!(receive(), Body::Hello { .. }));
    let request = session_request("pending-test", "push", Role::Target);
    send(Body::Open {
        root: far.to_str().unwrap().as_bytes().to_vec(),
        request,
        preserve: Preserve::default(),
    });
    assert!(matches!(receive(), Body::Opened { .. }), "not opened");

    // The session's database, and its write-ahead log, cannot be written.
    let state = far.join(".snapsync");
    let held: Vec<PathBuf> = fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("pending-test.db"))
        })
        .collect();
    let mut immutable = Immutable(Vec::new());
    for path in &held {
        if !chattr("+i", path) {
            eprintln!("SKIPPED: chattr +i does not work on this filesystem");
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        immutable.0.push(path.clone());
    }
    assert!(
        !immutable.0.is_empty(),
        "no database in {}",
        state.display()
    );

    let path = |p: &str| RelPath::new(p.as_bytes()).unwrap();
    let mut file = Entry::bare(path("new.txt"), Kind::File);
    file.size = 5;
    send(Body::RecordPending {
        pending: vec![Pending {
            path: path("new.txt"),
            op: PlannedOp::Create,
            kind: Some(Kind::File),
            size: 5,
        }],
        replace: true,
    });
    send(Body::Apply {
        ops: vec![(
            Op::Mkdir {
                entry: Entry::bare(path("newdir"), Kind::Dir),
            },
            None,
        )],
        parallel: false,
    });
    send(Body::FileWhole {
        job: FileJob {
            id: 7,
            entry: file,
            basis: None,
        },
        data: b"hello".to_vec(),
        compressed: false,
        end: SourceEnd::Complete {
            hash: *blake3::hash(b"hello").as_bytes(),
            xattrs: None,
        },
    });
    send(Body::SinkWait);

    let mut answers = Vec::new();
    while answers.len() < 4 {
        answers.push(receive());
    }
    drop(immutable);
    let refusal = "nothing is changed after the run's pending records could not be written";
    match &answers[0] {
        Body::Failed(why) => assert!(!why.contains(refusal), "{why}"),
        other => panic!("recording pending rows did not fail: {other:?}"),
    }
    match &answers[1] {
        Body::Failed(why) => assert!(why.contains(refusal), "{why}"),
        other => panic!("the operations were not refused: {other:?}"),
    }
    match &answers[2] {
        Body::FileResult {
            id: 7,
            result: Err(failure),
        } => {
            assert!(failure.message.contains(refusal), "{}", failure.message)
        }
        other => panic!("the file was not refused: {other:?}"),
    }
    assert!(matches!(answers[3], Body::Done), "{:?}", answers[3]);
    assert!(!far.join("newdir").exists(), "a directory was made");
    assert!(!far.join("new.txt").exists(), "a file was written");
    drop(to);
    let _ = child.wait();
}
