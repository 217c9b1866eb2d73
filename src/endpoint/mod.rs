//! One interface for "a root I can scan, read and change". The session
//! driver holds two of them and never knows which kind it holds: `local`
//! works on this machine; a remote endpoint (speaking the wire protocol to
//! `snapsync serve`) implements the same trait.

pub mod local;

use std::collections::HashMap;
use std::io::{self, Read};

use crate::apply::Xattrs;
use crate::changes::{ChangeSet, DiffOptions};
use crate::model::{Entry, Hash, RelPath};
use crate::plan::Op;
use crate::state::{SessionFacts, SnapshotUpdate, StateError};

pub use local::LocalEndpoint;

/// Which way data flows through this endpoint in a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Source,
    Target,
}

/// What a session asks of an endpoint before it scans.
#[derive(Debug, Clone)]
pub struct SessionRequest {
    pub session: String,
    /// `push` or `pull`, as the session was started.
    pub direction: String,
    pub role: Role,
    pub reset: bool,
    pub dry_run: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{0}")]
    Root(String),
    #[error("{0}")]
    Refused(String),
}

/// An operation on one path that failed; the run goes on without it.
#[derive(Debug, Clone)]
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
#[derive(Debug, Clone)]
pub struct Applied {
    pub updates: Vec<SnapshotUpdate>,
    /// Bytes of file data written.
    pub bytes: u64,
}

pub trait Endpoint: Send + Sync {
    /// How messages name this root.
    fn describe(&self) -> String;

    /// Checks the root, takes the session's lock and opens its snapshot.
    fn open_session(&self, request: &SessionRequest) -> Result<SessionFacts, EndpointError>;

    /// Scans the root against this session's snapshot.
    fn scan(&self, options: &DiffOptions) -> Result<ChangeSet, EndpointError>;

    /// Current entries of these paths, as of the scan; absent paths are left out.
    fn lookup(&self, paths: &[RelPath]) -> Result<HashMap<RelPath, Entry>, EndpointError>;

    /// Paths whose content is known to have these hashes.
    fn find_content(&self, hashes: &[Hash]) -> Result<HashMap<Hash, Vec<RelPath>>, EndpointError>;

    /// Opens a file for reading, as the source of a transfer.
    fn open_file(&self, entry: &Entry) -> io::Result<Box<dyn Read + Send>>;

    /// True when the file still has the size, mtime and inode it was scanned with.
    fn unchanged_since_scan(&self, entry: &Entry) -> io::Result<bool>;

    /// The extended attributes of a path, to replicate with `--xattrs`.
    fn read_xattrs(&self, entry: &Entry) -> io::Result<Xattrs>;

    /// Carries out one operation that needs no data from the other side.
    fn apply(&self, op: &Op, xattrs: Option<&Xattrs>) -> Result<Applied, OpFailure>;

    /// Writes a file from `data`; `verify` sees the hash of what was written
    /// and may refuse before anything appears under the real name.
    fn write_file(
        &self,
        entry: &Entry,
        xattrs: Option<&Xattrs>,
        data: &mut dyn Read,
        verify: &dyn Fn(&Hash) -> Result<(), String>,
    ) -> Result<Applied, OpFailure>;

    /// Writes snapshot rows, in one transaction.
    fn commit(&self, updates: &[SnapshotUpdate]) -> Result<(), EndpointError>;

    /// Ends the run: drops rows the filters no longer cover, records the
    /// failures and the run, and (when `complete`) marks the session established.
    fn finish(
        &self,
        complete: bool,
        failures: &[(RelPath, String)],
        started: &str,
        summary: &str,
    ) -> Result<(), EndpointError>;
}
