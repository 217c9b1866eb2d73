//! The guides in `docs/` run: every example in them is executed through the
//! real binary, so a renamed flag or a changed message fails this test
//! instead of rotting in the docs.
//!
//! How a guide marks its code blocks (the first word of the info string is
//! what a Markdown renderer highlights; the rest is for this test):
//!
//! | info string | what the test does |
//! | --- | --- |
//! | `sh` | runs it with `bash -euo pipefail`, in a fresh directory, after the guide's `sh setup` blocks; a non-zero exit fails |
//! | `sh setup` | runs before every `sh` block of its guide (and not alone) |
//! | `text output` | each line must appear, in order, in what the `sh` block just before it printed (stdout and stderr together); `…` stands for any text |
//! | `LANG excerpt=PATH` | each line must be a line of PATH in this repository (so a quoted unit file cannot drift) |
//! | `text`, `toml`, `ini`, `json`, `crontab` | shown only |
//!
//! Any other info string (a bare fence, `bash`, `shell`, ...) fails the
//! test, so an example cannot be skipped by a typo; so does a guide without
//! one `sh` block.
//!
//! `SNAPSYNC_SHOW_GUIDES=1 cargo test --test guides -- --nocapture` prints
//! what each example printed, to write an output block from.
//!
//! Each `sh` block runs in a directory of its own with `snapsync` (this
//! build) first on `PATH`, `HOME` inside that directory, and a far host:
//! `web1` and `localhost` are ssh names for a private sshd on 127.0.0.1
//! (an `ssh` on `PATH` adds the client configuration), whose sessions start
//! in a directory of the block's own (the far host's "home") with this
//! build first on their `PATH` too. So `snapsync push src web1:site` goes
//! through a real ssh connection to a real `snapsync serve`, and `ssh web1
//! cat site/a` looks at what arrived.

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::sshd::{make_ssh_keys, sshd_config, start_sshd};
use common::{bin, require_program};

/// The longest one example may take.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(180);

/// The guides, relative to the repository.
const GUIDES: [&str; 4] = [
    "docs/coming-from-rsync.md",
    "docs/coming-from-unison.md",
    "docs/coming-from-aspera-sync.md",
    "docs/operating.md",
];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[derive(Debug, PartialEq)]
enum Kind {
    /// `sh`: run it.
    Run,
    /// `sh setup`: run before each `sh` block.
    Setup,
    /// `text output`: lines the block before printed.
    Output,
    /// `LANG excerpt=PATH`: lines of a file in the repository.
    Excerpt(String),
    /// Shown only.
    Shown,
}

#[derive(Debug)]
struct Block {
    /// 1-based line of the opening fence.
    line: usize,
    kind: Kind,
    text: String,
}

/// The fenced code blocks of a Markdown text, classified by info string.
fn blocks(guide: &str, markdown: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<(usize, String, String, Vec<String>)> = None;
    for (index, raw) in markdown.lines().enumerate() {
        let trimmed = raw.trim_start();
        let indent = &raw[..raw.len() - trimmed.len()];
        match &mut open {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    open = Some((
                        index + 1,
                        indent.to_string(),
                        info.trim().to_string(),
                        vec![],
                    ));
                }
            }
            Some((line, fence_indent, info, lines)) => {
                if trimmed == "```" {
                    let kind = classify(guide, *line, info);
                    out.push(Block {
                        line: *line,
                        kind,
                        text: lines.join("\n") + "\n",
                    });
                    open = None;
                } else {
                    let body = raw.strip_prefix(fence_indent.as_str()).unwrap_or(raw);
                    lines.push(body.to_string());
                }
            }
        }
    }
    if let Some((line, ..)) = open {
        panic!("{guide}:{line}: a code block is never closed");
    }
    out
}

fn classify(guide: &str, line: usize, info: &str) -> Kind {
    let words: Vec<&str> = info.split_whitespace().collect();
    match words.as_slice() {
        ["sh"] => Kind::Run,
        ["sh", "setup"] => Kind::Setup,
        ["text", "output"] => Kind::Output,
        [_, excerpt] if excerpt.starts_with("excerpt=") => {
            Kind::Excerpt(excerpt["excerpt=".len()..].to_string())
        }
        ["text" | "toml" | "ini" | "json" | "crontab"] => Kind::Shown,
        _ => panic!(
            "{guide}:{line}: code block with info string `{info}`: use `sh` (runs), `sh setup`, \
             `text output` (checked against the output above), `LANG excerpt=PATH`, or \
             text/toml/ini/json/crontab (shown only)"
        ),
    }
}

/// A private sshd on 127.0.0.1 that the guides reach as `web1` and
/// `localhost`; killed when dropped.
struct FarHost {
    dir: tempfile::TempDir,
    child: Child,
}

impl FarHost {
    fn start() -> FarHost {
        let ssh = require_program("ssh", "openssh-client", &[]);
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        make_ssh_keys(d);
        // What both ends find first on PATH: this build, and an ssh that
        // knows the far host.
        let bin_dir = d.join("bin");
        fs::create_dir(&bin_dir).unwrap();
        std::os::unix::fs::symlink(bin(), bin_dir.join("snapsync")).unwrap();
        let shim = bin_dir.join("ssh");
        fs::write(
            &shim,
            format!(
                "#!/bin/sh\nexec '{}' -F '{}' \"$@\"\n",
                ssh.display(),
                d.join("ssh_config").display()
            ),
        )
        .unwrap();
        fs::set_permissions(&shim, fs::Permissions::from_mode(0o755)).unwrap();

        let (child, _) = start_sshd(d, |port| {
            // Each session starts in the far "home" the block chose, with
            // this build first on PATH.
            fs::write(
                d.join("ssh_config"),
                format!(
                    "Host web1 localhost\n  HostName 127.0.0.1\n  Port {port}\n  IdentityFile {}\n  \
                     IdentitiesOnly yes\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  \
                     BatchMode yes\n  ConnectTimeout 10\n  LogLevel ERROR\n  SendEnv SNAPSYNC_GUIDE_HOME\n",
                    d.join("client_key").display()
                ),
            )
            .unwrap();
            format!(
                "{}AcceptEnv SNAPSYNC_GUIDE_HOME\nForceCommand cd \"$SNAPSYNC_GUIDE_HOME\" && PATH=\"{}:$PATH\" && export PATH && eval \"$SSH_ORIGINAL_COMMAND\"\n",
                sshd_config(d, "127.0.0.1", port),
                bin_dir.display()
            )
        });
        FarHost { dir, child }
    }

    fn bin_dir(&self) -> PathBuf {
        self.dir.path().join("bin")
    }
}

impl Drop for FarHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one `sh` block did.
struct Ran {
    ok: bool,
    output: String,
}

/// Runs `script` with bash in a fresh directory (its working directory is
/// `work/`, its `HOME` is `home/`, the far host's home is `far/`), stdout
/// and stderr into one stream. Whatever it left running is stopped.
fn run_block(far: &FarHost, script: &str) -> Ran {
    let tmp = tempfile::tempdir().unwrap();
    let (work, home, far_home) = (
        tmp.path().join("work"),
        tmp.path().join("home"),
        tmp.path().join("far"),
    );
    for dir in [&work, &home, &far_home] {
        fs::create_dir(dir).unwrap();
    }
    let script_path = tmp.path().join("example.sh");
    fs::write(&script_path, script).unwrap();
    let output_path = tmp.path().join("output");
    let output = fs::File::create(&output_path).unwrap();
    let path = std::env::join_paths(std::iter::once(far.bin_dir()).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .unwrap();
    let mut child = Command::new("bash")
        .args(["-euo", "pipefail"])
        .arg(&script_path)
        .current_dir(&work)
        .env("PATH", path)
        .env("HOME", &home)
        .env("SNAPSYNC_GUIDE_HOME", &far_home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("UNISON")
        .env_remove("SNAPSYNC_LOG")
        .stdin(Stdio::null())
        .stdout(output.try_clone().unwrap())
        .stderr(output)
        .process_group(0)
        .spawn()
        .expect("run bash");
    let group = child.id() as i32;
    let deadline = Instant::now() + BLOCK_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for bash") {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Background jobs an example forgot (or a failed one left) go too.
    // SAFETY: kill(2) on the process group this test made for the block.
    unsafe {
        libc::kill(-group, libc::SIGKILL);
    }
    let _ = child.wait();
    // Anything the example made read-only for root must not stop the
    // temporary directory's removal.
    let _ = Command::new("chattr")
        .args(["-R", "-i"])
        .arg(tmp.path())
        .stderr(Stdio::null())
        .status();
    let mut text = String::new();
    fs::File::open(&output_path)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    match status {
        Some(status) => Ran {
            ok: status.success(),
            output: text,
        },
        None => Ran {
            ok: false,
            output: format!("{text}\n(did not finish within {BLOCK_TIMEOUT:?})"),
        },
    }
}

/// Whether `actual` matches `expected`, where `…` stands for any text.
fn line_matches(expected: &str, actual: &str) -> bool {
    let pieces: Vec<&str> = expected.split('…').collect();
    let actual = actual.trim_end();
    if pieces.len() == 1 {
        return actual == expected;
    }
    let (first, last) = (pieces[0], pieces[pieces.len() - 1]);
    if !actual.starts_with(first) || actual.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &actual[first.len()..];
    for middle in &pieces[1..pieces.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// Checks that the lines of `expected` appear in `output` in order.
fn check_output(guide: &str, block: &Block, output: &str) {
    let mut actual = output.lines();
    for wanted in block
        .text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
    {
        if !actual.any(|line| line_matches(wanted, line)) {
            panic!(
                "{guide}:{}: the example above did not print, in this order, the line\n  {wanted}\n\
                 It printed:\n{output}",
                block.line
            );
        }
    }
}

/// Checks that each line of an excerpt block is a line of the file it quotes.
fn check_excerpt(guide: &str, block: &Block, file: &str) {
    let text = fs::read_to_string(repo().join(file))
        .unwrap_or_else(|e| panic!("{guide}:{}: cannot read {file}: {e}", block.line));
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    for wanted in block.text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        assert!(
            lines.contains(&wanted),
            "{guide}:{}: `{wanted}` is not a line of {file} (any more?)",
            block.line
        );
    }
}

/// Runs every example of one guide, in order, and checks what it printed.
fn run_guide(guide: &str) {
    let markdown = fs::read_to_string(repo().join(guide))
        .unwrap_or_else(|e| panic!("cannot read {guide}: {e}"));
    let blocks = blocks(guide, &markdown);
    let runs = blocks.iter().filter(|b| b.kind == Kind::Run).count();
    assert!(runs > 0, "{guide} has no runnable (`sh`) example");
    let setup: String = blocks
        .iter()
        .filter(|b| b.kind == Kind::Setup)
        .map(|b| b.text.as_str())
        .collect();

    let far = FarHost::start();
    let mut last: Option<(usize, Ran)> = None;
    let mut ran = 0;
    for block in &blocks {
        match &block.kind {
            Kind::Run => {
                let script = format!("{setup}\n{}", block.text);
                let result = run_block(&far, &script);
                if !result.ok {
                    panic!(
                        "{guide}:{}: the example failed.\n--- script ---\n{script}--- output ---\n{}",
                        block.line, result.output
                    );
                }
                if std::env::var_os("SNAPSYNC_SHOW_GUIDES").is_some() {
                    eprintln!("--- {guide}:{} ---\n{}", block.line, result.output);
                }
                ran += 1;
                last = Some((block.line, result));
            }
            Kind::Output => {
                let Some((_, result)) = &last else {
                    panic!(
                        "{guide}:{}: `text output` with no `sh` block before it",
                        block.line
                    );
                };
                check_output(guide, block, &result.output);
                // One output block per example.
                last = None;
            }
            Kind::Excerpt(file) => check_excerpt(guide, block, file),
            Kind::Setup | Kind::Shown => {}
        }
    }
    assert_eq!(ran, runs, "{guide}: every example ran");
    eprintln!("{guide}: {ran} examples ran");
}

#[test]
fn coming_from_rsync_examples_run() {
    run_guide("docs/coming-from-rsync.md");
}

#[test]
fn coming_from_unison_examples_run() {
    run_guide("docs/coming-from-unison.md");
}

#[test]
fn coming_from_aspera_sync_examples_run() {
    run_guide("docs/coming-from-aspera-sync.md");
}

#[test]
fn operating_examples_run() {
    run_guide("docs/operating.md");
}

#[test]
fn readme_lists_every_guide() {
    let readme = fs::read_to_string(repo().join("README.md")).unwrap();
    let section = readme
        .split("\n## Guides")
        .nth(1)
        .expect("README.md has a `## Guides` section");
    let section = section.split("\n## ").next().unwrap();
    for guide in GUIDES {
        assert!(
            section.contains(&format!("]({guide})")),
            "README.md's Guides section does not link {guide}"
        );
    }
}

#[test]
fn output_lines_match_with_ellipses() {
    assert!(line_matches(
        "created 1, … in …s",
        "created 1, updated 0; scanned 2 entries in 0.01s"
    ));
    assert!(line_matches("exit 1", "exit 1"));
    assert!(!line_matches("exit 1", "exit 13"));
    assert!(line_matches("…done", "all done  "));
    assert!(!line_matches("a…b…c", "a c b"));
    assert!(!line_matches("ab…ba", "aba"));
}
