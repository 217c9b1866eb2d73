//! What a run prints: warnings and `-v` lines on stderr, the progress bar on
//! a terminal's stderr, the plan (`-n`) and the summary on stdout.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use super::args::SyncArgs;
use snapsync::bidi::{Conflict, Side};
use snapsync::plan::{Item, Op, Plan};
use snapsync::session::{Observer, Outcome, Summary};

pub struct Printer {
    verbose: u8,
    quiet: bool,
    json: bool,
    dry_run: bool,
    bidi: bool,
    bar: Option<ProgressBar>,
    bytes: AtomicU64,
}

impl Printer {
    pub fn new(args: &SyncArgs, bidi: bool) -> Self {
        let bar = (args.progress && std::io::stderr().is_terminal() && !args.quiet).then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} ops, {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_message("scanning");
            bar.enable_steady_tick(std::time::Duration::from_millis(100));
            bar
        });
        Printer {
            verbose: args.verbose,
            quiet: args.quiet,
            json: args.json,
            dry_run: args.dry_run,
            bidi,
            bar,
            bytes: AtomicU64::new(0),
        }
    }

    fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    pub fn finish(&self, outcome: &Outcome) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        for (path, message) in &outcome.failures {
            eprintln!("snapsync: error: {path}: {message}");
        }
        if outcome.interrupted {
            eprintln!(
                "snapsync: interrupted; what was done is saved, the next run finishes the rest"
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

fn visible(plan: &Plan) -> impl Iterator<Item = &Item> {
    plan.items
        .iter()
        .filter(|item| !matches!(item.op, Op::Record | Op::SetMeta { restore: true, .. }))
}

impl Observer for Printer {
    fn planned(&self, plan: &Plan) {
        if let Some(bar) = &self.bar {
            bar.set_length(visible(plan).count() as u64);
            bar.set_message("0 B");
        }
    }

    fn done(&self, item: &Item, bytes: u64, toward: Option<Side>) {
        if matches!(item.op, Op::Record | Op::SetMeta { restore: true, .. }) {
            return;
        }
        if self.verbose > 0 {
            self.line(&line_for(item, toward));
        }
        if let Some(bar) = &self.bar {
            let total = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
            bar.inc(1);
            bar.set_message(human_bytes(total));
        }
    }

    fn conflict(&self, conflict: &Conflict) {
        if !self.quiet {
            self.line(&format!(
                "snapsync: conflict: {} (local {}, remote {}); left as it is on both sides, see `snapsync conflicts`",
                conflict.path,
                conflict.local.as_str(),
                conflict.remote.as_str()
            ));
        }
    }

    fn warning(&self, message: &str) {
        if !self.quiet {
            self.line(&format!("snapsync: warning: {message}"));
        }
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
