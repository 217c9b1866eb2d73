//! What a run prints: warnings and `-v` lines on stderr, the progress bar on
//! a terminal's stderr, the plan (`-n`) and the summary on stdout.
//!
//! Control characters go only to a terminal: the bar (which redraws in
//! place with a carriage return and line erases) only when stderr is one,
//! and colour only when stderr is one, `TERM` is not `dumb` and `NO_COLOR`
//! is unset or empty (<https://no-color.org>). Stdout never gets any, so
//! the summary and the plan read the same on a screen and in a pipe.

use std::ffi::OsStr;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};
use serde_json::json;

use super::args::SyncArgs;
use snapsync::bidi::{Conflict, Side};
use snapsync::plan::{Item, Op, Plan};
use snapsync::session::{Observer, Outcome, Summary};

/// What stderr's labels and bar may use: colour on a terminal unless
/// `NO_COLOR` says otherwise. Decided once per process.
pub fn stderr_colour() -> bool {
    static COLOUR: OnceLock<bool> = OnceLock::new();
    *COLOUR.get_or_init(|| {
        wants_colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
            std::env::var_os("TERM").as_deref(),
        )
    })
}

/// Colour only on a terminal that can show it (`TERM` set, not `dumb`),
/// and only while `NO_COLOR` is unset or empty, as no-color.org asks.
fn wants_colour(terminal: bool, no_color: Option<&OsStr>, term: Option<&OsStr>) -> bool {
    terminal && no_color.is_none_or(OsStr::is_empty) && term.is_some_and(|t| t != "dumb")
}

/// The word that starts a message on stderr, after `snapsync:`.
#[derive(Clone, Copy)]
pub enum Label {
    Error,
    Warning,
    Conflict,
    Interrupted,
}

/// `snapsync: error:` and the like, the label in colour where stderr
/// takes it.
pub fn label(kind: Label) -> String {
    let (word, sgr) = match kind {
        Label::Error => ("error:", "1;31"),
        Label::Warning => ("warning:", "1;33"),
        Label::Conflict => ("conflict:", "1;33"),
        Label::Interrupted => ("interrupted:", "1;33"),
    };
    if stderr_colour() {
        format!("snapsync: \x1b[{sgr}m{word}\x1b[0m")
    } else {
        format!("snapsync: {word}")
    }
}

/// How far the current plan has got, as the bar and the interrupt message
/// tell it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Progress {
    /// Files whose content is all there or on its way: transfers the
    /// source has handed on whole, and files made from content the target
    /// already holds (copied, moved or linked).
    files_done: u64,
    files_total: u64,
    /// Files in place on the target and recorded: what a stopped run keeps.
    files_saved: u64,
    /// Content of the files the source sends, as it is handed on.
    bytes_done: u64,
    bytes_total: u64,
    /// Every item a user sees (files, directories, links, deletes, renames),
    /// in place.
    items_done: u64,
    items_total: u64,
}

impl Progress {
    /// What the bar's length measures: bytes when any travel, else items.
    fn units(&self) -> (u64, u64) {
        if self.bytes_total > 0 {
            (self.bytes_done.min(self.bytes_total), self.bytes_total)
        } else {
            (self.items_done.min(self.items_total), self.items_total)
        }
    }
}

/// The counters behind [`Progress`], shared with the bar's drawing thread.
#[derive(Default)]
struct Tally {
    files_done: AtomicU64,
    files_total: AtomicU64,
    files_saved: AtomicU64,
    bytes_done: AtomicU64,
    bytes_total: AtomicU64,
    items_done: AtomicU64,
    items_total: AtomicU64,
    /// When the plan was known: the rate is measured from there.
    started: Mutex<Option<Instant>>,
}

impl Tally {
    /// Starts over with a new plan (continuous mode plans once a cycle).
    fn plan(&self, plan: &Plan) {
        let (mut files, mut bytes, mut items) = (0, 0, 0);
        for item in visible(plan) {
            items += 1;
            if let Some(sent) = file_content(&item.op) {
                files += 1;
                bytes += sent;
            }
        }
        for (counter, value) in [
            (&self.files_total, files),
            (&self.bytes_total, bytes),
            (&self.items_total, items),
            (&self.files_done, 0),
            (&self.files_saved, 0),
            (&self.bytes_done, 0),
            (&self.items_done, 0),
        ] {
            counter.store(value, Ordering::Relaxed);
        }
        *self.started.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// An item is in place.
    fn done(&self, item: &Item) {
        self.items_done.fetch_add(1, Ordering::Relaxed);
        if file_content(&item.op).is_some() {
            self.files_saved.fetch_add(1, Ordering::Relaxed);
            // A transfer counted as it went (`sending`).
            if !matches!(item.op, Op::Transfer { .. }) {
                self.files_done.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Content handed on by the source: `bytes` more, and with `file_end`
    /// a whole file.
    fn sending(&self, bytes: u64, file_end: bool) {
        self.bytes_done.fetch_add(bytes, Ordering::Relaxed);
        if file_end {
            self.files_done.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn progress(&self) -> Progress {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Progress {
            files_done: get(&self.files_done),
            files_total: get(&self.files_total),
            files_saved: get(&self.files_saved),
            bytes_done: get(&self.bytes_done),
            bytes_total: get(&self.bytes_total),
            items_done: get(&self.items_done),
            items_total: get(&self.items_total),
        }
    }

    fn elapsed(&self) -> Duration {
        self.started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|at| at.elapsed())
            .unwrap_or_default()
    }
}

/// For an item that puts a file's content in place, the bytes of it the
/// source sends: all of a transferred file, none of content the target
/// already holds (`None` for every other item).
fn file_content(op: &Op) -> Option<u64> {
    match op {
        Op::Transfer { entry } => Some(entry.size),
        Op::LocalCopy { .. } | Op::RenameContent { .. } | Op::HardLink { .. } => Some(0),
        _ => None,
    }
}

/// The text after the bar: `12/40 files  1.2 MiB/3.0 MiB  512.0 KiB/s
/// ETA 0:04`, or what the run does once asked to stop.
fn status_text(p: &Progress, elapsed: Duration, stopping: bool) -> String {
    let seconds = elapsed.as_secs_f64();
    let rate = if seconds > 0.0 {
        (p.bytes_done as f64 / seconds) as u64
    } else {
        0
    };
    let tail = if stopping {
        "stopping after the files in flight".to_string()
    } else {
        let (done, total) = p.units();
        match remaining(done, total, seconds) {
            Some(left) => format!("ETA {}", clock(left)),
            None => "ETA --".to_string(),
        }
    };
    // Content the plan meant to reuse but had to send after all is not in
    // the totals; the counts stop at them.
    format!(
        "{}/{} files  {}/{}  {}/s  {tail}",
        p.files_done.min(p.files_total),
        p.files_total,
        human_bytes(p.bytes_done.min(p.bytes_total)),
        human_bytes(p.bytes_total),
        human_bytes(rate)
    )
}

/// Seconds left at the pace so far; unknown until something is done.
fn remaining(done: u64, total: u64, seconds: f64) -> Option<f64> {
    if done == 0 || seconds <= 0.0 {
        return None;
    }
    let left = total.saturating_sub(done) as f64 * seconds / done as f64;
    left.is_finite().then_some(left)
}

/// `m:ss`, or `h:mm:ss` from an hour on.
fn clock(seconds: f64) -> String {
    let s = seconds.round().min(u64::MAX as f64) as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// What an interrupted run says about where it stopped.
fn interrupted_text(p: &Progress) -> String {
    let (done, total, what) = if p.files_total > 0 {
        (p.files_saved, p.files_total, "files")
    } else {
        (p.items_done, p.items_total, "changes")
    };
    format!("{done} of {total} {what} done and saved; run the same command again to finish")
}

/// Where the bar is drawn: stderr, redrawn at most 20 times a second.
fn bar_target() -> ProgressDrawTarget {
    ProgressDrawTarget::term_like_with_hz(Box::new(BarTerm(console::Term::buffered_stderr())), 20)
}

/// Stderr as the bar sees it: a little narrower than the terminal. A line
/// that reaches the last column leaves the cursor waiting to wrap, and the
/// terminal's echo of a Ctrl-C (`^C`) would then start a new line that the
/// next redraw does not erase; with room to spare the echo lands on the
/// bar's own line and goes with it.
#[derive(Debug)]
struct BarTerm(console::Term);

/// Columns the bar leaves free at the right: the `^C` echo and the cursor.
const BAR_MARGIN: u16 = 3;

impl TermLike for BarTerm {
    fn width(&self) -> u16 {
        self.0.size().1.saturating_sub(BAR_MARGIN).max(1)
    }

    fn height(&self) -> u16 {
        self.0.size().0
    }

    fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
        self.0.move_cursor_up(n)
    }

    fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
        self.0.move_cursor_down(n)
    }

    fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
        self.0.move_cursor_right(n)
    }

    fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
        self.0.move_cursor_left(n)
    }

    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.0.write_line(s)
    }

    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.0.write_str(s)
    }

    fn clear_line(&self) -> std::io::Result<()> {
        self.0.clear_line()
    }

    fn flush(&self) -> std::io::Result<()> {
        self.0.flush()
    }
}

pub struct Printer {
    verbose: u8,
    quiet: bool,
    json: bool,
    dry_run: bool,
    bidi: bool,
    /// `--progress` with stderr on a terminal.
    progress: bool,
    /// The bar on screen, if any: from the start until the first pass
    /// finishes, then (continuous mode) once a cycle from its plan on.
    bar: Mutex<Option<ProgressBar>>,
    tally: Arc<Tally>,
    /// Set by SIGINT / SIGTERM: the bar says the run is stopping.
    stop: Arc<AtomicBool>,
}

impl Printer {
    pub fn new(args: &SyncArgs, bidi: bool, stop: Arc<AtomicBool>) -> Self {
        let progress = args.progress && std::io::stderr().is_terminal() && !args.quiet;
        let printer = Printer {
            verbose: args.verbose,
            quiet: args.quiet,
            json: args.json,
            dry_run: args.dry_run,
            bidi,
            progress,
            bar: Mutex::new(None),
            tally: Arc::new(Tally::default()),
            stop,
        };
        if progress {
            // The bar's styles follow the same rule as the labels.
            console::set_colors_enabled_stderr(stderr_colour());
            let bar = ProgressBar::with_draw_target(None, bar_target());
            let stop = Arc::clone(&printer.stop);
            bar.set_style(
                ProgressStyle::with_template("{spinner:.green} {phase} {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner())
                    .with_key(
                        "phase",
                        move |_: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                            let _ = w.write_str(if stop.load(Ordering::Relaxed) {
                                "stopping"
                            } else {
                                "scanning"
                            });
                        },
                    ),
            );
            bar.enable_steady_tick(Duration::from_millis(100));
            *printer.bar.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar);
        }
        printer
    }

    /// The style once the plan is known: spinner, bar, files, bytes, rate
    /// and ETA.
    fn transfer_style(&self) -> ProgressStyle {
        let tally = Arc::clone(&self.tally);
        let stop = Arc::clone(&self.stop);
        ProgressStyle::with_template("{spinner:.green} [{wide_bar:.green}] {status}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .with_key(
                "status",
                move |_: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let text = status_text(
                        &tally.progress(),
                        tally.elapsed(),
                        stop.load(Ordering::Relaxed),
                    );
                    let _ = w.write_str(&text);
                },
            )
            .progress_chars("=> ")
    }

    fn line(&self, text: &str) {
        match &*self.bar.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    /// Brings the bar up to the tally (it draws at most 20 times a second).
    fn move_bar(&self) {
        if !self.progress {
            return;
        }
        if let Some(bar) = &*self.bar.lock().unwrap_or_else(|e| e.into_inner()) {
            bar.set_position(self.tally.progress().units().0);
        }
    }

    /// Takes the bar off the screen, leaving the cursor at the start of
    /// the line it held.
    pub fn clear_progress(&self) {
        if let Some(bar) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).take() {
            bar.finish_and_clear();
        }
    }

    pub fn finish(&self, outcome: &Outcome) {
        self.clear_progress();
        for (path, message) in &outcome.failures {
            eprintln!("{} {path}: {message}", label(Label::Error));
        }
        if outcome.interrupted {
            eprintln!(
                "{} {}",
                label(Label::Interrupted),
                interrupted_text(&self.tally.progress())
            );
        }
        let bidi = self.bidi;
        let plan_lines: Vec<String> = if self.dry_run {
            let lines = |plan, toward| {
                visible(plan)
                    .map(move |item| line_for(item, bidi.then_some(toward)))
                    .collect::<Vec<_>>()
            };
            let mut all = lines(&outcome.plan, Side::Remote);
            all.extend(lines(&outcome.plan_to_local, Side::Local));
            all
        } else {
            Vec::new()
        };
        if self.json {
            let mut value = serde_json::to_value(&outcome.summary).unwrap_or_default();
            if self.dry_run {
                value["plan"] = json!(plan_lines);
            }
            say!("{value}");
            return;
        }
        for line in &plan_lines {
            say!("{line}");
        }
        if !self.quiet {
            say!("{}", summary_line(&outcome.summary, self.dry_run));
        }
    }
}

/// A run that ends in an error (a lost connection, a refused root) never
/// reaches `finish`; its bar goes all the same, before the error is
/// printed. (The bar's own clearing when dropped may run on its ticking
/// thread, after the error is on the screen.)
impl Drop for Printer {
    fn drop(&mut self) {
        self.clear_progress();
    }
}

fn visible(plan: &Plan) -> impl Iterator<Item = &Item> {
    plan.items
        .iter()
        .filter(|item| !matches!(item.op, Op::Record | Op::SetMeta { restore: true, .. }))
}

impl Observer for Printer {
    fn planned(&self, plan: &Plan) {
        self.tally.plan(plan);
        if !self.progress {
            return;
        }
        let mut bar = self.bar.lock().unwrap_or_else(|e| e.into_inner());
        let bar = bar.get_or_insert_with(|| {
            let bar = ProgressBar::with_draw_target(None, bar_target());
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        let (done, total) = self.tally.progress().units();
        bar.set_style(self.transfer_style());
        bar.set_length(total);
        bar.set_position(done);
    }

    fn done(&self, item: &Item, _bytes: u64, toward: Option<Side>) {
        if matches!(item.op, Op::Record | Op::SetMeta { restore: true, .. }) {
            return;
        }
        self.tally.done(item);
        if self.verbose > 0 {
            self.line(&line_for(item, toward));
        }
        self.move_bar();
    }

    fn conflict(&self, conflict: &Conflict) {
        if !self.quiet {
            self.line(&format!(
                "{} {} (local {}, remote {}); left as it is on both sides, see `snapsync conflicts`",
                label(Label::Conflict),
                conflict.path,
                conflict.local.as_str(),
                conflict.remote.as_str()
            ));
        }
    }

    fn warning(&self, message: &str) {
        if !self.quiet {
            self.line(&format!("{} {message}", label(Label::Warning)));
        }
    }

    fn sending(&self, bytes: u64, file_end: bool) {
        self.tally.sending(bytes, file_end);
        self.move_bar();
    }
}
/// A plan item as a line; in bidi, with an arrow for the way it goes.
fn line_for(item: &Item, toward: Option<Side>) -> String {
    match toward {
        None => item.to_string(),
        Some(Side::Remote) => format!("-> {item}"),
        Some(Side::Local) => format!("<- {item}"),
    }
}

fn summary_line(s: &Summary, dry_run: bool) -> String {
    let wire = if s.wire_sent + s.wire_received > 0 {
        format!(
            "; on the wire{} {} out, {} in",
            if s.transport == "quic" { " (QUIC)" } else { "" },
            human_bytes(s.wire_sent),
            human_bytes(s.wire_received)
        )
    } else {
        String::new()
    };
    let removed = if s.source_removed > 0 {
        format!("; removed {} source files", s.source_removed)
    } else {
        String::new()
    };
    format!(
        "{}created {}, updated {}, deleted {}, renamed {}, copied {}, conflicts {}, errors {}; sent {}, received {}{wire}{removed}; scanned {} entries in {:.2}s",
        if dry_run { "dry run: would have " } else { "" },
        s.created,
        s.updated,
        s.deleted,
        s.renamed,
        s.copied,
        s.conflicts,
        s.errors,
        human_bytes(s.bytes_sent),
        human_bytes(s.bytes_received),
        s.files_scanned,
        s.seconds
    )
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapsync::model::{Entry, Kind, RelPath};

    fn item(path: &str, op: impl FnOnce(Entry) -> Op, size: u64) -> Item {
        let path = RelPath::new(path.as_bytes()).unwrap();
        let mut entry = Entry::bare(path.clone(), Kind::File);
        entry.size = size;
        Item {
            path,
            op: op(entry),
            replaces: false,
            source_update: None,
            target_update: None,
        }
    }

    fn plan() -> Plan {
        let from = || RelPath::new(b"old").unwrap();
        Plan {
            items: vec![
                item("a", |entry| Op::Transfer { entry }, 3000),
                item("b", |entry| Op::Transfer { entry }, 1000),
                item(
                    "c",
                    |entry| Op::LocalCopy {
                        from: from(),
                        entry,
                    },
                    500,
                ),
                item("d", |entry| Op::Delete { entry }, 0),
                item("e", |_| Op::Record, 0),
            ],
        }
    }

    #[test]
    fn the_tally_counts_files_bytes_and_what_is_saved() {
        let plan = plan();
        let tally = Tally::default();
        tally.plan(&plan);
        let p = tally.progress();
        // Only sent content counts as bytes; `Record` is not shown at all.
        assert_eq!((p.files_total, p.bytes_total, p.items_total), (3, 4000, 4));

        // A transfer counts as it is handed on, and is saved once in place.
        tally.sending(2000, false);
        tally.sending(1000, true);
        let p = tally.progress();
        assert_eq!((p.files_done, p.files_saved, p.bytes_done), (1, 0, 3000));
        tally.done(&plan.items[0]);
        tally.done(&plan.items[2]);
        tally.done(&plan.items[3]);
        let p = tally.progress();
        assert_eq!((p.files_done, p.files_saved, p.items_done), (2, 2, 3));
        assert_eq!(p.units(), (3000, 4000));

        // A new plan (the next cycle) starts from nothing.
        tally.plan(&Plan::default());
        assert_eq!(tally.progress(), Progress::default());
    }

    #[test]
    fn the_status_shows_files_bytes_rate_and_eta() {
        let p = Progress {
            files_done: 12,
            files_total: 40,
            files_saved: 10,
            bytes_done: 1 << 20,
            bytes_total: 3 << 20,
            items_done: 12,
            items_total: 45,
        };
        assert_eq!(
            status_text(&p, Duration::from_secs(2), false),
            "12/40 files  1.0 MiB/3.0 MiB  512.0 KiB/s  ETA 0:04"
        );
        assert_eq!(
            status_text(&p, Duration::from_secs(2), true),
            "12/40 files  1.0 MiB/3.0 MiB  512.0 KiB/s  stopping after the files in flight"
        );
        // Nothing done yet: no rate, no estimate.
        let start = Progress {
            files_total: 40,
            bytes_total: 3 << 20,
            items_total: 45,
            ..Progress::default()
        };
        assert_eq!(
            status_text(&start, Duration::ZERO, false),
            "0/40 files  0 B/3.0 MiB  0 B/s  ETA --"
        );
        // Content sent after all where the plan meant to reuse it is not
        // in the totals; the counts do not run past them.
        let over = Progress {
            files_done: 41,
            bytes_done: 4 << 20,
            ..p
        };
        assert!(status_text(&over, Duration::from_secs(2), false)
            .starts_with("40/40 files  3.0 MiB/3.0 MiB"));
    }

    #[test]
    fn without_data_to_send_the_estimate_goes_by_items() {
        let p = Progress {
            items_done: 10,
            items_total: 40,
            ..Progress::default()
        };
        assert_eq!(p.units(), (10, 40));
        assert!(status_text(&p, Duration::from_secs(5), false).ends_with("ETA 0:15"));
    }

    #[test]
    fn estimates_read_as_clock_times() {
        assert_eq!(clock(0.0), "0:00");
        assert_eq!(clock(59.6), "1:00");
        assert_eq!(clock(3599.0), "59:59");
        assert_eq!(clock(3600.0 * 26.0 + 61.0), "26:01:01");
        assert_eq!(clock(f64::MAX), clock(u64::MAX as f64));
        assert_eq!(remaining(0, 10, 5.0), None);
        assert_eq!(remaining(5, 10, 0.0), None);
        assert_eq!(remaining(5, 10, 5.0), Some(5.0));
        assert_eq!(remaining(12, 10, 5.0), Some(0.0));
    }

    #[test]
    fn an_interrupted_run_says_what_it_saved_and_how_to_go_on() {
        let p = Progress {
            files_done: 9,
            files_total: 200,
            files_saved: 7,
            ..Progress::default()
        };
        assert_eq!(
            interrupted_text(&p),
            "7 of 200 files done and saved; run the same command again to finish"
        );
        let no_files = Progress {
            items_done: 3,
            items_total: 8,
            ..Progress::default()
        };
        assert!(interrupted_text(&no_files).starts_with("3 of 8 changes done"));
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        let term = Some(OsStr::new("xterm-256color"));
        assert!(wants_colour(true, None, term));
        // no-color.org: set and not empty turns colour off.
        assert!(!wants_colour(true, Some(OsStr::new("1")), term));
        assert!(wants_colour(true, Some(OsStr::new("")), term));
        assert!(!wants_colour(false, None, term));
        assert!(!wants_colour(true, None, Some(OsStr::new("dumb"))));
        assert!(!wants_colour(true, None, None));
    }
}
