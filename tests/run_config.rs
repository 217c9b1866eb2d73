//! `snapsync run`: sessions defined in a TOML config file, run by name
//! through the real binary, alone or several at once.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

/// A temp dir holding `config.toml` and the trees its sessions name.
struct Setup {
    tmp: tempfile::TempDir,
}

impl Setup {
    fn new(config: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("config.toml"), config).unwrap();
        Setup { tmp }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn config(&self) -> PathBuf {
        self.path("config.toml")
    }

    /// `snapsync run --config DIR/config.toml ARGS`, from `/`, so relative
    /// roots in the file can only be found relative to the file.
    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(bin());
        cmd.arg("run")
            .arg("--config")
            .arg(self.config())
            .args(args)
            .current_dir("/");
        finish(cmd)
    }
}

/// Runs `cmd`, failing the test (instead of hanging it) after 60 s.
fn finish(mut cmd: Command) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run snapsync");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(output) => output.expect("wait for snapsync"),
        Err(_) => {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("snapsync did not finish within 60 s");
        }
    }
}

/// Files of the state dir of `root` (`a.db`, `a.lock`, `id`, ...).
fn state_files(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(root.join(".snapsync"))
        .map(|dir| {
            dir.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn has(names: &[String], name: &str) -> bool {
    names.iter().any(|n| n == name)
}

/// The JSON objects printed on stdout, one per line, keyed by `session`.
fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    stdout(out)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect()
}

const TWO_PUSHES: &str = r#"
# Two sources, two targets, and a third session fanning out from s1.
[a]
direction = "push"
local = "s1"
remote = "d1"

[b]
direction = "push"
local = "s2"
remote = "d2"

[c]
direction = "push"
local = "s1"
remote = "d3"
"#;

#[test]
fn named_sessions_run_together_each_with_its_own_snapshot_and_lock() {
    let setup = Setup::new(TWO_PUSHES);
    let (s1, s2) = (setup.path("s1"), setup.path("s2"));
    write(&s1, "one/a.txt", b"a");
    write(&s2, "b.txt", b"bb");

    let out = setup.run(&["a", "b", "--json"]);
    assert_code(&out, 0);
    assert_same_tree(&s1, &setup.path("d1"));
    assert_same_tree(&s2, &setup.path("d2"));
    assert!(!setup.path("d3").exists(), "c was not named");
    // With several sessions each JSON summary says whose it is.
    let mut sessions: Vec<String> = json_lines(&out)
        .iter()
        .map(|v| {
            assert!(count(v, "created") >= 1, "{v}");
            v["session"].as_str().expect("a session key").to_string()
        })
        .collect();
    sessions.sort();
    assert_eq!(sessions, ["a", "b"]);

    // Each session keeps its own snapshot and lock, under its own name.
    let (state1, state2) = (state_files(&s1), state_files(&s2));
    assert!(has(&state1, "a.db") && has(&state1, "a.lock"), "{state1:?}");
    assert!(!has(&state1, "b.db"), "{state1:?}");
    assert!(has(&state2, "b.db") && has(&state2, "b.lock"), "{state2:?}");
    assert!(!has(&state2, "a.db"), "{state2:?}");
    assert!(has(&state_files(&setup.path("d1")), "a.db"));

    // --all runs every session in the file; human lines name their session.
    write(&s1, "new.txt", b"new");
    write(&s2, "b.txt", b"changed");
    let out = setup.run(&["--all"]);
    assert_code(&out, 0);
    assert_same_tree(&s1, &setup.path("d1"));
    assert_same_tree(&s2, &setup.path("d2"));
    assert_same_tree(&s1, &setup.path("d3"));
    let text = stdout(&out);
    for name in ["a", "b", "c"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("[{name}] created"))),
            "{text}"
        );
    }
    let state1 = state_files(&s1);
    assert!(has(&state1, "a.db") && has(&state1, "c.db"), "{state1:?}");
}

#[test]
fn the_worst_exit_code_wins_and_the_other_sessions_still_run() {
    let setup = Setup::new(TWO_PUSHES);
    write(&setup.path("s1"), "a.txt", b"a");
    // s2 is missing: session b fails (exit 1), a still syncs.
    let out = setup.run(&["a", "b"]);
    assert_code(&out, 1);
    assert_same_tree(&setup.path("s1"), &setup.path("d1"));
    assert!(
        stderr(&out)
            .lines()
            .any(|l| l.starts_with("[b] snapsync: error:")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn dry_run_from_the_command_line_changes_nothing() {
    // The file asks for continuous mode; `-n` on the command line wins
    // over it (they cannot go together) and the run ends.
    let setup = Setup::new(
        "[site]\ndirection = \"push\"\nlocal = \"src\"\nremote = \"dst\"\ncontinuous = true\n",
    );
    let (src, dst) = (setup.path("src"), setup.path("dst"));
    write(&src, "a.txt", b"a");
    assert_code(&push(&src, &dst, &["-N", "site"]), 0);
    write(&src, "b.txt", b"b");
    fs::remove_file(src.join("a.txt")).unwrap();
    let before = tree(&dst);
    let snapshot = fs::read(src.join(".snapsync/site.db")).unwrap();

    let out = setup.run(&["site", "-n", "--json"]);
    assert_code(&out, 0);
    assert_eq!(tree(&dst), before, "a dry run changes nothing");
    assert_eq!(fs::read(src.join(".snapsync/site.db")).unwrap(), snapshot);
    // One session: the plain command's output, no session key.
    let mut via_run = summary(&out);
    let mut plain = push_json(&src, &dst, &["-n", "-N", "site"]);
    assert!(via_run.get("session").is_none(), "{via_run}");
    assert_eq!(via_run["plan"].as_array().unwrap().len(), 2, "{via_run}");
    via_run["seconds"] = 0.into();
    plain["seconds"] = 0.into();
    assert_eq!(via_run, plain);
}

#[test]
fn command_line_options_replace_the_files_values_lists_included() {
    let setup = Setup::new(
        "[site]\ndirection = \"push\"\nlocal = \"src\"\nremote = \"dst\"\n\
         include = [\"keep.tmp\"]\nexclude = [\"*.tmp\"]\n",
    );
    let (src, dst) = (setup.path("src"), setup.path("dst"));
    for name in ["keep.tmp", "drop.tmp", "x.log", "x.txt"] {
        write(&src, name, name.as_bytes());
    }
    // The file's rules, in the order of their keys: include, then exclude.
    let out = setup.run(&["site", "-n", "--json"]);
    assert_code(&out, 0);
    let plan = summary(&out)["plan"].to_string();
    assert!(
        plan.contains("keep.tmp") && plan.contains("x.log"),
        "{plan}"
    );
    assert!(!plan.contains("drop.tmp"), "{plan}");

    // --exclude on the command line replaces the file's exclude list.
    let out = setup.run(&["site", "--exclude", "*.log"]);
    assert_code(&out, 0);
    let names: Vec<String> = tree(&dst)
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    assert_eq!(names, ["drop.tmp", "keep.tmp", "x.txt"]);
}

#[test]
fn a_session_reaches_its_remote_root_through_rsh_from_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let shim = rsh_shim(tmp.path());
    let far = tmp.path().join("far");
    let config = format!(
        "[far]\ndirection = \"push\"\nlocal = \"src\"\nremote = \"far.example:{}\"\n\
         rsh = \"{}\"\nremote-command = \"{}\"\n",
        far.display(),
        shim.display(),
        bin().display()
    );
    fs::write(tmp.path().join("config.toml"), config).unwrap();
    let src = tmp.path().join("src");
    write(&src, "a/b.txt", b"over the wire");
    let setup = Setup { tmp };
    let out = setup.run(&["far"]);
    assert_code(&out, 0);
    assert_same_tree(&src, &far);
    assert!(
        setup.path("far.pid").exists(),
        "the far end was started through the shim"
    );
    assert!(has(&state_files(&far), "far.db"));
}

#[test]
fn a_bidi_session_from_the_file_carries_both_ways_and_reports_conflicts() {
    let setup = Setup::new(
        "[both]\ndirection = \"bidi\"\nlocal = \"here\"\nremote = \"there\"\n\
         [clean]\ndirection = \"push\"\nlocal = \"src\"\nremote = \"dst\"\n",
    );
    let (here, there) = (setup.path("here"), setup.path("there"));
    write(&here, "from-here", b"1");
    write(&there, "from-there", b"2");
    write(&here, "shared", b"base");
    assert_code(&setup.run(&["both"]), 0);
    assert_eq!(read(&here, "from-there"), b"2");
    assert_eq!(read(&there, "from-here"), b"1");

    // Edited differently on both sides: a conflict (4), which outranks
    // the clean push's 0; the clean session still ran.
    write(&here, "shared", b"edited here");
    write(&there, "shared", b"edited there, differently");
    write(&setup.path("src"), "x", b"x");
    let out = setup.run(&["both", "clean"]);
    assert_code(&out, 4);
    assert_eq!(read(&here, "shared"), b"edited here");
    assert_eq!(read(&there, "shared"), b"edited there, differently");
    assert_same_tree(&setup.path("src"), &setup.path("dst"));
    assert_stderr_says(&out, "[both] snapsync: conflict: shared");
}

/// Runs `config` and expects a usage error whose message starts with
/// `config.toml:LINE:` (or `config.toml:` when `line` is None) and holds
/// every one of `words`; nothing may have run.
#[track_caller]
fn assert_usage_error(config: &str, args: &[&str], line: Option<usize>, words: &[&str]) {
    let setup = Setup::new(config);
    write(&setup.path("src"), "a", b"a");
    let out = setup.run(args);
    assert_code(&out, 2);
    let err = stderr(&out);
    let file = setup.config().display().to_string();
    let head = match line {
        Some(line) => format!("snapsync: error: {file}:{line}: "),
        None => format!("snapsync: error: {file}: "),
    };
    assert!(err.starts_with(&head), "expected `{head}`:\n{err}");
    for word in words {
        assert!(err.contains(word), "expected {word:?} in:\n{err}");
    }
    assert!(!setup.path("dst").exists(), "nothing ran:\n{err}");
}

const SITE: &str = "[site]\ndirection = \"push\"\nlocal = \"src\"\nremote = \"dst\"\n";

#[test]
fn mistakes_in_the_file_are_usage_errors_naming_file_line_and_key() {
    // Line 7: an unknown key (with a suggestion).
    assert_usage_error(
        &format!("# sessions\n\n{SITE}exclud = [\"*.tmp\"]\n"),
        &["site"],
        Some(7),
        &[
            "unknown key \"exclud\"",
            "[site]",
            "did you mean \"exclude\"",
        ],
    );
    // A wrong type: a string for a flag, a boolean for a list.
    assert_usage_error(
        &format!("{SITE}checksum = true\nno-delete = \"yes\"\n"),
        &["site"],
        Some(6),
        &["\"no-delete\"", "true or false"],
    );
    assert_usage_error(
        &format!("{SITE}exclude = true\n"),
        &["site"],
        Some(5),
        &["\"exclude\"", "list"],
    );
    // A value the option refuses.
    assert_usage_error(
        &format!("{SITE}\nlinks = \"sideways\"\n"),
        &["site"],
        Some(6),
        &["\"links\"", "sideways"],
    );
    // A TOML syntax error.
    assert_usage_error(
        &format!("{SITE}exclude = [\"*.tmp\"\n\n[other]\n"),
        &["site"],
        Some(7),
        &["syntax error"],
    );
    // A missing required key, and an unknown direction.
    assert_usage_error(
        "\n\n[site]\ndirection = \"push\"\nlocal = \"src\"\n",
        &["site"],
        Some(3),
        &["[site]", "\"remote\""],
    );
    assert_usage_error(
        "[site]\nlocal = \"src\"\nremote = \"dst\"\ndirection = \"sideways\"\n",
        &["site"],
        Some(4),
        &["\"direction\"", "sideways"],
    );
    // A session the file does not define.
    assert_usage_error(SITE, &["site", "nosuch"], None, &["\"nosuch\"", "site"]);
}

#[test]
fn a_missing_config_file_is_a_usage_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope.toml");
    let mut cmd = Command::new(bin());
    cmd.args(["run", "site", "--config"]).arg(&missing);
    let out = finish(cmd);
    assert_code(&out, 2);
    assert!(
        stderr(&out).contains(&missing.display().to_string()),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_default_config_is_under_xdg_config_home_else_home() {
    let tmp = tempfile::tempdir().unwrap();
    let config = format!(
        "[site]\ndirection = \"push\"\nlocal = \"{}\"\nremote = \"{}\"\n",
        tmp.path().join("src").display(),
        tmp.path().join("dst").display()
    );
    write(tmp.path(), "src/a", b"a");
    write(tmp.path(), "xdg/snapsync/config.toml", config.as_bytes());
    let mut cmd = Command::new(bin());
    cmd.args(["run", "site"])
        .env("XDG_CONFIG_HOME", tmp.path().join("xdg"));
    assert_code(&finish(cmd), 0);
    assert_same_tree(&tmp.path().join("src"), &tmp.path().join("dst"));

    write(
        tmp.path(),
        "home/.config/snapsync/config.toml",
        config.as_bytes(),
    );
    write(tmp.path(), "src/b", b"b");
    let mut cmd = Command::new(bin());
    cmd.args(["run", "site"])
        .env_remove("XDG_CONFIG_HOME")
        .env("HOME", tmp.path().join("home"));
    assert_code(&finish(cmd), 0);
    assert_same_tree(&tmp.path().join("src"), &tmp.path().join("dst"));
}
