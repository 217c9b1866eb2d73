//! Many peers (DESIGN.md, "Many peers"): concurrent sessions on one root,
//! session locks, loop refusal through lineage, and `status`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

fn sync(verb: &str, local: &Path, remote: &str, extra: &[&str]) -> Output {
    Command::new(bin())
        .arg(verb)
        .args(extra)
        .arg(local)
        .arg(remote)
        .output()
        .expect("run snapsync")
}

fn s(path: &Path) -> String {
    path.to_str().unwrap().to_string()
}

/// `--rsh` arguments that reach `path` through the shim, as a far end.
fn far(shim: &Path, path: &Path) -> (Vec<String>, String) {
    (
        vec![
            "--rsh".into(),
            s(shim),
            "--remote-command".into(),
            s(&bin()),
        ],
        format!("far.example:{}", path.display()),
    )
}

#[track_caller]
fn assert_refused_loop(out: &Output) {
    assert_code(out, 1);
    let err = stderr(out);
    assert!(
        err.contains("flow back into its own upstream") && err.contains("→"),
        "{err}"
    );
}

#[test]
fn a_session_back_into_its_upstream_is_refused() {
    let (_tmp, d) = roots(&["a", "b", "c"]);
    let (a, b, c) = (&d[0], &d[1], &d[2]);
    write(a, "f", b"from a");
    assert_code(&sync("push", a, &s(b), &[]), 0);
    // B → A directly: refused before anything is touched.
    write(b, "new-in-b", b"b");
    let out = sync("push", b, &s(a), &[]);
    assert_refused_loop(&out);
    assert!(!a.join("new-in-b").exists());
    // The same loop as a pull from A's side.
    assert_refused_loop(&sync("pull", a, &s(b), &[]));
    // A chain: A → B, B → C, then C → A (as a push from C, or a pull into A).
    assert_code(&sync("push", b, &s(c), &[]), 0);
    assert_refused_loop(&sync("push", c, &s(a), &[]));
    assert_refused_loop(&sync("pull", a, &s(c), &[]));
    assert!(!a.join("new-in-b").exists());
    // Further down the chain is fine, and so is running the sessions again.
    let (_tmp2, e) = roots(&["d"]);
    assert_code(&sync("push", c, &s(&e[0]), &[]), 0);
    assert_code(&sync("push", a, &s(b), &[]), 0);
    assert_code(&sync("push", b, &s(c), &[]), 0);
}

#[test]
fn one_bidi_session_is_no_loop_but_a_second_way_back_is() {
    let (_tmp, d) = roots(&["a", "b", "c"]);
    let (a, b, c) = (&d[0], &d[1], &d[2]);
    write(a, "f", b"x");
    assert_code(&sync("bidi", a, &s(b), &[]), 0);
    assert_code(&sync("bidi", a, &s(b), &[]), 0);
    // A push between the same roots would be a second way back.
    assert_refused_loop(&sync("push", b, &s(a), &["-N", "other"]));
    // Fed from the bidi pair into C is fine; C back into A is not.
    assert_code(&sync("push", b, &s(c), &[]), 0);
    assert_refused_loop(&sync("push", c, &s(a), &[]));
}

#[test]
fn loops_are_found_through_far_ends_too() {
    let (tmp, d) = roots(&["a", "b", "c"]);
    let (a, b, c) = (&d[0], &d[1], &d[2]);
    let shim = rsh_shim(tmp.path());
    write(a, "f", b"x");
    // A → B over the protocol, then B → C locally: B learned A → B there.
    let (rsh, remote) = far(&shim, b);
    let args: Vec<&str> = rsh.iter().map(String::as_str).collect();
    assert_code(&sync("push", a, &remote, &args), 0);
    assert_code(&sync("push", b, &s(c), &[]), 0);
    // C → A with A as the far end: C knows A → B → C.
    let (rsh, remote) = far(&shim, a);
    let args: Vec<&str> = rsh.iter().map(String::as_str).collect();
    assert_refused_loop(&sync("push", c, &remote, &args));
}

/// Starts a push that takes a while: many files, to an empty target.
fn slow_push(src: &Path, dst: &Path, session: &str) -> Child {
    Command::new(bin())
        .args(["push", "-N", session])
        .arg(src)
        .arg(dst)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until `status --json` for `root` says `session` is running.
fn wait_running(root: &Path, session: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new(bin())
            .args(["status", "--json"])
            .arg(root)
            .output()
            .unwrap();
        // Exit 1 until the run has made the state directory.
        let list: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|_| serde_json::json!([]));
        if let Some(entry) = list
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["session"] == session && e["running"] == true)
        {
            return entry.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{session} never showed as running"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_running_session_cannot_start_twice_and_status_shows_it() {
    let (_tmp, d) = roots(&["src", "dst"]);
    let (src, dst) = (&d[0], &d[1]);
    generate_tree(src, 7, 3000, 1000, 20_000);
    let mut first = slow_push(src, dst, "busy");
    let running = wait_running(src, "busy");
    let pid = first.id().to_string();
    assert_eq!(running["pid"], pid.as_str());
    let out = sync("push", src, &s(dst), &["-N", "busy"]);
    let finished_first = first.try_wait().unwrap().is_some();
    if !finished_first {
        assert_code(&out, 1);
        let err = stderr(&out);
        assert!(err.contains("`busy`") && err.contains(&pid), "{err}");
    }
    assert!(first.wait().unwrap().success());
    assert_same_tree(src, dst);

    // status after the run: peer, direction, last run, counts.
    let out = Command::new(bin())
        .args(["status", "--json"])
        .arg(src)
        .output()
        .unwrap();
    assert_code(&out, 0);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["session"] == "busy")
        .unwrap()
        .clone();
    assert_eq!(entry["direction"], "push");
    assert_eq!(entry["running"], false);
    assert_eq!(entry["peer"], s(dst).as_str());
    assert_eq!(entry["last_run"]["result"], "complete");
    assert!(entry["last_run"]["created"].as_u64().unwrap() >= 3000);
    assert!(entry["counts"]["synced"].as_u64().unwrap() >= 3000);
    let dst_id = fs::read_to_string(dst.join(".snapsync/id")).unwrap();
    assert_eq!(entry["downstream"], serde_json::json!([dst_id.trim()]));
    // The text form names the session and the peer.
    let out = Command::new(bin()).arg("status").arg(src).output().unwrap();
    assert_code(&out, 0);
    assert!(stdout(&out).contains("busy\tpush with"), "{}", stdout(&out));
}

#[test]
fn a_lock_left_by_a_killed_process_is_taken_over_with_a_warning() {
    let (_tmp, d) = roots(&["src", "dst"]);
    let (src, dst) = (&d[0], &d[1]);
    generate_tree(src, 3, 3000, 1000, 20_000);
    let mut first = slow_push(src, dst, "killed");
    wait_running(src, "killed");
    first.kill().unwrap();
    first.wait().unwrap();
    let out = sync("push", src, &s(dst), &["-N", "killed"]);
    assert_code(&out, 0);
    let err = stderr(&out);
    assert!(
        err.contains("left locked by process") && err.contains("taking it over"),
        "{err}"
    );
    assert_same_tree(src, dst);
    // A lock released normally leaves nothing to warn about.
    let out = sync("push", src, &s(dst), &["-N", "killed"]);
    assert_code(&out, 0);
    assert!(!stderr(&out).contains("left locked"), "{}", stderr(&out));
}

/// One source pushed to four targets at once, two local and two through
/// the protocol, while the source keeps changing; after the writer stops,
/// one more run each, and every target equals the source.
#[test]
fn fan_out_to_four_targets_while_the_source_changes() {
    let (tmp, d) = roots(&["src", "t1", "t2", "t3", "t4"]);
    let src = d[0].clone();
    let shim = rsh_shim(tmp.path());
    generate_tree(&src, 11, 400, 100, 20_000);
    let targets: Vec<(Vec<String>, String, PathBuf)> = d[1..]
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if i % 2 == 0 {
                (Vec::new(), s(t), t.clone())
            } else {
                let (rsh, remote) = far(&shim, t);
                (rsh, remote, t.clone())
            }
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (src, stop) = (src.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                write(
                    &src,
                    &format!("live/f{}", n % 50),
                    format!("version {n}").as_bytes(),
                );
                if n.is_multiple_of(7) {
                    let _ = fs::remove_file(src.join(format!("live/f{}", (n + 3) % 50)));
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let run_all = || {
        let children: Vec<Child> = targets
            .iter()
            .map(|(rsh, remote, _)| {
                Command::new(bin())
                    .arg("push")
                    .args(rsh)
                    .arg(&src)
                    .arg(remote)
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect::<Vec<Output>>()
    };
    for _ in 0..3 {
        for out in run_all() {
            // Files changing under a run may fail (exit 3), never worse.
            let code = out.status.code();
            assert!(
                code == Some(0) || code == Some(3),
                "{code:?}: {}",
                stderr(&out)
            );
        }
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    for out in run_all() {
        assert_code(&out, 0);
    }
    for (_, _, target) in &targets {
        assert_same_tree(&src, target);
    }
    // Four sessions recorded on the source, each with its own snapshot.
    let out = Command::new(bin())
        .args(["status", "--json"])
        .arg(&src)
        .output()
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 4, "{list}");
}

/// Two sources pushed into one target directory: each session keeps its
/// own snapshot, and whatever one overwrites or deletes of the other's
/// since its own last run is reported on stderr, not lost silently. A
/// session's first run has no last run to tell drift by: it makes the
/// target equal to its source, naming nothing.
#[test]
fn two_sources_into_one_target_report_what_they_overwrite() {
    let (_tmp, d) = roots(&["s1", "s2", "t"]);
    let (s1, s2, t) = (&d[0], &d[1], &d[2]);
    // Different sizes: on a first run only size and mtime tell files
    // apart, and two writes can share an mtime tick.
    write(s1, "shared", b"from s1");
    write(s1, "only-s1", b"1");
    write(s2, "shared", b"from the second source");
    write(s2, "only-s2", b"2");
    let out = sync("push", s1, &s(t), &["-N", "one"]);
    assert_code(&out, 0);
    assert!(!stderr(&out).contains("changed since"), "{}", stderr(&out));
    let out = sync("push", s2, &s(t), &["-N", "two"]);
    assert_code(&out, 0);
    assert!(!stderr(&out).contains("changed since"), "{}", stderr(&out));
    assert_eq!(read(t, "shared"), b"from the second source");
    assert_same_tree(s2, t);
    // Back to the first: its snapshot is its own, and it names what the
    // second wrote since.
    let out = sync("push", s1, &s(t), &["-N", "one"]);
    assert_code(&out, 0);
    let err = stderr(&out);
    assert!(
        err.contains("shared on the target changed since this session's last run")
            && err.contains("replaced by the source's version"),
        "{err}"
    );
    assert!(
        err.contains("only-s2 on the target changed") && err.contains("deleted"),
        "{err}"
    );
    assert_eq!(read(t, "shared"), b"from s1");
    assert_same_tree(s1, t);
    // And the second, now that it has a last run, the same.
    let out = sync("push", s2, &s(t), &["-N", "two"]);
    assert_code(&out, 0);
    let err = stderr(&out);
    assert!(err.contains("shared on the target changed"), "{err}");
    assert!(err.contains("only-s1 on the target changed"), "{err}");
    assert_same_tree(s2, t);
    // With --no-delete each keeps the other's files.
    assert_code(&sync("push", s1, &s(t), &["-N", "one", "--no-delete"]), 0);
    assert_eq!(read(t, "only-s1"), b"1");
    assert_eq!(read(t, "only-s2"), b"2");
}
