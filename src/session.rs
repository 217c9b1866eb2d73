//! The session driver: scan → change set → plan → transfer/apply →
//! snapshot commit, for push and pull alike (the direction only decides
//! which endpoint is the source). It holds two [`Endpoint`]s and never knows
//! whether either is local or remote.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::apply::{ApplyError, Xattrs};
use crate::bidi::{paths_to_hash, plan_bidi, BidiInput, Conflict, Side};
use crate::changes::DiffOptions;
use crate::changes::{ChangeKind, ChangeSet};
use crate::endpoint::{
    Applied, Done, Endpoint, EndpointError, FileJob, FileSink, FileWriter, LaterResults, OpFailure,
    ReportSink, Role, RunEnd, SessionRequest, SourceEnd, WatchReport, WatchTiming,
};
use crate::guard::{self, MaxDelete, Refusal};
use crate::lineage::{self, Edge};
use crate::model::{Entry, Hash, Kind, Preserve, RelPath};
use crate::plan::{Item, Op, Phase, Plan, PlanCounts};
use crate::reconcile::{
    found_empty, hashes_wanted, paths_to_look_up, plan_replica, target_paths_to_look_up,
    ReplicaInput, ReplicaOptions,
};
use crate::state::{chrono_like_now, SnapshotUpdate};
use crate::state::{ConflictRecord, Decision, SessionFacts};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// LOCAL → REMOTE.
    Push,
    /// REMOTE → LOCAL.
    Pull,
    /// Both ways.
    Bidi,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Push => "push",
            Direction::Pull => "pull",
            Direction::Bidi => "bidi",
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
    /// Each side's session log: rotated at this size; per-file lines when verbose.
    pub log_max: u64,
    pub log_verbose: bool,
    /// `--backup-dir`, as given: each root that receives keeps what a run
    /// deletes or replaces there (relative to it, or absolute on its host).
    pub backup_dir: Option<String>,
    /// `--remove-source-files` (push and pull): the source removes each
    /// file whose copy the target confirmed in this run.
    pub remove_source_files: bool,
    /// `--max-delete`: refuse a run whose plan deletes more.
    pub max_delete: Option<MaxDelete>,
    /// `--bwlimit`: the most file data each root sends per second.
    pub bwlimit: Option<u64>,
}

/// What one cycle scans on each side: everything, or (in continuous mode)
/// only the paths each side's watch reported.
#[derive(Debug, Clone, Default)]
pub enum Scope {
    #[default]
    Full,
    Dirty {
        local: Dirty,
        remote: Dirty,
    },
}

/// Paths a watch reported: entries to stat, and directories to walk whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dirty {
    pub paths: Vec<RelPath>,
    pub trees: Vec<RelPath>,
}

impl Scope {
    fn local(&self) -> Option<&Dirty> {
        match self {
            Scope::Full => None,
            Scope::Dirty { local, .. } => Some(local),
        }
    }

    fn remote(&self) -> Option<&Dirty> {
        match self {
            Scope::Full => None,
            Scope::Dirty { remote, .. } => Some(remote),
        }
    }
}

fn scan_side(
    endpoint: &dyn Endpoint,
    dirty: Option<&Dirty>,
    options: &DiffOptions,
) -> Result<ChangeSet, EndpointError> {
    match dirty {
        None => endpoint.scan(options),
        Some(dirty) => endpoint.scan_dirty(&dirty.paths, &dirty.trees, options),
    }
}

/// Hears about a run as it goes: the CLI's progress bar and `-v` lines.
pub trait Observer: Sync {
    fn planned(&self, _plan: &Plan) {}
    /// An item is done; `toward` says which root it changed (bidi only).
    fn done(&self, _item: &Item, _bytes: u64, _toward: Option<Side>) {}
    /// A bidi run found a conflict; it is left as it is on both sides.
    fn conflict(&self, _conflict: &Conflict) {}
    fn warning(&self, _message: &str) {}
    /// File content on its way, as the source hands it to the target:
    /// `bytes` more of a file (sent, or taken from the target's older
    /// version), and with `file_end` the whole of a file. The file's `done`
    /// follows once the target has it in place, which over a network may
    /// be much later.
    fn sending(&self, _bytes: u64, _file_end: bool) {}
}

/// The target's file sink as the session hands it to the source: tells
/// the observer how far each file's content has got.
struct ObservedSink<'a> {
    sink: &'a dyn FileSink,
    observer: &'a dyn Observer,
}

impl FileSink for ObservedSink<'_> {
    fn open(&self, job: &FileJob) -> Option<Box<dyn FileWriter + '_>> {
        let writer = self.sink.open(job)?;
        Some(Box::new(ObservedWriter {
            writer,
            observer: self.observer,
        }))
    }

    fn wait(&self) -> Result<(), EndpointError> {
        self.sink.wait()
    }
}

struct ObservedWriter<'a> {
    writer: Box<dyn FileWriter + 'a>,
    observer: &'a dyn Observer,
}

impl FileWriter for ObservedWriter<'_> {
    fn literal(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.writer.literal(data)?;
        self.observer.sending(data.len() as u64, false);
        Ok(())
    }

    fn copy(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        self.writer.copy(offset, len)?;
        self.observer.sending(len, false);
        Ok(())
    }

    fn finish(self: Box<Self>, end: SourceEnd) {
        let complete = matches!(end, SourceEnd::Complete { .. });
        self.writer.finish(end);
        if complete {
            self.observer.sending(0, true);
        }
    }
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
    /// Bytes that crossed the network connection, each way (all messages,
    /// not only file data); zero between local roots.
    pub wire_sent: u64,
    pub wire_received: u64,
    /// Files the source removed once their copies were confirmed
    /// (`--remove-source-files`).
    pub source_removed: u64,
    /// What carried the session: `local` (both roots on this host), `ssh`,
    /// or `quic` (the data channel).
    pub transport: String,
    /// The far host's UDP port of the data channel (`quic` only).
    pub udp_port: Option<u16>,
}

pub struct Outcome {
    pub summary: Summary,
    /// What was planned for the target (bidi: for the remote root).
    pub plan: Plan,
    /// Bidi: what was planned for the local root.
    pub plan_to_local: Plan,
    /// Bidi: paths left as they are on both sides.
    pub conflicts: Vec<Conflict>,
    /// Paths that failed, with what happened; all others were synced.
    pub failures: Vec<(RelPath, String)>,
    /// Stopped by a signal before the plan was done.
    pub interrupted: bool,
    /// A dry run whose plan a real run would refuse (`--max-delete`): why.
    pub refused: Option<String>,
}

/// Runs one push, pull or bidi sync between `local` and `remote`. `stop` is
/// checked between operations: when set, the file in flight finishes, what
/// was done is saved, and the run ends early.
pub fn run_replica(
    local: &dyn Endpoint,
    remote: &dyn Endpoint,
    options: &SyncOptions,
    observer: &dyn Observer,
    stop: &AtomicBool,
) -> Result<Outcome, EndpointError> {
    let opened = open_pair(local, remote, options, observer)?;
    let guarded = opened.guarded(options);
    cycle(
        local,
        remote,
        options,
        observer,
        stop,
        &Scope::Full,
        opened.decided,
        guarded,
    )
}

/// What opening the session on both roots found.
struct Opened {
    /// The decisions `resolve` recorded (bidi).
    decided: Vec<(Side, Decision)>,
    /// The session has completed a run on both roots (see
    /// [`guard::established`]).
    established: bool,
}

impl Opened {
    /// Whether this run's scans are held to the guards: once established,
    /// unless `-x` waives them.
    fn guarded(&self, options: &SyncOptions) -> bool {
        self.established && !options.reset
    }
}

/// How messages name each root.
fn root_names(local: &dyn Endpoint, remote: &dyn Endpoint) -> (String, String) {
    (
        format!("local root {}", local.describe()),
        format!("remote root {}", remote.describe()),
    )
}

fn refused(options: &SyncOptions, refusal: Refusal) -> EndpointError {
    EndpointError::Refused(format!("refusing session `{}`: {refusal}", options.session))
}

/// Opens the session on both roots (the direction decides their roles),
/// after the guards have looked at both, and refuses a loop.
/// The local root's role and the remote's.
fn roles(direction: Direction) -> (Role, Role) {
    match direction {
        Direction::Push => (Role::Source, Role::Target),
        Direction::Pull => (Role::Target, Role::Source),
        Direction::Bidi => (Role::Both, Role::Both),
    }
}

/// What the session asks of a root in `role`; with `probe`, only a look.
fn session_request(options: &SyncOptions, role: Role, probe: bool) -> SessionRequest {
    SessionRequest {
        session: options.session.clone(),
        direction: options.direction.as_str().to_string(),
        role,
        reset: options.reset,
        dry_run: options.dry_run,
        log_max: options.log_max,
        log_verbose: options.log_verbose,
        backup_dir: options.backup_dir.clone(),
        remove_source_files: options.remove_source_files,
        probe,
        count_rows: matches!(options.max_delete, Some(MaxDelete::Percent(_))),
        bwlimit: options.bwlimit,
    }
}

/// The look at the remote root a session starts with, which a far end can
/// be asked for as it is started ([`ConnectOptions::probe`]).
///
/// [`ConnectOptions::probe`]: crate::endpoint::ConnectOptions::probe
pub fn remote_probe(options: &SyncOptions) -> SessionRequest {
    session_request(options, roles(options.direction).1, true)
}

fn open_pair(
    local: &dyn Endpoint,
    remote: &dyn Endpoint,
    options: &SyncOptions,
    observer: &dyn Observer,
) -> Result<Opened, EndpointError> {
    let (local_role, remote_role) = roles(options.direction);
    let request = |role, probe| session_request(options, role, probe);
    // Both roots are looked at (the source first, as below) before either
    // is opened, since opening writes (a target made, a state directory, a
    // root id, a database): a root that lost its state must not get a new
    // one first, and neither root is touched when the other is unusable.
    let (local_found, remote_found) = if options.direction == Direction::Pull {
        let remote_found = remote.open_session(&request(remote_role, true))?;
        (
            local.open_session(&request(local_role, true))?,
            remote_found,
        )
    } else {
        let local_found = local.open_session(&request(local_role, true))?;
        (
            local_found,
            remote.open_session(&request(remote_role, true))?,
        )
    };
    let (local_name, remote_name) = root_names(local, remote);
    let local_root = guard::Root {
        name: &local_name,
        source_only: local_role == Role::Source,
        facts: &local_found,
    };
    let remote_root = guard::Root {
        name: &remote_name,
        source_only: remote_role == Role::Source,
        facts: &remote_found,
    };
    guard::check_roots(local_root, remote_root, options.reset)
        .map_err(|refusal| refused(options, refusal))?;
    // A first run stopped midway left a snapshot on one root, and the other
    // has lost what it had since: that snapshot goes, as with -x (the real
    // open sets it aside, put back if the run is refused before it starts).
    let unfinished =
        guard::unfinished_on_one_side(local_root, remote_root).filter(|_| !options.reset);
    if let Some((lone, other)) = unfinished {
        observer.warning(&format!(
            "session `{}` never completed a run, and only the {} holds its snapshot (the {} has none: removed since?); that snapshot is set aside and both trees are compared in full, as with -x",
            options.session, lone.name, other.name
        ));
    }
    let reset = options.reset || unfinished.is_some();
    let request = |role| SessionRequest {
        reset,
        ..request(role, false)
    };
    // The source opens first: a missing source is the error to report.
    let (local_facts, remote_facts) = if options.direction == Direction::Pull {
        let remote_facts = remote.open_session(&request(remote_role))?;
        (local.open_session(&request(local_role))?, remote_facts)
    } else {
        let local_facts = local.open_session(&request(local_role))?;
        (local_facts, remote.open_session(&request(remote_role))?)
    };
    refuse_loops(
        local,
        remote,
        &local_facts,
        &remote_facts,
        options,
        observer,
    )?;
    Ok(Opened {
        established: guard::established(&local_facts, &remote_facts),
        decided: decisions_of(local_facts, remote_facts),
    })
}

/// One pass of whichever direction the session has; `guarded`: its scans
/// are held to the guards (an emptied root stops it).
#[allow(clippy::too_many_arguments)]
fn cycle(
    local: &dyn Endpoint,
    remote: &dyn Endpoint,
    options: &SyncOptions,
    observer: &dyn Observer,
    stop: &AtomicBool,
    scope: &Scope,
    decided: Vec<(Side, Decision)>,
    guarded: bool,
) -> Result<Outcome, EndpointError> {
    match options.direction {
        Direction::Bidi => bidi_cycle(
            local, remote, options, observer, stop, scope, decided, guarded,
        ),
        _ => replica_cycle(local, remote, options, observer, stop, scope, guarded),
    }
}

/// How continuous mode waits.
#[derive(Debug, Clone, Copy)]
pub struct ContinuousOptions {
    /// Quiet time before a burst of changes is synced.
    pub cooloff: Duration,
    /// Period of the safety rescans, and of polling where a root cannot be watched.
    pub scan_interval: Duration,
}

/// The longest a constantly changing tree delays a cycle.
const MAX_COOLOFF_WAIT: Duration = Duration::from_secs(2);

/// Continuous mode: a full first pass, then a cycle for each burst of
/// changes either root reports, scanning only the paths reported; a full
/// rescan when a watch cannot vouch for its events, every `scan_interval`,
/// and as polling where a root cannot be watched. A lost connection to the
/// remote root is made again (`connect`) with back-off, then a full pass
/// syncs what changed meanwhile. Ends when `stop` is set (after the file in
/// flight), with every cycle's outcome handed to `each`.
#[allow(clippy::too_many_arguments)]
pub fn run_continuous(
    local: &dyn Endpoint,
    connect: &dyn Fn() -> Result<Box<dyn Endpoint>, EndpointError>,
    options: &SyncOptions,
    continuous: &ContinuousOptions,
    observer: &dyn Observer,
    stop: &AtomicBool,
    each: &mut dyn FnMut(&Outcome),
) -> Result<(), EndpointError> {
    let (tx, rx) = crossbeam_channel::bounded::<(Side, WatchReport)>(64);
    let timing = WatchTiming {
        cooloff: continuous.cooloff,
        max_wait: MAX_COOLOFF_WAIT.max(continuous.cooloff),
    };
    let watch = |side: Side, endpoint: &dyn Endpoint| {
        let tx = tx.clone();
        let sink: ReportSink = Box::new(move |report| tx.send((side, report)).is_ok());
        if let Err(error) = endpoint.watch(timing, sink) {
            observer.warning(&format!(
                "{}: {error}; polling it every {} s instead",
                endpoint.describe(),
                continuous.scan_interval.as_secs()
            ));
        }
    };
    let mut remote = connect()?;
    let opened = open_pair(local, remote.as_ref(), options, observer)?;
    let guarded = opened.guarded(options);
    // Watching starts before the first pass, so nothing changed during it
    // goes unseen (its first reports may repeat what the pass found).
    watch(Side::Local, local);
    watch(Side::Remote, remote.as_ref());
    let first = cycle(
        local,
        remote.as_ref(),
        options,
        observer,
        stop,
        &Scope::Full,
        opened.decided,
        guarded,
    )?;
    each(&first);
    // The first pass ran to its end (else `stop` is set): the session is
    // established, and `-x` has done its work. From here on every cycle
    // is held to the guards (an unmounted disk under a running session
    // must not empty its peer), and reconnecting opens the session as it
    // is, looked at first.
    let options = &SyncOptions {
        reset: false,
        ..options.clone()
    };
    let mut next_rescan = Instant::now() + continuous.scan_interval;
    let mut told: BTreeSet<String> = BTreeSet::new();
    // While conflicts are pending, `resolve` may be run beside the session:
    // its decisions are looked for every second (they touch no synced path,
    // so no watch reports them).
    let mut conflicts_pending = !first.conflicts.is_empty();
    let mut next_decision_check = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let wait = next_rescan
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(200));
        let scope = match rx.recv_timeout(wait) {
            Ok(first) => {
                let mut reports = vec![first];
                reports.extend(rx.try_iter());
                merge_reports(reports, &mut |reason| {
                    // Each kind of fallback is said once.
                    if told.insert(reason.to_string()) {
                        observer.warning(&format!("{reason}; rescanning against the snapshot"));
                    }
                })
            }
            Err(_) if Instant::now() >= next_rescan => Scope::Full,
            Err(_) if conflicts_pending && Instant::now() >= next_decision_check => {
                next_decision_check = Instant::now() + Duration::from_secs(1);
                let decided = decisions_now(local, remote.as_ref(), options)?;
                if decided.is_empty() {
                    continue;
                }
                let paths: Vec<RelPath> = decided.iter().map(|(_, d)| d.path.clone()).collect();
                let dirty = Dirty {
                    paths,
                    trees: Vec::new(),
                };
                Scope::Dirty {
                    local: dirty.clone(),
                    remote: dirty,
                }
            }
            Err(_) => continue,
        };
        if matches!(scope, Scope::Full) {
            next_rescan = Instant::now() + continuous.scan_interval;
        }
        let result = decisions_now(local, remote.as_ref(), options).and_then(|decided| {
            cycle(
                local,
                remote.as_ref(),
                options,
                observer,
                stop,
                &scope,
                decided,
                true,
            )
        });
        match result {
            Ok(outcome) => {
                // Only a full pass can say that none are left.
                if matches!(scope, Scope::Full) {
                    conflicts_pending = !outcome.conflicts.is_empty();
                } else {
                    conflicts_pending |= !outcome.conflicts.is_empty();
                }
                each(&outcome);
            }
            Err(EndpointError::Lost(why)) => {
                drop(remote);
                remote = match reconnect(local, connect, options, observer, stop, &why)? {
                    Some(again) => again,
                    None => break,
                };
                watch(Side::Remote, remote.as_ref());
                let decided = decisions_now(local, remote.as_ref(), options)?;
                let outcome = cycle(
                    local,
                    remote.as_ref(),
                    options,
                    observer,
                    stop,
                    &Scope::Full,
                    decided,
                    true,
                )?;
                each(&outcome);
            }
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// The decisions `resolve` recorded on either root (bidi), read anew for
/// each cycle so that a running session carries them out.
fn decisions_now(
    local: &dyn Endpoint,
    remote: &dyn Endpoint,
    options: &SyncOptions,
) -> Result<Vec<(Side, Decision)>, EndpointError> {
    if options.direction != Direction::Bidi {
        return Ok(Vec::new());
    }
    let mut decided: Vec<(Side, Decision)> = local
        .decisions()?
        .into_iter()
        .map(|d| (Side::Local, d))
        .collect();
    decided.extend(remote.decisions()?.into_iter().map(|d| (Side::Remote, d)));
    Ok(decided)
}

/// The first wait before connecting again, doubled after each failure.
const RECONNECT_FIRST: Duration = Duration::from_secs(1);
const RECONNECT_MAX: Duration = Duration::from_secs(60);

/// Connects to the remote root again, waiting longer after each failure,
/// until it works (the session is open there again) or `stop` is set
/// (`None`). A refusal that retrying cannot cure ends the session.
fn reconnect(
    local: &dyn Endpoint,
    connect: &dyn Fn() -> Result<Box<dyn Endpoint>, EndpointError>,
    options: &SyncOptions,
    observer: &dyn Observer,
    stop: &AtomicBool,
    why: &str,
) -> Result<Option<Box<dyn Endpoint>>, EndpointError> {
    observer.warning(&format!("{why}; connecting again"));
    let mut delay = RECONNECT_FIRST;
    loop {
        let deadline = Instant::now() + delay;
        while Instant::now() < deadline {
            if stop.load(Ordering::SeqCst) {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let attempt = connect().and_then(|remote| {
            open_pair(local, remote.as_ref(), options, observer)?;
            Ok(remote)
        });
        match attempt {
            Ok(remote) => {
                observer.warning(&format!("connected to {} again", remote.describe()));
                return Ok(Some(remote));
            }
            Err(EndpointError::Refused(message)) => return Err(EndpointError::Refused(message)),
            Err(error) => {
                observer.warning(&format!(
                    "{error}; trying again in {} s",
                    (delay * 2).min(RECONNECT_MAX).as_secs()
                ));
                delay = (delay * 2).min(RECONNECT_MAX);
            }
        }
    }
}

/// One cycle's scope from the reports that arrived together. Each side
/// also looks at what the other side reported: a change there may meet one
/// here that this side's watch has not reported yet (it is still waiting
/// out its cooloff), and must be seen, not overwritten.
fn merge_reports(reports: Vec<(Side, WatchReport)>, fallback: &mut dyn FnMut(&str)) -> Scope {
    let mut dirty = Dirty::default();
    let mut full = false;
    for (_, report) in reports {
        if let Some(reason) = &report.rescan {
            fallback(reason);
            full = true;
        }
        dirty.paths.extend(report.paths);
        dirty.trees.extend(report.trees);
    }
    if full {
        return Scope::Full;
    }
    dirty.paths.sort();
    dirty.paths.dedup();
    dirty.trees.sort();
    dirty.trees.dedup();
    Scope::Dirty {
        local: dirty.clone(),
        remote: dirty,
    }
}

/// One pass of a push or pull whose session is open: scan (all, or only
/// what `scope` names), plan, carry out, record. `guarded`: the snapshots
/// are those of a completed run (established, and not `-x`): an emptied
/// root stops it before anything changes, and target files that changed
/// since are named as the plan replaces or deletes them.
pub fn replica_cycle(
    local: &dyn Endpoint,
    remote: &dyn Endpoint,
    options: &SyncOptions,
    observer: &dyn Observer,
    stop: &AtomicBool,
    scope: &Scope,
    guarded: bool,
) -> Result<Outcome, EndpointError> {
    let clock = Instant::now();
    let started_at = chrono_like_now();
    let (source, target) = match options.direction {
        Direction::Pull => (remote, local),
        _ => (local, remote),
    };
    let (source_scope, target_scope) = match options.direction {
        Direction::Pull => (scope.remote(), scope.local()),
        _ => (scope.local(), scope.remote()),
    };
    let (source_id, target_id) = (source.root_id(), target.root_id());
    let (source_set, target_set) = std::thread::scope(|scope| {
        let source_scan = scope.spawn(|| scan_side(source, source_scope, &options.diff));
        let target_set = scan_side(target, target_scope, &options.diff);
        let source_set = source_scan
            .join()
            .unwrap_or_else(|_| Err(EndpointError::Root(
                "the scan of the source root stopped unexpectedly (a bug in snapsync); nothing was changed. Run again, and report it if it happens again".into(),
            )));
        (source_set, target_set)
    });
    let (source_set, target_set) = (source_set?, target_set?);
    let (local_set, remote_set) = match options.direction {
        Direction::Pull => (&target_set, &source_set),
        _ => (&source_set, &target_set),
    };
    check_scans(local, remote, local_set, remote_set, guarded, options)?;
    let mut failures: Vec<(RelPath, String)> = Vec::new();
    report_scans(
        [(&source_set, source), (&target_set, target)],
        observer,
        &mut failures,
    );

    let links = hard_links(source, target, &source_set, &target_set, options)?;
    // A root found empty is not asked (a first copy waits for no answer).
    let source_empty = found_empty(&source_set, source_scope.is_none());
    let target_empty = found_empty(&target_set, target_scope.is_none());
    let mut source_asked = Vec::new();
    let mut target_asked = Vec::new();
    let mut hashes = Vec::new();
    if !source_empty {
        source_asked = paths_to_look_up(&source_set, &target_set);
        source_asked.extend(links.also_look_up(&source_set));
    }
    if !target_empty {
        target_asked = target_paths_to_look_up(&source_set, &target_set);
        target_asked.extend(links.also_look_up(&target_set));
        hashes = hashes_wanted(&source_set);
    }
    // Asked at once: with a far end, one round trip instead of three.
    let (source_now, target_now, content) = std::thread::scope(|threads| {
        let source_now = threads.spawn(|| source.lookup(&source_asked));
        let content = threads.spawn(|| target.find_content(&hashes));
        let target_now = target.lookup(&target_asked);
        (
            joined(source_now.join()),
            target_now,
            joined(content.join()),
        )
    });
    let (source_now, target_now, content) = (source_now?, target_now?, content?);
    let plan = plan_replica(
        &ReplicaInput {
            source: &source_set,
            target: &target_set,
            source_now: &source_now,
            target_now: &target_now,
            target_content: &content,
            restore_as: &HashMap::new(),
            source_links: &links.source,
            target_links: &links.target,
        },
        &options.replica,
    );
    observer.planned(&plan);
    // Drift is told against a snapshot of a completed run: a first run,
    // or -x, has none to tell it by.
    if guarded {
        for warning in overwritten_drift(&plan, &target_set, options.diff.preserve) {
            observer.warning(&warning);
        }
    }
    let files_scanned = source_set.files_scanned + target_set.files_scanned;
    let (to_local, to_remote) = match options.direction {
        Direction::Pull => (&plan, &Plan::default()),
        _ => (&Plan::default(), &plan),
    };
    let too_many = check_deletes(
        local, remote, local_set, remote_set, to_local, to_remote, options,
    )?;

    if options.dry_run {
        let counts = plan.counts();
        let mut summary = summary_from(counts, 0, options.direction, &failures);
        summary.files_scanned = files_scanned;
        summary.seconds = clock.elapsed().as_secs_f64();
        note_wire(&mut summary, local, remote);
        return Ok(Outcome {
            summary,
            plan,
            plan_to_local: Plan::default(),
            conflicts: Vec::new(),
            failures,
            interrupted: false,
            refused: too_many,
        });
    }

    record_pending([source, target], &plan.items, scope)?;
    let done = carry_out(
        source,
        target,
        &plan,
        options,
        observer,
        stop,
        &target_now,
        None,
        true,
    );
    if let Some(error) = done.fatal {
        return Err(error);
    }
    let interrupted = done.interrupted;
    failures.extend(done.failures);
    failures.sort_by(|a, b| a.0.cmp(&b.0));
    let mut summary = summary_from(done.counts, done.bytes, options.direction, &failures);
    summary.source_removed = done.source_removed;
    summary.files_scanned = files_scanned;
    summary.seconds = clock.elapsed().as_secs_f64();
    note_wire(&mut summary, local, remote);
    let record = serde_json::to_string(&summary).unwrap_or_default();
    let end = |peer_root_id, peer: &dyn Endpoint| RunEnd {
        peer: peer.describe(),
        complete: !interrupted,
        failures: failures.clone(),
        started: started_at.clone(),
        summary: record.clone(),
        peer_root_id,
        conflicts: Vec::new(),
        examined: None,
    };
    // The target's rows first, as every batch (see `Run::flush`).
    target.finish(&done.last.target, &end(source_id, source))?;
    source.finish(&done.last.source, &end(target_id, target))?;
    Ok(Outcome {
        summary,
        plan,
        plan_to_local: Plan::default(),
        conflicts: Vec::new(),
        failures,
        interrupted,
        refused: None,
    })
}

/// `-H`: the names of the files the plan looks at, on each side.
#[derive(Default)]
struct HardLinks {
    source: Vec<Vec<RelPath>>,
    target: Vec<Vec<RelPath>>,
}

impl HardLinks {
    /// The names (and their directories) that the lookups must cover
    /// beyond the changed paths: the other names of the source's files,
    /// each left out where `set` describes it already.
    fn also_look_up(&self, set: &ChangeSet) -> Vec<RelPath> {
        let mut paths: BTreeSet<RelPath> = BTreeSet::new();
        for name in self.source.iter().flatten() {
            let mut path = Some(name.clone());
            while let Some(p) = path {
                if p.is_root() || !paths.insert(p.clone()) {
                    break;
                }
                path = p.parent();
            }
        }
        paths.into_iter().filter(|p| set.get(p).is_none()).collect()
    }
}

/// Asks both sides which of the files at the changed paths have other
/// names (`-H`): the source for every changed path, the target for those
/// and the source's other names.
fn hard_links(
    source: &dyn Endpoint,
    target: &dyn Endpoint,
    source_set: &ChangeSet,
    target_set: &ChangeSet,
    options: &SyncOptions,
) -> Result<HardLinks, EndpointError> {
    if !options.diff.preserve.hard_links {
        return Ok(HardLinks::default());
    }
    let changed: BTreeSet<RelPath> = source_set
        .changes
        .iter()
        .chain(&target_set.changes)
        .map(|c| c.path.clone())
        .collect();
    if changed.is_empty() {
        return Ok(HardLinks::default());
    }
    let asked: Vec<RelPath> = changed.iter().cloned().collect();
    let source_links = source.hard_links(&asked)?;
    let mut asked = changed;
    asked.extend(source_links.iter().flatten().cloned());
    let target_links = target.hard_links(&asked.into_iter().collect::<Vec<_>>())?;
    Ok(HardLinks {
        source: source_links,
        target: target_links,
    })
}

/// The guard on both scans: an emptied root stops the run (when
/// `guarded`), before anything is changed.
fn check_scans(
    local: &dyn Endpoint,
    remote: &dyn Endpoint,
    local_set: &ChangeSet,
    remote_set: &ChangeSet,
    guarded: bool,
    options: &SyncOptions,
) -> Result<(), EndpointError> {
    let (local_name, remote_name) = root_names(local, remote);
    let scanned = |name, set: &ChangeSet| guard::Scanned {
        name,
        emptied: set.emptied,
        snapshot_rows: set.snapshot_rows,
        state_gone: set.state_gone,
    };
    guard::check_scans(
        guarded,
        &[
            scanned(&local_name, local_set),
            scanned(&remote_name, remote_set),
        ],
    )
    .map_err(|refusal| refused(options, refusal))
}

/// `--max-delete` against what the plans delete on each root. Refused:
/// an error, or in a dry run (which shows the plan) the reason, for the
/// outcome to carry.
fn check_deletes(
    local: &dyn Endpoint,
    remote: &dyn Endpoint,
    local_set: &ChangeSet,
    remote_set: &ChangeSet,
    to_local: &Plan,
    to_remote: &Plan,
    options: &SyncOptions,
) -> Result<Option<String>, EndpointError> {
    let (local_name, remote_name) = root_names(local, remote);
    let deletes = |name, set: &ChangeSet, plan: &Plan| guard::Deletes {
        name,
        planned: plan.counts().deleted,
        base: set
            .snapshot_rows
            .filter(|&rows| rows > 0)
            .unwrap_or(set.files_scanned),
    };
    let verdict = guard::check_deletes(
        options.max_delete,
        &[
            deletes(&local_name, local_set, to_local),
            deletes(&remote_name, remote_set, to_remote),
        ],
    );
    match verdict {
        Ok(()) => Ok(None),
        // A dry run shows its plan and then says what a run would meet.
        Err(refusal) if options.dry_run => Ok(Some(
            EndpointError::Refused(format!(
                "a run of session `{}` would be refused: {refusal}",
                options.session
            ))
            .to_string(),
        )),
        Err(refusal) => Err(refused(options, refusal)),
    }
}

/// What a lookup on a thread of its own answered.
fn joined<T>(answer: std::thread::Result<Result<T, EndpointError>>) -> Result<T, EndpointError> {
    answer.unwrap_or_else(|_| Err(lookup_stopped()))
}

fn lookup_stopped() -> EndpointError {
    EndpointError::Root(
        "a lookup stopped unexpectedly (a bug in snapsync); nothing was changed. Run again, and report it if it happens again"
            .into(),
    )
}

/// Records on both roots what the plan is about to change, so that a run
/// killed midway leaves them as `pending`. A full pass replaces what an
/// unfinished earlier run left (its plan is what remains of that one).
fn record_pending<'a>(
    endpoints: [&dyn Endpoint; 2],
    items: impl IntoIterator<Item = &'a Item>,
    scope: &Scope,
) -> Result<(), EndpointError> {
    let pending: Vec<crate::state::Pending> = items
        .into_iter()
        .filter_map(crate::state::Pending::of)
        .collect();
    let replace = matches!(scope, Scope::Full);
    for endpoint in endpoints {
        endpoint.record_pending(&pending, replace)?;
    }
    Ok(())
}

/// Files written on the target since this session's last run (by another
/// session syncing into the same directory, or by hand) that the plan
/// replaces or deletes: said out loud, never lost silently. Asked only
/// when the target's snapshot is that of a completed run; a path the last
/// run kept (`--no-delete`, `--newer`) is, while it stays as kept, a
/// change of metadata only (see [`Entry::kept`]).
fn overwritten_drift(plan: &Plan, target: &ChangeSet, preserve: Preserve) -> Vec<String> {
    plan.items
        .iter()
        .filter_map(|item| {
            let (path, what) = match &item.op {
                Op::Delete { entry } | Op::DeleteTree { entry, .. } => (&entry.path, "deleted"),
                Op::Transfer { entry }
                | Op::LocalCopy { entry, .. }
                | Op::RenameContent { entry, .. }
                | Op::Symlink { entry }
                | Op::HardLink { entry, .. } => (&entry.path, "replaced by the source's version"),
                _ => return None,
            };
            let change = target.get(path)?;
            let written = change.after.as_ref().is_some_and(|e| e.kind != Kind::Dir)
                && matches!(
                    change.kind(preserve),
                    ChangeKind::Created | ChangeKind::Modified | ChangeKind::TypeChanged
                );
            written.then(|| {
                format!(
                    "{path} on the target changed since this session's last run (another session or a local edit wrote it); {what}"
                )
            })
        })
        .collect()
}

/// Exchanges lineage between both roots and refuses, before any file is
/// touched, a session whose data would flow back into one of its upstream
/// roots. Both roots then learn every edge either knew, and this session's.
fn refuse_loops(
    local: &dyn Endpoint,
    remote: &dyn Endpoint,
    local_facts: &SessionFacts,
    remote_facts: &SessionFacts,
    options: &SyncOptions,
    observer: &dyn Observer,
) -> Result<(), EndpointError> {
    for warning in local_facts.warnings.iter().chain(&remote_facts.warnings) {
        observer.warning(warning);
    }
    // A root that has no id yet (a dry run on a fresh root) has no sessions.
    let (Some(local_id), Some(remote_id)) = (local.root_id(), remote.root_id()) else {
        return Ok(());
    };
    let edge = |from: &String, to: &String| Edge {
        from: from.clone(),
        to: to.clone(),
        session: options.session.clone(),
    };
    let new: Vec<Edge> = match options.direction {
        Direction::Push => vec![edge(&local_id, &remote_id)],
        Direction::Pull => vec![edge(&remote_id, &local_id)],
        Direction::Bidi => vec![edge(&local_id, &remote_id), edge(&remote_id, &local_id)],
    };
    let known: BTreeSet<Edge> = local_facts
        .lineage
        .iter()
        .chain(&remote_facts.lineage)
        .cloned()
        .collect();
    if let Err(found) = lineage::check(&known, &new) {
        let names = HashMap::from([
            (local_id.clone(), format!("local {}", local.describe())),
            (remote_id.clone(), format!("remote {}", remote.describe())),
        ]);
        return Err(EndpointError::Refused(format!(
            "refusing session `{}`: its data would flow back into its own upstream: {}. Nothing was changed. Sync these roots in one direction only (or both ways with one bidi session)",
            options.session,
            found.describe(&names)
        )));
    }
    let mut all: Vec<Edge> = known.into_iter().collect();
    all.extend(new);
    local.record_lineage(&all)?;
    remote.record_lineage(&all)?;
    Ok(())
}

/// What carrying out one plan did.
struct Carried {
    counts: PlanCounts,
    bytes: u64,
    source_removed: u64,
    failures: Vec<(RelPath, String)>,
    fatal: Option<EndpointError>,
    interrupted: bool,
    /// The rows settled last, left for each side's `finish` to write.
    last: LastRows,
}

/// A batch of operations sent to the target, its results not yet taken in.
struct StartedBatch<'p, 'r> {
    ready: Vec<(&'p Item, Op)>,
    results: LaterResults<'r>,
}

/// Snapshot rows not written yet: the target's (to be written first) and
/// the source's.
#[derive(Default)]
struct LastRows {
    target: Vec<SnapshotUpdate>,
    source: Vec<SnapshotUpdate>,
}

/// Carries out `plan` on `target` with data from `source`, settling each
/// item in both snapshots as it succeeds. With `keep_last`, the rows
/// settled last are not written here but returned, for the target's
/// `finish` and then the source's to write: with a far end, the round trip
/// of a commit of their own is saved at the end of the run. They are
/// written here all the same after a fatal error (no `finish` follows),
/// and with `--remove-source-files` copies to remove once they are.
#[allow(clippy::too_many_arguments)]
fn carry_out(
    source: &dyn Endpoint,
    target: &dyn Endpoint,
    plan: &Plan,
    options: &SyncOptions,
    observer: &dyn Observer,
    stop: &AtomicBool,
    target_now: &HashMap<RelPath, Entry>,
    toward: Option<Side>,
    keep_last: bool,
) -> Carried {
    let run = Run {
        source,
        target,
        observer,
        stop,
        toward,
        xattrs: options.diff.preserve.any_xattrs(),
        remove_source: options.remove_source_files && options.direction != Direction::Bidi,
        source_removed: AtomicU64::new(0),
        target_now,
        pending: Mutex::new(Pending::default()),
        counts: Mutex::new(PlanCounts::default()),
        bytes: AtomicU64::new(0),
        failures: Mutex::new(Vec::new()),
        failed_prefixes: Mutex::new(Vec::new()),
        fatal: Mutex::new(None),
        interrupted: AtomicBool::new(false),
        holding: AtomicBool::new(false),
        writer: Mutex::new(None),
    };
    // Settled rows are written on a thread of their own, batch after
    // batch in order, so that a far end's round trip per batch never
    // holds up the files being sent. A batch is handed over only to an
    // idle writer (a rendezvous channel; see `Run::flush`).
    let (batches, written) = crossbeam_channel::bounded::<Batch>(0);
    *run.writer.lock().unwrap() = Some(batches);
    std::thread::scope(|threads| {
        let writer = threads.spawn(|| {
            for batch in written {
                run.write(batch);
            }
        });
        run.execute(plan);
        // The writer ends once it has written what was sent to it.
        run.writer.lock().unwrap().take();
        let _ = writer.join();
    });
    let batch = run.take_batch();
    let mut last = LastRows::default();
    let removals = !batch.confirmed.is_empty() || !batch.to_verify.is_empty();
    if keep_last && !removals && run.fatal.lock().unwrap().is_none() {
        last.target = batch.target;
        last.source = batch.source;
    } else {
        run.write(batch);
    }
    let fatal = run.fatal.lock().unwrap().take();
    let counts = *run.counts.lock().unwrap();
    Carried {
        counts,
        bytes: run.bytes.load(Ordering::SeqCst),
        source_removed: run.source_removed.load(Ordering::SeqCst),
        interrupted: run.interrupted.load(Ordering::SeqCst),
        failures: run.failures.into_inner().unwrap(),
        fatal,
        last,
    }
}

/// The decisions `resolve` recorded on either side, in this run's words.
fn decisions_of(local: SessionFacts, remote: SessionFacts) -> Vec<(Side, Decision)> {
    let mut decided: Vec<(Side, Decision)> = Vec::new();
    decided.extend(local.decisions.into_iter().map(|d| (Side::Local, d)));
    decided.extend(remote.decisions.into_iter().map(|d| (Side::Remote, d)));
    decided
}

/// One pass of a bidi session whose session is open. `guarded`: an
/// emptied root stops it before anything changes.
#[allow(clippy::too_many_arguments)]
pub fn bidi_cycle(
    local: &dyn Endpoint,
    remote: &dyn Endpoint,
    options: &SyncOptions,
    observer: &dyn Observer,
    stop: &AtomicBool,
    scope: &Scope,
    decided: Vec<(Side, Decision)>,
    guarded: bool,
) -> Result<Outcome, EndpointError> {
    let clock = Instant::now();
    let started_at = chrono_like_now();
    let (local_id, remote_id) = (local.root_id(), remote.root_id());
    let root_id = |side: Side| match side {
        Side::Local => local_id.clone(),
        Side::Remote => remote_id.clone(),
    };
    let endpoint = |side: Side| match side {
        Side::Local => local,
        Side::Remote => remote,
    };

    let mut failures: Vec<(RelPath, String)> = Vec::new();
    let mut keep_newer: Vec<RelPath> = Vec::new();
    let mut keep_both: Vec<(RelPath, Side, String)> = Vec::new();
    let mut decisions: HashMap<RelPath, Side> = HashMap::new();
    // A decision made here wins over one made on the other side.
    for (made_on, decision) in decided.into_iter().rev() {
        let winner = match decision.keep.as_str() {
            "local" | "both" => made_on,
            "remote" => made_on.other(),
            "newer" => {
                keep_newer.push(decision.path.clone());
                continue;
            }
            other => {
                observer.warning(&format!(
                    "ignoring an unknown decision `{other}` for {}",
                    decision.path
                ));
                continue;
            }
        };
        if decision.keep == "both" {
            keep_both.push((
                decision.path.clone(),
                winner.other(),
                decision.decided.clone(),
            ));
        }
        decisions.insert(decision.path, winner);
    }

    let scan_both = || {
        let (local_set, remote_set) = std::thread::scope(|threads| {
            let remote_scan = threads.spawn(|| scan_side(remote, scope.remote(), &options.diff));
            let local_set = scan_side(local, scope.local(), &options.diff);
            let remote_set = remote_scan
                .join()
                .unwrap_or_else(|_| Err(EndpointError::Root(
                    "the scan of the remote root stopped unexpectedly (a bug in snapsync); nothing was changed. Run again, and report it if it happens again".into(),
                )));
            (local_set, remote_set)
        });
        Ok::<_, EndpointError>((local_set?, remote_set?))
    };
    let (mut local_set, mut remote_set) = scan_both()?;
    check_scans(local, remote, &local_set, &remote_set, guarded, options)?;
    if !options.dry_run && !keep_both.is_empty() {
        // `resolve --keep both`: the other side's version moves aside under
        // a name of its own, then both names are synced as any change is.
        let mut moved = false;
        for (path, loser, decided) in &keep_both {
            let set = match loser {
                Side::Local => &local_set,
                Side::Remote => &remote_set,
            };
            if set.get(path).is_none_or(|c| c.after.is_none()) {
                continue;
            }
            let id = root_id(*loser).unwrap_or_default();
            let Some(aside) = conflict_copy_name(path, &id, decided) else {
                continue;
            };
            let rename = Op::Rename {
                from: path.clone(),
                to: aside,
            };
            match endpoint(*loser).apply(&[(rename, None)], false)?.pop() {
                Some(Err(failure)) => {
                    decisions.remove(path);
                    failures.push((path.clone(), failure.message));
                }
                _ => moved = true,
            }
        }
        if moved {
            (local_set, remote_set) = scan_both()?;
        }
    }
    report_scans(
        [(&local_set, local), (&remote_set, remote)],
        observer,
        &mut failures,
    );
    // Files both sides changed to the same size are compared by content.
    let local_hashes = local.hash_files(&paths_to_hash(&local_set, &remote_set))?;
    let remote_hashes = remote.hash_files(&paths_to_hash(&remote_set, &local_set))?;
    fill_hashes(&mut local_set, &local_hashes);
    fill_hashes(&mut remote_set, &remote_hashes);

    // A root found empty is not asked (a first copy waits for no answer).
    let asked = |to: &ChangeSet, from: &ChangeSet, full: bool| {
        if found_empty(to, full) {
            (Vec::new(), Vec::new())
        } else {
            (target_paths_to_look_up(from, to), hashes_wanted(from))
        }
    };
    let (remote_paths, remote_wanted) = asked(&remote_set, &local_set, scope.remote().is_none());
    let (local_paths, local_wanted) = asked(&local_set, &remote_set, scope.local().is_none());
    // The far end is asked both at once: one round trip instead of two.
    let ((local_now, local_content), (remote_now, remote_content)) =
        std::thread::scope(|threads| {
            let remote_asked = threads.spawn(|| {
                let content = threads.spawn(|| remote.find_content(&remote_wanted));
                let now = remote.lookup(&remote_paths);
                (now, joined(content.join()))
            });
            let local_now = local.lookup(&local_paths);
            let local_content = local.find_content(&local_wanted);
            let remote_asked = remote_asked
                .join()
                .unwrap_or_else(|_| (Err(lookup_stopped()), Err(lookup_stopped())));
            ((local_now, local_content), remote_asked)
        });
    let (local_now, local_content) = (local_now?, local_content?);
    let (remote_now, remote_content) = (remote_now?, remote_content?);
    for path in keep_newer {
        let state = |set: &ChangeSet, now: &HashMap<RelPath, Entry>| match set.get(&path) {
            Some(change) => change.after.clone(),
            None => now.get(&path).cloned(),
        };
        let l = state(&local_set, &local_now).map(|e| e.mtime);
        let r = state(&remote_set, &remote_now).map(|e| e.mtime);
        // What is gone counts as oldest; a tie keeps the local version.
        let winner = if r > l { Side::Remote } else { Side::Local };
        decisions.entry(path).or_insert(winner);
    }
    let plan = plan_bidi(&BidiInput {
        local: &local_set,
        remote: &remote_set,
        local_now: &local_now,
        remote_now: &remote_now,
        local_content: &local_content,
        remote_content: &remote_content,
        decisions: &decisions,
        preserve: options.diff.preserve,
    });
    observer.planned(&Plan {
        items: plan
            .to_remote
            .items
            .iter()
            .chain(&plan.to_local.items)
            .cloned()
            .collect(),
    });
    for conflict in &plan.conflicts {
        observer.conflict(conflict);
    }
    let files_scanned = local_set.files_scanned + remote_set.files_scanned;
    let too_many = check_deletes(
        local,
        remote,
        &local_set,
        &remote_set,
        &plan.to_local,
        &plan.to_remote,
        options,
    )?;

    let mut counts = plan.to_remote.counts();
    let (mut sent, mut received) = (0, 0);
    let mut interrupted = false;
    if options.dry_run {
        counts.merge(&plan.to_local.counts());
    } else {
        record_pending(
            [local, remote],
            plan.to_remote.items.iter().chain(&plan.to_local.items),
            scope,
        )?;
        let there = carry_out(
            local,
            remote,
            &plan.to_remote,
            options,
            observer,
            stop,
            &remote_now,
            Some(Side::Remote),
            false,
        );
        failures.extend(there.failures);
        if let Some(error) = there.fatal {
            return Err(error);
        }
        counts = there.counts;
        sent = there.bytes;
        interrupted = there.interrupted;
        if !interrupted {
            let here = carry_out(
                remote,
                local,
                &plan.to_local,
                options,
                observer,
                stop,
                &local_now,
                Some(Side::Local),
                false,
            );
            failures.extend(here.failures);
            if let Some(error) = here.fatal {
                return Err(error);
            }
            counts.merge(&here.counts);
            received = here.bytes;
            interrupted = here.interrupted;
        }
    }
    failures.sort_by(|a, b| a.0.cmp(&b.0));
    let mut summary = summary_from(counts, 0, Direction::Bidi, &failures);
    summary.bytes_sent = sent;
    summary.bytes_received = received;
    summary.conflicts = plan.conflicts.len() as u64;
    summary.files_scanned = files_scanned;
    summary.seconds = clock.elapsed().as_secs_f64();
    note_wire(&mut summary, local, remote);
    if !options.dry_run {
        let record = serde_json::to_string(&summary).unwrap_or_default();
        let end = |side: Side| RunEnd {
            peer: endpoint(side.other()).describe(),
            examined: match scope {
                Scope::Full => None,
                Scope::Dirty { .. } => Some(
                    local_set
                        .changes
                        .iter()
                        .chain(&remote_set.changes)
                        .map(|c| c.path.clone())
                        .collect(),
                ),
            },
            complete: !interrupted,
            failures: failures.clone(),
            started: started_at.clone(),
            summary: record.clone(),
            peer_root_id: root_id(side.other()),
            conflicts: plan
                .conflicts
                .iter()
                .map(|c| {
                    let (here, peer) = match side {
                        Side::Local => (c.local, c.remote),
                        Side::Remote => (c.remote, c.local),
                    };
                    ConflictRecord {
                        path: c.path.clone(),
                        here: here.as_str().to_string(),
                        peer: peer.as_str().to_string(),
                    }
                })
                .collect(),
        };
        remote.finish(&[], &end(Side::Remote))?;
        local.finish(&[], &end(Side::Local))?;
    }
    Ok(Outcome {
        summary,
        plan: plan.to_remote,
        plan_to_local: plan.to_local,
        conflicts: plan.conflicts,
        failures,
        interrupted,
        refused: too_many,
    })
}

/// Passes on what both scans warned of, and counts each directory a scan
/// could not read as a failure of this run.
fn report_scans(
    scans: [(&ChangeSet, &dyn Endpoint); 2],
    observer: &dyn Observer,
    failures: &mut Vec<(RelPath, String)>,
) {
    for (set, side) in scans {
        for warning in &set.warnings {
            observer.warning(warning);
        }
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
}

/// Puts hashes computed after the scan into the change set's entries.
fn fill_hashes(set: &mut ChangeSet, hashes: &HashMap<RelPath, Hash>) {
    if hashes.is_empty() {
        return;
    }
    for change in &mut set.changes {
        if let (Some(after), Some(hash)) = (change.after.as_mut(), hashes.get(&change.path)) {
            after.hash = Some(*hash);
        }
    }
}

/// `NAME.conflict-<peer>-<YYYYmmdd-HHMMSS>.EXT` beside `path`: where
/// `resolve --keep both` puts the other side's version. `<peer>` is the
/// first 8 hex digits of the root id of the side whose version moves.
pub fn conflict_copy_name(path: &RelPath, peer_root_id: &str, decided: &str) -> Option<RelPath> {
    let name = path.file_name();
    let dot = name.iter().rposition(|&b| b == b'.').filter(|&i| i > 0);
    let (stem, ext) = match dot {
        Some(i) => (&name[..i], &name[i..]),
        None => (name, &b""[..]),
    };
    let peer: String = peer_root_id.chars().take(8).collect();
    let mut new_name = stem.to_vec();
    new_name.extend_from_slice(format!(".conflict-{peer}-{decided}").as_bytes());
    new_name.extend_from_slice(ext);
    path.parent()?.join(&new_name).ok()
}

/// For a directory deleted whole whose top the target kept (it still holds
/// entries the session does not sync), the number of paths that went: the
/// target removes the row of each, and the top's only when all went.
fn kept_tree(op: &Op, applied: &Applied) -> Option<u64> {
    let Op::DeleteTree { entry, .. } = op else {
        return None;
    };
    let removed = |path: &RelPath| {
        applied
            .updates
            .iter()
            .any(|u| matches!(u, SnapshotUpdate::Remove(p) if p == path))
    };
    (!removed(&entry.path)).then_some(applied.updates.len() as u64)
}

/// What `--remove-source-files` may do with the source's copy of a
/// settled item.
enum SourceCopy {
    /// The target checked what it wrote against the source's content hash
    /// (a sent or locally copied file), or made the same link.
    Confirmed(Entry),
    /// The target held the content already (equal, adopted, or moved
    /// there): the content hashes of both sides are compared first.
    ToVerify(Entry),
}

/// The source's file (or link) behind a settled item, if the target now
/// holds it; directories and deletions never.
fn source_copy(item: &Item, applied: &Applied) -> Option<SourceCopy> {
    let recorded = || match &item.source_update {
        Some(SnapshotUpdate::Upsert(entry)) => Some(entry.clone()),
        _ => None,
    };
    let copy = match &item.op {
        Op::Transfer { entry } | Op::LocalCopy { entry, .. } => {
            // With the hash the target checked: a source file written just
            // before the run is read again before it goes.
            let mut entry = entry.clone();
            entry.hash = applied.updates.iter().find_map(|update| match update {
                SnapshotUpdate::Upsert(e) if e.path == entry.path => e.hash,
                _ => None,
            });
            SourceCopy::Confirmed(entry)
        }
        Op::Symlink { entry } => {
            let made = applied.updates.iter().any(|update| {
                matches!(update, SnapshotUpdate::Upsert(e)
                    if e.path == entry.path && e.kind == Kind::Symlink && e.link_target == entry.link_target)
            });
            if !made {
                return None;
            }
            SourceCopy::Confirmed(entry.clone())
        }
        Op::RenameContent { entry, .. } | Op::SetMeta { entry, .. } => {
            SourceCopy::ToVerify(entry.clone())
        }
        // Not while the target's row is racy: its next scan re-reads the
        // file, which would make it a change on the target, and a path the
        // source no longer holds would then be deleted by a plain run. The
        // next run, which records it afresh, removes the source's copy.
        Op::Record if matches!(&item.target_update, Some(SnapshotUpdate::Upsert(e)) if e.racy) => {
            return None
        }
        Op::Record => SourceCopy::ToVerify(recorded()?),
        _ => return None,
    };
    match &copy {
        SourceCopy::Confirmed(e) | SourceCopy::ToVerify(e) if e.kind == Kind::File => Some(copy),
        SourceCopy::Confirmed(e) if e.kind == Kind::Symlink => Some(copy),
        _ => None,
    }
}

/// What crossed the network, and on what.
fn note_wire(summary: &mut Summary, a: &dyn Endpoint, b: &dyn Endpoint) {
    let (a_out, a_in) = a.wire_bytes();
    let (b_out, b_in) = b.wire_bytes();
    (summary.wire_sent, summary.wire_received) = (a_out + b_out, a_in + b_in);
    let channel = a.data_channel().or_else(|| b.data_channel());
    summary.transport = match channel {
        Some(_) => "quic",
        None if a.is_remote() || b.is_remote() => "ssh",
        None => "local",
    }
    .to_string();
    summary.udp_port = channel.map(|address| address.port());
}

fn summary_from(
    counts: PlanCounts,
    bytes: u64,
    direction: Direction,
    failures: &[(RelPath, String)],
) -> Summary {
    let (bytes_sent, bytes_received) = match direction {
        Direction::Push | Direction::Bidi => (bytes, 0),
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
        wire_sent: 0,
        wire_received: 0,
        source_removed: 0,
        transport: String::new(),
        udp_port: None,
    }
}

#[derive(Default)]
struct BatchOutcome<'p> {
    /// Directories created, whose metadata is set after their contents.
    created_dirs: Vec<&'p Item>,
    /// Content the plan meant to reuse that changed: to be sent instead.
    stale: Vec<Transfer<'p>>,
}

#[derive(Default)]
struct Pending {
    target: Vec<SnapshotUpdate>,
    source: Vec<SnapshotUpdate>,
    since: Option<Instant>,
    /// `--remove-source-files`: source files whose copies the target
    /// confirmed, to remove once the target's rows are written.
    confirmed: Vec<Entry>,
    /// Source files the target already held (or was given by a local
    /// move): removed only once both sides' content hashes agree.
    to_verify: Vec<Entry>,
}

impl Pending {
    /// What is pending, as one batch, and nothing left.
    fn take(&mut self) -> Batch {
        self.since = None;
        Batch {
            target: std::mem::take(&mut self.target),
            source: std::mem::take(&mut self.source),
            confirmed: std::mem::take(&mut self.confirmed),
            to_verify: std::mem::take(&mut self.to_verify),
        }
    }

    /// Puts back a batch [`take`](Self::take) took, pending since `since`.
    fn put_back(&mut self, batch: Batch, since: Option<Instant>) {
        *self = Pending {
            target: batch.target,
            source: batch.source,
            since,
            confirmed: batch.confirmed,
            to_verify: batch.to_verify,
        };
    }
}

/// How many settled rows, or how long, before they are written.
const BATCH_ROWS: usize = 2000;
const BATCH_TIME: Duration = Duration::from_millis(500);

struct Run<'a> {
    source: &'a dyn Endpoint,
    target: &'a dyn Endpoint,
    observer: &'a dyn Observer,
    stop: &'a AtomicBool,
    toward: Option<Side>,
    xattrs: bool,
    /// `--remove-source-files`.
    remove_source: bool,
    source_removed: AtomicU64,
    target_now: &'a HashMap<RelPath, Entry>,
    pending: Mutex<Pending>,
    counts: Mutex<PlanCounts>,
    bytes: AtomicU64,
    failures: Mutex<Vec<(RelPath, String)>>,
    /// Renamed or created directories that failed: what the plan puts
    /// below them is not attempted.
    failed_prefixes: Mutex<Vec<RelPath>>,
    fatal: Mutex<Option<EndpointError>>,
    interrupted: AtomicBool,
    /// Set once the files are in: the few rows settled after (new
    /// directories' metadata) stay pending for the end of the run, which
    /// does not then wait for a commit of their own.
    holding: AtomicBool,
    /// Hands batches of settled rows to the thread that writes them.
    writer: Mutex<Option<crossbeam_channel::Sender<Batch>>>,
}

/// Settled rows to write, and `--remove-source-files` removals they allow.
struct Batch {
    target: Vec<SnapshotUpdate>,
    source: Vec<SnapshotUpdate>,
    confirmed: Vec<Entry>,
    to_verify: Vec<Entry>,
}

/// A file to stream: its plan item, and for content the plan meant to move
/// (which changed meanwhile) the old path to delete once it has arrived.
type Transfer<'p> = (&'p Item, Option<RelPath>);

/// Operations sent to the target in one call, at most.
const BATCH_OPS: usize = 1000;
/// Files at least this large that the target already has a version of are
/// sent as deltas when data crosses a network.
const DELTA_MIN_SIZE: u64 = 64 * 1024;

impl<'r> Run<'r> {
    fn execute(&self, plan: &Plan) {
        let mut phases: [Vec<&Item>; 6] = Default::default();
        for item in &plan.items {
            let index = match item.op.phase() {
                Phase::Renames => 0,
                Phase::Deletes => 1,
                Phase::Mkdirs => 2,
                Phase::Files => 3,
                Phase::Links => 4,
                Phase::DirMeta => 5,
            };
            phases[index].push(item);
        }
        let [renames, mut deletes, mut mkdirs, files, links, dir_meta] = phases;
        deletes.sort_by_key(|item| std::cmp::Reverse(item.path.depth()));
        mkdirs.sort_by_key(|item| item.path.depth());

        let mut transfers: Vec<Transfer> = Vec::new();
        // Each rename may depend on the one before: one at a time.
        for item in renames {
            transfers.extend(self.run_batch(&[(item, item.op.clone())], false).stale);
        }
        self.run_batches(&deletes, false);
        // A far end takes messages in the order sent: it creates the new
        // directories before the files that follow, so the run sends those
        // at once and takes in the directories' results when it sets
        // their metadata (a round trip sooner; a file in a directory that
        // could not be created fails there on its own).
        let mut created_dirs = Vec::new();
        let mut mkdirs_sent = Vec::new();
        for chunk in mkdirs.chunks(BATCH_OPS) {
            let ops: Vec<(&Item, Op)> = chunk.iter().map(|item| (*item, item.op.clone())).collect();
            if self.target.is_remote() {
                mkdirs_sent.extend(self.start_batch(&ops, false));
            } else {
                created_dirs.extend(self.run_batch(&ops, false).created_dirs);
            }
        }
        let mkdirs_sent = Mutex::new(mkdirs_sent);
        let (streamed, others): (Vec<&Item>, Vec<&Item>) = files
            .into_iter()
            .partition(|item| matches!(item.op, Op::Transfer { .. }));
        transfers.extend(self.run_batches(&others, true).stale);
        transfers.extend(streamed.into_iter().map(|item| (item, None)));
        // New directories get their final metadata once their contents are
        // in, and once the directories' own results are.
        let finish = || {
            let mut dirs = dir_meta.clone();
            dirs.extend(created_dirs.iter().copied());
            for sent in std::mem::take(&mut *mkdirs_sent.lock().unwrap()) {
                dirs.extend(self.end_batch(sent).created_dirs);
            }
            self.finish_dirs(dirs);
        };
        // The metadata asked for right behind the files' data is set once
        // they are all in, and its answer comes back with theirs, a round
        // trip sooner. Not when names are linked after, each to a file
        // that must be in place, nor when content meant to be moved is
        // sent instead (its old name is deleted after).
        let behind_files = self.target.is_remote()
            && links.is_empty()
            && transfers.iter().all(|(_, leftover)| leftover.is_none());
        let mut finished = false;
        if behind_files {
            finished = self.transfer_all(transfers, Some(&finish));
        } else {
            self.transfer_all(transfers, None);
            // A name whose file is not in place as planned (its transfer
            // failed, say) gets the data of its own instead.
            let unlinked = self.run_batches(&links, true).stale;
            self.transfer_all(unlinked, None);
        }
        if !finished {
            finish();
        }
    }

    /// Sets the final metadata of directories (`dirs`: those the plan
    /// sets it of, and those created), deepest first. The rows settled
    /// from here on stay pending for the end of the run (see
    /// [`Run::holding`]).
    fn finish_dirs(&self, mut dirs: Vec<&Item>) {
        self.holding.store(true, Ordering::SeqCst);
        dirs.sort_by_key(|item| std::cmp::Reverse(item.path.depth()));
        let finishing: Vec<(&Item, Op)> = dirs
            .into_iter()
            .filter_map(|item| match &item.op {
                Op::Mkdir { entry } | Op::SetMeta { entry, .. } => Some((
                    item,
                    Op::SetMeta {
                        entry: entry.clone(),
                        restore: false,
                    },
                )),
                _ => None,
            })
            .collect();
        for chunk in finishing.chunks(BATCH_OPS) {
            self.run_batch(chunk, false);
        }
    }

    fn should_stop(&self) -> bool {
        if self.fatal.lock().unwrap().is_some() || self.stop.load(Ordering::SeqCst) {
            self.interrupted.store(true, Ordering::SeqCst);
            return true;
        }
        false
    }

    fn run_batches<'p>(&self, items: &[&'p Item], parallel: bool) -> BatchOutcome<'p> {
        let mut outcome = BatchOutcome::default();
        for chunk in items.chunks(BATCH_OPS) {
            let ops: Vec<(&Item, Op)> = chunk.iter().map(|item| (*item, item.op.clone())).collect();
            let part = self.run_batch(&ops, parallel);
            outcome.created_dirs.extend(part.created_dirs);
            outcome.stale.extend(part.stale);
        }
        outcome
    }

    /// Sends one batch of operations to the target and settles each result.
    fn run_batch<'p>(&self, batch: &[(&'p Item, Op)], parallel: bool) -> BatchOutcome<'p> {
        match self.start_batch(batch, parallel) {
            Some(started) => self.end_batch(started),
            None => BatchOutcome::default(),
        }
    }

    /// Sends one batch of operations to the target, without waiting for
    /// their results ([`Run::end_batch`] takes them in); `None` when
    /// nothing was sent (nothing left to send, or the run stops).
    fn start_batch<'p>(
        &self,
        batch: &[(&'p Item, Op)],
        parallel: bool,
    ) -> Option<StartedBatch<'p, 'r>> {
        if self.should_stop() {
            return None;
        }
        let mut ready: Vec<(&'p Item, Op)> = Vec::with_capacity(batch.len());
        {
            let failed = self.failed_prefixes.lock().unwrap();
            for (item, op) in batch {
                match failed
                    .iter()
                    .find(|p| item.path.starts_with(p) && item.path != **p)
                {
                    Some(prefix) => self.fail(
                        &item.path,
                        format!("not synced: {prefix} could not be created"),
                    ),
                    None => ready.push((*item, op.clone())),
                }
            }
        }
        // Nothing to do on disk: settled here, never sent to the target.
        ready.retain(|(item, op)| {
            if matches!(op, Op::Record | Op::Keep) {
                self.settle(
                    item,
                    Applied {
                        updates: Vec::new(),
                        bytes: 0,
                    },
                );
                false
            } else {
                true
            }
        });
        if ready.is_empty() {
            return None;
        }
        let xattrs = self.xattrs_for(&ready);
        let ops: Vec<(Op, Option<Xattrs>)> =
            ready.iter().map(|(_, op)| op.clone()).zip(xattrs).collect();
        match self.target.apply_later(&ops, parallel) {
            Ok(results) => Some(StartedBatch { ready, results }),
            Err(error) => {
                self.fatal.lock().unwrap().get_or_insert(error);
                None
            }
        }
    }

    /// Takes in the results of a batch [`Run::start_batch`] sent, and
    /// settles each.
    fn end_batch<'p>(&self, started: StartedBatch<'p, '_>) -> BatchOutcome<'p> {
        let mut outcome = BatchOutcome::default();
        let StartedBatch { ready, results } = started;
        let results = match results() {
            Ok(results) => results,
            Err(error) => {
                self.fatal.lock().unwrap().get_or_insert(error);
                return outcome;
            }
        };
        for ((item, op), result) in ready.into_iter().zip(results) {
            match result {
                Ok(_) if matches!(op, Op::Mkdir { .. }) => outcome.created_dirs.push(item),
                Ok(applied) => match kept_tree(&op, &applied) {
                    Some(went) => self.settle_kept(item, went),
                    None => self.settle(item, applied),
                },
                Err(failure) if failure.stale => {
                    // The content it meant to reuse changed: send it instead.
                    let leftover = match &item.op {
                        Op::RenameContent { from, .. } => Some(from.clone()),
                        _ => None,
                    };
                    outcome.stale.push((item, leftover));
                }
                Err(failure) if failure.warning_only => self.settle_kept(item, 0),
                Err(failure) => {
                    if matches!(item.op, Op::Rename { .. } | Op::Mkdir { .. }) {
                        self.failed_prefixes.lock().unwrap().push(item.path.clone());
                    }
                    self.fail(&failure.path, failure.message);
                }
            }
        }
        outcome
    }

    /// Streams file data from the source into the target. Results arrive on
    /// whatever thread the target reports them from; they are settled here,
    /// on this thread, so settling (which writes to both endpoints) never
    /// runs inside an endpoint's own machinery. Once every file is sent,
    /// `then` (the directories' metadata) runs while their results come
    /// back; whether it did.
    fn transfer_all(&self, transfers: Vec<Transfer>, then: Option<&(dyn Fn() + Sync)>) -> bool {
        if transfers.is_empty() || self.should_stop() {
            return false;
        }
        let entry_of = |item: &Item| match &item.op {
            Op::Transfer { entry }
            | Op::LocalCopy { entry, .. }
            | Op::RenameContent { entry, .. }
            | Op::HardLink { entry, .. } => entry.clone(),
            _ => unreachable!("only file content is transferred"),
        };
        let use_delta = self.source.is_remote() || self.target.is_remote();
        let basis_paths: Vec<RelPath> = if use_delta {
            transfers
                .iter()
                .map(|(item, _)| entry_of(item))
                .filter(|entry| entry.size >= DELTA_MIN_SIZE)
                .zip(transfers.iter())
                .filter(|(_, (item, _))| item.replaces)
                .map(|(entry, _)| entry.path)
                .collect()
        } else {
            Vec::new()
        };
        let mut signatures = if basis_paths.is_empty() {
            HashMap::new()
        } else {
            match self.target.signatures(&basis_paths) {
                Ok(signatures) => signatures,
                Err(error) => {
                    self.fatal.lock().unwrap().get_or_insert(error);
                    return false;
                }
            }
        };
        let jobs: Vec<FileJob> = transfers
            .iter()
            .enumerate()
            .map(|(id, (item, _))| {
                let entry = entry_of(item);
                FileJob {
                    id: id as u64,
                    basis: signatures.remove(&entry.path),
                    entry,
                }
            })
            .collect();
        let (tx, rx) = crossbeam_channel::unbounded::<(u64, Result<Applied, OpFailure>)>();
        let done: Done = Arc::new(move |id, result| {
            let _ = tx.send((id, result));
        });
        let mut leftovers = Vec::new();
        let mut ran_then = false;
        std::thread::scope(|scope| {
            let settler = scope.spawn(|| {
                let mut leftovers = Vec::new();
                for (id, result) in rx {
                    let Some((item, leftover)) = transfers.get(id as usize) else {
                        continue;
                    };
                    match result {
                        Ok(applied) => {
                            self.bytes.fetch_add(applied.bytes, Ordering::Relaxed);
                            self.settle(item, applied);
                            leftovers.extend(leftover.clone());
                        }
                        Err(failure) => self.fail(&failure.path, failure.message),
                    }
                }
                leftovers
            });
            let sent = {
                let sink = self.target.receive_files(done);
                let observed = ObservedSink {
                    sink: sink.as_ref(),
                    observer: self.observer,
                };
                let sent = self
                    .source
                    .send_files(jobs, &observed, self.xattrs, self.stop);
                if let (Ok(()), Some(then)) = (&sent, then) {
                    ran_then = true;
                    let dirs = scope.spawn(then);
                    let waited = sink.wait();
                    let _ = dirs.join();
                    waited
                } else {
                    sent.and_then(|()| sink.wait())
                }
            };
            if let Err(error) = sent {
                self.fatal.lock().unwrap().get_or_insert(error);
            }
            leftovers = settler.join().unwrap_or_default();
        });
        if self.stop.load(Ordering::SeqCst) {
            self.interrupted.store(true, Ordering::SeqCst);
        }
        // After content meant to be moved had to be sent instead, the old
        // path still holds it and must go as the plan said.
        let deletes: Vec<(Op, Option<Xattrs>)> = leftovers
            .into_iter()
            .map(|path| {
                let mut entry = self
                    .target_now
                    .get(&path)
                    .cloned()
                    .unwrap_or_else(|| Entry::bare(path.clone(), Kind::File));
                entry.path = path;
                (Op::Delete { entry }, None)
            })
            .collect();
        if !deletes.is_empty() {
            match self.target.apply(&deletes, false) {
                Ok(results) => {
                    for result in results {
                        match result {
                            Ok(applied) => self.queue(applied.updates, None),
                            Err(failure) => self.fail(&failure.path, failure.message),
                        }
                    }
                }
                Err(error) => {
                    self.fatal.lock().unwrap().get_or_insert(error);
                }
            }
        }
        ran_then
    }

    /// The source's extended attributes for each operation that sets
    /// metadata, fetched in one call (only with `--xattrs` or `-A`).
    fn xattrs_for(&self, batch: &[(&Item, Op)]) -> Vec<Option<Xattrs>> {
        let wanted = |op: &Op| match op {
            Op::Symlink { entry }
            | Op::SetMeta { entry, .. }
            | Op::LocalCopy { entry, .. }
            | Op::RenameContent { entry, .. } => Some(entry.clone()),
            _ => None,
        };
        if !self.xattrs {
            return vec![None; batch.len()];
        }
        let entries: Vec<Option<Entry>> = batch.iter().map(|(_, op)| wanted(op)).collect();
        let asked: Vec<Entry> = entries.iter().flatten().cloned().collect();
        let mut got = match self.source.read_xattrs(&asked) {
            Ok(got) => got.into_iter(),
            Err(error) => {
                self.observer
                    .warning(&format!("cannot read extended attributes: {error}"));
                return vec![None; batch.len()];
            }
        };
        entries
            .iter()
            .map(|e| e.as_ref().and_then(|_| got.next().flatten()))
            .collect()
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
        let removal = if self.remove_source {
            source_copy(item, &applied)
        } else {
            None
        };
        let mut target_updates = applied.updates;
        target_updates.extend(item.target_update.clone());
        self.queue_settled(target_updates, source_update, removal);
        self.counts.lock().unwrap().add(item);
        self.observer.done(item, applied.bytes, self.toward);
    }

    /// Settles a directory delete the target carried out only in part: the
    /// directory still holds entries this session does not sync, so it was
    /// kept (with every directory above such an entry), and `went` paths
    /// under it were deleted. The source's side is settled. On the target,
    /// the rows of what went and of what stayed leave the snapshot: what
    /// stayed is a kept difference, judged again next run (once its entries
    /// are included again, it goes with them).
    fn settle_kept(&self, item: &Item, went: u64) {
        self.observer
            .warning(&ApplyError::NotEmpty(item.path.clone()).to_string());
        self.queue(
            vec![SnapshotUpdate::Remove(item.path.clone())],
            item.source_update.clone(),
        );
        self.counts.lock().unwrap().deleted += went;
        self.observer.done(item, 0, self.toward);
    }

    fn queue(&self, target: Vec<SnapshotUpdate>, source: Option<SnapshotUpdate>) {
        self.queue_settled(target, source, None);
    }

    /// Queues an item's rows and, with `--remove-source-files`, the
    /// source's copy to remove once they are written.
    fn queue_settled(
        &self,
        target: Vec<SnapshotUpdate>,
        source: Option<SnapshotUpdate>,
        removal: Option<SourceCopy>,
    ) {
        let due = {
            let mut pending = self.pending.lock().unwrap();
            pending.target.extend(target);
            pending.source.extend(source);
            match removal {
                Some(SourceCopy::Confirmed(entry)) => pending.confirmed.push(entry),
                Some(SourceCopy::ToVerify(entry)) => pending.to_verify.push(entry),
                None => {}
            }
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
    /// Then (`--remove-source-files`) the source removes the files whose
    /// copies those rows record: only once the target's rows are written,
    /// so a run killed at any point leaves every file on one side at least,
    /// and recorded there.
    ///
    /// The batch goes to the writer thread when it is idle, or is written
    /// here when there is none. While the writer still writes one batch,
    /// the rows stay pending and go with the next: a far end's round trip
    /// per commit then never falls behind the files settling (its answers
    /// wait behind the data in flight), and the rows that settle last are
    /// all still pending once the plan is carried out (see [`carry_out`]
    /// for where they go).
    fn flush(&self) {
        if self.holding.load(Ordering::SeqCst) {
            return;
        }
        let writer = self.writer.lock().unwrap().clone();
        let mut pending = self.pending.lock().unwrap();
        let since = pending.since;
        let batch = pending.take();
        let unsent = match writer {
            Some(writer) => match writer.try_send(batch) {
                Ok(()) => return,
                Err(crossbeam_channel::TrySendError::Full(batch)) => {
                    pending.put_back(batch, since);
                    return;
                }
                Err(crossbeam_channel::TrySendError::Disconnected(batch)) => batch,
            },
            None => batch,
        };
        drop(pending);
        self.write(unsent);
    }

    /// What is pending, as one batch.
    fn take_batch(&self) -> Batch {
        self.pending.lock().unwrap().take()
    }

    fn write(&self, batch: Batch) {
        let result = self
            .target
            .commit(&batch.target)
            .and_then(|()| self.source.commit(&batch.source))
            .and_then(|()| self.remove_from_source(batch.confirmed, batch.to_verify));
        if let Err(error) = result {
            self.fatal.lock().unwrap().get_or_insert(error);
        }
    }

    /// `--remove-source-files`: removes the source's copies of files the
    /// target holds, each only if it is still the version sent. Files the
    /// target already had are compared by content hash on both sides
    /// first. The source forgets their rows before removing them: a file
    /// it then keeps (it changed) is new to the next run and sent again; a
    /// file it removed is never a deletion to carry to the target.
    fn remove_from_source(
        &self,
        mut confirmed: Vec<Entry>,
        to_verify: Vec<Entry>,
    ) -> Result<(), EndpointError> {
        if !to_verify.is_empty() {
            let paths: Vec<RelPath> = to_verify.iter().map(|e| e.path.clone()).collect();
            let there = self.target.hash_files(&paths)?;
            let unknown: Vec<RelPath> = to_verify
                .iter()
                .filter(|e| e.hash.is_none())
                .map(|e| e.path.clone())
                .collect();
            let here = if unknown.is_empty() {
                HashMap::new()
            } else {
                self.source.hash_files(&unknown)?
            };
            confirmed.extend(to_verify.into_iter().filter_map(|mut entry| {
                entry.hash = entry.hash.or_else(|| here.get(&entry.path).copied());
                let equal = entry.hash.is_some() && entry.hash == there.get(&entry.path).copied();
                equal.then_some(entry)
            }));
        }
        if confirmed.is_empty() {
            return Ok(());
        }
        let forget: Vec<SnapshotUpdate> = confirmed
            .iter()
            .map(|e| SnapshotUpdate::Remove(e.path.clone()))
            .collect();
        self.source.commit(&forget)?;
        let results = self.source.remove_sent_files(&confirmed)?;
        for result in results {
            match result {
                Ok(()) => {
                    self.source_removed.fetch_add(1, Ordering::Relaxed);
                }
                Err(why) => self.observer.warning(&why),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::new(s.as_bytes()).unwrap()
    }

    fn report(paths: &[&str], trees: &[&str], rescan: Option<&str>) -> WatchReport {
        WatchReport {
            paths: paths.iter().map(|s| p(s)).collect(),
            trees: trees.iter().map(|s| p(s)).collect(),
            rescan: rescan.map(str::to_string),
        }
    }

    #[test]
    fn both_sides_look_at_what_either_reported() {
        let scope = merge_reports(
            vec![
                (Side::Local, report(&["b", "a"], &["new"], None)),
                (Side::Remote, report(&["a", "c"], &[], None)),
            ],
            &mut |_| panic!("no fallback"),
        );
        let Scope::Dirty { local, remote } = scope else {
            panic!("a dirty scope")
        };
        assert_eq!(local, remote);
        assert_eq!(local.paths, vec![p("a"), p("b"), p("c")]);
        assert_eq!(local.trees, vec![p("new")]);
    }

    #[test]
    fn a_tree_delete_is_kept_when_its_top_stays() {
        let top = Entry::bare(p("gone"), Kind::Dir);
        let op = Op::DeleteTree {
            entry: top.clone(),
            within: vec![
                Entry::bare(p("gone/a"), Kind::File),
                Entry::bare(p("gone/sub"), Kind::Dir),
            ],
        };
        let applied = |removed: &[&str]| Applied {
            updates: removed
                .iter()
                .map(|path| SnapshotUpdate::Remove(p(path)))
                .collect(),
            bytes: 0,
        };
        assert_eq!(kept_tree(&op, &applied(&["gone"])), None);
        assert_eq!(kept_tree(&op, &applied(&["gone/a"])), Some(1));
        assert_eq!(kept_tree(&op, &applied(&[])), Some(0));
        let plain = Op::Delete { entry: top };
        assert_eq!(kept_tree(&plain, &applied(&[])), None);
    }

    #[test]
    fn a_report_that_cannot_vouch_for_itself_means_a_full_scan() {
        let mut said = Vec::new();
        let scope = merge_reports(
            vec![
                (Side::Local, report(&["a"], &[], None)),
                (Side::Remote, report(&[], &[], Some("queue overflow"))),
            ],
            &mut |why| said.push(why.to_string()),
        );
        assert!(matches!(scope, Scope::Full));
        assert_eq!(said, vec!["queue overflow"]);
    }

    /// A sink that takes everything and reports nothing.
    struct Quiet;

    struct Swallow;

    impl FileWriter for Swallow {
        fn literal(&mut self, _data: &[u8]) -> std::io::Result<()> {
            Ok(())
        }
        fn copy(&mut self, _offset: u64, _len: u64) -> std::io::Result<()> {
            Ok(())
        }
        fn finish(self: Box<Self>, _end: SourceEnd) {}
    }

    impl FileSink for Quiet {
        fn open(&self, _job: &FileJob) -> Option<Box<dyn FileWriter + '_>> {
            Some(Box::new(Swallow))
        }
        fn wait(&self) -> Result<(), EndpointError> {
            Ok(())
        }
    }

    #[derive(Default)]
    struct Heard(Mutex<Vec<(u64, bool)>>);

    impl Observer for Heard {
        fn sending(&self, bytes: u64, file_end: bool) {
            self.0.lock().unwrap().push((bytes, file_end));
        }
    }

    #[test]
    fn the_observer_hears_content_as_it_goes_and_whole_files_only() {
        let heard = Heard::default();
        let sink = ObservedSink {
            sink: &Quiet,
            observer: &heard,
        };
        let job = FileJob {
            id: 0,
            entry: Entry::bare(RelPath::new(b"f").unwrap(), Kind::File),
            basis: None,
        };
        let mut writer = sink.open(&job).unwrap();
        writer.literal(&[0; 100]).unwrap();
        writer.copy(0, 4096).unwrap();
        writer.finish(SourceEnd::Complete {
            hash: [0; 32],
            xattrs: None,
        });
        let failed = sink.open(&job).unwrap();
        failed.finish(SourceEnd::Failed("changed while it was read".into()));
        assert_eq!(
            *heard.0.lock().unwrap(),
            vec![(100, false), (4096, false), (0, true)]
        );
    }
}
