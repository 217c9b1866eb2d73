//! One interface for "a root I can scan, read and change". The session
//! driver holds two of them and never knows which kind it holds: `local`
//! works on this machine; a remote endpoint (speaking the wire protocol to
//! `snapsync serve`) implements the same trait.

pub mod local;
pub mod remote;
pub mod wire;

use std::collections::HashMap;
use std::io;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::apply::Xattrs;
use crate::changes::{ChangeSet, DiffOptions};
use crate::delta::Signature;
use crate::model::{Entry, Hash, RelPath};
use crate::plan::Op;
use crate::state::{ConflictRecord, SessionFacts, SnapshotUpdate, StateError};

pub use local::LocalEndpoint;
pub use remote::{ConnectOptions, RemoteEndpoint, RemoteSpec, Transport};

/// Which way data flows through this endpoint in a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Source,
    Target,
    /// Bidi: data flows both ways.
    Both,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Target => "target",
            Role::Both => "source and target",
        }
    }
}

/// What a session asks of an endpoint before it scans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRequest {
    pub session: String,
    /// `push`, `pull` or `bidi`, as the session was started.
    pub direction: String,
    pub role: Role,
    pub reset: bool,
    pub dry_run: bool,
    /// The session log: rotated at this size; per-file lines when verbose.
    pub log_max: u64,
    pub log_verbose: bool,
    /// `--backup-dir` as given: where this root keeps what a run deletes or
    /// replaces on it (relative to the root, or absolute on its host). A
    /// relative one is excluded from the session for good, on every side.
    pub backup_dir: Option<String>,
    /// `--remove-source-files`: the source may be asked to remove files
    /// whose copies the target confirmed ([`Endpoint::remove_sent_files`]).
    pub remove_source_files: bool,
    /// Only look: report the root's facts (what stands at its path, its
    /// id, the session's database) for the guards, taking no lock and
    /// creating or writing nothing, the root included.
    pub probe: bool,
    /// Scans of dirty paths count the snapshot's rows too (for
    /// `--max-delete P%`).
    pub count_rows: bool,
    /// `--bwlimit`: the most file data this endpoint sends per second, as
    /// a source (`None`: as fast as it can).
    pub bwlimit: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{0}")]
    Root(String),
    #[error("{0}")]
    Refused(String),
    /// The connection to a far end broke; continuous mode reconnects.
    #[error("{0}")]
    Lost(String),
}

/// An operation on one path that failed; the run goes on without it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpFailure {
    pub path: RelPath,
    pub message: String,
    /// The plan's assumption no longer held (content it meant to reuse
    /// changed); sending the data instead may still succeed.
    pub stale: bool,
    /// Not an error: the path was left as it is on purpose (a directory that
    /// still holds excluded entries).
    pub warning_only: bool,
}

/// What an applied operation leaves in the target's snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Applied {
    pub updates: Vec<SnapshotUpdate>,
    /// Bytes of file data written.
    pub bytes: u64,
}

/// One file for the source to send: its entry as scanned, and when the
/// target holds an older version worth a delta, that version's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileJob {
    pub id: u64,
    pub entry: Entry,
    pub basis: Option<Signature>,
}

/// How the source ends a file it streamed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SourceEnd {
    /// All data was sent; `hash` is the BLAKE3 of the whole content read,
    /// which the target must match before installing the file.
    Complete { hash: Hash, xattrs: Option<Xattrs> },
    /// The source could not send a consistent version (unreadable, or it
    /// changed while being read); the target discards what it got.
    Failed(String),
}

/// Where each received file's result goes: the job id, and what it left in
/// the target's snapshot or why it failed.
/// The results of operations sent and not waited for
/// ([`Endpoint::apply_later`]).
pub type LaterResults<'a> =
    Box<dyn FnOnce() -> Result<Vec<Result<Applied, OpFailure>>, EndpointError> + Send + 'a>;

pub type Done<'a> = Arc<dyn Fn(u64, Result<Applied, OpFailure>) + Send + Sync + 'a>;

/// The receiving end of a file stream, on the target.
pub trait FileSink: Send + Sync {
    /// Starts a file. `None` when the target cannot take it (the failure has
    /// been reported through the sink's `Done`), or is gone (`wait` says so).
    fn open(&self, job: &FileJob) -> Option<Box<dyn FileWriter + '_>>;
    /// Waits until every opened file has been reported.
    fn wait(&self) -> Result<(), EndpointError>;
}

/// One file arriving: literal data and copies from the target's older
/// version, in order, then the source's verdict.
pub trait FileWriter: Send {
    fn literal(&mut self, data: &[u8]) -> io::Result<()>;
    fn copy(&mut self, offset: u64, len: u64) -> io::Result<()>;
    fn finish(self: Box<Self>, end: SourceEnd);
}

pub trait Endpoint: Send + Sync {
    /// How messages name this root.
    fn describe(&self) -> String;

    /// True when data to or from this endpoint crosses a network, so that
    /// deltas and compression pay off.
    fn is_remote(&self) -> bool;

    /// Bytes this endpoint wrote to and read from a network connection so
    /// far (zero for a local root).
    fn wire_bytes(&self) -> (u64, u64) {
        (0, 0)
    }

    /// The far address of the QUIC data channel that carries this
    /// endpoint's protocol, when one does (`None`: ssh, or a local root).
    fn data_channel(&self) -> Option<std::net::SocketAddr> {
        None
    }

    /// Checks the root, takes the session's lock and opens its snapshot
    /// (with `request.probe`, only reports what it finds).
    fn open_session(&self, request: &SessionRequest) -> Result<SessionFacts, EndpointError>;

    /// The root's stable id (`.snapsync/id`), known once the session is
    /// open (`None` in a dry run on a root that has none yet).
    fn root_id(&self) -> Option<String>;

    /// Scans the root against this session's snapshot.
    fn scan(&self, options: &DiffOptions) -> Result<ChangeSet, EndpointError>;

    /// Scans only these paths against this session's snapshot: `paths`
    /// whose own entry may have changed, and `trees`, directories that
    /// appeared, compared whole. The change set is what [`Endpoint::scan`]
    /// would report for them (see [`crate::changes::diff_dirty`]; a tree at
    /// the root is a full scan); every other path is taken to be as its
    /// snapshot row records it, and `lookup` and `find_content` answer so
    /// afterwards.
    fn scan_dirty(
        &self,
        paths: &[RelPath],
        trees: &[RelPath],
        options: &DiffOptions,
    ) -> Result<ChangeSet, EndpointError>;

    /// Continuous mode: reports this root's changes to `sink` from now until
    /// the session ends (or `sink` returns false), each report after
    /// `timing`'s quiet time. An error when the root cannot be watched: the
    /// caller then polls it with full scans.
    fn watch(&self, timing: WatchTiming, sink: ReportSink) -> Result<(), EndpointError>;

    /// The decisions `resolve` recorded on this root since the session opened.
    fn decisions(&self) -> Result<Vec<crate::state::Decision>, EndpointError>;

    /// Current entries of these paths, as of the scan; absent paths are left out.
    fn lookup(&self, paths: &[RelPath]) -> Result<HashMap<RelPath, Entry>, EndpointError>;

    /// `-H`: for each of these paths that is, as of the scan, a file with
    /// other names in the tree the scan covered, all its names: each group
    /// once, sorted. Paths that are no file, or the file's only name in
    /// the tree (its other names excluded, or outside the root), are left out.
    fn hard_links(&self, paths: &[RelPath]) -> Result<Vec<Vec<RelPath>>, EndpointError>;

    /// Paths whose content is known to have these hashes.
    fn find_content(&self, hashes: &[Hash]) -> Result<HashMap<Hash, Vec<RelPath>>, EndpointError>;

    /// Adds what the session learned of which roots feed which to this
    /// root's lineage (not in a dry run).
    fn record_lineage(&self, edges: &[crate::lineage::Edge]) -> Result<(), EndpointError>;

    /// The content hashes of the files now at these paths (unreadable ones
    /// are left out).
    fn hash_files(&self, paths: &[RelPath]) -> Result<HashMap<RelPath, Hash>, EndpointError>;

    /// Delta signatures of the files now at these paths.
    fn signatures(&self, paths: &[RelPath]) -> Result<HashMap<RelPath, Signature>, EndpointError>;

    /// The extended attributes of these entries (`None` where unreadable).
    fn read_xattrs(&self, entries: &[Entry]) -> Result<Vec<Option<Xattrs>>, EndpointError>;

    /// Source role: reads each job's file and streams it into `sink`, as a
    /// delta where the job carries a signature. Stops starting files once
    /// `stop` is set.
    fn send_files(
        &self,
        jobs: Vec<FileJob>,
        sink: &dyn FileSink,
        xattrs: bool,
        stop: &AtomicBool,
    ) -> Result<(), EndpointError>;

    /// Target role: a sink that installs arriving files, reporting each to `done`.
    fn receive_files<'a>(&'a self, done: Done<'a>) -> Box<dyn FileSink + 'a>;

    /// Carries out operations that need no data from the other side, in
    /// order (or in parallel when `parallel`), one result per operation.
    fn apply(
        &self,
        ops: &[(Op, Option<Xattrs>)],
        parallel: bool,
    ) -> Result<Vec<Result<Applied, OpFailure>>, EndpointError>;

    /// [`apply`](Self::apply), returning once the operations are on their
    /// way: a far end carries them out before anything sent after, and
    /// their results come when the returned function is called. A local
    /// root carries them out at once.
    fn apply_later(
        &self,
        ops: &[(Op, Option<Xattrs>)],
        parallel: bool,
    ) -> Result<LaterResults<'_>, EndpointError> {
        let results = self.apply(ops, parallel);
        Ok(Box::new(move || results))
    }

    /// Records what the run is about to change, before it changes
    /// anything (each record goes once its path is settled, or the run
    /// ends); with `replace`, an unfinished earlier run's records go first.
    fn record_pending(
        &self,
        pending: &[crate::state::Pending],
        replace: bool,
    ) -> Result<(), EndpointError>;

    /// Source role, `--remove-source-files`: removes each of these files
    /// (or links), whose copies the target confirmed, if it is still the
    /// version that was sent (same size, mtime and inode; a link, the same
    /// target). One result per entry: why it was kept, where it was.
    /// Directories are never removed. The caller has already dropped their
    /// snapshot rows.
    fn remove_sent_files(
        &self,
        entries: &[Entry],
    ) -> Result<Vec<Result<(), String>>, EndpointError>;

    /// Writes snapshot rows, in one transaction.
    fn commit(&self, updates: &[SnapshotUpdate]) -> Result<(), EndpointError>;

    /// Ends the run: writes its last snapshot rows (`rows`, as
    /// [`commit`](Self::commit) does: with a far end, in the same round
    /// trip), drops rows the filters no longer cover, records the
    /// failures, the run and the peer's root id, and (when complete) marks
    /// the session established. Nothing of the end is recorded when the
    /// rows could not be written.
    fn finish(&self, rows: &[SnapshotUpdate], end: &RunEnd) -> Result<(), EndpointError>;
}

/// How a watch waits before reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchTiming {
    /// Quiet time after the last change before a report.
    pub cooloff: std::time::Duration,
    /// The longest a report waits after its first change.
    pub max_wait: std::time::Duration,
}

/// Changes a watch saw in one burst.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchReport {
    /// Paths whose own entry may have changed: to stat.
    pub paths: Vec<RelPath>,
    /// Directories that appeared: to walk whole.
    pub trees: Vec<RelPath>,
    /// The events cannot be trusted to be complete: rescan everything. Why.
    pub rescan: Option<String>,
}

/// Where a watch hands its reports; false when nobody listens any more.
pub type ReportSink = Box<dyn Fn(WatchReport) -> bool + Send + Sync>;

/// How a run ended, for each endpoint to record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunEnd {
    /// Every planned operation was attempted (not stopped early).
    pub complete: bool,
    pub failures: Vec<(RelPath, String)>,
    /// When the run started (RFC 3339, UTC).
    pub started: String,
    /// The summary, as JSON.
    pub summary: String,
    /// The other endpoint's root id.
    pub peer_root_id: Option<String>,
    /// The other endpoint, as the near end names it.
    pub peer: String,
    /// Conflicts left after this run, in this endpoint's words (bidi).
    pub conflicts: Vec<ConflictRecord>,
    /// The paths this run examined, when it did not scan the whole tree
    /// (continuous mode): recorded conflicts elsewhere stand.
    pub examined: Option<Vec<RelPath>>,
}
