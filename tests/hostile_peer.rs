//! Hostile or broken peers (DESIGN.md, "Wire protocol" and "Paths"): frames
//! claiming huge sizes, truncated frames, garbage, paths that leave the root,
//! writes through a symlink that leaves the root, content that does not match
//! its hash. Each ends the session (or the one file) with a clear error, never
//! a panic, and nothing is written outside the near root.
//!
//! The far end is `examples/fake_peer.rs`, a man in the middle in front of
//! the real `snapsync serve`, reached through a shim `--rsh` that drops the
//! host and runs the rest locally.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use snapsync::changes::DiffOptions;
use snapsync::filter::{Filters, RuleKind, RuleSpec};
use snapsync::model::RelPath;
use snapsync::protocol::{write_message, Body, Envelope, LAST};

/// No single run may take longer than this; a hang is a failure.
const LIMIT: Duration = Duration::from_secs(30);

/// A temporary directory holding the near root, the far root, a directory
/// outside both, and the shim.
struct Scene {
    _dir: tempfile::TempDir,
    base: PathBuf,
    near: PathBuf,
    far: PathBuf,
    outside: PathBuf,
    shim: PathBuf,
}

impl Scene {
    /// `source_is_far`: the files to sync start on the far side (a pull).
    fn new(source_is_far: bool) -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let (near, far, outside) = (base.join("near"), base.join("far"), base.join("outside"));
        for d in [&near, &far, &outside] {
            fs::create_dir(d).unwrap();
        }
        let shim = base.join("shim.sh");
        fs::write(&shim, "#!/bin/sh\nshift\nexec \"$@\"\n").unwrap();
        fs::set_permissions(&shim, fs::Permissions::from_mode(0o755)).unwrap();
        let source = if source_is_far { &far } else { &near };
        write(source, "a.txt", b"alpha\n");
        write(source, "sub/b.txt", b"bravo\n");
        write(source, "sub/big.dat", &Rng::new(7).bytes(300_000));
        Scene {
            _dir: dir,
            base,
            near,
            far,
            outside,
            shim,
        }
    }

    /// Runs `snapsync DIRECTION near host:far` through the fake peer in `mode`.
    fn run(&self, direction: &str, mode: &str) -> Output {
        let remote_command = shell_words::join([
            example("fake_peer").to_str().unwrap(),
            mode,
            bin().to_str().unwrap(),
        ]);
        let mut cmd = Command::new(bin());
        cmd.arg(direction)
            .arg("--rsh")
            .arg(&self.shim)
            .args(["--remote-command", &remote_command])
            .arg(&self.near)
            .arg(format!("fakehost:{}", self.far.display()))
            .env("FAKE_PEER_OUTSIDE", &self.outside)
            .env_remove("SNAPSYNC_LOG");
        output_within(cmd, &[])
    }

    fn pull(&self, mode: &str) -> Output {
        self.run("pull", mode)
    }

    fn push(&self, mode: &str) -> Output {
        self.run("push", mode)
    }

    /// Nothing was written outside the two roots: the outside directory is
    /// empty and the scene directory holds only what it was made with (so
    /// `near/../escape` does not exist).
    #[track_caller]
    fn assert_nothing_outside(&self) {
        let outside: Vec<_> = fs::read_dir(&self.outside).unwrap().collect();
        assert!(outside.is_empty(), "written outside the root: {outside:?}");
        let names: BTreeSet<OsString> = fs::read_dir(&self.base)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        let expected: BTreeSet<OsString> = ["far", "near", "outside", "shim.sh"]
            .into_iter()
            .map(OsString::from)
            .collect();
        assert_eq!(names, expected, "written beside the roots");
    }
}

/// Runs `cmd` with `input` on its stdin; panics if it takes longer than
/// [`LIMIT`] (a hang is a failure too).
fn output_within(mut cmd: Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the command");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    // The peer may stop reading early: a broken pipe here is expected.
    thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let (tx, rx) = mpsc::channel();
    for (n, mut pipe) in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ]
    .into_iter()
    .enumerate()
    {
        let tx = tx.clone();
        thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            let _ = tx.send((n, bytes));
        });
    }
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {LIMIT:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let mut pipes = [Vec::new(), Vec::new()];
    for _ in 0..2 {
        let left = LIMIT.saturating_sub(start.elapsed()) + Duration::from_secs(2);
        let (n, bytes) = rx
            .recv_timeout(left)
            .expect("the output pipes close (no process left holding them)");
        pipes[n] = bytes;
    }
    let [stdout, stderr] = pipes;
    Output {
        status,
        stdout,
        stderr,
    }
}

/// Exit `code`, `needle` in the error message, and no panic anywhere (the
/// far end's stderr goes to the same place).
#[track_caller]
fn assert_refused(out: &Output, code: i32, needle: &str) {
    assert_code(out, code);
    let err = stderr(out);
    assert!(err.contains("snapsync: error:"), "no error message: {err}");
    assert!(
        err.contains(needle),
        "stderr does not say {needle:?}: {err}"
    );
    assert!(!err.contains("panicked"), "a panic: {err}");
}

/// Regular files below `root`, by relative path, not following symlinks,
/// without `.snapsync/`. Temporary names are included: none may be left.
fn files(root: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for item in fs::read_dir(&dir).unwrap() {
            let item = item.unwrap();
            let kind = item.file_type().unwrap();
            if dir == root && item.file_name() == ".snapsync" {
                continue;
            }
            if kind.is_dir() {
                stack.push(item.path());
            } else if kind.is_file() {
                out.insert(item.path().strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    out
}

/// Every file the target holds under a real name is a complete copy of the
/// source's, and no temporary file is left behind.
#[track_caller]
fn assert_no_partial_files(target: &Path, source: &Path) {
    for rel in files(target) {
        let name = rel.file_name().unwrap().as_bytes();
        assert!(
            !name.starts_with(b".snapsync-tmp-"),
            "temporary file left: {rel:?}"
        );
        let copy = fs::read(target.join(&rel)).unwrap();
        let original = fs::read(source.join(&rel));
        assert!(
            original.as_ref().is_ok_and(|o| *o == copy),
            "{rel:?} in the target is not a complete copy of the source's"
        );
    }
}

#[track_caller]
fn assert_no_files(root: &Path) {
    let found = files(root);
    assert!(found.is_empty(), "files were written: {found:?}");
}

// ---------------------------------------------------------------------------

/// The harness itself: through the fake peer without tampering, both
/// directions sync as usual (so the failures below come from the tampering).
#[test]
fn the_fake_peer_relays_faithfully() {
    let scene = Scene::new(true);
    let out = scene.pull("relay");
    assert_code(&out, 0);
    assert_same_tree(&scene.far, &scene.near);

    let scene = Scene::new(false);
    let out = scene.push("relay");
    assert_code(&out, 0);
    assert_same_tree(&scene.near, &scene.far);
}

/// A far end speaking another protocol is refused, naming both versions.
#[test]
fn an_incompatible_far_end_is_refused_naming_both_versions() {
    let scene = Scene::new(false);
    let before = tree(&scene.near);
    let out = scene.push("other-protocol");
    assert_refused(&out, 1, "protocol mismatch");
    let err = stderr(&out);
    assert!(
        err.contains("protocol 99") && err.contains("9.9.9"),
        "{err}"
    );
    assert!(
        err.contains(&format!("protocol {}", snapsync::PROTOCOL_VERSION))
            && err.contains(env!("CARGO_PKG_VERSION")),
        "{err}"
    );
    assert_eq!(tree(&scene.near), before);
}

/// A frame header claiming 4 GiB is refused before anything is allocated
/// or read.
#[test]
fn a_frame_claiming_4_gib_ends_the_session() {
    let scene = Scene::new(true);
    let out = scene.pull("huge-frame");
    assert_refused(&out, 1, "frame of 4294967295 bytes");
    assert_no_files(&scene.near);
    scene.assert_nothing_outside();

    let scene = Scene::new(false);
    let before = tree(&scene.near);
    let out = scene.push("huge-frame");
    assert_refused(&out, 1, "frame of 4294967295 bytes");
    assert_no_files(&scene.far);
    assert_eq!(tree(&scene.near), before, "the source was changed");
    scene.assert_nothing_outside();
}

/// The far end dies halfway through a file's data frame: the session ends,
/// and the file is not left under its real name, nor as a temporary file.
#[test]
fn a_truncated_frame_ends_the_session_without_partial_files() {
    let scene = Scene::new(true);
    let out = scene.pull("truncated");
    assert_refused(&out, 1, "closed inside a frame");
    assert_no_files(&scene.near);
    scene.assert_nothing_outside();
}

/// A frame of random bytes instead of the scan's answer.
#[test]
fn garbage_instead_of_a_reply_ends_the_session() {
    let scene = Scene::new(true);
    let out = scene.pull("garbage");
    assert_refused(&out, 1, "does not decode");
    assert_no_files(&scene.near);
    scene.assert_nothing_outside();

    let scene = Scene::new(false);
    let out = scene.push("garbage");
    assert_refused(&out, 1, "does not decode");
    assert_no_files(&scene.far);
    scene.assert_nothing_outside();
}

/// A change named `../escape` does not decode: the session ends before
/// anything is planned.
#[test]
fn a_dotdot_path_ends_the_session() {
    let scene = Scene::new(true);
    let out = scene.pull("dotdot-path");
    assert_refused(&out, 1, "path ../escape has a `.` or `..` component");
    assert_no_files(&scene.near);
    scene.assert_nothing_outside();
}

/// A change named with an absolute path (into the outside directory).
#[test]
fn an_absolute_path_ends_the_session() {
    let scene = Scene::new(true);
    let out = scene.pull("absolute-path");
    assert_refused(&out, 1, "is absolute");
    assert_no_files(&scene.near);
    scene.assert_nothing_outside();
}

/// A change whose name holds a NUL byte.
#[test]
fn a_path_with_nul_ends_the_session() {
    let scene = Scene::new(true);
    let out = scene.pull("nul-path");
    assert_refused(&out, 1, "contains a NUL byte");
    assert_no_files(&scene.near);
    scene.assert_nothing_outside();
}

/// The far end claims a symlink `link -> <outside>` and a file `link/evil`,
/// and streams `evil` with a correct hash. The link itself may be replicated
/// (it is just a link), but `evil` is refused, not written outside: once
/// with a fresh target, once with the link already there.
#[test]
fn writing_through_a_symlink_that_leaves_the_root_is_refused() {
    for link_already_there in [false, true] {
        let scene = Scene::new(true);
        if link_already_there {
            symlink(&scene.outside, scene.near.join("link")).unwrap();
        }
        let out = scene.pull("symlink-escape");
        assert_refused(&out, 3, "link/evil: refusing to write through symlink link");
        scene.assert_nothing_outside();
        assert_no_partial_files(&scene.near, &scene.far);
        // The honest files arrived; `evil` went nowhere.
        assert_eq!(
            read(&scene.near, "sub/big.dat"),
            read(&scene.far, "sub/big.dat")
        );
        assert!(files(&scene.near).iter().all(|p| !p.ends_with("evil")));
    }
}

/// Content that does not match the hash the far end announces is not
/// installed: each file fails on its own (exit 3), none is left behind.
#[test]
fn content_that_does_not_match_its_hash_is_not_installed() {
    let scene = Scene::new(true);
    let out = scene.pull("wrong-hash");
    assert_refused(&out, 3, "content hash does not match");
    let err = stderr(&out);
    for name in ["a.txt", "sub/b.txt", "sub/big.dat"] {
        assert!(
            err.contains(&format!("{name}: ")),
            "{name} not listed: {err}"
        );
    }
    assert_no_files(&scene.near);
    scene.assert_nothing_outside();
}

/// The far end's own side: `snapsync serve` fed garbage by a near end exits
/// with an error message, not a panic and not a hang.
#[test]
fn serve_survives_garbage_input() {
    let frame = |body: Body| {
        let mut bytes = Vec::new();
        write_message(&mut bytes, &Envelope { call: 1, body }).unwrap();
        bytes
    };
    let hello = frame(Body::Hello {
        protocol: snapsync::PROTOCOL_VERSION,
        version: "test".into(),
        capabilities: vec![],
    });
    // A lookup of `../etc/passwd`, built from one of `xx/etc/passwd`.
    let mut dotdot = frame(Body::Lookup(vec![RelPath::new(b"xx/etc/passwd").unwrap()]));
    let at = dotdot.len() - b"xx/etc/passwd".len();
    dotdot[at..at + 2].copy_from_slice(b"..");

    // A scan whose filter pattern is too large to compile (300,000 `?`),
    // built from one with the pattern `QQQQ`.
    let huge_pattern = {
        let filters = Filters::new(&[RuleSpec {
            kind: RuleKind::Exclude,
            pattern: "QQQQ".into(),
        }])
        .unwrap();
        let options = DiffOptions {
            filters,
            ..DiffOptions::default()
        };
        let mut message = frame(Body::Scan(options))[5..].to_vec();
        let short = [&4u64.to_le_bytes()[..], b"QQQQ"].concat();
        let at = message
            .windows(short.len())
            .position(|w| w == short)
            .unwrap();
        let long = "?".repeat(300_000);
        let long = [&(long.len() as u64).to_le_bytes()[..], long.as_bytes()].concat();
        message.splice(at..at + short.len(), long);
        let mut bytes = (message.len() as u32).to_be_bytes().to_vec();
        bytes.push(LAST);
        bytes.extend_from_slice(&message);
        bytes
    };

    let mut random = Rng::new(99).bytes(64 * 1024);
    random[..5].copy_from_slice(&[0, 0, 0x10, 0, LAST]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("random bytes", random.clone(), "does not decode"),
        (
            "a 4 GiB frame",
            vec![0xff, 0xff, 0xff, 0xff, LAST],
            "frame of",
        ),
        (
            "a truncated frame",
            vec![0, 0, 0, 16, LAST, 1, 2, 3],
            "inside a frame",
        ),
        ("an unknown flag", vec![0, 0, 0, 0, 7], "unknown flag 7"),
        (
            "garbage after the hello",
            [&hello[..], &random].concat(),
            "does not decode",
        ),
        (
            "a path with `..`",
            [&hello[..], &dotdot].concat(),
            "`..` component",
        ),
        (
            "a filter pattern too large to compile",
            [&hello[..], &huge_pattern].concat(),
            "filter pattern",
        ),
    ];
    for (what, input, needle) in cases {
        let mut cmd = Command::new(bin());
        cmd.arg("serve").env_remove("SNAPSYNC_LOG");
        let out = output_within(cmd, &input);
        let err = stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{what}: exit code; stderr: {err}"
        );
        assert!(
            err.contains("snapsync: error: serve:") && err.contains(needle),
            "{what}: stderr does not say {needle:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{what}: a panic: {err}");
    }
}
