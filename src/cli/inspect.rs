//! The commands that read a root's state rather than sync it: `status`,
//! `conflicts` and `resolve`. They find their root the way git finds a
//! repository. Reading never blocks a running session (SQLite WAL).

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::args::{ConflictsArgs, LsArgs, ResolveArgs, RootArgs, StateArg, StatusArgs};
use super::{absolute, Failure, EXIT_CONFLICTS, EXIT_OK};
use snapsync::log;
use snapsync::model::{hash_hex, Mtime, RelPath};
use snapsync::state::{
    format_utc, read_lineage, ConflictRow, PathRecord, PathState, SessionDb, SessionLock,
};

/// A root and where it keeps its state.
struct Root {
    dir: PathBuf,
    state: PathBuf,
}

impl Root {
    /// From `--root`, or walking up from `start` to the nearest directory
    /// holding `.snapsync/`.
    fn find(start: &Path, args: &RootArgs) -> Result<Root, Failure> {
        if let Some(root) = &args.root {
            let dir = absolute(root)?;
            let state = match &args.state_dir {
                Some(state) => absolute(state)?,
                None => dir.join(".snapsync"),
            };
            return Ok(Root { dir, state });
        }
        let start = absolute(start)?;
        let mut at = Some(start.as_path());
        while let Some(dir) = at {
            if dir.join(".snapsync").is_dir() {
                let state = match &args.state_dir {
                    Some(state) => absolute(state)?,
                    None => dir.join(".snapsync"),
                };
                return Ok(Root {
                    dir: dir.to_path_buf(),
                    state,
                });
            }
            at = dir.parent();
        }
        Err(Failure::error(format!(
            "no snapsync root holds {}: no .snapsync/ directory here or above; give --root DIR when the state is kept elsewhere",
            start.display()
        )))
    }

    /// The sessions recorded here (or just `only`), by name.
    fn sessions(&self, only: Option<&str>) -> Result<Vec<String>, Failure> {
        if let Some(name) = only {
            if !SessionDb::path_for(&self.state, name).exists() {
                return Err(Failure::error(format!(
                    "no session `{name}` is recorded in {}; `snapsync status` lists the sessions there",
                    self.state.display()
                )));
            }
            return Ok(vec![name.to_string()]);
        }
        let listing = std::fs::read_dir(&self.state)
            .map_err(|e| Failure::error(format!("cannot read {}: {e}", self.state.display())))?;
        let mut names: Vec<String> = listing
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| {
                let name = entry.file_name().to_str()?.to_string();
                name.strip_suffix(".db").map(str::to_string)
            })
            .collect();
        names.sort();
        Ok(names)
    }

    /// The session's database (`writable` to record decisions); `None`
    /// while a first run is still making it.
    fn open(&self, session: &str, writable: bool) -> Result<Option<SessionDb>, Failure> {
        SessionDb::open_existing(&self.state, session, writable)
            .map_err(|e| Failure::error(e.to_string()))
    }

    /// `path` (absolute or relative to the working directory) as a path in
    /// this root.
    fn relative(&self, path: &Path) -> Result<RelPath, Failure> {
        let abs = std::path::absolute(path)
            .map_err(|e| Failure::error(format!("cannot resolve {}: {e}", path.display())))?;
        // Resolve the directories, not the name itself: it may be a link,
        // or gone on this side.
        let (parent, name) = match (abs.parent(), abs.file_name()) {
            (Some(parent), Some(name)) => (absolute(parent)?, name.to_os_string()),
            _ => {
                return Err(Failure::usage(format!(
                    "{} names no file or directory; give the path of one under the root",
                    path.display()
                )))
            }
        };
        let full = parent.join(name);
        let inside = full.strip_prefix(&self.dir).map_err(|_| {
            Failure::usage(format!(
                "{} is not inside the root {}; give a path under it (or choose the root with --root)",
                path.display(),
                self.dir.display()
            ))
        })?;
        RelPath::new(inside.as_os_str().as_bytes())
            .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))
    }
}

pub fn status(args: &StatusArgs) -> Result<i32, Failure> {
    let start = args.dir.clone().unwrap_or_else(|| PathBuf::from("."));
    let root = Root::find(&start, &args.root)?;
    let this = std::fs::read_to_string(root.state.join("id"))
        .map(|id| id.trim().to_string())
        .unwrap_or_default();
    let lineage = read_lineage(&root.state).map_err(|e| Failure::error(e.to_string()))?;
    let failed = |e: snapsync::state::StateError| Failure::error(e.to_string());
    let mut sessions = Vec::new();
    for name in root.sessions(args.root.session.as_deref())? {
        let Some(db) = root.open(&name, false)? else {
            continue;
        };
        let facts = db.facts().map_err(failed)?;
        let last_run = db
            .last_run()
            .map_err(failed)?
            .map(|[started, finished, result, summary]| {
                let mut run: serde_json::Value =
                    serde_json::from_str(&summary).unwrap_or_else(|_| json!({}));
                run["started"] = json!(started);
                run["finished"] = json!(finished);
                run["result"] = json!(result);
                run
            });
        let roots = |upstream: bool| -> Vec<String> {
            let mut ids: Vec<String> = lineage
                .iter()
                .filter(|e| {
                    if upstream {
                        e.to == this
                    } else {
                        e.from == this
                    }
                })
                .map(|e| {
                    if upstream {
                        e.from.clone()
                    } else {
                        e.to.clone()
                    }
                })
                .collect();
            ids.sort();
            ids.dedup();
            ids
        };
        let running = SessionLock::holder(&root.state, &name);
        sessions.push(json!({
            "session": name,
            "peer": facts.peer,
            "peer_root_id": facts.peer_root_id,
            "direction": facts.direction,
            "running": running.is_some(),
            "pid": running,
            "last_run": last_run,
            "counts": db.state_counts().map_err(failed)?,
            "upstream": roots(true),
            "downstream": roots(false),
            "logs": db
                .fact("log")
                .map_err(failed)?
                .unwrap_or_else(|| log::default_path(&root.state, &name).display().to_string()),
        }));
    }
    if args.json {
        say!("{}", serde_json::Value::Array(sessions));
        return Ok(EXIT_OK);
    }
    say!("root {} (id {this})", root.dir.display());
    if sessions.is_empty() {
        say!("no sessions recorded");
    }
    for s in &sessions {
        let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
        let run = &s["last_run"];
        let last = if run.is_null() {
            "never run to the end".to_string()
        } else {
            format!(
                "last run {} ({}): created {}, updated {}, deleted {}, renamed {}, conflicts {}, errors {}",
                text(&run["finished"]),
                text(&run["result"]),
                run["created"],
                run["updated"],
                run["deleted"],
                run["renamed"],
                run["conflicts"],
                run["errors"]
            )
        };
        say!(
            "{}\t{} with {}\t{}{}",
            text(&s["session"]),
            text(&s["direction"]),
            text(&s["peer"]),
            if s["running"] == json!(true) {
                format!("running now (process {}); ", text(&s["pid"]))
            } else {
                String::new()
            },
            last
        );
        say!(
            "\t{} paths synced, {} pending, {} errors, {} conflicts",
            s["counts"]["synced"],
            s["counts"]["pending"],
            s["counts"]["error"],
            s["counts"]["conflict"]
        );
        say!("\tlog {}", text(&s["logs"]));
    }
    let all = |upstream: bool| -> Vec<String> {
        let mut ids: Vec<String> = lineage
            .iter()
            .filter(|e| {
                if upstream {
                    e.to == this
                } else {
                    e.from == this
                }
            })
            .map(|e| {
                e.session.clone()
                    + " from/to "
                    + &(if upstream { &e.from } else { &e.to })[..8.min(e.from.len())]
            })
            .collect();
        ids.sort();
        ids.dedup();
        ids
    };
    let (up, down) = (all(true), all(false));
    if !up.is_empty() {
        say!("upstream: {}", up.join(", "));
    }
    if !down.is_empty() {
        say!("downstream: {}", down.join(", "));
    }
    Ok(EXIT_OK)
}

pub fn conflicts(args: &ConflictsArgs) -> Result<i32, Failure> {
    let start = args.dir.clone().unwrap_or_else(|| PathBuf::from("."));
    let root = Root::find(&start, &args.root)?;
    let mut listed: Vec<(String, ConflictRow)> = Vec::new();
    for session in root.sessions(args.root.session.as_deref())? {
        let Some(db) = root.open(&session, false)? else {
            continue;
        };
        let rows = db.conflicts().map_err(|e| Failure::error(e.to_string()))?;
        listed.extend(rows.into_iter().map(|row| (session.clone(), row)));
    }
    if args.json {
        let items: Vec<serde_json::Value> = listed
            .iter()
            .map(|(session, row)| {
                json!({
                    "path": row.record.path.to_string(),
                    "local": row.record.here,
                    "remote": row.record.peer,
                    "session": session,
                    "detected": row.detected,
                    "resolution": row.decision.as_ref().map(|d| d.keep.clone()),
                })
            })
            .collect();
        say!("{}", serde_json::Value::Array(items));
    } else {
        for (session, row) in &listed {
            let pending = match &row.decision {
                Some(d) => format!("; resolved: keep {}, the next run carries it out", d.keep),
                None => String::new(),
            };
            say!(
                "{}\tlocal {}, remote {}\t(session {session}, since {}{pending})",
                row.record.path,
                row.record.here,
                row.record.peer,
                row.detected
            );
        }
        if listed.is_empty() {
            eprintln!("no conflicts in {}", root.dir.display());
        }
    }
    Ok(if listed.is_empty() {
        EXIT_OK
    } else {
        EXIT_CONFLICTS
    })
}

pub fn resolve(args: &ResolveArgs) -> Result<i32, Failure> {
    let first = &args.paths[0];
    let start = first.parent().filter(|p| !p.as_os_str().is_empty());
    let root = Root::find(start.unwrap_or(Path::new(".")), &args.root)?;
    let sessions = root.sessions(args.root.session.as_deref())?;
    let decided = decision_stamp();
    for path in &args.paths {
        let rel = root.relative(path)?;
        let mut holders: Vec<String> = Vec::new();
        for session in &sessions {
            let Some(db) = root.open(session, false)? else {
                continue;
            };
            let rows = db.conflicts().map_err(|e| Failure::error(e.to_string()))?;
            if rows.iter().any(|row| row.record.path == rel) {
                holders.push(session.clone());
            }
        }
        let session = match holders.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(Failure::error(format!(
                    "{rel} is not in conflict in {}; `snapsync conflicts` lists what is",
                    match &args.root.session {
                        Some(name) => format!("session `{name}`"),
                        None => format!("any session of {}", root.dir.display()),
                    }
                )))
            }
            many => {
                return Err(Failure::usage(format!(
                    "{rel} is in conflict in several sessions ({}); choose one with --session",
                    many.join(", ")
                )))
            }
        };
        let db = root.open(&session, true)?.ok_or_else(|| {
            Failure::error(format!("session `{session}` is being set up; try again"))
        })?;
        db.decide(&rel, args.keep.as_str(), &decided)
            .map_err(|e| Failure::error(e.to_string()))?;
        say!(
            "{rel}: keep {} (session {session}); the next run carries it out",
            args.keep.as_str()
        );
    }
    Ok(EXIT_OK)
}

pub fn ls(args: &LsArgs) -> Result<i32, Failure> {
    let start = args.path.clone().unwrap_or_else(|| PathBuf::from("."));
    let root = Root::find(&start, &args.root)?;
    let under = match &args.path {
        Some(path) => root.relative(path)?,
        None => RelPath::root(),
    };
    let only = args.state.map(|state| match state {
        StateArg::Synced => PathState::Synced,
        StateArg::Pending => PathState::Pending,
        StateArg::Error => PathState::Error,
        StateArg::Conflict => PathState::Conflict,
    });
    let sessions = root.sessions(args.root.session.as_deref())?;
    let named = sessions.len() > 1;
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    // A reader that went away (`ls | head`) ends the listing, quietly.
    let mut gone = false;
    let mut put = |text: &str| {
        use std::io::Write as _;
        if !gone && out.write_all(text.as_bytes()).is_err() {
            gone = true;
        }
    };
    let mut first = true;
    if args.json {
        put("[");
    }
    for session in &sessions {
        let Some(db) = root.open(session, false)? else {
            continue;
        };
        db.records_under(&under, &mut |record| {
            if only.is_some_and(|state| state != record.state) {
                return;
            }
            if args.json {
                let text = json_record(&record, session).to_string();
                put(if std::mem::take(&mut first) {
                    "\n"
                } else {
                    ",\n"
                });
                put(&text);
            } else {
                put(&text_record(&record, named.then_some(session.as_str())));
            }
        })
        .map_err(|e| Failure::error(e.to_string()))?;
    }
    if args.json {
        put(if first { "]\n" } else { "\n]\n" });
    }
    use std::io::Write as _;
    let _ = out.flush();
    Ok(EXIT_OK)
}

/// A time with its nanoseconds, RFC 3339 in UTC.
fn mtime_text(mtime: Mtime) -> String {
    let whole = format_utc(mtime.sec);
    if mtime.nsec == 0 {
        return whole;
    }
    format!("{}.{:09}Z", whole.trim_end_matches('Z'), mtime.nsec)
}

fn json_record(record: &PathRecord, session: &str) -> serde_json::Value {
    json!({
        "path": record.path.to_string(),
        "state": record.state.as_str(),
        "kind": record.kind.map(|k| k.as_str()),
        "size": record.size,
        "mtime": record.mtime.map(mtime_text),
        "hash": record.hash.as_ref().map(hash_hex),
        "message": record.message,
        "since": record.since,
        "attempts": record.attempts,
        "planned": record.planned.map(|op| op.as_str()),
        "session": session,
    })
}

/// `STATE  KIND  SIZE  MTIME  PATH  (what is wrong)`, one line.
fn text_record(record: &PathRecord, session: Option<&str>) -> String {
    let note = match record.state {
        PathState::Synced => String::new(),
        PathState::Pending => format!(
            "  (planned: {}, since {})",
            record.planned.map_or("-", |op| op.as_str()),
            record.since.as_deref().unwrap_or("-")
        ),
        PathState::Error => format!(
            "  ({}; {} failed attempts since {})",
            record.message.as_deref().unwrap_or("-"),
            record.attempts.unwrap_or(0),
            record.since.as_deref().unwrap_or("-")
        ),
        PathState::Conflict => format!(
            "  ({}; since {})",
            record.message.as_deref().unwrap_or("-"),
            record.since.as_deref().unwrap_or("-")
        ),
    };
    format!(
        "{}{:<8} {:<7} {:>12} {:<20} {}{note}\n",
        session.map(|s| format!("{s}\t")).unwrap_or_default(),
        record.state.as_str(),
        record.kind.map_or("-", |k| k.as_str()),
        record.size.map_or("-".to_string(), |s| s.to_string()),
        record.mtime.map_or("-".to_string(), |m| format_utc(m.sec)),
        record.path,
    )
}

/// Now, as `YYYYmmdd-HHMMSS` UTC.
fn decision_stamp() -> String {
    snapsync::state::compact_utc_now()
}
