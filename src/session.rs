//! The session driver: scan → change set → plan → transfer/apply →
//! snapshot commit, for push and pull alike (the direction only decides
//! which endpoint is the source). It holds two [`Endpoint`]s and never knows
//! whether either is local or remote.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use serde::Serialize;

use crate::apply::Xattrs;
use crate::changes::DiffOptions;
use crate::endpoint::{Applied, Endpoint, EndpointError, OpFailure, Role, SessionRequest};
use crate::model::{Entry, Hash, Kind, RelPath};
use crate::plan::{Item, Op, Phase, Plan, PlanCounts};
use crate::reconcile::{
    hashes_wanted, paths_to_look_up, plan_replica, ReplicaInput, ReplicaOptions,
};
use crate::state::{chrono_like_now, SnapshotUpdate};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// LOCAL → REMOTE.
    Push,
    /// REMOTE → LOCAL.
    Pull,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Push => "push",
            Direction::Pull => "pull",
        }
    }
}

#[derive(Debug, Clone)]
pub struct SyncOptions {
    pub direction: Direction,
    pub session: String,
    pub reset: bool,
    pub dry_run: bool,
    pub diff: DiffOptions,
    pub replica: ReplicaOptions,
}

/// Hears about a run as it goes: the CLI's progress bar and `-v` lines.
pub trait Observer: Sync {
    fn planned(&self, _plan: &Plan) {}
    fn done(&self, _item: &Item, _bytes: u64) {}
    fn warning(&self, _message: &str) {}
}

/// The run's summary, as printed and as `--json` keys.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Summary {
    pub created: u64,
    pub updated: u64,
    pub deleted: u64,
    pub renamed: u64,
    pub copied: u64,
    pub conflicts: u64,
    pub errors: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub files_scanned: u64,
    pub seconds: f64,
}

pub struct Outcome {
    pub summary: Summary,
    pub plan: Plan,
    /// Paths that failed, with what happened; all others were synced.
    pub failures: Vec<(RelPath, String)>,
    /// Stopped by a signal before the plan was done.
    pub interrupted: bool,
}

/// Runs one push or pull between `local` and `remote`. `stop` is checked
/// between operations: when set, the file in flight finishes, what was done
/// is saved, and the run ends early.
pub fn run_replica(
    local: &dyn Endpoint,
    remote: &dyn Endpoint,
    options: &SyncOptions,
    observer: &dyn Observer,
    stop: &AtomicBool,
) -> Result<Outcome, EndpointError> {
    let clock = Instant::now();
    let started_at = chrono_like_now();
    let (source, target) = match options.direction {
        Direction::Push => (local, remote),
        Direction::Pull => (remote, local),
    };
    let request = |role| SessionRequest {
        session: options.session.clone(),
        direction: options.direction.as_str().to_string(),
        role,
        reset: options.reset,
        dry_run: options.dry_run,
    };
    source.open_session(&request(Role::Source))?;
    target.open_session(&request(Role::Target))?;

    let (source_set, target_set) = std::thread::scope(|scope| {
        let source_scan = scope.spawn(|| source.scan(&options.diff));
        let target_set = target.scan(&options.diff);
        let source_set = source_scan
            .join()
            .unwrap_or_else(|_| Err(EndpointError::Root("the source scan failed".into())));
        (source_set, target_set)
    });
    let (source_set, target_set) = (source_set?, target_set?);
    for warning in source_set.warnings.iter().chain(&target_set.warnings) {
        observer.warning(warning);
    }
    let mut failures: Vec<(RelPath, String)> = Vec::new();
    for (set, side) in [(&source_set, source), (&target_set, target)] {
        for (dir, reason) in &set.unreadable {
            failures.push((
                dir.clone(),
                format!(
                    "cannot read directory {dir} in {}: {reason}",
                    side.describe()
                ),
            ));
        }
    }

    let wanted = paths_to_look_up(&source_set, &target_set);
    let source_now = source.lookup(&wanted)?;
    let target_now = target.lookup(&wanted)?;
    let content = target.find_content(&hashes_wanted(&source_set))?;
    let plan = plan_replica(
        &ReplicaInput {
            source: &source_set,
            target: &target_set,
            source_now: &source_now,
            target_now: &target_now,
            target_content: &content,
        },
        &options.replica,
    );
    observer.planned(&plan);
    let files_scanned = source_set.files_scanned + target_set.files_scanned;

    if options.dry_run {
        let counts = plan.counts();
        let mut summary = summary_from(counts, 0, options.direction, &failures);
        summary.files_scanned = files_scanned;
        summary.seconds = clock.elapsed().as_secs_f64();
        return Ok(Outcome {
            summary,
            plan,
            failures,
            interrupted: false,
        });
    }

    let run = Run {
        source,
        target,
        observer,
        stop,
        xattrs: options.diff.preserve.xattrs,
        target_now: &target_now,
        pending: Mutex::new(Pending::default()),
        counts: Mutex::new(PlanCounts::default()),
        bytes: AtomicU64::new(0),
        failures: Mutex::new(failures),
        failed_prefixes: Mutex::new(Vec::new()),
        commit_error: Mutex::new(None),
        interrupted: AtomicBool::new(false),
    };
    run.execute(&plan);
    run.flush();
    if let Some(error) = run.commit_error.lock().unwrap().take() {
        return Err(error);
    }
    let interrupted = run.interrupted.load(Ordering::SeqCst);
    let counts = *run.counts.lock().unwrap();
    let mut failures = run.failures.into_inner().unwrap();
    failures.sort_by(|a, b| a.0.cmp(&b.0));
    let mut summary = summary_from(
        counts,
        run.bytes.load(Ordering::SeqCst),
        options.direction,
        &failures,
    );
    summary.files_scanned = files_scanned;
    summary.seconds = clock.elapsed().as_secs_f64();
    let record = serde_json::to_string(&summary).unwrap_or_default();
    target.finish(!interrupted, &failures, &started_at, &record)?;
    source.finish(!interrupted, &failures, &started_at, &record)?;
    Ok(Outcome {
        summary,
        plan,
        failures,
        interrupted,
    })
}

fn summary_from(
    counts: PlanCounts,
    bytes: u64,
    direction: Direction,
    failures: &[(RelPath, String)],
) -> Summary {
    let (bytes_sent, bytes_received) = match direction {
        Direction::Push => (bytes, 0),
        Direction::Pull => (0, bytes),
    };
    Summary {
        created: counts.created,
        updated: counts.updated,
        deleted: counts.deleted,
        renamed: counts.renamed,
        copied: counts.copied,
        conflicts: 0,
        errors: failures.len() as u64,
        bytes_sent,
        bytes_received,
        files_scanned: 0,
        seconds: 0.0,
    }
}

#[derive(Default)]
struct Pending {
    target: Vec<SnapshotUpdate>,
    source: Vec<SnapshotUpdate>,
    since: Option<Instant>,
}

/// How many settled rows, or how long, before they are written.
const BATCH_ROWS: usize = 2000;
const BATCH_TIME: Duration = Duration::from_millis(500);

struct Run<'a> {
    source: &'a dyn Endpoint,
    target: &'a dyn Endpoint,
    observer: &'a dyn Observer,
    stop: &'a AtomicBool,
    xattrs: bool,
    target_now: &'a HashMap<RelPath, Entry>,
    pending: Mutex<Pending>,
    counts: Mutex<PlanCounts>,
    bytes: AtomicU64,
    failures: Mutex<Vec<(RelPath, String)>>,
    /// Renamed or created directories that failed: what the plan puts
    /// below them is not attempted.
    failed_prefixes: Mutex<Vec<RelPath>>,
    commit_error: Mutex<Option<EndpointError>>,
    interrupted: AtomicBool,
}

impl Run<'_> {
    fn execute(&self, plan: &Plan) {
        let mut phases: [Vec<&Item>; 5] = Default::default();
        for item in &plan.items {
            let index = match item.op.phase() {
                Phase::Renames => 0,
                Phase::Deletes => 1,
                Phase::Mkdirs => 2,
                Phase::Files => 3,
                Phase::DirMeta => 4,
            };
            phases[index].push(item);
        }
        let [renames, mut deletes, mut mkdirs, files, mut dir_meta] = phases;
        deletes.sort_by_key(|item| std::cmp::Reverse(item.path.depth()));
        mkdirs.sort_by_key(|item| item.path.depth());

        for item in renames {
            self.run_item(item);
        }
        for item in deletes {
            self.run_item(item);
        }
        let mut created_dirs = Vec::new();
        for item in mkdirs {
            if self.run_item(item) {
                created_dirs.push(item);
            }
        }
        let workers = (2 * std::thread::available_parallelism().map_or(2, |n| n.get())).max(4);
        match rayon::ThreadPoolBuilder::new().num_threads(workers).build() {
            Ok(pool) => pool.install(|| {
                files.par_iter().for_each(|item| {
                    self.run_item(item);
                })
            }),
            Err(_) => files.iter().for_each(|item| {
                self.run_item(item);
            }),
        }
        // New directories get their final metadata once their contents are in.
        dir_meta.extend(created_dirs);
        dir_meta.sort_by_key(|item| std::cmp::Reverse(item.path.depth()));
        for item in dir_meta {
            self.finish_directory(item);
        }
    }

    fn should_stop(&self) -> bool {
        if self.commit_error.lock().unwrap().is_some() || self.stop.load(Ordering::SeqCst) {
            self.interrupted.store(true, Ordering::SeqCst);
            return true;
        }
        false
    }

    /// Carries out one item and settles it; true when it succeeded.
    fn run_item(&self, item: &Item) -> bool {
        if self.should_stop() {
            return false;
        }
        if let Some(prefix) = self
            .failed_prefixes
            .lock()
            .unwrap()
            .iter()
            .find(|p| item.path.starts_with(p) && item.path != **p)
        {
            self.fail(
                &item.path,
                format!("not synced: {prefix} could not be created"),
            );
            return false;
        }
        let result = match &item.op {
            Op::Transfer { entry } => self.transfer(entry),
            Op::RenameContent { from, entry } | Op::LocalCopy { from, entry } => {
                let xattrs = self.xattrs_of(entry);
                match self.target.apply(&item.op, xattrs.as_ref()) {
                    Err(failure) if failure.stale => {
                        // The content it meant to reuse changed: send it.
                        let sent = self.transfer(entry);
                        if sent.is_ok() && matches!(item.op, Op::RenameContent { .. }) {
                            self.delete_leftover(from);
                        }
                        sent
                    }
                    other => other,
                }
            }
            Op::Mkdir { .. } => {
                // Settled with its metadata, after its contents.
                return match self.target.apply(&item.op, None) {
                    Ok(_) => true,
                    Err(failure) => {
                        self.failed_prefixes.lock().unwrap().push(item.path.clone());
                        self.fail(&failure.path, failure.message);
                        false
                    }
                };
            }
            op => {
                let xattrs = match op {
                    Op::Symlink { entry } | Op::SetMeta { entry, .. } => self.xattrs_of(entry),
                    _ => None,
                };
                self.target.apply(op, xattrs.as_ref())
            }
        };
        match result {
            Ok(applied) => {
                self.settle(item, applied);
                true
            }
            Err(failure) if failure.warning_only => {
                self.observer.warning(&failure.message);
                // The source's side is settled; the target keeps the path.
                self.settle(
                    item,
                    Applied {
                        updates: Vec::new(),
                        bytes: 0,
                    },
                );
                true
            }
            Err(failure) => {
                if matches!(item.op, Op::Rename { .. }) {
                    self.failed_prefixes.lock().unwrap().push(item.path.clone());
                }
                self.fail(&failure.path, failure.message);
                false
            }
        }
    }

    fn finish_directory(&self, item: &Item) {
        if self.should_stop() {
            return;
        }
        let entry = match &item.op {
            Op::Mkdir { entry } | Op::SetMeta { entry, .. } => entry.clone(),
            _ => return,
        };
        let xattrs = self.xattrs_of(&entry);
        let op = Op::SetMeta {
            entry,
            restore: false,
        };
        match self.target.apply(&op, xattrs.as_ref()) {
            Ok(applied) => self.settle(item, applied),
            Err(failure) => self.fail(&failure.path, failure.message),
        }
    }

    fn transfer(&self, entry: &Entry) -> Result<Applied, OpFailure> {
        let failure = |message: String| OpFailure {
            path: entry.path.clone(),
            message,
            stale: false,
            warning_only: false,
        };
        let xattrs = self.xattrs_of(entry);
        let mut data = self
            .source
            .open_file(entry)
            .map_err(|e| failure(format!("cannot read {}: {e}", entry.path)))?;
        let source = self.source;
        let verify = |hash: &Hash| -> Result<(), String> {
            let changed = || {
                format!(
                    "{} changed while it was being copied; it will be synced on the next run",
                    entry.path
                )
            };
            if entry.hash.is_some_and(|expected| expected != *hash) {
                return Err(changed());
            }
            match source.unchanged_since_scan(entry) {
                Ok(true) => Ok(()),
                Ok(false) => Err(changed()),
                Err(e) => Err(format!("{} vanished while being copied: {e}", entry.path)),
            }
        };
        let applied = self
            .target
            .write_file(entry, xattrs.as_ref(), &mut data, &verify)?;
        self.bytes.fetch_add(applied.bytes, Ordering::Relaxed);
        Ok(applied)
    }

    /// After content meant to be moved had to be sent instead, the old path
    /// still holds it and must go as the plan said.
    fn delete_leftover(&self, from: &RelPath) {
        let entry = self.target_now.get(from).cloned().unwrap_or_else(|| Entry {
            path: from.clone(),
            kind: Kind::File,
            size: 0,
            mtime: Default::default(),
            mode: 0,
            uid: 0,
            gid: 0,
            dev: 0,
            ino: 0,
            hash: None,
            link_target: None,
            xattr_hash: None,
        });
        let mut entry = entry;
        entry.path = from.clone();
        match self.target.apply(&Op::Delete { entry }, None) {
            Ok(applied) => self.queue(applied.updates, None),
            Err(failure) => self.fail(&failure.path, failure.message),
        }
    }

    fn xattrs_of(&self, entry: &Entry) -> Option<Xattrs> {
        if !self.xattrs {
            return None;
        }
        match self.source.read_xattrs(entry) {
            Ok(pairs) => Some(pairs),
            Err(e) => {
                self.observer.warning(&format!(
                    "cannot read extended attributes of {}: {e}",
                    entry.path
                ));
                None
            }
        }
    }

    fn fail(&self, path: &RelPath, message: String) {
        self.failures.lock().unwrap().push((path.clone(), message));
    }

    /// Records a successful item: its snapshot rows on both sides (written in
    /// batches, target first) and its counts.
    fn settle(&self, item: &Item, applied: Applied) {
        let written_hash = applied.updates.iter().find_map(|u| match u {
            SnapshotUpdate::Upsert(e) if e.path == item.path => e.hash,
            _ => None,
        });
        let source_update = item.source_update.clone().map(|update| match update {
            SnapshotUpdate::Upsert(mut e) if e.kind == Kind::File && e.hash.is_none() => {
                e.hash = written_hash;
                SnapshotUpdate::Upsert(e)
            }
            other => other,
        });
        let mut target_updates = applied.updates;
        target_updates.extend(item.target_update.clone());
        self.queue(target_updates, source_update);
        self.counts.lock().unwrap().add(item);
        self.observer.done(item, applied.bytes);
    }

    fn queue(&self, target: Vec<SnapshotUpdate>, source: Option<SnapshotUpdate>) {
        let due = {
            let mut pending = self.pending.lock().unwrap();
            pending.target.extend(target);
            pending.source.extend(source);
            let since = *pending.since.get_or_insert_with(Instant::now);
            pending.target.len() + pending.source.len() >= BATCH_ROWS
                || since.elapsed() >= BATCH_TIME
        };
        if due {
            self.flush();
        }
    }

    /// Writes what is pending: the target's rows first, so a crash between
    /// the two leaves the source's rows behind (redone next run), never ahead.
    fn flush(&self) {
        let mut pending = self.pending.lock().unwrap();
        let target = std::mem::take(&mut pending.target);
        let source = std::mem::take(&mut pending.source);
        pending.since = None;
        let result = self
            .target
            .commit(&target)
            .and_then(|()| self.source.commit(&source));
        if let Err(error) = result {
            self.commit_error.lock().unwrap().get_or_insert(error);
        }
    }
}
