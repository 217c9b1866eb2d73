//! What ships beside the binary, checked through the real binary and the
//! real programs that read it: the completion scripts (loaded in bash, zsh
//! and fish), the man page (rendered by man), and `--version`.
//!
//! The lists of subcommands and options to look for come from the clap
//! definitions themselves (`src/cli/args.rs`, compiled here too), so an
//! option that does not reach the man page fails this test.

mod common;

#[allow(dead_code)]
#[path = "../src/cli/args.rs"]
mod args;

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

/// Runs bash's completion for the command line `line` (the cursor at its
/// end) with the script `snapsync completions bash` prints, the way bash
/// calls it on TAB, and returns the candidates.
fn bash_complete(line: &str) -> Vec<String> {
    let bash = require_program("bash", "bash", &[]);
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("snapsync.bash");
    let out = snapsync(&["completions", "bash"]);
    assert_code(&out, 0);
    fs::write(&script, &out.stdout).unwrap();
    // The function the script registers for `snapsync`, called with the
    // words bash would have split the line into.
    let driver = r#"
source "$1" || exit 1
spec=$(complete -p snapsync) || exit 1
func=${spec#*-F }
func=${func%% *}
COMP_LINE=$2
COMP_POINT=${#COMP_LINE}
read -ra COMP_WORDS <<< "$COMP_LINE"
[[ $COMP_LINE == *' ' ]] && COMP_WORDS+=('')
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
"$func" snapsync "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"
"#;
    let out = Command::new(bash)
        .args(["--norc", "--noprofile", "-c", driver, "bash"])
        .arg(&script)
        .arg(line)
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "bash failed on `{line}`: {}",
        stderr(&out)
    );
    let mut words: Vec<String> = stdout(&out)
        .lines()
        .map(str::trim)
        .filter(|word| !word.is_empty())
        .map(str::to_string)
        .collect();
    words.sort();
    words
}

#[test]
fn bash_completes_a_subcommand_from_its_prefix() {
    assert_eq!(bash_complete("snapsync pu"), ["pull", "push"]);
    assert_eq!(bash_complete("snapsync comp"), ["completions"]);
}

#[test]
fn bash_completes_a_long_option_of_push() {
    assert_eq!(bash_complete("snapsync push --dry"), ["--dry-run"]);
    assert_eq!(
        bash_complete("snapsync push --remove-s"),
        ["--remove-source-files"]
    );
    // `run` takes push's session options too.
    assert_eq!(bash_complete("snapsync run --max-d"), ["--max-delete"]);
}

#[test]
fn bash_completes_the_values_of_an_argument() {
    assert_eq!(
        bash_complete("snapsync push --links "),
        ["follow", "keep", "skip"]
    );
    // A positional: bash offers the options beside the values.
    let shells: Vec<String> = bash_complete("snapsync completions ")
        .into_iter()
        .filter(|word| !word.starts_with('-'))
        .collect();
    assert_eq!(shells, ["bash", "fish", "zsh"]);
}

#[test]
fn zsh_and_fish_scripts_parse() {
    let dir = tempfile::tempdir().unwrap();
    for (shell, file, check) in [
        ("zsh", "_snapsync", &["-n"][..]),
        ("fish", "snapsync.fish", &["--no-execute"][..]),
    ] {
        let out = snapsync(&["completions", shell]);
        assert_code(&out, 0);
        assert!(
            stdout(&out).contains("snapsync"),
            "{shell} script: {}",
            stdout(&out)
        );
        let Some(program) = find_program(shell, &[]) else {
            eprintln!(
                "{shell} is not installed: its script is not parsed (scripts/test.sh installs it)"
            );
            continue;
        };
        let path = dir.path().join(file);
        fs::write(&path, &out.stdout).unwrap();
        let checked = Command::new(program)
            .args(check)
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            checked.status.success() && checked.stderr.is_empty(),
            "{shell} {check:?} rejects the script: {}",
            stderr(&checked)
        );
    }
}

#[test]
fn completions_for_an_unknown_shell_is_a_usage_error() {
    let out = snapsync(&["completions", "tcsh"]);
    assert_code(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("tcsh") && err.contains("bash") && err.contains("zsh") && err.contains("fish"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    assert_code(&snapsync(&["completions"]), 2);
}

/// The man page as `man -l` renders it, in plain text.
fn rendered_man_page() -> String {
    let man = require_program("man", "man-db", &[]);
    let dir = tempfile::tempdir().unwrap();
    let out = snapsync(&["man"]);
    assert_code(&out, 0);
    let page = dir.path().join("snapsync.1");
    fs::write(&page, &out.stdout).unwrap();
    let rendered = Command::new(man)
        .arg("-l")
        .arg(&page)
        .env("LC_ALL", "C")
        .env("MANWIDTH", "200")
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .output()
        .expect("run man");
    assert!(
        rendered.status.success() && !rendered.stdout.is_empty(),
        "man -l failed: {}",
        stderr(&rendered)
    );
    assert!(
        rendered.stderr.is_empty(),
        "man warns about the page: {}",
        stderr(&rendered)
    );
    plain(&stdout(&rendered))
}

/// Text without the overstrikes (`X\bX`, `_\bX`) of bold and underline.
fn plain(text: &str) -> String {
    let mut out: Vec<char> = Vec::with_capacity(text.len());
    for c in text.chars() {
        if c == '\u{8}' {
            out.pop();
        } else {
            out.push(c);
        }
    }
    out.into_iter().collect()
}

/// How the man page labels an argument: `-n, --dry-run`, `--exclude`,
/// `<LOCAL>`, `[DIR]`.
fn label(arg: &clap::Arg) -> Option<String> {
    if arg.is_positional() {
        let name = arg
            .get_value_names()
            .map(|names| names.join(" "))
            .unwrap_or_else(|| arg.get_id().to_string());
        let (open, close) = if arg.is_required_set() {
            ("<", ">")
        } else {
            ("[", "]")
        };
        return Some(format!("{open}{name}{close}"));
    }
    let long = arg.get_long()?;
    Some(match arg.get_short() {
        Some(short) => format!("-{short}, --{long}"),
        None => format!("--{long}"),
    })
}

#[test]
fn man_page_lists_every_subcommand_with_every_option() {
    let text = rendered_man_page();
    let lines: Vec<&str> = text.lines().collect();
    let mut cli = args::command();
    cli.build();
    let subcommands: Vec<&clap::Command> = cli
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set() && sub.get_name() != "help")
        .collect();
    let headings: Vec<String> = subcommands
        .iter()
        .map(|sub| format!("snapsync {}", sub.get_name()))
        .collect();
    let is_heading = |line: &str| {
        line.starts_with("   ")
            && !line.starts_with("    ")
            && (headings.iter().any(|h| h == line.trim()) || line.trim() == "EXIT STATUS")
            || line == "EXIT STATUS"
    };
    for (sub, heading) in subcommands.iter().zip(&headings) {
        let start = lines
            .iter()
            .position(|line| is_heading(line) && line.trim() == heading)
            .unwrap_or_else(|| panic!("no section `{heading}` in the man page:\n{text}"));
        let end = lines[start + 1..]
            .iter()
            .position(|line| is_heading(line))
            .map_or(lines.len(), |n| start + 1 + n);
        let section = &lines[start..end];
        let mut expected = 0;
        for arg in sub.get_arguments().filter(|arg| !arg.is_hide_set()) {
            let Some(label) = label(arg) else { continue };
            expected += 1;
            let found = section.iter().any(|line| {
                let line = line.trim();
                line == label
                    || line.starts_with(&format!("{label} "))
                    || line.starts_with(&format!("{label}..."))
            });
            assert!(
                found,
                "`{label}` of `{heading}` is not in its man page section:\n{}",
                section.join("\n")
            );
        }
        assert!(
            expected > 0,
            "{heading}: no options found in its definition"
        );
    }
    // The options every subcommand shares with push reach `run` too.
    assert!(headings.contains(&"snapsync run".to_string()));
    assert!(headings.contains(&"snapsync man".to_string()));
}

#[test]
fn man_page_gives_every_exit_status() {
    let text = rendered_man_page();
    let start = text
        .find("\nEXIT STATUS\n")
        .unwrap_or_else(|| panic!("no EXIT STATUS section:\n{text}"));
    let section = &text[start..];
    let section = &section[..section[1..]
        .find("\nFILES")
        .map_or(section.len(), |n| n + 1)];
    for code in ["0", "1", "2", "3", "4", "130"] {
        assert!(
            section
                .lines()
                .any(|line| line.trim_start().starts_with(&format!("{code} "))),
            "exit status {code} is not described:\n{section}"
        );
    }
    for heading in ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS"] {
        assert!(
            text.lines().any(|line| line == heading),
            "no {heading}:\n{text}"
        );
    }
}

#[test]
fn version_names_the_commit_and_the_protocol() {
    let out = snapsync(&["--version"]);
    assert_code(&out, 0);
    let line = stdout(&out);
    let expected_start = format!("snapsync {} (commit ", env!("CARGO_PKG_VERSION"));
    let expected_end = format!(", protocol {})", snapsync::PROTOCOL_VERSION);
    let commit = line
        .trim()
        .strip_prefix(&expected_start)
        .and_then(|rest| rest.strip_suffix(&expected_end))
        .unwrap_or_else(|| panic!("`{line}` is not `{expected_start}COMMIT{expected_end}`"));
    // Built from this checkout: its HEAD. (A tree without git of its own
    // says "unknown"; scripts/install-check.sh builds one.)
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(here)
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let own_checkout = git(&["rev-parse", "--show-toplevel"])
        .is_some_and(|top| Path::new(&top).canonicalize().ok() == here.canonicalize().ok());
    match git(&["rev-parse", "--short=12", "HEAD"]).filter(|_| own_checkout) {
        Some(head) => assert_eq!(commit, head, "{line}"),
        None => assert_eq!(commit, "unknown", "{line}"),
    }
}

#[test]
fn generated_text_goes_quietly_to_a_reader_that_left() {
    for args in [&["man"][..], &["completions", "bash"][..]] {
        let mut child = Command::new(bin())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before reading a byte, as `| head -0` would.
        drop(child.stdout.take());
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "snapsync {args:?}: {err}");
        assert!(err.is_empty(), "snapsync {args:?}: {err}");
    }
}
