//! What a person at a terminal sees: the real binary in a real
//! pseudo-terminal, its output fed to a terminal emulator for the screen
//! it leaves. The progress bar (files, bytes, rate, ETA, drawn in place,
//! gone at the end), no control characters where output is not a
//! terminal, `NO_COLOR`, and Ctrl-C (a real `^C` on the terminal) in the
//! middle of a transfer, locally and with the far end behind `--rsh`.
//!
//! Nothing here measures time: runs are slowed with `--bwlimit` so that
//! there is something to watch, and each wait is for a condition, with a
//! generous limit.

mod common;

use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portable_pty::{native_pty_system, Child, CommandBuilder, MasterPty, PtySize};

use common::*;

const ROWS: u16 = 40;
/// Wide enough that the summary line does not wrap.
const COLS: u16 = 220;
/// How long any one condition may take to come true on a busy machine.
const PATIENCE: Duration = Duration::from_secs(120);

/// A program running on the slave side of a pseudo-terminal, everything it
/// writes there gathered from the master side.
struct Terminal {
    child: Box<dyn Child + Send + Sync>,
    output: Arc<Mutex<Vec<u8>>>,
    closed: Arc<AtomicBool>,
    keyboard: Box<dyn Write + Send>,
    _master: Box<dyn MasterPty + Send>,
}

/// How to start a program in a terminal: its words, and the environment
/// changes on top of a colour terminal's (`TERM` set, `NO_COLOR` unset).
struct Run {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(&'static str, Option<String>)>,
}

impl Run {
    fn snapsync<I, S>(args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Run {
            program: bin().into(),
            args: args.into_iter().map(Into::into).collect(),
            env: Vec::new(),
        }
    }

    /// `sh -c SCRIPT`, with `$SNAPSYNC` the binary under test.
    fn shell(script: &str) -> Run {
        Run {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![("SNAPSYNC", Some(bin().display().to_string()))],
        }
    }

    fn env(mut self, key: &'static str, value: &str) -> Run {
        self.env.push((key, Some(value.to_string())));
        self
    }

    fn start(self) -> Terminal {
        let pair = native_pty_system()
            .openpty(PtySize {
                rows: ROWS,
                cols: COLS,
                pixel_width: 0,
                pixel_height: 0,
            })
            .expect("open a pseudo-terminal");
        let mut command = CommandBuilder::new(&self.program);
        command.args(&self.args);
        command.cwd(std::env::temp_dir());
        command.env("TERM", "xterm-256color");
        for key in ["NO_COLOR", "CLICOLOR", "CLICOLOR_FORCE", "SNAPSYNC_LOG"] {
            command.env_remove(key);
        }
        for (key, value) in &self.env {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            }
        }
        let child = pair
            .slave
            .spawn_command(command)
            .unwrap_or_else(|e| panic!("start {:?} in a terminal: {e}", self.program));
        // Only the child holds the slave now, so the master reads to its end
        // once the child (and whatever it started) is gone.
        drop(pair.slave);
        let mut reader = pair.master.try_clone_reader().expect("terminal reader");
        let keyboard = pair.master.take_writer().expect("terminal writer");
        let output = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(AtomicBool::new(false));
        {
            let output = Arc::clone(&output);
            let closed = Arc::clone(&closed);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                // Linux ends a master's reads with EIO once the slave is gone.
                while let Ok(n @ 1..) = reader.read(&mut buf) {
                    output.lock().unwrap().extend_from_slice(&buf[..n]);
                }
                closed.store(true, Ordering::SeqCst);
            });
        }
        Terminal {
            child,
            output,
            closed,
            keyboard,
            _master: pair.master,
        }
    }
}

impl Terminal {
    fn output(&self) -> Vec<u8> {
        self.output.lock().unwrap().clone()
    }

    /// Waits until `ready` holds for the screen as drawn so far; returns it.
    #[track_caller]
    fn wait_for_screen(&mut self, what: &str, ready: impl Fn(&vt100::Screen) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let screen = screen_of(&self.output());
            if ready(&screen) {
                return screen.contents();
            }
            if Instant::now() > deadline || self.child.try_wait().ok().flatten().is_some() {
                let _ = self.child.kill();
                panic!(
                    "waited for {what}; the screen:\n{}\nthe bytes: {:?}",
                    screen.contents(),
                    String::from_utf8_lossy(&self.output())
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Types Ctrl-C: the terminal sends SIGINT to its foreground process
    /// group, as for a person pressing it.
    fn ctrl_c(&mut self) {
        self.keyboard.write_all(b"\x03").expect("type ^C");
        self.keyboard.flush().expect("type ^C");
    }

    /// Waits for the program to end and for all it wrote; its exit code
    /// and the bytes.
    #[track_caller]
    fn finish(mut self) -> (u32, Vec<u8>) {
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for the program") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "the program did not end; it wrote: {:?}",
                    String::from_utf8_lossy(&self.output())
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        while !self.closed.load(Ordering::SeqCst) {
            assert!(
                Instant::now() < deadline,
                "the terminal stayed open after the program ended"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        (status.exit_code(), self.output())
    }
}

fn screen_of(bytes: &[u8]) -> vt100::Screen {
    let size = |n: u16| std::num::NonZeroU16::new(n).expect("a terminal has a size");
    let mut parser = vt100::Parser::new(size(ROWS), size(COLS), 0);
    parser.process(bytes);
    parser.screen().clone()
}

/// The screen's lines, without the empty ones at the end.
fn lines(screen: &vt100::Screen) -> Vec<String> {
    let mut rows: Vec<String> = screen.rows(0, COLS).collect();
    while rows.last().is_some_and(|row| row.trim().is_empty()) {
        rows.pop();
    }
    rows
}

/// The bar's fields as drawn: files done and total, bytes done and total,
/// rate, ETA (`--` until known).
#[derive(Debug)]
struct BarFields {
    files_done: u64,
    files_total: u64,
    bytes: String,
    rate: String,
    eta: String,
}

/// The bar on a screen line: `⠋ [===>   ] 3/40 files  48.0 KiB/640.0 KiB
/// 16.0 KiB/s  ETA 0:37`.
fn bar_fields(line: &str) -> Option<BarFields> {
    let (_, status) = line.split_once("] ")?;
    let parts: Vec<&str> = status.trim_end().split("  ").collect();
    let [files, bytes, rate, eta] = parts.as_slice() else {
        return None;
    };
    let (done, total) = files.strip_suffix(" files")?.split_once('/')?;
    let unit = |text: &str| {
        let (number, unit) = text.split_once(' ')?;
        number.parse::<f64>().ok()?;
        ["B", "KiB", "MiB", "GiB", "TiB"]
            .contains(&unit)
            .then_some(())
    };
    let (bytes_done, bytes_total) = bytes.split_once('/')?;
    unit(bytes_done)?;
    unit(bytes_total)?;
    unit(rate.strip_suffix("/s")?)?;
    let eta = eta.strip_prefix("ETA ")?;
    let clock = eta == "--"
        || eta
            .split(':')
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
    if !clock {
        return None;
    }
    Some(BarFields {
        files_done: done.parse().ok()?,
        files_total: total.parse().ok()?,
        bytes: bytes.to_string(),
        rate: rate.to_string(),
        eta: eta.to_string(),
    })
}

/// The bar wherever it is on the screen.
fn bar_on(screen: &vt100::Screen) -> Option<BarFields> {
    lines(screen).iter().find_map(|line| bar_fields(line))
}

/// `count` files of 16 KiB at the top of `root`.
fn files(root: &Path, count: usize) {
    let mut rng = Rng::new(count as u64);
    for i in 0..count {
        write(root, &format!("f{i:03}.dat"), &rng.bytes(16 * 1024));
    }
}

/// SGR sequences (`ESC [ ... m`): what colour is made of.
fn colour_codes(bytes: &[u8]) -> usize {
    let mut count = 0;
    let mut i = 0;
    while let Some(start) = bytes[i..].windows(2).position(|w| w == b"\x1b[") {
        let rest = &bytes[i + start + 2..];
        let end = rest
            .iter()
            .position(|b| !(b.is_ascii_digit() || *b == b';'))
            .unwrap_or(rest.len());
        if rest.get(end) == Some(&b'm') {
            count += 1;
        }
        i += start + 2;
    }
    count
}

#[track_caller]
fn assert_no_control_characters(what: &str, bytes: &[u8]) {
    assert!(
        !bytes.iter().any(|b| *b == 0x1b || *b == b'\r'),
        "{what} holds ESC or CR: {:?}",
        String::from_utf8_lossy(bytes)
    );
}

/// A source, a target and a `--rsh` shim in one temporary directory.
struct Bed {
    tmp: tempfile::TempDir,
    shim: PathBuf,
}

impl Bed {
    fn new(count: usize) -> Bed {
        let tmp = tempfile::tempdir().unwrap();
        files(&tmp.path().join("src"), count);
        let shim = rsh_shim(tmp.path());
        Bed { tmp, shim }
    }

    fn src(&self) -> PathBuf {
        self.tmp.path().join("src")
    }

    fn dst(&self) -> PathBuf {
        self.tmp.path().join("dst")
    }

    /// `push` words from the source to the target, the target behind the
    /// shim when `remote`.
    fn push_args(&self, remote: bool, extra: &[&str]) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["push".into()];
        args.extend(extra.iter().map(OsString::from));
        if remote {
            // Through the shim's pipes, never the data channel: the same
            // session code either way, and no chance of a fallback warning.
            args.extend([
                "--transport".into(),
                "ssh".into(),
                "--rsh".into(),
                self.shim.clone().into_os_string(),
                "--remote-command".into(),
                bin().into_os_string(),
            ]);
        }
        args.push(self.src().into_os_string());
        args.push(if remote {
            format!("far.example:{}", self.dst().display()).into()
        } else {
            self.dst().into_os_string()
        });
        args
    }
}

/// Runs a `--progress` transfer slow enough to watch; checks the bar's
/// fields while it runs, that it is redrawn in place, and that the screen
/// it leaves holds the summary and nothing of the bar.
fn watch_the_bar(args: Vec<OsString>, total_files: u64) -> Vec<u8> {
    let mut terminal = Run::snapsync(args).start();
    let screen = terminal.wait_for_screen("the bar with a file done and an ETA", |screen| {
        bar_on(screen).is_some_and(|bar| bar.files_done >= 1 && bar.eta != "--")
    });
    let bar = bar_on(&screen_of(&terminal.output())).expect("the bar");
    assert_eq!(bar.files_total, total_files, "{screen}");
    assert!(bar.files_done <= bar.files_total, "{bar:?}");
    assert!(bar.bytes.contains("KiB/"), "bytes done/total: {bar:?}");
    assert!(bar.rate.ends_with("/s"), "{bar:?}");
    let (code, bytes) = terminal.finish();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    assert_eq!(code, 0, "{text}");

    // Drawn in place: from the first frame to the last, the bar never
    // moves to a new line; each frame starts by going back to the start
    // of the line.
    let first = text.find(" files  ").expect("a frame of the bar");
    let last = text.rfind(" files  ").expect("a frame of the bar");
    let between = &text[first..last];
    assert!(
        text[first..].matches(" files  ").count() >= 2,
        "the bar was drawn once only: {text:?}"
    );
    assert!(
        !between.contains('\n'),
        "the bar went to a new line: {between:?}"
    );
    assert!(
        between.contains("\r\x1b[2K"),
        "no carriage return and line erase between frames: {between:?}"
    );

    // The screen it leaves: the summary and nothing else, the cursor on
    // the line below it.
    let screen = screen_of(&bytes);
    let shown = lines(&screen);
    assert_eq!(shown.len(), 1, "expected the summary alone: {shown:#?}");
    assert!(
        shown[0].starts_with(&format!("created {total_files}, ")),
        "{shown:#?}"
    );
    assert_eq!(screen.cursor_position(), (1, 0), "{shown:#?}");
    bytes
}

#[test]
fn progress_bar_shows_files_bytes_rate_and_eta_and_leaves_a_clean_line() {
    let bed = Bed::new(40);
    watch_the_bar(
        bed.push_args(false, &["--progress", "--bwlimit", "96K"]),
        40,
    );
    assert_same_tree(&bed.src(), &bed.dst());
}

#[test]
fn progress_bar_follows_a_remote_push() {
    let bed = Bed::new(40);
    watch_the_bar(bed.push_args(true, &["--progress", "--bwlimit", "96K"]), 40);
    assert_same_tree(&bed.src(), &bed.dst());
}

#[test]
fn progress_bar_follows_a_remote_pull() {
    // The far end sends; the near end hears of each file as it lands.
    let bed = Bed::new(40);
    let args: Vec<OsString> = vec![
        "pull".into(),
        "--progress".into(),
        "--bwlimit".into(),
        "96K".into(),
        "--transport".into(),
        "ssh".into(),
        "--rsh".into(),
        bed.shim.clone().into_os_string(),
        "--remote-command".into(),
        bin().into_os_string(),
        bed.dst().into_os_string(),
        format!("far.example:{}", bed.src().display()).into(),
    ];
    watch_the_bar(args, 40);
    assert_same_tree(&bed.src(), &bed.dst());
}

/// A source that makes a run say something on every stream: a FIFO (a
/// warning), and files for `-v` lines.
fn talkative_bed() -> Bed {
    let bed = Bed::new(5);
    let fifo = bed.src().join("pipe");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    bed
}

#[test]
fn without_a_terminal_no_control_characters_are_printed() {
    let bed = talkative_bed();
    let run = |args: Vec<OsString>| {
        let out = Command::new(bin())
            .args(args)
            .env("TERM", "xterm-256color")
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .output()
            .expect("run snapsync");
        (out.status.code(), stdout(&out), stderr(&out), out)
    };

    // --progress and -v with warnings, stdout and stderr both piped.
    let (code, out, err, raw) = run(bed.push_args(false, &["--progress", "-v"]));
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("snapsync: warning: "), "{err}");
    assert!(err.contains("f000.dat"), "the -v lines: {err}");
    assert!(out.starts_with("created 5, "), "{out}");
    assert_no_control_characters("stdout", &raw.stdout);
    assert_no_control_characters("stderr", &raw.stderr);

    // The plan of a dry run, and an error.
    fs::write(bed.src().join("new.txt"), "new").unwrap();
    let (code, out, err, raw) = run(bed.push_args(false, &["--progress", "-n"]));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("new.txt"), "{out}");
    assert_no_control_characters("stdout", &raw.stdout);
    assert_no_control_characters("stderr", &raw.stderr);
    let missing = bed.tmp.path().join("missing");
    let (code, _, err, raw) = run(vec![
        "push".into(),
        "--progress".into(),
        missing.into_os_string(),
        bed.dst().into_os_string(),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.starts_with("snapsync: error: "), "{err}");
    assert_no_control_characters("stdout", &raw.stdout);
    assert_no_control_characters("stderr", &raw.stderr);
}

#[test]
fn progress_is_drawn_only_when_stderr_is_the_terminal() {
    let bed = talkative_bed();
    let words = |args: Vec<OsString>| {
        args.iter()
            .map(|a| format!("'{}'", a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let log = bed.tmp.path().join("stderr.log");

    // stderr into a file, stdout on the terminal: no bar anywhere, no
    // control characters in the file.
    let args = words(bed.push_args(false, &["--progress", "--bwlimit", "64K"]));
    let script = format!("exec \"$SNAPSYNC\" {args} 2>'{}'", log.display());
    let (code, bytes) = Run::shell(&script).start().finish();
    let text = String::from_utf8_lossy(&bytes);
    assert_eq!(code, 0, "{text}");
    let logged = fs::read(&log).unwrap();
    assert!(
        String::from_utf8_lossy(&logged).contains("snapsync: warning: "),
        "the warning goes to the file: {:?}",
        String::from_utf8_lossy(&logged)
    );
    assert_no_control_characters("stderr in a file", &logged);
    assert!(!text.contains(" files  "), "a bar was drawn: {text:?}");
    assert!(!text.contains('\x1b'), "control sequences: {text:?}");
    assert!(lines(&screen_of(&bytes))[0].starts_with("created 5, "));

    // stdout into a file, stderr on the terminal: the bar is drawn, the
    // summary in the file is plain.
    fs::remove_dir_all(bed.dst()).unwrap();
    fs::remove_dir_all(bed.src().join(".snapsync")).unwrap();
    let out_file = bed.tmp.path().join("stdout.log");
    let args = words(bed.push_args(false, &["--progress", "--bwlimit", "64K"]));
    let script = format!("exec \"$SNAPSYNC\" {args} >'{}'", out_file.display());
    let (code, bytes) = Run::shell(&script).start().finish();
    let text = String::from_utf8_lossy(&bytes);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains(" files  "), "no bar: {text:?}");
    let summary = fs::read(&out_file).unwrap();
    assert!(String::from_utf8_lossy(&summary).starts_with("created 5, "));
    assert_no_control_characters("stdout in a file", &summary);
}

#[test]
fn colour_on_a_terminal_unless_no_color_is_set() {
    let bed = talkative_bed();
    let args = || bed.push_args(false, &["--progress", "-n"]);
    let run = |no_color: Option<&str>| {
        let mut run = Run::snapsync(args());
        if let Some(value) = no_color {
            run = run.env("NO_COLOR", value);
        }
        let (code, bytes) = run.start().finish();
        assert_eq!(code, 0, "{}", String::from_utf8_lossy(&bytes));
        let text = String::from_utf8_lossy(&bytes).into_owned();
        assert!(text.contains("warning:"), "{text:?}");
        (colour_codes(&bytes), text)
    };

    let (colours, text) = run(None);
    assert!(colours > 0, "no colour on a terminal: {text:?}");
    assert!(
        text.contains("\x1b[1;33mwarning:\x1b[0m"),
        "the warning label in colour: {text:?}"
    );
    // An empty NO_COLOR does not count (no-color.org).
    let (colours, text) = run(Some(""));
    assert!(colours > 0, "no colour with NO_COLOR empty: {text:?}");
    let (colours, text) = run(Some("1"));
    assert_eq!(colours, 0, "colour despite NO_COLOR: {text:?}");
    assert!(text.contains("snapsync: warning: "), "{text:?}");

    // An error's label, both ways.
    let missing = bed.tmp.path().join("missing").into_os_string();
    let error = |no_color: bool| {
        let mut run = Run::snapsync([
            OsString::from("push"),
            missing.clone(),
            bed.dst().into_os_string(),
        ]);
        if no_color {
            run = run.env("NO_COLOR", "1");
        }
        let (code, bytes) = run.start().finish();
        assert_eq!(code, 1, "{}", String::from_utf8_lossy(&bytes));
        bytes
    };
    let coloured = error(false);
    assert!(
        String::from_utf8_lossy(&coloured).contains("\x1b[1;31merror:\x1b[0m"),
        "{:?}",
        String::from_utf8_lossy(&coloured)
    );
    let plain = error(true);
    assert_eq!(colour_codes(&plain), 0);
    assert!(String::from_utf8_lossy(&plain).starts_with("snapsync: error: "));
}

/// Interrupts a slow `--progress` push with a real `^C` once some files
/// are in; checks the exit code, the message, the screen, the target
/// (only complete copies under real names) and that a second run
/// finishes with only what was missing.
fn interrupt_and_resume(remote: bool) {
    const COUNT: usize = 300;
    let bed = Bed::new(COUNT);
    let mut terminal =
        Run::snapsync(bed.push_args(remote, &["--progress", "--bwlimit", "64K"])).start();
    terminal.wait_for_screen("a few files done", |screen| {
        bar_on(screen).is_some_and(|bar| bar.files_done >= 2)
    });
    terminal.ctrl_c();
    let (code, bytes) = terminal.finish();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    assert_eq!(code, 130, "{text}");

    // The screen: the resume hint and the summary; no bar, no `^C`.
    let screen = screen_of(&bytes);
    let shown = lines(&screen);
    assert_eq!(shown.len(), 2, "{shown:#?}");
    let done: usize = shown[0]
        .strip_prefix("snapsync: interrupted: ")
        .and_then(|rest| {
            rest.strip_suffix(&format!(
                " of {COUNT} files done and saved; run the same command again to finish"
            ))
        })
        .unwrap_or_else(|| panic!("no resume hint: {shown:#?}"))
        .parse()
        .expect("a count of files");
    assert!((2..COUNT).contains(&done), "{shown:#?}");
    assert!(
        shown[1].starts_with(&format!("created {done}, ")),
        "{shown:#?}"
    );
    assert_eq!(screen.cursor_position(), (2, 0), "{shown:#?}");

    // Under a real name, only complete copies, and as many as it said.
    let mut complete = 0;
    for entry in fs::read_dir(bed.dst()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == ".snapsync" || name.starts_with(".snapsync-tmp-") {
            continue;
        }
        assert_eq!(
            fs::read(entry.path()).unwrap(),
            read(&bed.src(), &name),
            "{name} is not a complete copy"
        );
        complete += 1;
    }
    assert_eq!(complete, done, "files in place vs files reported done");

    // The next run sends only the rest.
    let mut rerun = Command::new(bin());
    rerun.args(bed.push_args(remote, &["--json"]));
    let out = run_bounded(rerun, PATIENCE);
    assert_code(&out, 0);
    let summary = summary(&out);
    let missing = (COUNT - done) as u64;
    assert_eq!(count(&summary, "created"), missing, "{summary}");
    assert_eq!(
        count(&summary, "bytes_sent"),
        missing * 16 * 1024,
        "{summary}"
    );
    assert_same_tree(&bed.src(), &bed.dst());
}

#[test]
fn ctrl_c_stops_cleanly_and_the_next_run_finishes() {
    interrupt_and_resume(false);
}

#[test]
fn ctrl_c_stops_a_remote_push_cleanly_although_the_far_end_hears_it_too() {
    // The shim runs the far end in the terminal's foreground process group,
    // so the ^C reaches it as well.
    interrupt_and_resume(true);
}

/// A second `^C` ends the run at once: the first lets the file in flight
/// finish, here one that would take minutes more at the rate given (past
/// `PATIENCE`, so waiting for it fails the test). Exit 130, the file not
/// under its real name, and the next run sends it whole.
#[test]
fn a_second_ctrl_c_stops_at_once() {
    let bed = Bed::new(0);
    write(&bed.src(), "big.bin", &Rng::new(7).bytes(16 << 20));
    let mut terminal =
        Run::snapsync(bed.push_args(false, &["--progress", "--bwlimit", "64K"])).start();
    terminal.wait_for_screen("the file under way", |screen| {
        bar_on(screen).is_some_and(|bar| !bar.bytes.starts_with("0 B"))
    });
    terminal.ctrl_c();
    std::thread::sleep(Duration::from_millis(300));
    terminal.ctrl_c();
    let (code, bytes) = terminal.finish();
    assert_eq!(code, 130, "{}", String::from_utf8_lossy(&bytes));
    assert!(!bed.dst().join("big.bin").exists());
    let mut rerun = Command::new(bin());
    rerun.args(bed.push_args(false, &["--json"]));
    let out = run_bounded(rerun, PATIENCE);
    assert_code(&out, 0);
    assert_same_tree(&bed.src(), &bed.dst());
}

#[test]
fn a_run_that_fails_midway_leaves_no_bar_behind() {
    // The far end dies in the middle of a transfer: the run ends in an
    // error, which must not be printed after a half-drawn bar.
    let bed = Bed::new(40);
    let mut terminal =
        Run::snapsync(bed.push_args(true, &["--progress", "--bwlimit", "96K"])).start();
    terminal.wait_for_screen("a file on its way", |screen| {
        bar_on(screen).is_some_and(|bar| bar.files_done >= 1)
    });
    let far = fs::read_to_string(bed.tmp.path().join("far.pid")).expect("the far end's pid");
    let killed = Command::new("kill")
        .args(["-KILL", far.trim()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let (code, bytes) = terminal.finish();
    assert_eq!(code, 1, "{}", String::from_utf8_lossy(&bytes));
    let screen = screen_of(&bytes);
    let shown = lines(&screen);
    assert_eq!(shown.len(), 1, "{shown:#?}");
    assert!(
        shown[0].starts_with("snapsync: error: lost the connection"),
        "{shown:#?}"
    );
    assert_eq!(screen.cursor_position(), (1, 0), "{shown:#?}");
}
